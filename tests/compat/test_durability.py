"""Crash and restart durability.

What is guaranteed:

* Process crash (``kill -9``): no acknowledged write is lost, for acks=1 and
  acks=all, under every ``fsync-policy`` (acks-all, always, never).  The broker
  hands a write to the operating system (RocksDB WAL write) before it sends
  the acknowledgement, and the OS page cache survives the death of the
  process.
* Machine crash / power loss: only writes acknowledged under an fsync'ing
  policy are guaranteed: acks=all under the default ``acks-all`` policy, and
  everything under ``always``.  That case cannot be simulated here; these
  tests cover process crashes and clean restarts.

A restart (clean or after kill -9) recovers topics, partition counts, topic
configs, log start/end offsets and the records themselves.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

from helpers import create_topic, kp_admin, kp_consume_all, unique_topic, wait_until


def _ck_consume_all(b, topic, partitions, expected=None, timeout=60.0):
    """Read every partition up to its high watermark (not up to a record
    count: a partition may hold unacknowledged-but-stored records beyond the
    acknowledged ones)."""
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "riffle-compat-unused",
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "broker.address.family": "v4"})
    try:
        high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1]
                for p in partitions}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got = {p: [] for p in partitions}
        deadline = time.monotonic() + timeout

        def done():
            return all((got[p][-1][0] + 1 if got[p] else 0) >= high[p] for p in partitions)

        while not done() and time.monotonic() < deadline:
            for m in c.consume(num_messages=5000, timeout=0.5):
                if not m.error():
                    got[m.partition()].append((m.offset(), m.value()))
        assert done(), f"could not read up to the high watermarks {high} within {timeout}s"
        return got
    finally:
        c.close()


def _assert_acked_stored(acked, got):
    """Every acknowledged (partition, offset) holds its value; offsets have no gaps."""
    stored = {(p, off): val for p, recs in got.items() for off, val in recs}
    missing = [k for k in acked if k not in stored]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"
    wrong = [k for k, v in acked.items() if stored[k] != v]
    assert not wrong, f"acknowledged offsets hold different values: {wrong[:5]}"
    for p, recs in got.items():
        offsets = [o for o, _ in recs]
        assert offsets == list(range(len(offsets))), f"partition {p} has offset gaps"


@pytest.mark.parametrize("fsync_policy", ["acks-all", "always", "never"])
@pytest.mark.parametrize("acks", ["all", "1"])
def test_acked_writes_survive_kill9_during_load(make_broker, acks, fsync_policy):
    """Produce continuously, kill -9 the broker mid-stream; after restart every
    acknowledged (partition, offset, value) is present and offsets have no gaps."""
    b = make_broker("--fsync-policy", fsync_policy)
    topic = unique_topic("dur")
    partitions = (0, 1, 2, 3)
    create_topic(b.bootstrap, topic, partitions=len(partitions))

    acked = {}  # (partition, offset) -> value
    lock = threading.Lock()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked[(msg.partition(), msg.offset())] = msg.value()

    prod = Producer({"bootstrap.servers": b.bootstrap, "acks": acks, "linger.ms": 2,
                     "broker.address.family": "v4", "message.timeout.ms": 5000,
                     "retries": 0})
    stop = threading.Event()

    def load():
        i = 0
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                prod.produce(topic, value=f"v{i}".encode(), partition=i % len(partitions),
                             on_delivery=on_delivery)
                i += 1
            except BufferError:
                pass
            prod.poll(0.0005 if i % 100 else 0.01)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    wait_until(lambda: len(acked) >= 5000, timeout=30, message="5000 acknowledged writes")
    b.kill9()
    with lock:
        acked_at_kill = dict(acked)
    stop.set()
    t.join(40)
    prod.flush(10)  # remaining messages fail (broker is down); bounded

    b.start()
    # Every write that was acknowledged before the kill must be readable.
    expected = len(acked_at_kill)
    got = _ck_consume_all(b, topic, partitions, expected)
    _assert_acked_stored(acked_at_kill, got)


def test_acked_writes_survive_kill9_with_recycled_wal_files(make_broker):
    """The broker reuses obsolete WAL files (``storage_wal_recycle_files``), so a WAL can
    end in records of an older life.  With 1 MiB memtables the WAL turns over many times
    per second; across two kill -9s every acknowledged acks=all write is read back, in
    order, and nothing from a recycled file's old tail reappears."""
    b = make_broker("--log-memtable-bytes", str(4 << 20))
    topic = unique_topic("recycled-wal")
    create_topic(b.bootstrap, topic, partitions=2)
    acked = {}  # (partition, offset) -> value
    filler = b"x" * 2000
    for life in range(2):
        lock = threading.Lock()

        def on_delivery(err, msg):
            if err is None:
                with lock:
                    acked[(msg.partition(), msg.offset())] = msg.value()

        prod = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 2,
                         "broker.address.family": "v4", "message.timeout.ms": 5000,
                         "retries": 0})
        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                try:
                    prod.produce(topic, value=b"%d-%d-" % (life, i) + filler,
                                 partition=i % 2, on_delivery=on_delivery)
                    i += 1
                except BufferError:
                    prod.poll(0.01)
                prod.poll(0)

        t = threading.Thread(target=load, daemon=True)
        t.start()
        before = len(acked)
        # ~80 MB acknowledged: many memtable switches, each starting a (recycled) WAL.
        wait_until(lambda: len(acked) - before >= 40_000, timeout=120,
                   message="40000 acknowledged writes")
        b.kill9()
        stop.set()
        t.join(30)
        prod.flush(10)
        log = (b.data_dir / "LOG").read_text(errors="replace")
        b.start()
        assert "from recycle list" in log, "no WAL file was reused before the kill"

        got = _ck_consume_all(b, topic, (0, 1), timeout=120)
        _assert_acked_stored(acked, got)
        for p, recs in got.items():
            # Within a partition values are produced in order: an old WAL record replayed
            # over a newer one would show up as a value out of sequence.
            seq = [tuple(int(x) for x in v.split(b"-", 2)[:2]) for _, v in recs]
            assert seq == sorted(seq), f"partition {p} holds records out of order"


def _kp_end_offsets(bootstrap, topic, partitions):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [KTopicPartition(topic, p) for p in partitions]
        return ({tp.partition: o for tp, o in c.beginning_offsets(tps, timeout_ms=20000).items()},
                {tp.partition: o for tp, o in c.end_offsets(tps, timeout_ms=20000).items()})
    finally:
        c.close(autocommit=False)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_restart_recovers_topics_configs_offsets(make_broker, how):
    from kafka.admin import ConfigResource, ConfigResourceType

    b = make_broker()
    t1 = unique_topic("rec1")
    t2 = unique_topic("rec2")
    create_topic(b.bootstrap, t1, partitions=3, configs={"retention.ms": "86400000"})
    create_topic(b.bootstrap, t2, partitions=1,
                 configs={"message.timestamp.type": "LogAppendTime", "max.message.bytes": "65536"})
    adm = kp_admin(b.bootstrap)
    try:
        adm.create_partitions({t2: 2})
    finally:
        adm.close()

    prod = KafkaProducer(bootstrap_servers=b.bootstrap, acks="all", enable_idempotence=False)
    try:
        for p in range(3):
            for i in range(10 * (p + 1)):
                prod.send(t1, value=f"{p}-{i}".encode(), partition=p)
        for p in range(2):
            for i in range(5):
                prod.send(t2, key=b"k", value=f"{p}-{i}".encode(), partition=p)
        prod.flush(timeout=30)
    finally:
        prod.close(timeout=10)
    adm = kp_admin(b.bootstrap)
    try:
        adm.delete_records({KTopicPartition(t1, 2): 7})
    finally:
        adm.close()
    before = (_kp_end_offsets(b.bootstrap, t1, range(3)), _kp_end_offsets(b.bootstrap, t2, range(2)))
    assert before[0] == ({0: 0, 1: 0, 2: 7}, {0: 10, 1: 20, 2: 30})

    b.restart(kill=(how == "kill9"))

    after = (_kp_end_offsets(b.bootstrap, t1, range(3)), _kp_end_offsets(b.bootstrap, t2, range(2)))
    assert after == before
    adm = kp_admin(b.bootstrap)
    try:
        topics = {t["name"]: t for t in adm.describe_topics([t1, t2])}
        assert len(topics[t1]["partitions"]) == 3 and len(topics[t2]["partitions"]) == 2
        cfg = adm.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t1),
                                    ConfigResource(ConfigResourceType.TOPIC, t2)])
        assert cfg["topic"][t1]["retention.ms"]["value"] == "86400000"
        assert cfg["topic"][t2]["message.timestamp.type"]["value"] == "LogAppendTime"
        assert cfg["topic"][t2]["max.message.bytes"]["value"] == "65536"
    finally:
        adm.close()
    got = kp_consume_all(b.bootstrap, t1, 10 + 20 + 23, partitions=(0, 1, 2))
    assert [(r.partition, r.offset, r.value) for r in got] == (
        [(0, i, f"0-{i}".encode()) for i in range(10)]
        + [(1, i, f"1-{i}".encode()) for i in range(20)]
        + [(2, i, f"2-{i}".encode()) for i in range(7, 30)])

    # New writes continue after the recovered end offset (no offset reuse).
    prod = KafkaProducer(bootstrap_servers=b.bootstrap, acks="all")
    try:
        meta = prod.send(t1, value=b"after-restart", partition=0).get(timeout=30)
    finally:
        prod.close(timeout=10)
    assert meta.offset == 10


def test_idempotent_producer_continues_across_restart(make_broker):
    """A kafka-python idempotent producer keeps its producer id across a broker
    kill -9 and restart; the recovered producer state accepts its next
    sequence numbers and no record is duplicated."""
    b = make_broker()
    topic = unique_topic("idem")
    create_topic(b.bootstrap, topic)
    prod = KafkaProducer(bootstrap_servers=b.bootstrap, enable_idempotence=True, acks="all",
                         request_timeout_ms=10000, delivery_timeout_ms=60000,
                         reconnect_backoff_ms=100, reconnect_backoff_max_ms=1000)
    try:
        futures = [prod.send(topic, value=str(i).encode(), partition=0) for i in range(100)]
        prod.flush(timeout=30)
        assert [f.get(timeout=10).offset for f in futures] == list(range(100))
        b.kill9()
        b.start()
        futures = [prod.send(topic, value=str(i).encode(), partition=0) for i in range(100, 200)]
        prod.flush(timeout=60)
        assert [f.get(timeout=10).offset for f in futures] == list(range(100, 200))
    finally:
        prod.close(timeout=10)
    got = kp_consume_all(b.bootstrap, topic, 200)
    assert [int(r.value) for r in got] == list(range(200))


def test_clean_shutdown_exit_code_and_health_endpoints(make_broker):
    b = make_broker()
    assert b.http_get("/healthz")[0] == 200
    assert b.http_get("/readyz")[0] == 200
    status, body = b.http_get("/metrics")
    assert status == 200 and "# TYPE" in body
    assert b.stop() == 0


def test_sigterm_during_load_and_long_poll(make_broker):
    """SIGTERM while producers are writing and a consumer is parked in a long
    poll: the broker exits 0 promptly and every acknowledged write is there
    after restart."""
    import kafka_wire as w

    b = make_broker()
    topic = unique_topic("term")
    create_topic(b.bootstrap, topic)
    parked = w.Conn(b.port, timeout=60)
    parked.send(w.frame(w.request_header_v1(w.API_FETCH, 4, 99) + (
        w.i32(-1) + w.i32(30000) + w.i32(1 << 30) + w.i32(1 << 20) + w.i8(0)
        + w.array([w.string(topic) + w.array([w.i32(0) + w.i64(0) + w.i32(1 << 20)])]))))
    acked = []
    lock = threading.Lock()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked.append((msg.offset(), msg.value()))

    prod = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 2,
                     "broker.address.family": "v4", "message.timeout.ms": 5000})
    stop = threading.Event()

    def load():
        i = 0
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                prod.produce(topic, value=f"v{i}".encode(), partition=0, on_delivery=on_delivery)
                i += 1
            except BufferError:
                pass
            prod.poll(0.001)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        wait_until(lambda: len(acked) >= 2000, timeout=30, message="2000 acknowledged writes")
        t0 = time.monotonic()
        rc = b.stop(timeout=15)
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join(40)
        prod.flush(10)
        parked.close()
    assert rc == 0
    assert took < 10, f"shutdown took {took:.1f}s (a parked 30 s long-poll must not delay it)"
    with lock:
        acked_at_stop = dict(acked)
    b.start()
    got = _ck_consume_all(b, topic, (0,), len(acked_at_stop))
    stored = dict(got.get(0, []))
    missing = [o for o in acked_at_stop if stored.get(o) != acked_at_stop[o]]
    assert not missing, f"{len(missing)} acknowledged writes missing after SIGTERM, e.g. {missing[:5]}"
