"""Transactions (exactly-once) with real brokers and clients.

confluent-kafka's transactional producer commits and aborts transactions over several
partitions: a `read_committed` consumer sees exactly the committed records, in order,
once, while a `read_uncommitted` one sees everything; an open transaction holds the last
stable offset (ListOffsets and fetches at `read_committed`) back until it ends.
Consume-transform-produce with `send_offsets_to_transaction` (aborts mixed in, the
consumer rewinding to its committed offsets) yields every input exactly once in the
output, and the group's offsets move only with committed transactions. A second
producer with the same `transactional.id` fences the first and aborts its open
transaction; a transaction left open past `transaction.timeout.ms` is aborted by the
coordinator. A write that reaches a partition after its transaction was aborted, or
that its transaction never added the partition for, is refused with INVALID_TXN_STATE
(KIP-890's verification, with the coordinator on another broker in the cluster) and
leaves no hanging transaction behind. On a 3-broker cluster the coordinator's broker and
a partition leader are killed mid-stream: every transaction is there whole or not at
all, and every committed one is there.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire as w
from helpers import unique_topic, wait_until


def is_cluster(target) -> bool:
    return hasattr(target, "ids")


def new_topic(target, partitions=3, prefix="txn") -> str:
    name = unique_topic(prefix)
    rf = 3 if is_cluster(target) else 1
    admin = AdminClient({"bootstrap.servers": target.bootstrap})
    admin.create_topics([NewTopic(name, partitions, rf)])[name].result(30)
    if is_cluster(target):
        for p in range(partitions):
            target.wait_leader(name, p, timeout=30)
    return name


def txn_producer(target, txn_id, **conf) -> Producer:
    p = Producer({"bootstrap.servers": target.bootstrap, "transactional.id": txn_id,
                  "linger.ms": 5, "broker.address.family": "v4", **conf})
    p.init_transactions(30)
    return p


def consumer(target, isolation, group=None, **conf) -> Consumer:
    return Consumer({"bootstrap.servers": target.bootstrap, "broker.address.family": "v4",
                     "group.id": group or unique_topic("txn-reader"),
                     "isolation.level": isolation, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", **conf})


def read_all(target, topic, partitions, isolation, timeout=30.0) -> dict[int, list]:
    """Every record a consumer at ``isolation`` reads from offset 0 up to the end it is
    allowed to see: {partition: [(offset, key, value)]}."""
    c = consumer(target, isolation)
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20, cached=False)[1]
                for p in range(partitions)}
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + timeout

        def done():
            pos = c.position([TopicPartition(topic, p) for p in range(partitions)])
            # An empty partition has no position until a record arrives.
            return all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in pos)
        while not done():
            assert time.monotonic() < deadline, f"{isolation}: not at {ends} in {timeout}s"
            for m in c.consume(500, 0.5):
                assert not m.error(), m.error()
                got[m.partition()].append((m.offset(), m.key(), m.value()))
        return got
    finally:
        c.close()


def values(got) -> list[bytes]:
    return [v for recs in got.values() for _, _, v in recs]


def produce_txn(p, topic, tag, n, partitions, commit=True):
    p.begin_transaction()
    for i in range(n):
        p.produce(topic, key=f"{i}".encode(), value=f"{tag}-{i:04d}".encode(),
                  partition=i % partitions)
    if commit:
        p.commit_transaction(30)
    else:
        p.flush(30)
        p.abort_transaction(30)


def test_read_committed_sees_exactly_the_committed_transactions(target):
    topic = new_topic(target)
    p = txn_producer(target, unique_topic("tid"))
    produce_txn(p, topic, "c1", 60, 3)
    produce_txn(p, topic, "a1", 45, 3, commit=False)
    produce_txn(p, topic, "c2", 60, 3)
    produce_txn(p, topic, "a2", 30, 3, commit=False)
    committed = read_all(target, topic, 3, "read_committed")
    everything = read_all(target, topic, 3, "read_uncommitted")
    for part in range(3):
        want = [f"{tag}-{i:04d}".encode() for tag, n in (("c1", 60), ("c2", 60))
                for i in range(n) if i % 3 == part]
        assert [v for _, _, v in committed[part]] == want, f"partition {part}"
        offsets = [o for o, _, _ in committed[part]]
        assert offsets == sorted(set(offsets))
    assert len(values(everything)) == 60 + 45 + 60 + 30
    assert {v.split(b"-")[0] for v in values(everything)} == {b"c1", b"a1", b"c2", b"a2"}

    # An open transaction holds the last stable offset back; its end releases it.
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value=f"open-{i}".encode(), partition=0)
    p.flush(30)
    rc, ru = consumer(target, "read_committed"), consumer(target, "read_uncommitted")
    try:
        tp = TopicPartition(topic, 0)
        hw = ru.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        lso = rc.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        assert lso == hw - 10, (lso, hw)
        assert not [v for _, _, v in read_all(target, topic, 3, "read_committed")[0]
                    if v.startswith(b"open")]
        p.commit_transaction(30)
        wait_until(lambda: rc.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                   == ru.get_watermark_offsets(tp, timeout=10, cached=False)[1],
                   timeout=10, message="the LSO to reach the high watermark")
    finally:
        rc.close()
        ru.close()
    opened = [v for _, _, v in read_all(target, topic, 3, "read_committed")[0]
              if v.startswith(b"open")]
    assert opened == [f"open-{i}".encode() for i in range(10)]


def test_consume_transform_produce_is_exactly_once(target):
    source, sink = new_topic(target, 2, "ctp-in"), new_topic(target, 2, "ctp-out")
    plain = Producer({"bootstrap.servers": target.bootstrap, "broker.address.family": "v4",
                      "enable.idempotence": True})
    for i in range(300):
        plain.produce(source, value=f"in-{i:04d}".encode(), partition=i % 2)
    assert plain.flush(30) == 0
    group = unique_topic("ctp-group")
    c = consumer(target, "read_committed", group)
    c.subscribe([source])
    p = txn_producer(target, unique_topic("ctp-tid"))
    rounds = aborted = 0
    done = set()
    deadline = time.monotonic() + 90
    try:
        while len(done) < 300:
            assert time.monotonic() < deadline, f"only {len(done)} inputs processed"
            msgs = [m for m in c.consume(40, 1.0) if not m.error()]
            if not msgs:
                continue
            rounds += 1
            p.begin_transaction()
            for m in msgs:
                p.produce(sink, value=m.value().upper(), partition=m.partition())
            p.send_offsets_to_transaction(c.position(c.assignment()),
                                          c.consumer_group_metadata(), 30)
            if rounds % 3 == 0:
                # Aborted once on the broker: nothing of it counts; rewind to the
                # committed offsets.
                p.flush(30)
                p.abort_transaction(30)
                aborted += 1
                for tp in c.committed(c.assignment(), timeout=10):
                    c.seek(TopicPartition(tp.topic, tp.partition,
                                          tp.offset if tp.offset >= 0 else 0))
            else:
                p.commit_transaction(30)
                done.update(m.value() for m in msgs)
    finally:
        c.close()
    assert aborted > 0
    out = values(read_all(target, sink, 2, "read_committed"))
    assert sorted(out) == sorted(f"IN-{i:04d}".encode() for i in range(300)), \
        "every input exactly once"
    assert len(values(read_all(target, sink, 2, "read_uncommitted"))) > 300, "aborted writes"
    check = consumer(target, "read_committed", group)
    try:
        committed = check.committed([TopicPartition(source, i) for i in range(2)], timeout=10)
        assert [tp.offset for tp in committed] == [150, 150]
    finally:
        check.close()


def test_a_new_producer_fences_the_old_one_and_aborts_its_transaction(target):
    topic = new_topic(target, 1)
    tid = unique_topic("zombie")
    old = txn_producer(target, tid)
    old.begin_transaction()
    for i in range(5):
        old.produce(topic, value=f"zombie-{i}".encode(), partition=0)
    old.flush(30)
    new = txn_producer(target, tid)
    produce_txn(new, topic, "new", 5, 1)
    with pytest.raises(KafkaException) as info:
        old.produce(topic, value=b"zombie-late", partition=0)
        old.commit_transaction(30)
    err = info.value.args[0]
    assert err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                          KafkaError.INVALID_PRODUCER_EPOCH), err
    assert values(read_all(target, topic, 1, "read_committed")) == \
        [f"new-{i:04d}".encode() for i in range(5)]


def test_an_expired_transaction_is_aborted_by_the_coordinator(target):
    topic = new_topic(target, 1)
    p = txn_producer(target, unique_topic("slow"), **{"transaction.timeout.ms": 2000})
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"late-{i}".encode(), partition=0)
    p.flush(30)
    rc, ru = consumer(target, "read_committed"), consumer(target, "read_uncommitted")
    tp = TopicPartition(topic, 0)
    try:
        t0 = time.monotonic()
        wait_until(lambda: rc.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                   == ru.get_watermark_offsets(tp, timeout=10, cached=False)[1] > 0,
                   timeout=15, message="the coordinator to abort the expired transaction")
        print(f"expired transaction aborted {time.monotonic() - t0:.1f}s after its last write "
              f"(timeout 2 s, timer every 1 s)")
    finally:
        rc.close()
        ru.close()
    assert values(read_all(target, topic, 1, "read_committed")) == []
    with pytest.raises(KafkaException):
        p.commit_transaction(30)


def test_a_write_after_its_transaction_ended_is_refused_and_hangs_nothing(target):
    """The retried or delayed write that KIP-890 defends against, sent on the wire: the
    first transactional batch on a partition is checked with the producer's coordinator
    (on the cluster, partitions led by other brokers than the coordinator are asked over
    RPC). After an abort, a late batch gets INVALID_TXN_STATE, as does a batch for a
    partition the open transaction never added; the last stable offset is not held back
    by either, and `read_committed` sees only the committed transaction."""
    topic = new_topic(target, partitions=3, prefix="late")
    txn_id = unique_topic("late-writer")
    boot_port = int(target.bootstrap.split(",")[0].rsplit(":", 1)[1])
    with w.Conn(boot_port) as boot:
        md = w.metadata_v1(boot, [topic])
    ports = {node: port for node, _, port, _ in md["brokers"]}
    leaders = {p["partition"]: p["leader"] for p in md["topics"][0]["partitions"]}

    def found():
        with w.Conn(boot_port) as c:
            r = w.find_coordinator_v1(c, txn_id, 1)
        return r if r["error_code"] == 0 else None
    coordinator = wait_until(found, timeout=30, message="transaction coordinator")["node_id"]
    # On the cluster, write where the coordinator is elsewhere: the check goes over RPC.
    first = min(leaders, key=lambda p: (leaders[p] == coordinator, p))
    stray = next(p for p in sorted(leaders) if p != first)
    if hasattr(target, "ids"):
        assert leaders[first] != coordinator, (leaders, coordinator)

    with w.Conn(ports[coordinator]) as coord, w.Conn(ports[leaders[first]]) as leader, \
            w.Conn(ports[leaders[stray]]) as stray_leader:
        init = wait_until(lambda: (r := w.init_producer_id_v0(coord, txn_id))["error_code"] == 0
                          and r, timeout=30, message="InitProducerId")
        pid, epoch = init["producer_id"], init["producer_epoch"]
        seq = {first: 0, stray: 0}

        def write(conn, partition, value):
            batch = w.record_batch([(b"k", value)], producer_id=pid, producer_epoch=epoch,
                                   base_sequence=seq[partition], transactional=True)
            r = w.produce_v3(conn, topic, partition, batch, transactional_id=txn_id)
            res = r[topic][0]
            if res["error_code"] == 0:
                seq[partition] += 1
            return res

        def begin(partitions):
            added = w.add_partitions_to_txn_v0(coord, txn_id, pid, epoch, topic, partitions)
            assert set(added.values()) == {0}, added

        # An aborted transaction, then its late write.
        begin([first])
        assert write(leader, first, b"aborted")["error_code"] == 0
        assert w.end_txn_v0(coord, txn_id, pid, epoch, commit=False) == 0
        late = write(leader, first, b"late")
        assert late["error_code"] == w.ERR_INVALID_TXN_STATE, late

        # A committed transaction that never added `stray`: writing there is refused.
        begin([first])
        assert write(leader, first, b"committed")["error_code"] == 0
        refused = write(stray_leader, stray, b"stray")
        assert refused["error_code"] == w.ERR_INVALID_TXN_STATE, refused
        assert w.end_txn_v0(coord, txn_id, pid, epoch, commit=True) == 0

        # Nothing hangs: every partition's last stable offset reaches its high watermark.
        for p, conn in ((first, leader), (stray, stray_leader)):
            def stable(p=p, conn=conn):
                part = w.fetch_v4(conn, topic, p, 0, 0)[topic][0]
                return part["error_code"] == 0 and \
                    part["last_stable_offset"] == part["high_watermark"] and part
            wait_until(stable, timeout=10, message=f"partition {p} stable")

    got = read_all(target, topic, 3, "read_committed")
    assert values(got) == [b"committed"], got
    everything = read_all(target, topic, 3, "read_uncommitted")
    assert sorted(values(everything)) == [b"aborted", b"committed"], everything


def test_a_broker_killed_with_a_transaction_open_restarts_with_it_open(make_broker):
    """kill -9 while a transaction is open: the broker restarts with its transaction index
    (the last stable offset still held at the open transaction), and the producer's
    successor aborts it."""
    b = make_broker()
    topic = new_topic(b, partitions=1)
    tid = unique_topic("tid")
    p = txn_producer(b, tid)
    produce_txn(p, topic, "c1", 10, 1)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"open-{i}".encode(), partition=0)
    assert p.flush(30) == 0
    b.kill9()
    b.restart()
    c = consumer(b, "read_committed")
    tp = TopicPartition(topic, 0)
    # 10 committed records and their marker: the open transaction starts at offset 11.
    assert c.get_watermark_offsets(tp, timeout=20, cached=False)[1] == 11
    c.close()
    txn_producer(b, tid)  # fences the old producer and aborts its transaction
    got = read_all(b, topic, 1, "read_committed")
    assert [v for _, _, v in got[0]] == [f"c1-{i:04d}".encode() for i in range(10)]
    assert len(read_all(b, topic, 1, "read_uncommitted")[0]) == 15


def test_offsets_held_by_an_open_transaction_are_unstable_for_read_committed(target):
    """KIP-447: OffsetFetch with require_stable (librdkafka sends it at read_committed)
    is answered UNSTABLE_OFFSET_COMMIT, which the client retries, while a transaction
    holds an offset of the partition; a read_uncommitted consumer gets the current
    committed offset at once."""
    topic = new_topic(target, partitions=1)
    group = unique_topic("kip447")
    p = txn_producer(target, unique_topic("tid"))
    stable = consumer(target, "read_committed", group=group)
    plain = consumer(target, "read_uncommitted", group=group)
    tp = TopicPartition(topic, 0)
    p.begin_transaction()
    p.produce(topic, value=b"x", partition=0)
    p.send_offsets_to_transaction([TopicPartition(topic, 0, 42)],
                                  stable.consumer_group_metadata(), 30)
    assert plain.committed([tp], timeout=10)[0].offset < 0, "nothing committed yet"
    with pytest.raises(KafkaException) as held:
        stable.committed([tp], timeout=3)
    assert held.value.args[0].code() in (KafkaError._TIMED_OUT,
                                         KafkaError.UNSTABLE_OFFSET_COMMIT), held.value
    p.commit_transaction(30)
    assert stable.committed([tp], timeout=10)[0].offset == 42
    assert plain.committed([tp], timeout=10)[0].offset == 42
    stable.close()
    plain.close()


def test_kafka_transactions_tool_lists_and_describes(target):
    """Apache Kafka's kafka-transactions (list, describe, describe-producers) on an
    open, then committed, transaction."""
    from helpers import kafka_tool
    topic = new_topic(target, partitions=2)
    tid = unique_topic("tool-tid")
    p = txn_producer(target, tid)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"v{i}".encode(), partition=1)
    assert p.flush(30) == 0

    def tool(*args):
        out = kafka_tool("org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server",
                         target.bootstrap, *args).stdout
        lines = [ln.split() for ln in out.splitlines() if ln.strip()]
        return [dict(zip(lines[0], row)) for row in lines[1:]]
    listed = {r["TransactionalId"]: r for r in tool("list")}
    assert listed[tid]["TransactionState"] == "Ongoing", listed
    producer_id = listed[tid]["ProducerId"]
    [described] = tool("describe", "--transactional-id", tid)
    assert described["ProducerId"] == producer_id
    assert described["TransactionState"] == "Ongoing"
    assert described["TopicPartitions"] == f"{topic}-1", described
    [producer] = [r for r in tool("describe-producers", "--topic", topic, "--partition", "1")
                  if r["ProducerId"] == producer_id]
    assert producer["CurrentTransactionStartOffset"] == "0", producer
    assert producer["LastSequence"] == "4", producer
    p.commit_transaction(30)
    [described] = tool("describe", "--transactional-id", tid)
    assert described["TransactionState"] == "CompleteCommit", described
    [producer] = [r for r in tool("describe-producers", "--topic", topic, "--partition", "1")
                  if r["ProducerId"] == producer_id]
    assert producer["CurrentTransactionStartOffset"] == "None", producer  # (-1)
    assert int(producer["LatestCoordinatorEpoch"]) >= 0, producer


@pytest.mark.timeout(400)
def test_transactions_are_whole_across_kills_of_the_coordinator_and_a_leader(make_cluster):
    from test_cluster import FAST, create_topic, group_coordinator
    c = make_cluster(n=3, extra_args=FAST)
    topic = create_topic(c, partitions=3, rf=3, config={"min.insync.replicas": 2})
    tid = unique_topic("kill-tid")
    # A transactional id hashes to the offsets partition a group of the same name does.
    coord = group_coordinator(c, tid)
    leader = next((c.leader_of(topic, p) for p in range(3) if c.leader_of(topic, p) != coord),
                  c.leader_of(topic, 0))
    conf = {"bootstrap.servers": c.live_bootstrap, "broker.address.family": "v4",
            "transactional.id": tid, "linger.ms": 5, "transaction.timeout.ms": 20000,
            "message.timeout.ms": 20000}
    p = Producer(conf)
    p.init_transactions(60)
    outcomes: dict[str, str] = {}
    faults = {10: ("kill", coord), 20: ("restart", coord), 30: ("kill", leader),
              40: ("restart", leader)}
    t0 = time.monotonic()
    for n in range(50):
        if n in faults:
            what, b = faults[n]
            print(f"transaction {n}: {what} broker {b}")
            c.kill9(b) if what == "kill" else c.restart(b)
        tag = f"t{n:03d}"
        commit = n % 4 != 3
        try:
            p.begin_transaction()
            for i in range(30):
                p.produce(topic, value=f"{tag}-{i:02d}".encode(), partition=i % 3)
            if commit:
                p.commit_transaction(60)
                outcomes[tag] = "committed"
            else:
                p.flush(60)
                p.abort_transaction(60)
                outcomes[tag] = "aborted"
        except KafkaException as e:
            err = e.args[0]
            print(f"{tag}: {err}")
            outcomes[tag] = "unknown"
            if err.txn_requires_abort():
                p.abort_transaction(60)
            elif err.fatal():
                p = Producer(conf)
                p.init_transactions(60)
    took = time.monotonic() - t0
    states = c.assert_replicas_consistent(topic, range(3))
    for part, by_broker in states.items():
        for b, st in by_broker.items():
            print(f"partition {part} broker {b}: lso={st['last_stable_offset']} "
                  f"hw={st['high_watermark']} open={st['open_transactions']} "
                  f"aborted={st['aborted_transactions']}")
    got = values(read_all(c, topic, 3, "read_committed", timeout=60))
    by_tag: dict[str, list[bytes]] = {}
    for v in got:
        by_tag.setdefault(v.decode().split("-")[0], []).append(v)
    bad = []
    for tag, outcome in outcomes.items():
        seen = sorted(by_tag.get(tag, []))
        whole = [f"{tag}-{i:02d}".encode() for i in range(30)]
        if seen not in ([], whole) or (outcome == "committed" and seen != whole) \
                or (outcome == "aborted" and seen):
            bad.append(f"{tag} ({outcome}): {len(seen)} of 30 visible {seen[:3]}")
    assert not bad, "transactions not whole:\n" + "\n".join(bad)
    counts = {o: sum(1 for x in outcomes.values() if x == o) for o in set(outcomes.values())}
    print(f"50 transactions in {took:.1f}s across the faults: {counts}; "
          f"{len(by_tag)} visible, each whole")
    assert counts.get("committed", 0) >= 30
    c.assert_replicas_consistent(topic, range(3))
