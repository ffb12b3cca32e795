#!/usr/bin/env bash
# Runs the reference firmware on this host (CPython + stand-ins for machine, network, umqtt)
# until SIGTERM. Usage: run-host.sh --broker URL --prefix P --machine M [--username U --password W]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then py="$here/../.venv/bin/python"; else py=python3; fi
fi
exec "$py" -u "$here/host/run_host.py" "$@"
