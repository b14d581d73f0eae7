"""A process cell written with the Python SDK (sdk/python/cellbus_cell.py, which the
runtime puts on every process cell's PYTHONPATH)."""

from cellbus_cell import CellError, serve


def hello(payload, request):
    name = payload.get("name")
    if not name:
        raise CellError("bad_request", "name is required", details={"field": "name"})
    return {"greeting": f"Hello, {name}!", "verb": request.verb}


serve({"hello": hello})
