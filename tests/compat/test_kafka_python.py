"""Compatibility with kafka-python (pure-Python client)."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, OffsetSpec
from kafka import errors as Errors

from helpers import (
    assert_same_records, compressible_records, create_topic, kp_consume_all,
    kp_record_dict, sample_records, unique_topic, wait_until,
)

BIG = 10 * 1024 * 1024


def producer(broker, **config):
    config.setdefault("client_id", "riffle-compat-kp")
    config.setdefault("request_timeout_ms", 15000)
    config.setdefault("delivery_timeout_ms", 30000)
    config.setdefault("max_block_ms", 20000)
    if config.get("acks", -1) not in (-1, "all"):
        config.setdefault("enable_idempotence", False)
    return KafkaProducer(bootstrap_servers=broker.bootstrap, **config)


def admin(broker):
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="riffle-compat-kp-admin",
                            request_timeout_ms=20000)


def send_all(prod, topic, records, partition=0, timeout=30):
    futures = [prod.send(topic, key=r["key"], value=r["value"], headers=r["headers"],
                         partition=partition) for r in records]
    prod.flush(timeout=timeout)
    return [f.get(timeout=timeout) for f in futures]


def test_round_trip_keys_headers_nulls(broker, topic):
    create_topic(broker.bootstrap, topic)
    records = sample_records(120)
    with_closing = producer(broker)
    try:
        metas = send_all(with_closing, topic, records)
    finally:
        with_closing.close(timeout=10)
    assert [m.offset for m in metas] == list(range(len(records)))
    got = kp_consume_all(broker.bootstrap, topic, len(records))
    assert [r.offset for r in got] == list(range(len(records)))
    assert_same_records(records, [kp_record_dict(r) for r in got])


def test_auto_create_topic_on_produce(broker, topic):
    prod = producer(broker)
    try:
        meta = prod.send(topic, key=b"k", value=b"auto").get(timeout=30)
    finally:
        prod.close(timeout=10)
    assert meta.offset == 0
    got = kp_consume_all(broker.bootstrap, topic, 1)
    assert [(r.key, r.value) for r in got] == [(b"k", b"auto")]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, topic, codec):
    create_topic(broker.bootstrap, topic)
    records = compressible_records(300, prefix=codec)
    prod = producer(broker, compression_type=codec, linger_ms=20, batch_size=256 * 1024)
    try:
        send_all(prod, topic, records)
    finally:
        prod.close(timeout=10)
    got = kp_consume_all(broker.bootstrap, topic, len(records))
    assert [r.offset for r in got] == list(range(len(records)))
    assert_same_records(records, [kp_record_dict(r) for r in got], what=codec)


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks(broker, topic, acks):
    create_topic(broker.bootstrap, topic)
    records = sample_records(200, prefix=f"acks{acks}")
    prod = producer(broker, acks=acks)
    try:
        metas = send_all(prod, topic, records)
    finally:
        prod.close(timeout=10)
    if acks != 0:
        assert [m.offset for m in metas] == list(range(len(records)))
    got = kp_consume_all(broker.bootstrap, topic, len(records))
    assert_same_records(records, [kp_record_dict(r) for r in got], what=f"acks={acks}")


def test_idempotent_producer_no_duplicates(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=2)
    n = 4000
    prod = producer(broker, enable_idempotence=True, acks="all", retries=10,
                    max_in_flight_requests_per_connection=5, linger_ms=0, batch_size=2048)
    try:
        futures = [prod.send(topic, key=str(i % 2).encode(), value=str(i).encode(),
                             partition=i % 2) for i in range(n)]
        prod.flush(timeout=60)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        prod.close(timeout=10)
    for p in (0, 1):
        assert sorted(m.offset for m in metas if m.partition == p) == list(range(n // 2))
    got = kp_consume_all(broker.bootstrap, topic, n, partitions=(0, 1), timeout=60)
    for p in (0, 1):
        values = [int(r.value) for r in got if r.partition == p]
        assert values == list(range(p, n, 2)), f"partition {p}: duplicates or reordering"


def test_message_too_large_rejected_then_next_accepted(broker, topic):
    create_topic(broker.bootstrap, topic, configs={"max.message.bytes": 1024})
    # Raise the client-side limit so only the broker can reject the record.
    prod = producer(broker, max_request_size=BIG, acks="all", retries=0)
    try:
        big = prod.send(topic, value=b"x" * 4000, partition=0)
        with pytest.raises(Errors.MessageSizeTooLargeError):
            big.get(timeout=30)
        small = prod.send(topic, value=b"small", partition=0).get(timeout=30)
    finally:
        prod.close(timeout=10)
    assert small.offset == 0
    got = kp_consume_all(broker.bootstrap, topic, 1)
    assert [r.value for r in got] == [b"small"]


def test_fetch_long_poll_wakes_on_new_data(broker, topic):
    create_topic(broker.bootstrap, topic)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=15000,
                             request_timeout_ms=40000, client_id="riffle-compat-longpoll")
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    received = {}

    def poll():
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and "at" not in received:
            for recs in consumer.poll(timeout_ms=1000).values():
                if recs:
                    received["at"] = time.monotonic()
                    received["value"] = recs[0].value

    try:
        # Let the consumer settle into a long-poll fetch on the empty partition.
        consumer.poll(timeout_ms=500)
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        time.sleep(2.0)
        prod = producer(broker, acks=1)
        try:
            sent_at = time.monotonic()
            prod.send(topic, value=b"wake-up", partition=0).get(timeout=10)
        finally:
            prod.close(timeout=10)
        thread.join(30)
    finally:
        consumer.close(autocommit=False)
    assert received.get("value") == b"wake-up"
    latency = received["at"] - sent_at
    assert latency < 5.0, f"long-poll fetch returned {latency:.2f}s after produce (max wait 15s)"


def test_list_offsets_by_time_and_earliest_latest(broker, topic):
    create_topic(broker.bootstrap, topic)
    base = int(time.time() * 1000) - 60_000
    prod = producer(broker)
    try:
        for i in range(3):
            prod.send(topic, value=f"ts{i}".encode(), partition=0, timestamp_ms=base + i * 1000)
        prod.flush(timeout=30)
    finally:
        prod.close(timeout=10)
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False)
    try:
        res = consumer.offsets_for_times({tp: base + 500}, timeout_ms=20000)
        assert res[tp] is not None and res[tp].offset == 1 and res[tp].timestamp == base + 1000
        res = consumer.offsets_for_times({tp: base}, timeout_ms=20000)
        assert res[tp].offset == 0 and res[tp].timestamp == base
        res = consumer.offsets_for_times({tp: base + 10_000}, timeout_ms=20000)
        assert res[tp] is None
        assert consumer.beginning_offsets([tp], timeout_ms=20000) == {tp: 0}
        assert consumer.end_offsets([tp], timeout_ms=20000) == {tp: 3}
    finally:
        consumer.close(autocommit=False)
    adm = admin(broker)
    try:
        res = adm.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})
        assert res[tp].offset == 2 and res[tp].timestamp == base + 2000
        res = adm.list_partition_offsets({tp: OffsetSpec.EARLIEST})
        assert res[tp].offset == 0
        res = adm.list_partition_offsets({tp: OffsetSpec.LATEST})
        assert res[tp].offset == 3
    finally:
        adm.close()


def _topic_config(adm, topic, key):
    res = adm.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    return res["topic"][topic][key]["value"]


def test_admin_topics_and_configs(broker):
    name = unique_topic("kpadm")
    adm = admin(broker)
    try:
        # validate_only must not create the topic.
        adm.create_topics({name: {"num_partitions": 3, "replication_factor": 1}}, validate_only=True)
        assert name not in adm.list_topics()

        adm.create_topics({name: {"num_partitions": 3, "replication_factor": 1,
                                  "configs": {"retention.ms": "3600000",
                                              "cleanup.policy": "delete"}}})
        wait_until(lambda: name in adm.list_topics(), timeout=20, message="topic creation")
        desc = adm.describe_topics([name])[0]
        assert desc["error_code"] == 0 and len(desc["partitions"]) == 3

        with pytest.raises(Errors.TopicAlreadyExistsError):
            adm.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})

        assert _topic_config(adm, name, "retention.ms") == "3600000"
        modified = adm.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        assert "retention.ms" in modified["topic"][name]

        # IncrementalAlterConfigs (kafka-python's default when the broker supports it).
        res = adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                                configs={"retention.ms": "7200000"})])
        assert res["topic"][name] == "OK"
        assert _topic_config(adm, name, "retention.ms") == "7200000"
        # Legacy AlterConfigs.
        res = adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                                configs={"retention.bytes": "1048576"})],
                                incremental=False)
        assert res["topic"][name] == "OK"
        assert _topic_config(adm, name, "retention.bytes") == "1048576"
        # Unknown config key is rejected by the broker.
        res = adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                                configs={"no.such.config": "1"})],
                                raise_on_unknown=False)
        assert res["topic"][name] != "OK"

        adm.create_partitions({name: 5})
        wait_until(lambda: len(adm.describe_topics([name])[0]["partitions"]) == 5,
                   timeout=20, message="partition count 5")
        with pytest.raises(Errors.InvalidPartitionsError):
            adm.create_partitions({name: 2})

        cluster = adm.describe_cluster()
        assert [b["broker_id"] for b in cluster["brokers"]] == [broker.node_id]

        adm.delete_topics([name])
        wait_until(lambda: name not in adm.list_topics(), timeout=20, message="topic deletion")
        with pytest.raises(Errors.UnknownTopicOrPartitionError):
            adm.delete_topics([name])
    finally:
        adm.close()


def test_admin_delete_records(broker, topic):
    create_topic(broker.bootstrap, topic)
    prod = producer(broker)
    try:
        send_all(prod, topic, sample_records(10))
    finally:
        prod.close(timeout=10)
    tp = TopicPartition(topic, 0)
    adm = admin(broker)
    try:
        res = adm.delete_records({tp: 6})
        assert res[tp]["low_watermark"] == 6
    finally:
        adm.close()
    got = kp_consume_all(broker.bootstrap, topic, 4)
    assert [r.offset for r in got] == [6, 7, 8, 9]


def test_log_append_time_topic(broker, topic):
    create_topic(broker.bootstrap, topic, configs={"message.timestamp.type": "LogAppendTime"})
    old_ts = 1_000_000_000_000  # 2001
    before = int(time.time() * 1000)
    prod = producer(broker)
    try:
        meta = prod.send(topic, value=b"lat", partition=0, timestamp_ms=old_ts).get(timeout=30)
    finally:
        prod.close(timeout=10)
    after = int(time.time() * 1000)
    assert before - 1000 <= meta.timestamp <= after + 1000, \
        f"produce response log_append_time {meta.timestamp} not in [{before}, {after}]"
    got = kp_consume_all(broker.bootstrap, topic, 1)
    assert len(got) == 1
    rec = got[0]
    assert rec.timestamp_type == 1, "record should carry LogAppendTime timestamp type"
    assert before - 1000 <= rec.timestamp <= after + 1000, \
        f"consumed timestamp {rec.timestamp} is not the broker's append time"


def test_data_survives_kill9_and_restart(make_broker):
    b = make_broker()
    name = unique_topic("kpkill")
    create_topic(b.bootstrap, name, partitions=2)
    records = sample_records(500)
    prod = producer(b, acks="all")
    try:
        for p in (0, 1):
            send_all(prod, name, records, partition=p)
    finally:
        prod.close(timeout=10)
    b.kill9()
    b.start()
    got = kp_consume_all(b.bootstrap, name, 2 * len(records), partitions=(0, 1), timeout=60)
    for p in (0, 1):
        part = [kp_record_dict(r) for r in got if r.partition == p]
        assert_same_records(records, part, what=f"partition {p} after kill -9")
