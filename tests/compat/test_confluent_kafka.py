"""Compatibility with confluent-kafka-python (librdkafka)."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING, TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, KafkaException, Producer,
    TopicCollection, TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic,
    OffsetSpec, ResourceType,
)

from helpers import assert_same_records, compressible_records, sample_records, unique_topic, wait_until

OP_TIMEOUT = 20.0


def base_conf(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "client.id": "riffle-compat-ck",
            "broker.address.family": "v4"}
    conf.update(extra)
    return conf


def admin(broker):
    return AdminClient(base_conf(broker))


def producer(broker, **extra):
    extra.setdefault("message.timeout.ms", 30000)
    return Producer(base_conf(broker, **extra))


def consumer(broker, **extra):
    # group.id only because librdkafka requires it: no subscribe/commit is used.
    conf = {"group.id": "riffle-compat-unused", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest"}
    conf.update(extra)
    return Consumer(base_conf(broker, **conf))


def create_topic(broker, name, partitions=1, config=None):
    adm = admin(broker)
    fs = adm.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                     config={k: str(v) for k, v in (config or {}).items()})],
                           operation_timeout=OP_TIMEOUT, request_timeout=OP_TIMEOUT)
    fs[name].result(timeout=OP_TIMEOUT)
    wait_until(lambda: name in adm.list_topics(timeout=5).topics
               and len(adm.list_topics(timeout=5).topics[name].partitions) == partitions,
               timeout=OP_TIMEOUT, message=f"topic {name} in metadata")
    return name


class Deliveries:
    """Collects delivery reports; ``errors`` and ``ok`` lists of messages."""

    def __init__(self):
        self.ok = []
        self.errors = []
        self.lock = threading.Lock()

    def __call__(self, err, msg):
        with self.lock:
            if err is not None:
                self.errors.append((err, msg))
            else:
                self.ok.append(msg)


def produce_all(prod, topic, records, partition=0, timeout=60.0):
    dr = Deliveries()
    for r in records:
        kwargs = {"key": r["key"], "value": r["value"], "partition": partition,
                  "on_delivery": dr}
        if r.get("headers"):
            kwargs["headers"] = r["headers"]
        if r.get("timestamp") is not None:
            kwargs["timestamp"] = r["timestamp"]
        while True:
            try:
                prod.produce(topic, **kwargs)
                break
            except BufferError:
                prod.poll(0.1)
        prod.poll(0)
    remaining = prod.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s"
    return dr


def consume_all(broker, topic, expected, partitions=(0,), timeout=30.0, **extra):
    c = consumer(broker, **extra)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(m.error())
                got.append(m)
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            got.extend(m for m in c.consume(num_messages=1000, timeout=0.2) if not m.error())
        got.sort(key=lambda m: (m.partition(), m.offset()))
        return got
    finally:
        c.close()


def as_dict(m):
    return {"key": m.key(), "value": m.value(), "headers": list(m.headers() or [])}


def test_round_trip_keys_headers_nulls(broker, topic):
    create_topic(broker, topic)
    records = sample_records(120)
    dr = produce_all(producer(broker), topic, records)
    assert not dr.errors
    assert sorted(m.offset() for m in dr.ok) == list(range(len(records)))
    got = consume_all(broker, topic, len(records))
    assert [m.offset() for m in got] == list(range(len(records)))
    assert_same_records(records, [as_dict(m) for m in got])


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, topic, codec):
    create_topic(broker, topic)
    records = compressible_records(300, prefix=codec)
    dr = produce_all(producer(broker, **{"compression.type": codec, "linger.ms": 20}), topic, records)
    assert not dr.errors, dr.errors[:3]
    got = consume_all(broker, topic, len(records))
    assert [m.offset() for m in got] == list(range(len(records)))
    assert_same_records(records, [as_dict(m) for m in got], what=codec)


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks(broker, topic, acks):
    create_topic(broker, topic)
    records = sample_records(200, prefix=f"acks{acks}")
    dr = produce_all(producer(broker, acks=acks), topic, records)
    assert not dr.errors, dr.errors[:3]
    assert len(dr.ok) == len(records)
    if acks != "0":
        assert sorted(m.offset() for m in dr.ok) == list(range(len(records)))
    got = consume_all(broker, topic, len(records))
    assert_same_records(records, [as_dict(m) for m in got], what=f"acks={acks}")


def test_idempotent_producer_no_duplicates(broker, topic):
    create_topic(broker, topic, partitions=2)
    n = 20000
    prod = producer(broker, **{"enable.idempotence": True, "linger.ms": 0,
                               "batch.num.messages": 50,
                               "max.in.flight.requests.per.connection": 5})
    dr = Deliveries()
    for i in range(n):
        while True:
            try:
                prod.produce(topic, value=str(i).encode(), partition=i % 2, on_delivery=dr)
                break
            except BufferError:
                prod.poll(0.1)
        prod.poll(0)
    assert prod.flush(60) == 0
    assert not dr.errors, dr.errors[:3]
    for p in (0, 1):
        assert sorted(m.offset() for m in dr.ok if m.partition() == p) == list(range(n // 2))
    got = consume_all(broker, topic, n, partitions=(0, 1), timeout=60)
    for p in (0, 1):
        values = [int(m.value()) for m in got if m.partition() == p]
        assert values == list(range(p, n, 2)), f"partition {p}: duplicates or reordering"


def test_message_too_large_rejected_then_next_accepted(broker, topic):
    create_topic(broker, topic, config={"max.message.bytes": 1024})
    # Raise the client-side limit so only the broker can reject the record.
    prod = producer(broker, **{"message.max.bytes": 10_000_000, "acks": "all"})
    dr = produce_all(prod, topic, [{"key": None, "value": b"x" * 4000}])
    assert len(dr.errors) == 1 and not dr.ok
    assert dr.errors[0][0].code() == KafkaError.MSG_SIZE_TOO_LARGE, dr.errors[0][0]
    dr = produce_all(prod, topic, [{"key": None, "value": b"small"}])
    assert not dr.errors and len(dr.ok) == 1
    got = consume_all(broker, topic, 1)
    assert [m.value() for m in got] == [b"small"]


def test_fetch_long_poll_wakes_on_new_data(broker, topic):
    create_topic(broker, topic)
    c = consumer(broker, **{"fetch.wait.max.ms": 15000, "socket.timeout.ms": 60000})
    received = {}
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        c.poll(1.0)  # start fetching; the partition is empty
        time.sleep(1.0)
        prod = producer(broker, acks="1")
        sent_at = time.monotonic()
        dr = produce_all(prod, topic, [{"key": None, "value": b"wake-up"}], timeout=10)
        assert not dr.errors
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and not m.error():
                received["at"] = time.monotonic()
                received["value"] = m.value()
                break
    finally:
        c.close()
    assert received.get("value") == b"wake-up"
    latency = received["at"] - sent_at
    assert latency < 5.0, f"long-poll fetch returned {latency:.2f}s after produce (max wait 15s)"


def test_list_offsets_by_time_and_earliest_latest(broker, topic):
    create_topic(broker, topic)
    base = int(time.time() * 1000) - 60_000
    records = [{"key": None, "value": f"ts{i}".encode(), "timestamp": base + i * 1000}
               for i in range(3)]
    assert not produce_all(producer(broker), topic, records).errors
    c = consumer(broker)
    try:
        res = c.offsets_for_times([TopicPartition(topic, 0, base + 500)], timeout=OP_TIMEOUT)
        assert res[0].error is None and res[0].offset == 1
        res = c.offsets_for_times([TopicPartition(topic, 0, base + 10_000)], timeout=OP_TIMEOUT)
        assert res[0].offset == -1  # OFFSET_END: no record at or after that time
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=OP_TIMEOUT) == (0, 3)
    finally:
        c.close()
    adm = admin(broker)
    tp = TopicPartition(topic, 0)
    for spec, want_offset, want_ts in [
        (OffsetSpec.earliest(), 0, None),
        (OffsetSpec.latest(), 3, None),
        (OffsetSpec.max_timestamp(), 2, base + 2000),
        (OffsetSpec.for_timestamp(base + 1000), 1, base + 1000),
    ]:
        info = adm.list_offsets({tp: spec}, request_timeout=OP_TIMEOUT)[tp].result(timeout=OP_TIMEOUT)
        assert info.offset == want_offset, (spec, info)
        if want_ts is not None:
            assert info.timestamp == want_ts, (spec, info)


def _configs(adm, name):
    res = ConfigResource(ResourceType.TOPIC, name)
    return adm.describe_configs([res], request_timeout=OP_TIMEOUT)[res].result(timeout=OP_TIMEOUT)


def _kafka_error_code(fut):
    with pytest.raises(KafkaException) as exc:
        fut.result(timeout=OP_TIMEOUT)
    return exc.value.args[0].code()


def test_admin_topics_and_configs(broker):
    name = unique_topic("ckadm")
    adm = admin(broker)
    kw = {"operation_timeout": OP_TIMEOUT, "request_timeout": OP_TIMEOUT}

    fs = adm.create_topics([NewTopic(name, 3, 1)], validate_only=True, **kw)
    fs[name].result(timeout=OP_TIMEOUT)
    assert name not in adm.list_topics(timeout=10).topics

    fs = adm.create_topics([NewTopic(name, 3, 1, config={"retention.ms": "3600000",
                                                          "segment.bytes": "1048576"})], **kw)
    fs[name].result(timeout=OP_TIMEOUT)
    wait_until(lambda: name in adm.list_topics(timeout=5).topics, timeout=OP_TIMEOUT,
               message="topic creation")
    fs = adm.create_topics([NewTopic(name, 1, 1)], **kw)
    assert _kafka_error_code(fs[name]) == KafkaError.TOPIC_ALREADY_EXISTS

    desc = adm.describe_topics(TopicCollection([name]), request_timeout=OP_TIMEOUT)[name]
    assert len(desc.result(timeout=OP_TIMEOUT).partitions) == 3

    cfg = _configs(adm, name)
    assert cfg["retention.ms"].value == "3600000"
    assert cfg["segment.bytes"].value == "1048576"
    assert not cfg["retention.ms"].is_default

    # Incremental SET and DELETE.
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    adm.incremental_alter_configs([res], request_timeout=OP_TIMEOUT)[res].result(timeout=OP_TIMEOUT)
    cfg = _configs(adm, name)
    assert cfg["retention.ms"].value == "7200000"
    assert cfg["segment.bytes"].is_default, cfg["segment.bytes"]

    # Legacy AlterConfigs replaces the whole set of topic overrides.
    res = ConfigResource(ResourceType.TOPIC, name, set_config={"retention.bytes": "2097152"})
    adm.alter_configs([res], request_timeout=OP_TIMEOUT)[res].result(timeout=OP_TIMEOUT)
    cfg = _configs(adm, name)
    assert cfg["retention.bytes"].value == "2097152"
    assert cfg["retention.ms"].is_default, "AlterConfigs must reset unspecified overrides"

    # Invalid value is rejected.
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET)])
    assert _kafka_error_code(adm.incremental_alter_configs([res], request_timeout=OP_TIMEOUT)[res]) \
        == KafkaError.INVALID_CONFIG

    fs = adm.create_partitions([NewPartitions(name, 5)], **kw)
    fs[name].result(timeout=OP_TIMEOUT)
    wait_until(lambda: len(adm.list_topics(name, timeout=5).topics[name].partitions) == 5,
               timeout=OP_TIMEOUT, message="5 partitions")
    fs = adm.create_partitions([NewPartitions(name, 4)], **kw)
    assert _kafka_error_code(fs[name]) == KafkaError.INVALID_PARTITIONS

    cluster = adm.describe_cluster(request_timeout=OP_TIMEOUT).result(timeout=OP_TIMEOUT)
    assert [n.id for n in cluster.nodes] == [broker.node_id]
    assert cluster.controller is not None

    fs = adm.delete_topics([name], **kw)
    fs[name].result(timeout=OP_TIMEOUT)
    wait_until(lambda: name not in adm.list_topics(timeout=5).topics, timeout=OP_TIMEOUT,
               message="topic deletion")
    fs = adm.delete_topics([name], **kw)
    assert _kafka_error_code(fs[name]) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_admin_delete_records(broker, topic):
    create_topic(broker, topic)
    assert not produce_all(producer(broker), topic, sample_records(10)).errors
    adm = admin(broker)
    tp = TopicPartition(topic, 0, 6)
    res = adm.delete_records([tp], request_timeout=OP_TIMEOUT, operation_timeout=OP_TIMEOUT)
    deleted = res[tp].result(timeout=OP_TIMEOUT)
    assert deleted.low_watermark == 6
    got = consume_all(broker, topic, 4)
    assert [m.offset() for m in got] == [6, 7, 8, 9]
    info = adm.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()},
                            request_timeout=OP_TIMEOUT)[TopicPartition(topic, 0)].result(OP_TIMEOUT)
    assert info.offset == 6


def test_log_append_time_topic(broker, topic):
    create_topic(broker, topic, config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    dr = produce_all(producer(broker), topic,
                     [{"key": b"k", "value": b"lat", "timestamp": 1_000_000_000_000}])
    after = int(time.time() * 1000)
    assert not dr.errors and len(dr.ok) == 1
    ts_type, ts = dr.ok[0].timestamp()
    assert ts_type == TIMESTAMP_LOG_APPEND_TIME and before - 1000 <= ts <= after + 1000, \
        f"delivery report timestamp {(ts_type, ts)} is not LogAppendTime in [{before}, {after}]"
    got = consume_all(broker, topic, 1)
    ts_type, ts = got[0].timestamp()
    assert ts_type == TIMESTAMP_LOG_APPEND_TIME
    assert before - 1000 <= ts <= after + 1000, f"consumed timestamp {ts} not broker time"


def test_data_survives_kill9_and_restart(make_broker):
    b = make_broker()
    name = unique_topic("ckkill")
    create_topic(b, name, partitions=2)
    records = sample_records(2000)
    prod = producer(b, acks="all", **{"linger.ms": 5})
    for p in (0, 1):
        assert not produce_all(prod, name, records, partition=p).errors
    b.kill9()
    b.start()
    got = consume_all(b, name, 2 * len(records), partitions=(0, 1), timeout=60)
    for p in (0, 1):
        assert_same_records(records, [as_dict(m) for m in got if m.partition() == p],
                            what=f"partition {p} after kill -9")
