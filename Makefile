# Two entry points: `make demo` and `make test`. Each builds .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch 2.13.0's CPU wheel is on this machine's disk; any other version pulls a CUDA build.
TORCH   := torch==2.13.0

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mechinterp demo

lint: $(STAMP)
	$(BIN)/ruff check mechwidgets tests bench
	$(BIN)/ruff format --check mechwidgets tests bench
	$(BIN)/mypy mechwidgets/core

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist
