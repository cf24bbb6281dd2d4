# celeriac build. `make` builds the worker and the example library, `make test`
# runs every suite, `make demo` runs the main job on the embedded default.
# Dependencies come only through pkg-config; `make deps` installs them on Debian.
# `make install` (PREFIX, DESTDIR), `make uninstall` and `make deb` package it.

CC      ?= cc
PKGS    := libpq hiredis jansson sqlite3 librabbitmq msgpack openssl libmicrohttpd
BUILD   ?= build

PREFIX       ?= /usr/local
BINDIR       ?= $(PREFIX)/bin
INCLUDEDIR   ?= $(PREFIX)/include
LIBDIR       ?= $(PREFIX)/lib
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR       ?= $(PREFIX)/share/man
VERSION      := $(shell sed -n 's/^\#define CELERIAC_VERSION "\(.*\)"/\1/p' include/celeriac.h)

WARN    := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes \
           -Wold-style-definition -Wwrite-strings -Wpointer-arith -Wvla \
           -Wformat=2 -Wshadow -fno-common
CFLAGS  ?= -O2 -g
# -fPIC: the client's objects also go into libceleriac-client(-sql).so.
CFLAGS  += -std=c11 $(WARN) -fvisibility=hidden -fPIC
CPPFLAGS += -Iinclude -Isrc -MMD -MP
# Full RELRO: every symbol of the executable bound at start and its GOT
# read-only (the worker also binds the libraries at start: util/bind_now.h).
LDFLAGS += -Wl,-z,now -Wl,-z,relro
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

# The C client library (include/celeriac_client.h), in two parts. Each is
# its .c files plus the archive members they need, picked by a relocatable
# link (so the list follows the code), in one object whose hidden symbols are
# made local: a sender sees only celeriac_*, in the .a as in the .so, and the
# two parts never see each other's internals (each has its own copy).
# - libceleriac-client: Redis, RabbitMQ, results; no libpq, no sqlite3 (the
#   rule fails if the object refers to either).
# - libceleriac-client-sql: the outbox (celeriac_send_pg/_sqlite) and sending
#   to sqla+ brokers, which the core finds through the weak reference
#   celeriac_client_sql_v0 (src/client/client_internal.h).
CLIENT_PKGS   := hiredis jansson librabbitmq msgpack openssl
CLIENT_LIBS   := $(shell pkg-config --libs $(CLIENT_PKGS) 2>/dev/null) -lm
CLIENT_SQL_PKGS := $(CLIENT_PKGS) libpq sqlite3
CLIENT_SQL_LIBS := $(shell pkg-config --libs $(CLIENT_SQL_PKGS) 2>/dev/null) -lm
CLIENT_DB_CFLAGS := $(shell pkg-config --cflags libpq sqlite3 2>/dev/null)
CLIENT_DB_LIBS := $(shell pkg-config --libs libpq sqlite3 2>/dev/null)
CLIENT_SOMAJOR := 0
CLIENT_SONAME := libceleriac-client.so.$(CLIENT_SOMAJOR)
CLIENT_SO     := libceleriac-client.so.$(VERSION)
CLIENT_OBJ    := $(BUILD)/client/celeriac-client.o
CLIENT_SQL_SONAME := libceleriac-client-sql.so.$(CLIENT_SOMAJOR)
CLIENT_SQL_SO := libceleriac-client-sql.so.$(VERSION)
CLIENT_SQL_OBJ := $(BUILD)/client/celeriac-client-sql.o
CLIENT_TARGETS := $(BUILD)/libceleriac-client.a $(BUILD)/$(CLIENT_SO) \
                  $(BUILD)/libceleriac-client-sql.a $(BUILD)/$(CLIENT_SQL_SO)

.PHONY: all deps test unit unit-bins demo demo-redis clean fuzz bench bench-idle chaos fleet fleet-lean format \
        install uninstall deb
all: $(BUILD)/celeriac $(BUILD)/examples/libbooks.so $(CLIENT_TARGETS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/libceleriac.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/celeriac: $(MAIN_OBJ) $(BUILD)/libceleriac.a
	$(CC) $(LDFLAGS) $(EXPORTS) -o $@ $(MAIN_OBJ) -Wl,--whole-archive $(BUILD)/libceleriac.a -Wl,--no-whole-archive $(PKG_LIBS) -ldl -lm

$(CLIENT_OBJ): $(BUILD)/src/client/client.o $(BUILD)/src/client/envelope.o $(BUILD)/libceleriac.a
	@mkdir -p $(dir $@)
	$(CC) -r -nostdlib -o $@.tmp $^
	objcopy --localize-hidden $@.tmp $@
	@rm -f $@.tmp
	@if nm -u $@ | grep -E ' (PQ|pq|lo_|sqlite3_)'; then \
	    echo "$@: the core client refers to libpq or sqlite3 (above)" >&2; rm -f $@; exit 1; fi

$(CLIENT_SQL_OBJ): $(BUILD)/src/client/sql.o $(BUILD)/src/client/outbox.o \
                   $(BUILD)/src/client/envelope.o $(BUILD)/libceleriac.a
	@mkdir -p $(dir $@)
	$(CC) -r -nostdlib -o $@.tmp $^
	objcopy --localize-hidden $@.tmp $@
	@rm -f $@.tmp

$(BUILD)/libceleriac-client.a: $(CLIENT_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/$(CLIENT_SO): $(CLIENT_OBJ)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(CLIENT_SONAME) -Wl,--no-undefined -Wl,--as-needed \
	    -o $@ $^ $(CLIENT_LIBS)

$(BUILD)/libceleriac-client-sql.a: $(CLIENT_SQL_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/$(CLIENT_SQL_SO): $(CLIENT_SQL_OBJ)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(CLIENT_SQL_SONAME) -Wl,--no-undefined -Wl,--as-needed \
	    -o $@ $^ $(CLIENT_SQL_LIBS)

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
# restart: Redis, or CHAOS_BROKER=amqp (RabbitMQ), sql (kombu's SQL transport on
# PostgreSQL) or sqlite (in an SQLite file, whose write lock another process holds).
CHAOS_BROKER ?= redis
chaos: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) CHAOS_BROKER=$(CHAOS_BROKER) tests/reliability/chaos.sh

# Simulated partitions (issue 14 point 5): network namespaces with three worker
# hosts, Redis and PostgreSQL; 20,000 late-ack tasks (FLEET_TASKS) while one
# host at a time is cut off (from everything, PostgreSQL, Redis) and healed.
# Needs root; not part of `make test`. fleet-lean: the same cuts and checks
# with 2,000 tasks and 10 s cuts, about a minute; .ci/run runs it.
fleet: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) tests/fleet/fleet.sh

fleet-lean: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) FLEET_LEAN=1 tests/fleet/fleet.sh

# libFuzzer over the message decoder, bounded by FUZZ_SECONDS (default 60).
fuzz: deps
	@scripts/fuzz.sh

clean:
	rm -rf $(BUILD)

# What `make install` writes, relative to DESTDIR; `make uninstall` removes
# exactly these. The .pc files are written from packaging/*.pc.in with the
# install's own directories.
INSTALLED := $(BINDIR)/celeriac \
             $(INCLUDEDIR)/celeriac.h $(INCLUDEDIR)/celeriac_client.h \
             $(LIBDIR)/libceleriac-client.a $(LIBDIR)/$(CLIENT_SO) \
             $(LIBDIR)/$(CLIENT_SONAME) $(LIBDIR)/libceleriac-client.so \
             $(LIBDIR)/libceleriac-client-sql.a $(LIBDIR)/$(CLIENT_SQL_SO) \
             $(LIBDIR)/$(CLIENT_SQL_SONAME) $(LIBDIR)/libceleriac-client-sql.so \
             $(PKGCONFIGDIR)/celeriac.pc $(PKGCONFIGDIR)/celeriac-client.pc \
             $(PKGCONFIGDIR)/celeriac-client-sql.pc \
             $(MANDIR)/man1/celeriac.1 $(MANDIR)/man7/celeriac-tasks.7
INSTALL_DIRS := $(BINDIR) $(INCLUDEDIR) $(LIBDIR) $(PKGCONFIGDIR) $(MANDIR)/man1 $(MANDIR)/man7
PC_SED := -e 's|@PREFIX@|$(PREFIX)|g' \
          -e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|g' \
          -e 's|@LIBDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))|g' -e 's|@VERSION@|$(VERSION)|g' \
          -e 's|@CLIENT_LIBS@|$(CLIENT_LIBS)|g' -e 's|@CLIENT_SQL_LIBS@|$(CLIENT_SQL_LIBS)|g' \
          -e 's|@CLIENT_DB_CFLAGS@|$(CLIENT_DB_CFLAGS)|g' -e 's|@CLIENT_DB_LIBS@|$(CLIENT_DB_LIBS)|g'

# DESTDIR/PREFIX that cannot be written: one line and a non-zero status before
# anything is built or copied (checked when make reads this file, so make's
# own "Error" line does not follow it).
ifneq ($(filter install,$(MAKECMDGOALS)),)
INSTALL_ERR := $(shell for d in $(INSTALL_DIRS); do \
    out=$$(mkdir -p "$(DESTDIR)$$d" 2>&1 && test -w "$(DESTDIR)$$d" 2>&1) || { \
        echo "cannot write to '$(DESTDIR)$$d': $${out:-permission denied}"; break; }; done)
ifneq ($(INSTALL_ERR),)
$(error make install: $(INSTALL_ERR))
endif
endif

install: all
	install -m 755 $(BUILD)/celeriac '$(DESTDIR)$(BINDIR)/celeriac'
	install -m 644 include/celeriac.h include/celeriac_client.h '$(DESTDIR)$(INCLUDEDIR)/'
	install -m 644 $(BUILD)/libceleriac-client.a $(BUILD)/libceleriac-client-sql.a '$(DESTDIR)$(LIBDIR)/'
	install -m 755 $(BUILD)/$(CLIENT_SO) $(BUILD)/$(CLIENT_SQL_SO) '$(DESTDIR)$(LIBDIR)/'
	ln -sf $(CLIENT_SO) '$(DESTDIR)$(LIBDIR)/$(CLIENT_SONAME)'
	ln -sf $(CLIENT_SONAME) '$(DESTDIR)$(LIBDIR)/libceleriac-client.so'
	ln -sf $(CLIENT_SQL_SO) '$(DESTDIR)$(LIBDIR)/$(CLIENT_SQL_SONAME)'
	ln -sf $(CLIENT_SQL_SONAME) '$(DESTDIR)$(LIBDIR)/libceleriac-client-sql.so'
	sed $(PC_SED) packaging/celeriac.pc.in >'$(DESTDIR)$(PKGCONFIGDIR)/celeriac.pc'
	sed $(PC_SED) packaging/celeriac-client.pc.in >'$(DESTDIR)$(PKGCONFIGDIR)/celeriac-client.pc'
	sed $(PC_SED) packaging/celeriac-client-sql.pc.in >'$(DESTDIR)$(PKGCONFIGDIR)/celeriac-client-sql.pc'
	install -m 644 man/celeriac.1 '$(DESTDIR)$(MANDIR)/man1/'
	install -m 644 man/celeriac-tasks.7 '$(DESTDIR)$(MANDIR)/man7/'

uninstall:
	rm -f $(addprefix '$(DESTDIR),$(addsuffix ',$(INSTALLED)))

# A Debian package (debhelper) built from a copy of the tree in $(BUILD)/deb,
# so the checkout and its build directories are left as they are; the .deb
# lands in $(BUILD)/.
deb:
	@rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb/celeriac-$(VERSION)
	tar --exclude=./.git --exclude='./build*' --exclude='./$(BUILD)' --exclude=./bench/out -cf - . | \
	    tar -C $(BUILD)/deb/celeriac-$(VERSION) -xf -
	cd $(BUILD)/deb/celeriac-$(VERSION) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	    DEB_BUILD_OPTIONS="nocheck noddebs parallel=$$(nproc) $${DEB_BUILD_OPTIONS:-}" \
	    dpkg-buildpackage -b -us -uc >../build.log 2>&1 || { tail -30 ../build.log; exit 1; }
	cp $(BUILD)/deb/celeriac_$(VERSION)*.deb $(BUILD)/
	@ls $(BUILD)/celeriac_$(VERSION)*.deb

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d)
