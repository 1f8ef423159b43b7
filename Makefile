# Task targets: exactly what CI runs (`.ci/run` calls `make check`, `make test-main` and
# `make test-deploy`; `make test` is the last two).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra pytest arguments for the main suite, e.g. PYTEST_ARGS='-k multipart'.
PYTEST_ARGS ?=

.PHONY: setup packages run test test-main test-deploy chaos lint typecheck check bench stop status ci

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,containers]'
	touch $(STAMP)

## setup: Debian packages (installed as root, else the command is printed) and .venv
setup: packages $(STAMP)

packages:
	@deploy/debian-packages.sh run test

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

## test: the main suite, then the compose deployment's suite (where it can run)
test: test-main test-deploy

## test-main: the whole suite against the real local stack (infrastructure started if needed)
test-main: setup
	$(BIN)/clearance stack up --infra-only
	$(BIN)/pytest --ignore=tests/deploy $(PYTEST_ARGS)

## test-deploy: images built, `docker compose up`, scaled and killed, in a private engine
## (root and Debian's docker.io; elsewhere skipped with the reason, or an error in CI)
test-deploy: setup
	@if why=$$(deploy/engine.sh check); then deploy/engine.sh test; \
	elif [ -n "$$CLEARANCE_REQUIRE_DEPLOY_TESTS" ]; then echo "make test-deploy: $$why" >&2; exit 1; \
	else echo "make test-deploy: SKIPPED, $$why"; \
	  echo "  (as root: deploy/debian-packages.sh deploy && make test-deploy)"; fi

## chaos: the fault-injection suite alone (also part of `make test`); rewrites docs/reliability.md
chaos: setup
	$(BIN)/clearance stack up --infra-only
	CLEARANCE_CHAOS_REPORT=docs/reliability.md $(BIN)/pytest tests/chaos

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

check: lint typecheck

## bench: speed goals, printed as ratios against baselines measured in the same run
bench: setup
	@deploy/debian-packages.sh run test bench
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/presign.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/media.py
	$(BIN)/python bench/events.py

ci: check test
