"""Apache Kafka's Java client and Kafka Streams (4.1) against a single broker and a
3-broker cluster: every compression codec with every acks setting, the idempotent
producer, group consumption with the range and cooperative-sticky assignors,
assign/seek/offsetsForTimes, synchronous and asynchronous commits, static membership, the
Admin client's calls, the exception types a user meets (unknown topic, existing topic,
bad replication factor, invalid name, record too large, not enough replicas, offset out of
range, no committed offset), transactions (consume-transform-produce with
sendOffsetsToTransaction, zombie fencing), and a Kafka Streams word count (at least once and
exactly_once_v2), the exactly-once one also across a kill -9 of a broker.

The checks are Java (tests/java/src/dev/riffle/compat/), one JVM per check; each makes
its own topics and groups.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from helpers import java_command, java_main

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


@pytest.mark.timeout(420)
def test_kafka_streams_exactly_once_across_a_broker_kill(make_cluster):
    """3 brokers: the word count (exactly_once_v2) runs over 3000 generated lines while
    the coordinator of its consumer group (which also leads partitions of its topics) is
    killed with SIGKILL halfway and restarted 8 s later; every word's count updates in the
    committed output are then 1, 2, ... n, none lost or repeated."""
    from test_cluster import FAST, group_coordinator
    c = make_cluster(n=3, extra_args=FAST)
    proc = subprocess.Popen(java_command("dev.riffle.compat.WordCount", c.bootstrap, 3,
                                         "exactly_once_v2", 3000),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
    out = []
    killed = None
    for line in proc.stdout:
        out.append(line)
        if line.strip() == "HALFWAY" and killed is None:
            app = next(ln.split()[-1] for ln in out if ln.startswith("  application "))
            killed = group_coordinator(c, app)
            print(f"halfway: kill -9 broker {killed} (coordinator of {app})")
            c.kill9(killed)
            time.sleep(8)
            c.restart(killed)
    proc.wait(timeout=60)
    print("".join(out))
    assert killed is not None, "never reached halfway"
    assert proc.returncode == 0 and "PASS wordcount" in "".join(out), \
        f"exit {proc.returncode}\nstdout:\n{''.join(out)}\nstderr:\n{''.join(stderr)[-6000:]}"
    assert "every count update exactly once" in "".join(out)
