"""Client quotas (KIP-546) and group configs through Kafka's own kafka-configs tool, and
byte-rate quotas enforced on real producers and consumers.

Quotas live in the metadata quorum. producer_byte_rate and consumer_byte_rate are
enforced per user and client id with Kafka's precedence: a client over its rate gets a
throttle time in its responses and its connection is not read from for that long.
"""

from __future__ import annotations

import re
import time

from confluent_kafka import Consumer, Producer

import test_confluent_kafka as ck
from helpers import kafka_tool, unique_topic

CONFIGS = "kafka.admin.ConfigCommand"


def configs(broker, *args, check=True):
    return kafka_tool(CONFIGS, "--bootstrap-server", broker.bootstrap, *args, check=check)


def throttle_ms(b, quota) -> float:
    status, text = b.http_get("/metrics")
    assert status == 200
    m = re.search(rf'^riffle_client_quota_throttle_ms_total{{quota="{quota}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_kafka_configs_sets_describes_and_removes_client_quotas(make_broker):
    b = make_broker()
    user, client = unique_topic("alice"), unique_topic("app")
    configs(b, "--alter", "--add-config", "producer_byte_rate=1048576,consumer_byte_rate=2097152",
            "--entity-type", "users", "--entity-name", user)
    configs(b, "--alter", "--add-config", "request_percentage=12.5", "--entity-type", "users",
            "--entity-name", user, "--entity-type", "clients", "--entity-name", client)
    configs(b, "--alter", "--add-config", "producer_byte_rate=4096", "--entity-type", "clients",
            "--entity-default")
    configs(b, "--alter", "--add-config", "connection_creation_rate=20", "--entity-type", "ips",
            "--entity-name", "10.1.2.3")

    out = configs(b, "--describe", "--entity-type", "users", "--entity-name", user).stdout
    assert f"Quota configs for user-principal '{user}' are " \
           "consumer_byte_rate=2097152.0, producer_byte_rate=1048576.0" in out, out
    out = configs(b, "--describe", "--entity-type", "users", "--entity-name", user,
                  "--entity-type", "clients", "--entity-name", client).stdout
    assert "request_percentage=12.5" in out, out
    out = configs(b, "--describe", "--entity-type", "clients", "--entity-default").stdout
    assert "Quota configs for the default client-id are producer_byte_rate=4096.0" in out, out
    out = configs(b, "--describe", "--entity-type", "ips", "--entity-name", "10.1.2.3").stdout
    assert "connection_creation_rate=20.0" in out, out
    # Every user entity (the tool asks with MATCH_TYPE_SPECIFIED).
    out = configs(b, "--describe", "--entity-type", "users").stdout
    assert f"user-principal '{user}'" in out, out

    # The broker's refusal reaches the tool.
    bad = configs(b, "--alter", "--add-config", "producer_byte_rate=1.5", "--entity-type", "users",
                  "--entity-name", user, check=False)
    assert bad.returncode != 0
    assert "Configuration producer_byte_rate must be a Long value" in bad.stdout + bad.stderr

    # Quotas survive a restart; removing the last key forgets the entity.
    b.restart()
    out = configs(b, "--describe", "--entity-type", "users", "--entity-name", user).stdout
    assert "producer_byte_rate=1048576.0" in out, out
    configs(b, "--alter", "--delete-config", "producer_byte_rate,consumer_byte_rate",
            "--entity-type", "users", "--entity-name", user)
    out = configs(b, "--describe", "--entity-type", "users", "--entity-name", user).stdout
    assert "producer_byte_rate" not in out and "consumer_byte_rate" not in out, out


def test_kafka_configs_manages_group_configs(make_broker):
    b = make_broker()
    group = unique_topic("grp")
    configs(b, "--alter", "--add-config", "consumer.heartbeat.interval.ms=6000", "--entity-type",
            "groups", "--entity-name", group)
    out = configs(b, "--describe", "--entity-type", "groups", "--entity-name", group).stdout
    assert "consumer.heartbeat.interval.ms=6000" in out, out
    bad = configs(b, "--alter", "--add-config", "consumer.heartbeat.interval.ms=100",
                  "--entity-type", "groups", "--entity-name", group, check=False)
    assert bad.returncode != 0
    assert "consumer.heartbeat.interval.ms must be greater than or equal to " \
           "group.consumer.min.heartbeat.interval.ms" in bad.stdout + bad.stderr


PRODUCE_RATE, FETCH_RATE = 100_000, 200_000  # bytes/s
PAYLOAD = b"q" * 1000
COUNT = 1200
# A client may run ahead of its quota by about one request (it is throttled after the
# fact, as in Kafka), so over these volumes it must average at most this multiple.
SLACK = 1.5


def _produce(b, topic, client_id) -> float:
    # Small requests: a client is throttled after each request, so one huge request
    # would run ahead of any quota (as with Kafka).
    p = Producer({"bootstrap.servers": b.bootstrap, "client.id": client_id, "linger.ms": 5,
                  "batch.size": 16384, "compression.type": "none", "acks": "all"})
    start = time.monotonic()
    d = ck.Deliveries()
    for _ in range(COUNT):
        p.produce(topic, PAYLOAD, on_delivery=d)
        p.poll(0)
    assert p.flush(120) == 0
    assert not d.errors and len(d.ok) == COUNT, d.errors[:3]
    return time.monotonic() - start


def test_producers_and_consumers_over_their_byte_rate_are_throttled(make_broker):
    """Lower bounds on time only: throttling makes a client slower, a loaded machine never
    faster."""
    b = make_broker("--quota-window-num", "3")
    topic = ck.create_topic(b, unique_topic("quota"))
    configs(b, "--alter", "--add-config",
            f"producer_byte_rate={PRODUCE_RATE},consumer_byte_rate={FETCH_RATE}",
            "--entity-type", "clients", "--entity-name", "slow")

    # An unquoted client is not throttled.
    _produce(b, topic, "fast")
    assert throttle_ms(b, "producer_byte_rate") == 0

    elapsed = _produce(b, topic, "slow")
    assert throttle_ms(b, "producer_byte_rate") > 0
    rate = COUNT * len(PAYLOAD) / elapsed
    assert rate <= SLACK * PRODUCE_RATE, f"produced at {rate:.0f} B/s under a {PRODUCE_RATE} quota"

    # The consumer reads every record, at its rate.
    c = Consumer({"bootstrap.servers": b.bootstrap, "client.id": "slow", "group.id": topic,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 32768, "message.max.bytes": 32768,
                  "max.partition.fetch.bytes": 16384})
    c.subscribe([topic])
    start, got = time.monotonic(), 0
    while got < 2 * COUNT and time.monotonic() - start < 120:
        got += sum(1 for m in c.consume(500, timeout=1) if not m.error())
    elapsed = time.monotonic() - start
    c.close()
    assert got == 2 * COUNT
    assert throttle_ms(b, "consumer_byte_rate") > 0
    rate = 2 * COUNT * len(PAYLOAD) / elapsed
    assert rate <= SLACK * FETCH_RATE, f"consumed at {rate:.0f} B/s under a {FETCH_RATE} quota"
