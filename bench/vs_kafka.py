#!/usr/bin/env python3
"""Riffle and Apache Kafka side by side on this machine.

Starts a single-node Apache Kafka (4.1, KRaft, combined broker and controller, jars
from Maven Central via scripts/setup-java-tools.sh) and a single Riffle broker, one
after the other, never both at once, and runs the same loads against each:

* confluent-kafka (librdkafka): produce throughput for {1 KiB, 100 B} x {acks=1,
  acks=all} x {1, 8} partitions, consume throughput reading each topic back, and
  produce latency p50/p99/p99.9/max at a fixed rate (20 MB/s of 1 KiB records);
* Kafka's own Java tools: ProducerPerformance (1 KiB, acks=all, unthrottled),
  ConsumerPerformance reading it back, EndToEndLatency (1 KiB, acks=all);
* the broker process: RSS (peak VmHWM and steady VmRSS after the loads and a pause),
  bytes on disk per record after a clean stop, CPU seconds per GB produced.

Pairs at equal durability: Kafka's default (page cache, no fsync) against Riffle
`fsync_policy=never`; Kafka with `log.flush.interval.messages=1` (fsync per append)
against Riffle's default (`acks-all`: a WAL sync before an acks=all answer). Each pair
is run `--reps` times; the table gives the median and the min-max spread of each row,
and the Riffle/Kafka ratio of the medians (higher is better for throughput rows,
lower for latency, memory, disk and CPU rows).

Run: .venv/bin/python bench/vs_kafka.py [--quick] [--reps 3] [--pair never|sync|both]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
from bench import (AdminClient, Broker, consume_run, cpu_seconds, create_topic,  # noqa: E402
                   disk_usage_bytes, latency_run, produce_run, wait_until)

REPO = Path(__file__).resolve().parents[1]
CLASSPATH = REPO / "tests" / "java" / "target" / "classpath.txt"
# kafka-server-start.sh's defaults.
KAFKA_JVM = ["-Xmx1G", "-Xms1G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
             "-Djava.awt.headless=true"]
TOOL_JVM = ["-Xmx512m", "-XX:+UseSerialGC"]

PAIRS = {
    "never": ("no fsync (page cache / WAL written, not synced)",
              ("kafka", {}), ("riffle", ["--fsync-policy", "never"])),
    "sync": ("fsync per acknowledged write",
             ("kafka", {"log.flush.interval.messages": "1"}), ("riffle", [])),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def classpath() -> str:
    if not CLASSPATH.is_file():
        raise SystemExit(f"{CLASSPATH} missing: run bash scripts/setup-java-tools.sh")
    return CLASSPATH.read_text().strip()


class KafkaBroker:
    """A single-node Apache Kafka in KRaft mode on free loopback ports."""

    def __init__(self, workdir: Path, overrides: dict[str, str]):
        self.workdir = workdir
        self.data_dir = workdir / "kafka-logs"
        self.port, self.cport = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        props = {
            "process.roles": "broker,controller", "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir), "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1", "group.initial.rebalance.delay.ms": "0",
            **overrides}
        self.config = workdir / "server.properties"
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.proc = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self):
        cp = classpath()
        subprocess.run(["java", *TOOL_JVM, "-cp", cp, "kafka.tools.StorageTool", "format",
                        "--cluster-id", uuid.uuid4().hex[:22], "--config", str(self.config)],
                       check=True, capture_output=True, timeout=120)
        log = open(self.workdir / "kafka.log", "w")
        self.proc = subprocess.Popen(["java", *KAFKA_JVM, "-cp", cp, "kafka.Kafka",
                                      str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        wait_until(lambda: self.proc.poll() is None and admin.list_topics(timeout=2).brokers,
                   timeout=90, interval=0.5, message="Kafka serving")
        return self

    def stop(self, check=False):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_kib(self) -> dict[str, int]:
        return Broker.rss_kib(self)


def java_tool(main_class: str, *args, timeout=600) -> str:
    proc = subprocess.run(["java", *TOOL_JVM, "-cp", classpath(), main_class,
                           *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{main_class} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def producer_perf(bootstrap, topic, records) -> dict[str, float]:
    """ProducerPerformance, 1 KiB, acks=all, unthrottled: its summary line."""
    out = java_tool("org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
                    "--num-records", records, "--record-size", 1024, "--throughput", -1,
                    "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
                    "linger.ms=5", "batch.size=262144")
    last = [ln for ln in out.splitlines() if "records sent" in ln][-1]
    num = lambda pat: float(re.search(pat, last).group(1))  # noqa: E731
    return {"mb": num(r"\(([\d.]+) MB/sec\)"), "p50": num(r"([\d.]+) ms 50th"),
            "p99": num(r"([\d.]+) ms 99th"), "p999": num(r"([\d.]+) ms 99.9th"),
            "max": num(r"([\d.]+) ms max latency")}


def consumer_perf(bootstrap, topic, records) -> float:
    """ConsumerPerformance reading ``records`` back: MB/s while fetching (its group
    join is not counted)."""
    out = java_tool("org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server",
                    bootstrap, "--topic", topic, "--messages", records, "--timeout", 60000)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    header = [h.strip() for h in lines[0].split(",")]
    row = [c.strip() for c in lines[1].split(",")]
    return float(row[header.index("fetch.MB.sec")])


def end_to_end(bootstrap, topic, records) -> dict[str, float]:
    """EndToEndLatency (1 KiB, acks=all): one record in flight at a time, ms."""
    out = java_tool("org.apache.kafka.tools.EndToEndLatency", bootstrap, topic, records,
                    "all", 1024)
    pct = re.search(r"50th = ([\d.]+), 99th = ([\d.]+), 99.9th = ([\d.]+)", out)
    return {"p50": float(pct.group(1)), "p99": float(pct.group(2)),
            "p999": float(pct.group(3))}


def run_one(kind, conf, args) -> dict[str, float]:
    """Every load against one fresh broker; returns {row name: value}."""
    workdir = Path(tempfile.mkdtemp(prefix=f"vs-{kind}-"))
    broker = KafkaBroker(workdir, conf) if kind == "kafka" else Broker(workdir, extra_args=conf)
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    out: dict[str, float] = {}
    produced = 0
    cpu = 0.0
    records = 0
    try:
        for size, count in ((1024, args.records_1k), (100, args.records_100b)):
            for acks in ("1", "all"):
                for parts in (1, 8):
                    topic = f"t-{size}-{acks}-{parts}"
                    create_topic(admin, topic, parts)
                    c0 = cpu_seconds(broker.pid)
                    pr = produce_run(broker.bootstrap, topic, parts, size, count, acks,
                                     args.max_seconds)
                    cpu += cpu_seconds(broker.pid) - c0
                    produced += pr["bytes"]
                    records += pr["records"]
                    cr = consume_run(broker.bootstrap, topic, parts, pr["records"],
                                     args.max_seconds, isolation="read_uncommitted")
                    label = f"{'1 KiB' if size == 1024 else '100 B'} acks={acks} p={parts}"
                    out[f"produce MB/s {label}"] = pr["bytes"] / 2**20 / pr["seconds"]
                    out[f"consume MB/s {label}"] = cr["bytes"] / 2**20 / max(cr["seconds"], 1e-9)
        create_topic(admin, "latency", 1)
        lat = latency_run(broker.bootstrap, "latency", 1024, args.rate_mb, args.latency_seconds)
        for k in ("p50", "p99", "p999", "max"):
            out[f"produce latency {k} ms @{args.rate_mb:g} MB/s"] = lat[k]
        create_topic(admin, "java-perf", 1)
        pp = producer_perf(broker.bootstrap, "java-perf", args.records_1k)
        out["ProducerPerformance MB/s"] = pp["mb"]
        for k in ("p50", "p99", "p999", "max"):
            out[f"ProducerPerformance {k} ms"] = pp[k]
        out["ConsumerPerformance MB/s"] = consumer_perf(broker.bootstrap, "java-perf",
                                                        args.records_1k)
        records += args.records_1k
        create_topic(admin, "e2e", 1)
        e2e = end_to_end(broker.bootstrap, "e2e", args.e2e_records)
        for k in ("p50", "p99", "p999"):
            out[f"EndToEndLatency {k} ms"] = e2e[k]
        out["RSS peak MiB"] = broker.rss_kib()["VmHWM"] / 1024
        time.sleep(args.settle)
        out["RSS steady MiB"] = broker.rss_kib()["VmRSS"] / 1024
        out["CPU s per GB produced"] = cpu / max(produced / 2**30, 1e-9)
        admin = None
    finally:
        broker.stop(check=False)
    out["disk bytes per record"] = disk_usage_bytes(broker.data_dir) / max(records, 1)
    shutil.rmtree(workdir, ignore_errors=True)
    return out


LOWER_IS_BETTER = ("latency", " ms", "RSS", "disk", "CPU")


def report(title, kafka_runs, riffle_runs):
    print(f"\n== {title}: Kafka (left) vs Riffle (right), median [min-max] of "
          f"{len(kafka_runs)} runs")
    w = (44, 24, 24, 7)
    print(bench.fmt_row(["", "Kafka", "Riffle", "R/K"], w))
    for row in kafka_runs[0]:
        ks = [r[row] for r in kafka_runs]
        rs = [r[row] for r in riffle_runs]
        km, rm = statistics.median(ks), statistics.median(rs)
        cell = lambda m, xs: f"{m:.1f} [{min(xs):.1f}-{max(xs):.1f}]"  # noqa: E731
        better = "<" if any(t in row for t in LOWER_IS_BETTER) else ">"
        print(bench.fmt_row([row, cell(km, ks), cell(rm, rs),
                             f"{rm / km:.2f}" if km else "-"], w) + f"  ({better} better)")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pair", choices=("never", "sync", "both"), default="both")
    ap.add_argument("--records-1k", type=int, default=200_000)
    ap.add_argument("--records-100b", type=int, default=1_000_000)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--rate-mb", type=float, default=20.0)
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--e2e-records", type=int, default=5000)
    ap.add_argument("--settle", type=float, default=5.0, help="pause before steady RSS")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.records_1k, args.records_100b = 1, 20_000, 100_000
        args.latency_seconds, args.e2e_records, args.settle = 3.0, 500, 1.0
    pairs = list(PAIRS) if args.pair == "both" else [args.pair]
    for name in pairs:
        title, (kk, kconf), (rk, rconf) = PAIRS[name]
        kafka_runs, riffle_runs = [], []
        for rep in range(args.reps):
            # Alternate the order so warm-up effects do not favour one side.
            order = [(kk, kconf, kafka_runs), (rk, rconf, riffle_runs)]
            for kind, conf, runs in order if rep % 2 == 0 else order[::-1]:
                print(f"[{name} rep {rep + 1}/{args.reps}] {kind} {conf or ''}", flush=True)
                runs.append(run_one(kind, conf, args))
        report(title, kafka_runs, riffle_runs)
    print("\n(confluent-kafka rows: linger.ms=5, batch.size=1 MiB; latency rows at a fixed "
          "rate, acks=all; RSS of the broker process; disk after a clean stop; CPU = the "
          "broker's user+system seconds during the confluent-kafka produce runs)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
