#!/usr/bin/env bash
# Runs the firmware's tests (firmware/tests) under a real MicroPython: the WebAssembly port
# published on npm, run by Node.js. Installs it into firmware/.mpy-wasm on first use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pkg="@micropython/micropython-webassembly-pyscript"
version="${MPY_WASM_VERSION:-1.27.0}"
dest="$here/.mpy-wasm"
mjs="$dest/node_modules/$pkg/micropython.mjs"
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "test-micropython: $tool is missing (apt-get install nodejs npm)" >&2; exit 2; }
done
installed="$(node -e "try{console.log(require('$dest/node_modules/$pkg/package.json').version)}catch{}" 2>/dev/null || true)"
if [ ! -f "$mjs" ] || [ "$installed" != "$version" ]; then
  echo "test-micropython: installing $pkg@$version into $dest"
  mkdir -p "$dest"
  npm install --prefix "$dest" --no-audit --no-fund --loglevel=error "$pkg@$version" >&2
fi
exec node "$here/tests/mpy_run.mjs" "$mjs" "$here"
