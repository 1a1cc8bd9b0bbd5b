"""Multi-broker clusters: formation, replicated topics, failover.

Every test runs a private cluster of real ``riffle`` processes on 127.0.0.1
(``make_cluster``; see ``helpers.Cluster``).  Partition leaders, replicas and
ISRs are read from Kafka Metadata; ``/v1/cluster`` gives the controller and
broker fencing; ``/v1/partitions/{topic}/{p}`` lets
``Cluster.assert_replicas_consistent`` compare the replicas' stored batches.

Failure detection is shortened with the broker's session, heartbeat and
replica-lag flags so that failovers take seconds.  Background producers write
numbered values (``000000042``) and record the (partition, offset) of every
acknowledged one; the verification reads the partitions back from the start.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING, Consumer, ElectionType, KafkaError, KafkaException, Producer, TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire
from helpers import assert_same_records, sample_records, unique_topic, wait_until

OP_TIMEOUT = 30.0
# Failure detection within seconds, set explicitly (a dead broker is fenced
# after 3 s, a stuck follower leaves the ISR after 3 s).
FAST = ("--broker-heartbeat-interval-ms", 250, "--broker-session-timeout-ms", 3000,
        "--replica-lag-time-max-ms", 3000)
# For the ISR tests: a frozen follower leaves the ISR after ~2 s.
LAG_MS = 2000
ISR_FAST = ("--broker-heartbeat-interval-ms", 250, "--broker-session-timeout-ms", 3000,
            "--replica-lag-time-max-ms", LAG_MS)
# Longest a partition may go without an acknowledged write during a rolling restart.
ROLL_PAUSE_BOUND_S = 2.0
# Upper bound for a kill -9 of a leader until writes are acknowledged again.
FAILOVER_BOUND_S = 30.0
# Delivery reports of responses that arrived just before a kill may be served
# a few milliseconds after it; they do not count as "after the kill".
PRE_KILL_GRACE_S = 0.05


# -- clients -----------------------------------------------------------------

def ck_conf(cluster, **extra):
    """confluent-kafka config bootstrapping from the live (running, unfrozen) brokers."""
    conf = {"bootstrap.servers": cluster.live_bootstrap, "client.id": "riffle-compat-cluster",
            "broker.address.family": "v4"}
    conf.update(extra)
    return conf


def ck_admin(cluster):
    return AdminClient(ck_conf(cluster))


def list_metadata(cluster, timeout=10.0):
    """ClusterMetadata from confluent-kafka's AdminClient.list_topics."""
    return ck_admin(cluster).list_topics(timeout=timeout)


def create_topic(cluster, partitions=1, rf=3, config=None, prefix="rep"):
    """Create a topic with confluent-kafka's AdminClient; wait until every
    partition has a leader that knows it leads."""
    name = unique_topic(prefix)
    admin = ck_admin(cluster)  # must outlive the futures it returns
    fs = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=rf,
                  config={k: str(v) for k, v in (config or {}).items()})],
        operation_timeout=OP_TIMEOUT, request_timeout=OP_TIMEOUT)
    fs[name].result(timeout=OP_TIMEOUT)
    for p in range(partitions):
        cluster.wait_leader(name, p, timeout=OP_TIMEOUT)
    return name


def create_topic_error(cluster, partitions, rf) -> KafkaError:
    """Create a topic that must be refused; assert it is absent afterwards."""
    name = unique_topic("bad")
    admin = ck_admin(cluster)  # must outlive the futures it returns
    fs = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=rf)],
        operation_timeout=OP_TIMEOUT, request_timeout=OP_TIMEOUT)
    with pytest.raises(KafkaException) as info:
        fs[name].result(timeout=OP_TIMEOUT)
    assert name not in list_metadata(cluster).topics, f"refused topic {name} exists anyway"
    return info.value.args[0]


def produce_records(cluster, topic, records, partition=0):
    """Idempotent acks=all produce of ``records`` (dicts as from sample_records
    or plain values); every delivery must succeed.  Returns [(offset, value)]."""
    prod = Producer(ck_conf(cluster, **{"acks": "all", "enable.idempotence": True,
                                        "linger.ms": 5, "message.timeout.ms": 60000}))
    reports = []
    for r in records:
        r = r if isinstance(r, dict) else {"key": None, "value": r}
        kwargs = {"key": r["key"], "value": r["value"], "partition": partition,
                  "on_delivery": lambda err, msg: reports.append((err, msg))}
        if r.get("headers"):
            kwargs["headers"] = r["headers"]
        prod.produce(topic, **kwargs)
    assert prod.flush(90) == 0, "deliveries still pending after 90 s"
    errors = [(err, msg.value()) for err, msg in reports if err is not None]
    assert not errors, f"{len(errors)} deliveries failed, e.g. {errors[:3]}"
    out = [(msg.offset(), msg.value()) for _err, msg in reports]
    assert [o for o, _ in out] == sorted(o for o, _ in out), f"offsets out of order: {out}"
    return out


def produce_once(cluster, topic, partition, value):
    """One acks=all record, no retries, no idempotence: the delivery report
    carries the broker's error code.  Returns (KafkaError|None, Message)."""
    prod = Producer(ck_conf(cluster, **{"acks": "all", "enable.idempotence": False,
                                        "retries": 0, "message.timeout.ms": 20000}))
    reports = []
    prod.produce(topic, value=value, partition=partition,
                 on_delivery=lambda err, msg: reports.append((err, msg)))
    prod.flush(30)
    assert reports, "no delivery report within 30 s"
    return reports[0]


def read_partitions(cluster, topic, partitions, timeout=60.0):
    """Every message of the partitions from offset 0 up to the high
    watermark, with a manually assigned consumer.  {partition: [Message]}."""
    c = Consumer(ck_conf(cluster, **{"group.id": "riffle-compat-unused",
                                     "enable.auto.commit": False,
                                     "enable.auto.offset.store": False}))
    try:
        high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1]
                for p in partitions}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got = {p: [] for p in partitions}
        last_error = None

        def done():
            return all((got[p][-1].offset() + 1 if got[p] else 0) >= high[p] for p in partitions)

        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            for m in c.consume(num_messages=5000, timeout=0.5):
                if m.error():
                    last_error = m.error()
                else:
                    got[m.partition()].append(m)
        assert done(), (f"could not read {topic} up to the high watermarks {high} within "
                        f"{timeout}s (last error {last_error})")
        return got
    finally:
        c.close()


# -- background load -------------------------------------------------------------

class AckLog:
    """Outcome of every record a background producer sent."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}      # value -> (partition, offset)
        self.ack_times = []  # monotonic time of each success, in callback order
        self.ack_partitions = []  # the partition of each of those successes
        self.errors = []     # (value, error)
        self.fatal = []      # fatal client errors (broken idempotence state)

    def ok(self, value, partition, offset):
        with self.lock:
            self.acked[value] = (partition, offset)
            self.ack_times.append(time.monotonic())
            self.ack_partitions.append(partition)

    def failed(self, value, error):
        with self.lock:
            self.errors.append((value, error))

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.acked)

    def wait_acks(self, n, timeout=30.0):
        try:
            wait_until(lambda: self.count() >= n, timeout=timeout, interval=0.05,
                       message=f"{n} acknowledged records")
        except AssertionError as exc:
            with self.lock:
                detail = (f"have {len(self.acked)}; {len(self.errors)} failed, e.g. "
                          f"{self.errors[:3]}; fatal client errors: {self.fatal}")
            raise AssertionError(f"{exc}: {detail}") from None

    def longest_gap(self, partition, t0, t1):
        """Longest time without a success on ``partition`` between ``t0`` and ``t1``."""
        with self.lock:
            times = [t for t, p in zip(self.ack_times, self.ack_partitions)
                     if p == partition and t0 <= t <= t1]
        edges = [t0, *times, t1]
        return max(b - a for a, b in zip(edges, edges[1:]))

    def first_ack_after(self, t):
        """Time of the first success reported after monotonic time ``t``."""
        with self.lock:
            i = bisect.bisect_right(self.ack_times, t)
            return self.ack_times[i] if i < len(self.ack_times) else None


class BackgroundProducer:
    """Produces numbered values round-robin over ``partitions`` from a thread
    (about 400 records/s) until ``stop()``, which flushes and closes."""

    interval = 0.0025

    def __init__(self, cluster, topic, partitions=(0,)):
        self.cluster = cluster
        self.topic = topic
        self.partitions = list(partitions)
        self.log = AckLog()
        self.sent = 0
        self.unresolved = 0   # records without any delivery report after the final flush
        self.flush_timeout = 90.0
        self._stop = threading.Event()
        self._exc = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"load-{type(self).__name__}")

    def start(self):
        self._open()
        self._thread.start()
        return self

    def _run(self):
        try:
            i = 0
            while not self._stop.is_set():
                self._send(f"{i:09d}".encode(), self.partitions[i % len(self.partitions)])
                i += 1
                self.sent = i
                self._poll()
                time.sleep(self.interval)
            self._finish()
        except Exception as exc:  # noqa: BLE001 - re-raised by stop()
            self._exc = exc

    def stop(self, flush_timeout=90.0, check=True):
        self.flush_timeout = flush_timeout
        self._stop.set()
        self._thread.join(flush_timeout + 30)
        if check:
            assert not self._thread.is_alive(), "producer thread did not finish"
            if self._exc:
                raise self._exc

    def abort(self):
        """Stop quickly on a failing test path; never raises."""
        try:
            self.stop(flush_timeout=1.0, check=False)
        except Exception:  # noqa: BLE001
            pass


class ConfluentLoad(BackgroundProducer):
    """confluent-kafka idempotent acks=all producer."""

    def _open(self):
        self.prod = Producer(ck_conf(
            self.cluster, **{"bootstrap.servers": self.cluster.bootstrap,
                             "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                             "message.timeout.ms": 120000, "error_cb": self._on_error}))

    def _on_error(self, err):
        if err.fatal():
            self.log.fatal.append(err)

    def _report(self, err, msg):
        if err is None:
            self.log.ok(msg.value(), msg.partition(), msg.offset())
        else:
            self.log.failed(msg.value(), err)

    def _send(self, value, partition):
        while not self._stop.is_set():
            try:
                self.prod.produce(self.topic, value=value, partition=partition,
                                  on_delivery=self._report)
                return
            except BufferError:
                self.prod.poll(0.05)

    def _poll(self):
        self.prod.poll(0)

    def _finish(self):
        self.unresolved = self.prod.flush(self.flush_timeout)


class KafkaPythonLoad(BackgroundProducer):
    """kafka-python acks='all' producer, idempotent when the installed version supports it."""

    def _open(self):
        from kafka import KafkaProducer
        defaults = KafkaProducer.DEFAULT_CONFIG
        cfg = {"bootstrap_servers": self.cluster.bootstrap.split(","), "acks": "all",
               "linger_ms": 5, "retries": 2147483647, "retry_backoff_ms": 100,
               "request_timeout_ms": 10000, "max_block_ms": 10000,
               "client_id": "riffle-compat-cluster-kp"}
        self.idempotent = "enable_idempotence" in defaults
        if self.idempotent:
            cfg["enable_idempotence"] = True
        if "delivery_timeout_ms" in defaults:
            cfg["delivery_timeout_ms"] = 120000
        self.prod = KafkaProducer(**cfg)

    def _ok(self, value, md):
        self.log.ok(value, md.partition, md.offset)

    def _err(self, value, exc):
        self.log.failed(value, exc)

    def _send(self, value, partition):
        from kafka.errors import KafkaTimeoutError
        try:
            fut = self.prod.send(self.topic, value=value, partition=partition)
        except KafkaTimeoutError as exc:  # could not even be queued
            self.log.failed(value, exc)
            return
        fut.add_callback(self._ok, value)
        fut.add_errback(self._err, value)

    def _poll(self):
        pass

    def _finish(self):
        from kafka.errors import KafkaTimeoutError
        try:
            self.prod.flush(timeout=self.flush_timeout)
        except KafkaTimeoutError:
            pass
        with self.log.lock:
            resolved = len(self.log.acked) + len(self.log.errors)
        self.unresolved = self.sent - resolved
        self.prod.close(timeout=10)


class TailReader:
    """A consumer following partitions' tips from offset 0 in a thread, with
    ``auto.offset.reset=error``: a fetch answered OFFSET_OUT_OF_RANGE surfaces as an
    error instead of silently moving the position (to the start: duplicates; to the
    end, the usual default: records skipped)."""

    def __init__(self, cluster, topic, partitions=(0,)):
        self.c = Consumer(ck_conf(cluster, **{"group.id": "riffle-compat-tail",
                                              "enable.auto.commit": False,
                                              "auto.offset.reset": "error"}))
        self.c.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.offsets = {p: [] for p in partitions}
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tail-reader")
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for m in self.c.consume(num_messages=500, timeout=0.2):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        self.errors.append(m.error())
                else:
                    self.offsets[m.partition()].append(m.offset())

    def stop_and_check(self, ends):
        """Once it has read up to ``ends`` ({partition: offset}): every offset read
        once, in order, and no fetch refused as out of range."""
        def there():
            return all(self.offsets[p] and self.offsets[p][-1] + 1 >= end
                       for p, end in ends.items())
        wait_until(there, timeout=60, message=f"the tailing consumer at offsets {ends}")
        self.close()
        resets = [e for e in self.errors if e.code() in (
            KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE)]
        assert not resets, f"the consumer's position was refused: {resets[:3]}"
        for p, read in self.offsets.items():
            assert read == list(range(len(read))), f"partition {p}: offsets read out of order"

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self.c.close()


def verify_acked(cluster, topic, partitions, load, check_order=True, check_dups=True):
    """Read the partitions back: offsets start at 0 without gaps, every
    acknowledged value sits at its acknowledged (partition, offset), no value
    is stored twice and (``check_order``) values increase within a partition."""
    got = read_partitions(cluster, topic, partitions)
    stored = {}
    counts = collections.Counter()
    for p, msgs in got.items():
        offsets = [m.offset() for m in msgs]
        assert offsets == list(range(len(offsets))), (
            f"partition {p}: offsets not contiguous from 0: first {offsets[:3]}, "
            f"{len(offsets)} records, last {offsets[-3:]}")
        for m in msgs:
            stored[(p, m.offset())] = m.value()
            counts[m.value()] += 1
        if check_order:
            values = [int(m.value()) for m in msgs]
            bad = next((k for k in range(1, len(values)) if values[k] <= values[k - 1]), None)
            assert bad is None, (f"partition {p}: values out of order at offsets "
                                 f"{bad - 1},{bad}: {values[bad - 1]}, {values[bad]}")
    if check_dups:
        dups = sorted(v for v, c in counts.items() if c > 1)
        assert not dups, f"{len(dups)} values stored more than once, e.g. {dups[:5]}"
    acked = load.log.snapshot()
    missing = sorted((po, v) for v, po in acked.items() if po not in stored)
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged records missing, e.g. "
                         f"{missing[:5]} ((partition, offset), value)")
    wrong = sorted((po, v, stored[po]) for v, po in acked.items() if stored[po] != v)
    assert not wrong, (f"{len(wrong)} acknowledged offsets hold other values, e.g. {wrong[:5]} "
                       f"((partition, offset), acknowledged, stored)")
    return stored


def finish_load(load, check_errors):
    load.stop()
    assert not load.log.fatal, f"fatal producer errors: {load.log.fatal}"
    assert load.unresolved == 0, f"{load.unresolved} records never got a delivery report"
    if load.log.errors:
        print(f"{len(load.log.errors)} deliveries failed, e.g. {load.log.errors[:3]}")
    if check_errors:
        assert not load.log.errors, (f"{len(load.log.errors)} deliveries failed, e.g. "
                                     f"{load.log.errors[:5]}")


def failover_under_load(cluster, load_cls, kills, tail=False):
    """kill -9 the leader of a one-partition RF3 topic ``kills`` times under
    an acks=all load; after each kill wait for a new leader and the first
    acknowledgement, then restart the killed broker and wait for a full ISR.
    ``tail``: a consumer follows the tip throughout (see ``TailReader``)."""
    topic = create_topic(cluster, partitions=1, rf=3, config={"min.insync.replicas": 2})
    cluster.wait_isr(topic, [0], cluster.ids)
    load = load_cls(cluster, topic).start()
    reader = TailReader(cluster, topic) if tail else None
    try:
        load.log.wait_acks(200)
        for k in range(kills):
            leader = cluster.wait_leader(topic, 0)
            load.log.wait_acks(load.log.count() + 100)
            t_kill = time.monotonic()
            cluster.kill9(leader)
            new = cluster.wait_leader(topic, 0, exclude={leader}, timeout=FAILOVER_BOUND_S)
            t_leader = time.monotonic()
            t_ack = wait_until(lambda: load.log.first_ack_after(t_kill + PRE_KILL_GRACE_S),
                               timeout=FAILOVER_BOUND_S, interval=0.02,
                               message=f"an acknowledgement after killing leader {leader}")
            print(f"{load_cls.__name__} kill #{k + 1}: leader {leader} -> {new}; new leader "
                  f"seen after {t_leader - t_kill:.2f}s, first acknowledgement after "
                  f"{t_ack - t_kill:.2f}s")
            cluster.restart(leader)
            cluster.wait_isr(topic, [0], cluster.ids, timeout=60)
        load.log.wait_acks(load.log.count() + 100)
    except BaseException:
        load.abort()
        if reader:
            reader.close()
        raise
    finish_load(load, check_errors=False)
    idempotent = getattr(load, "idempotent", True)
    stored = verify_acked(cluster, topic, [0], load,
                          check_order=isinstance(load, ConfluentLoad), check_dups=idempotent)
    if reader:
        reader.stop_and_check({0: len(stored)})
    cluster.wait_isr(topic, [0], cluster.ids, timeout=60)
    cluster.assert_replicas_consistent(topic, [0])


# -- tests ---------------------------------------------------------------------------

def test_cluster_forms_and_non_voter_joins(make_cluster):
    c = make_cluster(n=3)
    md = list_metadata(c)
    assert sorted(md.brokers) == [1, 2, 3], md.brokers
    for bid, b in md.brokers.items():
        assert (b.host, b.port) == ("127.0.0.1", c.broker(bid).port), b
    # Every broker, asked directly, knows all the others (once it has applied the
    # registrations: metadata reaches each broker a Raft round trip after the controller).
    for bid in c.ids:
        wait_until(lambda bid=bid: sorted(c.metadata(via=bid)["brokers"]) == [1, 2, 3],
                   timeout=OP_TIMEOUT, message=f"all brokers in Metadata via broker {bid}")
    assert c.wait_controller() in c.voter_ids

    b4 = c.add_broker()
    assert b4.node_id == 4
    wait_until(lambda: sorted(list_metadata(c).brokers) == [1, 2, 3, 4], timeout=OP_TIMEOUT,
               message="broker 4 in Metadata")
    wait_until(lambda: sorted(c.metadata(via=4)["brokers"]) == [1, 2, 3, 4],
               timeout=OP_TIMEOUT, message="all brokers in Metadata via broker 4")
    # A non-voter never becomes the controller.
    assert c.wait_controller() in c.voter_ids
    # The new broker takes replicas: an RF4 topic now fits.
    topic = create_topic(c, partitions=1, rf=4)
    assert sorted(c.replicas_of(topic, 0)) == [1, 2, 3, 4]


def test_rf3_topic_replicates(make_cluster):
    c = make_cluster(n=3)
    partitions = range(3)
    topic = create_topic(c, partitions=3, rf=3, config={"min.insync.replicas": 2})
    c.wait_isr(topic, partitions, c.ids)
    md = list_metadata(c).topics[topic]
    assert sorted(md.partitions) == [0, 1, 2]
    for p, pm in md.partitions.items():
        assert sorted(pm.replicas) == [1, 2, 3], f"partition {p} replicas {pm.replicas}"
        assert sorted(pm.isrs) == [1, 2, 3], f"partition {p} ISR {pm.isrs}"
    leaders = {p: pm.leader for p, pm in md.partitions.items()}
    assert sorted(leaders.values()) == [1, 2, 3], f"leaders not spread over the brokers: {leaders}"

    from confluent_kafka.admin import ConfigResource, ResourceType
    res = ConfigResource(ResourceType.TOPIC, topic)
    admin = ck_admin(c)  # must outlive the future
    configs = admin.describe_configs([res])[res].result(timeout=OP_TIMEOUT)
    assert configs["min.insync.replicas"].value == "2"

    expected = {p: sample_records(40, prefix=f"p{p}") for p in partitions}
    for p in partitions:
        offsets = [o for o, _ in produce_records(c, topic, expected[p], partition=p)]
        assert offsets == list(range(40)), f"partition {p} offsets {offsets}"
    got = read_partitions(c, topic, partitions)
    for p in partitions:
        assert_same_records(expected[p], [{"key": m.key(), "value": m.value(),
                                           "headers": m.headers() or []} for m in got[p]],
                            what=f"partition {p}")
    states = c.assert_replicas_consistent(topic, partitions)
    for p in partitions:
        for bid, st in states[p].items():
            assert st["log_end"] == 40 and st["high_watermark"] == 40, (p, bid, st)
            assert sorted(st["isr"]) == [1, 2, 3] or st["role"] != "leader", (p, bid, st)
        assert {st["role"] for st in states[p].values()} == {"leader", "follower"}


def test_replication_factor_above_live_brokers_is_refused(make_cluster):
    c = make_cluster(n=3, extra_args=FAST)
    err = create_topic_error(c, partitions=1, rf=4)
    assert err.code() == KafkaError.INVALID_REPLICATION_FACTOR, err

    # Brokers that are registered but dead (fenced) do not count.
    victim = next(i for i in c.ids if i != c.wait_controller())
    c.kill9(victim)
    c.wait_fenced(victim, timeout=30)
    err = create_topic_error(c, partitions=1, rf=3)
    assert err.code() == KafkaError.INVALID_REPLICATION_FACTOR, err
    topic = create_topic(c, partitions=2, rf=2)
    for p in range(2):
        assert sorted(c.replicas_of(topic, p)) == sorted(set(c.ids) - {victim}), p


@pytest.mark.timeout(300)
def test_leader_kill9_under_idempotent_load_confluent(make_cluster):
    failover_under_load(make_cluster(n=3, extra_args=FAST), ConfluentLoad, kills=3, tail=True)


@pytest.mark.timeout(300)
def test_leader_kill9_under_load_kafka_python(make_cluster):
    failover_under_load(make_cluster(n=3, extra_args=FAST), KafkaPythonLoad, kills=1)


@pytest.mark.timeout(300)
def test_frozen_followers_shrink_isr_and_min_insync_is_enforced(make_cluster):
    """A single voter (broker 1) keeps the metadata quorum alive while both
    followers are frozen, so the ISR shrinks can be committed: the test is
    about ISR handling, not about losing the quorum."""
    c = make_cluster(n=3, voters=1, extra_args=ISR_FAST)
    topic = create_topic(c, partitions=3, rf=3, config={"min.insync.replicas": 2})
    c.wait_isr(topic, range(3), c.ids)
    leaders = {p: c.wait_leader(topic, p) for p in range(3)}
    p = next((p for p, leader in leaders.items() if leader == 1), None)
    assert p is not None, f"no partition led by broker 1 (leaders not spread): {leaders}"
    f1, f2 = 2, 3
    acked = produce_records(c, topic, [b"before"], partition=p)

    c.sigstop(f1)
    t0 = time.monotonic()
    c.wait_isr(topic, [p], {1, f2}, timeout=LAG_MS / 1000 + 15)
    print(f"ISR shrank to [1, {f2}] {time.monotonic() - t0:.2f}s after freezing broker {f1}")
    acked += produce_records(c, topic, [b"one-follower-frozen"], partition=p)

    c.sigstop(f2)
    c.wait_isr(topic, [p], {1}, timeout=LAG_MS / 1000 + 15)
    log_end = c.partition_state(1, topic, p)["log_end"]
    err, _msg = produce_once(c, topic, p, b"refused")
    assert err is not None and err.code() == KafkaError.NOT_ENOUGH_REPLICAS, (
        f"acks=all with ISR [1] < min.insync.replicas 2: got {err}")
    assert c.partition_state(1, topic, p)["log_end"] == log_end, "refused record was appended"

    c.sigcont(f1)
    c.sigcont(f2)
    c.wait_isr(topic, [p], c.ids, timeout=60)
    acked += produce_records(c, topic, [b"after"], partition=p)
    c.assert_replicas_consistent(topic, [p])
    got = read_partitions(c, topic, [p])[p]
    assert [(m.offset(), m.value()) for m in got] == acked


def test_a_leader_that_cannot_hand_over_stops_with_followers_attached(make_cluster):
    """SIGTERM of the only in-sync replica of a partition whose followers are still
    copying (held back by a replication throttle, their fetch streams open): the
    leadership cannot move, and the broker exits cleanly at once, without waiting for
    the controller to fence it and the followers to let go.  Broker 1 alone is the
    metadata quorum, so freezing the followers leaves it working."""
    c = make_cluster(n=4, voters=1,
                     extra_args=(*ISR_FAST, "--controlled-shutdown-timeout-ms", 1000))
    # Balancing off: it would move replicas onto broker 1, which has none.
    assert c.broker(1).http_request("DELETE", "/v1/balancer")[0] == 200
    topic = unique_topic("handover")
    adm = ck_admin(c)  # must outlive its futures
    adm.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[[2, 3, 4]],
                                config={"follower.replication.throttled.replicas": "*"})],
                      operation_timeout=OP_TIMEOUT)[topic].result(OP_TIMEOUT)
    assert c.wait_leader(topic, 0, timeout=OP_TIMEOUT) == 2
    c.wait_isr(topic, [0], {2, 3, 4})
    # Only out-of-sync replicas are throttled: in sync, the followers do not feel it yet.
    for b in (3, 4):
        with kafka_wire.Conn(c.broker(b).port) as conn:
            assert kafka_wire.incremental_alter_configs_v0(
                conn, kafka_wire.RESOURCE_BROKER, str(b),
                [("follower.replication.throttled.rate", kafka_wire.OP_SET, "1000")]) == (0, None)
    for b in (3, 4):
        c.sigstop(b)
    c.wait_isr(topic, [0], {2}, timeout=LAG_MS / 1000 + 15)
    # More than one replica fetch (8 MiB) carries: a fetch sent before the follower
    # learns that it left the ISR is not throttled yet.
    produce_records(c, topic, [b"x" * 1000] * 20000, partition=0)
    for b in (3, 4):
        c.sigcont(b)
    time.sleep(1.5)  # the followers fetch again, behind the throttle
    c.wait_isr(topic, [0], {2}, timeout=1)
    t0 = time.monotonic()
    assert c.stop_broker(2) == 0
    took = time.monotonic() - t0
    print(f"broker 2 stopped {took:.2f} s after SIGTERM")
    # Not the broker session (3 s) until the controller fences it.
    assert took < 1.5, took


@pytest.mark.timeout(300)
def test_isolated_leader_unreplicated_tail_is_truncated(make_cluster):
    """The leader keeps appending (acks=1) while its followers are frozen;
    cut off from the quorum it must not commit that tail.  Then the leader
    freezes, the followers resume and elect a new leader which writes other
    records after what it has; the old leader, resumed, must truncate its
    tail and end up with exactly the new leader's log.

    A follower may already hold a prefix of the tail (a fetch answered just
    before it froze is read when it resumes): acks=1 records are neither
    guaranteed lost nor kept, only never diverging between replicas."""
    c = make_cluster(n=3, extra_args=ISR_FAST)
    topic = create_topic(c, partitions=1, rf=3, config={"min.insync.replicas": 2})
    c.wait_isr(topic, [0], c.ids)
    before = produce_records(c, topic, [f"before-{i}".encode() for i in range(20)])
    c.assert_replicas_consistent(topic, [0])
    old = c.wait_leader(topic, 0)
    followers = [i for i in c.ids if i != old]

    for f in followers:
        c.sigstop(f)
    tail = [f"tail-{i}".encode() for i in range(6)]
    with kafka_wire.Conn(c.broker(old).port) as conn:
        for chunk in (tail[:3], tail[3:]):
            res = kafka_wire.produce_v3(conn, topic, 0,
                                        kafka_wire.record_batch([(None, v) for v in chunk]),
                                        acks=1)
            assert res[topic][0]["error_code"] == 0, res
    # Longer than replica.lag.time.max: a leader without a quorum cannot
    # commit a smaller ISR, so the tail stays above the high watermark.
    time.sleep(2 * LAG_MS / 1000)
    st = c.partition_state(old, topic, 0)
    assert (st["log_end"], st["high_watermark"]) == (26, 20), st

    c.sigstop(old)
    for f in followers:
        c.sigcont(f)
    new = c.wait_leader(topic, 0, exclude={old}, timeout=30)
    after = produce_records(c, topic, [f"after-{i}".encode() for i in range(20)])
    kept = after[0][0] - 20
    assert 0 <= kept <= len(tail), f"new leader {new} continued at {after[0][0]}"

    c.sigcont(old)
    wait_until(lambda: c.partition_state(old, topic, 0)["role"] == "follower", timeout=30,
               message=f"old leader {old} to become a follower")
    c.wait_isr(topic, [0], c.ids, timeout=60)
    states = c.assert_replicas_consistent(topic, [0])[0]
    assert states[old]["log_end"] == 40 + kept, states[old]
    got = read_partitions(c, topic, [0])[0]
    kept_tail = [(20 + i, v) for i, v in enumerate(tail[:kept])]
    assert [(m.offset(), m.value()) for m in got] == before + kept_tail + after
    assert not set(tail[kept:]) & {m.value() for m in got}, "diverging tail survived"


def test_controller_failover(make_cluster):
    c = make_cluster(n=3, extra_args=FAST)
    old = c.wait_controller()
    t0 = time.monotonic()
    c.kill9(old)
    new = c.wait_controller(exclude={old}, timeout=10)
    print(f"controller {old} -> {new} in {time.monotonic() - t0:.2f}s")
    assert new in c.voter_ids and new != old
    # The new controller fences the dead broker and keeps serving metadata writes.
    c.wait_fenced(old, timeout=30)
    topic = create_topic(c, partitions=2, rf=2)
    for p in range(2):
        assert old not in c.replicas_of(topic, p), p
    acked = produce_records(c, topic, [b"a", b"b", b"c"], partition=0)
    got = read_partitions(c, topic, [0])[0]
    assert [(m.offset(), m.value()) for m in got] == acked

    c.restart(old)
    c.wait_unfenced(c.ids)
    assert c.wait_controller() in c.voter_ids
    topic3 = create_topic(c, partitions=1, rf=3)
    assert sorted(c.replicas_of(topic3, 0)) == [1, 2, 3]


@pytest.mark.timeout(300)
def test_rolling_restart_under_idempotent_load(make_cluster):
    c = make_cluster(n=3, extra_args=FAST)
    partitions = range(3)
    topic = create_topic(c, partitions=3, rf=3, config={"min.insync.replicas": 2})
    c.wait_isr(topic, partitions, c.ids)
    load = ConfluentLoad(c, topic, partitions).start()
    # Leaderships move under a consumer at the tip: it never finds its position refused.
    reader = TailReader(c, topic, partitions)
    try:
        load.log.wait_acks(300)
        t0 = time.monotonic()
        for bid in c.ids:
            c.stop_broker(bid)  # SIGTERM; exit code 0 asserted
            # Writes keep flowing while the broker is down...
            load.log.wait_acks(load.log.count() + 150)
            c.restart(bid)
            # ...and it catches up before the next one goes.
            c.wait_isr(topic, partitions, c.ids, timeout=60)
            load.log.wait_acks(load.log.count() + 150)
        t1 = time.monotonic()
    except BaseException:
        load.abort()
        reader.close()
        raise
    finish_load(load, check_errors=True)
    # Leaderships move before each broker stops: no partition pauses for long.
    gaps = {p: round(load.log.longest_gap(p, t0, t1), 3) for p in partitions}
    print(f"longest pause in acknowledgements per partition during the roll: {gaps} s")
    assert max(gaps.values()) <= ROLL_PAUSE_BOUND_S, gaps
    stored = verify_acked(c, topic, partitions, load)
    reader.stop_and_check({p: sum(1 for q, _ in stored if q == p) for p in partitions})
    c.assert_replicas_consistent(topic, partitions)
    # The roll moved leaderships around; a preferred election (Kafka's ElectLeaders)
    # gives each partition back to its first replica.
    admin = ck_admin(c)
    tps = [TopicPartition(topic, p) for p in partitions]
    result = admin.elect_leaders(ElectionType.PREFERRED, tps).result(timeout=OP_TIMEOUT)
    for tp, err in result.items():
        assert err is None or err.code() == KafkaError.ELECTION_NOT_NEEDED, (tp, err)
    for p in partitions:
        wait_until(lambda p=p: c.leader_of(topic, p) == c.replicas_of(topic, p)[0],
                   timeout=OP_TIMEOUT, message=f"preferred leader of partition {p}")


def group_coordinator(cluster, group) -> int:
    """Node id of the group's coordinator (confluent-kafka's describe_consumer_groups)."""
    admin = ck_admin(cluster)
    desc = admin.describe_consumer_groups([group], request_timeout=OP_TIMEOUT)[group]
    return desc.result(timeout=OP_TIMEOUT).coordinator.id


@pytest.mark.timeout(300)
def test_consumer_group_survives_coordinator_kill9(make_cluster):
    """Committed offsets live in the replicated offsets topic: after kill -9 of
    the group's coordinator the new one (the next leader of the group's offsets
    partition) has every acknowledged commit, and the same consumer carries on
    from them.  Membership is not replicated: the consumer rejoins the new
    coordinator, so records read after its last acknowledged commit may be read
    again (at-least-once) but none is skipped."""
    c = make_cluster(n=3, extra_args=FAST)
    partitions = range(3)
    topic = create_topic(c, partitions=3, rf=3, config={"min.insync.replicas": 2})
    values = {p: [f"{p}-{i:05d}".encode() for i in range(400)] for p in partitions}
    for p in partitions:
        produce_records(c, topic, values[p], partition=p)
    group = unique_topic("group")
    consumer = Consumer(ck_conf(c, **{"group.id": group, "enable.auto.commit": False,
                                      "auto.offset.reset": "earliest",
                                      "session.timeout.ms": 6000}))
    seen = []
    acked = {p: {0} for p in partitions}  # every offset the coordinator acknowledged
    failed_commits = []

    def consume_until(done, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(num_messages=50, timeout=0.5) if not m.error()]
            seen.extend((m.partition(), m.offset(), m.value()) for m in batch)
            if not batch:
                continue
            try:
                # Synchronous: returns once the coordinator acknowledged the commit.
                for tp in consumer.commit(asynchronous=False):
                    if tp.offset >= 0:
                        acked[tp.partition].add(tp.offset)
            except KafkaException as exc:
                failed_commits.append(exc.args[0])
        assert done(), f"consumed {len(seen)} records within {timeout}s"

    def committed_now():
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=OP_TIMEOUT)
        return {tp.partition: tp.offset for tp in tps}

    try:
        consumer.subscribe([topic])
        consume_until(lambda: len(seen) >= 600)
        before = committed_now()
        assert sum(max(o, 0) for o in before.values()) == len(seen), (before, len(seen))
        coordinator = group_coordinator(c, group)
        t0 = time.monotonic()
        c.kill9(coordinator)
        # Every acknowledged commit is back as soon as the new coordinator answers.
        assert committed_now() == before
        print(f"offsets readable again {time.monotonic() - t0:.2f}s after the kill")
        assert group_coordinator(c, group) != coordinator
        # The same consumer goes on to the end of every partition.
        consume_until(lambda: {(p, o) for p, o, _ in seen} >= {
            (p, o) for p in partitions for o in range(400)}, timeout=90)
    finally:
        consumer.close()
    print(f"{len(seen) - 1200} records read twice; commits refused during the move: "
          f"{failed_commits}")
    for p in partitions:
        got = [(o, v) for q, o, v in seen if q == p]
        assert all(values[p][o] == v for o, v in got), f"partition {p}: wrong value at an offset"
        # Reading restarts only at acknowledged commits, never past them.
        prev = -1
        for o, _ in got:
            assert o == prev + 1 or (o in acked[p] and o <= prev + 1), \
                f"partition {p}: read {o} after {prev} (acknowledged commits {sorted(acked[p])})"
            prev = o
    # A new member of the group starts where the group left off.
    late = Consumer(ck_conf(c, **{"group.id": group, "enable.auto.commit": False}))
    try:
        committed = late.committed([TopicPartition(topic, p) for p in partitions],
                                   timeout=OP_TIMEOUT)
        assert {tp.partition: tp.offset for tp in committed} == {p: 400 for p in partitions}
    finally:
        late.close()
    c.restart(coordinator)
    c.wait_isr("__consumer_offsets", range(50), c.ids, timeout=60)
    c.assert_replicas_consistent("__consumer_offsets", range(50))


@pytest.mark.timeout(300)
def test_partitioned_leader_is_replaced_and_truncates(make_cluster):
    """A real network partition (a network namespace per broker; blackhole
    routes between them): the leader of a partition is cut off from both other
    brokers while clients still reach every broker.  Its acks=1 writes stay
    above its high watermark; the majority fences it after the session timeout
    and elects a new leader, where an idempotent acks=all producer carries on.
    Once the network heals the old leader truncates its tail, and every replica
    ends with the same log, holding every acknowledged acks=all record at its
    acknowledged offset."""
    c = make_cluster(n=3, extra_args=ISR_FAST, netns=True)
    topic = create_topic(c, partitions=1, rf=3, config={"min.insync.replicas": 2})
    c.wait_isr(topic, [0], c.ids)
    old = c.wait_leader(topic, 0)
    others = [i for i in c.ids if i != old]
    load = ConfluentLoad(c, topic).start()
    orphans = [f"orphan-{i}".encode() for i in range(5)]
    try:
        load.log.wait_acks(200)
        for o in others:
            c.network.cut(old, o)
        t_cut = time.monotonic()
        ob = c.broker(old)
        with kafka_wire.Conn(ob.port, host=ob.host) as conn:
            batch = kafka_wire.record_batch([(None, v) for v in orphans])
            res = kafka_wire.produce_v3(conn, topic, 0, batch, acks=1)
        print(f"acks=1 write to the isolated leader: {res[topic][0]}")

        def new_leader():
            leader = c.leader_of(topic, 0, others[0])
            return leader if leader in others else None

        new = wait_until(new_leader, timeout=30, message="a leader on the majority side")
        t_new = time.monotonic()
        t_ack = wait_until(lambda: load.log.first_ack_after(t_new), timeout=90, interval=0.05,
                           message="an acknowledgement from the new leader")
        print(f"partitioned leader {old}: new leader {new} after {t_new - t_cut:.2f}s, "
              f"first acknowledgement after {t_ack - t_cut:.2f}s")
        load.log.wait_acks(load.log.count() + 200)
        for o in others:
            c.network.heal(old, o)
        wait_until(lambda: c.partition_state(old, topic, 0)["role"] == "follower", timeout=30,
                   message=f"old leader {old} to become a follower")
        c.wait_isr(topic, [0], c.ids, timeout=60)
        load.log.wait_acks(load.log.count() + 200)
    except BaseException:
        load.abort()
        raise
    finish_load(load, check_errors=False)
    stored = verify_acked(c, topic, [0], load)
    c.assert_replicas_consistent(topic, [0])
    # The tail the isolated leader accepted with acks=1 was never committed.
    assert not set(orphans) & set(stored.values()), "the isolated leader's tail survived"
