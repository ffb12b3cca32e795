#!/usr/bin/env bash
# Creates .venv (if missing) and installs vendhub with its dev tools into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.vendhub-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
  echo "vendhub installed in .venv: run .venv/bin/vendhub, or 'source .venv/bin/activate' first" >&2
fi
