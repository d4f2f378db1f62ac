# Compute Broker: the two commands (see README.md).
#   make run   installs into .venv and starts the broker with embedded defaults
#   make test  installs into .venv (with dev extras) and the system packages the suite uses
#              (podman, runc, busybox-static, chromium; as root on Debian), then runs it all
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# the suite's 30 slowest tests at the end of every run: where its 20 minutes go
PYTEST_ARGS ?= --durations=30

# podman settings that work on hosts where crun or setrlimit are refused (runc, no default
# ulimits); override with your own containers.conf.
CONTAINERS_CONF ?= $(CURDIR)/tests/containers.conf
export CONTAINERS_CONF

.PHONY: run test install lint bench clean system-deps test-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System packages: installed when missing on a Debian host run as root, otherwise a note says
# what is missing and what it disables (scripts/system-deps.sh).
system-deps:
	@sh scripts/system-deps.sh run

test-deps:
	@sh scripts/system-deps.sh test

run: $(STAMP) system-deps
	$(BIN)/broker up $(ARGS)

lint: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP) test-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m scheduler.bench
	$(BIN)/broker bench dispatch
	$(BIN)/broker bench submit

clean:
	rm -rf $(VENV) .broker .pytest_cache
