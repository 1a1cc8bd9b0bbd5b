"""Shared helpers for the consumer-group compatibility tests.

* ``group_broker``: a broker per test module started with short group timings
  (``GROUP_BROKER_ARGS``); liveness is checked after every test like the
  ``broker`` fixture in conftest.  Tests that kill/restart use
  ``make_broker(*GROUP_BROKER_ARGS)``.
* ``Member``: one in-process consumer polled on its own thread (consumers are
  not thread-safe; every other operation is marshalled onto that thread with
  ``Member.call``), recording records and assignment changes.
* ``SubprocessMember``: a consumer in a child process (this file run as a
  script) that can be SIGKILLed to simulate a crashed member.
* ``group_view``/``committed``: the broker's view of a group (DescribeGroups,
  OffsetFetch) through kafka-python's admin client, usable for groups created
  by any client.
* ``WireClient``: raw-socket requests built with kafka-python's protocol
  classes, for error-path tests clients never send on purpose.
* ``metric_value``: Prometheus samples from the broker's ``/metrics``.
"""

from __future__ import annotations

import concurrent.futures
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers import Broker, _die_with_parent, wait_until

# Fast joins (no 3 s initial delay) and session timeouts down to 1 s so the
# crashed-member tests finish quickly.
GROUP_BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "100",
                     "--group-min-session-timeout-ms", "1000")
HEARTBEAT_MS = 500
# Session timeout used by members that get SIGKILLed.
KILL_SESSION_MS = 3000
REBALANCE_WAIT_S = 45.0

THIS_FILE = Path(__file__).resolve()


def unique_group(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def _group_module_broker(riffle_bin, tmp_path_factory, request):
    b = Broker(tmp_path_factory.mktemp(f"riffle-{request.module.__name__}"),
               extra_args=GROUP_BROKER_ARGS)
    b.start()
    yield b
    if b.is_running():
        b.stop()


@pytest.fixture
def group_broker(_group_module_broker, request):
    b = _group_module_broker
    request.node._riffle_brokers = [b]
    if not b.is_running():
        b.start()
    yield b
    if not b.is_running():
        rc = b.proc.returncode
        tail = b.log_tail()
        b.start()
        pytest.fail(f"riffle died during the test (exit code {rc})\n{tail}", pytrace=False)


# -- producing ------------------------------------------------------------------

def produce(bootstrap: str, topic: str, values, partition: int | None = None,
            keys=None, timestamps=None) -> list:
    """Produce ``values`` (bytes) with kafka-python, acks=all; returns the
    RecordMetadata list.  ``partition=None`` spreads round-robin over the
    topic's partitions (explicitly, so the spread is deterministic)."""
    from kafka import KafkaProducer
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                         client_id="riffle-group-producer", request_timeout_ms=15000,
                         max_block_ms=20000)
    try:
        nparts = len(prod.partitions_for(topic) or [0]) if partition is None else None
        futures = []
        for i, v in enumerate(values):
            p = partition if partition is not None else i % nparts
            futures.append(prod.send(topic, value=v, partition=p,
                                     key=keys[i] if keys else None,
                                     timestamp_ms=timestamps[i] if timestamps else None))
        prod.flush(timeout=30)
        return [f.get(timeout=30) for f in futures]
    finally:
        prod.close(timeout=10)


def numbered(n: int, start: int = 0, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(start, start + n)]


# -- in-process members ------------------------------------------------------------

def kp_poll(c):
    out = []
    for recs in c.poll(timeout_ms=200).values():
        out.extend((r.topic, r.partition, r.offset, r.value) for r in recs)
    return out


def kp_assignment(c):
    return frozenset((tp.topic, tp.partition) for tp in c.assignment())


def ck_poll(c):
    from confluent_kafka import KafkaError, KafkaException
    out = []
    for m in c.consume(num_messages=500, timeout=0.2):
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaException(err)
        out.append((m.topic(), m.partition(), m.offset(), m.value()))
    return out


def ck_assignment(c):
    return frozenset((tp.topic, tp.partition) for tp in c.assignment())


def drain(poll, consumer, n: int, timeout: float = 30.0, settle: float = 1.0) -> list[tuple]:
    """Poll one consumer (on the calling thread) until ``n`` records arrived,
    then keep polling ``settle`` seconds so duplicates or extras show up."""
    got: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(poll(consumer))
    end = time.monotonic() + settle
    while time.monotonic() < end:
        got.extend(poll(consumer))
    return got


def kp_member_id(c):
    return c.group_metadata().member_id or None


def ck_member_id(c):
    return c.memberid() or None


# poll, assignment, close, member id (as the coordinator knows it)
CLIENT_OPS = {
    "kafka-python": (kp_poll, kp_assignment, lambda c: c.close(autocommit=False), kp_member_id),
    "confluent": (ck_poll, ck_assignment, lambda c: c.close(), ck_member_id),
}


class Member:
    """A consumer polled continuously on its own thread.

    ``records`` holds (topic, partition, offset, value, arrival time) tuples
    in arrival order; ``history`` the (monotonic time, assignment) changes as seen by the
    client; ``errors`` exceptions raised by poll.
    """

    def __init__(self, name: str, consumer, client: str):
        self.name = name
        self.consumer = consumer
        self._poll, self._assignment, self._close, self._member_id = CLIENT_OPS[client]
        self.member_id: str | None = None
        self.records: list[tuple] = []
        self.assigned: frozenset = frozenset()
        self.history: list[tuple[float, frozenset]] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self._calls: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._close_on_stop = True
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=f"member-{name}", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                self._drain_calls()
                try:
                    recs = self._poll(self.consumer)
                except Exception as exc:  # noqa: BLE001 - reported through .errors
                    with self.lock:
                        self.errors.append(exc)
                    time.sleep(0.1)
                    recs = []
                try:
                    assigned = self._assignment(self.consumer)
                    self.member_id = self._member_id(self.consumer)
                except Exception as exc:  # noqa: BLE001
                    with self.lock:
                        self.errors.append(exc)
                    assigned = self.assigned
                now = time.monotonic()
                with self.lock:
                    self.records.extend(r + (now,) for r in recs)
                    if assigned != self.assigned:
                        self.assigned = assigned
                        self.history.append((time.monotonic(), assigned))
            self._drain_calls()
        finally:
            if self._close_on_stop:
                try:
                    self._close(self.consumer)
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(exc)
                self.closed = True

    def _drain_calls(self):
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self.consumer))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def call(self, fn, timeout: float = 30.0):
        """Run ``fn(consumer)`` on the polling thread and return its result."""
        assert self.thread.is_alive(), f"member {self.name} is not running"
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, fut))
        return fut.result(timeout)

    def stop(self, close: bool = True, timeout: float = 30.0):
        """Stop polling; close the consumer (leaving the group) unless told not to."""
        self._close_on_stop = close
        self._stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"member {self.name} did not stop within {timeout}s"

    def values(self) -> list[bytes]:
        with self.lock:
            return [r[3] for r in self.records]

    def snapshot(self) -> list[tuple]:
        with self.lock:
            return list(self.records)


class Members:
    """Owns a set of members; stops whatever is still running on exit."""

    def __init__(self):
        self.all: list[Member] = []

    def add(self, member: Member) -> Member:
        self.all.append(member)
        return member

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for m in self.all:
            if m.thread.is_alive():
                try:
                    m.stop()
                except AssertionError:
                    pass


def describe_histories(members) -> str:
    """Assignment changes of each member (seconds relative to the first), for
    failure messages."""
    hist = [(t, m.name, sorted(p for _t, p in a)) for m in members
            for t, a in getattr(m, "history", [])]
    if not hist:
        return "(no history)"
    t0 = min(t for t, _, _ in hist)
    out = [f"+{t - t0:.2f}s {name}={parts}" for t, name, parts in sorted(hist)]
    for m in members:
        recs = m.snapshot()
        if recs:
            first, last = recs[0], recs[-1]
            out.append(f"{m.name} got {len(recs)} records of partitions "
                       f"{sorted({r[1] for r in recs})} at +{first[4] - t0:.2f}..+{last[4] - t0:.2f}s")
    return "; ".join(out)


def partitions_of(topic: str, n: int) -> frozenset:
    return frozenset((topic, p) for p in range(n))


def wait_split(members, topic: str, nparts: int, counts=None, timeout: float = REBALANCE_WAIT_S,
               bootstrap: str | None = None, group: str | None = None):
    """Wait until the members' client-side assignments partition the topic:
    disjoint, union == all partitions and the sorted per-member counts equal
    ``counts`` (default: as even as possible).  With ``bootstrap``/``group``
    the broker must agree: group Stable, same member count and assignments.
    Returns {member name: assignment}."""
    members = list(members)
    if counts is None:
        base, extra = divmod(nparts, len(members))
        counts = [base + 1] * extra + [base] * (len(members) - extra)
    want_counts = sorted(counts)
    everything = partitions_of(topic, nparts)

    def check():
        views = {m.name: m.assigned for m in members}
        sets = list(views.values())
        if sorted(len(s) for s in sets) != want_counts:
            return None
        union = frozenset().union(*sets)
        if union != everything or sum(len(s) for s in sets) != len(union):
            return None
        if bootstrap is not None:
            view = group_view(bootstrap, group)
            if view["state"] != "Stable" or len(view["members"]) != len(members):
                return None
            # Member by member where the client tells its member id (a stale
            # client view can have the right shape but the wrong owners).
            remaining = dict(view["members"])
            anonymous = []
            for m in members:
                mid = getattr(m, "member_id", None)
                if mid is None:
                    anonymous.append(m.assigned)
                elif mid not in remaining or remaining.pop(mid)["partitions"] != m.assigned:
                    return None
            rest = sorted(sorted(v["partitions"]) for v in remaining.values())
            if rest != sorted(sorted(a) for a in anonymous):
                return None
        return views

    return wait_until(check, timeout=timeout, interval=0.2,
                      message=f"assignment of {nparts} partitions of {topic} split {want_counts} over "
                              + ", ".join(m.name for m in members))


def marks(members) -> dict:
    """Current record counts, for ``wait_records(..., since=marks(...))``."""
    return {m.name: len(m.snapshot()) for m in members}


def wait_records(members, n: int, timeout: float = 30.0, what: str = "records",
                 since: dict | None = None):
    """Wait until the members together hold at least ``n`` records (counting
    only records after ``since`` marks), then give them a moment to show
    duplicates; returns those records."""
    since = since or {}

    def collect():
        out = []
        for m in members:
            out.extend(m.snapshot()[since.get(m.name, 0):])
        return out

    wait_until(lambda: len(collect()) >= n, timeout=timeout, message=f"{n} {what}")
    time.sleep(0.5)
    return collect()


# -- subprocess members (crash simulation) ------------------------------------------------

class SubprocessMember:
    """A consumer in a child process that reports its assignment as JSON lines."""

    def __init__(self, client: str, bootstrap: str, topic: str, group: str,
                 session_ms: int = KILL_SESSION_MS, instance_id: str | None = None):
        args = [sys.executable, str(THIS_FILE), "member", client, bootstrap, topic, group,
                str(session_ms), instance_id or ""]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, cwd=THIS_FILE.parent,
                                     preexec_fn=_die_with_parent)
        self.assigned: frozenset = frozenset()
        self.member_id: str | None = None
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def name(self):
        return f"subprocess-{self.proc.pid}"

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            self.lines.append(line)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "assigned" in msg:
                self.member_id = msg.get("member_id")
                self.assigned = frozenset((t, p) for t, p in msg["assigned"])

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.kill()


def _member_main(client, bootstrap, topic, group, session_ms, instance_id):
    """Child-process body: subscribe, poll forever, print assignment changes."""
    session_ms = int(session_ms)
    instance_id = instance_id or None
    last = None
    if client == "kafka-python":
        from kafka import KafkaConsumer
        c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                          group_instance_id=instance_id, enable_auto_commit=False,
                          auto_offset_reset="earliest", session_timeout_ms=session_ms,
                          heartbeat_interval_ms=HEARTBEAT_MS, client_id="riffle-group-child")
        poll, assignment, member_id = kp_poll, kp_assignment, kp_member_id
    else:
        from confluent_kafka import Consumer
        conf = {"bootstrap.servers": bootstrap, "group.id": group, "broker.address.family": "v4",
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": session_ms, "heartbeat.interval.ms": HEARTBEAT_MS,
                "client.id": "riffle-group-child"}
        if instance_id:
            conf["group.instance.id"] = instance_id
        c = Consumer(conf)
        c.subscribe([topic])
        poll, assignment, member_id = ck_poll, ck_assignment, ck_member_id
    deadline = time.monotonic() + 300  # the parent kills us long before this
    while time.monotonic() < deadline:
        poll(c)
        state = (sorted(assignment(c)), member_id(c))
        if state != last:
            last = state
            print(json.dumps({"assigned": state[0], "member_id": state[1]}), flush=True)


# -- broker view through kafka-python's admin client ------------------------------------

def kp_admin(bootstrap: str):
    from kafka import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="riffle-group-admin",
                            request_timeout_ms=20000)


def _assignment_partitions(assignment) -> frozenset:
    if assignment is None or assignment == b"" or assignment == "":
        return frozenset()
    if hasattr(assignment, "partitions"):
        return frozenset((tp.topic, tp.partition) for tp in assignment.partitions())
    if isinstance(assignment, dict):
        out = set()
        for entry in assignment.get("assigned_partitions") or []:
            if isinstance(entry, dict):
                out.update((entry["topic"], p) for p in entry["partitions"])
            else:
                topic, parts = entry
                out.update((topic, p) for p in parts)
        return frozenset(out)
    raise AssertionError(f"undecodable member assignment {assignment!r}")


def group_view(bootstrap: str, group: str) -> dict:
    """DescribeGroups: {'state', 'protocol_type', 'protocol', 'error',
    'members': {member_id: {'client_id', 'group_instance_id', 'partitions'}}}."""
    adm = kp_admin(bootstrap)
    try:
        desc = adm.describe_groups([group])[group]
    finally:
        adm.close()
    members = {}
    for m in desc.get("members") or []:
        members[m["member_id"]] = {
            "client_id": m.get("client_id"),
            "group_instance_id": m.get("group_instance_id"),
            "partitions": _assignment_partitions(m.get("member_assignment")),
        }
    return {"state": desc.get("group_state"), "protocol_type": desc.get("protocol_type"),
            "protocol": desc.get("protocol_data"), "error": desc.get("error"), "members": members}


def committed(bootstrap: str, group: str) -> dict:
    """OffsetFetch for all partitions: {(topic, partition): (offset, metadata)}."""
    adm = kp_admin(bootstrap)
    try:
        res = adm.list_group_offsets({group: None})[group]
    finally:
        adm.close()
    return {(tp.topic, tp.partition): (oam.offset, oam.metadata) for tp, oam in res.items()
            if oam.offset >= 0}


def wait_group_state(bootstrap: str, group: str, state: str, timeout: float = REBALANCE_WAIT_S,
                     members: int | None = None) -> dict:
    def check():
        v = group_view(bootstrap, group)
        if v["state"] == state and (members is None or len(v["members"]) == members):
            return v
        return None
    return wait_until(check, timeout=timeout, interval=0.2,
                      message=f"group {group} in state {state}"
                              + (f" with {members} members" if members is not None else ""))


# -- Prometheus metrics --------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_samples(broker, name: str) -> list[tuple[dict, float]]:
    status, text = broker.http_get("/metrics")
    assert status == 200, f"/metrics returned {status}"
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            out.append((labels, float(m.group(3))))
    return out


def metric_value(broker, name: str, **labels) -> float | None:
    want = {k: str(v) for k, v in labels.items()}
    for got, value in metric_samples(broker, name):
        if all(got.get(k) == v for k, v in want.items()):
            return value
    return None


# -- raw requests ----------------------------------------------------------------------------

ERR_NONE = 0
ERR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERR_OFFSET_METADATA_TOO_LARGE = 12
ERR_INCONSISTENT_GROUP_PROTOCOL = 23
ERR_INVALID_GROUP_ID = 24
ERR_REBALANCE_IN_PROGRESS = 27
ERR_ILLEGAL_GENERATION = 22
ERR_UNKNOWN_MEMBER_ID = 25
ERR_INVALID_SESSION_TIMEOUT = 26
ERR_MEMBER_ID_REQUIRED = 79


class WireClient:
    """One raw connection; requests are kafka-python protocol objects encoded
    at min(client max, broker max) of the API (capped by ``cap``)."""

    def __init__(self, port: int, timeout: float = 15.0):
        import kafka_wire as w
        self.conn = w.Conn(port, timeout=timeout)
        err, self.apis = w.api_versions(self.conn, 0)
        assert err == 0, f"ApiVersions error {err}"
        self.correlation = 100

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def version_for(self, req_cls, cap: int | None = None) -> int:
        key = req_cls.API_KEY
        assert key in self.apis, f"broker does not advertise API {key} ({req_cls.name})"
        lo, hi = self.apis[key]
        v = min(hi, req_cls.max_version)
        if cap is not None:
            v = min(v, cap)
        assert v >= lo, f"no common version for {req_cls.name}: broker {lo}-{hi}"
        return v

    def call(self, req, resp_cls, cap: int | None = None):
        version = self.version_for(type(req), cap)
        self.correlation += 1
        req.with_header(correlation_id=self.correlation, client_id="riffle-group-raw")
        self.conn.send(req.encode(version=version, header=True, framed=True))
        frame = self.conn.recv_frame()
        resp = resp_cls.decode(frame, version=version, header=True)
        assert resp.header.correlation_id == self.correlation
        return resp

    # -- group APIs --
    def join(self, group: str, member_id: str = "", session_ms: int = 30000,
             rebalance_ms: int = 10000, protocol_name: str = "range", metadata: bytes = b""):
        """JoinGroup, retrying once with the assigned id on MEMBER_ID_REQUIRED."""
        from kafka.protocol.consumer import JoinGroupRequest, JoinGroupResponse
        proto = JoinGroupRequest.JoinGroupRequestProtocol
        for _ in range(2):
            req = JoinGroupRequest(group_id=group, session_timeout_ms=session_ms,
                                   rebalance_timeout_ms=rebalance_ms, member_id=member_id,
                                   group_instance_id=None, protocol_type="consumer",
                                   protocols=[proto(name=protocol_name, metadata=metadata)],
                                   reason=None)
            resp = self.call(req, JoinGroupResponse)
            if resp.error_code != ERR_MEMBER_ID_REQUIRED:
                return resp
            member_id = resp.member_id
        return resp

    def sync(self, group: str, generation: int, member_id: str, assignments: dict[str, bytes],
             protocol_name: str = "range"):
        from kafka.protocol.consumer import SyncGroupRequest, SyncGroupResponse
        a = SyncGroupRequest.SyncGroupRequestAssignment
        req = SyncGroupRequest(group_id=group, generation_id=generation, member_id=member_id,
                               group_instance_id=None, protocol_type="consumer",
                               protocol_name=protocol_name,
                               assignments=[a(member_id=k, assignment=v) for k, v in assignments.items()])
        return self.call(req, SyncGroupResponse)

    def heartbeat(self, group: str, generation: int, member_id: str) -> int:
        from kafka.protocol.consumer import HeartbeatRequest, HeartbeatResponse
        req = HeartbeatRequest(group_id=group, generation_id=generation, member_id=member_id,
                               group_instance_id=None)
        return self.call(req, HeartbeatResponse).error_code

    def leave(self, group: str, member_id: str) -> int:
        from kafka.protocol.consumer import LeaveGroupRequest, LeaveGroupResponse
        ident = LeaveGroupRequest.MemberIdentity
        req = LeaveGroupRequest(group_id=group, member_id=member_id,
                                members=[ident(member_id=member_id, group_instance_id=None,
                                               reason=None)])
        resp = self.call(req, LeaveGroupResponse)
        if resp.error_code:
            return resp.error_code
        return max((m.error_code for m in (resp.members or [])), default=0)

    def commit(self, group: str, generation: int, member_id: str,
               offsets: dict[tuple[str, int], tuple[int, str | None]]) -> dict[tuple[str, int], int]:
        """OffsetCommit (capped at v8, the last version with topic names and
        classic generation semantics); returns {(topic, partition): error}."""
        from kafka.protocol.consumer import OffsetCommitRequest, OffsetCommitResponse
        t_cls = OffsetCommitRequest.OffsetCommitRequestTopic
        p_cls = t_cls.OffsetCommitRequestPartition
        by_topic: dict[str, list] = {}
        for (topic, part), (offset, meta) in offsets.items():
            by_topic.setdefault(topic, []).append(p_cls(
                partition_index=part, committed_offset=offset, committed_leader_epoch=-1,
                committed_metadata=meta))
        req = OffsetCommitRequest(group_id=group, generation_id_or_member_epoch=generation,
                                  member_id=member_id, group_instance_id=None,
                                  retention_time_ms=-1,
                                  topics=[t_cls(name=t, partitions=ps) for t, ps in by_topic.items()])
        resp = self.call(req, OffsetCommitResponse, cap=8)
        return {(t.name, p.partition_index): p.error_code
                for t in resp.topics for p in t.partitions}


def consumer_assignment_bytes(topic: str, partitions) -> bytes:
    """Encoded ConsumerProtocolAssignment (v0) for SyncGroup."""
    from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment
    a = ConsumerProtocolAssignment(assigned_partitions=[(topic, list(partitions))], user_data=b"")
    return a.encode(version=0)


def decode_assignment(data: bytes) -> frozenset:
    from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment
    if not data:
        return frozenset()
    return _assignment_partitions(ConsumerProtocolAssignment.decode(bytes(data), version=0))


def consumer_subscription_bytes(topics) -> bytes:
    from kafka.protocol.consumer.metadata import ConsumerProtocolSubscription
    s = ConsumerProtocolSubscription(topics=list(topics), user_data=b"")
    return s.encode(version=0)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "member":
        _member_main(*sys.argv[2:8])
    else:
        sys.exit("usage: group_helpers.py member CLIENT BOOTSTRAP TOPIC GROUP SESSION_MS [INSTANCE_ID]")
