# The two quick-start commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml plugins/*/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[postgresql,mysql,redis,dev,bench]'
	for p in plugins/*/; do $(BIN)/pip install -q -e "$$p"; done
	touch $(STAMP)

.PHONY: install demo test lint services
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polyqueue demo

services:
	./.ci/services

test: $(STAMP)
	./.ci/services
	$(BIN)/ruff check polyqueue plugins tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)
