# SPDX-License-Identifier: MIT
# plots.gp: draws bench/throughput.png and bench/latency.png from the data a
# bench run leaves in its temp dir. Called by run.sh:
#   gnuplot -e "data='DIR'; out='DIR'" bench/plots.gp
load data.'/plot.gpvars'   # contenders, amqpcontenders, sqlcontenders, latcontenders, w3rates

n = words(contenders)
na = words(amqpcontenders)
ns = words(sqlcontenders)
nl = words(latcontenders)
label(c) = c eq 'celeriac' ? 'celeriac' : c eq 'celeriac-txn' ? 'celeriac, transactional' : c eq 'python' ? 'Python Celery' : c eq 'floor' ? 'floor (C)' : c eq 'floor-kombu' ? 'floor + kombu acks' : c
color(c) = c eq 'celeriac' ? '#1b7837' : c eq 'celeriac-txn' ? '#7fbc41' : c eq 'python' ? '#2166ac' : c eq 'floor' ? '#b2182b' : '#e08214'

set terminal pngcairo size 1200,500 font 'DejaVu Sans,11'
set output out.'/throughput.png'
set multiplot layout 1,2 title 'Throughput vs concurrency (median of the runs, bars: min–max)'
set xlabel 'concurrency (child processes)'
set ylabel 'tasks/s'
set xtics (1, 2, 4)
set logscale x 2
set xrange [0.8:5]
set yrange [0:*]
set grid
set key top left
do for [w in 'W1 W2'] {
    set title (w eq 'W1' ? 'W1: books.get\_book\_info (UPDATE … RETURNING)' : 'W2: tasks.add (no database)')
    # Redis solid, RabbitMQ (celeriac and Python Celery) dashed, the PostgreSQL
    # broker (W1 only) dotted
    plot for [i=1:n] data.'/tput-'.w.'.dat' using 1:(column(3*i-1)):(column(3*i)):(column(3*i+1)) \
        with yerrorlines lw 2 pt 7 lc rgb color(word(contenders, i)) title label(word(contenders, i)), \
        for [i=1:na] data.'/tput-amqp-'.w.'.dat' using 1:(column(3*i-1)):(column(3*i)):(column(3*i+1)) \
        with yerrorlines lw 2 dt 2 pt 6 lc rgb color(word(amqpcontenders, i)) \
        title label(word(amqpcontenders, i)).' on RabbitMQ', \
        for [i=1:(w eq 'W1' ? ns : 0)] data.'/tput-sql-'.w.'.dat' \
        using 1:(column(3*i-1)):(column(3*i)):(column(3*i+1)) \
        with yerrorlines lw 2 dt 3 pt 4 lc rgb color(word(sqlcontenders, i)) \
        title label(word(sqlcontenders, i)).' on PostgreSQL (sqla)'
}
unset multiplot

if (words(latcontenders) == 0) exit
set output out.'/latency.png'
set multiplot layout 1,2 title 'Latency at concurrency 2: send → result readable (CDF)'
unset logscale x
set logscale x 10
set xrange [*:*]
set xtics auto
set format x '%g'
set xlabel 'latency (ms, log scale)'
set ylabel 'fraction of tasks'
set yrange [0:1]
set ytics 0.1
set key bottom right
set title 'W3h: paced at half of each one''s capacity with the sender'
plot for [i=1:nl] data.'/lath-'.word(latcontenders, i).'.dat' using 1:2 with lines lw 2 \
    lc rgb color(word(latcontenders, i)) title label(word(latcontenders, i)).' at '.word(w3rates, i).'/s'
set title 'W3b: live send\_task, all at the same rate'
plot for [i=1:nl] data.'/latb-'.word(latcontenders, i).'.dat' using 1:2 with lines lw 2 \
    lc rgb color(word(latcontenders, i)) title label(word(latcontenders, i))
unset multiplot
