"""Changing a running Cluster's shape through the operator, with real brokers, a producer
(acks=all, idempotent) and a consumer group running throughout: 3 -> 5 brokers spreads
replicas, scale-down drains brokers before their Pods go, scaling below the replication
factor is refused, a rolling restart goes one broker at a time (leaderships moved first,
the controller last) and stops at a broker that does not come back until the spec is
fixed, dynamic settings change without a restart, leaderships that drifted go back to
their preferred replicas, an evicted broker (a node drain) hands its leaderships over in
its preStop hook, one broker at a time, and at the end every acknowledged record is
there."""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.request

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from conftest import Env, GroupReader, Load, wait_for
from kube import ApiError

NS, NAME, TOPIC = "ops", "ops", "events"


def cluster(e: Env) -> dict:
    return e.cluster(NAME, NS)


def brokers_view(broker: int = 0) -> dict:
    url = f"http://{NAME}-{broker}.{NAME}-brokers.{NS}.svc:9644/v1/cluster"
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.loads(r.read())


def any_view() -> dict:
    for b in range(6):
        try:
            return brokers_view(b)
        except OSError:
            continue
    raise AssertionError("no broker answers")


def view_summary() -> dict:
    """The parts of the cluster view a failed wait needs explained."""
    v = any_view()
    return {"from": v["node_id"], "controller": v["controller"], "raft": v["raft"],
            "partitions": v["partitions"],
            "brokers": [{k: b[k] for k in ("id", "state", "leaders", "maintenance")}
                        for b in v["brokers"]]}


def sts(e: Env) -> dict:
    return e.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/{NAME}")


def pods(e: Env) -> dict[str, dict]:
    items = e.get(f"/api/v1/namespaces/{NS}/pods")["items"]
    return {p["metadata"]["name"]: p for p in items}


def ready(p: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in p.get("status", {}).get("conditions", []))


@pytest.fixture(scope="module")
def ops(installed: Env):
    e = installed
    e.kubectl("create", "namespace", NS)
    e.apply({"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster",
             "metadata": {"name": NAME},
             "spec": {"replicas": 3, "voters": 3,
                      "config": {"min_insync_replicas": "2",
                                 "auto_leader_rebalance_enable": "false"}}}, NS)
    wait_for(lambda: cluster(e).get("status", {}).get("readyReplicas") == 3, "3 brokers", 120)
    wait_for(lambda: len(any_view()["brokers"]) == 3, "3 registered brokers", 60)
    bootstrap = cluster(e)["status"]["bootstrapServers"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, 8, 3)])[TOPIC].result(30)
    load = Load(bootstrap, TOPIC)
    reader = GroupReader(bootstrap, TOPIC, "ops-live")
    yield e, load, reader
    load.finish()
    reader.finish()


def conditions(e: Env) -> dict[str, dict]:
    return {c["type"]: c for c in cluster(e)["status"]["conditions"]}


def test_scale_up_spreads_replicas_onto_the_new_brokers(ops):
    e, load, _ = ops
    wait_for(lambda: len(load.acked) > 100, "records flowing", 60)
    started = time.monotonic()
    e.kubectl("scale", "-n", NS, f"rfc/{NAME}", "--replicas=5")
    wait_for(lambda: cluster(e)["status"].get("readyReplicas") == 5, "5 ready brokers", 180)

    def balanced():
        counts = [b["replicas"] for b in any_view()["brokers"]]
        # Every broker within the balancer's tolerance (10 %) of the mean, offsets
        # topic included.
        mean = sum(counts) / 5
        ok = len(counts) == 5 and all(math.floor(mean * 0.9) <= c <= math.ceil(mean * 1.1)
                                      for c in counts)
        return ok and counts

    counts = wait_for(balanced, "replicas spread over 5 brokers", 180)
    print(f"3 -> 5 brokers balanced in {time.monotonic() - started:.1f} s: {counts}")
    assert not load.errors, load.errors[:5]


def test_scale_below_the_replication_factor_is_refused(ops):
    e, load, _ = ops
    admin = AdminClient({"bootstrap.servers": cluster(e)["status"]["bootstrapServers"]})
    admin.create_topics([NewTopic("wide", 1, 4)])["wide"].result(30)
    e.kubectl("scale", "-n", NS, f"rfc/{NAME}", "--replicas=3")
    cond = wait_for(lambda: (lambda c: c["Degraded"]["status"] == "True" and c["Degraded"])(
        conditions(e)), "the Degraded condition", 30)
    assert cond["reason"] == "OperationStopped" and "4 replicas" in cond["message"], cond
    events = e.get(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")["items"]
    assert any(ev["reason"] == "OperationStopped" for ev in events)
    assert sts(e)["spec"]["replicas"] == 5
    assert not any(b["decommissioning"] for b in any_view()["brokers"])
    # Fewer brokers than metadata voters: refused by the API server already.
    r = e.kubectl("scale", "-n", NS, f"rfc/{NAME}", "--replicas=2", check=False)
    assert r.returncode != 0 and "fewer than voters" in r.stderr, r.stderr
    admin.delete_topics(["wide"])["wide"].result(30)


def test_scale_down_drains_the_highest_brokers_before_their_pods_go(ops):
    e, load, _ = ops
    wait_for(lambda: len(load.acked) > 200, "records flowing", 60)
    # Asked for 3 brokers in the previous test: now that nothing needs 4, brokers 4
    # and 3 drain, in that order.
    assert cluster(e)["spec"]["replicas"] == 3
    drained: list[int] = []
    started = time.monotonic()
    deadline = started + 300
    while (size := sts(e)["spec"]["replicas"]) != 3:
        assert time.monotonic() < deadline, cluster(e).get("status")
        op = cluster(e).get("status", {}).get("operation") or ""
        for b in (4, 3):
            if f"broker {b}" in op and b not in drained:
                drained.append(b)
                if b == 3:
                    # The operator dies mid-drain; a new one carries on from the status.
                    e.stop_operator()
                    e.start_operator()
        # A broker's Pod goes only once the StatefulSet was lowered below it, which
        # happens only once the broker holds nothing.
        view = {b["id"]: b for b in any_view()["brokers"]}
        for b in (3, 4):
            if size <= b and b in view:
                assert view[b]["replicas"] == 0, f"broker {b} released holding replicas"
            if f"{NAME}-{b}" not in pods(e):
                assert size <= b, f"pod {b} deleted before the StatefulSet was lowered"
        time.sleep(0.2)
    print(f"brokers {drained} drained and their Pods released in "
          f"{time.monotonic() - started:.1f} s")
    assert drained == [4, 3], drained
    # One event per broker (each names the broker's Pod), not one series for both.
    events = e.get(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")["items"]
    notes = {(ev.get("related") or {}).get("name"): ev.get("note") for ev in events
             if ev["reason"] == "Operation" and "decommissioning" in ev.get("note", "")}
    assert notes == {f"{NAME}-4": "decommissioning broker 4",
                     f"{NAME}-3": "decommissioning broker 3"}, notes
    wait_for(lambda: f"{NAME}-3" not in pods(e) and f"{NAME}-4" not in pods(e), "pods gone", 60)
    wait_for(lambda: [b["id"] for b in any_view()["brokers"]] == [0, 1, 2],
             "brokers 3 and 4 unregistered", 60)
    st = wait_for(lambda: (lambda s: s.get("operation") is None and s)(cluster(e)["status"]),
                  "the operation finished", 60)
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert (conds["Ready"], conds["Degraded"]) == ("True", "False"), st
    assert not load.errors, load.errors[:5]


def test_rolling_restart_one_broker_at_a_time_controller_last(ops):
    e, load, _ = ops
    before = {n: p["metadata"]["uid"] for n, p in pods(e).items()}
    controller = any_view()["controller"]
    acked_before = len(load.acked)
    e.kubectl("annotate", "-n", NS, f"rfc/{NAME}", "riffle.dev/restart=1")
    order: list[str] = []
    started = time.monotonic()
    deadline = started + 300
    while len(order) < 3:
        assert time.monotonic() < deadline, (order, cluster(e).get("status"))
        now = pods(e)
        not_ready = [n for n, p in now.items() if not ready(p)]
        assert len(not_ready) <= 1, f"more than one broker down: {not_ready}"
        for n, p in now.items():
            if p["metadata"]["uid"] != before[n] and n not in order:
                order.append(n)
                if len(order) == 1:
                    # The operator dies mid-roll; a new one carries on from the status.
                    e.stop_operator()
                    e.start_operator()
        time.sleep(0.2)
    assert order[-1] == f"{NAME}-{controller}", (order, controller)
    assert order == sorted(order[:-1], reverse=True) + [order[-1]]
    wait_for(lambda: cluster(e)["status"].get("operation") is None
             and all(ready(p) for p in pods(e).values()), "the roll finished", 120)
    print(f"rolling restart of 3 brokers in {time.monotonic() - started:.1f} s: {order}")
    assert not any(b["maintenance"] for b in any_view()["brokers"])
    # The operator (restarted after the first broker) counts the restarts it did.
    with urllib.request.urlopen(f"http://127.0.0.1:{e.operator_port}/metrics", timeout=3) as r:
        metrics = r.read().decode()
    restarts = f'riffle_operator_cluster_steps_total{{cluster="{NAME}",namespace="{NS}",step="restart"}}'
    counted = [int(m.split()[-1]) for m in metrics.splitlines() if m.startswith(restarts)]
    assert counted and 1 <= counted[0] <= 2, metrics
    assert len(load.acked) > acked_before
    assert not load.errors, load.errors[:5]


def operator_metric(e: Env, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{e.operator_port}/metrics", timeout=3) as r:
        lines = r.read().decode().splitlines()
    series = f'{name}{{cluster="{NAME}",namespace="{NS}"}}'
    return sum(float(x.split()[-1]) for x in lines if x.startswith(series))


def test_operator_moves_leaderships_back_to_preferred_replicas(ops):
    e, load, _ = ops
    # The brokers' own rebalancing is off in this Cluster: only the operator moves them.
    wait_for(lambda: any_view()["partitions"]["non_preferred_leaders"] == 0,
             "preferred leaders after the roll", 60, explain=view_summary)
    elected_before = operator_metric(e, "riffle_operator_preferred_leader_elections_total")
    # Broker 1 frozen past its session timeout: fenced, its leaderships move away.
    proc = e.sim.running[f"{NS}/{NAME}-1"].proc
    proc.send_signal(signal.SIGSTOP)
    try:
        drifted = wait_for(lambda: any_view()["partitions"]["non_preferred_leaders"],
                           "leaderships moved off the frozen broker", 60, explain=view_summary)
    finally:
        proc.send_signal(signal.SIGCONT)
    print(f"{drifted} partitions led away from their preferred replica")
    started = time.monotonic()
    wait_for(lambda: any_view()["partitions"]["non_preferred_leaders"] == 0,
             "leaderships back on their preferred replicas", 120, explain=view_summary)
    print(f"preferred leaders back {time.monotonic() - started:.1f} s after broker 1 returned")
    events = e.get(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")["items"]
    assert any(ev["reason"] == "PreferredLeaderElection" for ev in events)
    assert operator_metric(e, "riffle_operator_preferred_leader_elections_total") > elected_before
    wait_for(lambda: cluster(e)["status"].get("nonPreferredLeaders") == 0,
             "the imbalance in the status", 30)
    assert operator_metric(e, "riffle_operator_cluster_non_preferred_leaders") == 0
    assert not load.errors, load.errors[:5]


def broker_setting(e: Env, broker: int, name: str) -> tuple[str, int]:
    """(value, source) of a broker setting as DescribeConfigs gives it."""
    admin = AdminClient({"bootstrap.servers": cluster(e)["status"]["bootstrapServers"]})
    res = ConfigResource(ResourceType.BROKER, str(broker))
    entry = admin.describe_configs([res])[res].result(10)[name]
    return entry.value, getattr(entry.source, "value", entry.source)


DYNAMIC_DEFAULT = 3  # Kafka's DYNAMIC_DEFAULT_BROKER_CONFIG source


def test_dynamic_settings_apply_without_a_restart(ops):
    e, load, _ = ops
    before = {n: p["metadata"]["uid"] for n, p in pods(e).items()}
    revision = sts(e)["status"]["updateRevision"]
    e.kubectl("patch", "-n", NS, f"rfc/{NAME}", "--type", "merge",
              "-p", '{"spec": {"config": {"log_retention_ms": "3600000"}}}')
    wait_for(lambda: all(broker_setting(e, b, "log.retention.ms") == ("3600000", DYNAMIC_DEFAULT)
                         for b in range(3)), "the setting on every broker", 60)
    events = e.get(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")["items"]
    assert any(ev["reason"] == "ConfigApplied" and "log.retention.ms=3600000" in ev.get("note", "")
               for ev in events)
    # Removed from the spec: back to the default, still without a restart.
    e.kubectl("patch", "-n", NS, f"rfc/{NAME}", "--type", "json",
              "-p", '[{"op": "remove", "path": "/spec/config/log_retention_ms"}]')
    wait_for(lambda: broker_setting(e, 1, "log.retention.ms")[1] != DYNAMIC_DEFAULT,
             "the setting removed", 60)
    assert broker_setting(e, 1, "log.retention.ms")[0] == "604800000"
    time.sleep(3)
    assert {n: p["metadata"]["uid"] for n, p in pods(e).items()} == before
    assert sts(e)["status"]["updateRevision"] == revision
    assert not load.errors, load.errors[:5]


def test_an_evicted_broker_hands_over_its_leaderships_before_it_stops(ops):
    e, load, _ = ops
    victim = f"{NAME}-1"
    wait_for(lambda: (lambda v: v["partitions"]["under_replicated"] == 0
                      and v["partitions"]["non_preferred_leaders"] == 0)(any_view())
             and all(ready(p) for p in pods(e).values()), "a quiet cluster", 120)
    assert any_view()["brokers"][1]["leaders"] > 0
    uid = pods(e)[victim]["metadata"]["uid"]
    hooks = len(e.sim.pre_stops)

    def evict(name: str):
        e.kube.post(f"/api/v1/namespaces/{NS}/pods/{name}/eviction", {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": NS}})

    # What `kubectl drain` does for each Pod on the node.
    evict(victim)
    with pytest.raises(ApiError) as refused:
        evict(f"{NAME}-2")
    assert refused.value.status == 429, "the disruption budget lets one broker go at a time"
    hook = wait_for(lambda: next((h for h in e.sim.pre_stops[hooks:]
                                  if h["pod"] == f"{NS}/{victim}"), None), "the preStop hook", 90)
    log = (e.sim.root / f"{NS}_{victim}.log").read_text()
    out = log.rsplit("--- preStop start", 1)[-1].split("--- preStop exit")[0]
    assert hook["exit"] == 0 and "no leadership left to move" in out, out[:2000]
    assert '"until_restart": true' in out, out[:2000]
    print(f"preStop hook: leaderships handed over in {hook['seconds']:.1f} s")
    wait_for(lambda: (lambda p: p and p["metadata"]["uid"] != uid and ready(p))(
        pods(e).get(victim)), "the evicted broker back", 120)
    # Its maintenance ended with the restart, and the operator gives it its leaderships back.
    wait_for(lambda: not any_view()["brokers"][1]["maintenance"], "maintenance over", 30)
    wait_for(lambda: (lambda v: v["partitions"]["non_preferred_leaders"] == 0
                      and v["brokers"][1]["leaders"] > 0)(any_view()),
             "broker 1 leads again", 120, explain=view_summary)
    assert not load.errors, load.errors[:5]


def test_a_broker_that_does_not_come_back_stops_the_roll_until_fixed(ops):
    e, load, _ = ops
    before = {n: p["metadata"]["uid"] for n, p in pods(e).items()}
    # A value the brokers cannot start with: the first restarted broker stays down.
    e.kubectl("patch", "-n", NS, f"rfc/{NAME}", "--type", "merge",
              "-p", '{"spec": {"config": {"replica_fetch_max_bytes": "lots"}}}')
    cond = wait_for(lambda: (lambda c: c["Degraded"]["status"] == "True" and c["Degraded"])(
        conditions(e)), "the roll to stop", 180)
    assert cond["reason"] == "OperationStopped" and "not back" in cond["message"], cond
    replaced = [n for n, p in pods(e).items() if p["metadata"]["uid"] != before[n]]
    assert len(replaced) == 1, f"the roll went on past a broker that did not come back: {replaced}"
    events = e.get(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")["items"]
    assert any(ev["reason"] == "OperationStopped" and "not back" in ev.get("note", "")
               for ev in events)
    time.sleep(5)
    assert [n for n, p in pods(e).items() if p["metadata"]["uid"] != before[n]] == replaced
    # Fixed (back to the spec the others run): the stuck broker is restarted at that
    # revision, and the others, already there, stay as they are.
    stuck = pods(e)[replaced[0]]["metadata"]["uid"]
    e.kubectl("patch", "-n", NS, f"rfc/{NAME}", "--type", "json",
              "-p", '[{"op": "remove", "path": "/spec/config/replica_fetch_max_bytes"}]')
    wait_for(lambda: (lambda s, p: s.get("operation") is None
                      and s.get("readyReplicas") == 3
                      and all(ready(x) for x in p.values())
                      and p[replaced[0]]["metadata"]["uid"] != stuck)(
        cluster(e)["status"], pods(e)), "the stuck broker back after the fix", 120)
    assert conditions(e)["Degraded"]["status"] == "False", conditions(e)
    assert {n: p["metadata"]["uid"] for n, p in pods(e).items() if n != replaced[0]} == \
        {n: uid for n, uid in before.items() if n != replaced[0]}
    assert not load.errors, load.errors[:5]


def test_every_acknowledged_record_is_there(ops):
    e, load, reader = ops
    load.read_back(cluster(e)["status"]["bootstrapServers"], "ops-check")
    # The consumer group that read throughout got records and no fatal error.
    reader.finish()
    assert reader.read > 0 and not reader.errors, (reader.read, reader.errors[:5])
    print(f"the consumer group read {reader.read} records throughout")
