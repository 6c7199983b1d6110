# memtap's front door. `make` installs missing Debian build dependencies
# (as root; otherwise it prints the command), configures with meson and
# builds into build/. `make demo` traces a bundled example and reports on
# it; `make test` runs every test.
PREFIX ?= /usr/local
BUILD ?= build
PYTHON ?= python3
DEBIAN_DEPS := gcc g++ pkg-config meson ninja-build libunwind-dev liblz4-dev \
               libdw-dev python3-dev python3-venv
# What only the tests need: node and Chromium run the HTML reports,
# valgrind checks the reader.
DEBIAN_TEST_DEPS := nodejs valgrind chromium
TEST_VENV := $(BUILD)/test-venv
# The package as pip installs it (pip install .), for the tests of the
# Python API, the pytest plugin and the IPython magics.
PKG_VENV := $(BUILD)/pkg-venv
PKG_SOURCES := pyproject.toml meson.build meson_options.txt python/meson.build \
               $(wildcard python/memtap/*.py preload/*.[ch] src/*.[ch] reader/*.[ch] reader/*.in)

.PHONY: all deps test-deps demo test unit integration install sanitize fuzz bench clean

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

deps:
	@missing=$$(for p in $(DEBIAN_DEPS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing: $$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing >/dev/null || \
	    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; \
	  else \
	    echo "memtap needs: sudo apt-get install -y $$missing"; exit 1; \
	  fi; \
	fi

test-deps:
	@$(MAKE) --no-print-directory deps DEBIAN_DEPS="$(DEBIAN_TEST_DEPS)"

$(BUILD)/build.ninja: meson.build | deps
	meson setup --reconfigure $(BUILD) >/dev/null 2>&1 || meson setup $(BUILD)

demo: all
	@rm -f $(BUILD)/demo.bin
	$(BUILD)/memtap run -o $(BUILD)/demo.bin -f examples/demo.py
	$(BUILD)/memtap stats $(BUILD)/demo.bin
	$(BUILD)/memtap summary -n 10 $(BUILD)/demo.bin
	$(BUILD)/memtap summary -n 5 --leaks $(BUILD)/demo.bin
	$(BUILD)/memtap flamegraph -o $(BUILD)/demo-flamegraph.html $(BUILD)/demo.bin

# What the tests need from PyPI (numpy: native stacks through a C
# extension; austin-python: reading the Austin export back; playwright:
# driving Chromium through the HTML reports).
TEST_REQUIREMENTS := pytest numpy austin-python playwright

$(TEST_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q $(TEST_REQUIREMENTS)
	touch $@

unit: all
	meson test -C $(BUILD) --print-errorlogs

$(PKG_VENV)/.deps: Makefile
	$(PYTHON) -m venv $(PKG_VENV)
	$(PKG_VENV)/bin/pip install -q pytest pytest-xdist ipython
	touch $@

$(PKG_VENV)/.installed: $(PKG_VENV)/.deps $(PKG_SOURCES)
	$(PKG_VENV)/bin/pip install -q --force-reinstall --no-deps .
	touch $@

integration: all test-deps $(TEST_VENV)/.installed $(PKG_VENV)/.installed
	MEMTAP_BUILD=$(abspath $(BUILD)) MEMTAP_PKG_VENV=$(abspath $(PKG_VENV)) \
	  $(TEST_VENV)/bin/pytest -q tests/integration

test: unit integration

# Side by side with memray, heaptrack and tracemalloc (docs/performance.md):
# writes bench/results/latest.md. BENCH_ARGS=--quick for a short run.
BENCH_ARGS ?=
bench: all test-deps
	$(PYTHON) bench/run.py --python $(PYTHON) $(BENCH_ARGS)

install: all
	meson configure $(BUILD) --prefix=$(PREFIX) >/dev/null
	meson install -C $(BUILD)

# The reader, collector and unit tests under ASan and UBSan (any finding
# fails); the shim is never instrumented: it runs inside other programs.
# Then every report command under valgrind memcheck (the plain build).
sanitize:
	$(MAKE) BUILD=build-sanitize all
	meson configure build-sanitize -Db_sanitize=address,undefined >/dev/null
	ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(MAKE) BUILD=build-sanitize test
	$(MAKE) all $(TEST_VENV)/.installed
	MEMTAP_VALGRIND=full $(TEST_VENV)/bin/pytest -q tests/integration/test_valgrind.py

FUZZ_TIME ?= 600
# The capture decoder under libFuzzer + ASan + UBSan (needs clang).
fuzz:
	tests/fuzz/build.sh build-fuzz
	mkdir -p build-fuzz/corpus
	build-fuzz/fuzz_reader -max_total_time=$(FUZZ_TIME) -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=build-fuzz/ build-fuzz/corpus tests/fuzz/corpus

# The README's picture: the demo's flame graph, rendered by headless
# Chromium (Debian's chromium package).
docs/flamegraph.png: demo
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
	  --window-size=1280,800 --screenshot=$@ file://$(abspath $(BUILD))/demo-flamegraph.html

clean:
	rm -rf $(BUILD) build-sanitize build-fuzz
