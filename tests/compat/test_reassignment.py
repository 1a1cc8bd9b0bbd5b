"""Partition reassignment with Kafka's own tools and kafka-python's admin client.

Real brokers on 127.0.0.1.  ``kafka-reassign-partitions`` moves a partition to other
brokers, grows and shrinks replication factors while an idempotent acks=all producer
keeps writing: no delivery fails, every acknowledged record is read back, all replicas
hold the same batches, and a replica moved away holds nothing afterwards.  A throttled
reassignment stays in progress, is listed and can be cancelled.  ``kafka-leader-election``
moves leadership to the preferred replica and ``kafka-log-dirs`` reports replica sizes.
"""

from __future__ import annotations

import json
import time

from kafka.admin import KafkaAdminClient

from helpers import kafka_tool, sample_records, wait_until
from test_cluster import (
    FAST, ConfluentLoad, create_topic, finish_load, produce_records, verify_acked,
)

REASSIGN = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"
ELECT = "org.apache.kafka.tools.LeaderElectionCommand"
LOG_DIRS = "org.apache.kafka.tools.LogDirsCommand"


def plan_file(tmp_path, topic, targets: dict[int, list[int]]):
    path = tmp_path / f"plan-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": p, "replicas": r, "log_dirs": ["any"] * len(r)}
        for p, r in targets.items()]}))
    return path


def reassign(cluster, *args, check=True):
    return kafka_tool(REASSIGN, "--bootstrap-server", cluster.live_bootstrap, *args, check=check)


def wait_reassigned(cluster, plan, timeout=60.0):
    """--verify until every partition of the plan is reported completed."""
    def done():
        out = reassign(cluster, "--verify", "--reassignment-json-file", plan).stdout
        return "still in progress" not in out and "is completed" in out and out
    return wait_until(done, timeout=timeout, interval=1.0, message="reassignment completion")


def log_dirs(cluster, brokers) -> dict[int, dict[tuple[str, int], int]]:
    """kafka-log-dirs --describe: broker -> {(topic, partition): size}."""
    out = kafka_tool(LOG_DIRS, "--bootstrap-server", cluster.live_bootstrap, "--describe",
                     "--broker-list", ",".join(map(str, brokers))).stdout
    report = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    sizes = {}
    for b in report["brokers"]:
        (d,) = b["logDirs"]
        assert d["error"] is None, d
        sizes[b["broker"]] = {(p["partition"].rsplit("-", 1)[0], int(p["partition"].rsplit("-", 1)[1])):
                              p["size"] for p in d["partitions"]}
    return sizes


def test_kafka_reassign_partitions_moves_grows_and_shrinks_under_load(make_cluster, tmp_path):
    c = make_cluster(n=4, voters=3, extra_args=FAST)
    topic = create_topic(c, partitions=3, rf=1)
    before = {p: c.replicas_of(topic, p) for p in range(3)}
    others = {p: [b for b in c.ids if b not in before[p]] for p in range(3)}
    load = ConfluentLoad(c, topic, partitions=(0, 1, 2)).start()
    try:
        load.log.wait_acks(600)
        t0 = time.monotonic()
        # Step 1: p0 grows from 1 to 3 replicas, p1 moves to another broker, p2 to two
        # others (its only replica, the leader, goes).
        step1 = {0: before[0] + others[0][:2], 1: others[1][:1], 2: others[2][:2]}
        plan = plan_file(tmp_path, topic, step1)
        out = reassign(c, "--execute", "--reassignment-json-file", plan).stdout
        assert "Successfully started partition reassignment" in out, out
        report = wait_reassigned(c, plan)
        for p in step1:
            assert f"Reassignment of partition {topic}-{p} is completed." in report, report
        load.log.wait_acks(load.log.count() + 300)
        # Step 2: p0 shrinks from 3 to 2 replicas, dropping its leader.
        step2 = {0: step1[0][1:]}
        plan = plan_file(tmp_path, topic, step2)
        reassign(c, "--execute", "--reassignment-json-file", plan)
        wait_reassigned(c, plan)
        took = time.monotonic() - t0
        load.log.wait_acks(load.log.count() + 600)
    except BaseException:
        load.abort()
        raise
    finish_load(load, check_errors=True)
    print(f"reassigned 3 partitions (RF 1->3->2, a move, a leader move) under load in {took:.1f}s")
    targets = {**step1, **step2}
    verify_acked(c, topic, [0, 1, 2], load)
    for p, want in targets.items():
        assert c.replicas_of(topic, p) == want
        c.wait_isr(topic, [p], want)
    c.assert_replicas_consistent(topic, [0, 1, 2])
    # Replicas moved away hold nothing; kafka-log-dirs sees the new ones with data.
    for p, want in targets.items():
        for b in set(before[p] + step1[p]) - set(want):
            wait_until(lambda: c.partition_state(b, topic, p)["log_end"] == 0, timeout=10,
                       message=f"broker {b} to drop {topic}-{p}")
            assert c.partition_state(b, topic, p)["role"] == "none"
    sizes = log_dirs(c, c.ids)
    for p, want in targets.items():
        for b in c.ids:
            assert ((topic, p) in sizes[b]) == (b in want), (b, p, sizes[b])
            if b in want:
                assert sizes[b][(topic, p)] > 0
    out = reassign(c, "--list").stdout
    assert "No partition reassignments found." in out, out


def test_throttled_reassignment_is_listed_then_cancelled(make_cluster, tmp_path):
    c = make_cluster(n=3, extra_args=FAST)
    topic = create_topic(c, partitions=1, rf=1)
    (leader,) = c.replicas_of(topic, 0)
    produce_records(c, topic, sample_records(3000, value_size=1000))
    leader_size = c.partition_state(leader, topic, 0)["log_end"]
    new = next(b for b in c.ids if b != leader)
    plan = plan_file(tmp_path, topic, {0: [leader, new]})
    # 50 KB/s: the 3 MB partition would take a minute to copy.
    out = reassign(c, "--execute", "--throttle", 50000, "--reassignment-json-file", plan).stdout
    assert "Successfully started partition reassignment" in out, out
    assert "The inter-broker throttle limit was set to 50000 B/s" in out, out

    out = reassign(c, "--list").stdout
    assert f"{topic}-0: replicas: {leader},{new}. adding: {new}." in out, out
    kadm = KafkaAdminClient(bootstrap_servers=c.live_bootstrap)
    try:
        listed = kadm.list_partition_reassignments()
    finally:
        kadm.close()
    print("kafka-python list_partition_reassignments:", listed)
    assert str(listed).count(topic) == 1 and f"{new}" in str(listed)

    time.sleep(4)
    copied = c.partition_state(new, topic, 0)["log_end"]
    assert copied < leader_size, f"throttled replica copied {copied} of {leader_size} records in 4 s"
    assert c.isr_of(topic, 0) == [leader]

    out = reassign(c, "--cancel", "--reassignment-json-file", plan).stdout
    assert "Successfully cancelled partition reassignment" in out, out
    assert c.replicas_of(topic, 0) == [leader]
    wait_until(lambda: c.partition_state(new, topic, 0)["log_end"] == 0, timeout=10,
               message="the cancelled replica to be dropped")
    assert "No partition reassignments found." in reassign(c, "--list").stdout

    # Without a throttle the same move completes, and --verify clears the throttles.
    reassign(c, "--execute", "--reassignment-json-file", plan)
    report = wait_reassigned(c, plan, timeout=60)
    assert "Clearing broker-level throttles" in report, report
    c.wait_isr(topic, [0], [leader, new])
    c.assert_replicas_consistent(topic, [0])


def test_kafka_leader_election_moves_leadership_to_the_new_preferred_replica(make_cluster, tmp_path):
    c = make_cluster(n=3, extra_args=FAST)
    topic = create_topic(c, partitions=1, rf=3)
    c.wait_isr(topic, [0], c.ids)
    replicas = c.replicas_of(topic, 0)
    leader = c.leader_of(topic, 0)
    # Same replicas, another order: no data moves, the preferred leader changes.
    order = replicas[1:] + replicas[:1]
    plan = plan_file(tmp_path, topic, {0: order})
    reassign(c, "--execute", "--reassignment-json-file", plan)
    wait_reassigned(c, plan)
    assert c.replicas_of(topic, 0) == order and c.leader_of(topic, 0) == leader
    out = kafka_tool(ELECT, "--bootstrap-server", c.live_bootstrap, "--election-type", "PREFERRED",
                     "--topic", topic, "--partition", 0).stdout
    assert f"Successfully completed leader election (PREFERRED) for partitions {topic}-0" in out, out
    wait_until(lambda: c.leader_of(topic, 0) == order[0], timeout=10, message="preferred leader")
    # Nothing left to elect: as against Kafka, the tool reports no election and no failure.
    proc = kafka_tool(ELECT, "--bootstrap-server", c.live_bootstrap, "--election-type", "PREFERRED",
                      "--all-topic-partitions")
    assert "Successfully completed" not in proc.stdout and "failed" not in proc.stdout + proc.stderr
    assert c.leader_of(topic, 0) == order[0]
