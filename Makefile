# celeriac build. `make` builds the worker and the example library, `make test`
# runs every suite, `make demo` runs the main job on the embedded default.
# Dependencies come only through pkg-config; `make deps` installs them on Debian.

CC      ?= cc
PKGS    := libpq hiredis jansson sqlite3 librabbitmq msgpack openssl
BUILD   ?= build

WARN    := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes \
           -Wold-style-definition -Wwrite-strings -Wpointer-arith -Wvla \
           -Wformat=2 -Wshadow -fno-common
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 $(WARN) -fvisibility=hidden
CPPFLAGS += -Iinclude -Isrc -MMD -MP
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer -g
LDFLAGS += -fsanitize=$(SANITIZE)
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# Every module except main.c goes into a static archive the unit tests link too.
LIB_SRC  := $(filter-out src/main.c,$(wildcard src/*.c src/*/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ := $(BUILD)/src/main.o
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

# The binary exports only the task-library API (celeriac_*) to dlopen()ed libraries.
EXPORTS  := -Wl,--export-dynamic-symbol=celeriac_*

.PHONY: all deps test unit unit-bins demo demo-redis clean fuzz bench bench-idle chaos format
all: $(BUILD)/celeriac $(BUILD)/examples/libbooks.so

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/libceleriac.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/celeriac: $(MAIN_OBJ) $(BUILD)/libceleriac.a
	$(CC) $(LDFLAGS) $(EXPORTS) -o $@ $(MAIN_OBJ) -Wl,--whole-archive $(BUILD)/libceleriac.a -Wl,--no-whole-archive $(PKG_LIBS) -ldl -lm

# A task library is built the way a user's would be: against include/celeriac.h
# alone, -fPIC -shared, plus the database client it uses.
$(BUILD)/examples/libbooks.so: examples/books/books.c include/celeriac.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(filter -fsanitize% -fno-sanitize% -fno-omit%,$(CFLAGS)) -O2 -g -fPIC -shared \
	    -Iinclude $(shell pkg-config --cflags libpq sqlite3) -o $@ $< \
	    $(shell pkg-config --libs libpq sqlite3)

$(BUILD)/tests/test_%: tests/unit/test_%.c tests/unit/harness.h $(BUILD)/libceleriac.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -Itests/unit -o $@ $< $(BUILD)/libceleriac.a $(PKG_LIBS) -ldl -lm

deps:
	@scripts/bootstrap.sh

unit-bins: $(UNIT_BIN)

unit: $(UNIT_BIN)
	@tests/run-unit.sh $(UNIT_BIN)

# deps first, then a fresh make: pkg-config flags are read when make starts,
# which on a fresh machine is before the -dev packages are installed.
# Tests find the build through BUILD (build-asan etc. for sanitizer runs).
test: deps
	@$(MAKE) --no-print-directory all unit-bins
	@BUILD=$(BUILD) tests/run-all.sh

# The demo with no server (broker, results and books in SQLite files), and the
# same demo on a private redis-server.
demo: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) scripts/demo.sh sqlite

demo-redis: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) scripts/demo.sh redis

# The benchmark of issues 5, 11 and 12: celeriac beside Python Celery and a bare
# C floor on Redis, and beside Python Celery on RabbitMQ and on kombu's SQL
# transport in PostgreSQL.
bench: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) bench/run.sh

# What an idle worker costs in Redis commands and CPU, beside Python Celery.
bench-idle: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) bench/idle.sh

# 10,000 late-ack tasks while children are killed and PostgreSQL and the broker
# restart: Redis, or RabbitMQ with `make chaos CHAOS_BROKER=amqp`.
CHAOS_BROKER ?= redis
chaos: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) CHAOS_BROKER=$(CHAOS_BROKER) tests/reliability/chaos.sh

# libFuzzer over the message decoder, bounded by FUZZ_SECONDS (default 60).
fuzz: deps
	@scripts/fuzz.sh

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d)
