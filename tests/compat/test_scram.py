"""SCRAM credentials (KIP-554): AlterUserScramCredentials and
DescribeUserScramCredentials through confluent-kafka and Kafka's kafka-configs tool.
Credentials are stored in the metadata quorum (salt, iterations and the derived keys,
never the password), so they survive a kill -9; Kafka's checks apply (mechanism,
iteration bounds, one operation per user, unknown users)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion,
                                   UserScramCredentialUpsertion)

from helpers import kafka_tool, unique_topic

CONFIGS = "kafka.admin.ConfigCommand"
T = 15


def described(adm, users) -> dict:
    """user -> {mechanism: iterations}, or the KafkaError code for that user."""
    out = {}
    for user, f in adm.describe_user_scram_credentials(users, request_timeout=T).items():
        try:
            out[user] = {i.mechanism: i.iterations for i in f.result(T).scram_credential_infos}
        except KafkaException as e:
            out[user] = e.args[0].code()
    return out


def alter(adm, alterations) -> dict:
    """user -> None, or the KafkaError code refusing that user's alteration."""
    out = {}
    for user, f in adm.alter_user_scram_credentials(alterations, request_timeout=T).items():
        try:
            out[user] = f.result(T)
        except KafkaException as e:
            out[user] = e.args[0].code()
    return out


def test_alter_describe_delete_with_confluent_kafka_across_a_kill(make_broker):
    b = make_broker()
    adm = AdminClient({"bootstrap.servers": b.bootstrap})
    alice, bob = unique_topic("alice"), unique_topic("bob")
    assert described(adm, [alice]) == {alice: KafkaError.RESOURCE_NOT_FOUND}

    sha256 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192)
    sha512 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    assert alter(adm, [UserScramCredentialUpsertion(alice, sha256, b"alice-secret"),
                       UserScramCredentialUpsertion(bob, sha512, b"bob-secret",
                                                    b"bob-salt")]) == {alice: None, bob: None}
    assert alter(adm, [UserScramCredentialUpsertion(alice, sha512, b"x")]) == {alice: None}
    want = {alice: {ScramMechanism.SCRAM_SHA_256: 8192, ScramMechanism.SCRAM_SHA_512: 4096},
            bob: {ScramMechanism.SCRAM_SHA_512: 4096}}
    assert described(adm, [alice, bob]) == want

    # Refusals, user by user: too few iterations, two operations on one user, deleting a
    # credential that is not there. The acceptable alteration in the same request lands.
    carol, dave = unique_topic("carol"), unique_topic("dave")
    few = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 1000)
    got = alter(adm, [
        UserScramCredentialUpsertion(carol, few, b"p"),
        UserScramCredentialUpsertion(dave, sha256, b"p"),
        UserScramCredentialDeletion(dave, ScramMechanism.SCRAM_SHA_512),
        UserScramCredentialDeletion(bob, ScramMechanism.SCRAM_SHA_256),
        UserScramCredentialUpsertion(alice, sha256, b"new-secret"),
    ])
    assert got == {carol: KafkaError.UNACCEPTABLE_CREDENTIAL,
                   dave: KafkaError.DUPLICATE_RESOURCE,
                   bob: KafkaError.RESOURCE_NOT_FOUND,
                   alice: None}, got

    b.restart(kill=True)
    adm = AdminClient({"bootstrap.servers": b.bootstrap})
    assert described(adm, [alice, bob]) == want
    assert alter(adm, [UserScramCredentialDeletion(bob, ScramMechanism.SCRAM_SHA_512)]) == {
        bob: None}
    assert described(adm, [bob]) == {bob: KafkaError.RESOURCE_NOT_FOUND}


def test_kafka_configs_manages_scram_users(make_broker):
    b = make_broker()
    adm = AdminClient({"bootstrap.servers": b.bootstrap})
    user = unique_topic("erin")
    tool = lambda *a: kafka_tool(CONFIGS, "--bootstrap-server", b.bootstrap, *a)  # noqa: E731
    tool("--alter", "--add-config", "SCRAM-SHA-256=[iterations=8192,password=erin-secret]",
         "--entity-type", "users", "--entity-name", user)
    assert described(adm, [user]) == {user: {ScramMechanism.SCRAM_SHA_256: 8192}}
    # kafka-configs reads credentials and quotas back together.
    out = tool("--describe", "--entity-type", "users", "--entity-name", user).stdout
    assert f"SCRAM credential configs for user-principal '{user}' are " \
           "SCRAM-SHA-256=iterations=8192" in out, out
    tool("--alter", "--delete-config", "SCRAM-SHA-256", "--entity-type", "users",
         "--entity-name", user)
    assert described(adm, [user]) == {user: KafkaError.RESOURCE_NOT_FOUND}
