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
produce throughput, produce latency at a fixed rate, failover time when the
partition leader is killed with SIGKILL under load, and whether any
acknowledged record was lost.

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


def produce_run(bootstrap, topic, partitions, size, count, acks, max_seconds):
    payload = os.urandom(size)
    prod = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                     "batch.size": 1024 * 1024, "compression.type": "none",
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


def consume_run(bootstrap, topic, partitions, expected, max_seconds, on_message=None):
    """Read ``expected`` records from the start of the partitions (manual
    assignment); ``on_message(msg)`` sees each one."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "riffle-bench-unused",
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


def paced_produce(prod, topic, size, rate_mb, stop, on_delivery):
    """Produce ``size``-byte records at ``rate_mb`` MB/s until ``stop()`` is true.

    Record n starts with n as SEQ_DIGITS ASCII digits (the rest is random);
    ``on_delivery(err, msg, t_produced)`` gets the perf_counter() time the
    record was handed to the producer.  Returns the number of records produced.
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
                prod.produce(topic, value=value,
                             on_delivery=lambda e, m, t0=t0: on_delivery(e, m, t0))
                n += 1
            except BufferError:
                prod.poll(0.001)
                break
        prod.poll(0)
        time.sleep(min(0.001, interval))
    return n


def latency_run(bootstrap, topic, size, rate_mb, seconds):
    prod = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1,
                     "broker.address.family": "v4", "message.timeout.ms": 60000})
    lat = []

    def on_delivery(err, _msg, t0):
        if err is None:
            lat.append(time.perf_counter() - t0)

    start = time.perf_counter()
    n = paced_produce(prod, topic, size, rate_mb,
                      lambda: time.perf_counter() - start >= seconds, on_delivery)
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
    args = ap.parse_args()
    if args.quick:
        args.records_1k, args.records_100b = 20_000, 100_000
        args.max_seconds, args.latency_seconds = 15.0, 3.0

    workdir = Path(tempfile.mkdtemp(prefix="riffle-bench-"))
    extra = ["--fsync-policy", args.fsync_policy] if args.fsync_policy else []
    broker = Broker(workdir, extra_args=extra)
    broker.start()
    print(f"broker pid {broker.pid} on {broker.bootstrap}, data dir {broker.data_dir}")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    results = []
    total_records = 0
    total_raw_bytes = 0
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
    if not args.keep:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")


if __name__ == "__main__":
    main()
