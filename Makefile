# shardsock — `make` alone lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

# Every Python step runs in the environment `make setup` makes (Debian's
# python3 is externally managed, PEP 668; see scripts/setup.sh).
VENV    := $(CURDIR)/.venv
PY      ?= $(VENV)/bin/python3
CC      ?= cc
BUILD   := build
WARN    := -Wall -Wextra -Werror
CSTD    := -std=c11 -D_GNU_SOURCE
INC     := -Icore/include -Icore
CFLAGS  ?= -O2 -g
SAN     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

ENGINE_SRC := $(sort $(wildcard core/*.c) $(wildcard core/wire/*.c))
ENGINE_HDR := $(wildcard core/*.h core/wire/*.h core/include/shardsock/*.h)
ENGINE_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(ENGINE_SRC))
ENGINE_SAN := $(patsubst %.c,$(BUILD)/san/%.o,$(ENGINE_SRC))
DAEMON_SRC := $(sort $(wildcard core/daemon/*.c) $(filter-out %.bpf.c,$(wildcard core/netdev/*.c)))
DAEMON_LIB := -lxdp -lbpf -luring
# The afxdp backend's XDP program; shardsockd loads it from its own directory.
XDP_OBJ    := $(BUILD)/xdp_redirect.bpf.o
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -I/usr/include/$(shell $(CC) -print-multiarch 2>/dev/null)
DAEMON_HDR := $(wildcard core/netdev/*.h core/daemon/*.h core/include/shardsock/*.h)
ASAN_MOD    = $(BUILD)/asan/_engine.so
PYTEST      = $(PY) -m pytest -q -p no:cacheprovider

.PHONY: help setup build test test-engine test-engine-sanitized test-shim test-preload test-compat compat soak soak-connections check-engine-symbols demo bench bench-engine bench-instances bench-shim bench-nginx bench-compare clean

help: ## list the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-24s %s\n", $$1, $$2}'

setup: ## as root: Debian packages, the Python environment .venv, `shardsock` in /usr/local/bin (idempotent)
	scripts/setup.sh

# The environment, made once by `make setup`, for targets that need Python.
$(VENV)/bin/python3:
	scripts/setup.sh

build: $(BUILD)/libssengine.a $(XDP_OBJ) $(BUILD)/shardsockd $(BUILD)/shardsockd-san $(BUILD)/echo_server $(BUILD)/echo_bench $(BUILD)/linkem $(BUILD)/libshardsock.so $(BUILD)/sockcheck $(BUILD)/threadstress $(BUILD)/pair $(BUILD)/pair-san $(BUILD)/wheel_test $(BUILD)/wheel_test-san $(BUILD)/ring_stress $(BUILD)/ring_stress-san $(BUILD)/ring_stress-tsan preload/.engine-built ## build every C part

$(BUILD)/obj/%.o: %.c $(ENGINE_HDR)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $(INC) -c $< -o $@

$(BUILD)/san/%.o: %.c $(ENGINE_HDR)
	@mkdir -p $(dir $@)
	@echo "  CC-SAN  $<"
	@$(CC) $(CSTD) $(WARN) $(SAN) $(INC) -c $< -o $@

$(BUILD)/libssengine.a: $(ENGINE_OBJ)
	@echo "  AR      $@"
	@ar rcs $@ $^

$(XDP_OBJ): core/netdev/xdp_redirect.bpf.c
	@mkdir -p $(dir $@)
	@echo "  CC-BPF  $<"
	@clang $(BPF_CFLAGS) -c $< -o $@

$(BUILD)/shardsockd: $(DAEMON_SRC) $(DAEMON_HDR) $(ENGINE_OBJ)
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $(INC) $(DAEMON_SRC) $(ENGINE_OBJ) -o $@ $(DAEMON_LIB)

$(BUILD)/shardsockd-san: $(DAEMON_SRC) $(DAEMON_HDR) $(ENGINE_SAN)
	@echo "  LD-SAN  $@"
	@$(CC) $(CSTD) $(WARN) $(SAN) $(INC) $(DAEMON_SRC) $(ENGINE_SAN) -o $@ $(DAEMON_LIB)

# Demo and benchmark programs on the kernel's sockets.
$(BUILD)/echo_server: apps/echo_server.c
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $< -o $@ -lpthread

$(BUILD)/echo_bench: apps/echo_bench.c
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $< -o $@

# The preload library: the shim's sources, built position-independent, with
# only the intercepted calls exported.
SHIM_SRC := $(sort $(wildcard shim/*.c))
$(BUILD)/libshardsock.so: $(SHIM_SRC) $(wildcard shim/*.h) core/include/shardsock/channel.h core/include/shardsock/engine.h
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $(INC) -fPIC -shared -fvisibility=hidden $(SHIM_SRC) -o $@ -ldl -lpthread

# The preload library's scripted run through the socket calls (shim/tests).
$(BUILD)/sockcheck: shim/tests/sockcheck.c
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $< -o $@ -lpthread

# Threads of one process accepting and connecting at once (shim/tests).
$(BUILD)/threadstress: shim/tests/threadstress.c
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $< -o $@ -lpthread

# The link emulator the impaired tests put between the kernel and the stack.
$(BUILD)/linkem: apps/linkem.c
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $< -o $@

# Test and benchmark programs, each with a sanitizer twin.
$(BUILD)/%: core/tests/%.c $(ENGINE_OBJ)
	@echo "  LD      $@"
	@$(CC) $(CSTD) $(WARN) $(CFLAGS) $(INC) $^ -o $@

$(BUILD)/%-san: core/tests/%.c $(ENGINE_SAN)
	@echo "  LD-SAN  $@"
	@$(CC) $(CSTD) $(WARN) $(SAN) $(INC) $^ -o $@

# The channel's ring protocol under threads, also with ThreadSanitizer.
$(BUILD)/ring_stress-tsan: core/tests/ring_stress.c core/include/shardsock/ring.h
	@echo "  LD-TSAN $@"
	@$(CC) $(CSTD) $(WARN) -O1 -g -fsanitize=thread $(INC) $< -o $@ -lpthread

# The Python extension (preload/_engine*.so) and its sanitizer twin.
preload/.engine-built: $(ENGINE_SRC) $(ENGINE_HDR) preload/_build_engine.py | $(VENV)/bin/python3
	@echo "  CFFI    preload/_engine (and its sanitizer build in $(BUILD)/asan)"
	@$(PY) preload/_build_engine.py >/dev/null
	@$(PY) preload/_build_engine.py --sanitize $(BUILD)/asan >/dev/null
	@touch $@

check-engine-symbols: $(BUILD)/libssengine.a ## the engine calls nothing but memory functions: no socket, I/O or clock
	@bad=$$(nm -u $(BUILD)/libssengine.a | awk '{print $$2}' | grep -v '^ss_' | \
	  grep -vxE '(malloc|calloc|realloc|free|memcpy|memmove|memset|memcmp|__errno_location|__stack_chk_fail)' | sort -u); \
	if [ -n "$$bad" ]; then echo "engine objects call outside the engine: $$bad"; exit 1; fi; \
	echo "engine symbols: only memory functions from libc; no kernel socket, I/O or clock calls"

test-engine: build ## the engine's and the instances' tests (100 MB each way across the impaired link)
	SHARDSOCK_IMPAIRED_MB=100 $(PYTEST) core/tests

# The impaired-link tests run the instances' ordinary paths slowly; the
# engine's loss recovery runs sanitized in test_pair (make test's time limit).
test-engine-sanitized: build ## the same tests (but the impaired link's) against the ASan+UBSan builds of the engine and shardsockd
	SHARDSOCK_ENGINE_MODULE=$$(ls $(CURDIR)/$(BUILD)/asan/_engine*.so) SHARDSOCKD=$(CURDIR)/$(BUILD)/shardsockd-san \
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	SHARDSOCK_SANITIZED=1 $(PYTEST) core/tests --ignore=core/tests/test_instances_impaired.py

test-shim: build ## the preload library: programs on the kernel and under the library, compared (also against the sanitized shardsockd)
	$(PYTEST) shim/tests
	SHARDSOCKD=$(CURDIR)/$(BUILD)/shardsockd-san ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(PYTEST) shim/tests

test-preload: build ## the management layer's tests
	$(PYTEST) preload/tests

test-compat: compat

compat: build ## the compatibility suite: real programs on the kernel and under shardsock, compared; writes compat_tests/MATRIX.md
	$(PYTEST) compat_tests

test: setup build check-engine-symbols test-engine test-engine-sanitized test-shim test-preload test-compat ## setup, build, then every test

soak: build ## long runs: 500 MB each way across the impaired link (loss, duplication, reordering, delay), every backend
	SHARDSOCK_IMPAIRED_MB=500 $(PYTEST) core/tests/test_instances_impaired.py -k echo

soak-connections: build ## 60 s of short connections (nginx, wrk: Connection: close) between programs under the library over 127.0.0.1: conn/s per 5 s, PAWS drops, resets
	$(PY) scripts/soak_connections.py

demo: setup build ## what runs today: the lossy 100 MB transfer, instances on a tap, nginx under the library serving a page, a short shardsock bench (chart: build/demo-bench.png)
	$(PY) scripts/demo.py

bench: build bench-engine bench-instances bench-shim bench-nginx bench-compare ## benchmarks (not tests); numbers go in the README

bench-engine: build ## engine cost per segment and per connection (callgrind), memory per connection
	$(PY) scripts/bench_engine.py

bench-instances: build ## echo round trips and bulk Gbit/s: kernel vs shardsock (tap, afpacket, afxdp), in rounds
	$(PY) scripts/bench_instances.py

bench-shim: build ## echo_server on the kernel and under libshardsock.so, and its system calls per round trip
	$(PY) scripts/bench_shim.py

bench-nginx: build ## nginx serving 64 bytes: kernel (veth) vs shardsock (tap, listen spawn), keep-alive and close, latency, CPU per request (chart build/bench-nginx.png)
	$(PY) scripts/bench_nginx.py

bench-compare: build ## shardsock bench: nginx keep-alive/close, echo, and nginx+wrk both preloaded over 127.0.0.1, kernel vs shardsock, table and chart (build/shardsock-bench.png)
	$(PY) -m preload.cli bench --chart $(BUILD)/shardsock-bench.png

clean: ## remove build products
	rm -rf $(BUILD) preload/_engine*.so preload/_engine.c preload/.engine-built *.egg-info
