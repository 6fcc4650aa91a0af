# Developer entry points: `make demo`, `make test`, `make lint`, `make bench`, `make clean`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: all venv install install-test demo lint test bench clean

all: test

# The virtualenv itself (pip is upgraded once, when it is created).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes. The demo runs its task through Airflow, so it installs
# the [airflow] extra; a worker node needs only the base package (`pip install airflow-event-service`).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[airflow]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[airflow,test]'
	touch $@

venv install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/event-service demo --workdir .demo

# ruff's settings are in pyproject.toml ([tool.ruff]).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# Lint first, then pytest; pytest's exit status is make's (including 5, "no tests collected").
test: lint
	bash tools/ensure-test-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/dispatch.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
