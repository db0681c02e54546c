# mtlua -- Lua 5.4 with Python's multitasking toolkit.
#   make          build build/mtlua, build/libmtlua.a, build/libmtlua.so
#   make test     install what is missing, build, run the suite (prove)
#   make run      a tour: run every ported example of scripts/
#   make bench    side-by-side benchmarks against CPython
#   make asan / make tsan   the suite under Address/ThreadSanitizer
#   make install PREFIX=/usr/local
BUILD   ?= build
PREFIX  ?= /usr/local
CC      ?= cc
SAN     ?=
OPT     ?= -O2
PKGS    := lua5.4 libuv
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fPIC -pthread \
           -Ivm_glue $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(SAN)
# '=' not ':=': pkg-config is asked when a rule runs, after `make deps`
# has installed it on a fresh machine, not when the Makefile is read
LDLIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm -ldl
# the binary carries Lua itself (Debian's liblua5.4.a): calls into the Lua
# API skip the PLT, 5-10% on lock and pickle paths; -Wl,-E still exports
# the API to C modules loaded with require
BIN_LDLIBS = -Wl,-Bstatic -llua5.4 -Wl,-Bdynamic $(shell pkg-config --libs libuv 2>/dev/null) -lpthread -lm -ldl
LDFLAGS += $(SAN) -Wl,-E

CORE_SRC := $(filter-out vm_glue/main.c,$(wildcard vm_glue/*.c)) $(wildcard lua_bindings/*.c)
LIB_LUA  := $(shell find lib -name '*.lua' | sort)
OBJS     := $(patsubst %.c,$(BUILD)/obj/%.o,$(CORE_SRC)) $(BUILD)/obj/lib_bundle.o
HEADERS  := $(wildcard vm_glue/*.h lua_bindings/*.h)

# Debian packages: headers and tools the build and the suite need.
DEPS_CHECK := test -f /usr/include/lua5.4/lua.h && test -f /usr/include/uv.h && \
              command -v pkg-config >/dev/null && command -v prove >/dev/null && \
              command -v perl >/dev/null && command -v cc >/dev/null && \
              command -v pgrep >/dev/null && command -v timeout >/dev/null
DEBS := liblua5.4-dev libuv1-dev pkg-config perl gcc make procps coreutils
# only for `make bench` (the CPython peers) and `make fuzz`
BENCH_CHECK := test -x /usr/bin/python3 && /usr/bin/python3 -c 'import gevent' 2>/dev/null && \
               command -v lua5.4 >/dev/null && command -v taskset >/dev/null
BENCH_DEBS := python3 python3-gevent python3-greenlet lua5.4 util-linux

.PHONY: all deps test run bench bench-deps asan tsan install clean check-deps valgrind

all: check-deps $(BUILD)/mtlua $(BUILD)/libmtlua.a $(BUILD)/libmtlua.so

check-deps:
	@$(DEPS_CHECK) || $(MAKE) --no-print-directory deps

deps:
	@if $(DEPS_CHECK); then echo "deps: all present"; else \
	  echo "deps: installing $(DEBS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); fi

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/gen/lib_bundle.c: $(LIB_LUA) vm_glue/bundle.pl
	@mkdir -p $(dir $@)
	perl vm_glue/bundle.pl $@ lib $(LIB_LUA)

$(BUILD)/obj/lib_bundle.o: $(BUILD)/gen/lib_bundle.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmtlua.a: $(OBJS)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libmtlua.so: $(OBJS)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/mtlua: $(BUILD)/obj/vm_glue/main.o $(BUILD)/libmtlua.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libmtlua.a $(BIN_LDLIBS)

# C tests of the embedding API (run from tests/capi.lua)
$(BUILD)/test_capi: tests/c/test_capi.c $(BUILD)/libmtlua.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libmtlua.a $(LDLIBS)

TEST_TIMEOUT ?= 120
TESTS ?= $(filter-out tests/tap.lua,$(wildcard tests/*.lua))
PROVE_EXEC = timeout -k 5 $(TEST_TIMEOUT) $(abspath $(BUILD))/mtlua
test: all $(BUILD)/test_capi
	MTLUA_BUILD=$(abspath $(BUILD)) prove -j2 --exec '$(PROVE_EXEC)' $(TESTS)

# in the notes' order: threads, queues, processes, pools, coroutines, sockets
TOUR := $(addprefix scripts/th_,sing_dance.lua enumerate.lua args.lua mythread.lua mutex.lua rlock.lua barrier.lua) $(wildcard scripts/queue_*.lua) scripts/producer_consumer.lua \
        $(wildcard scripts/mp_*.lua) $(wildcard scripts/pool_*.lua) \
        $(wildcard scripts/co_*.lua) $(wildcard scripts/sock_*.lua)
run: all
	@for s in $(TOUR); do echo "=== $$s"; timeout 60 $(BUILD)/mtlua $$s || exit 1; done

bench-deps:
	@if $(BENCH_CHECK); then :; else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_DEBS); fi

bench: all bench-deps
	tests/bench/run $(BUILD)/mtlua

asan:
	MTLUA_SANITIZER=address $(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" OPT=-O1 test

tsan:
	MTLUA_SANITIZER=thread TSAN_OPTIONS="suppressions=$(abspath tests/tsan.supp) halt_on_error=1 second_deadlock_stack=1 die_after_fork=0" \
	  $(MAKE) BUILD=build-tsan SAN="-fsanitize=thread" OPT=-O1 TEST_TIMEOUT=300 test

valgrind: all
	tests/valgrind_scripts $(BUILD)/mtlua

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BUILD)/mtlua $(DESTDIR)$(PREFIX)/bin/mtlua
	install -m 644 $(BUILD)/libmtlua.a $(DESTDIR)$(PREFIX)/lib/libmtlua.a
	install -m 755 $(BUILD)/libmtlua.so $(DESTDIR)$(PREFIX)/lib/libmtlua.so
	install -m 644 vm_glue/mtlua.h $(DESTDIR)$(PREFIX)/include/mtlua.h

clean:
	rm -rf build build-asan build-tsan

# libFuzzer target for pickle.loads (Debian clang), run for FUZZ_SECONDS;
# not part of `make test`.  Seeds are real pickles written by $(BUILD)/mtlua.
FUZZ_SECONDS ?= 300
FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer
.PHONY: fuzz
fuzz: all
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT="-O1 -DPK_FUZZ" \
	  SAN="-fsanitize=fuzzer-no-link $(FUZZ_SAN)" $(FUZZ_BUILD)/libmtlua.a
	$(FUZZ_CC) -O1 -g -DPK_FUZZ -fsanitize=fuzzer $(FUZZ_SAN) -Ivm_glue -Ilua_bindings \
	  $(shell pkg-config --cflags lua5.4) tests/fuzz/fuzz_pickle.c $(FUZZ_BUILD)/libmtlua.a \
	  $(LDLIBS) -Wl,-E -o $(FUZZ_BUILD)/fuzz_pickle
	mkdir -p $(FUZZ_BUILD)/corpus
	$(BUILD)/mtlua tests/fuzz/seeds.lua $(FUZZ_BUILD)/corpus
	$(FUZZ_BUILD)/fuzz_pickle -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	  -timeout=10 $(FUZZ_BUILD)/corpus
