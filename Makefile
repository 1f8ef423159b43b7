# Task targets: exactly what CI runs (`.ci/run` calls `make ci`, which calls `make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint typecheck check bench stop status ci

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## setup: create .venv with everything installed (idempotent)
setup: $(STAMP)

## run: bring the whole system up and show a sample upload end to end
run: setup
	$(BIN)/clearance stack up --infra-only
	$(BIN)/clearance migrate
	$(BIN)/clearance stack up
	$(BIN)/python -m devstack.demo

## stop: stop everything `make run` started
stop: setup
	$(BIN)/clearance stack down

status: setup
	$(BIN)/clearance stack status

## test: the whole suite against the real stack (infrastructure started if needed)
test: setup
	$(BIN)/clearance stack up --infra-only
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

check: lint typecheck

## bench: speed goals, printed as ratios against baselines measured in the same run
bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/presign.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/media.py

ci: check test
