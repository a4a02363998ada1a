# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install the project with its dev and spark extras (the
# first time: about 2 minutes and 2.6 GB on a 2-core machine, pyspark 0.5 GB of it); the spark extra lets
# `make test` run the Spark engine's parity tests, which skip, saying why, where Java 17 is missing.
# torch is pinned in the same pip command so that pip takes the CPU wheel (see docs/operations.md).
# `make demo DEMO_ARGS="--items 3000 --users 2000"` passes flags to `python -m tandem.server.demo`.
# `make demo DEMO_ARGS=--search-only` runs it on a shop without events (items and graded queries only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
DEMO_DIR ?= demo_out
DEMO_ARGS ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast check lint proto venv clean prometheus chromium redis

# A failed `venv` (e.g. Debian without python3-venv) leaves no half-made .venv behind that a second
# `make` would take for a working one.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "Tandem needs Python 3.11 or newer: '$(PYTHON)' is missing or older (pick one: make PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,spark]" "$(TORCH_PIN)"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m tandem.server.demo --out $(DEMO_DIR) $(DEMO_ARGS)

# The full suite, slow tests included: this is what CI runs. -rs prints why a test skipped.
test: $(VENV)/.installed prometheus chromium redis
	$(BIN)/python -m pytest -m "" -q -rs -p no:cacheprovider

# The real-Prometheus test (tests/e2e/test_deploy_stack.py) needs Debian's `prometheus` package
# (prometheus + promtool). Installed when missing and apt-get can (root, or sudo without a
# password); when it cannot, that test skips and says why.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
	  || echo "make: could not install the Debian package prometheus: the real-Prometheus test will skip"; }

# The report's rendering test (tests/index_builder/test_report.py) screenshots the page in a real
# headless browser: Debian's `chromium` package, installed the same way; without it that test
# checks the page but skips the screenshot and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
	  || echo "make: could not install the Debian package chromium: the report's screenshot test will skip"; }

# The event bus tests (tests/server/test_event_bus.py, test_fleet.py, tests/e2e/test_fleet_e2e.py)
# start their own redis-server on a free loopback port: Debian's `redis-server` package (7.0 or
# newer), installed the same way; without it those tests skip and say why.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null; } \
	  || echo "make: could not install the Debian package redis-server: the event bus tests will skip"; }

# Unit tests only (slow ones skipped): the quick loop while developing.
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .

check: lint test

proto: $(VENV)/.installed
	$(BIN)/python -m tandem.server.protogen

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
