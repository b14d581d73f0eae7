#!/bin/sh
# How this example was signed. The private key is not in the repository: it stays with
# whoever signs (here $CELLBUS_SIGNING_KEY, made on first use). Running this again with
# another key signs the example anew; the pool then trusts that key instead.
set -eu
cd "$(dirname "$0")"
cellbus=${CELLBUS:-cellbus}
key=${CELLBUS_SIGNING_KEY:-$HOME/.config/cellbus/signer.pem}

# 1. A signing key (Ed25519; --algorithm p256 or rsa for the others).
if [ ! -f "$key" ]; then
    mkdir -p "$(dirname "$key")"
    "$cellbus" module keygen --algorithm ed25519 --out "$key"
fi
# 2. The module: the echo cell, unchanged.
cp ../echo/echo.wasm echo.wasm
# 3. The signature: over the module's digest and the one service it may serve.
"$cellbus" module sign echo.wasm --key "$key" --service signed-echo --out echo.wasm.sig
cp "${key%.pem}.pub.pem" signer.pub.pem
# 4. The pool trusts the public key; the Cell carries the signature document as it is.
python3 - <<'PY'
import json
key = open("signer.pub.pem").read()
signature = json.load(open("echo.wasm.sig"))
digest = signature["claims"]["digest"]
indent = lambda text, n: "".join(" " * n + line + "\n" for line in text.splitlines())
open("cellpool.yaml", "w").write(
    "# A wasm pool that runs only modules signed by the key in signer.pub.pem, in a namespace\n# of its own (the other examples' pool runs wasm too).\n"
    "apiVersion: cellbus.io/v1alpha1\nkind: CellPool\nmetadata:\n  name: signed\n  namespace: signed\n"
    "spec:\n  runtime: wasm\n  os: linux\n  trust:\n    keys:\n      - |\n"
    + indent(key, 8)
)
open("cell.yaml", "w").write(
    "# The echo module, signed for the service signed-echo (see build.sh):\n"
    "# `cellbus call signed-echo.say '{\"text\":\"hi\"}'` replies {\"text\":\"hi\"}.\n"
    "apiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata:\n  name: signed-echo\n  namespace: signed\n"
    "spec:\n  service: signed-echo\n  poolRef: signed\n  verbs:\n    - name: say\n"
    "  module:\n    digest: " + digest + "\n"
    "  # echo.wasm.sig, pasted as it is (JSON is YAML).\n"
    "  signature:\n" + indent(json.dumps(signature, indent=2), 4)
)
PY
echo "signed echo.wasm as $(sed -n 's/.*"keyId": "\(.*\)".*/\1/p' echo.wasm.sig)"
