"""The visits cell: `hit` with {"page": "..."} (or {} or null for "/") counts one more visit
of that page in the table `visits` of the cell's own PostgreSQL schema and replies
{"count": <visits of that page so far>}.

Built into visits.wasm by build.sh with componentize-py, which generates the `wit_world`
bindings of the `cell-with-db` world in contracts/wit/cell.wit at build time. A fresh
instance serves each request, so the count lives only in the database. The runtime sets
the role's search_path to the schema, so table names are unqualified.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import db, log
from wit_world.imports.types import CellError, ErrorCode

CREATE_TABLE = "CREATE TABLE IF NOT EXISTS visits (page text PRIMARY KEY, count bigint NOT NULL)"
UPSERT = (
    "INSERT INTO visits (page, count) VALUES ($1, 1) "
    "ON CONFLICT (page) DO UPDATE SET count = visits.count + 1 RETURNING count"
)
TABLE_MISSING = "SELECT to_regclass('visits') IS NULL AS missing"
UNDEFINED_TABLE = "42P01"
MAX_PAGE = 200


def _error(code: ErrorCode, message: str) -> Err:
    return Err(CellError(code=code, message=message, details=None, retryable=False))


def _page(payload: str) -> str:
    try:
        request = json.loads(payload)
    except ValueError:
        raise _error(ErrorCode.BAD_REQUEST, "payload is not JSON")
    if request is None:
        return "/"
    if not isinstance(request, dict):
        raise _error(ErrorCode.BAD_REQUEST, "payload must be an object or null")
    page = request.get("page", "/")
    if not isinstance(page, str) or not 1 <= len(page) <= MAX_PAGE:
        raise _error(ErrorCode.BAD_REQUEST, f"`page` must be a string of 1 to {MAX_PAGE} characters")
    return page


def _table_missing() -> bool:
    return json.loads(db.query(TABLE_MISSING, "[]"))[0]["missing"]


def _create_table() -> None:
    try:
        db.execute(CREATE_TABLE, "[]")
    except Err:
        # Two first requests on a fresh schema can both get past IF NOT EXISTS, and the
        # slower one then fails with a unique violation in pg_type. The table exists
        # then, so only an error that left no table is this request's failure.
        if _table_missing():
            raise


def _sqlstate(error: Err) -> str | None:
    """The SQLSTATE the runtime put in a db error's details, if any."""
    details = getattr(error.value, "details", None)
    try:
        return json.loads(details)["sqlstate"] if details else None
    except (ValueError, KeyError, TypeError):
        return None


def _upsert(page: str) -> int:
    rows = json.loads(db.query(UPSERT, json.dumps([page])))
    return rows[0]["count"]


class WitWorld(wit_world.WitWorld):
    def handle(self, verb: str, payload: str) -> str:
        if verb != "hit":
            raise _error(ErrorCode.UNKNOWN_VERB, f"visits has no verb `{verb}`")
        page = _page(payload)
        # One statement per request once the table exists. A db error (a CellError raised
        # as Err) propagates unchanged, except that an upsert refused for want of its table
        # (SQLSTATE 42P01, in the error's details) makes the table and is tried once more:
        # a refused statement changed nothing, so repeating it cannot count a visit twice.
        # Asking the database whether the table is missing instead would race a concurrent
        # first request that makes it in between.
        try:
            count = _upsert(page)
        except Err as error:
            if _sqlstate(error) != UNDEFINED_TABLE:
                raise
            log.log(log.Level.INFO, "creating the table visits")
            _create_table()
            count = _upsert(page)
        return json.dumps({"count": count})
