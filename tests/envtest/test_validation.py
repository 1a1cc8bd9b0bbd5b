"""Every validation rule the CRDs declare, evaluated by the API server: one accepted and
one rejected object per rule (server-side dry runs), plus schema checks and defaulting."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from conftest import REPO, Env

NS = "validation"
CLUSTER = {"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster",
           "metadata": {"name": "c"}, "spec": {"replicas": 3}}
TOPIC = {"apiVersion": "riffle.dev/v1alpha1", "kind": "Topic",
         "metadata": {"name": "t"},
         "spec": {"clusterRef": {"name": "c"}, "partitions": 3, "topicName": "t"}}

AUTO = {"minReplicas": 3, "maxReplicas": 5, "targetBytesInPerBroker": 1000}


def autoscaling(changes: dict) -> dict:
    """AUTO with `changes` (None: the key left out)."""
    return {k: v for k, v in {**AUTO, **changes}.items() if v is not None}


# rule message -> (base object, spec changes accepted, spec changes rejected, transition)
# A transition rule is checked as an update of the base object (stored first).
CASES: dict[str, tuple[dict, dict, dict, bool]] = {
    "a cluster needs at least one broker": (CLUSTER, {"replicas": 1}, {"replicas": 0}, False),
    "voters must be 1 or 3": (CLUSTER, {"voters": 3}, {"voters": 2}, False),
    "replicas cannot be fewer than voters":
        (CLUSTER, {"replicas": 3, "voters": 3}, {"replicas": 2, "voters": 3}, False),
    "port out of range": (CLUSTER, {"listeners": {"kafka": 19092, "http": 1, "rpc": 65535}},
                          {"listeners": {"rpc": 70000}}, False),
    **{message: (CLUSTER, {"autoscaling": autoscaling(ok)}, {"autoscaling": autoscaling(bad)}, False)
       for message, ok, bad in [
           ("minReplicas cannot exceed maxReplicas", {"maxReplicas": 3}, {"minReplicas": 6}),
           ("set targetBytesInPerBroker, targetCpuMillisPerBroker or both",
            {"targetBytesInPerBroker": None, "targetCpuMillisPerBroker": 500},
            {"targetBytesInPerBroker": None}),
           ("minReplicas must be at least 1", {"minReplicas": 1}, {"minReplicas": 0}),
           ("targetBytesInPerBroker must be positive", {"targetBytesInPerBroker": 1},
            {"targetBytesInPerBroker": 0}),
           ("targetCpuMillisPerBroker must be positive", {"targetCpuMillisPerBroker": 1},
            {"targetCpuMillisPerBroker": -1}),
           ("scaleUpWindowSeconds must not be negative", {"scaleUpWindowSeconds": 0},
            {"scaleUpWindowSeconds": -1}),
           ("scaleDownWindowSeconds must not be negative", {"scaleDownWindowSeconds": 0},
            {"scaleDownWindowSeconds": -1}),
           ("cooldownSeconds must not be negative", {"cooldownSeconds": 0},
            {"cooldownSeconds": -1}),
           ("intervalSeconds must be at least 1", {"intervalSeconds": 1},
            {"intervalSeconds": 0}),
       ]},
    "partitions must be at least 1": (TOPIC, {"partitions": 1}, {"partitions": 0}, False),
    "replicationFactor must be at least 1":
        (TOPIC, {"replicationFactor": 3}, {"replicationFactor": 0}, False),
    "partitions can only grow": (TOPIC, {"partitions": 4}, {"partitions": 2}, True),
    "clusterRef is immutable": (TOPIC, {"config": {"retention.ms": "1"}},
                                {"clusterRef": {"name": "other"}}, True),
    "topicName is immutable": (TOPIC, {"partitions": 5}, {"topicName": "renamed"}, True),
}


def rules(node: Any) -> list[str]:
    """Messages of every x-kubernetes-validations rule in a schema."""
    found: list[str] = []
    if isinstance(node, dict):
        for r in node.get("x-kubernetes-validations", []):
            found.append(r["message"])
        for v in node.values():
            found += rules(v)
    elif isinstance(node, list):
        for v in node:
            found += rules(v)
    return found


def declared() -> list[str]:
    out = []
    for f in ("riffle.dev_clusters.yaml", "riffle.dev_topics.yaml"):
        crd = yaml.safe_load((REPO / "crds" / f).read_text())
        out += rules(crd["spec"]["versions"][0]["schema"])
    return out


def with_spec(base: dict, changes: dict, name: str) -> dict:
    obj = yaml.safe_load(yaml.safe_dump(base))
    obj["metadata"]["name"] = name
    obj["spec"].update(changes)
    return obj


def test_every_declared_rule_has_cases():
    assert set(declared()) == set(CASES), "add a case for each new CRD rule"


@pytest.fixture(scope="module")
def ns(installed: Env) -> Env:
    installed.kubectl("create", "namespace", NS)
    return installed


@pytest.mark.parametrize("message", sorted(CASES))
def test_rule_is_enforced_by_the_api_server(ns: Env, message: str):
    base, good, bad, transition = CASES[message]
    name = "r" + str(sorted(CASES).index(message))
    # Objects are stored only where a transition rule needs an old object.
    flags = () if transition else ("--dry-run=server",)
    if transition:
        ns.apply(with_spec(base, {}, name), NS)
    ok = ns.apply(with_spec(base, good, name), NS, *flags, check=False)
    assert ok.returncode == 0, ok.stderr
    r = ns.apply(with_spec(base, {**good, **bad}, name), NS, *flags, check=False)
    assert r.returncode != 0, f"accepted: {bad}"
    assert message in r.stderr, r.stderr


def test_schema_refuses_unknown_types_and_enums(ns: Env):
    dry = "--dry-run=server"
    r = ns.apply(with_spec(TOPIC, {"deletionPolicy": "Sometimes"}, "enum"), NS, dry, check=False)
    assert r.returncode != 0 and "Unsupported value" in r.stderr, r.stderr
    r = ns.apply(with_spec(CLUSTER, {"replicas": "three"}, "types"), NS, dry, check=False)
    assert r.returncode != 0 and "replicas" in r.stderr, r.stderr


def test_api_server_applies_schema_defaults(ns: Env):
    r = ns.apply({"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster",
                  "metadata": {"name": "defaults"}, "spec": {}}, NS, "--dry-run=server",
                 "-o", "json")
    spec = json.loads(r.stdout)["spec"]
    assert spec["replicas"] == 3
    assert spec["listeners"] == {"kafka": 9092, "http": 9644, "rpc": 9093}
    assert spec["storage"]["size"] == "10Gi"
