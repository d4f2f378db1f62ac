# Compute Broker: the two commands (see README.md).
#   make run   installs into .venv and starts the broker with embedded defaults
#   make test  installs into .venv (with dev extras) and runs the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# podman settings that work on hosts where crun or setrlimit are refused (runc, no default
# ulimits); override with your own containers.conf.
CONTAINERS_CONF ?= $(CURDIR)/tests/containers.conf
export CONTAINERS_CONF

.PHONY: run test install lint bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# podman + runc for container jobs: installed when missing and this is a Debian host run as root.
system-deps:
	@command -v podman >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc; } || \
	  echo "note: podman not found; container jobs need it (runtime 'process' jobs work without)"

run: $(STAMP) system-deps
	$(BIN)/broker up $(ARGS)

lint: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m scheduler.bench
	$(BIN)/broker bench dispatch
	$(BIN)/broker bench submit

clean:
	rm -rf $(VENV) .broker .pytest_cache
