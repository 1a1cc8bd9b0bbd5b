"""Broker-side behaviour seen through the wire: long-poll timing, broker
configuration flags, retention."""

from __future__ import annotations

import os
import threading
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as Errors

import kafka_wire as w
from group_helpers import metric_value
from helpers import create_topic, kp_admin, unique_topic, wait_until


def test_fetch_waits_for_max_wait_on_empty_partition(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        t0 = time.monotonic()
        res = w.fetch_v4(conn, topic, 0, 0, max_wait_ms=1500)
        waited = time.monotonic() - t0
    part = res[topic][0]
    assert part["error_code"] == 0 and part["records"] == b"", part
    assert 1.2 <= waited <= 5.0, f"empty fetch with max_wait 1500 ms returned after {waited:.2f}s"


def test_fetch_returns_as_soon_as_data_arrives(broker, topic):
    create_topic(broker.bootstrap, topic)
    result = {}

    def fetch():
        with w.Conn(broker.port, timeout=30) as conn:
            result["res"] = w.fetch_v4(conn, topic, 0, 0, max_wait_ms=10000)
            result["at"] = time.monotonic()

    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    time.sleep(1.0)
    with w.Conn(broker.port) as conn:
        sent = time.monotonic()
        res = w.produce_v3(conn, topic, 0, w.record_batch([(b"k", b"v")]), acks=1)
    assert res[topic][0]["error_code"] == 0
    t.join(15)
    assert "res" in result, "fetch did not return within 15 s"
    part = result["res"][topic][0]
    assert part["error_code"] == 0 and part["high_watermark"] == 1 and part["records"], part
    assert result["at"] - sent < 2.0, f"fetch returned {result['at'] - sent:.2f}s after produce"


def test_fetch_min_bytes_holds_until_enough_data(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        w.produce_v3(conn, topic, 0, w.record_batch([(b"k", b"v")]), acks=1)
        t0 = time.monotonic()
        res = w.fetch_v4(conn, topic, 0, 0, max_wait_ms=1500, min_bytes=1 << 20)
        waited = time.monotonic() - t0
    part = res[topic][0]
    assert part["error_code"] == 0 and part["records"], part
    assert waited >= 1.2, f"fetch with unmet min_bytes returned after {waited:.2f}s"


def test_fetch_offset_out_of_range(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        res = w.fetch_v4(conn, topic, 0, 1000, max_wait_ms=100)
    assert res[topic][0]["error_code"] == w.ERR_OFFSET_OUT_OF_RANGE, res


def test_produce_unknown_partition(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 7, w.record_batch([(b"k", b"v")]))
    assert res[topic][0]["error_code"] == w.ERR_UNKNOWN_TOPIC_OR_PARTITION, res


def test_auto_create_disabled(make_broker):
    b = make_broker("--auto-create-topics-enable", "false")
    name = unique_topic("noauto")
    with w.Conn(b.port) as conn:
        md = w.metadata_v1(conn, [name])
        assert md["topics"][0]["error_code"] == w.ERR_UNKNOWN_TOPIC_OR_PARTITION, md
        res = w.produce_v3(conn, name, 0, w.record_batch([(b"k", b"v")]))
        assert res[name][0]["error_code"] == w.ERR_UNKNOWN_TOPIC_OR_PARTITION, res
        md = w.metadata_v1(conn, None)
    assert name not in [t["name"] for t in md["topics"]]
    prod = KafkaProducer(bootstrap_servers=b.bootstrap, max_block_ms=3000)
    try:
        with pytest.raises(Errors.KafkaTimeoutError):
            prod.send(name, value=b"v").get(timeout=10)
    finally:
        prod.close(timeout=5)


def test_num_partitions_default_for_auto_created_topics(make_broker):
    b = make_broker("--num-partitions", "3")
    name = unique_topic("auto3")
    with w.Conn(b.port) as conn:
        md = wait_until(lambda: (lambda m: m if m["topics"][0]["error_code"] == 0 else None)(
            w.metadata_v1(conn, [name])), timeout=10, message="auto-created topic")
    assert len(md["topics"][0]["partitions"]) == 3, md


def test_broker_message_max_bytes_and_topic_override(make_broker):
    b = make_broker("--message-max-bytes", "2000")
    small_default = unique_topic("mmb")
    override = unique_topic("mmbo")
    create_topic(b.bootstrap, small_default)
    create_topic(b.bootstrap, override, configs={"max.message.bytes": 20000})
    batch = w.record_batch([(None, b"x" * 4000)])
    with w.Conn(b.port) as conn:
        res = w.produce_v3(conn, small_default, 0, batch)
        assert res[small_default][0]["error_code"] == w.ERR_MESSAGE_TOO_LARGE, res
        res = w.produce_v3(conn, override, 0, batch)
        assert res[override][0]["error_code"] == 0, res


def _earliest(bootstrap, topic, partition=0):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, partition)
        return c.beginning_offsets([tp], timeout_ms=10000)[tp]
    finally:
        c.close(autocommit=False)


def test_time_and_size_retention(make_broker):
    b = make_broker("--log-retention-check-interval-ms", "300")
    by_time = unique_topic("rtime")
    by_size = unique_topic("rsize")
    create_topic(b.bootstrap, by_time, configs={"retention.ms": 60000, "segment.bytes": 1024})
    create_topic(b.bootstrap, by_size, configs={"retention.bytes": 4096, "segment.bytes": 1024})
    old = int(time.time() * 1000) - 3_600_000
    prod = KafkaProducer(bootstrap_servers=b.bootstrap, acks="all", linger_ms=0, batch_size=300)
    try:
        for i in range(100):
            prod.send(by_time, value=b"t" * 200, partition=0, timestamp_ms=old + i)
            prod.send(by_size, value=b"s" * 200, partition=0)
            if i % 10 == 9:
                prod.flush(timeout=10)
        prod.flush(timeout=10)
    finally:
        prod.close(timeout=5)
    wait_until(lambda: _earliest(b.bootstrap, by_time) > 0, timeout=20,
               message="time retention to delete old segments")
    wait_until(lambda: _earliest(b.bootstrap, by_size) > 50, timeout=20,
               message="size retention to delete old segments")
    # End offsets are unaffected by retention.
    c = KafkaConsumer(bootstrap_servers=b.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        ends = c.end_offsets([TopicPartition(by_time, 0), TopicPartition(by_size, 0)], timeout_ms=10000)
    finally:
        c.close(autocommit=False)
    assert sorted(ends.values()) == [100, 100]


def test_retention_frees_the_disk_space_of_an_idle_topic(make_broker):
    """Batches are kept in blob files apart from their keys, and a blob file goes once
    every batch in it was deleted: at a compaction that meets the deleted keys. Time
    retention mostly deletes from topics nobody writes to any more, where no such
    compaction would come; retention compacts what it deleted, so the space comes back."""
    from kafka.admin import ConfigResource, ConfigResourceType

    # Small memtables: batches reach blob files after a megabyte, not 128 MiB.
    b = make_broker("--log-retention-check-interval-ms", "300",
                    "--log-memtable-bytes", str(4 << 20))
    topic = unique_topic("rfree")
    create_topic(b.bootstrap, topic, configs={"retention.ms": -1, "segment.bytes": 1 << 20})
    old = int(time.time() * 1000) - 3_600_000
    value = os.urandom(1000)
    prod = KafkaProducer(bootstrap_servers=b.bootstrap, acks=1, linger_ms=5,
                         batch_size=64 << 10)
    try:
        for i in range(40_000):
            prod.send(topic, value=value, partition=0, timestamp_ms=old + i)
        prod.flush(timeout=60)
    finally:
        prod.close(timeout=5)

    def stored_files():
        return sum(f.stat().st_size for f in b.data_dir.iterdir()
                   if f.suffix in (".blob", ".sst"))

    # Flushed to files: everything but the (at most four) 1 MiB memtables.
    wait_until(lambda: stored_files() > 30_000_000, timeout=30,
               message="the records to reach blob and SST files")
    adm = kp_admin(b.bootstrap)
    try:
        out = adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                configs={"retention.ms": "60000"})])
        assert out["topic"][topic] == "OK", out
    finally:
        adm.close()
    wait_until(lambda: _earliest(b.bootstrap, topic) == 40_000, timeout=30,
               message="time retention to delete every segment")
    wait_until(lambda: stored_files() < 4 << 20, timeout=30,
               message="blob and SST files of deleted batches to be removed")
    assert metric_value(b, "riffle_storage_bytes", cf="log") < 8 << 20


def test_validate_only_create_reports_invalid_config(broker):
    adm = kp_admin(broker.bootstrap)
    name = unique_topic("badcfg")
    try:
        with pytest.raises(Errors.InvalidConfigurationError):
            adm.create_topics({name: {"num_partitions": 1, "replication_factor": 1,
                                      "configs": {"cleanup.policy": "bogus"}}})
        with pytest.raises(Errors.InvalidConfigurationError):
            adm.create_topics({name: {"num_partitions": 1, "replication_factor": 1,
                                      "configs": {"compression.type": "brotli"}}})
        assert name not in adm.list_topics()
    finally:
        adm.close()


def test_fetch_returns_first_batch_even_if_larger_than_max_bytes(broker, topic):
    """KIP-74: the first record batch is returned even when it exceeds the
    fetch size limits, so consumers cannot get stuck."""
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, w.record_batch([(None, b"x" * 5000)]))
        assert res[topic][0]["error_code"] == 0, res
        res = w.fetch_v4(conn, topic, 0, 0, max_wait_ms=100, max_bytes=1000)
    part = res[topic][0]
    assert part["error_code"] == 0 and len(part["records"]) > 5000, \
        f"expected the whole 5 KB batch, got {len(part['records'])} bytes"
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                      max_partition_fetch_bytes=1000, fetch_max_bytes=1000)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
    finally:
        c.close(autocommit=False)
    assert [len(r.value) for r in got] == [5000]


@pytest.mark.parametrize("codec", [None, "gzip", "zstd"])
def test_consume_from_middle_of_a_batch(broker, topic, codec):
    create_topic(broker.bootstrap, topic)
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200, compression_type=codec)
    try:
        futs = [prod.send(topic, value=str(i).encode(), partition=0) for i in range(10)]
        prod.flush(timeout=10)
        assert [f.get(timeout=10).offset for f in futs] == list(range(10))
    finally:
        prod.close(timeout=5)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 5)
        got = []
        deadline = time.monotonic() + 15
        while len(got) < 5 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
    finally:
        c.close(autocommit=False)
    assert [(r.offset, r.value) for r in got] == [(i, str(i).encode()) for i in range(5, 10)]


def test_create_topics_errors(broker):
    adm = kp_admin(broker.bootstrap)
    try:
        res = adm.create_topics({"bad name!": {"num_partitions": 1, "replication_factor": 1}},
                                raise_errors=False)
        assert res["topics"][0]["error_code"] == Errors.InvalidTopicError.errno, res
        res = adm.create_topics({unique_topic("p0"): {"num_partitions": 0, "replication_factor": 1}},
                                raise_errors=False)
        assert res["topics"][0]["error_code"] == Errors.InvalidPartitionsError.errno, res
        res = adm.create_topics({unique_topic("rf2"): {"num_partitions": 1, "replication_factor": 2}},
                                raise_errors=False)
        assert res["topics"][0]["error_code"] == Errors.InvalidReplicationFactorError.errno, res
    finally:
        adm.close()


def test_delete_records_beyond_high_watermark(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        w.produce_v3(conn, topic, 0, w.record_batch([(None, b"a"), (None, b"b")]))
    adm = kp_admin(broker.bootstrap)
    try:
        with pytest.raises(Errors.OffsetOutOfRangeError):
            adm.delete_records({TopicPartition(topic, 0): 5})
        res = adm.delete_records({TopicPartition(topic, 0): -1})  # -1: up to the high watermark
        assert res[TopicPartition(topic, 0)]["low_watermark"] == 2
    finally:
        adm.close()


def test_list_offsets_on_empty_partition(broker, topic):
    create_topic(broker.bootstrap, topic)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        assert c.offsets_for_times({tp: 0}, timeout_ms=10000)[tp] is None
        assert c.beginning_offsets([tp], timeout_ms=10000) == {tp: 0}
        assert c.end_offsets([tp], timeout_ms=10000) == {tp: 0}
    finally:
        c.close(autocommit=False)


def test_recreate_deleted_topic_starts_empty(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        w.produce_v3(conn, topic, 0, w.record_batch([(None, b"old")]))
    adm = kp_admin(broker.bootstrap)
    try:
        adm.delete_topics([topic])
        wait_until(lambda: topic not in adm.list_topics(), timeout=10, message="deletion")
    finally:
        adm.close()
    create_topic(broker.bootstrap, topic, partitions=2)
    with w.Conn(broker.port) as conn:
        res = w.fetch_v4(conn, topic, 0, 0, max_wait_ms=100)
        assert res[topic][0]["error_code"] == 0 and res[topic][0]["high_watermark"] == 0, res
        res = w.produce_v3(conn, topic, 0, w.record_batch([(None, b"new")]))
        assert res[topic][0]["base_offset"] == 0, res


def test_idempotent_produce_retry_is_deduplicated(broker, topic):
    """A retried idempotent batch (same producer id, epoch, sequence) is not
    appended twice; a sequence gap is rejected."""
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        pid = w.init_producer_id_v0(conn)
        assert pid["error_code"] == 0 and pid["producer_id"] >= 0, pid
        ident = {"producer_id": pid["producer_id"], "producer_epoch": pid["producer_epoch"]}
        first = w.record_batch([(None, b"a"), (None, b"b")], base_sequence=0, **ident)
        res = w.produce_v3(conn, topic, 0, first)
        assert res[topic][0]["error_code"] == 0 and res[topic][0]["base_offset"] == 0, res
        # The same batch again, as a client retry after a lost response.
        res = w.produce_v3(conn, topic, 0, first)
        assert res[topic][0]["error_code"] in (0, w.ERR_DUPLICATE_SEQUENCE), res
        if res[topic][0]["error_code"] == 0:
            assert res[topic][0]["base_offset"] == 0, f"retry was appended again: {res}"
        res = w.produce_v3(conn, topic, 0, w.record_batch([(None, b"c")], base_sequence=2, **ident))
        assert res[topic][0]["error_code"] == 0 and res[topic][0]["base_offset"] == 2, res
        res = w.produce_v3(conn, topic, 0, w.record_batch([(None, b"gap")], base_sequence=10, **ident))
        assert res[topic][0]["error_code"] == w.ERR_OUT_OF_ORDER_SEQUENCE, res
        res = w.fetch_v4(conn, topic, 0, 0, max_wait_ms=100)
    assert res[topic][0]["high_watermark"] == 3, res


def test_min_insync_replicas_above_cluster_size(broker, topic):
    create_topic(broker.bootstrap, topic, configs={"min.insync.replicas": 2})
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, w.record_batch([(None, b"x")]), acks=-1)
        assert res[topic][0]["error_code"] == w.ERR_NOT_ENOUGH_REPLICAS, res
        res = w.produce_v3(conn, topic, 0, w.record_batch([(None, b"y")]), acks=1)
        assert res[topic][0]["error_code"] == 0 and res[topic][0]["base_offset"] == 0, res


@pytest.mark.parametrize("codec", ["gzip", "lz4"])
def test_log_append_time_with_compressed_batches(broker, topic, codec):
    create_topic(broker.bootstrap, topic, configs={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type=codec, linger_ms=50)
    try:
        for i in range(20):
            prod.send(topic, value=f"v{i}".encode(), partition=0, timestamp_ms=1_000_000_000_000 + i)
        prod.flush(timeout=10)
    finally:
        prod.close(timeout=5)
    after = int(time.time() * 1000)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got = []
        deadline = time.monotonic() + 15
        while len(got) < 20 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
    finally:
        c.close(autocommit=False)
    assert len(got) == 20
    for r in got:
        assert r.timestamp_type == 1 and before - 1000 <= r.timestamp <= after + 1000, r


def test_offset_for_leader_epoch(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        w.produce_v3(conn, topic, 0, w.record_batch([(None, b"a"), (None, b"b"), (None, b"c")]))
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
    finally:
        c.close(autocommit=False)
    epoch = got[0].leader_epoch
    assert epoch is not None and epoch >= 0, got[0]
    with w.Conn(broker.port) as conn:
        res = w.offset_for_leader_epoch_v3(conn, topic, 0, epoch)
        part = res[topic][0]
        assert part["error_code"] == 0 and part["leader_epoch"] == epoch and part["end_offset"] == 3, res
        res = w.offset_for_leader_epoch_v3(conn, topic, 9, epoch)
        assert res[topic][0]["error_code"] == w.ERR_UNKNOWN_TOPIC_OR_PARTITION, res


def test_one_megabyte_record_with_default_limits(broker, topic):
    create_topic(broker.bootstrap, topic)
    value = bytes(range(256)) * 3900  # 998,400 bytes: under the 1 MiB default limits
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, w.record_batch([(b"big", value)]))
    assert res[topic][0]["error_code"] == 0, res
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
    finally:
        c.close(autocommit=False)
    assert len(got) == 1 and got[0].value == value


def test_many_partitions_and_connections(broker, topic):
    from confluent_kafka import Producer

    create_topic(broker.bootstrap, topic, partitions=64)
    prod = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                     "linger.ms": 5})
    for p in range(64):
        prod.produce(topic, value=f"p{p}".encode(), partition=p)
    assert prod.flush(30) == 0
    conns = [w.Conn(broker.port) for _ in range(50)]
    try:
        for conn in conns:
            conn.send(w.frame(w.request_header_v1(w.API_API_VERSIONS, 0, 3)))
        for conn in conns:
            r = w.Reader(conn.recv_frame())
            assert r.i32() == 3 and r.i16() == 0
    finally:
        for conn in conns:
            conn.close()
    with w.Conn(broker.port) as conn:
        for p in range(64):
            res = w.fetch_v4(conn, topic, p, 0, max_wait_ms=100)
            assert res[topic][0]["high_watermark"] == 1, (p, res)


def test_altered_topic_config_applies_immediately(broker, topic):
    from kafka.admin import ConfigResource, ConfigResourceType

    create_topic(broker.bootstrap, topic, configs={"max.message.bytes": 1024})
    batch = w.record_batch([(None, b"x" * 4000)])
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, batch)
        assert res[topic][0]["error_code"] == w.ERR_MESSAGE_TOO_LARGE, res
        adm = kp_admin(broker.bootstrap)
        try:
            out = adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                    configs={"max.message.bytes": "100000",
                                                             "message.timestamp.type": "LogAppendTime"})])
            assert out["topic"][topic] == "OK", out
        finally:
            adm.close()
        res = w.produce_v3(conn, topic, 0, batch)
        assert res[topic][0]["error_code"] == 0, res
        assert res[topic][0]["log_append_time"] > 0, f"LogAppendTime not applied: {res}"
