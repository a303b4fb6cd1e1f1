#!/usr/bin/env bash
# Install what tests/test_browser.py needs on a fresh Debian machine, as root:
# Debian's chromium (Playwright's own browser download cannot reach its host here, so the
# test drives /usr/bin/chromium through Playwright's executable_path) and the Python
# `playwright` package from the dev extras. Idempotent: does nothing when both are present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${MECHWIDGETS_PYTHON:-.venv/bin/python}"

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "browser_setup: chromium is missing and this is not root; run: apt-get install -y chromium" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if ! "$PYTHON" -c "import playwright" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q "playwright>=1.45"
fi

chromium --version
