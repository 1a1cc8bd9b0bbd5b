"""Consumer groups with aiokafka (asyncio client, its own group coordinator
implementation), alone and in a group shared with kafka-python."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaConsumer

from group_helpers import (  # noqa: F401 - fixtures
    HEARTBEAT_MS, Member, Members, _group_module_broker, committed, group_broker, group_view,
    numbered, produce, unique_group, wait_records, wait_split,
)
from helpers import create_topic


def run(coro, timeout=90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def aio_consumer(bootstrap, group, topic, **config):
    config.setdefault("enable_auto_commit", False)
    config.setdefault("auto_offset_reset", "earliest")
    config.setdefault("heartbeat_interval_ms", HEARTBEAT_MS)
    config.setdefault("session_timeout_ms", 10000)
    return AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                            client_id="riffle-group-aio", **config)


async def aio_drain(consumer, n, timeout=30.0, settle=1.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for recs in (await consumer.getmany(timeout_ms=200)).values():
            got.extend(recs)
    end = time.monotonic() + settle
    while time.monotonic() < end:
        for recs in (await consumer.getmany(timeout_ms=200)).values():
            got.extend(recs)
    return got


def test_seed_json_commit_restart_resumes_exactly(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic)
    group = unique_group("aioseed")
    produce(b, topic, [json.dumps({"n": i}).encode() for i in range(10)], partition=0)
    tp = TopicPartition(topic, 0)

    async def scenario():
        c = aio_consumer(b, group, topic, value_deserializer=json.loads)
        await c.start()
        try:
            got = await aio_drain(c, 10)
            assert [r.value["n"] for r in got] == list(range(10))
            await c.commit({tp: (6, "processed-6")})
            assert await c.committed(tp) == 6
        finally:
            await c.stop()

        produce(b, topic, [json.dumps({"n": i}).encode() for i in (10, 11)], partition=0)
        c = aio_consumer(b, group, topic, value_deserializer=json.loads)
        await c.start()
        try:
            got = await aio_drain(c, 6)
            assert [r.value["n"] for r in got] == list(range(6, 12))
            await c.commit()
            assert await c.committed(tp) == 12
        finally:
            await c.stop()

    run(scenario())
    assert committed(b, group) == {(topic, 0): (12, "")}


class AioMember:
    """An aiokafka group member on its own thread and event loop, exposing
    the same view as group_helpers.Member (name, assigned, snapshot)."""

    def __init__(self, name, bootstrap, group, topic, **config):
        self.name = name
        self.records: list[tuple] = []
        self.assigned = frozenset()
        self.errors: list[BaseException] = []
        self._args = (bootstrap, group, topic, config)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _main(self):
        bootstrap, group, topic, config = self._args
        c = aio_consumer(bootstrap, group, topic, **config)
        try:
            await c.start()
            while not self._stop.is_set():
                for recs in (await c.getmany(timeout_ms=200)).values():
                    now = time.monotonic()
                    self.records.extend((r.topic, r.partition, r.offset, r.value, now) for r in recs)
                self.assigned = frozenset((tp.topic, tp.partition) for tp in c.assignment())
        except Exception as exc:  # noqa: BLE001 - reported through .errors
            self.errors.append(exc)
        finally:
            await c.stop()

    def snapshot(self):
        return list(self.records)

    def values(self):
        return [r[3] for r in self.records]

    def stop(self, timeout=30.0):
        self._stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} did not stop"


def test_group_shared_with_kafka_python(group_broker, topic):
    """aiokafka (roundrobin only) and kafka-python (range, roundrobin) in one
    group: the broker must pick the common protocol and both share the work."""
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=4)
    group = unique_group("mixed")
    aio = AioMember("aio", b, group, topic)
    try:
        with Members() as ms:
            kp = ms.add(Member("kp", KafkaConsumer(
                topic, bootstrap_servers=b, group_id=group, enable_auto_commit=False,
                auto_offset_reset="earliest", heartbeat_interval_ms=HEARTBEAT_MS,
                session_timeout_ms=10000), "kafka-python"))
            wait_split([aio, kp], topic, 4, counts=[2, 2], bootstrap=b, group=group)
            assert group_view(b, group)["protocol"] == "roundrobin"
            produce(b, topic, numbered(40))
            got = wait_records([aio, kp], 40)
            assert sorted(r[3] for r in got) == sorted(numbered(40))
            assert aio.values() and kp.values()

            aio.stop()  # LeaveGroup: kafka-python takes over every partition
            wait_split([kp], topic, 4, timeout=15, bootstrap=b, group=group)
            assert not aio.errors and not kp.errors, (aio.errors, kp.errors)
    finally:
        if aio.thread.is_alive():
            aio.stop()
