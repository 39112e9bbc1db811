# Two commands for a fresh clone: `make up` (venv, install, start the default mesh)
# and `make test` (test extras, the whole suite). Nothing else needs to be installed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# three workers on two cores (the suite waits on real processes more than it computes: two
# workers kept the cores 68% busy and took 638 s, three 90% and 485 s); a test file stays on
# one worker, so its module fixtures (a running mesh) start once; the longest files start
# first (tests/conftest.py). PYTEST_ARGS= runs serially.
PYTEST_ARGS ?= -n 3 --dist loadfile --no-loadscope-reorder --durations=15

.PHONY: up down status install test test-unit lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

up: $(VENV)/.installed
	$(BIN)/agentmesh up

down: $(VENV)/.installed
	$(BIN)/agentmesh down

status: $(VENV)/.installed
	$(BIN)/agentmesh status

test: $(VENV)/.installed-test lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the fast loop: the pure cores only (tests/unit starts no process; seconds in all)
test-unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/unit -q

lint: $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/ruff check agentmesh_cli agentmesh tests
	$(BIN)/mypy agentmesh_cli agentmesh

clean:
	rm -rf $(VENV) supervisor.d/*.ini supervisor.d/supervisord.conf .pytest_cache
