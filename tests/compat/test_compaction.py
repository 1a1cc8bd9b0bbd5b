"""Log compaction (`cleanup.policy=compact`) with real brokers and clients.

Keys K1..K9 updated many times end with exactly their latest value, at the offset it was
acknowledged at (offsets never move, gaps stay gaps); a tombstone is readable until
`delete.retention.ms`, then gone; confluent-kafka, kafka-python, kcat and Kafka's Java
console consumer all read the compacted log; keyless records are refused with
INVALID_RECORD. Under a concurrent producer and consumer the latest acknowledged value of
every key survives compaction, and so it does across a kill -9 in the middle of it. With
transactions, the records of aborted transactions are cleaned away and never supersede a
committed value, and an open transaction's records stay until it ends.
"""

from __future__ import annotations

import random
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, TopicPartition as KpTp
from kafka.admin import KafkaAdminClient, NewTopic as KpNewTopic

import kafka_wire as kw
from helpers import kafka_tool, unique_topic, wait_until
from test_kcat import kcat

COMPACT = {"cleanup.policy": "compact", "segment.bytes": "4096",
           "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "3000"}
# The cleaner looks every 200 ms.
CLEANER = ("log.cleaner.backoff.ms", kw.OP_SET, "200")


def cleaner_every_200ms(b):
    with kw.Conn(b.port) as conn:
        assert kw.incremental_alter_configs_v0(conn, kw.RESOURCE_BROKER, "", [CLEANER]) == (0, None)


def create(b, config=None, partitions=1) -> str:
    name = unique_topic("compact")
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config={**COMPACT, **(config or {})})]
                        )[name].result(30)
    return name


def produce(b, topic, pairs, **conf) -> dict[int, tuple[bytes, bytes | None]]:
    """Produces (key, value) pairs one batch each; returns offset -> (key, value) acked."""
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "acks": "all", **conf})
    acked = {}

    def report(err, msg):
        assert err is None, err
        acked[msg.offset()] = (msg.key(), msg.value())

    for k, v in pairs:
        p.produce(topic, key=k, value=v, partition=0, on_delivery=report)
        p.poll(0)
    assert p.flush(30) == 0
    return acked


def read_ck(b, topic) -> list[tuple[int, bytes, bytes | None]]:
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    while True:
        m = c.poll(10)
        assert m is not None, "no end of partition"
        if m.error():
            assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
            break
        out.append((m.offset(), m.key(), m.value()))
    c.close()
    return out


def latest(acked: dict[int, tuple[bytes, bytes | None]]) -> dict[bytes, tuple[int, bytes | None]]:
    out = {}
    for offset in sorted(acked):
        k, v = acked[offset]
        out[k] = (offset, v)
    return out


def test_latest_value_per_key_tombstones_and_every_client(make_broker):
    b = make_broker()
    cleaner_every_200ms(b)
    # Long enough for every client below to read the tombstone first.
    topic = create(b, config={"delete.retention.ms": "30000"})
    keys = [f"K{i}".encode() for i in range(1, 10)]
    updates = [(k, f"{k.decode()}-v{n}".encode() + b"." * 100) for n in range(60) for k in keys]
    acked = produce(b, topic, updates)
    acked.update(produce(b, topic, [(b"K9", None)]))  # tombstone
    # Fillers push the last updates out of the active segment: all of them cleanable.
    acked.update(produce(b, topic, [(f"F{i}".encode(), b"x" * 200) for i in range(60)]))
    want = latest(acked)
    total = len(acked)

    def compacted():
        got = read_ck(b, topic)
        return got if [r for r in got if r[1].startswith(b"K")] == sorted(
            (o, k, v) for k, (o, v) in want.items() if k.startswith(b"K")) else None

    got = wait_until(compacted, timeout=60, interval=0.5, message="K1..K9 compacted")
    # Offsets unchanged: every record read is the one acknowledged at that offset.
    assert all(acked[o] == (k, v) for o, k, v in got)
    assert len(got) < total / 4, (len(got), total)
    assert (want[b"K9"][0], b"K9", None) in got, "the tombstone is readable for a while"
    # Every client reads the compacted log the same way.
    kc = KafkaConsumer(bootstrap_servers=b.bootstrap, enable_auto_commit=False,
                       consumer_timeout_ms=5000)
    kc.assign([KpTp(topic, 0)])
    kc.seek_to_beginning()
    kp_got = [(m.offset, m.key, m.value) for m in kc]
    kc.close()
    assert kp_got[:len(got)] == got[:len(kp_got)] and len(kp_got) >= len(got) - 60
    out = kcat(b, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-f",
               "%o %k %S\n").stdout.decode()
    kcat_got = [ln.split(" ") for ln in out.splitlines() if ln.strip()]
    assert [int(o) for o, *_ in kcat_got][:len(got)] == [o for o, _, _ in got][:len(kcat_got)]
    java = kafka_tool("org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server",
                      b.bootstrap, "--topic", topic, "--from-beginning", "--timeout-ms", 8000,
                      "--property", "print.offset=true", "--property", "print.key=true",
                      check=False).stdout
    java_offsets = [int(ln.split("\t")[0].split(":")[1]) for ln in java.splitlines()
                    if ln.startswith("Offset:")]
    assert java_offsets[:len(got)] == [o for o, _, _ in got][:len(java_offsets)], java[:500]
    # After delete.retention.ms the tombstone goes too, at a later cleaning (new records
    # make the log dirty again).
    def tombstone_gone():
        produce(b, topic, [(f"G{time.monotonic()}".encode(), b"y" * 500) for _ in range(10)])
        return all(k != b"K9" for _, k, _ in read_ck(b, topic))

    wait_until(tombstone_gone, timeout=90, interval=2, message="the tombstone removed")
    metrics = b.http_get("/metrics")[1]
    runs = [ln for ln in metrics.splitlines()
            if ln.startswith("riffle_log_cleaner_runs_total") and topic in ln]
    assert runs and float(runs[0].split()[-1]) >= 2, runs
    print(f"{total} records acknowledged, {len(got)} left after compaction")


def read_uncommitted(b, topic) -> list[tuple[int, bytes, bytes | None]]:
    c = KafkaConsumer(bootstrap_servers=b.bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=3000, isolation_level="read_uncommitted")
    c.assign([KpTp(topic, 0)])
    c.seek_to_beginning()
    out = [(m.offset, m.key, m.value) for m in c]
    c.close()
    return out


def test_compaction_drops_aborted_transactions_and_waits_for_open_ones(make_broker):
    b = make_broker()
    cleaner_every_200ms(b)
    topic = create(b)
    p = Producer({"bootstrap.servers": b.bootstrap, "transactional.id": unique_topic("ctid"),
                  "linger.ms": 0})
    p.init_transactions(30)

    def txn(pairs, commit):
        p.begin_transaction()
        for k, v in pairs:
            p.produce(topic, key=k, value=v, partition=0)
        p.flush(30)
        p.commit_transaction(30) if commit else p.abort_transaction(30)

    keys = [f"K{i}".encode() for i in range(5)]
    txn([(k, k + b"-committed" + b"." * 200) for k in keys], commit=True)
    txn([(k, k + b"-aborted" + b"." * 200) for k in keys], commit=False)
    # An open transaction's update of K0 sits between fillers: the cleaner must stop there.
    fill = [(f"F{i}".encode(), b"x" * 300) for i in range(20)]
    produce(b, topic, fill)
    p.begin_transaction()
    p.produce(topic, key=b"K0", value=b"K0-open", partition=0)
    p.flush(30)
    produce(b, topic, fill)

    def aborted_gone():
        got = read_uncommitted(b, topic)
        return got if not any(v and b"-aborted" in v for _, _, v in got) else None

    got = wait_until(aborted_gone, timeout=60, interval=0.5, message="aborted records cleaned")
    values = {k: v for _, k, v in got}
    assert all(values[k].startswith(k + b"-committed") for k in keys[1:]), values
    # The committed K0 stays as long as the open transaction may still abort.
    assert any(k == b"K0" and v.startswith(b"K0-committed") for _, k, v in got), got
    assert (b"K0", b"K0-open") in [(k, v) for _, k, v in got]
    p.commit_transaction(30)
    produce(b, topic, fill)

    def superseded():
        got = read_uncommitted(b, topic)
        k0 = [v for _, k, v in got if k == b"K0"]
        return got if k0 == [b"K0-open"] else None

    got = wait_until(superseded, timeout=60, interval=0.5, message="K0 superseded by its commit")
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g"),
                  "isolation.level": "read_committed", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, 0)])
    committed = {}
    while (m := c.poll(10)) is not None and not m.error():
        committed[m.key()] = m.value()
    c.close()
    assert committed[b"K0"] == b"K0-open"
    assert all(committed[k].startswith(k + b"-committed") for k in keys[1:]), committed


def test_keyless_records_are_refused_on_compacted_topics(make_broker):
    b = make_broker()
    topic = create(b)
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "retries": 0})
    errors = []
    p.produce(topic, value=b"no key", partition=0, on_delivery=lambda e, m: errors.append(e))
    p.flush(30)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors
    assert produce(b, topic, [(b"k", b"v")]) == {0: (b"k", b"v")}


def test_compaction_under_load_and_kill9_keeps_the_latest_acknowledged_values(make_broker):
    b = make_broker()
    cleaner_every_200ms(b)
    topic = create(b, config={"segment.bytes": "16384"})
    keys = [f"key-{i}".encode() for i in range(50)]
    acked: dict[int, tuple[bytes, bytes]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def producer():
        p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 2, "acks": "all",
                      "enable.idempotence": True, "message.timeout.ms": 60000})
        n = 0

        def report(err, msg):
            if err is None:
                with lock:
                    acked[msg.offset()] = (msg.key(), msg.value())

        while not stop.is_set():
            k = random.choice(keys)
            p.produce(topic, key=k, value=f"{k.decode()}={n}".encode() + b"." * 200,
                      partition=0, on_delivery=report)
            n += 1
            p.poll(0)
            if n % 200 == 0:
                time.sleep(0.02)
        p.flush(60)

    reads = []

    def consumer():
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g"),
                      "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        while not stop.is_set():
            m = c.poll(0.2)
            if m is not None and not m.error():
                reads.append(m.offset())
        c.close()

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) > 4000, timeout=60, message="a loaded log")
        # Somewhere in a cleaning pass (they run every 200 ms on this much data).
        wait_until(lambda: "riffle_log_cleaner_runs_total" in b.http_get("/metrics")[1],
                   timeout=30, message="a first cleaning")
        time.sleep(random.uniform(0.05, 0.4))
        b.kill9()
        b.start()
        wait_until(lambda: len(acked) > 8000, timeout=90, message="more load after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    assert len(reads) > 1000, "the live consumer kept reading"
    want = latest(acked)
    # The cleaner keeps going after the restart; the log reads from start to end either way.
    got = read_ck(b, topic)
    by_offset = {o: (k, v) for o, k, v in got}
    for k, (o, v) in want.items():
        assert by_offset.get(o) == (k, v), f"latest acknowledged {k!r} at {o} lost"
    assert all(acked.get(o, (k, v)) == (k, v) for o, k, v in got), "a record moved"
    assert [o for o, _, _ in got] == sorted(o for o, _, _ in got)
    print(f"{len(acked)} acknowledged, {len(got)} stored after compaction and kill -9")


def test_a_follower_catches_up_through_compacted_gaps_and_can_lead(make_cluster):
    c = make_cluster(n=3, extra_args=("--broker-heartbeat-interval-ms", 250,
                                      "--broker-session-timeout-ms", 3000))
    with kw.Conn(c.broker(1).port) as conn:
        assert kw.incremental_alter_configs_v0(conn, kw.RESOURCE_BROKER, "", [CLEANER]) == (0, None)
    name = unique_topic("compact")
    leader, away = 1, 2
    kp_admin = KafkaAdminClient(bootstrap_servers=c.bootstrap)
    kp_admin.create_topics([KpNewTopic(name, num_partitions=-1, replication_factor=-1,
                                       replica_assignments={0: [leader, away]},
                                       topic_configs=COMPACT)])
    kp_admin.close()
    c.wait_isr(name, [0], [leader, away])
    keys = [f"K{i}".encode() for i in range(20)]
    acked = produce(c, name, [(k, b"first") for k in keys])
    c.stop_broker(away)
    # While it is away the leader's log is rewritten, leaving gaps above its log end.
    acked.update(produce(c, name, [(k, f"v{n}".encode() + b"." * 100)
                                   for n in range(40) for k in keys]))
    acked.update(produce(c, name, [(f"F{i}".encode(), b"x" * 200) for i in range(60)]))
    wait_until(lambda: len(read_ck(c, name)) < len(acked) / 4, timeout=60, interval=0.5,
               message="the leader compacted")
    c.restart(away)
    c.wait_isr(name, [0], [leader, away])
    ends = {i: c.partition_state(i, name, 0)["log_end"] for i in (leader, away)}
    assert ends[away] == ends[leader] == max(acked) + 1, ends
    # The replica that caught up through the gaps leads: it holds every key's latest value.
    c.kill9(leader)
    assert c.wait_leader(name, 0, exclude=(leader,)) == away
    got = {k: (o, v) for o, k, v in read_ck(c, name)}
    for k, (o, v) in latest(acked).items():
        assert got.get(k) == (o, v), (k, got.get(k), (o, v))
