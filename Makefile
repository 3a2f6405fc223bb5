# The two set-up commands in the README: `make demo` (try it) and `make test` (run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv test unit demo demo-down clean

$(BIN)/fab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

venv: $(BIN)/fab

## Run every test: unit tests and integration tests on the Debian 12 and 13 test VMs (needs a Docker
## engine). Two workers: each Debian release's VMs run in one of them, side by side.
test: venv
	$(BIN)/python -m pytest -n 2 --durations=25

## Unit tests only (no Docker needed).
unit: venv
	$(BIN)/python -m pytest tests/unit

## Build the local test VM, provision Label Studio on it, print its URL and login.
demo: venv
	$(BIN)/python -m dev.testvm up

## Remove the demo VM.
demo-down: venv
	$(BIN)/python -m dev.testvm down

clean:
	rm -rf $(VENV) .pytest_cache
