# Compute Broker: the two commands (see README.md).
#   make run   installs into .venv and starts the broker with embedded defaults
#   make test  installs into .venv (with dev extras) and runs the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/broker up $(ARGS)

lint: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/lint-imports
	CONTAINERS_CONF=$(CURDIR)/tests/containers.conf $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m scheduler.bench
	$(BIN)/broker bench dispatch
	$(BIN)/broker bench submit

clean:
	rm -rf $(VENV) .broker .pytest_cache
