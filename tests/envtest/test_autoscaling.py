"""The built-in autoscaler (`spec.autoscaling`) with real brokers: it reads the brokers'
produce rate, scales out while a sustained load exceeds the per-broker target and back
in once the load stops (windows shortened for the test), never while a roll is under
way, records each decision as an event, and the acknowledged records all survive."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Env, GroupReader, Load, wait_for

NS, NAME, TOPIC = "auto", "auto", "metered"
# 100 kB/s per broker; the load below produces about 400 kB/s: 4 brokers' worth.
TARGET, RATE, SIZE = 100_000, 400, 1000


def cluster(e: Env) -> dict:
    return e.cluster(NAME, NS)


def autoscaler(e: Env) -> dict:
    return cluster(e).get("status", {}).get("autoscaler") or {}


def autoscaled(e: Env) -> dict[str, str]:
    """Notes of the autoscaler's events by reason (AutoscaledOut, AutoscaledIn)."""
    events = e.get(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")["items"]
    return {ev["reason"]: ev.get("note", "") for ev in events
            if ev["reason"].startswith("Autoscaled")}


@pytest.fixture(scope="module")
def auto(installed: Env):
    e = installed
    e.kubectl("create", "namespace", NS)
    e.apply({"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster",
             "metadata": {"name": NAME},
             "spec": {"replicas": 3, "voters": 3,
                      "config": {"min_insync_replicas": "2"},
                      "autoscaling": {"minReplicas": 3, "maxReplicas": 4,
                                      "targetBytesInPerBroker": TARGET,
                                      "scaleUpWindowSeconds": 6, "scaleDownWindowSeconds": 10,
                                      "cooldownSeconds": 5, "intervalSeconds": 2}}}, NS)
    wait_for(lambda: cluster(e).get("status", {}).get("readyReplicas") == 3, "3 brokers", 120)
    bootstrap = cluster(e)["status"]["bootstrapServers"]
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
    admin.create_topics([NewTopic(TOPIC, 6, 3)])[TOPIC].result(30)
    yield e, bootstrap
    # Its brokers would only slow the tests after it.
    e.kubectl("delete", "-n", NS, f"rfc/{NAME}", "--wait=false")


def test_idle_cluster_is_measured_and_kept(auto):
    e, _ = auto
    st = wait_for(lambda: (lambda a: a.get("decision") == "load within target" and a)(
        autoscaler(e)), "an idle reading", 60)
    assert st["recommendedReplicas"] == 3 and st["bytesInPerSecond"] < TARGET, st
    assert "cpuMillis" in st
    assert cluster(e)["spec"]["replicas"] == 3 and not autoscaled(e)


def test_no_scaling_while_a_roll_is_under_way(auto):
    e, bootstrap = auto
    # A setting the brokers cannot start with: the roll stops at its first broker and
    # stays under way (and the cluster short of a broker) until the spec is fixed.
    e.kubectl("patch", "-n", NS, f"rfc/{NAME}", "--type", "merge",
              "-p", '{"spec": {"config": {"replica_fetch_max_bytes": "lots"}}}')
    load = Load(bootstrap, TOPIC, rate=RATE, size=SIZE)
    try:
        started = time.monotonic()
        while True:
            st, a = cluster(e), autoscaler(e)
            assert st["spec"]["replicas"] == 3 and not autoscaled(e), a
            stopped = any(c["type"] == "Degraded" and c["status"] == "True"
                          for c in st["status"].get("conditions", []))
            # Loaded for well over the scale-up window, with 4 brokers' worth recommended.
            if stopped and time.monotonic() - started > 20 and a.get("recommendedReplicas") == 4:
                break
            assert time.monotonic() - started < 180, f"no stopped roll under load: {a}"
            time.sleep(1)
        assert a["decision"].startswith("not while") and "not back" in a["decision"], a
        print(f"held for {time.monotonic() - started:.0f} s during the roll: {a['decision']}")
    finally:
        load.finish()
    # Once the loaded samples are older than the scale-up window, the roll may finish.
    time.sleep(10)
    e.kubectl("patch", "-n", NS, f"rfc/{NAME}", "--type", "json",
              "-p", '[{"op": "remove", "path": "/spec/config/replica_fetch_max_bytes"}]')
    wait_for(lambda: (lambda s: s.get("operation") is None and s.get("readyReplicas") == 3)(
        cluster(e)["status"]), "the roll to finish", 180)
    assert cluster(e)["spec"]["replicas"] == 3 and not autoscaled(e)
    load.read_back(bootstrap, "auto-roll-check")


def test_sustained_load_scales_out_then_idle_scales_in(auto):
    e, bootstrap = auto
    load = Load(bootstrap, TOPIC, rate=RATE, size=SIZE)
    reader = GroupReader(bootstrap, TOPIC, "auto-live")
    try:
        started = time.monotonic()
        wait_for(lambda: cluster(e)["spec"]["replicas"] == 4, "a scale-out", 120)
        print(f"scaled out {time.monotonic() - started:.1f} s after the load began: "
              f"{autoscaler(e)}")
        notes = autoscaled(e)
        assert list(notes) == ["AutoscaledOut"] and notes["AutoscaledOut"].startswith(
            "3 -> 4 brokers: load asked for at least 4 brokers"), notes
        wait_for(lambda: cluster(e)["status"].get("readyReplicas") == 4, "4 ready brokers", 120)
        # Still loaded: at the maximum, nothing more happens.
        time.sleep(8)
        assert cluster(e)["spec"]["replicas"] == 4 and list(autoscaled(e)) == ["AutoscaledOut"]
    finally:
        load.finish()
    stopped = time.monotonic()
    wait_for(lambda: cluster(e)["spec"]["replicas"] == 3, "a scale-in", 180)
    print(f"scaled in {time.monotonic() - stopped:.1f} s after the load stopped")
    notes = autoscaled(e)
    assert notes.get("AutoscaledIn", "").startswith("4 -> 3 brokers: load asked for at most 3"), notes
    # The scale-in is an ordinary one: broker 3 drained before its Pod goes.
    wait_for(lambda: cluster(e)["status"].get("operation") is None
             and cluster(e)["status"].get("readyReplicas") == 3, "the drain to finish", 180)
    load.read_back(bootstrap, "auto-check")
    reader.finish()
    assert reader.read > 0 and not reader.errors, (reader.read, reader.errors[:5])
