"""The caller cell: `relay` with {"text": "..."} asks echo.say for the same text through
the bus and replies {"echoed": <echo's reply>, "via": "caller"}.

Built into caller.wasm by build.sh with componentize-py, which generates the `wit_world`
bindings of the `cell` world in contracts/wit/cell.wit at build time. A fresh instance
serves each request, so nothing here keeps state between requests.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import call, log
from wit_world.imports.types import CellError, ErrorCode


def _error(code: ErrorCode, message: str) -> Err:
    return Err(CellError(code=code, message=message, details=None, retryable=False))


class WitWorld(wit_world.WitWorld):
    def handle(self, verb: str, payload: str) -> str:
        if verb != "relay":
            raise _error(ErrorCode.UNKNOWN_VERB, f"caller has no verb `{verb}`")
        try:
            text = json.loads(payload)["text"]
        except (ValueError, TypeError, KeyError):
            text = None
        if not isinstance(text, str):
            raise _error(ErrorCode.BAD_REQUEST, "payload needs a string member `text`")

        log.log(log.Level.INFO, f"relaying {len(text)} characters to echo.say")
        # A call error (a CellError raised as Err) propagates unchanged: the caller's
        # reply is the error echo.say or the bus answered with.
        reply = call.request("echo", "say", json.dumps({"text": text}))
        try:
            echoed = json.loads(reply)
        except ValueError:
            raise _error(ErrorCode.INTERNAL, "echo.say replied with invalid JSON")
        return json.dumps({"echoed": echoed, "via": "caller"})
