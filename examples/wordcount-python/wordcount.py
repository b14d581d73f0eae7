#!/usr/bin/env python3
"""The wordcount service, a process cell written with the Python SDK (cellbus_cell, which
the runtime puts on every process cell's PYTHONPATH).

`cellbus call wordcount.count '{"text":"to be or not to be"}'` replies
{"words": 6, "distinct": 4, "top": ["be", "to"]}; `top` holds the words seen most, ties in
alphabetical order, at most `limit` of them (default 3).
"""

from collections import Counter

from cellbus_cell import CellError, serve


def count(payload, request):
    text = payload.get("text")
    if not isinstance(text, str):
        raise CellError("bad_request", "text must be a string", details={"field": "text"})
    limit = payload.get("limit", 3)
    words = Counter(word.strip(".,;:!?\"'()").lower() for word in text.split())
    words.pop("", None)
    most = sorted(words.items(), key=lambda item: (-item[1], item[0]))
    top = [word for word, seen in most if seen == most[0][1]][:limit] if most else []
    return {"words": sum(words.values()), "distinct": len(words), "top": top}


serve({"count": count})
