"""Compatibility with aiokafka (asyncio client, its own protocol stack)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from helpers import assert_same_records, compressible_records, create_topic, sample_records


def run(coro, timeout=90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _produce(bootstrap, topic, records, partition=0, **config):
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=15000, **config)
    await prod.start()
    try:
        futs = [await prod.send(topic, key=r["key"], value=r["value"],
                                headers=r["headers"], partition=partition,
                                timestamp_ms=r.get("timestamp")) for r in records]
        await prod.flush()
        return [await f for f in futs]
    finally:
        await prod.stop()


async def _consume(bootstrap, topic, expected, partition=0, timeout=30.0):
    cons = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                            enable_auto_commit=False, auto_offset_reset="earliest")
    await cons.start()
    try:
        tp = TopicPartition(topic, partition)
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for recs in (await cons.getmany(timeout_ms=500)).values():
                got.extend(recs)
        return got
    finally:
        await cons.stop()


def as_dict(r):
    return {"key": r.key, "value": r.value, "headers": list(r.headers or [])}


def test_round_trip_keys_headers_nulls(broker, topic):
    create_topic(broker.bootstrap, topic)
    records = sample_records(100)
    metas = run(_produce(broker.bootstrap, topic, records))
    assert [m.offset for m in metas] == list(range(100))
    got = run(_consume(broker.bootstrap, topic, 100))
    assert_same_records(records, [as_dict(r) for r in got])


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, topic, codec):
    create_topic(broker.bootstrap, topic)
    records = compressible_records(200, prefix=codec)
    run(_produce(broker.bootstrap, topic, records, compression_type=codec, linger_ms=20))
    got = run(_consume(broker.bootstrap, topic, 200))
    assert_same_records(records, [as_dict(r) for r in got], what=codec)


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks(broker, topic, acks):
    create_topic(broker.bootstrap, topic)
    records = sample_records(100, prefix=f"a{acks}")
    run(_produce(broker.bootstrap, topic, records, acks=acks))
    got = run(_consume(broker.bootstrap, topic, 100))
    assert_same_records(records, [as_dict(r) for r in got], what=f"acks={acks}")


def test_idempotent_producer_no_duplicates(broker, topic):
    create_topic(broker.bootstrap, topic)
    records = [{"key": None, "value": str(i).encode(), "headers": []} for i in range(3000)]
    metas = run(_produce(broker.bootstrap, topic, records, enable_idempotence=True,
                         max_batch_size=1024))
    assert [m.offset for m in metas] == list(range(3000))
    got = run(_consume(broker.bootstrap, topic, 3000))
    assert [int(r.value) for r in got] == list(range(3000))


def test_message_too_large_rejected_then_next_accepted(broker, topic):
    create_topic(broker.bootstrap, topic, configs={"max.message.bytes": 1024})

    async def go():
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=10_000_000,
                                acks="all")
        await prod.start()
        try:
            with pytest.raises(MessageSizeTooLargeError):
                await prod.send_and_wait(topic, value=b"x" * 4000, partition=0)
            return await prod.send_and_wait(topic, value=b"small", partition=0)
        finally:
            await prod.stop()

    meta = run(go())
    assert meta.offset == 0
    got = run(_consume(broker.bootstrap, topic, 1))
    assert [r.value for r in got] == [b"small"]


def test_list_offsets(broker, topic):
    create_topic(broker.bootstrap, topic)
    base = int(time.time() * 1000) - 60_000
    run(_produce(broker.bootstrap, topic, [
        {"key": None, "value": b"x", "headers": [], "timestamp": base + i * 1000} for i in range(3)]))

    async def go():
        cons = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                                enable_auto_commit=False)
        await cons.start()
        try:
            tp = TopicPartition(topic, 0)
            by_time = await cons.offsets_for_times({tp: base + 500})
            return (by_time[tp], await cons.beginning_offsets([tp]), await cons.end_offsets([tp]), tp)
        finally:
            await cons.stop()

    by_time, begin, end, tp = run(go())
    assert by_time.offset == 1 and by_time.timestamp == base + 1000
    assert begin == {tp: 0} and end == {tp: 3}
