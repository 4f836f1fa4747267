# The README's two commands are `make demo` and `make test`; everything else is for developers.
# Each target creates the virtualenv (.venv) and installs the project first when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

N ?= 1000
DB ?=
CONVEYOR_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
export CONVEYOR_TEST_POSTGRES_URL

.PHONY: demo test test-cache-modes bench chaos model-long protos lint typecheck clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## demo: simulator + coordinator (SQLite unless DB=URL) + 2 executors running N workflows
demo: $(STAMP)
	$(BIN)/python -m bench.demo --workflows $(N) $(if $(DB),--db "$(DB)") $(if $(LLM),--llm $(LLM))

## test: the whole suite, on SQLite and on PostgreSQL ($$CONVEYOR_TEST_POSTGRES_URL), in TEST_WORKERS
## processes (default 2; each test file stays in one process: its module fixtures are built once)
TEST_WORKERS ?= 2
test: $(STAMP)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests: the suite is broken" >&2; exit 1; fi; \
	exit $$status

## test-cache-modes: the workflow and replay tests again with the workflow cache off, then evicting
## at random (CONVEYOR_WORKFLOW_CACHE): a cached run and a replay from scratch must decide the same
CACHE_MODE_TESTS = tests/core/test_races.py tests/core/test_replay_determinism.py \
	tests/core/test_workflow_features.py tests/core/test_replay_queue.py tests/core/test_end_to_end_inprocess.py \
	tests/property/test_coordinator_model.py
test-cache-modes: $(STAMP)
	CONVEYOR_WORKFLOW_CACHE=off $(BIN)/python -m pytest -q $(CACHE_MODE_TESTS)
	CONVEYOR_WORKFLOW_CACHE=random-evict $(BIN)/python -m pytest -q $(CACHE_MODE_TESTS)

## bench: the standard benchmark suite (about an hour; QUICK=1 for a few minutes); results in results/
# (.[dev] includes .[bench]: matplotlib, the DBOS, Temporal and Restate peers, the profilers)
bench: $(STAMP)
	$(BIN)/python -m bench suite $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

## chaos: the fault-injection soak, 10,000 workflows under every fault, then the invariant report;
## then CHAOS_FAILOVERS (default 20) leader failovers between two coordinators on PostgreSQL
## (CHAOS_N=<workflows>, CHAOS_DB=sqlite|postgresql|URL; default PostgreSQL); results in results/chaos/
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(if $(CHAOS_N),--workflows $(CHAOS_N)) $(if $(CHAOS_DB),--db "$(CHAOS_DB)")
	$(BIN)/python -m bench.chaos.failover --db "$(CONVEYOR_TEST_POSTGRES_URL)" --failovers $(or $(CHAOS_FAILOVERS),20)
	$(MAKE) model-long

## model-long: the whole-coordinator state machine (tests/property/test_coordinator_model.py), long and
## with fresh random examples, on SQLite and PostgreSQL (MODEL_FAMILIES=all|a,b,...; MODEL_EXAMPLES=N)
model-long: $(STAMP)
	CONVEYOR_MODEL_RANDOM=1 CONVEYOR_MODEL_EXAMPLES=$(or $(MODEL_EXAMPLES),200) CONVEYOR_MODEL_STEPS=50 \
	CONVEYOR_MODEL_FAMILIES=$(MODEL_FAMILIES) \
	$(BIN)/python -m pytest -q --timeout=0 tests/property/test_coordinator_model.py

## protos: regenerate conveyor/v1 from protos/ (commit the result)
protos: $(STAMP)
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy conveyor bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .scratch
