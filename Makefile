# Two entry points: `make demo` and `make test`. Each builds .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch 2.13.0's CPU wheel is on this machine's disk; any other version pulls a CUDA build.
TORCH   := torch==2.13.0

.PHONY: demo test lint js browser-setup install clean

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
	$(BIN)/mypy mechwidgets

# Widget JavaScript: fail if the committed bundle is stale, then run its unit tests.
js:
	cd js && npm ci --no-audit --no-fund --loglevel=error && npm run check && npm test

# Debian's chromium for the real-browser test (Playwright's own download fails here).
browser-setup: $(STAMP)
	bash scripts/browser_setup.sh

test: $(STAMP) lint js browser-setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist
