# Two commands do everything on a fresh machine (Python 3.11+, git, make):
#   make demo   create .venv, install pinned dependencies, run a whole campaign
#   make test   install test dependencies too, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: demo test install bench lock clean serve prefect-yaml

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(TSTAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bulletin demo $(if $(HOME_DIR),--home $(HOME_DIR),)

test: $(TSTAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

serve: $(STAMP)
	$(BIN)/bulletin serve

bench: $(TSTAMP)
	$(BIN)/python bench/collect.py

lock: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	{ echo "# Pinned versions installed together (pip freeze), used by make. Update: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^-e'; } > requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache

prefect-yaml: $(STAMP)
	$(BIN)/python -m flows.deployments
