# Everything runs from a local virtualenv; the only prerequisites are Python 3.11+, pip and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

up: $(STAMP)                ## run the EST service and the broker on the SQLite default
	$(BIN)/fleet up

test: $(STAMP)              ## the whole test suite (PostgreSQL tests skip without FLEET_TEST_POSTGRES_URL)
	$(BIN)/python -m pytest

test-fast: $(STAMP)         ## skip the slow end-to-end tests
	$(BIN)/python -m pytest -m 'not slow'

bench: $(STAMP)             ## every benchmark side by side (needs mosquitto, openssl): bench/RESULTS.md
	bench/run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) fleet-data .pytest_cache .mypy_cache .ruff_cache
