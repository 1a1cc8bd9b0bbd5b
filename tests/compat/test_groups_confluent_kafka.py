"""Consumer groups with confluent-kafka (librdkafka): membership, eager and
cooperative rebalancing, static membership, commits, seeking, group admin and
durability of committed offsets."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import (
    ConsumerGroupState, ConsumerGroupTopicPartitions, Consumer, KafkaError, KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from group_helpers import (  # noqa: F401 - fixtures
    GROUP_BROKER_ARGS, HEARTBEAT_MS, KILL_SESSION_MS, Member, Members, SubprocessMember,
    _group_module_broker, describe_histories, marks, ck_poll, committed, drain, group_broker,
    group_view, metric_value, numbered, produce, unique_group, wait_records, wait_split,
)
from helpers import create_topic, unique_topic, wait_until

CLIENT = "confluent"
OP_TIMEOUT = 20.0


def ck_conf(bootstrap, group, **extra):
    conf = {"bootstrap.servers": bootstrap, "broker.address.family": "v4", "group.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": HEARTBEAT_MS, "session.timeout.ms": 10000,
            "client.id": "riffle-group-ck"}
    conf.update(extra)
    return conf


def ck_consumer(bootstrap, group, topic, callbacks=None, **extra):
    c = Consumer(ck_conf(bootstrap, group, **extra))
    if callbacks is not None:
        c.subscribe([topic], on_assign=callbacks.on_assign, on_revoke=callbacks.on_revoke,
                    on_lost=callbacks.on_lost)
    else:
        c.subscribe([topic])
    return c


def member(members, name, bootstrap, group, topic, callbacks=None, **extra):
    return members.add(Member(name, ck_consumer(bootstrap, group, topic, callbacks, **extra), CLIENT))


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                        "client.id": "riffle-group-ck-admin"})


class Callbacks:
    """Rebalance callbacks; events are (kind, frozenset of (topic, partition))."""

    def __init__(self):
        self.events: list[tuple[str, frozenset]] = []

    @staticmethod
    def _set(parts):
        return frozenset((p.topic, p.partition) for p in parts)

    def on_assign(self, consumer, parts):
        self.events.append(("assign", self._set(parts)))

    def on_revoke(self, consumer, parts):
        self.events.append(("revoke", self._set(parts)))

    def on_lost(self, consumer, parts):
        self.events.append(("lost", self._set(parts)))


def offsets_of(records, partition=0):
    return [r[2] for r in records if r[1] == partition]


def commit_errors(c, tps) -> set[int]:
    """Synchronous commit of ``tps``; the error codes librdkafka reports
    (per partition, or for the whole request)."""
    try:
        res = c.commit(offsets=tps, asynchronous=False)
    except KafkaException as exc:
        return {exc.args[0].code()}
    return {tp.error.code() if tp.error else 0 for tp in res}


# -- commit / resume ---------------------------------------------------------------------

def test_commit_restart_resumes_exactly(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic)
    group = unique_group("ckseed")
    produce(b, topic, numbered(10), partition=0)
    tp = TopicPartition(topic, 0)

    c = ck_consumer(b, group, topic)
    try:
        assert offsets_of(drain(ck_poll, c, 10)) == list(range(10))
        c.commit(offsets=[TopicPartition(topic, 0, 6, metadata="processed-6")], asynchronous=False)
        (got,) = c.committed([tp], timeout=OP_TIMEOUT)
        assert got.offset == 6 and got.metadata == "processed-6"
    finally:
        c.close()

    produce(b, topic, numbered(2, start=10), partition=0)
    c = ck_consumer(b, group, topic)
    try:
        got = drain(ck_poll, c, 6)
        assert offsets_of(got) == list(range(6, 12)), "resume must start at the commit"
        assert [r[3] for r in got] == numbered(6, start=6)
        c.commit(asynchronous=False)  # the stored positions
        assert c.committed([tp], timeout=OP_TIMEOUT)[0].offset == 12
    finally:
        c.close()

    produce(b, topic, numbered(1, start=12), partition=0)
    c = ck_consumer(b, group, topic)
    try:
        assert offsets_of(drain(ck_poll, c, 1)) == [12]
    finally:
        c.close()


def test_auto_commit(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=2)
    group = unique_group("ckauto")
    produce(b, topic, numbered(20))
    c = ck_consumer(b, group, topic, **{"enable.auto.commit": True, "auto.commit.interval.ms": 300})
    try:
        got = drain(ck_poll, c, 20, settle=0)
        assert sorted(r[3] for r in got) == sorted(numbered(20))

        def done():
            c.poll(0.1)
            return committed(b, group) == {(topic, 0): (10, ""), (topic, 1): (10, "")}
        wait_until(done, timeout=20, message="auto-committed offsets 10/10")
    finally:
        c.close()
    produce(b, topic, numbered(4, start=20))
    c = ck_consumer(b, group, topic)
    try:
        got = drain(ck_poll, c, 4)
        assert sorted(r[3] for r in got) == sorted(numbered(4, start=20))
    finally:
        c.close()


def test_seek_beginning_offset_timestamp_and_replay_with_new_group(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic)
    base = int(time.time() * 1000) - 100_000
    produce(b, topic, numbered(10), partition=0, timestamps=[base + i * 1000 for i in range(10)])
    group = unique_group("ckseek")
    c = ck_consumer(b, group, topic)
    try:
        assert offsets_of(drain(ck_poll, c, 10)) == list(range(10))
        c.commit(asynchronous=False)

        def first_offset_after_seek(offset):
            c.seek(TopicPartition(topic, 0, offset))
            got = drain(ck_poll, c, 1, settle=0)
            assert got, f"nothing delivered after seek to {offset}"
            return got[0][2]

        assert first_offset_after_seek(0) == 0  # OFFSET_BEGINNING resolves the same way
        assert first_offset_after_seek(5) == 5
        (found,) = c.offsets_for_times([TopicPartition(topic, 0, base + 6500)], timeout=OP_TIMEOUT)
        assert found.offset == 7
        assert first_offset_after_seek(found.offset) == 7
        assert c.committed([TopicPartition(topic, 0)], timeout=OP_TIMEOUT)[0].offset == 10
    finally:
        c.close()

    replay = ck_consumer(b, unique_group("ckreplay"), topic)
    try:
        assert offsets_of(drain(ck_poll, replay, 10)) == list(range(10))
    finally:
        replay.close()
    assert committed(b, group) == {(topic, 0): (10, "")}


def test_commit_errors_surface_through_the_client(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic)
    group = unique_group("ckerr")
    produce(b, topic, numbered(5), partition=0)
    c = ck_consumer(b, group, topic)
    try:
        drain(ck_poll, c, 5, settle=0)
        assert commit_errors(c, [TopicPartition("no-such-topic-" + topic, 0, 1)]) == \
            {KafkaError.UNKNOWN_TOPIC_OR_PART}
        assert commit_errors(c, [TopicPartition(topic, 0, 3, metadata="x" * 5000)]) == \
            {KafkaError.OFFSET_METADATA_TOO_LARGE}
        assert commit_errors(c, [TopicPartition(topic, 0, 4, metadata="fine")]) == {0}
    finally:
        c.close()
    # confluent-kafka sends the metadata string with its C terminator; the
    # broker stores the bytes it was given.
    assert {k: (o, m.rstrip("\x00")) for k, (o, m) in committed(b, group).items()} == \
        {(topic, 0): (4, "fine")}


# -- membership and rebalancing ------------------------------------------------------------

def test_three_members_share_six_partitions_then_one_leaves(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("ckthree")
    with Members() as ms:
        m1, m2, m3 = (member(ms, f"m{i}", b, group, topic) for i in (1, 2, 3))
        before = wait_split([m1, m2, m3], topic, 6, counts=[2, 2, 2], bootstrap=b, group=group)
        produce(b, topic, numbered(60))
        got = wait_records([m1, m2, m3], 60)
        assert sorted(r[3] for r in got) == sorted(numbered(60))
        for m in (m1, m2, m3):
            assert {(r[0], r[1]) for r in m.snapshot()} <= before[m.name]
            m.call(lambda c: c.commit(asynchronous=False))

        left_at = time.monotonic()
        m3.stop()  # close() sends LeaveGroup
        after = wait_split([m1, m2], topic, 6, counts=[3, 3], bootstrap=b, group=group)
        elapsed = time.monotonic() - left_at
        assert elapsed < 8, f"rebalance after LeaveGroup took {elapsed:.1f}s (session timeout 10s)"
        assert before["m3"] <= after["m1"] | after["m2"]
        # Moved partitions resume at the committed offsets: only new records arrive.
        mark = marks([m1, m2])
        produce(b, topic, numbered(12, start=60))
        got = wait_records([m1, m2], 12, since=mark)
        assert sorted(r[3] for r in got) == sorted(numbered(12, start=60))


def test_killed_member_partitions_move_after_session_timeout(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("ckkill")
    with Members() as ms, SubprocessMember(CLIENT, b, topic, group) as child:
        m1 = member(ms, "m1", b, group, topic)
        m2 = member(ms, "m2", b, group, topic)
        views = wait_split([m1, m2, child], topic, 6, counts=[2, 2, 2], bootstrap=b, group=group)
        killed_at = time.monotonic()
        child.kill()
        after = wait_split([m1, m2], topic, 6, counts=[3, 3], bootstrap=b, group=group)
        elapsed = time.monotonic() - killed_at
        assert elapsed >= (KILL_SESSION_MS - 2 * HEARTBEAT_MS) / 1000 - 0.2, \
            f"partitions moved {elapsed:.1f}s after SIGKILL, before the session could expire"
        assert elapsed < 25, f"dead member not expired {elapsed:.1f}s after SIGKILL"
        assert views[child.name] <= after["m1"] | after["m2"]
        produce(b, topic, numbered(30))
        got = wait_records([m1, m2], 30)
        assert sorted(r[3] for r in got) == sorted(numbered(30))


def test_more_members_than_partitions_extras_get_nothing(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=3)
    group = unique_group("ckextra")
    with Members() as ms:
        first = [member(ms, f"m{i}", b, group, topic) for i in range(3)]
        wait_split(first, topic, 3, counts=[1, 1, 1], bootstrap=b, group=group)
        extra = [member(ms, f"m{i}", b, group, topic) for i in (3, 4)]
        views = wait_split(first + extra, topic, 3, counts=[0, 0, 1, 1, 1], bootstrap=b, group=group)
        rebalances = metric_value(group_broker, "riffle_group_rebalances_total", group=group)
        idle = [m for m in first + extra if not views[m.name]]
        assert len(idle) == 2
        produce(b, topic, numbered(30))
        got = wait_records(first + extra, 30)
        assert sorted(r[3] for r in got) == sorted(numbered(30))
        after = metric_value(group_broker, "riffle_group_rebalances_total", group=group)
        assert all(not m.snapshot() for m in idle) and after == rebalances, (
            f"the stable group rebalanced again (rebalances {rebalances} -> {after}); "
            f"assignment changes: {describe_histories(first + extra)}")


def test_two_groups_pubsub_and_queue_within_a_group(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=4)
    pub, queue_group = unique_group("ckpub"), unique_group("ckqueue")
    with Members() as ms:
        solo = member(ms, "solo", b, pub, topic)
        q1 = member(ms, "q1", b, queue_group, topic)
        q2 = member(ms, "q2", b, queue_group, topic)
        wait_split([solo], topic, 4, bootstrap=b, group=pub)
        wait_split([q1, q2], topic, 4, counts=[2, 2], bootstrap=b, group=queue_group)
        produce(b, topic, numbered(80))
        wait_records([solo], 80)
        wait_records([q1, q2], 80)
        assert sorted(solo.values()) == sorted(numbered(80))
        assert sorted(q1.values() + q2.values()) == sorted(numbered(80))
        assert q1.values() and q2.values()


def test_membership_churn_loses_nothing(group_broker, topic):
    """Members join and leave while records keep arriving; with auto-commit
    (librdkafka commits on revoke and close) every record is received at
    least once and the final commits cover everything."""
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("ckchurn")
    auto = {"enable.auto.commit": True, "auto.commit.interval.ms": 200}
    everyone = []
    with Members() as ms:
        active = [member(ms, "m0", b, group, topic, **auto)]
        everyone.extend(active)
        wait_split(active, topic, 6, bootstrap=b, group=group)
        sent = 0
        for step in range(6):
            produce(b, topic, numbered(30, start=sent))
            sent += 30
            if step % 2 == 0 or len(active) == 1:
                m = member(ms, f"m{step + 1}", b, group, topic, **auto)
                active.append(m)
                everyone.append(m)
            else:
                active.pop(0).stop()
            time.sleep(0.7)
        wait_split(active, topic, 6, bootstrap=b, group=group)
        produce(b, topic, numbered(30, start=sent))
        sent += 30
        want = set(numbered(sent))
        wait_until(lambda: want <= {v for m in everyone for v in m.values()}, timeout=30,
                   message=f"all {sent} records received by some member")
        for m in active:
            m.stop()
    total = sum(o for o, _ in committed(b, group).values())
    assert total == sent, f"final commits cover {total} of {sent} records"


def test_cooperative_sticky_incremental_rebalance(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("ckcoop")
    coop = {"partition.assignment.strategy": "cooperative-sticky"}
    cb1, cb2 = Callbacks(), Callbacks()
    with Members() as ms:
        m1 = member(ms, "m1", b, group, topic, cb1, **coop)
        wait_split([m1], topic, 6, bootstrap=b, group=group)
        assert cb1.events == [("assign", frozenset((topic, p) for p in range(6)))]
        full_at = len(m1.history)

        m2 = member(ms, "m2", b, group, topic, cb2, **coop)
        views = wait_split([m1, m2], topic, 6, counts=[3, 3], bootstrap=b, group=group)
        assert group_view(b, group)["protocol"] == "cooperative-sticky"
        retained, moved = views["m1"], views["m2"]

        kinds = [k for k, _ in cb1.events]
        assert "lost" not in kinds, cb1.events
        revoked = frozenset().union(*(s for k, s in cb1.events if k == "revoke"))
        assert revoked == moved, f"m1 revoked {sorted(revoked)}, only {sorted(moved)} moved"
        assert not revoked & retained
        # Incremental: no later assign re-adds partitions m1 kept (eager would revoke all).
        assert all(s <= moved for k, s in cb1.events[1:] if k == "assign"), cb1.events
        # The client's own view never dropped a retained partition.
        for _t, a in m1.history[full_at - 1:]:
            assert retained <= a, f"m1 assignment {sorted(a)} lost retained {sorted(retained)}"
        assert frozenset().union(*(s for k, s in cb2.events if k == "assign")) == moved
        assert all(k == "assign" for k, _ in cb2.events), cb2.events

        # Both keep consuming: every record exactly once.
        produce(b, topic, numbered(60))
        got = wait_records([m1, m2], 60)
        assert sorted(r[3] for r in got) == sorted(numbered(60))


@pytest.mark.parametrize("restart", ["follower", "leader"])
def test_static_member_restart_keeps_partitions_without_rebalance(group_broker, topic, restart):
    """KIP-345: a static member that closes (librdkafka sends no LeaveGroup
    for static members) and comes back within the session timeout gets its
    partitions back without a rebalance, whether it led the group or not."""
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("ckstatic")
    static = {"session.timeout.ms": 20000}
    cbs = {"lead": Callbacks(), "follow": Callbacks()}
    with Members() as ms:
        lead = member(ms, "lead", b, group, topic, cbs["lead"], **static,
                      **{"group.instance.id": "inst-lead"})
        wait_split([lead], topic, 6, bootstrap=b, group=group)  # alone: it leads
        follow = member(ms, "follow", b, group, topic, cbs["follow"], **static,
                        **{"group.instance.id": "inst-follow"})
        views = wait_split([lead, follow], topic, 6, counts=[3, 3], bootstrap=b, group=group)
        gone, stays = (follow, lead) if restart == "follower" else (lead, follow)
        time.sleep(1.0)  # let callbacks of the last rebalance be served
        events_before = list(cbs[stays.name].events)
        rebalances = metric_value(group_broker, "riffle_group_rebalances_total", group=group)
        instances = {m["group_instance_id"] for m in group_view(b, group)["members"].values()}
        assert instances == {"inst-lead", "inst-follow"}

        gone.stop()
        assert len(group_view(b, group)["members"]) == 2, "static member removed on close"
        back = member(ms, "back", b, group, topic, **static,
                      **{"group.instance.id": f"inst-{gone.name}"})
        wait_until(lambda: back.assigned, timeout=20, message="restarted static member to rejoin")
        time.sleep(1.5)  # several heartbeats: a rebalance would show up by now
        assert cbs[stays.name].events == events_before, \
            f"the other member saw a rebalance: {cbs[stays.name].events[len(events_before):]}"
        assert back.assigned == views[gone.name]
        assert stays.assigned == views[stays.name]
        assert metric_value(group_broker, "riffle_group_rebalances_total", group=group) == rebalances
        view = group_view(b, group)
        assert view["state"] == "Stable" and len(view["members"]) == 2


# -- admin -------------------------------------------------------------------------------------

def test_admin_list_describe_alter_delete(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=2)
    group = unique_group("ckadm")
    produce(b, topic, numbered(10))
    adm = admin(b)
    c = ck_consumer(b, group, topic, **{"client.id": "ck-adm-client"})
    try:
        drain(ck_poll, c, 10, settle=0)
        c.commit(offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)], asynchronous=False)

        listed = {g.group_id: g for g in adm.list_consumer_groups(request_timeout=OP_TIMEOUT)
                  .result(OP_TIMEOUT).valid}
        assert group in listed
        assert listed[group].state == ConsumerGroupState.STABLE
        assert listed[group].is_simple_consumer_group is False
        stable = adm.list_consumer_groups(states={ConsumerGroupState.STABLE},
                                          request_timeout=OP_TIMEOUT).result(OP_TIMEOUT).valid
        empty = adm.list_consumer_groups(states={ConsumerGroupState.EMPTY},
                                         request_timeout=OP_TIMEOUT).result(OP_TIMEOUT).valid
        assert group in {g.group_id for g in stable} and group not in {g.group_id for g in empty}

        desc = adm.describe_consumer_groups([group], request_timeout=OP_TIMEOUT)[group].result(OP_TIMEOUT)
        assert desc.state == ConsumerGroupState.STABLE
        assert desc.partition_assignor in ("range", "roundrobin")
        assert len(desc.members) == 1
        assert desc.members[0].client_id == "ck-adm-client"
        assert {(tp.topic, tp.partition) for tp in desc.members[0].assignment.topic_partitions} == \
            {(topic, 0), (topic, 1)}

        with pytest.raises(KafkaException) as exc:
            adm.delete_consumer_groups([group], request_timeout=OP_TIMEOUT)[group].result(OP_TIMEOUT)
        assert exc.value.args[0].code() == KafkaError.NON_EMPTY_GROUP
    finally:
        c.close()

    def state():
        return adm.describe_consumer_groups([group], request_timeout=OP_TIMEOUT)[group] \
            .result(OP_TIMEOUT).state
    wait_until(lambda: state() == ConsumerGroupState.EMPTY, timeout=20, message="group Empty")

    def offsets():
        res = adm.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                              request_timeout=OP_TIMEOUT)[group].result(OP_TIMEOUT)
        return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}

    assert offsets() == {(topic, 0): 3, (topic, 1): 4}
    res = adm.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 1, 7)])],
        request_timeout=OP_TIMEOUT)[group].result(OP_TIMEOUT)
    assert [(tp.partition, tp.error) for tp in res.topic_partitions] == [(1, None)]
    assert offsets() == {(topic, 0): 3, (topic, 1): 7}

    adm.delete_consumer_groups([group], request_timeout=OP_TIMEOUT)[group].result(OP_TIMEOUT)
    listed = {g.group_id for g in adm.list_consumer_groups(request_timeout=OP_TIMEOUT)
              .result(OP_TIMEOUT).valid}
    assert group not in listed
    assert offsets() == {}
    with pytest.raises(KafkaException) as exc:
        adm.delete_consumer_groups([group], request_timeout=OP_TIMEOUT)[group].result(OP_TIMEOUT)
    assert exc.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND
    try:
        assert state() == ConsumerGroupState.DEAD
    except KafkaException as exc:
        assert exc.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND


# -- durability ------------------------------------------------------------------------------

def test_committed_offsets_survive_kill9(make_broker):
    broker = make_broker(*GROUP_BROKER_ARGS)
    b = broker.bootstrap
    topic = unique_topic("ckgk")
    create_topic(b, topic, partitions=2)
    produce(b, topic, numbered(20))
    group = unique_group("ckdurable")
    c = ck_consumer(b, group, topic)
    try:
        drain(ck_poll, c, 20, settle=0)
        c.commit(offsets=[TopicPartition(topic, 0, 6), TopicPartition(topic, 1, 3)], asynchronous=False)
    finally:
        c.close()
    broker.kill9()
    broker.start()
    c = ck_consumer(b, group, topic)
    try:
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=OP_TIMEOUT)
        assert [(tp.partition, tp.offset) for tp in got] == [(0, 6), (1, 3)]
        got = drain(ck_poll, c, 4 + 7)
        assert offsets_of(got, 0) == list(range(6, 10))
        assert offsets_of(got, 1) == list(range(3, 10))
    finally:
        c.close()
