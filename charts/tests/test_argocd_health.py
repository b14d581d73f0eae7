"""The Argo CD health checks of charts/cellbus/argocd, run on statuses as cellbus-operator
writes them.

Each script runs in Lua 5.1 (lupa.lua51) set up the way Argo CD sets up gopher-lua for a
check from argocd-cm: only the base, table and package libraries, no string library (so no
string methods either), with the resource in the global `obj` and the script run as one
chunk whose top-level `return hs` is the result.
"""

import pathlib

import pytest

try:
    import lupa.lua51 as lua51
except ImportError as error:  # a missing lupa fails every test; nothing is skipped
    lua51 = None
    LUPA_MISSING = error
try:
    import yaml
except ImportError as error:
    yaml = None
    YAML_MISSING = error

ARGOCD = pathlib.Path(__file__).resolve().parent.parent / "cellbus" / "argocd"
SCRIPTS = {"Cell": ARGOCD / "cell-health.lua", "CellPool": ARGOCD / "cellpool-health.lua"}
PATCH = ARGOCD / "argocd-cm-patch.yaml"
INSTALL = "run scripts/setup, or .venv/bin/pip install -r scripts/requirements-dev.txt"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def argo_lua():
    """A Lua 5.1 state with what Argo CD opens for an argocd-cm health check."""
    if lua51 is None:
        pytest.fail(f"lupa is not importable ({LUPA_MISSING}): {INSTALL}", pytrace=False)
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(
        """
        debug.setmetatable("", nil)
        string, math, io, os, debug, coroutine = nil, nil, nil, nil, nil, nil
        """
    )
    return lua


def to_lua(lua, value):
    """`value` as Argo CD hands it to Lua: objects become tables, lists 1-based arrays."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(lua, item)
        return table
    return value


def health(kind, obj):
    """(status, message) of `obj` by the script for `kind`."""
    lua = argo_lua()
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(SCRIPTS[kind].read_text())
    assert lua51.lua_type(result) == "table", f"the script returned {result!r}, not a table"
    hs = dict(result.items())
    assert set(hs) <= {"status", "message"}, f"unexpected fields in {hs}"
    assert hs.get("status") in ARGO_STATUSES, f"not an Argo CD health status: {hs}"
    return hs["status"], hs.get("message")


# Samples, as the operator writes them (operator/src/controller, readiness.rs, scheduling.rs).

BUS = "nats://nats.nats.svc:4222"
DIGEST = "sha256:" + "1" * 64


def condition(type_, status, reason, message, generation=1):
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def obj(kind, conditions=None, generation=1, observed=None, **status):
    """A `kind` at `generation`; with conditions (or `observed`), a status observing it."""
    resource = {
        "apiVersion": "cellbus.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "echo", "namespace": "apps", "generation": generation},
        "spec": {},
    }
    if conditions is not None or observed is not None:
        resource["status"] = {
            "observedGeneration": generation if observed is None else observed,
            "conditions": conditions or [],
            **status,
        }
    return resource


# A Cell placed in pool wasm: Scheduled, ModuleVerified, StreamReady, [DatabaseReady], Ready.
SCHEDULED = condition("Scheduled", "True", "Scheduled", "in CellPool wasm")
MODULE_FOUND = condition("ModuleVerified", "True", "ModuleFound", f"module {DIGEST} is in cbs-modules")
NO_STREAM = condition("StreamReady", "True", "NoDurableVerbs", "no durable verbs, so no stream")
DATABASE_READY = condition(
    "DatabaseReady", "True", "DatabaseReady",
    "role cbs_5f2a on schema echo (ReadWrite); credentials in Secret echo-db",
)
SERVING = condition("Ready", "True", "Serving", "answered $ping from cellbus-wasm-7d9f8-abcde")
WAITING = condition("Ready", "False", "Waiting", "no pod answered $ping for echo yet")
MISSING_MESSAGE = (
    f"module {DIGEST} is not in cbs-modules on {BUS}; push it with `cellbus module push FILE`"
)
NOT_LOADED_MESSAGE = "pod cellbus-wasm-7d9f8-abcde could not load the module: invalid wasm magic"
DB_DOWN_MESSAGE = "connecting to the admin database: Connection refused (os error 111)"
NO_DB_MESSAGE = (
    "the operator has no admin database; set CELLBUS_DATABASE_URL "
    "(the Helm value database.adminSecret)"
)
STREAM_MESSAGE = "stream CBS_ECHO: insufficient resources"


def placed(*middle, ready=SERVING, generation=1):
    conditions = [SCHEDULED, MODULE_FOUND, NO_STREAM, *middle, ready]
    return obj("Cell", [{**c, "observedGeneration": generation} for c in conditions], generation)


def not_placed(reason, message):
    """What the operator writes for a Cell it cannot place (operator/src/scheduling.rs)."""
    return obj(
        "Cell",
        [
            condition("Scheduled", "False", reason, message),
            condition("Ready", "False", reason, message),
        ],
    )


NOT_PLACED = {
    "PoolNotFound": "CellPool wasm does not exist; create it or change spec.poolRef",
    "NoMatchingPool": "no CellPool runs wasm on linux in namespace apps; create one",
    "SeveralPools": "several CellPools run wasm on linux (a, b); set spec.poolRef",
    "PoolInvalid": "CellPool wasm is invalid: spec.replicas: must be at least 0",
    "InvalidSpec": "spec.limits.memory: 2Gi is more than CellPool wasm allows (512Mi)",
    "Conflict": (
        f"service echo is already served on {BUS} by Cell other/echo; "
        "rename spec.service or delete that Cell"
    ),
}

CELL_CASES = [
    pytest.param(placed(), "Healthy", SERVING["message"], id="ready"),
    pytest.param(
        placed(DATABASE_READY), "Healthy", SERVING["message"], id="ready-with-database"
    ),
    pytest.param(
        obj("Cell"), "Progressing", "Waiting for the operator to observe generation 1",
        id="no-status",
    ),
    pytest.param(
        obj("Cell", [SERVING], generation=3, observed=2),
        "Progressing", "Waiting for the operator to observe generation 3",
        id="stale-observed-generation",
    ),
    pytest.param(
        obj("Cell", [], generation=2, pool="wasm"),
        "Progressing", "Waiting for the Ready condition", id="no-ready-condition",
    ),
    pytest.param(
        placed(ready=WAITING), "Progressing", "Waiting: " + WAITING["message"], id="waiting"
    ),
    pytest.param(
        obj("Cell", [SCHEDULED, condition("Ready", "Unknown", "NatsUnavailable", f"{BUS}: timed out")]),
        "Progressing", f"NatsUnavailable: {BUS}: timed out", id="nats-unavailable",
    ),
    pytest.param(
        not_placed("Deleting", "the Cell is being deleted"),
        "Progressing", "Deleting: the Cell is being deleted", id="deleting",
    ),
    *[
        pytest.param(
            not_placed(reason, message), "Degraded", f"{reason}: {message}",
            id=f"scheduled-false-{reason}",
        )
        for reason, message in NOT_PLACED.items()
    ],
    pytest.param(
        placed(ready=condition("Ready", "False", "NotLoaded", NOT_LOADED_MESSAGE)),
        "Degraded", f"NotLoaded: {NOT_LOADED_MESSAGE}", id="ready-false-NotLoaded",
    ),
    pytest.param(
        obj(
            "Cell",
            [
                SCHEDULED,
                condition("ModuleVerified", "False", "ModuleMissing", MISSING_MESSAGE),
                NO_STREAM,
                condition("Ready", "False", "ModuleMissing", MISSING_MESSAGE),
            ],
        ),
        "Degraded", f"ModuleMissing: {MISSING_MESSAGE}", id="ready-false-ModuleMissing",
    ),
    pytest.param(
        placed(
            condition("DatabaseReady", "False", "DatabaseNotConfigured", NO_DB_MESSAGE),
        ),
        "Degraded", f"DatabaseNotConfigured: {NO_DB_MESSAGE}",
        id="serving-but-DatabaseNotConfigured",
    ),
    # Retried by the operator with backoff, so Progressing, even while Ready is True.
    pytest.param(
        placed(condition("DatabaseReady", "False", "DatabaseUnavailable", DB_DOWN_MESSAGE)),
        "Progressing", f"DatabaseUnavailable: {DB_DOWN_MESSAGE}",
        id="serving-but-DatabaseUnavailable",
    ),
    pytest.param(
        placed(
            condition("DatabaseReady", "False", "DatabaseUnavailable", DB_DOWN_MESSAGE),
            ready=WAITING,
        ),
        "Progressing", f"DatabaseUnavailable: {DB_DOWN_MESSAGE}",
        id="waiting-and-DatabaseUnavailable",
    ),
    pytest.param(
        obj(
            "Cell",
            [
                SCHEDULED,
                MODULE_FOUND,
                condition("StreamReady", "False", "StreamFailed", STREAM_MESSAGE),
                SERVING,
            ],
        ),
        "Progressing", f"StreamFailed: {STREAM_MESSAGE}", id="serving-but-StreamFailed",
    ),
    # spec.database removed at generation 2: the operator leaves DatabaseReady as it was.
    pytest.param(
        obj(
            "Cell",
            [
                {**SCHEDULED, "observedGeneration": 2},
                {**MODULE_FOUND, "observedGeneration": 2},
                {**NO_STREAM, "observedGeneration": 2},
                condition("DatabaseReady", "False", "DatabaseNotConfigured", NO_DB_MESSAGE),
                {**SERVING, "observedGeneration": 2},
            ],
            generation=2,
        ),
        "Healthy", SERVING["message"], id="stale-condition-ignored",
    ),
    pytest.param(
        obj("Cell", [condition("Ready", "False", "SomethingNew", "a reason added later")]),
        "Progressing", "SomethingNew: a reason added later", id="unknown-reason",
    ),
]


def pool(progressing, degraded, ready, generation=1, observed=None, wanted=2, ready_pods=2):
    return obj(
        "CellPool",
        [progressing, degraded, ready],
        generation,
        observed,
        replicas=wanted,
        readyReplicas=ready_pods,
        selector="cellbus.io/pool=wasm",
        cells={"count": 1, "names": ["echo"]},
    )


ROLLED_OUT = condition("Progressing", "False", "RolledOut", "Deployment cellbus-wasm is rolled out")
ROLLING_OUT = condition(
    "Progressing", "True", "RollingOut", "Deployment cellbus-wasm: 1 of 2 pods updated"
)
ALL_READY = "2 of 2 runtime pods ready"
ONE_READY = "1 of 2 runtime pods ready"
NOT_DEGRADED = condition("Degraded", "False", "ReplicasReady", ALL_READY)
POOL_READY = condition("Ready", "True", "ReplicasReady", ALL_READY)
INVALID = "spec.sandbox.memory: not a quantity: 12 parsecs"

POOL_CASES = [
    pytest.param(pool(ROLLED_OUT, NOT_DEGRADED, POOL_READY), "Healthy", ALL_READY, id="ready"),
    pytest.param(
        obj("CellPool"), "Progressing", "Waiting for the operator to observe generation 1",
        id="no-status",
    ),
    pytest.param(
        pool(ROLLED_OUT, NOT_DEGRADED, POOL_READY, generation=5, observed=4),
        "Progressing", "Waiting for the operator to observe generation 5",
        id="stale-observed-generation",
    ),
    pytest.param(
        obj("CellPool", observed=1), "Progressing", "Waiting for the Ready condition",
        id="no-ready-condition",
    ),
    pytest.param(
        pool(
            ROLLING_OUT,
            condition("Degraded", "False", "ReplicasUnavailable", ONE_READY),
            condition("Ready", "False", "RollingOut", ONE_READY),
            ready_pods=1,
        ),
        "Progressing", "RollingOut: " + ROLLING_OUT["message"], id="rolling-out",
    ),
    # New pods surge while the old ones still serve: Ready, but not rolled out yet.
    pytest.param(
        pool(ROLLING_OUT, NOT_DEGRADED, POOL_READY),
        "Progressing", "RollingOut: " + ROLLING_OUT["message"], id="rolling-out-while-ready",
    ),
    pytest.param(
        pool(
            ROLLED_OUT,
            condition("Degraded", "True", "ReplicasUnavailable", ONE_READY),
            condition("Ready", "False", "ReplicasUnavailable", ONE_READY),
            ready_pods=1,
        ),
        "Degraded", f"ReplicasUnavailable: {ONE_READY}", id="degraded-ReplicasUnavailable",
    ),
    pytest.param(
        pool(
            condition("Progressing", "False", "InvalidSpec", INVALID),
            condition("Degraded", "True", "InvalidSpec", INVALID),
            condition("Ready", "False", "InvalidSpec", INVALID),
            ready_pods=0,
        ),
        "Degraded", f"InvalidSpec: {INVALID}", id="degraded-InvalidSpec",
    ),
    pytest.param(
        pool(
            ROLLED_OUT,
            NOT_DEGRADED,
            condition("Ready", "Unknown", "SomethingNew", "a reason added later"),
        ),
        "Progressing", "SomethingNew: a reason added later", id="ready-unknown",
    ),
]


@pytest.mark.parametrize(("resource", "status", "message"), CELL_CASES)
def test_cell_health(resource, status, message):
    assert health("Cell", resource) == (status, message)


@pytest.mark.parametrize(("resource", "status", "message"), POOL_CASES)
def test_cellpool_health(resource, status, message):
    assert health("CellPool", resource) == (status, message)


def test_the_sandbox_is_as_narrow_as_argo_cds():
    lua = argo_lua()
    assert lua.eval("string == nil and math == nil and os == nil and io == nil")
    with pytest.raises(lua51.LuaError):
        lua.execute('return ("x"):upper()')
    assert lua.execute("local t = {} table.insert(t, 1) return #t") == 1


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_the_configmap_patch_holds_the_scripts_verbatim(kind):
    if yaml is None:
        pytest.fail(f"PyYAML is not importable ({YAML_MISSING}): {INSTALL}", pytrace=False)
    patch = yaml.safe_load(PATCH.read_text())
    assert list(patch) == ["data"], f"{PATCH.name} should patch only data"
    keys = {f"resource.customizations.health.cellbus.io_{k}" for k in SCRIPTS}
    assert set(patch["data"]) == keys
    key = f"resource.customizations.health.cellbus.io_{kind}"
    assert patch["data"][key] == SCRIPTS[kind].read_text(), (
        f"{PATCH.name} holds another script under {key} than {SCRIPTS[kind].name}: "
        "copy the file in, every line indented by four spaces"
    )
