"""Decommissioning and maintenance through the broker's admin API (HTTP, JSON).

Real brokers on 127.0.0.1 under an idempotent acks=all load.  A decommissioned broker
ends with no replica (its moves run through reassignments, progress visible), then
leaves the cluster once stopped; refusals (a voter, too few brokers for a replication
factor) are 409 with the reason; recommissioning cancels the moves in flight.  A broker
in maintenance leads nothing within seconds and gets its leaderships back afterwards;
a second broker in maintenance is refused.  Maintenance entered "until restart" (a broker
Pod's preStop hook) ends by itself when the broker is back; plain maintenance outlives
restarts.  A preferred-leader election gives a
restarted broker back the leaderships it lost.  No delivery fails and every acknowledged
record is read back from consistent replicas.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import time

import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

import kafka_wire as kw
from helpers import REPO_ROOT, riffle_binary, sample_records, wait_until
from test_cluster import (
    FAST, OP_TIMEOUT, ConfluentLoad, ck_admin, create_topic, finish_load, produce_records,
    read_partitions, verify_acked,
)


SPEC = yaml.safe_load((REPO_ROOT / "docs" / "admin-api.yaml").read_text())
validate_spec(SPEC)


def conforms(status, body, path):
    """Responses match docs/admin-api.yaml: the schema validates and names every field."""
    path = path.split("?")[0]
    if status >= 400:
        schema = SPEC["components"]["responses"]["Error"]["content"]["application/json"]["schema"]
    else:
        name = ("Decommission" if path.endswith("/decommission") else
                "Reassignments" if path.endswith("/reassignments") else
                "Reassignment" if "/reassignments/" in path else
                "Maintenance" if path.endswith("/maintenance") else
                "Balancer" if path.endswith("/balancer") else
                "Elected" if path.endswith("/preferred") else "Cluster")
        schema = SPEC["components"]["schemas"][name]
    OAS30Validator(schema).validate(body)
    assert set(body) == set(schema["properties"]), (path, sorted(body))
    return status, body


def put(c, via, path):
    return conforms(*c.broker(via).http_request("PUT", path), path)


def delete(c, via, path):
    return conforms(*c.broker(via).http_request("DELETE", path), path)


def get(c, via, path):
    return conforms(*c.broker(via).http_request("GET", path), path)


def post(c, via, path):
    return conforms(*c.broker(via).http_request("POST", path), path)


def riffle_admin(c, via, *args):
    """``riffle admin`` against broker ``via``'s HTTP port."""
    b = c.broker(via)
    return subprocess.run([str(riffle_binary()), "admin", "--http", f"{b.host}:{b.http_port}",
                           *map(str, args)], capture_output=True, text=True, timeout=60)


def holders(c, topic, partitions):
    return {p: c.replicas_of(topic, p) for p in partitions}


def test_decommission_under_load_then_the_stopped_broker_leaves(make_cluster):
    c = make_cluster(n=4, voters=3, extra_args=FAST)
    topic = create_topic(c, partitions=8, rf=2)
    parts = range(8)
    assert any(4 in r for r in holders(c, topic, parts).values())

    # Refusals: a voter; a broker whose loss leaves fewer brokers than a replication factor.
    status, body = put(c, 1, "/v1/brokers/1/decommission")
    assert status == 409 and "voter" in body["error"], body
    wide = create_topic(c, partitions=1, rf=4, prefix="wide")
    status, body = put(c, 2, "/v1/brokers/4/decommission")
    assert status == 409 and "replication factor 4" in body["error"], body
    adm = ck_admin(c)  # must outlive its futures
    adm.delete_topics([wide], operation_timeout=OP_TIMEOUT)[wide].result(OP_TIMEOUT)
    wait_until(lambda: wide not in c.metadata(via=1)["topics"], timeout=10, message="topic deleted")
    assert put(c, 2, "/v1/brokers/9/decommission")[0] == 404

    load = ConfluentLoad(c, topic, partitions=parts).start()
    try:
        load.log.wait_acks(500)
        status, body = put(c, 2, "/v1/brokers/4/decommission")
        assert status == 200 and body["decommissioning"], body
        t0 = time.monotonic()
        seen = []

        def drained():
            # Any broker answers: the broker itself and another one, in turn.
            _, st = get(c, 4 if len(seen) % 2 else 2, "/v1/brokers/4/decommission")
            seen.append((st["partitions_left"], st["bytes_left"]))
            return st["drained"]
        wait_until(drained, timeout=60, interval=0.2, message="broker 4 drained")
        took = time.monotonic() - t0
        load.log.wait_acks(load.log.count() + 500)
    except BaseException:
        load.abort()
        raise
    finish_load(load, check_errors=True)
    print(f"decommission drained broker 4 in {took:.1f}s; progress (partitions, bytes) "
          f"{seen[0]} -> {seen[-1]} over {len(seen)} samples")
    assert seen[0][0] > 0 and seen[-1] == (0, 0)
    lefts = [s[0] for s in seen]
    assert lefts == sorted(lefts, reverse=True), "progress only goes down"
    assert all(4 not in r for r in holders(c, topic, parts).values())
    verify_acked(c, topic, list(parts), load)
    c.assert_replicas_consistent(topic, list(parts))
    # No new replica lands on it while it is decommissioning.
    fresh = create_topic(c, partitions=6, rf=3, prefix="fresh")
    assert all(4 not in r for r in holders(c, fresh, range(6)).values())

    # Stopped, it leaves the cluster; the others stay healthy.
    c.stop_broker(4)
    wait_until(lambda: 4 not in [b["id"] for b in c.cluster_info(via=1)["brokers"]], timeout=30,
               message="broker 4 unregistered")
    # It leaves the metadata quorum too: the Raft leader stops replicating to it.
    wait_until(lambda: c.cluster_info(via=2)["raft"]["learners"] == [], timeout=30,
               message="broker 4 out of the quorum's learners")
    wait_until(lambda: c.cluster_info(via=2)["healthy"], timeout=30, message="healthy cluster")
    conforms(*c.broker(2).http_request("GET", "/v1/cluster"), "/v1/cluster")


def test_recommission_cancels_moves_in_flight(make_cluster):
    c = make_cluster(n=4, voters=3, extra_args=FAST)
    # Throttled replication (10 KB/s for every out-of-sync replica) keeps moves in flight.
    topic = create_topic(c, partitions=4, rf=2,
                         config={"follower.replication.throttled.replicas": "*"})
    for p in range(4):
        produce_records(c, topic, sample_records(500, value_size=1000), partition=p)
    for b in c.ids:
        with kw.Conn(c.broker(b).port) as conn:
            assert kw.incremental_alter_configs_v0(
                conn, kw.RESOURCE_BROKER, str(b),
                [("follower.replication.throttled.rate", kw.OP_SET, "10000")]) == (0, None)
    before = holders(c, topic, range(4))
    on4 = sum(4 in r for r in before.values())
    assert on4 > 0
    # Balancing off: recommissioning leaves broker 4 short of replicas, which the balancer
    # would otherwise even out right away.
    assert delete(c, 1, "/v1/balancer")[0] == 200
    status, _ = put(c, 1, "/v1/brokers/4/decommission")
    assert status == 200
    wait_until(lambda: get(c, 1, "/v1/brokers/4/decommission")[1]["moves_in_flight"] > 0,
               timeout=10, message="moves in flight")
    time.sleep(2)
    # Moves of this topic's replicas are stuck behind the throttle (other topics' are not).
    st = get(c, 1, "/v1/brokers/4/decommission")[1]
    assert st["partitions_left"] >= on4 and st["moves_in_flight"] >= on4 and not st["drained"], st
    # 500 records of 1000 bytes in each of this topic's partitions (about 300 KB stored):
    # what broker 4 holds shows from any broker (once reported) and in its own metrics.
    wait_until(lambda: (get(c, 2, "/v1/brokers/4/decommission")[1]["bytes_left"] or 0)
               >= on4 * 250_000, timeout=15,
               message="bytes left reported")
    left = [float(ln.split()[-1]) for ln in c.broker(4).http_get("/metrics")[1].splitlines()
            if ln.startswith('riffle_cluster_operations{kind="decommission_bytes_left"}')]
    assert left and left[0] >= on4 * 250_000, left
    status, body = delete(c, 1, "/v1/brokers/4/decommission")
    assert status == 200 and not body["decommissioning"] and body["moves_in_flight"] == 0, body
    assert holders(c, topic, range(4)) == before
    assert c.cluster_info(via=1)["reassignments"] == 0


def test_maintenance_moves_leaders_away_and_back_under_load(make_cluster):
    c = make_cluster(n=3, extra_args=FAST)
    topic = create_topic(c, partitions=6, rf=3, config={"min.insync.replicas": 2})
    c.wait_isr(topic, list(range(6)), c.ids)
    led_by_2 = lambda: sum(c.leader_of(topic, p, via=1) == 2 for p in range(6))  # noqa: E731
    assert led_by_2() > 0
    load = ConfluentLoad(c, topic, partitions=range(6)).start()
    try:
        load.log.wait_acks(500)
        t0 = time.monotonic()
        status, body = put(c, 1, "/v1/brokers/2/maintenance")
        assert status == 200 and body["maintenance"], body
        wait_until(lambda: get(c, 3, "/v1/brokers/2/maintenance")[1]["done"], timeout=10,
                   interval=0.1, message="broker 2 leads nothing")
        took = time.monotonic() - t0
        assert led_by_2() == 0
        status, body = put(c, 1, "/v1/brokers/3/maintenance")
        assert status == 409 and "one broker at a time" in body["error"], body
        # The same from the command line.
        cli = riffle_admin(c, 3, "maintenance", 3)
        assert cli.returncode != 0 and "409" in cli.stderr and "one broker at a time" in cli.stderr
        cli = riffle_admin(c, 3, "maintenance", 2, "--status")
        assert cli.returncode == 0 and json.loads(cli.stdout)["done"] is True, cli
        health = json.loads(riffle_admin(c, 1, "health").stdout)
        assert [b["maintenance"] for b in health["brokers"]] == [False, True, False]
        load.log.wait_acks(load.log.count() + 500)
        assert led_by_2() == 0, "leaderships stay off during maintenance"
        status, body = delete(c, 3, "/v1/brokers/2/maintenance")
        assert status == 200 and not body["maintenance"], body
        wait_until(lambda: led_by_2() > 0, timeout=10, message="leaderships back on broker 2")
        load.log.wait_acks(load.log.count() + 300)
    except BaseException:
        load.abort()
        raise
    finish_load(load, check_errors=True)
    print(f"maintenance: broker 2 led nothing {took:.2f}s after the request")
    verify_acked(c, topic, list(range(6)), load)
    c.assert_replicas_consistent(topic, list(range(6)))


def test_maintenance_until_restart_ends_when_the_broker_is_back(make_cluster):
    c = make_cluster(n=3, extra_args=FAST)
    parts = list(range(6))
    topic = create_topic(c, partitions=6, rf=3, config={"min.insync.replicas": 2})
    single = create_topic(c, partitions=6, rf=1, prefix="single")
    c.wait_isr(topic, parts, c.ids)
    led_by_2 = lambda: sum(c.leader_of(topic, p, via=1) == 2 for p in parts)  # noqa: E731
    sole = sum(c.leader_of(single, p, via=1) == 2 for p in parts)
    assert led_by_2() > 0 and sole > 0
    status, body = c.broker(1).http_request("PUT", "/v1/brokers/2/maintenance?until=later")
    assert status == 400 and "restart" in conforms(status, body, "")[1]["error"], body
    load = ConfluentLoad(c, topic, partitions=parts).start()
    try:
        load.log.wait_acks(300)
        # Exactly what the Pod's preStop hook runs (the broker id from the Pod's env).
        b = c.broker(1)
        hook = subprocess.run(
            [str(riffle_binary()), "admin", f"--http={b.host}:{b.http_port}", "maintenance",
             "--until-restart", "--wait=30"],
            env={**os.environ, "RIFFLE_NODE_ID": "2"}, capture_output=True, text=True,
            timeout=60)
        # Leaderships of partitions without another replica cannot move: no waiting for them.
        assert hook.returncode == 0 and "no leadership left to move" in hook.stdout, hook
        assert led_by_2() == 0
        st = get(c, 3, "/v1/brokers/2/maintenance")[1]
        assert st["maintenance"] and st["until_restart"] and not st["done"], st
        # The hook of a Pod whose broker already left the cluster (a scale-down) succeeds.
        gone = riffle_admin(c, 1, "maintenance", 9, "--until-restart", "--wait=5")
        assert gone.returncode == 0 and "not registered" in gone.stdout, gone
        assert st["leaders"] == st["sole_replica_leaders"] == sole, st
        load.log.wait_acks(load.log.count() + 300)
        c.restart(2)  # SIGTERM: a controlled shutdown, then a new process
        wait_until(lambda: not get(c, 1, "/v1/brokers/2/maintenance")[1]["maintenance"],
                   timeout=30, message="maintenance ended by the restart")
        c.wait_isr(topic, parts, c.ids)
        wait_until(lambda: post(c, 1, "/v1/leaders/preferred")[0] == 200 and led_by_2() > 0,
                   timeout=30, message="broker 2 leads again")
        # Plain maintenance is a decision of whoever asked for it: it outlives a restart.
        status, body = put(c, 3, "/v1/brokers/2/maintenance")
        assert status == 200 and body["maintenance"] and not body["until_restart"], body
        load.log.wait_acks(load.log.count() + 300)
        c.restart(2, kill=True)
        c.wait_isr(topic, parts, c.ids)
        post(c, 1, "/v1/leaders/preferred")
        st = get(c, 1, "/v1/brokers/2/maintenance")[1]
        assert st["maintenance"] and led_by_2() == 0, st
        assert delete(c, 1, "/v1/brokers/2/maintenance")[0] == 200
        load.log.wait_acks(load.log.count() + 300)
    except BaseException:
        load.abort()
        raise
    finish_load(load, check_errors=True)
    verify_acked(c, topic, parts, load)
    c.assert_replicas_consistent(topic, parts)


def test_preferred_leader_election_returns_leaderships_under_load(make_cluster):
    # Automatic rebalancing off: only the election moves leadership back.
    c = make_cluster(n=3, extra_args=(*FAST, "--auto-leader-rebalance-enable", "false"))
    parts = list(range(6))
    topic = create_topic(c, partitions=6, rf=3, config={"min.insync.replicas": 2})
    c.wait_isr(topic, parts, c.ids)
    preferred = {p: c.replicas_of(topic, p)[0] for p in parts}
    non_preferred = lambda: get(c, 1, "/v1/cluster")[1]["partitions"]["non_preferred_leaders"]  # noqa: E731
    wait_until(lambda: non_preferred() == 0, timeout=10, message="preferred leaders at start")
    load = ConfluentLoad(c, topic, partitions=parts).start()
    try:
        load.log.wait_acks(300)
        c.restart(2, kill=True)
        c.wait_isr(topic, parts, c.ids)
        lost = [p for p in parts if preferred[p] == 2]
        # (The count covers every topic, the offsets topic too.)
        drifted = non_preferred()
        assert lost and drifted >= len(lost)
        assert all(c.leader_of(topic, p, via=1) != 2 for p in parts)
        load.log.wait_acks(load.log.count() + 300)
        status, body = post(c, 3, "/v1/leaders/preferred")
        assert status == 200 and len(lost) <= body["elected"] <= drifted, body
        assert sorted(x["partition"] for x in body["partitions"] if x["topic"] == topic) == lost
        wait_until(lambda: all(c.leader_of(topic, p, via=1) == preferred[p] for p in parts),
                   timeout=10, message="every partition led by its preferred replica")
        # Offsets-topic partitions whose preferred replica was still catching up follow
        # at a later election.
        wait_until(lambda: post(c, 2, "/v1/leaders/preferred")[1]["elected"] == 0
                   and non_preferred() == 0, timeout=30, message="no leadership left to move")
        # Nothing left to move: the command line says so.
        cli = riffle_admin(c, 1, "elect-preferred")
        assert cli.returncode == 0 and json.loads(cli.stdout)["elected"] == 0, cli
        load.log.wait_acks(load.log.count() + 300)
    except BaseException:
        load.abort()
        raise
    finish_load(load, check_errors=True)
    verify_acked(c, topic, parts, load)
    c.assert_replicas_consistent(topic, parts)


class GroupReader:
    """A confluent-kafka consumer-group member reading ``topic`` from a thread (auto
    commit), counting records and any error it sees."""

    def __init__(self, cluster, topic):
        from confluent_kafka import Consumer
        self.consumer = Consumer({"bootstrap.servers": cluster.bootstrap,
                                  "group.id": f"reader-{topic}", "auto.offset.reset": "earliest",
                                  "broker.address.family": "v4", "session.timeout.ms": 10000})
        self.consumer.subscribe([topic])
        self.read, self.errors = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for m in self.consumer.consume(num_messages=100, timeout=0.2):
                if m.error():
                    self.errors.append(m.error())
                else:
                    self.read += 1

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()


def test_reassignments_from_the_admin_api_and_cli_under_load(make_cluster):
    c = make_cluster(n=4, voters=3, extra_args=FAST)
    # Balancing off: only the moves asked for happen.
    assert delete(c, 1, "/v1/balancer")[0] == 200
    parts = [0, 1]
    topic = create_topic(c, partitions=2, rf=2)

    # (The offsets topic may still be spreading onto broker 4 from before the switch.)
    def mine(via, name=topic):
        return [r for r in get(c, via, "/v1/reassignments")[1]["reassignments"]
                if r["topic"] == name]

    assert mine(2) == []
    load = ConfluentLoad(c, topic, partitions=parts).start()
    try:
        load.log.wait_acks(300)
        # Partition 1 to two other brokers, then to three (the replication factor grows).
        before = c.replicas_of(topic, 1)
        spare = [b for b in c.ids if b not in before]
        target = [before[0], spare[0]]
        cli = riffle_admin(c, 3, "reassign", topic, 1, "--replicas", ",".join(map(str, target)))
        body = json.loads(cli.stdout)
        assert cli.returncode == 0 and body["replicas"][:1] == target[:1], cli
        wait_until(lambda: c.replicas_of(topic, 1) == target
                   and sorted(c.isr_of(topic, 1)) == sorted(target),
                   timeout=30, message="partition 1 moved")
        status, body = put(c, 1, f"/v1/reassignments/{topic}/1?replicas={target[0]},{target[1]},{spare[1]}")
        assert status == 200, body
        wait_until(lambda: sorted(c.isr_of(topic, 1)) == sorted([*target, spare[1]]), timeout=30,
                   message="replication factor 3")
        # A second topic's new replica copies 2 MB at 10 KB/s: in flight until cancelled.
        bulk = create_topic(c, partitions=1, rf=2)
        produce_records(c, bulk, sample_records(2000, value_size=1000))
        for b in c.ids:
            with kw.Conn(c.broker(b).port) as conn:
                assert kw.incremental_alter_configs_v0(
                    conn, kw.RESOURCE_BROKER, str(b),
                    [("follower.replication.throttled.rate", kw.OP_SET, "10000")]) == (0, None)
        original = c.replicas_of(bulk, 0)
        extra = next(b for b in c.ids if b not in original)
        status, body = put(c, 2, f"/v1/reassignments/{bulk}/0?replicas="
                                 + ",".join(map(str, [*original, extra])))
        assert status == 200 and body["adding"] == [extra], body
        # Other brokers see it once they applied the controller's commit.
        listed = wait_until(lambda: mine(3, bulk), timeout=10, message="listed by broker 3")
        assert [(r["partition"], r["adding"]) for r in listed] == [(0, [extra])]

        def listed_by_cli():
            cli = riffle_admin(c, 1, "reassignments")
            assert cli.returncode == 0, cli
            return [(r["partition"], r["adding"]) for r in json.loads(cli.stdout)["reassignments"]
                    if r["topic"] == bulk] == [(0, [extra])]
        wait_until(listed_by_cli, timeout=10, message="listed by the CLI through broker 1")
        cli = riffle_admin(c, 4, "reassign", bulk, 0, "--cancel")
        assert cli.returncode == 0 and json.loads(cli.stdout)["replicas"] == original, cli
        wait_until(lambda: mine(1, bulk) == [], timeout=10, message="the cancel seen everywhere")
        # Refusals: bad input 400, an unknown partition 404, nothing to cancel 409.
        st, body = c.broker(1).http_request("PUT", f"/v1/reassignments/{bulk}/0?replicas=x")
        assert st == 400 and "broker ids" in conforms(st, body, "")[1]["error"], body
        st, body = c.broker(1).http_request("PUT", f"/v1/reassignments/{bulk}/7?replicas=1,2")
        assert st == 404, body
        st, body = c.broker(1).http_request("DELETE", f"/v1/reassignments/{bulk}/0")
        assert st == 409 and body["error"], body
        load.log.wait_acks(load.log.count() + 300)
    except BaseException:
        load.abort()
        raise
    finish_load(load, check_errors=True)
    verify_acked(c, topic, parts, load)
    # What moved is counted.
    moved = sum(float(ln.split()[-1]) for b in c.ids
                for ln in c.broker(b).http_get("/metrics")[1].splitlines()
                if ln.startswith("riffle_reassignment_bytes_out_total"))
    assert moved > 0


def test_balancer_evens_out_bytes_when_replica_counts_are_even(make_cluster):
    from confluent_kafka.admin import NewTopic
    from helpers import unique_topic
    c = make_cluster(n=3, extra_args=FAST)
    assert delete(c, 1, "/v1/balancer")[0] == 200
    topic = unique_topic("heavy")
    adm = ck_admin(c)  # must outlive its futures
    adm.create_topics([NewTopic(
        topic, num_partitions=6, replica_assignment=[[1], [1], [2], [2], [3], [3]])],
                      operation_timeout=OP_TIMEOUT)[topic].result(OP_TIMEOUT)
    for p in range(6):
        c.wait_leader(topic, p, timeout=OP_TIMEOUT)
    # Two replicas on every broker, but 12 MB on broker 1, 4 MB on broker 2, none on 3.
    mb = {0: 6, 1: 6, 2: 2, 3: 2}
    acked = {p: produce_records(c, topic, [os.urandom(1000) for _ in range(n * 1000)], partition=p)
             for p, n in mb.items()}

    def sizes_reported():
        st = get(c, 2, "/v1/balancer")[1]
        return st["bytes"]["1"] >= 12e6 and st["bytes"]["2"] >= 4e6 and st
    before = wait_until(sizes_reported, timeout=20, message="sizes reported to the controller")
    assert before["status"] == "waiting: switched off"
    assert len(set(before["replicas"].values())) == 1, before["replicas"]
    assert put(c, 3, "/v1/balancer")[0] == 200
    t0 = time.monotonic()
    after = wait_until(lambda: (lambda st: st["status"] == "balanced" and st)(
        get(c, 1, "/v1/balancer")[1]), timeout=60, interval=0.5, message="bytes balanced")
    took = time.monotonic() - t0
    placed = holders(c, topic, range(6))
    print(f"byte balancing: {before['bytes']} -> {after['bytes']} in {took:.1f}s; "
          f"replicas {placed}")
    # One 6 MB partition moved from broker 1 to broker 3: 6/4/6 MB, the most even split
    # these sizes allow; nothing else moved.
    on3 = {p for p, r in placed.items() if r == [3]}
    assert on3 in ({0, 4, 5}, {1, 4, 5}), placed
    assert [int(after["bytes"][b]) // 1_000_000 for b in ("1", "2", "3")] == [6, 4, 6], after
    moves = [ln for ln in c.broker(1).http_get("/metrics")[1].splitlines()
             + c.broker(2).http_get("/metrics")[1].splitlines()
             + c.broker(3).http_get("/metrics")[1].splitlines()
             if ln.startswith('riffle_balancer_moves_total{kind="bytes"}')]
    assert sum(float(ln.split()[-1]) for ln in moves) == 1, moves
    stored = read_partitions(c, topic, list(acked))
    for p, recs in acked.items():
        assert [(m.offset(), m.value()) for m in stored[p]] == recs, f"partition {p}"
    c.assert_replicas_consistent(topic, list(range(6)))


def test_balancer_spreads_replicas_onto_new_brokers_under_load(make_cluster):
    c = make_cluster(n=3, extra_args=FAST)
    topic = create_topic(c, partitions=60, rf=3, config={"min.insync.replicas": 2})
    parts = list(range(60))
    # 100 KB of data in every partition (6 MB, 18 MB with replicas) before the load starts.
    preload = {p: produce_records(c, topic, [(f"pre-{p:02d}-{i:03d}-" * 70).encode()[:1000]
                                             for i in range(100)], partition=p)
               for p in parts}
    # Moves are throttled (cluster-wide default follower rate: 5 MB/s per broker).
    with kw.Conn(c.broker(1).port) as conn:
        assert kw.incremental_alter_configs_v0(
            conn, kw.RESOURCE_BROKER, "",
            [("follower.replication.throttled.rate", kw.OP_SET, str(5 << 20))]) == (0, None)
    load = ConfluentLoad(c, topic, partitions=parts).start()
    reader = GroupReader(c, topic)
    try:
        load.log.wait_acks(2000)
        wait_until(lambda: reader.read > 500, timeout=60, message="the group to read")
        t0 = time.monotonic()
        c.add_broker()
        c.add_broker()

        def balanced():
            _, st = get(c, 1, "/v1/balancer")
            return st["status"] == "balanced" and st
        st = wait_until(balanced, timeout=180, interval=0.5, message="a balanced cluster")
        took = time.monotonic() - t0
        load.log.wait_acks(load.log.count() + 500)
        read_before = reader.read
        wait_until(lambda: reader.read > read_before + 200, timeout=30, message="the group reads on")
    except BaseException:
        load.abort()
        reader.stop()
        raise
    finish_load(load, check_errors=True)
    reader.stop()
    assert not reader.errors, reader.errors[:5]
    counts = {int(b): n for b, n in st["replicas"].items()}
    mean = sum(counts.values()) / len(counts)
    assert set(counts) == {1, 2, 3, 4, 5}
    tol = st["tolerance_percent"] / 100
    lower, upper = math.floor(mean * (1 - tol)), math.ceil(mean * (1 + tol))
    assert all(lower <= n <= upper for n in counts.values()), (counts, lower, upper)
    # Leaderships follow: the new brokers lead their share.
    leaders = wait_until(lambda: (lambda ls: min(ls.values()) > 0 and ls)(
        {b["id"]: b["leaders"] for b in c.cluster_info(via=1)["brokers"]}),
        timeout=30, message="leaders on every broker")
    moved = sum(float(line.split()[1]) for b in (4, 5)
                for line in c.broker(b).http_get("/metrics")[1].splitlines()
                if line.startswith("riffle_replication_bytes_in_total "))
    print(f"balancer: 2 brokers added, balanced in {took:.1f}s, {moved / 1e6:.2f} MB copied, "
          f"replicas per broker {counts}, leaders {leaders}; the group read {reader.read} records")
    stored = verify_acked(c, topic, parts, load, check_order=False)  # preload is not numbered
    for p, acked in preload.items():
        assert all(stored[(p, o)] == v for o, v in acked), f"partition {p}: preloaded records"
    c.assert_replicas_consistent(topic, parts)
    # Switched off, it stays off (cluster-wide) until switched on again.
    status, body = delete(c, 2, "/v1/balancer")
    assert status == 200 and not body["enabled"] and body["status"] == "waiting: switched off"
    wait_until(lambda: get(c, 5, "/v1/balancer")[1]["enabled"] is False, timeout=10,
               message="every broker to see the balancer off")
    assert put(c, 3, "/v1/balancer")[1]["enabled"] is True
