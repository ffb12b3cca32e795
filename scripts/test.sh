#!/usr/bin/env bash
# The test command: installs what is missing, makes sure the services run, runs every tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
# Coverage of src/vendhub (greenlet-aware, see pyproject) is reported at the end; test order is
# shuffled by pytest-randomly (the seed is printed; replay an order with `--randomly-seed=N`,
# see docs/testing.md).
exec .venv/bin/python -m pytest --cov --cov-report=term "$@"
