"""Malformed and hostile input on raw sockets.

Every test ends with the same check: the broker process is alive, a fresh
connection gets a correct ApiVersions answer, and the canary topic written
before the test still reads back byte-for-byte.
"""

from __future__ import annotations

import os
import struct
import time

import pytest

import kafka_wire as w
from helpers import create_topic, kp_consume_all, unique_topic, wait_until

CANARY_RECORDS = [(f"canary-{i}".encode(), os.urandom(64)) for i in range(50)]


@pytest.fixture(scope="module")
def canary(_module_broker):
    topic = unique_topic("canary")
    create_topic(_module_broker.bootstrap, topic)
    with w.Conn(_module_broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, w.record_batch(CANARY_RECORDS))
    assert res[topic][0]["error_code"] == 0, res
    return topic


@pytest.fixture(autouse=True)
def still_healthy(broker, canary):
    yield
    assert broker.is_running(), f"broker died\n{broker.log_tail()}"
    with w.Conn(broker.port) as conn:
        err, apis = w.api_versions(conn, 0)
    assert err == 0 and w.API_PRODUCE in apis and w.API_API_VERSIONS in apis
    got = kp_consume_all(broker.bootstrap, canary, len(CANARY_RECORDS))
    assert [(r.key, r.value) for r in got] == CANARY_RECORDS, "canary data changed"


def test_raw_produce_positive_control(broker, topic):
    """The hand-built frames are valid: a raw produce is accepted and readable."""
    create_topic(broker.bootstrap, topic)
    records = [(b"k1", b"v1"), (None, b"v2"), (b"k3", None)]
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, w.record_batch(records))
    part = res[topic][0]
    assert part["error_code"] == 0 and part["base_offset"] == 0, res
    got = kp_consume_all(broker.bootstrap, topic, 3)
    assert [(r.key, r.value) for r in got] == records


def test_garbage_frame(broker):
    with w.Conn(broker.port) as conn:
        payload = bytes(range(256))[::-1] * 2
        conn.send(w.frame(payload))
        assert conn.wait_closed() == "closed"


def test_truncated_frame_then_close(broker):
    with w.Conn(broker.port) as conn:
        full = w.frame(w.request_header_v1(w.API_METADATA, 1, 5) + w.i32(-1))
        conn.send(full[:7])
    # And a frame whose declared size exceeds what is sent before close.
    with w.Conn(broker.port) as conn:
        conn.send(w.i32(1000) + b"\x00" * 10)


@pytest.mark.parametrize("size", [200 * 1024 * 1024, 0x7FFFFFFF, -5, -1])
def test_oversized_or_negative_frame_size(broker, size):
    hwm_before = broker.rss_kib()["VmHWM"]
    with w.Conn(broker.port) as conn:
        conn.send(struct.pack(">i", size) + b"\x00\x12\x00\x00\x00\x00\x00\x01")
        assert conn.wait_closed() == "closed"
    hwm_after = broker.rss_kib()["VmHWM"]
    assert hwm_after - hwm_before < 64 * 1024, \
        f"peak RSS grew {hwm_before} -> {hwm_after} KiB: the claimed frame size was allocated"


def test_unknown_api_key(broker):
    with w.Conn(broker.port) as conn:
        conn.send(w.frame(w.request_header_v1(9999, 0, 77) + b"\x00" * 8))
        outcome = conn.wait_closed()
        if outcome == "response":
            r = w.Reader(conn.last_frame)
            assert r.i32() == 77, "response must carry the request's correlation id"


def test_api_versions_unsupported_version(broker):
    with w.Conn(broker.port) as conn:
        err, apis = w.api_versions(conn, version=99, correlation_id=4242)
    assert err == w.ERR_UNSUPPORTED_VERSION
    assert w.API_API_VERSIONS in apis and apis[w.API_API_VERSIONS][1] >= 3, apis
    assert w.API_PRODUCE in apis and w.API_METADATA in apis


def test_api_versions_v0_lists_all_implemented_apis(broker):
    with w.Conn(broker.port) as conn:
        err, apis = w.api_versions(conn, 0)
    assert err == 0
    # Produce, Fetch, ListOffsets, Metadata, OffsetForLeaderEpoch, ApiVersions,
    # CreateTopics, DeleteTopics, DeleteRecords, InitProducerId, DescribeConfigs,
    # AlterConfigs, CreatePartitions, IncrementalAlterConfigs, DescribeCluster.
    for key in (0, 1, 2, 3, 23, 18, 19, 20, 21, 22, 32, 33, 37, 44, 60):
        assert key in apis, f"ApiVersions is missing api key {key}: {sorted(apis)}"
        lo, hi = apis[key]
        assert 0 <= lo <= hi, (key, lo, hi)


def test_produce_with_corrupt_crc(broker, topic):
    create_topic(broker.bootstrap, topic)
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, w.record_batch([(b"k", b"v")], corrupt_crc=True))
        assert res[topic][0]["error_code"] == w.ERR_CORRUPT_MESSAGE, res
        # The connection stays usable and a good batch lands at offset 0.
        res = w.produce_v3(conn, topic, 0, w.record_batch([(b"k", b"good")]))
        assert res[topic][0]["error_code"] == 0 and res[topic][0]["base_offset"] == 0, res
    got = kp_consume_all(broker.bootstrap, topic, 1)
    assert [(r.offset, r.value) for r in got] == [(0, b"good")]


def test_produce_truncated_record_batch(broker, topic):
    create_topic(broker.bootstrap, topic)
    batch = w.record_batch([(b"k", b"v" * 100)])
    with w.Conn(broker.port) as conn:
        res = w.produce_v3(conn, topic, 0, batch[:-30])
        assert res[topic][0]["error_code"] != 0, res
    got = kp_consume_all(broker.bootstrap, topic, 0, timeout=2)
    assert got == []


@pytest.mark.parametrize("name", ["bad topic!", "a" * 300, "..", "slash/topic"])
def test_metadata_invalid_topic_name(broker, name):
    with w.Conn(broker.port) as conn:
        md = w.metadata_v1(conn, [name])
    (t,) = md["topics"]
    assert t["name"] == name and t["error_code"] == w.ERR_INVALID_TOPIC, t


def _gauge(broker, name) -> float:
    status, text = broker.http_get("/metrics")
    assert status == 200
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def test_request_bytes_are_bounded_over_all_connections(make_broker):
    """Clients announcing big requests and sending them slowly hold at most
    queued_max_request_bytes between them: the others are not read (nothing is allocated
    for them) until memory frees, then go on."""
    budget, size = 4 << 20, 3 << 20
    b = make_broker("--queued-max-request-bytes", str(budget))
    held = lambda: _gauge(b, "riffle_request_bytes_held")  # noqa: E731
    slow = [w.Conn(b.port) for _ in range(3)]
    for c in slow:
        c.send(struct.pack(">i", size) + b"\x00" * 65536)
    wait_until(lambda: held() == size, timeout=10, message="first slow request admitted")
    time.sleep(0.5)
    assert held() == size, "a second 3 MiB request was admitted into a 4 MiB budget"
    # As each slow client goes away the next is admitted, never two at once.
    for c in slow:
        c.close()
        time.sleep(0.3)
        assert held() <= budget
    wait_until(lambda: held() == 0, timeout=10, message="budget returned")
    with w.Conn(b.port) as conn:
        err, apis = w.api_versions(conn, 0)
    assert err == 0 and w.API_PRODUCE in apis
