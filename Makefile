# The two commands a new user runs: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project into it:
# `make demo` mdc and MLflow (the demo's registry chapter), `make test` with the dev
# tools and Ray as well.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# installed: mdc, the dev tools and Ray (it implies DEMO)
STAMP  := $(VENV)/.installed
# installed: mdc and MLflow
DEMO   := $(VENV)/.installed-demo

export BENTOML_DO_NOT_TRACK := true

.PHONY: demo test lint typecheck check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(DEMO) $(STAMP)

$(DEMO): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO)

demo: $(DEMO)
	$(BIN)/mdc validate example-repo
	$(BIN)/mdc demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests/unit -n 2
	$(BIN)/python -m pytest --ignore=tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
