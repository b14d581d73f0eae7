"""The Python SDK for process cells, on the lines the runtime writes and reads."""

import io
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cellbus_cell import CODES, CellError, serve  # noqa: E402


def run(handlers, *requests):
    lines = "".join(json.dumps(r) + "\n" for r in requests).encode()
    out = io.BytesIO()
    serve(handlers, workers=4, stdin=io.BytesIO(lines), stdout=out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    return {reply["id"]: reply for reply in replies}


def request(id, verb, payload=None, **extra):
    return {"id": id, "service": "s", "verb": verb, "sentAt": "2026-12-01T00:00:00Z", "payload": payload, **extra}


def test_each_request_is_answered_under_its_id():
    replies = run(
        {"double": lambda payload, req: payload * 2},
        request("a", "double", 2),
        request("b", "double", 5),
    )
    assert replies == {"a": {"id": "a", "ok": True, "payload": 4}, "b": {"id": "b", "ok": True, "payload": 10}}


def test_errors_keep_their_code_and_details():
    def refuse(payload, req):
        raise CellError("forbidden", "not you", details={"who": payload}, retryable=False)

    reply = run({"go": refuse}, request("a", "go", "eve"))["a"]
    assert reply == {"id": "a", "ok": False, "error": {"code": "forbidden", "message": "not you", "details": {"who": "eve"}, "retryable": False}}


def test_unknown_verbs_bugs_and_unserialisable_results_are_answered(capsys):
    replies = run(
        {"boom": lambda p, r: 1 / 0, "odd": lambda p, r: {1, 2}},
        request("a", "nope"),
        request("b", "boom"),
        request("c", "odd"),
    )
    assert replies["a"]["error"]["code"] == "unknown_verb"
    assert replies["b"]["error"] == {"code": "cell_failed", "message": "ZeroDivisionError: division by zero"}
    assert replies["c"]["error"]["code"] == "cell_failed"
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_the_request_carries_ids_and_time_left():
    seen = {}

    def look(payload, req):
        seen.update(verb=req.verb, correlation=req.correlation_id, left=req.time_left())
        return None

    run({"look": look}, request("a", "look", correlationId="c-1", timeoutMs=5000))
    assert seen["verb"] == "look" and seen["correlation"] == "c-1"
    assert 0 < seen["left"] <= 5


def test_a_line_that_is_not_a_request_is_skipped(capsys):
    out = io.BytesIO()
    serve({"x": lambda p, r: 1}, stdin=io.BytesIO(b"garbage\n" + json.dumps(request("a", "x")).encode() + b"\n"), stdout=out)
    assert json.loads(out.getvalue()) == {"id": "a", "ok": True, "payload": 1}
    assert "not a request" in capsys.readouterr().err


def test_only_the_protocols_codes_are_accepted():
    assert "cell_failed" in CODES
    with pytest.raises(ValueError):
        CellError("oops", "x")
