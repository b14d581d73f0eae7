"""Write a Cellbus process cell in Python, with the standard library only.

A process cell reads one request envelope per line on stdin and writes one reply per line
on stdout, matched by the request's `id`, several requests in flight at once (see the
README, "Process cells"). This module does the protocol; you write handlers:

    from cellbus_cell import CellError, serve

    def hello(payload, request):
        if not payload.get("name"):
            raise CellError("bad_request", "name is required")
        return {"greeting": f"Hello, {payload['name']}!"}

    serve({"hello": hello})

Each handler gets the request's payload (parsed JSON) and the `Request` (verb, ids, the
time left) and returns a JSON-serialisable value. Raise `CellError` for an error reply
with a code; any other exception is answered `cell_failed` and its traceback goes to
stderr, which the runtime logs. Handlers run on a pool of threads, so write them to be
thread-safe; print diagnostics to stderr, never to stdout.
"""

import json
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

__all__ = ["CellError", "Request", "serve"]

# The closed set of error codes of the wire protocol.
CODES = frozenset(
    {
        "bad_request",
        "schema_violation",
        "unknown_verb",
        "unavailable",
        "timeout",
        "resource_exhausted",
        "cell_failed",
        "forbidden",
        "internal",
    }
)


class CellError(Exception):
    """An error reply: `code` is one of CODES; `details` any JSON value."""

    def __init__(self, code, message, details=None, retryable=None):
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}; use one of {sorted(CODES)}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.retryable = retryable

    def body(self):
        body = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        if self.retryable is not None:
            body["retryable"] = self.retryable
        return body


class Request:
    """One request: its verb, payload, ids and deadline."""

    def __init__(self, envelope):
        self.id = envelope["id"]
        self.correlation_id = envelope.get("correlationId", self.id)
        self.service = envelope.get("service")
        self.verb = envelope["verb"]
        self.payload = envelope.get("payload")
        self.meta = envelope.get("meta") or {}
        timeout_ms = envelope.get("timeoutMs")
        self.deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000

    def time_left(self):
        """Seconds until the runtime gives up on this request (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


def serve(handlers, workers=8, stdin=None, stdout=None):
    """Answers requests until stdin ends. `handlers` maps verbs to callables."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    lock = threading.Lock()

    def write(line):
        data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        with lock:
            stdout.write(data)
            stdout.flush()

    def run(envelope):
        request = Request(envelope)
        handler = handlers.get(request.verb)
        try:
            if handler is None:
                raise CellError("unknown_verb", f"no handler for verb {request.verb!r}")
            payload = handler(request.payload, request)
            line = {"id": request.id, "ok": True, "payload": payload}
            # Fail here, in the handler's name, rather than with half a line written.
            json.dumps(line)
        except CellError as error:
            line = {"id": request.id, "ok": False, "error": error.body()}
        except Exception as error:  # a handler's bug: answered, logged, the cell lives on
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            message = f"{type(error).__name__}: {error}"
            line = {"id": request.id, "ok": False, "error": {"code": "cell_failed", "message": message}}
        write(line)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cell") as pool:
        for raw in stdin:
            try:
                envelope = json.loads(raw)
            except ValueError as error:
                # Only the runtime writes here, so this is a bug somewhere: say so, go on.
                print(f"cellbus_cell: a line that is not a request: {error}", file=sys.stderr, flush=True)
                continue
            pool.submit(run, envelope)
