/* SPDX-License-Identifier: MIT
 * worker/config.c: defaults and release of struct worker_config.
 */
#include "common.h"
#include "protocol/message.h"
#include "worker/config.h"

void worker_config_init(struct worker_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->concurrency = cpus > 0 ? (int)cpus : 1;
    cfg->log_level = LOG_INFO;
    redis_transport_options_init(&cfg->broker_options, "--broker-transport-option");
    redis_transport_options_init(&cfg->backend_options, "--result-backend-transport-option");
    cfg->broker.max_message = MESSAGE_MAX_DEFAULT;
    cfg->backend.expires_s = 86400;
    cfg->db.attempts = 4;
    cfg->db.backoff_base_ms = 500;
    cfg->db.backoff_cap_ms = 10000;
    cfg->db.connect_timeout_s = 5;
    cfg->db.busy_timeout_ms = 5000;
    cfg->db.idle_check_ms = 30000;
    cfg->reject_on_worker_lost = true;
    cfg->max_worker_lost_requeues = 3;
    cfg->broker.prefetch = 1; /* Celery's worker_prefetch_multiplier is 4; 1 is fairer */
    cfg->broker.sql_batch = 16;
    cfg->broker.sql_batch_ms = 50;
    cfg->remote_control = true;
    cfg->visibility_timeout = 3600;
    cfg->sweep_interval_s = 60;
    cfg->respawn_base_ms = 500;
    cfg->respawn_cap_ms = 30000;
}

void worker_config_release(struct worker_config *cfg)
{
    free(cfg->app_path);
    free(cfg->node_name);
    free(cfg->broker_url);
    free(cfg->backend_url);
    redis_transport_options_release(&cfg->broker_options);
    redis_transport_options_release(&cfg->backend_options);
    free(cfg->statedb);
    free(cfg->metrics);
    free(cfg->logfile);
    free(cfg->pidfile);
    redis_url_release(&cfg->broker.url);
    amqp_url_release(&cfg->broker.amqp);
    redis_url_release(&cfg->backend.url);
    free(cfg->backend.db.url);
    free(cfg->backend.db.sqlite_path);
    free(cfg->backend.db.where);
    for (size_t i = 0; i < cfg->broker.n_queues; i++)
        free(cfg->broker.queues[i]);
    free(cfg->broker.queues);
    free(cfg->db.url);
    free(cfg->db.sqlite_path);
    free(cfg->db.where);
    free(cfg->broker.sql.url);
    free(cfg->broker.sql.sqlite_path);
    free(cfg->broker.sql.where);
    library_unload(&cfg->lib);
    memset(cfg, 0, sizeof(*cfg));
}
