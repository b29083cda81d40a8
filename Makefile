# The README's two commands: `make demo` and `make test`.
.PHONY: setup demo lint test test-fast docs bench fuzz oracle lock

setup:
	@scripts/setup

# requirements/lock.txt (the versions scripts/setup installs): a clean resolve of every extra
# (about a minute, nothing installed), or `make lock VENV=.venv` to freeze a venv (a second)
lock:
	$(or $(wildcard .venv/bin/python),python3) scripts/lock.py $(if $(VENV),--from-venv $(VENV),)

demo: setup
	.venv/bin/zturbo generate "a red robot" --model demo --seed 42 -W 256 -H 256
	@echo "zturbo is .venv/bin/zturbo: run 'source .venv/bin/activate' to put it on PATH"

# imports only point down (import-linter contracts in pyproject.toml), no import cycle, ruff,
# mypy over the engine, config, caches and generation ([tool.mypy] in pyproject.toml)
lint: setup
	.venv/bin/lint-imports
	.venv/bin/python scripts/import_cycles.py
	.venv/bin/ruff check src tests benchmarks scripts
	.venv/bin/mypy

# two pytest workers (pytest-xdist): the tests are CPU-bound, one torch thread each
test: setup lint
	@scripts/system-deps
	.venv/bin/python -m pytest -q -n 2

# the inner loop (under 2 minutes): no browser, no new processes, no long runs
test-fast: setup
	.venv/bin/python -m pytest -q -n 2 -m "not browser and not subprocess and not slow"

docs: setup
	.venv/bin/python scripts/gen_cli_docs.py

# every script in benchmarks/; quick mode (< 5 min on 2 cores): make bench QUICK=1 or BENCH_QUICK=1
bench: setup
	@scripts/system-deps
	.venv/bin/python benchmarks/run_all.py $(if $(QUICK),--quick,)

# the suite's schemathesis run over every route, longer: make fuzz (EXAMPLES=100 per route)
fuzz: setup
	.venv/bin/python scripts/fuzz.py $(if $(EXAMPLES),--examples $(EXAMPLES),)

# the randomized cache-vs-no-cache oracle, long run (tests/support/oracle.py; a bounded run is in make test):
# make oracle SEED=1 SEQUENCES=100 N=40, or MINUTES=30 to run sequences until then; JSON=path
oracle: setup
	@scripts/system-deps
	.venv/bin/python tests/support/oracle.py --seed $(or $(SEED),1) --sequences $(or $(SEQUENCES),30) \
		--requests $(or $(N),40) $(if $(MINUTES),--minutes $(MINUTES),) $(if $(JSON),--json $(JSON),)
