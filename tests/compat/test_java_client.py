"""Apache Kafka's Java client and Kafka Streams (4.1) against a single broker and a
3-broker cluster: every compression codec with every acks setting, the idempotent
producer, group consumption with the range and cooperative-sticky assignors,
assign/seek/offsetsForTimes, synchronous and asynchronous commits, static membership, the
Admin client's calls, the exception types a user meets (unknown topic, existing topic,
bad replication factor, invalid name, record too large, not enough replicas, offset out of
range, no committed offset), transactions (consume-transform-produce with
sendOffsetsToTransaction, zombie fencing), and a Kafka Streams word count (at least once and
exactly_once_v2).

The checks are Java (tests/java/src/dev/riffle/compat/), one JVM per check; each makes
its own topics and groups.
"""

from __future__ import annotations

import pytest

from helpers import java_main

CHECKS = ["compression-and-acks", "idempotent-producer", "subscribe-range",
          "subscribe-cooperative-sticky", "assign-seek-offsets-for-times",
          "commit-sync-and-async", "static-membership", "admin", "errors", "transactions"]


@pytest.mark.parametrize("check", CHECKS)
def test_java_client(target, check):
    rf = len(getattr(target, "ids", [None]))
    proc = java_main("dev.riffle.compat.ClientChecks", target.bootstrap, rf, check)
    print(proc.stdout)
    assert proc.returncode == 0 and f"PASS {check}" in proc.stdout, \
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once_v2"])
def test_kafka_streams_word_count(target, guarantee):
    """A word count whose topology needs an internal repartition topic and a compacted
    changelog topic, at least once and exactly once (transactions)."""
    rf = len(getattr(target, "ids", [None]))
    proc = java_main("dev.riffle.compat.WordCount", target.bootstrap, rf, guarantee)
    print(proc.stdout)
    assert proc.returncode == 0 and "PASS wordcount" in proc.stdout, \
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
