# The two quick-start commands, `make demo` and `make test`: each sets up what it needs on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.base-installed
FULL := $(VENV)/.full-installed

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The demo runs on the embedded SQLite default: the package alone is enough.
$(BASE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(BASE)

# Tests need every driver, the dev tools, the plugins and the benchmark harness (without its peers).
$(FULL): pyproject.toml benchmarks/pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/pip install -q -e '.[postgresql,mysql,redis,asyncio,web,dev]'
	$(BIN)/pip install -q -e benchmarks
	# Not dependencies of polyqueue: they let tests/test_readme_fastapi.py run the README's FastAPI example.
	$(BIN)/pip install -q fastapi httpx
	# Not dependencies of polyqueue: the dashboard's browser tests drive the Debian chromium-driver with Selenium.
	$(BIN)/pip install -q 'selenium>=4.20'
	for p in plugins/*/; do $(BIN)/pip install -q -e "$$p"; done
	touch $(BASE) $(FULL)

.PHONY: demo test lint services bench
demo: $(BASE)
	$(BIN)/polyqueue demo

services:
	./.ci/services

lint: $(FULL)
	$(BIN)/ruff check polyqueue plugins tests benchmarks
	$(BIN)/mypy

test: $(FULL) services lint
	$(BIN)/pytest -n 4 $(PYTEST_ARGS)

bench: $(FULL)
	$(BIN)/pip install -q -e 'benchmarks[peers]'
	$(BIN)/polyqueue bench $(BENCH_ARGS)
