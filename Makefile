# Two commands matter: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench sim clean test-airflow

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python demo/run.py

bench: $(STAMP)
	$(BIN)/python -m bridge.sim.bench
	$(BIN)/python -m bridge.sim.pipeline_bench

# Real Airflow against the bridge (tests/airflow). Installing Airflow takes a while, so its venv is kept
# outside the checkout, one per Airflow and Python version, reinstalled only when setup.cfg changes; the
# checkout itself is (re)linked on every run. tests/airflow/constraints-<version>.txt pins what last passed
# (Airflow publishes its constraints on GitHub, not PyPI), requirements-<version>.txt adds packages. AIRFLOW_VERSION=3.2.2
# tests the previous minor.
AIRFLOW_VERSION ?= 3.3.2
AIRFLOW_TESTS ?= tests/airflow
AIRFLOW_CACHE ?= $(HOME)/.cache/kube-redis-bridge
PY_TAG = $(shell $(PYTHON) -c 'import sys; print("py%d.%d" % sys.version_info[:2])')
AIRFLOW_VENV = $(AIRFLOW_CACHE)/airflow-$(AIRFLOW_VERSION)-$(PY_TAG)
AIRFLOW_EXTRAS = $(wildcard tests/airflow/requirements-$(AIRFLOW_VERSION).txt)
AIRFLOW_PINS = $(wildcard tests/airflow/constraints-$(AIRFLOW_VERSION).txt)
DEPS_HASH = $(shell cat setup.cfg $(AIRFLOW_EXTRAS) $(AIRFLOW_PINS) | $(PYTHON) -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')

test-airflow:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	@test -f $(AIRFLOW_VENV)/.deps-$(DEPS_HASH) || { \
		echo "Installing apache-airflow==$(AIRFLOW_VERSION) into $(AIRFLOW_VENV) (once)"; \
		$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip && \
		$(AIRFLOW_VENV)/bin/python -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" -e '.[dev,airflow]' \
			$(if $(AIRFLOW_EXTRAS),-r $(AIRFLOW_EXTRAS)) $(if $(AIRFLOW_PINS),-c $(AIRFLOW_PINS)) && \
		touch $(AIRFLOW_VENV)/.deps-$(DEPS_HASH); }
	@$(AIRFLOW_VENV)/bin/python -m pip install --quiet --no-deps -e . > $(AIRFLOW_VENV)/link.log 2>&1 || { cat $(AIRFLOW_VENV)/link.log; exit 1; }
	@# The executor type-checked against the real Airflow (the dev venv has none).
	$(AIRFLOW_VENV)/bin/mypy --follow-imports=silent bridge/airflow_executor.py bridge/airflow_config.py
	PATH="$(AIRFLOW_VENV)/bin:$$PATH" $(AIRFLOW_VENV)/bin/pytest $(AIRFLOW_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
