"""Hand-rolled Kafka wire encoding for raw-socket tests.

Only the handful of request/response shapes the bad-input and cluster tests
need, all in non-flexible (pre-KIP-482) versions so they can be packed with
``struct``: ApiVersions v0, Metadata v1 and v4, Produce v3 (record batch v2), and the
transaction requests FindCoordinator v1, AddPartitionsToTxn v0 and EndTxn v0.
"""

from __future__ import annotations

import socket
import struct
import time

import crc32c as _crc32c

API_PRODUCE = 0
API_METADATA = 3
API_API_VERSIONS = 18

ERR_NONE = 0
ERR_CORRUPT_MESSAGE = 2
ERR_INVALID_TOPIC = 17
ERR_UNSUPPORTED_VERSION = 35


def crc32c(data: bytes) -> int:
    return _crc32c.crc32c(data)


# -- primitive encoders ------------------------------------------------------

def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def bytes_(b: bytes | None) -> bytes:
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items: list[bytes] | None) -> bytes:
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(items)


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(v: int) -> bytes:
    return uvarint((v << 1) ^ (v >> 63))  # zigzag


# -- framing -----------------------------------------------------------------

def request_header_v1(api_key: int, api_version: int, correlation_id: int,
                      client_id: str | None = "riffle-raw") -> bytes:
    return i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"short response: need {size} bytes at {self.pos}, have {len(self.data)}")
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return v

    def i8(self): return self._take(">b")
    def i16(self): return self._take(">h")
    def i32(self): return self._take(">i")
    def i64(self): return self._take(">q")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def array(self, item):
        n = self.i32()
        if n < 0:
            return None
        return [item(self) for _ in range(n)]

    def remaining(self) -> int:
        return len(self.data) - self.pos


class Conn:
    """A blocking raw connection with bounded reads."""

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)}/{n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self.recv_exact(4))
        assert 0 <= size < 100 * 1024 * 1024, f"implausible response size {size}"
        return self.recv_exact(size)

    def request(self, api_key: int, api_version: int, body: bytes, correlation_id: int = 7) -> Reader:
        self.send(frame(request_header_v1(api_key, api_version, correlation_id) + body))
        r = Reader(self.recv_frame())
        got = r.i32()
        assert got == correlation_id, f"correlation id {got} != {correlation_id}"
        return r

    def wait_closed(self, timeout: float = 10.0) -> str:
        """Wait until the peer closes the connection.

        Returns 'closed' (EOF/reset), or 'response' if a frame arrived first
        (the frame is stored in ``self.last_frame``).  Raises AssertionError
        if neither happens within ``timeout``.
        """
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "closed"
                data += chunk
                if len(data) >= 4:
                    (size,) = struct.unpack(">i", data[:4])
                    if len(data) >= 4 + size:
                        self.last_frame = data[4:4 + size]
                        return "response"
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        except socket.timeout:
            pass
        raise AssertionError(f"connection neither closed nor answered within {timeout}s")


# -- requests ----------------------------------------------------------------

def api_versions(conn: Conn, version: int = 0, correlation_id: int = 11):
    """Send ApiVersions with a v0 body (empty) at ``version``; the response
    is decoded as v0 (error_code, [api_key, min, max]), which is what brokers
    answer for versions they do not support."""
    r = conn.request(API_API_VERSIONS, version, b"", correlation_id)
    error = r.i16()
    apis = r.array(lambda rr: (rr.i16(), rr.i16(), rr.i16()))
    return error, {k: (lo, hi) for k, lo, hi in apis or []}


def _metadata_partition(rr):
    return {"error_code": rr.i16(), "partition": rr.i32(), "leader": rr.i32(),
            "replicas": rr.array(lambda x: x.i32()), "isr": rr.array(lambda x: x.i32())}


def _metadata_topic(rr):
    return {"error_code": rr.i16(), "name": rr.string(), "internal": rr.i8(),
            "partitions": rr.array(_metadata_partition)}


def _metadata_broker(rr):
    return (rr.i32(), rr.string(), rr.i32(), rr.string())  # node id, host, port, rack


def metadata_v1(conn: Conn, topics: list[str] | None):
    body = array([string(t) for t in topics]) if topics is not None else i32(-1)
    r = conn.request(API_METADATA, 1, body, 21)
    brokers = r.array(_metadata_broker)
    controller = r.i32()
    return {"brokers": brokers, "controller": controller, "topics": r.array(_metadata_topic)}


def metadata_v4(conn: Conn, topics: list[str] | None, allow_auto_topic_creation: bool = False):
    """Metadata v4: like v1 plus cluster id, and the request can forbid auto-creation."""
    body = (array([string(t) for t in topics]) if topics is not None else i32(-1)) \
        + i8(1 if allow_auto_topic_creation else 0)
    r = conn.request(API_METADATA, 4, body, 22)
    r.i32()  # throttle_time_ms
    brokers = r.array(_metadata_broker)
    cluster_id = r.string()
    controller = r.i32()
    return {"brokers": brokers, "cluster_id": cluster_id, "controller": controller,
            "topics": r.array(_metadata_topic)}


def record_batch(records: list[tuple[bytes | None, bytes | None]], base_timestamp: int | None = None,
                 corrupt_crc: bool = False, producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, transactional: bool = False) -> bytes:
    """Encode an uncompressed v2 record batch (magic 2, CRC-32C)."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    recs = b""
    for i, (key, value) in enumerate(records):
        body = (i8(0) + varint(0) + varint(i)
                + (varint(-1) if key is None else varint(len(key)) + key)
                + (varint(-1) if value is None else varint(len(value)) + value)
                + varint(0))
        recs += varint(len(body)) + body
    after_crc = (i16(0x10 if transactional else 0)  # attributes: no compression, CreateTime
                 + i32(len(records) - 1)      # lastOffsetDelta
                 + i64(ts) + i64(ts)          # base / max timestamp
                 + i64(producer_id) + i16(producer_epoch) + i32(base_sequence)
                 + i32(len(records)) + recs)
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_length = i32(0) + i8(2) + struct.pack(">I", crc) + after_crc  # leader epoch, magic
    return i64(0) + i32(len(after_length)) + after_length


def produce_v3(conn: Conn, topic: str, partition: int, batch: bytes, acks: int = -1,
               timeout_ms: int = 10000, transactional_id: str | None = None):
    body = (string(transactional_id) + i16(acks) + i32(timeout_ms)
            + array([string(topic) + array([i32(partition) + bytes_(batch)])]))
    r = conn.request(API_PRODUCE, 3, body, 31)

    def part(rr):
        return {"partition": rr.i32(), "error_code": rr.i16(), "base_offset": rr.i64(),
                "log_append_time": rr.i64()}

    topics = r.array(lambda rr: (rr.string(), rr.array(part)))
    return {name: parts for name, parts in topics}


API_FETCH = 1
ERR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERR_OFFSET_OUT_OF_RANGE = 1
ERR_MESSAGE_TOO_LARGE = 10


def fetch_v4(conn: Conn, topic: str, partition: int, offset: int, max_wait_ms: int,
             min_bytes: int = 1, max_bytes: int = 1 << 20):
    body = (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
            + array([string(topic) + array([i32(partition) + i64(offset) + i32(max_bytes)])]))
    r = conn.request(API_FETCH, 4, body, 41)
    r.i32()  # throttle_time_ms

    def part(rr):
        out = {"partition": rr.i32(), "error_code": rr.i16(), "high_watermark": rr.i64(),
               "last_stable_offset": rr.i64()}
        rr.array(lambda x: (x.i64(), x.i64()))  # aborted transactions
        n = rr.i32()
        out["records"] = b"" if n < 0 else rr.data[rr.pos:rr.pos + n]
        rr.pos += max(n, 0)
        return out

    topics = r.array(lambda rr: (rr.string(), rr.array(part)))
    return {name: parts for name, parts in topics}


API_INIT_PRODUCER_ID = 22
ERR_DUPLICATE_SEQUENCE = 46
ERR_OUT_OF_ORDER_SEQUENCE = 45
ERR_NOT_ENOUGH_REPLICAS = 19


def init_producer_id_v0(conn: Conn, transactional_id: str | None = None, timeout_ms: int = 60000):
    r = conn.request(API_INIT_PRODUCER_ID, 0, string(transactional_id) + i32(timeout_ms), 51)
    r.i32()  # throttle_time_ms
    return {"error_code": r.i16(), "producer_id": r.i64(), "producer_epoch": r.i16()}


API_OFFSET_FOR_LEADER_EPOCH = 23
API_FIND_COORDINATOR = 10
API_ADD_PARTITIONS_TO_TXN = 24
API_END_TXN = 26
ERR_INVALID_TXN_STATE = 48


def find_coordinator_v1(conn: Conn, key: str, key_type: int):
    r = conn.request(API_FIND_COORDINATOR, 1, string(key) + i8(key_type), 71)
    r.i32()  # throttle_time_ms
    return {"error_code": r.i16(), "error_message": r.string(), "node_id": r.i32(),
            "host": r.string(), "port": r.i32()}


def add_partitions_to_txn_v0(conn: Conn, transactional_id: str, producer_id: int,
                             producer_epoch: int, topic: str, partitions: list[int]):
    """Per-partition error codes: {partition: code}."""
    body = (string(transactional_id) + i64(producer_id) + i16(producer_epoch)
            + array([string(topic) + array([i32(p) for p in partitions])]))
    r = conn.request(API_ADD_PARTITIONS_TO_TXN, 0, body, 72)
    r.i32()  # throttle_time_ms
    topics = r.array(lambda rr: (rr.string(), rr.array(lambda x: (x.i32(), x.i16()))))
    return {p: code for _, parts in topics for p, code in parts}


def end_txn_v0(conn: Conn, transactional_id: str, producer_id: int, producer_epoch: int,
               commit: bool) -> int:
    body = string(transactional_id) + i64(producer_id) + i16(producer_epoch) + i8(int(commit))
    r = conn.request(API_END_TXN, 0, body, 73)
    r.i32()  # throttle_time_ms
    return r.i16()


def offset_for_leader_epoch_v3(conn: Conn, topic: str, partition: int, leader_epoch: int,
                               current_leader_epoch: int = -1):
    body = i32(-1) + array([string(topic) + array([i32(partition) + i32(current_leader_epoch)
                                                   + i32(leader_epoch)])])
    r = conn.request(API_OFFSET_FOR_LEADER_EPOCH, 3, body, 61)
    r.i32()  # throttle_time_ms

    def part(rr):
        return {"error_code": rr.i16(), "partition": rr.i32(), "leader_epoch": rr.i32(),
                "end_offset": rr.i64()}

    topics = r.array(lambda rr: (rr.string(), rr.array(part)))
    return {name: parts for name, parts in topics}


# The cluster-wide default BROKER resource (name "") cannot be addressed through
# confluent-kafka or kafka-python (both want a broker id), so tests speak it raw.
API_DESCRIBE_CONFIGS = 32
API_INCREMENTAL_ALTER_CONFIGS = 44
RESOURCE_BROKER = 4
RESOURCE_GROUP = 32
OP_SET, OP_DELETE = 0, 1


def incremental_alter_configs_v0(conn: Conn, resource_type: int, name: str,
                                 ops: list[tuple[str, int, str | None]], validate_only: bool = False):
    """Returns (error_code, error_message) of the one resource."""
    configs = array([string(k) + i8(op) + string(v) for k, op, v in ops])
    body = array([i8(resource_type) + string(name) + configs]) + i8(1 if validate_only else 0)
    r = conn.request(API_INCREMENTAL_ALTER_CONFIGS, 0, body, 44)
    r.i32()  # throttle_time_ms
    (res,) = r.array(lambda rr: (rr.i16(), rr.string(), rr.i8(), rr.string()))
    return res[0], res[1]


def describe_configs_v1(conn: Conn, resource_type: int, name: str):
    """Returns {key: (value, read_only, source)} of the one resource (raises on error)."""
    body = array([i8(resource_type) + string(name) + i32(-1)]) + i8(1)
    r = conn.request(API_DESCRIBE_CONFIGS, 1, body, 32)
    r.i32()  # throttle_time_ms

    def entry(rr):
        key, value, read_only, source = rr.string(), rr.string(), rr.i8(), rr.i8()
        rr.i8()  # is_sensitive
        rr.array(lambda x: (x.string(), x.string(), x.i8()))
        return key, (value, bool(read_only), source)

    (res,) = r.array(lambda rr: (rr.i16(), rr.string(), rr.i8(), rr.string(), rr.array(entry)))
    assert res[0] == 0, res
    return dict(res[4])
