#!/usr/bin/env bash
# The product on embedded defaults: SQLite file, in-process broker, demo data, simulated VM01.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/vendhub serve --demo "$@"
