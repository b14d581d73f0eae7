"""The Helm chart charts/cellbus, rendered by Helm's own engine (helm-python-sdk carries
Helm's Go library): lint is clean, every rendered object and CRD passes
`kubernetes-validate --strict`, the operator's RBAC is exactly the generated rules, the
chart's CRDs are the top-level ones, and values that break values.schema.json are refused
naming the value.
"""

import json
import pathlib

import pytest

try:
    import helm_python
except ImportError as error:  # a missing engine fails every test; nothing is skipped
    helm_python = None
    HELM_MISSING = error
try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as error:
    kubernetes_validate = None
    VALIDATE_MISSING = error

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cellbus"
INSTALL = "run scripts/setup, or .venv/bin/pip install -r scripts/requirements-dev.txt"
# The oldest Kubernetes the chart supports that kubernetes-validate knows, and the newest.
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
NAMESPACE = "cellbus-system"

# Everything a user may turn on, away from the defaults.
CUSTOM = {
    "replicas": 1,
    "logFormat": "json",
    "image": {"repository": "registry.example.com/cellbus-operator", "tag": "dev"},
    "imagePullSecrets": [{"name": "registry"}],
    "runtime": {"image": {"repository": "registry.example.com/cellbus-runtime", "tag": "dev"},
                "pythonImage": {"repository": "registry.example.com/cellbus-runtime-python", "tag": "dev"}},
    "watchNamespaces": ["team-a", "team-b"],
    "nats": {
        "url": "tls://nats.messaging.svc:4222",
        "credentialsSecret": "operator-nats",
        "poolCredentialsSecret": "pool-nats",
        "replicas": 3,
    },
    "database": {"adminSecret": "supabase-admin"},
    "runtimeResources": {"cpuLimit": "2"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
    },
    "defaultPool": {"enabled": True, "namespace": "team-a", "spec": {"runtime": "wasm", "replicas": 3}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "podAnnotations": {"example.com/team": "platform"},
}


def need_tools():
    if helm_python is None:
        pytest.fail(f"helm-python-sdk is not importable ({HELM_MISSING}): {INSTALL}", pytrace=False)
    if kubernetes_validate is None:
        pytest.fail(f"kubernetes-validate is not importable ({VALIDATE_MISSING}): {INSTALL}", pytrace=False)


def render(values):
    """Every object the chart renders with `values`, as dicts, and NOTES.txt."""
    need_tools()
    with helm_python.Chart.load(CHART) as chart:
        templates = chart.render(values, name="cellbus", namespace=NAMESPACE, is_install=True)
    objects, notes = [], None
    for path, text in sorted(templates.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects, notes


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} objects of kind {kind} named {name}"
    return found[0]


def env_of(deployment):
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {variable["name"]: variable for variable in container["env"]}


def generated_rules():
    return yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())


def test_lint_is_clean_with_the_default_and_custom_values():
    need_tools()
    for values in ({}, CUSTOM):
        report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
        assert report["errors"] == []
        assert report["messages"] == []


@pytest.mark.parametrize("values", [{}, CUSTOM], ids=["defaults", "custom"])
def test_every_rendered_object_validates_strictly(values):
    objects, _ = render(values)
    kinds = sorted({o["kind"] for o in objects})
    expected = {"ClusterRole", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding",
                "Service", "ServiceAccount"}
    if values is CUSTOM:
        expected = expected - {"ClusterRole", "ClusterRoleBinding", "PodDisruptionBudget"} | {
            "CellPool", "NetworkPolicy", "ServiceMonitor"}
    assert set(kinds) == expected
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            # Prometheus Operator's CRD, which kubernetes-validate does not carry.
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
            continue
        if obj["kind"] == "CellPool":
            schema = json.loads((ROOT / "schemas" / "cellpool-spec.json").read_text())
            jsonschema.validate(obj["spec"], schema)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} on {version}: {error}")


def test_the_crds_validate_and_are_the_top_level_ones():
    need_tools()
    chart_crds = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in chart_crds] == ["cellpools.cellbus.io.yaml", "cells.cellbus.io.yaml"]
    for path in chart_crds:
        assert path.read_text() == (ROOT / "crds" / path.name).read_text(), (
            f"{path} differs from crds/{path.name}: cargo run -p cellbus-operator -- crdgen --write")
        crd = yaml.safe_load(path.read_text())
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(crd, version, strict=True)


def test_the_cluster_role_is_exactly_the_generated_rules():
    objects, _ = render({})
    rules = generated_rules()
    assert one(objects, "ClusterRole")["rules"] == rules["watched"]
    leader = one(objects, "Role", "cellbus-leader")
    assert leader["metadata"]["namespace"] == NAMESPACE
    assert leader["rules"] == rules["own"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cellbus"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cellbus", "namespace": NAMESPACE}]
    # The rules grant nothing cluster-wide beyond what the operator's code calls: no
    # wildcard, and Secrets only to read and write the ones it names.
    for rule in rules["watched"] + rules["own"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    secrets = [r for r in rules["watched"] if "secrets" in r["resources"]]
    assert [sorted(r["verbs"]) for r in secrets] == [["get", "patch"]]


def test_watched_namespaces_get_roles_instead_of_a_cluster_role():
    objects, _ = render(CUSTOM)
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "cellbus"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(r["rules"] == generated_rules()["watched"] for r in roles)
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "cellbus"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    env = env_of(one(objects, "Deployment"))
    assert env["WATCH_NAMESPACES"]["value"] == "team-a,team-b"


def test_the_operator_gets_its_settings_from_values_and_secrets():
    objects, notes = render(CUSTOM)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/cellbus-operator:dev"
    env = env_of(deployment)
    assert env["NATS_URL"]["value"] == "tls://nats.messaging.svc:4222"
    assert env["NATS_CREDENTIALS_SECRET"]["value"] == "pool-nats"
    assert env["NATS_CREDENTIALS_DIR"]["value"] == "/var/run/cellbus/nats"
    assert env["CELLBUS_REPLICAS"]["value"] == "3"
    assert env["CELLBUS_LOG_FORMAT"]["value"] == "json"
    assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "operator-nats", "key": "password", "optional": True}
    assert container["volumeMounts"] == [{"name": "nats-credentials", "mountPath": "/var/run/cellbus/nats", "readOnly": True}]
    # The admin URL is required of the Secret; the pooler and sslmode keys are optional.
    assert env["CELLBUS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "supabase-admin", "key": "DATABASE_URL"}
    for variable, key in [("CELLBUS_DATABASE_POOLER_HOST", "POOLER_HOST"), ("CELLBUS_DATABASE_POOLER_PORT", "POOLER_PORT"),
                          ("CELLBUS_DATABASE_PROJECT_REF", "PROJECT_REF"), ("CELLBUS_DATABASE_SSLMODE", "SSLMODE")]:
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "supabase-admin", "key": key, "optional": True}
    assert env["CELLBUS_RUNTIME_IMAGE"]["value"] == "registry.example.com/cellbus-runtime:dev"
    assert env["CELLBUS_RUNTIME_IMAGE_PYTHON"]["value"] == "registry.example.com/cellbus-runtime-python:dev"
    assert env["CELLBUS_RUNTIME_CPU_LIMIT"]["value"] == "2"
    # No credential is ever a literal value in the Deployment.
    assert "value" not in env["CELLBUS_DATABASE_URL"]
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pool = one(objects, "CellPool")
    assert pool["metadata"] == {**pool["metadata"], "name": "wasm", "namespace": "team-a"}
    # Helm merges the given spec over the default one.
    assert pool["spec"] == {"runtime": "wasm", "os": "linux", "replicas": 3}
    assert "kubectl wait -n team-a --for=condition=Ready cell/echo" in notes


def test_defaults_run_two_replicas_one_leading_spread_over_nodes():
    objects, notes = render({})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert env_of(deployment)["CELLBUS_LEASE_NAME"]["value"] == "cellbus-operator"
    assert "podAntiAffinity" in deployment["spec"]["template"]["spec"]["affinity"]
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert "CELLBUS_DATABASE_URL" not in env_of(deployment)
    assert "kubectl wait --for=condition=Ready cell/echo" in notes
    assert "database.adminSecret" in notes


def with_value(path, value):
    values = {}
    node = values
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return values


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("replicas", "two", "replicas"),
        ("replicas", 0, "replicas"),
        ("nats.url", "http://nats:4222", "url"),
        ("nats.credentials", "oops", "credentials"),
        ("watchNamespaces", ["Team_A"], "watchNamespaces"),
        ("defaultPool.spec", {"runtime": "jvm"}, "runtime"),
        ("defaultPool.spec", {"replicas": -1}, "replicas"),
        ("runtimeResources.memoryLimit", "lots", "memoryLimit"),
        ("serviceMonitor.enabled", "yes", "enabled"),
        ("metricsPort", 70000, "metricsPort"),
        ("imageTag", "v1", "imageTag"),
        ("logFormat", "yaml", "logFormat"),
    ],
    ids=lambda case: json.dumps(case) if not isinstance(case, str) else case,
)
def test_values_that_break_the_schema_are_refused_naming_the_value(path, value, named):
    need_tools()
    with pytest.raises(helm_python.HelmError) as refused:
        render(with_value(path, value))
    message = str(refused.value)
    assert "schema" in message.lower(), message
    assert named in message, message
