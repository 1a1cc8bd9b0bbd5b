"""Checks of the Helm chart (charts/riffle), the plain manifests (deploy/) and the
generated CRDs (crds/), without a Kubernetes cluster:

- helm lint --strict for several value sets;
- helm template for several value sets; every built-in object validated with
  kubernetes-validate --strict, the output linted with yamllint;
- cross-references inside a render (selectors, port names, RBAC subjects);
- exactly the RBAC the operator needs;
- deploy/operator.yaml equal to the chart's default render;
- Cluster and Topic objects (deploy/ and the chart's optional Cluster) validated with
  check-jsonschema against the openAPIV3Schema of the CRDs in crds/ (skipped while
  crds/ has not been generated).

Tools come from scripts/install-k8s-tools.sh. Run: .venv/bin/pytest tests/k8s -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from k8s_tools import (
    tool,
    CHART,
    CHART_CRD_DIR,
    CRD_DIR,
    CRD_FILES,
    DEPLOY,
    K8S_VERSION,
    K8S_VERSIONS,
    NAMESPACE,
    REPO,
    crd_json_schema,
    crd_paths,
    crds_present,
    helm,
    helm_template,
    key,
    load_docs,
    run,
    set_args,
    strip_helm_labels,
    tool,
)

# Groups whose kinds have no schema in kubernetes-validate.
CUSTOM_GROUPS = ("riffle.dev/", "monitoring.coreos.com/")

# Value sets rendered by the tests (flat keys, as for --set-json).
SCENARIOS: dict[str, dict] = {
    "default": {},
    "cluster-and-monitors": {"cluster.enabled": True, "serviceMonitor.enabled": True},
    "namespaced": {"rbac.namespaced": True, "cluster.enabled": True, "serviceMonitor.enabled": True},
    "other-namespace-no-crd-apply": {
        "watchNamespace": "apps",
        "crds.applyAtStartup": False,
        "serviceAccount.name": "riffle-controller",
        "serviceMonitor.enabled": True,
        "serviceMonitor.brokers.enabled": False,
    },
    "existing-service-account": {"rbac.create": False, "serviceAccount.create": False, "serviceAccount.name": "ops"},
    "customised": {
        "fullnameOverride": "streaming",
        "image.repository": "registry.example.com/riffle",
        "image.tag": "dev",
        "image.pullPolicy": "Always",
        "imagePullSecrets": [{"name": "regcred"}],
        "replicaCount": 2,
        "logLevel": "debug",
        "extraArgs": ["--verbose"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "podAnnotations": {"example.com/team": "data"},
        "podLabels": {"team": "data"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "riffle", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "metricsPort": 9090,
        "service.annotations": {"example.com/scrape": "true"},
        "serviceAccount.annotations": {"example.com/role": "riffle"},
        "serviceMonitor.enabled": True,
        "serviceMonitor.namespace": "monitoring",
        "serviceMonitor.labels": {"release": "prometheus"},
        "cluster.enabled": True,
        "cluster.name": "events",
        "cluster.labels": {"env": "test"},
        "cluster.annotations": {"example.com/owner": "data"},
        "cluster.spec": {
            "replicas": 5,
            "image": "registry.example.com/riffle:dev",
            "imagePullPolicy": "Always",
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            "storage": {"size": "50Gi", "storageClassName": "fast", "deleteClaim": True},
            "config": {"log_retention_ms": "86400000", "auto_create_topics_enable": "false"},
            "listeners": {"kafka": 9092, "http": 9644},
            "template": {
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                "annotations": {"example.com/a": "b"},
                "labels": {"team": "data"},
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "events"}},
                                },
                            }
                        ]
                    }
                },
            },
            "metrics": {"enabled": False},
        },
    },
}

# What the operator may do to Clusters, Topics and the objects it makes for them: the
# permissions tests/envtest finds in use in the API server's audit log, and no more.
OPERATOR_RULES = [
    {"apiGroups": ["riffle.dev"], "resources": ["clusters"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["riffle.dev"], "resources": ["topics"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["riffle.dev"], "resources": ["clusters/status", "topics/status"], "verbs": ["patch"]},
    {"apiGroups": ["riffle.dev"], "resources": ["clusters/scale"], "verbs": ["patch"]},
    {"apiGroups": ["riffle.dev"], "resources": ["clusters/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["apps"], "resources": ["statefulsets"],
     "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
    {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"],
     "verbs": ["list", "watch", "create", "patch"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
     "verbs": ["list", "watch", "create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
CRD_RULES = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["create"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "resourceNames": ["clusters.riffle.dev", "topics.riffle.dev"], "verbs": ["patch"]},
]
LEASE_RULES = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]

needs_crds = pytest.mark.skipif(
    not crds_present(),
    reason=f"generated CRDs not found in {CRD_DIR} ({', '.join(CRD_FILES)}); "
    "they are written by `riffle-operator crd crds charts/riffle/crds`",
)

_renders: dict[str, str] = {}


def render(scenario: str) -> str:
    if scenario not in _renders:
        _renders[scenario] = helm_template(SCENARIOS[scenario])
    return _renders[scenario]


def docs_of(scenario: str) -> list[dict]:
    return load_docs(render(scenario))


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[key(d) for d in found]}"
    return found[0]


def kubernetes_validate(paths: list[Path], version: str = K8S_VERSION) -> str:
    proc = run([tool("kubernetes-validate"), "--strict", "-k", version, *map(str, paths)])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"kubernetes-validate failed:\n{out}"
    for line in out.splitlines():
        if line.startswith("WARN"):
            # Only custom kinds may lack a schema.
            m = re.search(r"api version (\S+) ", line)
            assert m and m.group(1).startswith(CUSTOM_GROUPS), f"unexpected warning: {line}"
        else:
            assert line.startswith("INFO") and " passed " in line, f"unexpected output: {line}"
    return out


def yamllint(paths: list[Path]) -> None:
    proc = run([tool("yamllint"), "--strict", "-c", str(Path(__file__).parent / "yamllint.yaml"),
                "-f", "parsable", *map(str, paths)])
    assert proc.returncode == 0, f"yamllint:\n{proc.stdout}{proc.stderr}"


# ---------------------------------------------------------------------------------------
# helm lint


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"cluster.enabled": True, "serviceMonitor.enabled": True, "rbac.namespaced": True},
        {"crds.applyAtStartup": False, "watchNamespace": "apps"},
    ],
    ids=["default", "cluster-monitors-namespaced", "no-crd-apply"],
)
def test_helm_lint(values):
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *set_args(values))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_values_schema_rejects_wrong_types():
    proc = helm("template", "r", str(CHART), *set_args({"replicaCount": "two"}))
    assert proc.returncode != 0 and "replicaCount" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------
# helm template: validation and lint of every render


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_render_validates(scenario, tmp_path):
    path = tmp_path / f"{scenario}.yaml"
    path.write_text(render(scenario))
    docs = docs_of(scenario)
    builtin = [d for d in docs if not d["apiVersion"].startswith(CUSTOM_GROUPS)]
    for version in K8S_VERSIONS:
        out = kubernetes_validate([path], version)
        assert out.count(" passed ") == len(builtin), out
    yamllint([path])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_render_references(scenario):
    """Names and labels that refer to each other inside one render agree."""
    docs = docs_of(scenario)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert selector.get("app.kubernetes.io/component") == "operator"
    (container,) = pod["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names

    service = one(docs, "Service")
    assert service["spec"]["selector"] == selector
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    sa_name = pod["spec"]["serviceAccountName"]
    sas = find(docs, "ServiceAccount")
    assert [s["metadata"]["name"] for s in sas] in ([sa_name], [])
    for binding in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}
        role = one(docs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        if binding["kind"] == "RoleBinding":
            assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]

    for monitor in find(docs, "ServiceMonitor"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    for monitor in find(docs, "PodMonitor"):
        assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["http"]
        assert [e["path"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["/metrics"]
        # Broker pods are never selected as operator pods and the other way round.
        assert monitor["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "broker"

    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert label in labels, f"{key(doc)} lacks label {label}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_notes_render(scenario):
    """NOTES.txt renders (helm install --dry-run, offline) and names the operator."""
    proc = helm("install", "riffle", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                *set_args(SCENARIOS[scenario]))
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    name = one(docs_of(scenario), "Deployment")["metadata"]["name"]
    assert f"deployment/{name}" in notes
    assert "<no value>" not in notes


# ---------------------------------------------------------------------------------------
# What the chart renders


def test_default_render_objects():
    docs = docs_of("default")
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted([
        ("ServiceAccount", "riffle-operator"),
        ("ClusterRole", "riffle-operator"),
        ("ClusterRoleBinding", "riffle-operator"),
        ("ClusterRole", "riffle-operator-crds"),
        ("ClusterRoleBinding", "riffle-operator-crds"),
        ("Role", "riffle-operator-leader-election"),
        ("RoleBinding", "riffle-operator-leader-election"),
        ("Service", "riffle-operator"),
        ("Deployment", "riffle-operator"),
    ])


def test_default_deployment():
    deployment = one(docs_of("default"), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/riffle-dev/riffle:0.1.0"
    assert c["command"] == ["riffle-operator"]
    assert c["args"] == ["--metrics-listen=0.0.0.0:8080", "--apply-crds=true"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], str(chart["appVersion"])) == (
        "v2", "riffle", "0.1.0", "0.1.0")


def test_rbac_cluster_wide():
    docs = docs_of("default")
    assert one(docs, "ClusterRole", "riffle-operator")["rules"] == OPERATOR_RULES
    assert one(docs, "ClusterRole", "riffle-operator-crds")["rules"] == CRD_RULES
    lease_role = one(docs, "Role")
    assert lease_role["metadata"]["namespace"] == NAMESPACE and lease_role["rules"] == LEASE_RULES


def test_rbac_namespaced():
    docs = docs_of("namespaced")
    roles = {r["metadata"]["name"]: r for r in find(docs, "Role")}
    assert roles["riffle-operator"]["rules"] == OPERATOR_RULES
    assert roles["riffle-operator"]["metadata"]["namespace"] == NAMESPACE
    assert roles["riffle-operator-leader-election"]["rules"] == LEASE_RULES
    # Only the CRD permissions stay cluster-wide.
    (cluster_role,) = find(docs, "ClusterRole")
    assert cluster_role["rules"] == CRD_RULES
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert f"--watch-namespace={NAMESPACE}" in c["args"]


def test_rbac_other_namespace_without_crd_apply():
    docs = docs_of("other-namespace-no-crd-apply")
    assert find(docs, "ClusterRole") == [] and find(docs, "ClusterRoleBinding") == []
    role = one(docs, "Role", "riffle-operator")
    assert role["metadata"]["namespace"] == "apps" and role["rules"] == OPERATOR_RULES
    binding = one(docs, "RoleBinding", "riffle-operator")
    assert binding["metadata"]["namespace"] == "apps"
    assert binding["subjects"][0]["name"] == "riffle-controller"
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--apply-crds=false" in c["args"] and "--watch-namespace=apps" in c["args"]
    pm = find(docs, "PodMonitor")
    assert pm == []
    assert not any("apiextensions" in json.dumps(d) for d in docs)


def test_existing_service_account_without_rbac():
    docs = docs_of("existing-service-account")
    assert {d["kind"] for d in docs} == {"Service", "Deployment"}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_optional_objects_off_by_default():
    kinds = {d["kind"] for d in docs_of("default")}
    assert not kinds & {"Cluster", "ServiceMonitor", "PodMonitor"}


def test_optional_cluster_and_monitors():
    docs = docs_of("cluster-and-monitors")
    cluster = one(docs, "Cluster")
    assert cluster["apiVersion"] == "riffle.dev/v1alpha1"
    assert cluster["metadata"] == {**cluster["metadata"], "name": "riffle", "namespace": NAMESPACE}
    # spec.image follows the chart's image when not set.
    assert cluster["spec"] == {"replicas": 3, "storage": {"size": "10Gi"}, "config": {},
                               "image": "ghcr.io/riffle-dev/riffle:0.1.0"}
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}

    docs = docs_of("namespaced")
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_customised_values_pass_through():
    docs = docs_of("customised")
    values = SCENARIOS["customised"]
    cluster = one(docs, "Cluster", "events")
    assert cluster["spec"] == values["cluster.spec"]
    assert cluster["metadata"]["labels"]["env"] == "test"
    deployment = one(docs, "Deployment", "streaming-operator")
    pod = deployment["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "registry.example.com/riffle:dev"
    assert c["args"] == ["--metrics-listen=0.0.0.0:9090", "--apply-crds=true", "--verbose"]
    assert {"name": "TZ", "value": "UTC"} in c["env"]
    assert {"name": "RIFFLE_LOG", "value": "debug"} in c["env"]
    assert pod["metadata"]["annotations"] == values["podAnnotations"]
    assert pod["metadata"]["labels"]["team"] == "data"
    for k in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets", "priorityClassName"):
        assert pod["spec"][k] == values[k]
    for monitor in find(docs, "ServiceMonitor") + find(docs, "PodMonitor"):
        assert monitor["metadata"]["namespace"] == "monitoring"
        assert monitor["metadata"]["labels"]["release"] == "prometheus"


# ---------------------------------------------------------------------------------------
# deploy/


def deploy_files() -> list[Path]:
    return sorted(DEPLOY.glob("*.yaml"))


def test_deploy_files_validate():
    paths = deploy_files()
    assert {p.name for p in paths} >= {"operator.yaml", "cluster.yaml", "topic.yaml"}
    for version in K8S_VERSIONS:
        kubernetes_validate(paths, version)
    yamllint(paths + [CHART / "values.yaml", CHART / "Chart.yaml"])


def test_deploy_operator_matches_chart():
    """deploy/operator.yaml is the chart's default render plus the Namespace
    (regenerate with: .venv/bin/python tests/k8s/render_deploy.py)."""
    plain = load_docs((DEPLOY / "operator.yaml").read_text())
    chart = [strip_helm_labels(d) for d in docs_of("default")]
    namespaces = [d for d in plain if d["kind"] == "Namespace"]
    assert [d["metadata"]["name"] for d in namespaces] == [NAMESPACE]
    assert plain[0]["kind"] == "Namespace", "the Namespace must come first"
    rest = {key(d): d for d in plain if d["kind"] != "Namespace"}
    expected = {key(d): d for d in chart}
    assert rest.keys() == expected.keys()
    for k, doc in expected.items():
        assert rest[k] == doc, f"{k} differs from the chart; run tests/k8s/render_deploy.py"
    for doc in plain:
        assert not set(doc["metadata"].get("labels", {})) & {"helm.sh/chart", "app.kubernetes.io/managed-by"}


def test_deploy_examples():
    cluster = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("riffle.dev/v1alpha1", "Cluster")
    assert cluster["spec"]["replicas"] == 3 and cluster["spec"]["storage"]["size"] == "10Gi"
    topic = yaml.safe_load((DEPLOY / "topic.yaml").read_text())
    assert (topic["apiVersion"], topic["kind"]) == ("riffle.dev/v1alpha1", "Topic")
    assert topic["spec"]["partitions"] == 6 and "retention.ms" in topic["spec"]["config"]
    assert topic["spec"]["clusterRef"]["name"] == cluster["metadata"]["name"]


def test_install_script_syntax():
    proc = run(["bash", "-n", str(REPO / "scripts" / "install-k8s-tools.sh")])
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------
# CRDs and custom resources


def load_crds() -> dict[str, dict]:
    crds = {}
    for path in crd_paths():
        (crd,) = load_docs(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


@needs_crds
def test_crds_validate():
    for version in K8S_VERSIONS:
        kubernetes_validate(crd_paths(), version)
    crds = load_crds()
    assert set(crds) == {"Cluster", "Topic"}
    for kind, short, plural in (("Cluster", "rfc", "clusters"), ("Topic", "rft", "topics")):
        crd = crds[kind]
        assert crd["metadata"]["name"] == f"{plural}.riffle.dev"
        spec = crd["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["plural"]) == ("riffle.dev", "Namespaced", plural)
        assert short in spec["names"].get("shortNames", [])
        assert [v["name"] for v in spec["versions"] if v["storage"]] == ["v1alpha1"]
    (version,) = crds["Cluster"]["spec"]["versions"]
    assert "scale" in version["subresources"] and "status" in version["subresources"]
    # The operator's CRD permissions name exactly these CRDs.
    assert sorted(c["metadata"]["name"] for c in crds.values()) == CRD_RULES[1]["resourceNames"]


@needs_crds
def test_chart_crds_match_generated():
    for name in CRD_FILES:
        chart_copy = CHART_CRD_DIR / name
        assert chart_copy.is_file(), f"{chart_copy} missing: the chart must ship the CRDs too"
        assert chart_copy.read_text() == (CRD_DIR / name).read_text(), f"{chart_copy} differs from crds/{name}"


def check_jsonschema(tmp_path: Path, crd: dict, objects: list[dict]) -> tuple[int, str]:
    schema_path = tmp_path / f"{crd['spec']['names']['plural']}.schema.json"
    schema_path.write_text(json.dumps(crd_json_schema(crd), indent=1))
    paths = []
    for i, obj in enumerate(objects):
        p = tmp_path / f"{crd['spec']['names']['singular']}-{i}.yaml"
        p.write_text(yaml.safe_dump(obj, sort_keys=False))
        paths.append(str(p))
    proc = run([tool("check-jsonschema"), "--schemafile", str(schema_path), *paths])
    return proc.returncode, proc.stdout + proc.stderr


def custom_resources() -> dict[str, list[tuple[str, dict]]]:
    """Every Cluster and Topic in deploy/ and in the chart's renders."""
    found: dict[str, list[tuple[str, dict]]] = {"Cluster": [], "Topic": []}
    for path in deploy_files():
        for doc in load_docs(path.read_text()):
            if doc["kind"] in found:
                found[doc["kind"]].append((f"deploy/{path.name}", doc))
    for scenario in SCENARIOS:
        for doc in docs_of(scenario):
            if doc["kind"] in found:
                found[doc["kind"]].append((f"chart render {scenario}", doc))
    return found


@needs_crds
@pytest.mark.parametrize("kind", ["Cluster", "Topic"])
def test_custom_resources_match_crd_schema(kind, tmp_path):
    objects = custom_resources()[kind]
    assert objects, f"no {kind} found in deploy/ or the chart"
    rc, out = check_jsonschema(tmp_path, load_crds()[kind], [o for _, o in objects])
    assert rc == 0, f"{[n for n, _ in objects]}:\n{out}"


@needs_crds
def test_crd_schema_check_is_strict(tmp_path):
    """The schema check rejects what the API server would: unknown fields, wrong types,
    bad enum values; and accepts a null topic config value."""
    crds = load_crds()
    cluster = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    topic = yaml.safe_load((DEPLOY / "topic.yaml").read_text())
    bad = [
        ("Cluster", {**cluster, "spec": {**cluster["spec"], "replica": 3}}),
        ("Cluster", {**cluster, "spec": {**cluster["spec"], "replicas": "three"}}),
        ("Cluster", {**cluster, "spec": {**cluster["spec"], "storage": {"size": "1Gi", "class": "x"}}}),
        ("Topic", {**topic, "spec": {**topic["spec"], "deletionPolicy": "Keep"}}),
        ("Topic", {**topic, "spec": {k: v for k, v in topic["spec"].items() if k != "partitions"}}),
    ]
    for i, (kind, obj) in enumerate(bad):
        case = tmp_path / f"bad-{i}"
        case.mkdir()
        rc, out = check_jsonschema(case, crds[kind], [obj])
        assert rc != 0, f"bad {kind} #{i} was accepted:\n{out}"
    ok = {**topic, "spec": {**topic["spec"], "config": {"retention.ms": None}}}
    rc, out = check_jsonschema(tmp_path, crds["Topic"], [ok])
    assert rc == 0, out


def test_dockerfile_lint():
    """The image recipe passes hadolint (the chart and manifests default to its image)."""
    result = run([tool("hadolint"), str(REPO / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr
