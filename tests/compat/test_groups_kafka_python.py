"""Consumer groups with kafka-python: membership, rebalancing, commits,
seeking, static membership, group admin, durability of committed offsets,
lag metrics and error paths of the group APIs (raw frames)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka import errors as Errors
from kafka.structs import OffsetAndMetadata

import group_helpers as gh
from group_helpers import (  # noqa: F401 - fixtures
    GROUP_BROKER_ARGS, HEARTBEAT_MS, KILL_SESSION_MS, Member, Members, SubprocessMember,
    _group_module_broker, describe_histories, marks, committed, drain, group_broker, group_view,
    kp_admin, kp_poll, metric_value, numbered, produce, unique_group, wait_group_state,
    wait_records, wait_split,
)
from helpers import create_topic, unique_topic, wait_until

CLIENT = "kafka-python"


def kp_consumer(bootstrap, group, *topics, **config):
    config.setdefault("enable_auto_commit", False)
    config.setdefault("auto_offset_reset", "earliest")
    config.setdefault("heartbeat_interval_ms", HEARTBEAT_MS)
    config.setdefault("session_timeout_ms", 10000)
    config.setdefault("client_id", "riffle-group-kp")
    return KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group, **config)


def member(members, name, bootstrap, group, topic, **config):
    return members.add(Member(name, kp_consumer(bootstrap, group, topic, **config), CLIENT))


def offsets_of(records, partition=0):
    return [r[2] for r in records if r[1] == partition]


# -- commit / resume ---------------------------------------------------------------------

def test_seed_json_commit_restart_resumes_exactly(group_broker, topic):
    """The canonical example: JSON messages, manual commit, restart in the
    same group.  Committed records are not redelivered; uncommitted are not skipped."""
    b = group_broker.bootstrap
    create_topic(b, topic)
    group = "my-consumer-group-" + unique_group()
    produce(b, topic, [json.dumps({"n": i}).encode() for i in range(10)], partition=0)
    tp = TopicPartition(topic, 0)

    def consumer():
        return KafkaConsumer(topic, bootstrap_servers=b, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             value_deserializer=json.loads, heartbeat_interval_ms=HEARTBEAT_MS)

    c = consumer()
    try:
        got = drain(kp_poll, c, 10)
        assert [r[3]["n"] for r in got] == list(range(10))
        # Only the first six were processed: commit the position after them.
        c.commit({tp: OffsetAndMetadata(6, "processed-6", -1)})
        assert c.committed(tp) == 6
        assert c.committed(tp, metadata=True).metadata == "processed-6"
    finally:
        c.close(autocommit=False)

    produce(b, topic, [json.dumps({"n": i}).encode() for i in (10, 11)], partition=0)
    c = consumer()
    try:
        got = drain(kp_poll, c, 6)
        assert [r[3]["n"] for r in got] == list(range(6, 12)), "resume must start at the commit"
        c.commit()  # everything consumed so far
        assert c.committed(tp) == 12
    finally:
        c.close(autocommit=False)

    produce(b, topic, [json.dumps({"n": 12}).encode()], partition=0)
    c = consumer()
    try:
        got = drain(kp_poll, c, 1)
        assert [r[3]["n"] for r in got] == [12]
    finally:
        c.close(autocommit=False)
    assert committed(b, group) == {(topic, 0): (12, "")}


def test_auto_commit(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=2)
    group = unique_group("auto")
    produce(b, topic, numbered(20))
    c = kp_consumer(b, group, topic, enable_auto_commit=True, auto_commit_interval_ms=300)
    try:
        got = drain(kp_poll, c, 20, settle=0)
        assert sorted(r[3] for r in got) == sorted(numbered(20))
        # No explicit commit: the background auto-commit must record both positions.
        def done():
            c.poll(timeout_ms=100)
            return committed(b, group) == {(topic, 0): (10, ""), (topic, 1): (10, "")}
        wait_until(done, timeout=20, message="auto-committed offsets 10/10")
    finally:
        c.close(autocommit=False)
    produce(b, topic, numbered(4, start=20))
    c = kp_consumer(b, group, topic)
    try:
        got = drain(kp_poll, c, 4)
        assert sorted(r[3] for r in got) == sorted(numbered(4, start=20))
    finally:
        c.close(autocommit=False)


def test_seek_beginning_offset_timestamp_and_replay_with_new_group(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic)
    base = int(time.time() * 1000) - 100_000
    produce(b, topic, numbered(10), partition=0, timestamps=[base + i * 1000 for i in range(10)])
    group = unique_group("seek")
    tp = TopicPartition(topic, 0)
    c = kp_consumer(b, group, topic)
    try:
        assert offsets_of(drain(kp_poll, c, 10)) == list(range(10))
        c.commit()

        def first_offset_after_seek():
            got = drain(kp_poll, c, 1, settle=0)
            assert got, "nothing delivered after seek"
            return got[0][2]

        c.seek_to_beginning(tp)
        assert first_offset_after_seek() == 0
        c.seek(tp, 5)
        assert first_offset_after_seek() == 5
        found = c.offsets_for_times({tp: base + 6500})[tp]
        assert found.offset == 7 and found.timestamp == base + 7000
        c.seek(tp, found.offset)
        assert first_offset_after_seek() == 7
        # Seeking does not change the committed offset.
        assert c.committed(tp) == 10
    finally:
        c.close(autocommit=False)

    replay = kp_consumer(b, unique_group("replay"), topic)
    try:
        assert offsets_of(drain(kp_poll, replay, 10)) == list(range(10))
    finally:
        replay.close(autocommit=False)
    assert committed(b, group) == {(topic, 0): (10, "")}


# -- membership and rebalancing ------------------------------------------------------------

def test_three_members_share_six_partitions_then_one_leaves(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("three")
    with Members() as ms:
        m1 = member(ms, "m1", b, group, topic)
        m2 = member(ms, "m2", b, group, topic)
        m3 = member(ms, "m3", b, group, topic)
        before = wait_split([m1, m2, m3], topic, 6, counts=[2, 2, 2], bootstrap=b, group=group)
        produce(b, topic, numbered(60))
        got = wait_records([m1, m2, m3], 60)
        assert sorted(r[3] for r in got) == sorted(numbered(60))
        for m in (m1, m2, m3):
            assert {(r[0], r[1]) for r in m.snapshot()} <= before[m.name]
            m.call(lambda c: c.commit())

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
        assert not (m1.errors or m2.errors), (m1.errors, m2.errors)


def test_killed_member_partitions_move_after_session_timeout(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("kill")
    with Members() as ms, SubprocessMember(CLIENT, b, topic, group) as child:
        m1 = member(ms, "m1", b, group, topic)
        m2 = member(ms, "m2", b, group, topic)
        views = wait_split([m1, m2, child], topic, 6, counts=[2, 2, 2], bootstrap=b, group=group)
        orphaned = views[child.name]
        killed_at = time.monotonic()
        child.kill()
        after = wait_split([m1, m2], topic, 6, counts=[3, 3], bootstrap=b, group=group)
        elapsed = time.monotonic() - killed_at
        # Expiry needs (session timeout - last heartbeat age); LeaveGroup was never sent.
        assert elapsed >= (KILL_SESSION_MS - 2 * HEARTBEAT_MS) / 1000 - 0.2, \
            f"partitions moved {elapsed:.1f}s after SIGKILL, before the session could expire"
        assert elapsed < 25, f"dead member not expired {elapsed:.1f}s after SIGKILL"
        assert orphaned <= after["m1"] | after["m2"]
        produce(b, topic, numbered(30))
        got = wait_records([m1, m2], 30)
        assert sorted(r[3] for r in got) == sorted(numbered(30))


def test_more_members_than_partitions_extras_get_nothing(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=3)
    group = unique_group("extra")
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
    pub, queue_group = unique_group("pub"), unique_group("queue")
    with Members() as ms:
        solo = member(ms, "solo", b, pub, topic)
        q1 = member(ms, "q1", b, queue_group, topic)
        q2 = member(ms, "q2", b, queue_group, topic)
        wait_split([solo], topic, 4, bootstrap=b, group=pub)
        wait_split([q1, q2], topic, 4, counts=[2, 2], bootstrap=b, group=queue_group)
        produce(b, topic, numbered(80))
        wait_records([solo], 80)
        wait_records([q1, q2], 80)
        assert sorted(solo.values()) == sorted(numbered(80)), "pub-sub group missed or duplicated"
        shared = q1.values() + q2.values()
        assert sorted(shared) == sorted(numbered(80)), "queue group missed or duplicated"
        assert len(set(q1.values()) & set(q2.values())) == 0
        assert q1.values() and q2.values()


# -- static membership -------------------------------------------------------------------------

@pytest.mark.parametrize("restart", ["follower", "leader"])
def test_static_member_restart_keeps_partitions_without_rebalance(group_broker, topic, restart):
    """KIP-345: a static member that closes (no LeaveGroup) and comes back
    within the session timeout gets its partitions back in the same
    generation, whether it was the group leader or not."""
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=6)
    group = unique_group("static")
    static = {"session_timeout_ms": 20000}
    with Members() as ms:
        lead = member(ms, "lead", b, group, topic, group_instance_id="inst-lead", **static)
        wait_split([lead], topic, 6, bootstrap=b, group=group)  # alone: it leads
        follow = member(ms, "follow", b, group, topic, group_instance_id="inst-follow", **static)
        views = wait_split([lead, follow], topic, 6, counts=[3, 3], bootstrap=b, group=group)
        # Premise check through the client's coordinator state (not public API).
        assert lead.call(lambda c: c._coordinator._is_leader) is True
        gone, stays = (follow, lead) if restart == "follower" else (lead, follow)
        instance = "inst-follow" if restart == "follower" else "inst-lead"

        def generation(m):
            return m.call(lambda c: c.group_metadata().generation_id)

        gen = generation(stays)
        rebalances = metric_value(group_broker, "riffle_group_rebalances_total", group=group)
        history_len = len(stays.history)
        instances = {m["group_instance_id"] for m in group_view(b, group)["members"].values()}
        assert instances == {"inst-lead", "inst-follow"}

        gone.stop()  # a static member does not send LeaveGroup
        assert len(group_view(b, group)["members"]) == 2, "static member removed on close"
        back = member(ms, "back", b, group, topic, group_instance_id=instance, **static)
        wait_until(lambda: generation(back) >= 0 and back.assigned, timeout=20,
                   message="restarted static member to rejoin")
        time.sleep(1.5)  # several heartbeats: a rebalance would show up by now
        assert generation(back) == gen and generation(stays) == gen, \
            f"generation moved from {gen} to {generation(stays)}: the restart caused a rebalance"
        assert back.assigned == views[gone.name]
        assert len(stays.history) == history_len and stays.assigned == views[stays.name], \
            "the other member was rebalanced"
        assert metric_value(group_broker, "riffle_group_rebalances_total", group=group) == rebalances
        view = group_view(b, group)
        assert view["state"] == "Stable" and len(view["members"]) == 2


def test_static_member_that_never_returns_expires_after_session_timeout(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=4)
    group = unique_group("static-gone")
    static = {"session_timeout_ms": KILL_SESSION_MS}
    with Members() as ms:
        stay = member(ms, "stay", b, group, topic, group_instance_id="inst-stay", **static)
        gone = member(ms, "gone", b, group, topic, group_instance_id="inst-gone", **static)
        views = wait_split([stay, gone], topic, 4, counts=[2, 2], bootstrap=b, group=group)
        closed_at = time.monotonic()
        gone.stop()  # no LeaveGroup for a static member: only the session can end it
        wait_split([stay], topic, 4, bootstrap=b, group=group)
        elapsed = time.monotonic() - closed_at
        assert elapsed >= (KILL_SESSION_MS - 2 * HEARTBEAT_MS) / 1000 - 0.2, \
            f"static member removed {elapsed:.1f}s after close, before its session expired"
        assert elapsed < 20
        assert views["gone"] <= stay.assigned


# -- admin -------------------------------------------------------------------------------------

def test_admin_list_describe_delete_groups_and_offsets(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=2)
    group = unique_group("adm")
    produce(b, topic, numbered(10))
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    adm = kp_admin(b)
    c = kp_consumer(b, group, topic, client_id="adm-client")
    try:
        drain(kp_poll, c, 10, settle=0)
        c.commit({tp0: OffsetAndMetadata(3, "m0", -1), tp1: OffsetAndMetadata(4, "m1", -1)})

        listed = {g["group_id"]: g for g in adm.list_groups()}
        assert group in listed and listed[group]["protocol_type"] == "consumer"
        # ListGroups v4+ state filter (KIP-518).
        assert group in {g["group_id"] for g in adm.list_groups(states_filter=["Stable"])}
        assert group not in {g["group_id"] for g in adm.list_groups(states_filter=["Empty"])}
        view = group_view(b, group)
        assert view["state"] == "Stable" and view["protocol_type"] == "consumer"
        assert view["protocol"] in ("range", "roundrobin")
        (only,) = view["members"].values()
        assert only["client_id"] == "adm-client"
        assert only["partitions"] == {(topic, 0), (topic, 1)}

        # A group with members cannot be deleted, nor offsets of subscribed topics.
        assert adm.delete_groups([group]) == {group: "NonEmptyGroupError"}
        res = adm.delete_group_offsets(group, [tp0])
        assert res[tp0] is Errors.GroupSubscribedToTopicError
    finally:
        c.close(autocommit=False)

    try:
        wait_group_state(b, group, "Empty", members=0)
        res = adm.list_group_offsets({group: None})[group]
        assert {tp: (o.offset, o.metadata) for tp, o in res.items()} == {tp0: (3, "m0"), tp1: (4, "m1")}

        assert adm.alter_group_offsets(group, {tp1: OffsetAndMetadata(7, "set", -1)}) == \
            {tp1: Errors.NoError}
        assert adm.delete_group_offsets(group, [tp0]) == {tp0: Errors.NoError}
        assert committed(b, group) == {(topic, 1): (7, "set")}

        assert adm.delete_groups([group]) == {group: "OK"}
        assert group not in {g["group_id"] for g in adm.list_groups()}
        assert committed(b, group) == {}
        assert adm.delete_groups([group]) == {group: "GroupIdNotFoundError"}
        for gone in (group, unique_group("never-existed")):
            view = group_view(b, gone)
            assert view["state"] == "Dead" or "GroupIdNotFound" in str(view["error"]), view
            assert view["members"] == {}
    finally:
        adm.close()

    # A deleted group starts over from auto.offset.reset.
    c = kp_consumer(b, group, topic)
    try:
        assert len(drain(kp_poll, c, 10)) == 10
    finally:
        c.close(autocommit=False)


# -- durability ------------------------------------------------------------------------------

def test_committed_offsets_survive_kill9(make_broker):
    broker = make_broker(*GROUP_BROKER_ARGS)
    b = broker.bootstrap
    topic = unique_topic("kpgk")
    create_topic(b, topic, partitions=2)
    produce(b, topic, numbered(20))
    group = unique_group("durable")
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    c = kp_consumer(b, group, topic)
    try:
        drain(kp_poll, c, 20, settle=0)
        c.commit({tp0: OffsetAndMetadata(6, "six", -1), tp1: OffsetAndMetadata(3, "three", -1)})
    finally:
        c.close(autocommit=False)

    broker.kill9()
    broker.start()
    assert committed(b, group) == {(topic, 0): (6, "six"), (topic, 1): (3, "three")}
    c = kp_consumer(b, group, topic)
    try:
        got = drain(kp_poll, c, 4 + 7)
        assert offsets_of(got, 0) == list(range(6, 10))
        assert offsets_of(got, 1) == list(range(3, 10))
        c.commit()
    finally:
        c.close(autocommit=False)
    # The latest commit also survives a second crash.
    broker.kill9()
    broker.start()
    assert {k: v[0] for k, v in committed(b, group).items()} == {(topic, 0): 10, (topic, 1): 10}


def test_group_and_offset_deletions_survive_kill9(make_broker):
    broker = make_broker(*GROUP_BROKER_ARGS)
    b = broker.bootstrap
    topic = create_topic(b, unique_topic("kpdelk"), partitions=2)
    deleted, trimmed = unique_group("deleted"), unique_group("trimmed")
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    adm = kp_admin(b)
    try:
        for g in (deleted, trimmed):
            adm.alter_group_offsets(g, {tp0: OffsetAndMetadata(2, "", -1),
                                        tp1: OffsetAndMetadata(4, "", -1)})
        assert adm.delete_groups([deleted]) == {deleted: "OK"}
        assert adm.delete_group_offsets(trimmed, [tp1]) == {tp1: Errors.NoError}
        assert adm.alter_group_offsets(trimmed, {tp0: OffsetAndMetadata(9, "altered", -1)}) == \
            {tp0: Errors.NoError}
    finally:
        adm.close()
    broker.kill9()
    broker.start()
    assert committed(b, deleted) == {}, "a deleted group came back after restart"
    assert committed(b, trimmed) == {(topic, 0): (9, "altered")}
    adm = kp_admin(b)
    try:
        listed = {g["group_id"] for g in adm.list_groups()}
    finally:
        adm.close()
    assert trimmed in listed and deleted not in listed
    assert group_view(b, trimmed)["state"] == "Empty"


# -- metrics ---------------------------------------------------------------------------------

def test_lag_metrics_follow_commits(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic)
    group = unique_group("lag")
    produce(b, topic, numbered(10), partition=0)
    tp = TopicPartition(topic, 0)
    labels = {"group": group, "topic": topic, "partition": 0}
    c = kp_consumer(b, group, topic)
    try:
        drain(kp_poll, c, 10, settle=0)
        c.commit({tp: OffsetAndMetadata(4, "", -1)})
        wait_until(lambda: metric_value(group_broker, "riffle_group_lag", **labels) == 6,
                   timeout=15, message="riffle_group_lag == 6")
        assert metric_value(group_broker, "riffle_group_committed_offset", **labels) == 4
        assert (metric_value(group_broker, "riffle_groups", state="Stable") or 0) >= 1
        assert (metric_value(group_broker, "riffle_group_rebalances_total", group=group) or 0) >= 1
        c.commit()
        wait_until(lambda: metric_value(group_broker, "riffle_group_lag", **labels) == 0,
                   timeout=15, message="riffle_group_lag == 0 after committing the end")
        assert metric_value(group_broker, "riffle_group_committed_offset", **labels) == 10
        produce(b, topic, numbered(3, start=10), partition=0)
        wait_until(lambda: metric_value(group_broker, "riffle_group_lag", **labels) == 3,
                   timeout=15, message="riffle_group_lag grows with new records")
    finally:
        c.close(autocommit=False)


# -- error paths on raw frames --------------------------------------------------------------------

def test_bad_group_requests_get_kafka_errors_and_group_keeps_working(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=2)
    produce(b, topic, numbered(40))  # 20 per partition
    group = unique_group("raw")
    sub = gh.consumer_subscription_bytes([topic])
    with gh.WireClient(group_broker.port) as w:
        # Session timeouts outside [min, max] are refused.
        for bad in (500, 2_000_000):
            resp = w.join(group, session_ms=bad, metadata=sub)
            assert resp.error_code == gh.ERR_INVALID_SESSION_TIMEOUT, (bad, resp)

        joined = w.join(group, metadata=sub)
        assert joined.error_code == 0, joined
        gen, me = joined.generation_id, joined.member_id
        assert joined.leader == me and gen >= 1
        synced = w.sync(group, gen, me, {me: gh.consumer_assignment_bytes(topic, [0, 1])})
        assert synced.error_code == 0, synced
        assert w.heartbeat(group, gen, me) == 0

        good = {"offset": 1}

        def good_commit():
            good["offset"] += 1
            res = w.commit(group, gen, me, {(topic, 0): (good["offset"], "ok")})
            assert res == {(topic, 0): 0}, f"valid commit failed after a bad one: {res}"
            assert w.heartbeat(group, gen, me) == 0

        good_commit()
        cases = [
            ("unknown topic", gen, me, {("no-such-topic-" + topic, 0): (1, "")},
             gh.ERR_UNKNOWN_TOPIC_OR_PARTITION),
            ("unknown partition", gen, me, {(topic, 99): (1, "")},
             gh.ERR_UNKNOWN_TOPIC_OR_PARTITION),
            ("wrong generation", gen + 1, me, {(topic, 0): (9, "")}, gh.ERR_ILLEGAL_GENERATION),
            ("stale generation", gen - 1, me, {(topic, 0): (9, "")}, gh.ERR_ILLEGAL_GENERATION),
            ("unknown member", gen, "not-a-member", {(topic, 0): (9, "")}, gh.ERR_UNKNOWN_MEMBER_ID),
            ("admin-style commit to an active group", -1, "", {(topic, 0): (9, "")},
             gh.ERR_UNKNOWN_MEMBER_ID),
            ("metadata 4097 bytes", gen, me, {(topic, 1): (9, "x" * 4097)},
             gh.ERR_OFFSET_METADATA_TOO_LARGE),
        ]
        wrong = []  # every case runs; mismatches are reported together
        for what, g, m, offsets, want in cases:
            res = w.commit(group, g, m, offsets)
            if set(res.values()) != {want}:
                wrong.append(f"OffsetCommit {what}: got {res}, want error {want}")
            good_commit()
        # Exactly 4096 bytes of metadata is allowed.
        res = w.commit(group, gen, me, {(topic, 1): (5, "y" * 4096)})
        if res != {(topic, 1): 0}:
            wrong.append(f"OffsetCommit with 4096 bytes of metadata: got {res}, want 0")
        for what, grp, g, m, want in [
                ("wrong generation", group, gen + 1, me, gh.ERR_ILLEGAL_GENERATION),
                ("unknown member", group, gen, "not-a-member", gh.ERR_UNKNOWN_MEMBER_ID),
                ("unknown group", unique_group("nope"), 1, "not-a-member", gh.ERR_UNKNOWN_MEMBER_ID)]:
            got = w.heartbeat(grp, g, m)
            if got != want:
                wrong.append(f"Heartbeat {what}: got {got}, want {want}")
        for what, g, m, want in [("wrong generation", gen + 1, me, gh.ERR_ILLEGAL_GENERATION),
                                 ("unknown member", gen, "not-a-member", gh.ERR_UNKNOWN_MEMBER_ID)]:
            got = w.sync(group, g, m, {}).error_code
            if got != want:
                wrong.append(f"SyncGroup {what}: got {got}, want {want}")
        got = w.leave(group, "not-a-member")
        if got != gh.ERR_UNKNOWN_MEMBER_ID:
            wrong.append(f"LeaveGroup unknown member: got {got}, want {gh.ERR_UNKNOWN_MEMBER_ID}")
        if w.heartbeat(group, gen, me) != 0:
            wrong.append("the member was disturbed by the bad requests")
        assert not wrong, "\n".join(wrong)
        final = good["offset"]
        assert committed(b, group) == {(topic, 0): (final, "ok"), (topic, 1): (5, "y" * 4096)}
        assert w.leave(group, me) == 0

    # A real consumer joins the same group and resumes at the committed offsets.
    c = kp_consumer(b, group, topic)
    try:
        got = drain(kp_poll, c, (20 - final) + (20 - 5))
        assert offsets_of(got, 0) == list(range(final, 20))
        assert offsets_of(got, 1) == list(range(5, 20))
    finally:
        c.close(autocommit=False)


def test_rebalance_states_on_raw_frames(group_broker, topic):
    """Join/sync barrier semantics: heartbeats learn about a rebalance,
    commits are fenced by generation and during CompletingRebalance, a
    follower's SyncGroup waits for the leader's assignment."""
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=2)
    group = unique_group("rawreb")
    sub = gh.consumer_subscription_bytes([topic])
    one = {(topic, 0): (1, "")}
    with gh.WireClient(group_broker.port) as a, gh.WireClient(group_broker.port) as bw, \
            ThreadPoolExecutor(2) as pool:
        ja = a.join(group, metadata=sub, rebalance_ms=20000)
        assert ja.error_code == 0, ja
        gen1, ida = ja.generation_id, ja.member_id
        assert a.sync(group, gen1, ida, {ida: gh.consumer_assignment_bytes(topic, [0, 1])}).error_code == 0

        # A second member's JoinGroup parks until the first one rejoins.
        fut_b = pool.submit(bw.join, group, metadata=sub, rebalance_ms=20000)
        wait_until(lambda: a.heartbeat(group, gen1, ida) == gh.ERR_REBALANCE_IN_PROGRESS,
                   timeout=10, message="heartbeat to report REBALANCE_IN_PROGRESS")
        assert not fut_b.done(), "JoinGroup answered before all known members rejoined"
        # Still in PreparingRebalance: the old generation can commit (Kafka semantics).
        assert a.commit(group, gen1, ida, one) == {(topic, 0): 0}

        ja2 = a.join(group, member_id=ida, metadata=sub, rebalance_ms=20000)
        jb = fut_b.result(15)
        assert ja2.error_code == 0 and jb.error_code == 0, (ja2, jb)
        gen2 = ja2.generation_id
        assert jb.generation_id == gen2 == gen1 + 1
        assert ja2.leader == jb.leader and ja2.leader in (ida, jb.member_id)
        ids = {ida: a, jb.member_id: bw}
        leader_id = ja2.leader
        (follower_id,) = set(ids) - {leader_id}
        leader_resp = ja2 if leader_id == ida else jb
        follower_resp = jb if leader_id == ida else ja2
        assert sorted(m.member_id for m in leader_resp.members) == sorted(ids)
        assert list(follower_resp.members) == [], "only the leader gets the member list"

        # CompletingRebalance: stale generation is fenced, current one must wait.
        assert a.commit(group, gen1, ida, one) == {(topic, 0): gh.ERR_ILLEGAL_GENERATION}
        assert a.commit(group, gen2, ida, one) == {(topic, 0): gh.ERR_REBALANCE_IN_PROGRESS}

        fut_f = pool.submit(ids[follower_id].sync, group, gen2, follower_id, {})
        time.sleep(0.5)
        assert not fut_f.done(), "follower SyncGroup answered before the leader's"
        plan = {leader_id: gh.consumer_assignment_bytes(topic, [0]),
                follower_id: gh.consumer_assignment_bytes(topic, [1])}
        sl = ids[leader_id].sync(group, gen2, leader_id, plan)
        sf = fut_f.result(10)
        assert sl.error_code == 0 and sf.error_code == 0, (sl, sf)
        assert gh.decode_assignment(sl.assignment) == {(topic, 0)}
        assert gh.decode_assignment(sf.assignment) == {(topic, 1)}

        # Stable again: everything works with the new generation.
        assert a.commit(group, gen2, ida, {(topic, 0): (2, "")}) == {(topic, 0): 0}
        assert a.heartbeat(group, gen2, ida) == 0 and bw.heartbeat(group, gen2, jb.member_id) == 0
        view = group_view(b, group)
        assert view["state"] == "Stable"
        assert {m: v["partitions"] for m, v in view["members"].items()} == \
            {leader_id: {(topic, 0)}, follower_id: {(topic, 1)}}

        with gh.WireClient(group_broker.port) as c:
            # No protocol in common with the group.
            bad = c.join(group, metadata=sub, protocol_name="no-such-assignor")
            assert bad.error_code == gh.ERR_INCONSISTENT_GROUP_PROTOCOL, bad
            bad = c.join("", metadata=sub)
            assert bad.error_code == gh.ERR_INVALID_GROUP_ID, bad
        assert group_view(b, group)["state"] == "Stable"

        assert a.leave(group, ida) == 0
        # The remaining member learns about the rebalance and rejoins alone.
        wait_until(lambda: bw.heartbeat(group, gen2, jb.member_id) == gh.ERR_REBALANCE_IN_PROGRESS,
                   timeout=10, message="heartbeat to report the rebalance after LeaveGroup")
        jb2 = bw.join(group, member_id=jb.member_id, metadata=sub)
        assert jb2.error_code == 0 and jb2.generation_id == gen2 + 1 and jb2.leader == jb.member_id
        assert bw.leave(group, jb.member_id) == 0
    wait_group_state(b, group, "Empty", members=0)
    assert committed(b, group) == {(topic, 0): (2, "")}


def test_member_rejoins_after_broker_kill9(make_broker):
    broker = make_broker(*GROUP_BROKER_ARGS)
    b = broker.bootstrap
    topic = unique_topic("kprejoin")
    create_topic(b, topic, partitions=2)
    group = unique_group("rejoin")
    produce(b, topic, numbered(10))
    with Members() as ms:
        m = member(ms, "m", b, group, topic)
        wait_records([m], 10)
        m.call(lambda c: c.commit())
        broker.kill9()
        broker.start()
        mark = marks([m])
        produce(b, topic, numbered(6, start=10))
        got = wait_records([m], 6, since=mark, timeout=60)
        # Nothing lost, nothing committed before the crash comes back.  Records
        # fetched after the restart but before the member rejoined may be
        # delivered again (at-least-once), since they were not committed.
        assert set(r[3] for r in got) == set(numbered(6, start=10)), \
            "after the restart the member must get the new records and only those"
        view = wait_group_state(b, group, "Stable", members=1)
        (only,) = view["members"].values()
        assert only["partitions"] == {(topic, 0), (topic, 1)}
        m.call(lambda c: c.commit())
    assert {k: v[0] for k, v in committed(b, group).items()} == {(topic, 0): 8, (topic, 1): 8}


def test_member_not_rejoining_is_removed_after_rebalance_timeout(group_broker, topic):
    b = group_broker.bootstrap
    create_topic(b, topic, partitions=2)
    group = unique_group("rbto")
    sub = gh.consumer_subscription_bytes([topic])
    with gh.WireClient(group_broker.port) as a, gh.WireClient(group_broker.port) as bw, \
            ThreadPoolExecutor(1) as pool:
        ja = a.join(group, metadata=sub, rebalance_ms=2000)
        assert ja.error_code == 0
        assert a.sync(group, ja.generation_id, ja.member_id,
                      {ja.member_id: gh.consumer_assignment_bytes(topic, [0, 1])}).error_code == 0
        started = time.monotonic()
        fut = pool.submit(bw.join, group, metadata=sub, rebalance_ms=2000)
        jb = fut.result(20)  # a never rejoins
        elapsed = time.monotonic() - started
        assert jb.error_code == 0, jb
        assert 1.5 <= elapsed < 10, f"join phase ended after {elapsed:.1f}s (rebalance timeout 2s)"
        assert jb.generation_id == ja.generation_id + 1 and jb.leader == jb.member_id
        assert [m.member_id for m in jb.members] == [jb.member_id]
        assert a.heartbeat(group, ja.generation_id, ja.member_id) == gh.ERR_UNKNOWN_MEMBER_ID
        assert bw.sync(group, jb.generation_id, jb.member_id,
                       {jb.member_id: gh.consumer_assignment_bytes(topic, [0, 1])}).error_code == 0
        view = group_view(b, group)
        assert view["state"] == "Stable" and list(view["members"]) == [jb.member_id]
        assert bw.leave(group, jb.member_id) == 0


def test_manually_assigned_consumer_commits_into_an_empty_group(group_broker, topic):
    """Offsets-only use of a group id (assign(), no subscription): commits
    with generation -1 are accepted while the group has no members and a
    later subscriber resumes from them."""
    b = group_broker.bootstrap
    create_topic(b, topic)
    group = unique_group("simple")
    produce(b, topic, numbered(10), partition=0)
    tp = TopicPartition(topic, 0)
    c = KafkaConsumer(bootstrap_servers=b, group_id=group, enable_auto_commit=False,
                      auto_offset_reset="earliest")
    try:
        c.assign([tp])
        assert offsets_of(drain(kp_poll, c, 10)) == list(range(10))
        c.commit({tp: OffsetAndMetadata(7, "simple", -1)})
        assert c.committed(tp) == 7
    finally:
        c.close(autocommit=False)
    assert committed(b, group) == {(topic, 0): (7, "simple")}
    assert group_view(b, group)["members"] == {}
    c = kp_consumer(b, group, topic)
    try:
        assert offsets_of(drain(kp_poll, c, 3)) == [7, 8, 9]
    finally:
        c.close(autocommit=False)


def test_offsets_of_a_deleted_topic_are_removed(group_broker):
    b = group_broker.bootstrap
    topic = create_topic(b, unique_topic("kpdel"))
    group = unique_group("deltopic")
    keep = create_topic(b, unique_topic("kpkeep"))
    adm = kp_admin(b)
    try:
        assert adm.alter_group_offsets(group, {
            TopicPartition(topic, 0): OffsetAndMetadata(5, "", -1),
            TopicPartition(keep, 0): OffsetAndMetadata(3, "", -1)}) == \
            {TopicPartition(topic, 0): Errors.NoError, TopicPartition(keep, 0): Errors.NoError}
        assert committed(b, group) == {(topic, 0): (5, ""), (keep, 0): (3, "")}
        adm.delete_topics([topic])
        wait_until(lambda: topic not in adm.list_topics(), timeout=20, message="topic deletion")
    finally:
        adm.close()
    time.sleep(1.0)
    left_over = committed(b, group)
    # A topic re-created under the same name must not inherit the old offsets.
    create_topic(b, topic)
    produce(b, topic, numbered(10), partition=0)
    c = kp_consumer(b, group, topic)
    try:
        got = offsets_of(drain(kp_poll, c, 10, timeout=10))
    finally:
        c.close(autocommit=False)
    assert left_over == {(keep, 0): (3, "")} and got == list(range(10)), \
        f"after deleting {topic}: committed offsets {left_over}; re-created topic read from {got[:1]}"
