"""Compatibility with kcat (librdkafka command-line client)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from helpers import create_topic, kp_consume_all, unique_topic, which

KCAT = which("kcat") or which("kafkacat")
if KCAT is None:
    raise RuntimeError("kcat is not installed: run scripts/setup-test-deps.sh")


def kcat(broker, *args, stdin: bytes | None = None, timeout: float = 60.0, check: bool = True):
    cmd = [KCAT, "-b", broker.bootstrap, "-X", "broker.address.family=v4", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} exited {proc.returncode}\nstderr: {proc.stderr.decode(errors='replace')}")
    return proc


def kcat_produce(broker, topic, lines, *extra, partition=0, check=True):
    data = b"".join(line + b"\n" for line in lines)
    return kcat(broker, "-P", "-t", topic, "-p", str(partition), "-K", ":", "-Z", *extra,
                stdin=data, check=check)


def kcat_consume_json(broker, topic, *extra, partition=None):
    args = ["-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q", "-Z"]
    if partition is not None:
        args += ["-p", str(partition)]
    out = kcat(broker, *args, *extra).stdout.decode()
    msgs = [json.loads(line) for line in out.splitlines() if line.strip()]
    return sorted(msgs, key=lambda m: (m["partition"], m["offset"]))


def headers_of(msg):
    h = msg.get("headers") or []
    if isinstance(h, dict):
        return list(h.items())
    return list(zip(h[0::2], h[1::2]))


def test_metadata_list(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=3)
    out = kcat(broker, "-L", "-t", topic).stdout.decode()
    assert f"broker {broker.node_id} at 127.0.0.1:{broker.port}" in out, out
    assert f'topic "{topic}" with 3 partitions' in out, out
    js = json.loads(kcat(broker, "-L", "-J").stdout)
    assert any(t["topic"] == topic and len(t["partitions"]) == 3 for t in js["topics"]), js
    assert [b["id"] for b in js["brokers"]] == [broker.node_id]


def test_round_trip_keys_headers_nulls(broker, topic):
    create_topic(broker.bootstrap, topic)
    lines = [b"k1:v1", b"k2:", b":v3", b"k4:v4 with spaces", b"k5:v:with:colons"]
    kcat_produce(broker, topic, lines, "-H", "h1=one", "-H", "h2=two")
    msgs = kcat_consume_json(broker, topic)
    assert [m["offset"] for m in msgs] == [0, 1, 2, 3, 4]
    assert [(m["key"], m["payload"]) for m in msgs] == [
        ("k1", "v1"), ("k2", None), (None, "v3"), ("k4", "v4 with spaces"), ("k5", "v:with:colons")]
    for m in msgs:
        assert headers_of(m) == [("h1", "one"), ("h2", "two")], m
        assert m["tstype"] == "create"
    # The same data seen by a different client.
    recs = kp_consume_all(broker.bootstrap, topic, len(lines))
    assert recs[1].value is None and recs[2].key is None
    assert list(recs[0].headers) == [("h1", b"one"), ("h2", b"two")]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, topic, codec):
    create_topic(broker.bootstrap, topic)
    lines = [f"key{i}:{'payload-' * 30}{i}".encode() for i in range(200)]
    kcat_produce(broker, topic, lines, "-X", f"compression.codec={codec}", "-X", "linger.ms=50")
    msgs = kcat_consume_json(broker, topic)
    assert [m["offset"] for m in msgs] == list(range(200))
    assert [f"{m['key']}:{m['payload']}".encode() for m in msgs] == lines


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks(broker, topic, acks):
    create_topic(broker.bootstrap, topic)
    lines = [f"k{i}:v{i}".encode() for i in range(100)]
    kcat_produce(broker, topic, lines, "-X", f"acks={acks}")
    msgs = kcat_consume_json(broker, topic)
    assert [(m["key"], m["payload"]) for m in msgs] == [(f"k{i}", f"v{i}") for i in range(100)]


def test_idempotent_producer_no_duplicates(broker, topic):
    create_topic(broker.bootstrap, topic)
    n = 5000
    lines = [f"k:{i}".encode() for i in range(n)]
    kcat_produce(broker, topic, lines, "-X", "enable.idempotence=true", "-X", "linger.ms=0",
                 "-X", "batch.num.messages=20")
    msgs = kcat_consume_json(broker, topic)
    assert [int(m["payload"]) for m in msgs] == list(range(n))
    assert [m["offset"] for m in msgs] == list(range(n))


def test_message_too_large_rejected_then_next_accepted(broker, topic):
    create_topic(broker.bootstrap, topic, configs={"max.message.bytes": 1024})
    proc = kcat_produce(broker, topic, [b"big:" + b"x" * 4000], "-X", "message.max.bytes=10000000",
                        check=False)
    err = proc.stderr.decode(errors="replace")
    assert "Message size too large" in err, err
    kcat_produce(broker, topic, [b"small:ok"])
    msgs = kcat_consume_json(broker, topic)
    assert [(m["key"], m["payload"]) for m in msgs] == [("small", "ok")]


def test_fetch_long_poll_wakes_on_new_data(broker, topic):
    create_topic(broker.bootstrap, topic)
    cmd = [KCAT, "-b", broker.bootstrap, "-X", "broker.address.family=v4", "-C", "-t", topic,
           "-p", "0", "-o", "beginning", "-c", "1", "-q", "-X", "fetch.wait.max.ms=15000"]
    consumer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(2.0)  # the consumer is now parked in a long-poll fetch
        assert consumer.poll() is None, consumer.stderr.read()
        sent_at = time.monotonic()
        kcat_produce(broker, topic, [b"k:wake-up"])
        out, err = consumer.communicate(timeout=25)
        latency = time.monotonic() - sent_at
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(10)
    assert out.decode().strip() == "wake-up", err
    assert latency < 5.0, f"long-poll fetch returned {latency:.2f}s after produce (max wait 15s)"


def test_offsets_by_timestamp(broker, topic):
    create_topic(broker.bootstrap, topic)
    kcat_produce(broker, topic, [b"a:1", b"b:2"])
    mid = int(time.time() * 1000) + 5
    time.sleep(0.05)
    kcat_produce(broker, topic, [b"c:3"])
    out = kcat(broker, "-Q", "-t", f"{topic}:0:{mid}").stdout.decode()
    assert f"{topic} [0] offset 2" in out, out
    # Consuming from a logical offset: -o -1 is the last message.
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "-1", "-e", "-q").stdout.decode()
    assert out.strip() == "3"


def test_log_append_time_topic(broker, topic):
    create_topic(broker.bootstrap, topic, configs={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    kcat_produce(broker, topic, [b"k:v"])
    after = int(time.time() * 1000)
    (msg,) = kcat_consume_json(broker, topic)
    assert msg["tstype"] == "logappend", msg
    assert before - 1000 <= msg["ts"] <= after + 1000, msg


def test_data_survives_kill9_and_restart(make_broker):
    b = make_broker()
    name = unique_topic("kckill")
    create_topic(b.bootstrap, name)
    lines = [f"k{i}:v{i}".encode() for i in range(1000)]
    kcat_produce(b, name, lines, "-X", "acks=all")
    b.kill9()
    b.start()
    msgs = kcat_consume_json(b, name)
    assert [(m["key"], m["payload"]) for m in msgs] == [(f"k{i}", f"v{i}") for i in range(1000)]
