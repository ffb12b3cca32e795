#!/usr/bin/env bash
# The test command: installs what is missing, makes sure the services run, runs every tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
exec .venv/bin/python -m pytest "$@"
