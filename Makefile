# Common commands. `make demo` and `make test` work on a fresh clone with only Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
BENCH_STAMP = $(VENV)/.installed-bench

.PHONY: install demo test unit integration chaos browser lint typecheck bench bench-scaling worker flower clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the support-ticket workflow over 500 sample tickets under injected faults, embedded default
	ORCH_LOG_LEVEL=$${ORCH_LOG_LEVEL:-ERROR} $(BIN)/python -m tasks.demo --tickets 500

test: $(STAMP)  ## every test: unit, then integration (needs Redis and PostgreSQL on loopback)
	$(BIN)/pytest tests/unit -q
	$(BIN)/pytest tests/integration -q

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

chaos: $(STAMP)  ## kill workers and the broker under load, partition hosts (network namespaces, as root) (minutes; Redis, redis-server, PostgreSQL)
	$(BIN)/pytest tests/chaos -q -s

browser: $(STAMP)  ## the dashboard in Debian's chromium (apt-get install -y chromium); skips without it, fails in CI
	$(BIN)/pytest tests/browser -q

lint: $(STAMP)  ## ruff, then the import-linter contracts (pyproject.toml: the floors)
	$(BIN)/ruff check orchestration tasks config tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

$(BENCH_STAMP): $(STAMP) pyproject.toml
	@$(BIN)/pip install --quiet -e '.[dev,bench]' && touch $(BENCH_STAMP) || \
		echo "the bench extra did not install: bench/dbos_peer.py will skip its row"

bench: $(BENCH_STAMP)  ## engine vs raw Celery, every target row, then vs DBOS (needs Redis; PostgreSQL optional)
	@dump=$$(mktemp) && $(BIN)/python bench/overhead.py --dump $$dump && \
		$(BIN)/python bench/perf.py --overhead-json $$dump; rc=$$?; rm -f $$dump; \
		$(BIN)/python bench/dbos_peer.py || rc=$$?; exit $$rc

bench-scaling: $(STAMP)  ## runs/s with 1, 2, 4 workers and per-run Redis/SQL/CPU costs (15-40 min; redis-server, PostgreSQL; QUICK=1: a 5-min smoke run)
	$(BIN)/python bench/scaling.py $(if $(QUICK),--quick)

flower: $(STAMP)  ## Flower on 127.0.0.1:5555; basic auth from FLOWER_BASIC_AUTH=user:password
	$(BIN)/orchestrate flower --address 127.0.0.1 --port 5555

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
