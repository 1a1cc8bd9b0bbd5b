"""ACLs (Kafka's KIP-140 model): CreateAcls, DescribeAcls and DeleteAcls through
confluent-kafka, kafka-python and Kafka's own kafka-acls tool; stored in the metadata
quorum, so they survive a kill -9 and every broker of a cluster enforces the same ones.

Without authentication every connection is ``User:ANONYMOUS`` at its client address, so
what is enforced here is what Kafka enforces for that principal: topic, group,
transactional-id and cluster operations, with Kafka's rules (a DENY wins, READ/WRITE/
DELETE/ALTER imply DESCRIBE, ``allow.everyone.if.no.acl.found`` only for resources
without any ACL). Without ``--authorizer-enabled`` the ACL APIs answer SECURITY_DISABLED,
as Kafka does without an authorizer.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, ResourcePatternType,
                                   ResourceType)

from helpers import kafka_tool, unique_topic, wait_until

AUTHZ = ("--authorizer-enabled", "true", "--allow-everyone-if-no-acl-found", "true")
# The tests of the ACL store itself run as a super user: the ACLs they create on the
# cluster resource would otherwise shut the anonymous client out (as in Kafka).
SUPER = ("--authorizer-enabled", "true", "--super-users", "User:ANONYMOUS")
ACLS = "org.apache.kafka.tools.AclCommand"
T = 15


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def binding(rtype, name, principal, op, perm, pattern=ResourcePatternType.LITERAL,
            host="*"):
    return AclBinding(rtype, name, pattern, principal, host, op, perm)


def any_filter(**kw):
    args = dict(restype=ResourceType.ANY, name=None,
                resource_pattern_type=ResourcePatternType.ANY, principal=None, host=None,
                operation=AclOperation.ANY, permission_type=AclPermissionType.ANY)
    args.update(kw)
    return AclBindingFilter(**args)


def create(adm, bindings):
    for f in adm.create_acls(bindings, request_timeout=T).values():
        f.result(T)


def describe(adm, flt=None) -> set:
    return set(adm.describe_acls(flt or any_filter(), request_timeout=T).result(T))


def create_topics(adm, *names):
    from confluent_kafka.admin import NewTopic
    for f in adm.create_topics([NewTopic(n, 1, 1) for n in names],
                               operation_timeout=T).values():
        f.result(T)


def error_code(exc_info) -> int:
    return exc_info.value.args[0].code()


def test_acl_apis_answer_security_disabled_without_an_authorizer(make_broker):
    b = make_broker()
    adm = admin(b.bootstrap)
    acl = binding(ResourceType.TOPIC, "t", "User:alice", AclOperation.READ,
                  AclPermissionType.ALLOW)
    with pytest.raises(KafkaException) as e:
        create(adm, [acl])
    assert error_code(e) == KafkaError.SECURITY_DISABLED
    # librdkafka drops DescribeAcls' top-level error; kafka-python reports it.
    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, KafkaAdminClient, ResourcePatternFilter)
    from kafka.admin import ResourceType as KpResource
    from kafka.errors import SecurityDisabledError
    kp = KafkaAdminClient(bootstrap_servers=b.bootstrap, client_id="riffle-acl-test")
    try:
        with pytest.raises(SecurityDisabledError):
            kp.describe_acls(ACLFilter(
                principal=None, host=None, operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(KpResource.ANY, None,
                                                       ACLResourcePatternType.ANY)))
    finally:
        kp.close()


def test_create_describe_delete_survive_a_kill(make_broker):
    b = make_broker(*SUPER)
    adm = admin(b.bootstrap)
    orders = binding(ResourceType.TOPIC, "orders", "User:alice", AclOperation.READ,
                     AclPermissionType.ALLOW)
    prefixed = binding(ResourceType.TOPIC, "ord", "User:bob", AclOperation.WRITE,
                       AclPermissionType.ALLOW, pattern=ResourcePatternType.PREFIXED)
    group = binding(ResourceType.GROUP, "g", "User:*", AclOperation.READ,
                    AclPermissionType.DENY, host="10.0.0.1")
    create(adm, [orders, prefixed, group])
    create(adm, [orders])  # creating one again keeps it once

    # Refused one by one with Kafka's error; the valid ones in the same request land.
    cluster_ok = binding(ResourceType.BROKER, "kafka-cluster", "User:ops",
                         AclOperation.ALTER, AclPermissionType.ALLOW)
    bad_principal = binding(ResourceType.TOPIC, "x", "alice", AclOperation.READ,
                            AclPermissionType.ALLOW)
    bad_cluster = binding(ResourceType.BROKER, "other", "User:ops", AclOperation.ALTER,
                          AclPermissionType.ALLOW)
    results = adm.create_acls([bad_principal, cluster_ok, bad_cluster], request_timeout=T)
    for bad in (bad_principal, bad_cluster):
        with pytest.raises(KafkaException) as e:
            results[bad].result(T)
        assert error_code(e) == KafkaError.INVALID_REQUEST, e.value
    assert results[cluster_ok].result(T) is None

    everything = {orders, prefixed, group, cluster_ok}
    assert describe(adm) == everything
    # MATCH: every binding that applies to the name (literal, prefixed, wildcard).
    match_orders = any_filter(restype=ResourceType.TOPIC, name="orders",
                              resource_pattern_type=ResourcePatternType.MATCH)
    assert describe(adm, match_orders) == {orders, prefixed}
    assert describe(adm, any_filter(resource_pattern_type=ResourcePatternType.LITERAL,
                                    restype=ResourceType.TOPIC)) == {orders}
    assert describe(adm, any_filter(principal="User:bob")) == {prefixed}
    assert describe(adm, any_filter(host="10.0.0.1")) == {group}

    b.restart(kill=True)
    adm = admin(b.bootstrap)
    assert describe(adm) == everything

    deleted = adm.delete_acls([any_filter(principal="User:alice"),
                               any_filter(restype=ResourceType.GROUP)], request_timeout=T)
    assert [set(f.result(T)) for f in deleted.values()] == [{orders}, {group}]
    assert describe(adm) == {prefixed, cluster_ok}


def test_kafka_acls_tool_and_kafka_python(make_broker):
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, KafkaAdminClient, ResourcePattern,
                             ResourcePatternFilter)
    from kafka.admin import ResourceType as KpResource

    b = make_broker(*SUPER)
    topic = unique_topic("acl")
    kafka_tool(ACLS, "--bootstrap-server", b.bootstrap, "--add", "--allow-principal",
               "User:carol", "--operation", "Read", "--operation", "Describe", "--topic", topic,
               "--group", "carol-group")
    out = kafka_tool(ACLS, "--bootstrap-server", b.bootstrap, "--list", "--topic",
                     topic).stdout
    assert f"name={topic}" in out and "principal=User:carol" in out, out
    assert "operation=READ" in out and "operation=DESCRIBE" in out, out

    kp = KafkaAdminClient(bootstrap_servers=b.bootstrap, client_id="riffle-acl-test")
    try:
        every = ACLFilter(principal=None, host=None, operation=ACLOperation.ANY,
                          permission_type=ACLPermissionType.ANY,
                          resource_pattern=ResourcePatternFilter(
                              KpResource.ANY, None, ACLResourcePatternType.ANY))
        acls, err = kp.describe_acls(every)
        seen = {(a.resource_pattern.resource_type, a.resource_pattern.resource_name,
                 a.operation) for a in acls}
        assert seen == {(KpResource.TOPIC, topic, ACLOperation.READ),
                        (KpResource.TOPIC, topic, ACLOperation.DESCRIBE),
                        (KpResource.GROUP, "carol-group", ACLOperation.READ),
                        (KpResource.GROUP, "carol-group", ACLOperation.DESCRIBE)}, seen
        dave = ACL(principal="User:dave", host="*", operation=ACLOperation.WRITE,
                   permission_type=ACLPermissionType.DENY,
                   resource_pattern=ResourcePattern(KpResource.TOPIC, topic,
                                                    ACLResourcePatternType.LITERAL))
        created = kp.create_acls([dave])
        assert created["succeeded"] == [dave] and not created["failed"], created
        (_, matched, err), = kp.delete_acls([every])
        assert len(matched) == 5, matched
    finally:
        kp.close()
    out = kafka_tool(ACLS, "--bootstrap-server", b.bootstrap, "--list").stdout
    assert "User:" not in out, out


def deliver(bootstrap, topic, value=b"v"):
    """The error of producing one record (None on success)."""
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10000})
    errors = []
    p.produce(topic, value, on_delivery=lambda err, msg: errors.append(err))
    p.flush(T)
    assert len(errors) == 1
    return errors[0]


def assert_group_refused(bootstrap, group, topic):
    """A consumer of `group` subscribed to `topic` gets GROUP_AUTHORIZATION_FAILED."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        seen = []
        wait_until(lambda: seen.append(c.poll(0.5)) or any(
            m is not None and m.error() is not None
            and m.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED for m in seen),
            timeout=20, message="GROUP_AUTHORIZATION_FAILED")
    finally:
        c.close()


def test_acls_are_enforced_for_the_anonymous_user_at_its_host(make_broker):
    b = make_broker(*AUTHZ)
    adm = admin(b.bootstrap)
    opened, closed, hidden = (unique_topic(n) for n in ("open", "closed", "hidden"))
    create_topics(adm, opened, closed, hidden)
    A = AclPermissionType
    create(adm, [
        binding(ResourceType.TOPIC, closed, "User:*", AclOperation.ALL, A.ALLOW),
        binding(ResourceType.TOPIC, closed, "User:ANONYMOUS", AclOperation.WRITE, A.DENY,
                host="127.0.0.1"),
        # A deny for another host does not concern this client.
        binding(ResourceType.TOPIC, closed, "User:ANONYMOUS", AclOperation.READ, A.DENY,
                host="10.9.9.9"),
        binding(ResourceType.TOPIC, hidden, "User:*", AclOperation.DESCRIBE, A.DENY),
        binding(ResourceType.GROUP, "denied-group", "User:*", AclOperation.READ, A.DENY),
    ])

    assert deliver(b.bootstrap, opened) is None
    err = deliver(b.bootstrap, closed)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    # Reading the closed topic is allowed (only WRITE is denied here).
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "reader",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.subscribe([opened])
        msg = None
        for _ in range(30):
            msg = c.poll(1)
            if msg is not None and not msg.error():
                break
        assert msg is not None and msg.error() is None and msg.value() == b"v", msg
    finally:
        c.close()

    # Metadata hides what the client may not describe.
    listed = adm.list_topics(timeout=T).topics
    assert opened in listed and closed in listed and hidden not in listed

    # Authorized operations (KIP-430): everything but WRITE on the closed topic.
    desc = adm.describe_topics(TopicCollection([closed, opened]),
                               include_authorized_operations=True, request_timeout=T)
    ops = {name: set(f.result(T).authorized_operations) for name, f in desc.items()}
    topic_ops = {AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE,
                 AclOperation.DELETE, AclOperation.ALTER, AclOperation.DESCRIBE,
                 AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS}
    assert ops[opened] == topic_ops
    assert ops[closed] == topic_ops - {AclOperation.WRITE}

    # A consumer of a group it may not read is refused.
    assert_group_refused(b.bootstrap, "denied-group", opened)

    # Deleting the deny opens the topic again.
    gone = adm.delete_acls([any_filter(name=closed, permission_type=A.DENY,
                                       operation=AclOperation.WRITE)], request_timeout=T)
    assert [len(f.result(T)) for f in gone.values()] == [1]
    wait_until(lambda: deliver(b.bootstrap, closed) is None, timeout=10,
               message="produce allowed again")


def test_every_broker_enforces_the_same_acls(make_cluster):
    c = make_cluster(n=3, extra_args=AUTHZ)
    topic = unique_topic("acl-rep")
    create_topics(admin(c.bootstrap), topic)
    create(admin(c.broker(1).bootstrap), [
        binding(ResourceType.TOPIC, topic, "User:*", AclOperation.WRITE,
                AclPermissionType.DENY)])
    for i in c.ids:
        wait_until(lambda: len(describe(admin(c.broker(i).bootstrap))) == 1, timeout=10,
                   message=f"broker {i} has the ACL")
    # Whichever broker leads the partition refuses the write.
    err = deliver(c.bootstrap, topic)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_coordinator_lookup_and_transaction_tooling_are_authorized(make_broker):
    """FindCoordinator needs DESCRIBE on the group or transactional id; kafka-transactions
    lists and describes only the ids the client may describe, and describe-producers
    needs READ on the topic."""
    b = make_broker(*AUTHZ)
    adm = admin(b.bootstrap)
    topic, hidden_tid, open_tid = unique_topic("txtool"), unique_topic("hid"), unique_topic("vis")
    create_topics(adm, topic)
    # Both ids start a transaction while still open to everyone.
    producers = []
    for tid in (hidden_tid, open_tid):
        p = Producer({"bootstrap.servers": b.bootstrap, "transactional.id": tid})
        p.init_transactions(T)
        p.begin_transaction()
        p.produce(topic, b"v")
        assert p.flush(T) == 0
        producers.append(p)
    A = AclPermissionType
    create(adm, [
        binding(ResourceType.TRANSACTIONAL_ID, hidden_tid, "User:*", AclOperation.DESCRIBE,
                A.DENY),
        binding(ResourceType.GROUP, "hidden-group", "User:*", AclOperation.DESCRIBE, A.DENY),
        # The topic may be described (the tool finds its leader) but not read.
        binding(ResourceType.TOPIC, topic, "User:*", AclOperation.DESCRIBE, A.ALLOW),
        binding(ResourceType.TOPIC, topic, "User:*", AclOperation.READ, A.DENY),
    ])

    def tool(*args, check=True):
        return kafka_tool("org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server",
                          b.bootstrap, *args, check=check)

    listed = tool("list").stdout
    assert open_tid in listed and hidden_tid not in listed, listed
    assert "Ongoing" in tool("describe", "--transactional-id", open_tid).stdout
    # The tool's FindCoordinator for the hidden id is refused before it can describe it.
    refused = tool("describe", "--transactional-id", hidden_tid, check=False)
    assert refused.returncode != 0
    assert "failed due to authorization failure" in refused.stdout + refused.stderr
    refused = tool("describe-producers", "--topic", topic, "--partition", "0", check=False)
    assert refused.returncode != 0
    assert "Failed to describe active producers" in refused.stdout + refused.stderr
    assert f"authorization failure on topic `{topic}`" in refused.stdout + refused.stderr

    # A new producer cannot even find the hidden id's coordinator.
    p = Producer({"bootstrap.servers": b.bootstrap, "transactional.id": hidden_tid})
    with pytest.raises(KafkaException) as exc:
        p.init_transactions(T)
    assert exc.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    # Nor a consumer its group's.
    assert_group_refused(b.bootstrap, "hidden-group", topic)
