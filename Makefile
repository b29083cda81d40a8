# The README's two commands: `make demo` and `make test`.
.PHONY: setup demo test docs bench

setup:
	@scripts/setup

demo: setup
	.venv/bin/zturbo generate "a red robot" --model demo --seed 42 -W 256 -H 256

test: setup
	@scripts/system-deps
	.venv/bin/python -m pytest -q

docs: setup
	.venv/bin/python scripts/gen_cli_docs.py

bench: setup
	@scripts/system-deps
	.venv/bin/python benchmarks/cache_tiers.py
	.venv/bin/python benchmarks/server.py --quick
