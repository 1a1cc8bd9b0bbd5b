"""The user journey against a real API server: helm install, a 3-broker Cluster that
forms one Kafka cluster, a Topic through its whole life, the scale subresource, the
operator restarting, children recreated and garbage-collected, helm upgrade/uninstall.
The tests run in file order and build on each other."""

from __future__ import annotations

import time

import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from conftest import NS, OPERATOR_NS, OPERATOR_SA, REPO, Env, dump, free_port, wait_for

CLUSTER = "riffle"
# Every object the operator owns for the Cluster.
CHILDREN = [
    f"/api/v1/namespaces/{NS}/configmaps/{CLUSTER}-config",
    f"/api/v1/namespaces/{NS}/services/{CLUSTER}-brokers",
    f"/api/v1/namespaces/{NS}/services/{CLUSTER}-bootstrap",
    f"/api/v1/namespaces/{NS}/serviceaccounts/{CLUSTER}",
    f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{CLUSTER}",
    f"/apis/apps/v1/namespaces/{NS}/statefulsets/{CLUSTER}",
]


def bootstrap(e: Env) -> str:
    return e.cluster(CLUSTER)["status"]["bootstrapServers"]


def admin(e: Env) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap(e)})


def ready(e: Env, replicas: int):
    c = e.cluster(CLUSTER)
    st = c.get("status", {})
    cond = {x["type"]: x for x in st.get("conditions", [])}
    return (st.get("readyReplicas") == replicas
            and cond.get("Ready", {}).get("status") == "True"
            and st.get("observedGeneration") == c["metadata"]["generation"]) and c


def test_chart_installs_and_operator_runs_as_its_service_account(installed: Env):
    e = installed
    # helm installed the CRDs from the chart, and they are served.
    for crd in ("clusters.riffle.dev", "topics.riffle.dev"):
        c = e.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        cond = {x["type"]: x["status"] for x in c["status"]["conditions"]}
        assert cond.get("Established") == "True", dump(c["status"])
    assert e.operator_ready()
    assert "forbidden" not in e.operator_log().lower(), e.operator_log()[-3000:]


def test_cluster_comes_up_as_one_kafka_cluster(installed: Env):
    e = installed
    doc = yaml.safe_load((REPO / "deploy" / "cluster.yaml").read_text())
    assert doc["spec"]["replicas"] == 3
    e.apply(doc)
    c = wait_for(lambda: ready(e, 3), "3 ready brokers in the Cluster status", 120)
    st = c["status"]
    assert st["bootstrapServers"] == f"{CLUSTER}-bootstrap.{NS}.svc:9092"
    assert st["brokers"] == [f"{CLUSTER}-{i}.{CLUSTER}-brokers.{NS}.svc:9092" for i in range(3)]
    assert st["voters"] == 3
    uid = c["metadata"]["uid"]
    for path in CHILDREN:
        obj = e.get(path)
        owners = obj["metadata"].get("ownerReferences", [])
        assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [
            ("Cluster", uid, True)], path
    sts = e.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/{CLUSTER}")
    assert sts["status"]["readyReplicas"] == 3
    # The three brokers form one cluster: each one knows all three.
    md = admin(e).list_topics(timeout=10)
    assert sorted(md.brokers) == [0, 1, 2], md.brokers
    for i in range(3):
        one = AdminClient({"bootstrap.servers": st["brokers"][i]}).list_topics(timeout=10)
        assert sorted(one.brokers) == [0, 1, 2]
        assert one.controller_id in (0, 1, 2)


def test_rejected_cluster_gets_a_condition_and_an_event(installed: Env):
    e = installed
    # Valid for the schema, but not a broker setting: only the operator can tell.
    e.apply({"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster",
             "metadata": {"name": "broken"},
             "spec": {"replicas": 1, "config": {"no_such_setting": "1"}}})

    def degraded():
        conds = {c["type"]: c for c in e.cluster("broken").get("status", {}).get("conditions", [])}
        return conds.get("Degraded", {}).get("status") == "True" and conds

    conds = wait_for(degraded, "the Degraded condition", 30)
    assert conds["Ready"]["reason"] == "InvalidSpec"
    assert "no_such_setting" in conds["Degraded"]["message"]
    events = e.get(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")["items"]
    mine = [ev for ev in events if ev["regarding"]["name"] == "broken"]
    assert [(ev["type"], ev["reason"]) for ev in mine] == [("Warning", "InvalidSpec")], mine
    assert "no_such_setting" in mine[0]["note"]
    assert e.kube.get_or_none(f"/apis/apps/v1/namespaces/{NS}/statefulsets/broken") is None
    e.kubectl("delete", "-n", NS, "cluster", "broken")


def test_second_reconcile_writes_nothing(installed: Env):
    e = installed
    before = {p: e.get(p)["metadata"]["resourceVersion"] for p in CHILDREN}
    cluster_rv = e.cluster(CLUSTER)["metadata"]["resourceVersion"]
    # Restarting the operator reconciles every Cluster again.
    e.stop_operator()
    e.start_operator()
    time.sleep(5)
    after = {p: e.get(p)["metadata"]["resourceVersion"] for p in CHILDREN}
    assert after == before
    assert e.cluster(CLUSTER)["metadata"]["resourceVersion"] == cluster_rv


def topic_doc(partitions: int, config: dict | None = None) -> dict:
    doc = yaml.safe_load((REPO / "deploy" / "topic.yaml").read_text())
    doc["spec"]["partitions"] = partitions
    if config is not None:
        doc["spec"]["config"] = config
    return doc


def describe(e: Env, topic: str):
    client = admin(e)
    md = client.list_topics(topic, timeout=10).topics.get(topic)
    return None if md is None or md.error is not None else md


def topic_config(e: Env, topic: str) -> dict[str, str]:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    client = admin(e)  # kept alive until the answer arrives
    got = client.describe_configs([res])[res].result(timeout=10)
    return {k: v.value for k, v in got.items()}


def test_topic_lifecycle(installed: Env):
    e = installed
    doc = topic_doc(6)
    topic = doc["spec"]["topicName"]
    e.apply(doc)
    md = wait_for(lambda: describe(e, topic), f"topic {topic} on the brokers", 60)
    assert len(md.partitions) == 6
    t = wait_for(lambda: (lambda o: o.get("status", {}).get("partitions") == 6 and o)(
        e.get(f"/apis/riffle.dev/v1alpha1/namespaces/{NS}/topics/{doc['metadata']['name']}")),
        "Topic status", 30)
    assert "riffle.dev/topic" in " ".join(t["metadata"].get("finalizers", [])) or \
        t["metadata"].get("finalizers"), dump(t["metadata"])
    # Records go through the real brokers.
    p = Producer({"bootstrap.servers": bootstrap(e), "acks": "all", "enable.idempotence": True})
    for i in range(100):
        p.produce(topic, value=f"v{i}".encode(), partition=i % 6)
    assert p.flush(30) == 0

    # Grow and reconfigure.
    e.apply(topic_doc(8, {"retention.ms": "3600000", "cleanup.policy": "delete"}))
    wait_for(lambda: (m := describe(e, topic)) and len(m.partitions) == 8, "8 partitions", 60)
    wait_for(lambda: topic_config(e, topic).get("retention.ms") == "3600000",
             "retention.ms applied", 60)

    # A shrink is refused by the API server itself (CEL), not only by the operator.
    r = e.apply(topic_doc(4), check=False)
    assert r.returncode != 0 and "partitions can only grow" in r.stderr, r.stderr
    assert len(describe(e, topic).partitions) == 8

    # Deleting the object deletes the Kafka topic (deletionPolicy: Delete) before the
    # finalizer lets the object go.
    e.kubectl("delete", "-n", NS, "topic", doc["metadata"]["name"], "--wait=true",
              "--timeout=60s")
    assert describe(e, topic) is None

    # deletionPolicy: Retain keeps it.
    kept = topic_doc(2)
    kept["metadata"]["name"] = kept["spec"]["topicName"] = "kept"
    kept["spec"]["deletionPolicy"] = "Retain"
    e.apply(kept)
    wait_for(lambda: describe(e, "kept"), "topic kept", 60)
    e.kubectl("delete", "-n", NS, "topic", "kept", "--wait=true", "--timeout=60s")
    assert describe(e, "kept") is not None


def test_scale_subresource_and_hpa(installed: Env):
    e = installed
    scale = e.get(f"/apis/riffle.dev/v1alpha1/namespaces/{NS}/clusters/{CLUSTER}/scale")
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == (
        f"app.kubernetes.io/component=broker,app.kubernetes.io/instance={CLUSTER},"
        "app.kubernetes.io/name=riffle")
    e.kubectl("scale", "-n", NS, f"rfc/{CLUSTER}", "--replicas=4")
    wait_for(lambda: ready(e, 4), "4 ready brokers", 120)
    sts = e.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/{CLUSTER}")
    assert sts["spec"]["replicas"] == 4
    wait_for(lambda: sorted(admin(e).list_topics(timeout=10).brokers) == [0, 1, 2, 3],
             "broker 3 registered", 60)
    # An HPA can target the Cluster through the scale subresource.
    e.apply({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": CLUSTER},
        "spec": {"scaleTargetRef": {"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster",
                                    "name": CLUSTER},
                 "minReplicas": 4, "maxReplicas": 6,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization",
                                               "averageUtilization": 80}}}]}})
    # The controller manager discovers the new kind on its next discovery refresh.
    def able_to_scale():
        h = e.get(f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{CLUSTER}")
        conds = {c["type"]: c for c in h.get("status", {}).get("conditions", [])}
        return conds.get("AbleToScale", {}).get("status") == "True" and conds["AbleToScale"]

    able = wait_for(able_to_scale, "the HPA controller to read the scale subresource", 120)
    assert able["reason"] == "SucceededGetScale", able
    e.kubectl("delete", "-n", NS, "hpa", CLUSTER)


def test_children_recreated_after_operator_restart(installed: Env):
    e = installed
    e.stop_operator()
    e.kubectl("delete", "-n", NS, "configmap", f"{CLUSTER}-config")
    e.kubectl("delete", "-n", NS, "service", f"{CLUSTER}-bootstrap")
    e.start_operator()
    wait_for(lambda: e.kube.get_or_none(f"/api/v1/namespaces/{NS}/configmaps/{CLUSTER}-config"),
             "the ConfigMap recreated", 60)
    wait_for(lambda: e.kube.get_or_none(f"/api/v1/namespaces/{NS}/services/{CLUSTER}-bootstrap"),
             "the bootstrap Service recreated", 60)
    # A deleted child is noticed without a restart too (the operator watches its children).
    e.kubectl("delete", "-n", NS, "pdb", CLUSTER)
    wait_for(lambda: e.kube.get_or_none(
        f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{CLUSTER}"),
        "the PodDisruptionBudget recreated", 60)


def lease_holder(e: Env) -> str:
    lease = e.get(f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases/riffle-operator")
    return lease["spec"].get("holderIdentity") or ""


def test_one_operator_replica_leads_and_a_standby_takes_over(installed: Env):
    e = installed
    assert lease_holder(e) == "riffle-operator-envtest"
    standby = e.spawn_operator("riffle-operator-standby", free_port())
    try:
        time.sleep(4)
        assert standby.poll() is None
        assert lease_holder(e) == "riffle-operator-envtest"
        assert "standing by" in (e.dir / "riffle-operator-standby.log").read_text()
        # The leader dies without releasing: the standby takes over once the lease expires.
        e.stop_operator()
        started = time.monotonic()
        wait_for(lambda: lease_holder(e) == "riffle-operator-standby", "the standby to lead", 40)
        took = time.monotonic() - started
        assert took < 25, f"took over after {took:.1f} s"
        e.kubectl("delete", "-n", NS, "configmap", f"{CLUSTER}-config")
        wait_for(lambda: e.kube.get_or_none(
            f"/api/v1/namespaces/{NS}/configmaps/{CLUSTER}-config"),
            "the new leader to recreate the ConfigMap", 60)
        # A graceful stop hands the lease back at once.
        standby.terminate()
        standby.wait(30)
        assert lease_holder(e) == ""
    finally:
        if standby.poll() is None:
            standby.kill()
    e.start_operator()
    wait_for(lambda: lease_holder(e) == "riffle-operator-envtest", "the operator to lead again", 30)


def test_deleting_clusters_collects_children_and_claims_per_delete_claim(installed: Env):
    e = installed
    claims = lambda: sorted(p["metadata"]["name"] for p in e.get(
        f"/api/v1/namespaces/{NS}/persistentvolumeclaims")["items"])
    # A one-broker Cluster whose volumes go with it.
    e.apply({"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster",
             "metadata": {"name": "scratch"},
             "spec": {"replicas": 1, "storage": {"size": "1Gi", "deleteClaim": True}}})
    wait_for(lambda: e.cluster("scratch").get("status", {}).get("readyReplicas") == 1,
             "the scratch broker ready", 90)
    assert claims() == sorted([f"data-{CLUSTER}-{i}" for i in range(4)] + ["data-scratch-0"])
    for name in (CLUSTER, "scratch"):
        e.kubectl("delete", "-n", NS, "cluster", name, "--wait=true", "--timeout=60s")
    for path in CHILDREN:
        wait_for(lambda: e.kube.get_or_none(path) is None, f"{path} garbage-collected", 90)
    wait_for(lambda: not e.get(f"/api/v1/namespaces/{NS}/pods")["items"],
             "the broker pods gone", 90)
    wait_for(lambda: not e.sim.running, "the broker processes stopped", 30)
    # deleteClaim: false keeps the volumes (and the data); true deletes them.
    wait_for(lambda: "data-scratch-0" not in claims(), "the scratch claim deleted", 60)
    assert claims() == [f"data-{CLUSTER}-{i}" for i in range(4)]


# Permissions the audit log cannot show in use, and why the chart still needs them.
IMPLIED = {
    # OwnerReferencesPermissionEnforcement (enabled in this control plane): setting a
    # blocking owner reference to a Cluster needs update on its finalizers.
    ("riffle.dev", "clusters/finalizers", "update"),
}


def granted_rules(e: Env) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the chart grants the operator's ServiceAccount."""
    rendered = e.helm("template", "riffle", str(REPO / "charts" / "riffle"),
                      "--namespace", OPERATOR_NS).stdout
    out = set()
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        out |= {(g, r, v) for v in rule["verbs"]}
    return out


@pytest.mark.finale
def test_chart_rbac_grants_exactly_what_the_operator_uses(installed: Env):
    """Least privilege, shown with the API server's audit log of the whole journey: the
    operator was never denied, and every permission the chart grants was used."""
    e = installed
    events = e.cp.audit(f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}")
    assert events, "no audited request by the operator"
    denied = sorted({(ev["verb"], ev["requestURI"]) for ev in events
                     if ev.get("responseStatus", {}).get("code") == 403})
    assert not denied, denied
    used = set()
    for ev in events:
        ref = ev.get("objectRef") or {}
        if not ref.get("resource"):
            continue
        res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), res, ev["verb"]))
        if ev["verb"] == "patch":  # a server-side apply may create the object
            used.add((ref.get("apiGroup", ""), res, "create"))
    unused = granted_rules(e) - used - IMPLIED
    assert not unused, f"granted but never used: {sorted(unused)}"


@pytest.mark.finale
def test_helm_upgrade_and_uninstall(installed: Env):
    e = installed
    e.helm("upgrade", "riffle", str(REPO / "charts" / "riffle"), "--namespace", OPERATOR_NS,
           "--set", "logLevel=debug", "--reuse-values")
    dep = e.operator_deployment()
    env = {x["name"]: x.get("value") for x in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RIFFLE_LOG"] == "debug"
    e.stop_operator()
    e.helm("uninstall", "riffle", "--namespace", OPERATOR_NS, "--wait")
    assert e.kube.get_or_none(
        f"/apis/apps/v1/namespaces/{OPERATOR_NS}/deployments/{OPERATOR_SA}") is None
    assert e.kube.get_or_none(
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{OPERATOR_SA}") is None
    # Helm never deletes CRDs (nor, so, anyone's Clusters and Topics).
    assert e.kube.get_or_none(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/clusters.riffle.dev")
