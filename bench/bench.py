#!/usr/bin/env python3
"""Riffle throughput / latency benchmark.

Starts its own release broker on 127.0.0.1 with a temporary data directory and
drives it with confluent-kafka (librdkafka).  Prints:

* produce throughput for {1 KiB, 100 B} x {acks=1, acks=all} x {1, 8} partitions
* consume throughput reading each of those topics back
* produce latency p50/p99/p99.9 at a fixed rate
* broker RSS (VmRSS / VmHWM) and bytes on disk per record

With --cluster it instead runs a single-node baseline and then a 3-broker
cluster (RF3, min.insync.replicas=2), one after the other, and compares them:
produce throughput, produce latency at a fixed rate, how fast a restarted
follower catches up, failover time when the partition leader is killed with
SIGKILL under load, and whether any acknowledged record was lost.

Run: .venv/bin/python bench/bench.py [--quick] [--cluster]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "compat"))

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from helpers import Broker, Cluster, disk_usage_bytes, wait_until  # noqa: E402

# Per-record overhead inside a v2 record batch (attributes, deltas, lengths,
# header count) for a record with no key and no headers, and the 61-byte batch
# header amortised over the batch.
RECORD_OVERHEAD = 8
BATCH_HEADER = 61

# --cluster: brokers, topic settings and failure detection.  The flags are the
# broker's defaults, spelled out because the failover times depend on them
# (a dead leader is fenced, and its partitions moved, after the session timeout).
CLUSTER_SIZE = 3
CLUSTER_RF = 3
CLUSTER_TOPIC_CONFIG = {"min.insync.replicas": "2"}
CLUSTER_FLAGS = ("--broker-heartbeat-interval-ms", 250, "--broker-session-timeout-ms", 1500,
                 "--replica-lag-time-max-ms", 10000)
CLUSTER_PARTITIONS = (1, 6)
RATIO_TARGET = 0.5     # RF3 / single-node produce throughput, acks=all
P99_TARGET_MS = 10.0   # RF3 produce latency p99 at --latency-rate-mb
# A value's first bytes carry its sequence number (paced_produce).
SEQ_DIGITS = 12


def create_topic(admin, name, partitions, replication_factor=1, config=None):
    """Create a topic and wait until Metadata shows a leader for every partition.
    ``admin`` must stay alive until then (it owns the futures)."""
    fs = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                       replication_factor=replication_factor,
                                       config=dict(config or {}))],
                             operation_timeout=30, request_timeout=30)
    fs[name].result(timeout=30)

    def ready():
        t = admin.list_topics(timeout=5).topics.get(name)
        return (t is not None and t.error is None and len(t.partitions) == partitions
                and all(p.leader >= 0 for p in t.partitions.values()))

    wait_until(ready, timeout=30, message=f"topic {name} with a leader for each partition")


def produce_run(bootstrap, topic, partitions, size, count, acks, max_seconds,
                codec="none", payload=None):
    payload = payload or os.urandom(size)
    prod = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                     "batch.size": 1024 * 1024, "compression.type": codec,
                     "queue.buffering.max.kbytes": 256 * 1024,
                     "queue.buffering.max.messages": 1_000_000,
                     "broker.address.family": "v4", "message.timeout.ms": 60000})
    errors = [0]

    def dr(err, _msg):
        if err is not None:
            errors[0] += 1

    start = time.perf_counter()
    deadline = start + max_seconds
    sent = 0
    while sent < count and time.perf_counter() < deadline:
        try:
            prod.produce(topic, value=payload, partition=sent % partitions, on_delivery=dr)
            sent += 1
        except BufferError:
            prod.poll(0.005)
            continue
        if sent % 1000 == 0:
            prod.poll(0)
    left = prod.flush(120)
    elapsed = time.perf_counter() - start
    delivered = sent - left - errors[0]
    return {"records": delivered, "bytes": delivered * size, "seconds": elapsed,
            "errors": errors[0] + left}


def consume_run(bootstrap, topic, partitions, expected, max_seconds, on_message=None,
                isolation="read_committed"):
    """Read ``expected`` records from the start of the partitions (manual
    assignment); ``on_message(msg)`` sees each one."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "riffle-bench-unused",
                  "isolation.level": isolation,
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "fetch.max.bytes": 64 * 1024 * 1024,
                  "max.partition.fetch.bytes": 8 * 1024 * 1024,
                  # librdkafka pauses fetching for fetch.queue.backoff.ms once its local
                  # queue holds queued.min.messages: with small records that, not the
                  # broker, would bound the measured rate.
                  "queued.min.messages": 1_000_000,
                  "fetch.queue.backoff.ms": 10,
                  "broker.address.family": "v4"})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got = 0
    nbytes = 0
    # The clock starts at the first record so that connection setup and the
    # first metadata round trip are not counted as read time.
    first = None
    deadline = time.perf_counter() + max_seconds
    while got < expected and time.perf_counter() < deadline:
        for m in c.consume(num_messages=10000, timeout=0.5):
            if not m.error():
                if first is None:
                    first = time.perf_counter()
                got += 1
                nbytes += len(m.value() or b"")
                if on_message is not None:
                    on_message(m)
    elapsed = time.perf_counter() - first if first is not None else float("inf")
    c.close()
    return {"records": got, "bytes": nbytes, "seconds": elapsed}


def paced_produce(prod, topic, size, rate_mb, stop, on_delivery, keys=0):
    """Produce ``size``-byte records at ``rate_mb`` MB/s until ``stop()`` is true.

    Record n starts with n as SEQ_DIGITS ASCII digits (the rest is random) and,
    with ``keys``, has the key ``k<n mod keys>``; ``on_delivery(err, msg,
    t_produced)`` gets the perf_counter() time the record was handed to the
    producer.  Returns the number of records produced.
    """
    filler = os.urandom(size)
    interval = size / (rate_mb * 1024 * 1024)
    start = time.perf_counter()
    n = 0
    while not stop():
        due = int((time.perf_counter() - start) / interval)
        while n < due:
            t0 = time.perf_counter()
            value = b"%0*d" % (SEQ_DIGITS, n) + filler[SEQ_DIGITS:]
            try:
                prod.produce(topic, value=value, key=b"k%d" % (n % keys) if keys else None,
                             on_delivery=lambda e, m, t0=t0: on_delivery(e, m, t0))
                n += 1
            except BufferError:
                prod.poll(0.001)
                break
        prod.poll(0)
        time.sleep(min(0.001, interval))
    return n


def latency_run(bootstrap, topic, size, rate_mb, seconds, keys=0):
    prod = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1,
                     "broker.address.family": "v4", "message.timeout.ms": 60000})
    lat = []

    def on_delivery(err, _msg, t0):
        if err is None:
            lat.append(time.perf_counter() - t0)

    # Connections and metadata first: the first record would otherwise time them too.
    prod.produce(topic, value=b"warm-up", key=b"warm-up")
    prod.flush(30)
    start = time.perf_counter()
    n = paced_produce(prod, topic, size, rate_mb,
                      lambda: time.perf_counter() - start >= seconds, on_delivery, keys)
    prod.flush(60)
    lat.sort()

    def pct(p):
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] * 1000

    achieved = n * size / (1024 * 1024) / max(seconds, 1e-9)
    return {"p50": pct(50), "p99": pct(99), "p999": pct(99.9),
            "max": lat[-1] * 1000 if lat else float("nan"), "count": len(lat),
            "rate_mb": achieved}


def fmt_row(cols, widths):
    return "  ".join(str(c).rjust(w) for c, w in zip(cols, widths))


# -- --cluster ------------------------------------------------------------------

def produce_matrix(bootstrap, admin, args, name, rf=1, config=None, after_create=None):
    """produce_run of 1 KiB records for acks in (all, 1) x CLUSTER_PARTITIONS on
    fresh topics; ``after_create(topic, partitions)`` runs before each run.
    Returns {(acks, partitions): produce_run result}."""
    out = {}
    for acks in ("all", "1"):
        for parts in CLUSTER_PARTITIONS:
            topic = f"bench-{name}-acks{acks}-p{parts}"
            create_topic(admin, topic, parts, rf, config)
            if after_create is not None:
                after_create(topic, parts)
            out[(acks, parts)] = pr = produce_run(bootstrap, topic, parts, 1024, args.records_1k,
                                                  acks, args.max_seconds)
            print(f"  done {topic}: {pr['records']} records, {pr['errors']} errors", flush=True)
    return out


class PacedLoad:
    """paced_produce from a background thread with an idempotent acks=all
    producer; keeps the time of every successful delivery report (in report
    order, so ascending) and the offset acknowledged for each sequence number."""

    def __init__(self, bootstrap, topic, size, rate_mb):
        self.topic, self.size, self.rate_mb = topic, size, rate_mb
        self.prod = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                              "enable.idempotence": True, "linger.ms": 5,
                              "message.timeout.ms": 120000, "broker.address.family": "v4",
                              "error_cb": self._on_error})
        # Written only by the producer thread (delivery reports are served by
        # its poll()); list.append is atomic, so the main thread may read them.
        self.ack_times = []      # perf_counter() of each successful report
        self.ack_produced = []   # ... and when that record was produced
        self.acked = {}          # sequence number -> acknowledged offset
        self.errors = []         # (sequence number, KafkaError) of failed reports
        self.fatal = []
        self.sent = 0
        self.unresolved = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="paced-load")

    def _on_error(self, err):
        if err.fatal():
            self.fatal.append(err)

    def _on_delivery(self, err, msg, t_produced):
        now = time.perf_counter()
        seq = int(msg.value()[:SEQ_DIGITS])
        if err is None:
            self.acked[seq] = msg.offset()
            self.ack_produced.append(t_produced)
            self.ack_times.append(now)
        else:
            self.errors.append((seq, err))

    def _run(self):
        self.sent = paced_produce(self.prod, self.topic, self.size, self.rate_mb,
                                  self._stop.is_set, self._on_delivery)
        self.unresolved = self.prod.flush(120)
        # error_cb makes the producer and self a reference cycle: drop the
        # producer now, not at some later garbage collection while the
        # brokers shut down (which it would log as connection failures).
        self.prod = None

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(150)
        assert not self._thread.is_alive(), "producer thread did not finish"

    def first_ack_produced_after(self, t):
        """Time of the first successful report for a record produced after ``t``."""
        n = len(self.ack_times)
        for i in range(bisect.bisect_right(self.ack_times, t, hi=n), n):
            if self.ack_produced[i] > t:
                return self.ack_times[i]
        return None

    def longest_gap(self, t0, t1):
        """(gap, start) of the longest interval between consecutive successful
        reports that overlaps [t0, t1]."""
        times = self.ack_times[max(0, bisect.bisect_left(self.ack_times, t0) - 1):
                               bisect.bisect_right(self.ack_times, t1) + 1]
        return max(((b - a, a) for a, b in zip(times, times[1:])), default=(float("nan"), t0))


def failover_rounds(cluster, admin, args):
    """kill -9 the leader of a 1-partition RF3 topic under a PacedLoad,
    ``args.failover_rounds`` times, restarting it and waiting for a full ISR
    after each; then read the partition back and check every acknowledged
    record.  Returns (rounds, verification)."""
    topic = "bench-failover"
    create_topic(admin, topic, 1, CLUSTER_RF, CLUSTER_TOPIC_CONFIG)
    cluster.wait_isr(topic, [0], cluster.ids, timeout=60)
    load = PacedLoad(cluster.bootstrap, topic, 1024, args.failover_rate_mb).start()
    rounds = []
    try:
        for k in range(args.failover_rounds):
            leader = cluster.wait_leader(topic, 0)
            controller = cluster.controller()
            t_start = time.perf_counter()
            time.sleep(args.failover_settle)  # steady state before the kill
            wait_until(lambda: load.first_ack_produced_after(t_start), timeout=60,
                       message="acknowledgements before the kill")
            t_kill = time.perf_counter()
            cluster.kill9(leader)
            t_ack = wait_until(lambda: load.first_ack_produced_after(t_kill), timeout=120,
                               interval=0.01,
                               message=f"an acknowledgement after killing leader {leader}")
            new = cluster.wait_leader(topic, 0, exclude={leader}, timeout=60)
            cluster.restart(leader)
            cluster.wait_isr(topic, [0], cluster.ids, timeout=120)
            time.sleep(args.failover_settle)  # the rejoined replica's effect, if any
            gap, gap_at = load.longest_gap(t_start, time.perf_counter())
            rounds.append({"killed": leader, "was_controller": leader == controller, "new": new, "recovery": t_ack - t_kill,
                           "gap": gap, "gap_at": gap_at - t_kill})
            print(f"  failover round {k + 1}: killed leader {leader}, new leader {new}, first ack "
                  f"after {t_ack - t_kill:.3f} s, longest gap {gap:.3f} s", flush=True)
    finally:
        load.stop()
    return rounds, verify_acked(cluster, topic, load, args)


def catch_up_run(cluster, admin, args):
    """A follower (not the controller) is killed, ``args.catch_up_mb`` MB of 1 KiB
    records are produced with acks=1, and it is restarted: how long, from its restart
    until the leader reports no lag, it takes to copy them."""
    topic = "bench-catch-up"
    create_topic(admin, topic, 1, CLUSTER_RF, CLUSTER_TOPIC_CONFIG)
    cluster.wait_isr(topic, [0], cluster.ids, timeout=60)
    leader = cluster.wait_leader(topic, 0)
    controller = cluster.controller()
    follower = next(i for i in cluster.ids if i not in (leader, controller))
    cluster.kill9(follower)
    count = int(args.catch_up_mb * 1024)
    pr = produce_run(cluster.live_bootstrap, topic, 1, 1024, count, "1", args.max_seconds * 4)
    t0 = time.perf_counter()
    cluster.restart(follower)
    wait_until(lambda: metric_sum(cluster.broker(leader), "riffle_replica_lag_records",
                                  f'topic="{topic}"') == 0,
               timeout=300, interval=0.05, message=f"broker {follower} caught up")
    seconds = time.perf_counter() - t0
    return {"follower": follower, "mb": pr["bytes"] / 1024 / 1024, "seconds": seconds}


def verify_acked(cluster, topic, load, args):
    """Read partition 0 of ``topic`` up to its high watermark: is every
    acknowledged sequence number stored exactly once, at its offset?"""
    leader = cluster.wait_leader(topic, 0)
    hw = cluster.partition_state(leader, topic, 0)["high_watermark"]
    stored = collections.defaultdict(list)  # sequence number -> offsets

    def on_message(m):
        stored[int(m.value()[:SEQ_DIGITS])].append(m.offset())

    cr = consume_run(cluster.bootstrap, topic, 1, hw, args.max_seconds * 4, on_message)
    missing = [s for s in load.acked if s not in stored]
    duplicated = [s for s, offs in stored.items() if len(offs) > 1]
    misplaced = [s for s, off in load.acked.items() if s in stored and off not in stored[s]]
    try:
        cluster.assert_replicas_consistent(topic, [0], timeout=60)
        replicas = "identical"
    except AssertionError as exc:
        replicas = f"DIFFER: {str(exc).splitlines()[0]}"
    return {"sent": load.sent, "acked": len(load.acked), "failed": len(load.errors),
            "failed_examples": load.errors[:3], "unresolved": load.unresolved,
            "fatal": load.fatal, "high_watermark": hw, "read": cr["records"],
            "missing": missing, "duplicated": duplicated, "misplaced": misplaced,
            "replicas": replicas,
            "ok": not (missing or duplicated or misplaced or cr["records"] < hw)}


def run_single(args, workdir, extra):
    """The single-node baseline: produce_matrix and latency_run on one broker."""
    broker = Broker(workdir / "single", extra_args=extra)
    broker.start()
    print(f"single node: broker pid {broker.pid} on {broker.bootstrap}, log {broker.log_path}")
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
        tput = produce_matrix(broker.bootstrap, admin, args, "single")
        create_topic(admin, "bench-latency", 1)
        lat = latency_run(broker.bootstrap, "bench-latency", 1024, args.latency_rate_mb,
                          args.latency_seconds)
        admin = None  # destroy the client before its broker goes away (no reconnect noise)
    finally:
        rc = broker.stop(check=False)
    if rc != 0:
        print(f"  note: single broker exited with code {rc} after SIGTERM (log {broker.log_path})")
    return tput, lat


def run_cluster(args, workdir, extra):
    """The same on a CLUSTER_SIZE-broker cluster with RF3 topics, then the failover rounds."""
    cluster = Cluster(workdir / "cluster", n=CLUSTER_SIZE, extra_args=[*CLUSTER_FLAGS, *extra])
    try:
        cluster.start()
        print(f"cluster: brokers {cluster.bootstrap}, logs under {cluster.workdir}/broker<id>")
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap,
                             "broker.address.family": "v4"})

        def full_isr(topic, parts):
            cluster.wait_isr(topic, range(parts), cluster.ids, timeout=60)

        tput = produce_matrix(cluster.bootstrap, admin, args, "rf3", CLUSTER_RF,
                              CLUSTER_TOPIC_CONFIG, full_isr)
        # The acks=1 runs leave followers hundreds of MB behind; measuring latency while
        # they catch up would measure that backlog, not the steady state.
        t0 = time.perf_counter()
        wait_until(lambda: sum(metric_sum(b, "riffle_replica_lag_records")
                               for b in cluster.brokers.values()) == 0,
                   timeout=300, message="followers caught up with the throughput runs")
        catch_up = time.perf_counter() - t0
        create_topic(admin, "bench-latency", 1, CLUSTER_RF, CLUSTER_TOPIC_CONFIG)
        full_isr("bench-latency", 1)
        lat = latency_run(cluster.bootstrap, "bench-latency", 1024, args.latency_rate_mb,
                          args.latency_seconds)
        lat["catch_up"] = catch_up
        lat["restart"] = catch_up_run(cluster, admin, args)
        rounds, verdict = failover_rounds(cluster, admin, args)
        admin = None  # destroy the client before its brokers go away (no reconnect noise)
    finally:
        codes = cluster.stop(check=False)
        cluster.cleanup()
    bad = {i: rc for i, rc in codes.items() if rc != 0}
    if bad:
        print(f"  note: brokers exited with codes {bad} after SIGTERM (None: killed after "
              f"the stop timeout); logs under {cluster.workdir}")
    return tput, lat, rounds, verdict


def print_cluster_report(args, single, cluster):
    (s_tput, s_lat), (c_tput, c_lat, rounds, v) = single, cluster
    mib = 1024 * 1024
    print()
    print(f"== produce throughput, 1 KiB records: single node vs {CLUSTER_SIZE} brokers "
          f"RF{CLUSTER_RF} min.insync.replicas={CLUSTER_TOPIC_CONFIG['min.insync.replicas']} ==")
    w = (4, 5, 11, 12, 9, 10, 8, 10, 6)
    print(fmt_row(["acks", "parts", "single MB/s", "single rec/s", "RF3 MB/s", "RF3 rec/s",
                   "RF3/single", "target", "errors"], w))
    for key in s_tput:
        s, c = s_tput[key], c_tput[key]
        s_mb, c_mb = s["bytes"] / mib / s["seconds"], c["bytes"] / mib / c["seconds"]
        ratio = c_mb / s_mb if s_mb else float("nan")
        target = (f">={RATIO_TARGET} " + ("ok" if ratio >= RATIO_TARGET else "MISS")
                  if key[0] == "all" else "")
        print(fmt_row([key[0], key[1], f"{s_mb:.1f}", f"{s['records'] / s['seconds']:.0f}",
                       f"{c_mb:.1f}", f"{c['records'] / c['seconds']:.0f}", f"{ratio:.2f}",
                       target, f"{s['errors']}/{c['errors']}"], w))
    print()
    print(f"== produce latency, acks=all, 1 KiB records at {args.latency_rate_mb:g} MB/s for "
          f"{args.latency_seconds:g} s (delivery report - produce call) ==")
    w = (7, 8, 8, 7, 7, 8, 8, 12)
    print(fmt_row(["", "MB/s", "records", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "p99 target"], w))
    for name, lat, target in (("single", s_lat, ""), ("RF3", c_lat, True)):
        if target:
            target = f"<={P99_TARGET_MS:g} " + ("ok" if lat["p99"] <= P99_TARGET_MS else "MISS")
        print(fmt_row([name, f"{lat['rate_mb']:.1f}", lat["count"], f"{lat['p50']:.2f}",
                       f"{lat['p99']:.2f}", f"{lat['p999']:.2f}", f"{lat['max']:.2f}", target], w))
    print(f"(RF3: measured once the followers had caught up with the throughput runs, "
          f"{c_lat['catch_up']:.1f} s after they ended)")
    r = c_lat["restart"]
    print()
    print(f"== follower catch-up: broker {r['follower']} killed, {r['mb']:.0f} MB produced "
          f"(1 KiB, acks=1), broker restarted ==")
    print(f"in sync {r['seconds']:.2f} s after the restart began: "
          f"{r['mb'] / r['seconds']:.0f} MB/s including the broker's start")
    print()
    print(f"== failover: kill -9 of the partition leader under {args.failover_rate_mb:g} MB/s "
          f"idempotent acks=all, 1 KiB records, 1 partition RF{CLUSTER_RF} "
          f"({' '.join(map(str, CLUSTER_FLAGS))}) ==")
    w = (5, 8, 10, 22, 17, 16)
    print(fmt_row(["round", "killed", "new leader", "first ack after kill s", "longest ack gap s",
                   "gap starts at s"], w))
    for k, r in enumerate(rounds, 1):
        killed = f"{r['killed']}{' (ctrl)' if r['was_controller'] else ''}"
        print(fmt_row([k, killed, r["new"], f"{r['recovery']:.3f}", f"{r['gap']:.3f}",
                       f"{r['gap_at']:+.3f}"], w))
    if rounds:
        print(fmt_row(["max", "", "", f"{max(r['recovery'] for r in rounds):.3f}",
                       f"{max(r['gap'] for r in rounds):.3f}", ""], w))
    print("(gap start relative to the kill; the round spans the steady state before the kill "
          "to the steady state after the restarted broker rejoined the ISR; (ctrl): the killed "
          "leader was also the controller)")
    print()
    print(f"== acknowledged records after {len(rounds)} failovers ==")
    print(f"sent {v['sent']}, acknowledged {v['acked']}, failed reports {v['failed']}"
          + (f" (e.g. {v['failed_examples']})" if v["failed"] else "")
          + f", never reported {v['unresolved']}, fatal producer errors {len(v['fatal'])}")
    print(f"read {v['read']} records up to the high watermark {v['high_watermark']}; replicas "
          f"{v['replicas']}")
    print(f"missing {len(v['missing'])}, stored more than once {len(v['duplicated'])}, "
          f"at another offset than acknowledged {len(v['misplaced'])}"
          + "".join(f"; {k} e.g. {v[k][:5]}" for k in ("missing", "duplicated", "misplaced")
                    if v[k]))
    print("verdict: " + ("PASS, every acknowledged record is stored exactly once" if v["ok"]
                         else "FAIL, acknowledged records lost or duplicated"))


def cluster_main(args):
    workdir = Path(tempfile.mkdtemp(prefix="riffle-bench-cluster-"))
    extra = ["--fsync-policy", args.fsync_policy] if args.fsync_policy else []
    print(f"work dir {workdir}")
    try:
        print("-- single-node baseline", flush=True)
        single = run_single(args, workdir, extra)
        print(f"-- {CLUSTER_SIZE}-broker cluster", flush=True)
        cluster = run_cluster(args, workdir, extra)
    except BaseException:
        print(f"failed; broker logs kept under {workdir}", file=sys.stderr)
        raise
    print_cluster_report(args, single, cluster)
    if args.keep or not cluster[3]["ok"]:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def start_broker(args):
    """A single broker (``--fsync-policy`` honoured) in a new temporary work dir."""
    workdir = Path(tempfile.mkdtemp(prefix="riffle-bench-"))
    extra = ["--fsync-policy", args.fsync_policy] if args.fsync_policy else []
    broker = Broker(workdir, extra_args=extra)
    broker.start()
    print(f"broker pid {broker.pid} on {broker.bootstrap}, data dir {broker.data_dir}")
    return workdir, broker


def cpu_seconds(pid):
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_write_bytes(pid):
    """Bytes a process has sent to storage so far (``write_bytes`` of /proc/PID/io):
    the WAL, memtable flushes and compactions, O_DIRECT writes included."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


RECOMPRESSION_CASES = (("gzip", "producer"), ("gzip", "lz4"), ("gzip", "zstd"),
                       ("none", "lz4"), ("lz4", "gzip"))


def recompression_main(args):
    """Cost of topic-level compression.type: the same gzip/none/lz4 producer load into
    topics that keep the producer's codec and into topics that recompress."""
    workdir, broker = start_broker(args)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    # Compressible 1 KiB values (log-line like), so codecs have something to do.
    words = b"user=%d action=click page=/products/%d status=200 latency_ms=%d "
    payload = b"".join(words % (i, i * 7, i % 97) for i in range(40))[:1024]
    rows = []
    try:
        for producer_codec, topic_codec in RECOMPRESSION_CASES:
            topic = f"bench-recomp-{producer_codec}-{topic_codec}"
            create_topic(admin, topic, 1, config={"compression.type": topic_codec})
            cpu0 = cpu_seconds(broker.pid)
            pr = produce_run(broker.bootstrap, topic, 1, 1024, args.records_1k, "all",
                             args.max_seconds, codec=producer_codec, payload=payload)
            cpu = cpu_seconds(broker.pid) - cpu0
            rows.append((producer_codec, topic_codec, pr, cpu))
            print(f"  done {topic}: {pr['records']} records", flush=True)
        time.sleep(1.0)
        admin = None
    finally:
        broker.stop(check=False)
    w = (9, 8, 10, 12, 12, 7)
    print()
    print(fmt_row(["producer", "topic", "prod MB/s", "prod rec/s", "CPU s/GB", "errors"], w))
    for producer_codec, topic_codec, pr, cpu in rows:
        gb = pr["bytes"] / 2**30
        print(fmt_row([producer_codec, topic_codec, f"{pr['bytes'] / 1048576 / pr['seconds']:.1f}",
                       f"{pr['records'] / pr['seconds']:.0f}", f"{cpu / max(gb, 1e-9):.1f}",
                       pr["errors"]], w))
    print("(acks=all, 1 KiB compressible records, 1 partition; CPU = broker process only;"
          " MB/s counts uncompressed record values)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def metric_sum(broker, name, match=""):
    """Sum of a metric's samples (those whose labels contain ``match``) on /metrics."""
    text = broker.http_get("/metrics")[1]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name) and match in ln)


def txn_produce_run(bootstrap, topic, partitions, size, count, per_txn, max_seconds,
                    transactional_id=None):
    """Idempotent produce of ``count`` records; with a transactional id, in transactions
    of ``per_txn`` records each committed before the next begins (commit latency
    recorded)."""
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
            "batch.size": 1024 * 1024, "queue.buffering.max.kbytes": 256 * 1024,
            "queue.buffering.max.messages": 1_000_000, "broker.address.family": "v4",
            "message.timeout.ms": 60000}
    if transactional_id:
        conf["transactional.id"] = transactional_id
    prod = Producer(conf)
    payload = os.urandom(size)
    # Connections and the producer id are set up before the clock starts.
    if transactional_id:
        prod.init_transactions(30)
    else:
        prod.produce(topic, value=payload, partition=0)
        prod.flush(30)
    commits = []
    sent = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    while sent < count and time.perf_counter() < deadline:
        if transactional_id:
            prod.begin_transaction()
        n = min(per_txn, count - sent)
        i = 0
        while i < n:
            try:
                prod.produce(topic, value=payload, partition=(sent + i) % partitions)
                i += 1
            except BufferError:
                prod.poll(0.005)
        sent += n
        if transactional_id:
            t0 = time.perf_counter()
            prod.commit_transaction(60)
            commits.append((time.perf_counter() - t0) * 1000)
    prod.flush(120)
    elapsed = time.perf_counter() - start
    commits.sort()
    pct = (lambda q: commits[min(len(commits) - 1, int(q * len(commits)))]) if commits else (
        lambda q: float("nan"))
    return {"records": sent, "bytes": sent * size, "seconds": elapsed,
            "commits": len(commits), "commit_p50": pct(0.5), "commit_p99": pct(0.99)}


def transactions_main(args):
    """Transactional produce next to idempotent produce (same producer settings, acks=all),
    and read_committed next to read_uncommitted consumption of the result."""
    workdir, broker = start_broker(args)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    rows = []
    reads = []
    try:
        for parts in (1, 8):
            for per_txn in (None, 100, 1000, 10000):
                kind = f"txn{per_txn}" if per_txn else "idem"
                topic = f"bench-{kind}-p{parts}"
                create_topic(admin, topic, parts)
                pr = txn_produce_run(broker.bootstrap, topic, parts, 1024, args.records_1k,
                                     per_txn or args.records_1k, args.max_seconds,
                                     transactional_id=f"bench-{topic}" if per_txn else None)
                rows.append((parts, per_txn, pr))
                print(f"  done {topic}: {pr['records']} records", flush=True)
                if parts == 8 and per_txn == 1000:
                    for isolation in ("read_uncommitted", "read_committed"):
                        cr = consume_run(broker.bootstrap, topic, parts, pr["records"],
                                         args.max_seconds, isolation=isolation)
                        reads.append((isolation, cr))
        admin = None
    finally:
        broker.stop(check=False)
    w = (6, 10, 10, 12, 9, 11, 11)
    print()
    print(fmt_row(["parts", "txn size", "prod MB/s", "prod rec/s", "commits", "commit p50",
                   "commit p99"], w))
    for parts, per_txn, pr in rows:
        print(fmt_row([parts, per_txn or "-", f"{pr['bytes'] / 1048576 / pr['seconds']:.1f}",
                       f"{pr['records'] / pr['seconds']:.0f}", pr["commits"] or "-",
                       f"{pr['commit_p50']:.1f}" if pr["commits"] else "-",
                       f"{pr['commit_p99']:.1f}" if pr["commits"] else "-"], w))
    print("(1 KiB records, idempotent producer, acks=all; txn size '-' = no transactions; "
          "commit latencies in ms)")
    for isolation, cr in reads:
        print(f"consume {isolation} (8 partitions, 1000-record transactions): "
              f"{cr['bytes'] / 1048576 / max(cr['seconds'], 1e-9):.1f} MB/s, "
              f"{cr['records']} records")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def compaction_main(args):
    """Log compaction: produce latency at a fixed rate of keyed records into a topic the
    cleaner compacts as it goes, next to the same load into a delete-policy topic, and
    how fast the cleaner cleans."""
    import kafka_wire as kw
    workdir, broker = start_broker(args)
    with kw.Conn(broker.port) as conn:
        kw.incremental_alter_configs_v0(conn, kw.RESOURCE_BROKER, "",
                                        [("log.cleaner.backoff.ms", kw.OP_SET, "1000")])
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    seconds = args.latency_seconds * 2
    rows = []
    try:
        for policy in ("delete", "compact"):
            topic = f"bench-{policy}"
            create_topic(admin, topic, 1, config={
                "cleanup.policy": policy, "segment.bytes": str(8 << 20),
                "min.cleanable.dirty.ratio": "0.2"})
            lat = latency_run(broker.bootstrap, topic, 1024, args.latency_rate_mb, seconds,
                              keys=args.keys)
            rows.append((policy, lat))
            print(f"  done {topic}: {lat['count']} records", flush=True)
        # The last passes over what the load left.
        time.sleep(3.0)
        cleaned = {k: metric_sum(broker, "riffle_log_cleaner_bytes_total", f'kind="{k}"')
                   for k in ("read", "removed")}
        passes = metric_sum(broker, "riffle_log_cleaner_runs_total")
        busy = metric_sum(broker, "riffle_log_cleaner_seconds_total")
        size = broker.http_get("/metrics")[1]
        admin = None
    finally:
        broker.stop(check=False)
    w = (8, 10, 9, 9, 10, 9)
    print()
    print(fmt_row(["policy", "MB/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"], w))
    for policy, lat in rows:
        print(fmt_row([policy, f"{lat['rate_mb']:.1f}", f"{lat['p50']:.2f}", f"{lat['p99']:.2f}",
                       f"{lat['p999']:.2f}", f"{lat['max']:.2f}"], w))
    print(f"(acks=all, 1 KiB records over {args.keys} keys, target {args.latency_rate_mb} MB/s "
          f"for {seconds:.0f} s each; 8 MiB segments, min.cleanable.dirty.ratio 0.2)")
    stored = [ln for ln in size.splitlines()
              if ln.startswith("riffle_partition_size_bytes") and "bench-compact" in ln]
    print(f"cleaner: {passes:.0f} passes, read {cleaned['read'] / 2**20:.1f} MiB, removed "
          f"{cleaned['removed'] / 2**20:.1f} MiB in {busy:.2f} s of cleaning = "
          f"{cleaned['read'] / 2**20 / max(busy, 1e-9):.1f} MiB/s; compacted topic now "
          f"{sum(float(s.rsplit(' ', 1)[1]) for s in stored) / 2**20:.1f} MiB")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--records-1k", type=int, default=500_000, help="records per 1 KiB produce run")
    ap.add_argument("--records-100b", type=int, default=2_000_000, help="records per 100 B produce run")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="cap per produce/consume run")
    ap.add_argument("--latency-rate-mb", type=float, default=20.0)
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--fsync-policy", default=None, help="broker --fsync-policy (default: broker's)")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--cluster", action="store_true",
                    help=f"single node vs a {CLUSTER_SIZE}-broker RF{CLUSTER_RF} cluster: "
                         "1 KiB produce throughput and latency, leader failover, acked-record check")
    ap.add_argument("--recompression", action="store_true",
                    help="cost of topic compression.type: keep the producer's codec vs recompress")
    ap.add_argument("--compaction", action="store_true",
                    help="produce latency with the log cleaner at work, and cleaner throughput")
    ap.add_argument("--transactions", action="store_true",
                    help="transactional vs idempotent produce, read_committed consume")
    ap.add_argument("--keys", type=int, default=10_000, help="--compaction: distinct keys")
    ap.add_argument("--failover-rounds", type=int, default=3, help="--cluster: leader kills")
    ap.add_argument("--catch-up-mb", type=float, default=300.0,
                    help="--cluster: MB a restarted follower copies to catch up")
    ap.add_argument("--failover-rate-mb", type=float, default=2.0,
                    help="--cluster: produce rate during the failover rounds")
    ap.add_argument("--failover-settle", type=float, default=3.0,
                    help="--cluster: seconds of steady load before each kill and after each rejoin")
    args = ap.parse_args()
    if args.quick:
        args.records_1k, args.records_100b = 20_000, 100_000
        args.max_seconds, args.latency_seconds = 15.0, 3.0
        args.failover_settle = 1.5
    if args.cluster:
        cluster_main(args)
        return
    if args.recompression:
        recompression_main(args)
        return
    if args.compaction:
        compaction_main(args)
        return
    if args.transactions:
        transactions_main(args)
        return

    workdir, broker = start_broker(args)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    results = []
    total_records = 0
    total_raw_bytes = 0
    written_at_start = disk_write_bytes(broker.pid)
    try:
        for size, count in ((1024, args.records_1k), (100, args.records_100b)):
            for acks in ("1", "all"):
                for parts in (1, 8):
                    topic = f"bench-{size}b-acks{acks}-p{parts}"
                    create_topic(admin, topic, parts)
                    pr = produce_run(broker.bootstrap, topic, parts, size, count, acks, args.max_seconds)
                    cr = consume_run(broker.bootstrap, topic, parts, pr["records"], args.max_seconds)
                    results.append((size, acks, parts, pr, cr))
                    total_records += pr["records"]
                    # Approximate record-batch bytes as a producer would send them.
                    total_raw_bytes += pr["records"] * (size + RECORD_OVERHEAD)
                    print(f"  done {topic}: {pr['records']} records", flush=True)
        create_topic(admin, "bench-latency", 1)
        lat = latency_run(broker.bootstrap, "bench-latency", 1024, args.latency_rate_mb,
                          args.latency_seconds)
        rss = broker.rss_kib()
        time.sleep(1.0)
        disk_live = disk_usage_bytes(broker.data_dir)
        written = disk_write_bytes(broker.pid) - written_at_start
        admin = None  # destroy the client before its broker goes away (no reconnect noise)
    finally:
        broker.stop(check=False)
    # After a clean shutdown memtables are flushed and the write-ahead log is released:
    # what remains is the stored data itself.
    disk = disk_usage_bytes(broker.data_dir)

    w = (6, 5, 5, 10, 12, 10, 12, 7)
    print()
    print(fmt_row(["size", "acks", "parts", "prod MB/s", "prod rec/s", "cons MB/s", "cons rec/s", "errors"], w))
    for size, acks, parts, pr, cr in results:
        pmb = pr["bytes"] / 1048576 / pr["seconds"]
        cmb = cr["bytes"] / 1048576 / max(cr["seconds"], 1e-9)
        print(fmt_row([size, acks, parts, f"{pmb:.1f}", f"{pr['records'] / pr['seconds']:.0f}",
                       f"{cmb:.1f}", f"{cr['records'] / max(cr['seconds'], 1e-9):.0f}",
                       pr["errors"]], w))
    print()
    print(f"latency (acks=all, 1 KiB, target {args.latency_rate_mb} MB/s, achieved "
          f"{lat['rate_mb']:.1f} MB/s, {lat['count']} records): "
          f"p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  p99.9 {lat['p999']:.2f} ms  "
          f"max {lat['max']:.2f} ms")
    print(f"broker memory: VmRSS {rss.get('VmRSS', 0) / 1024:.1f} MiB, "
          f"VmHWM {rss.get('VmHWM', 0) / 1024:.1f} MiB")
    total_records += lat["count"]
    total_raw_bytes += lat["count"] * (1024 + RECORD_OVERHEAD)
    if total_records:
        print(f"disk while running (data + write-ahead log): {disk_live / 1048576:.1f} MiB")
        print(f"disk after shutdown: {disk / 1048576:.1f} MiB for {total_records} records = "
              f"{disk / total_records:.1f} B/record; raw record-batch size "
              f"~{total_raw_bytes / total_records:.1f} B/record "
              f"(ratio {disk / max(total_raw_bytes, 1):.2f})")
        print(f"disk writes while running: {written / 1048576:.1f} MiB = "
              f"{written / max(total_raw_bytes, 1):.2f} bytes written per record-batch byte "
              f"(write-ahead log, memtable flushes, compactions)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")


if __name__ == "__main__":
    main()
