"""Apache Kafka's own command-line tools (Kafka 4.1, run with the JVM) against Riffle.

``kafka-configs`` (kafka.admin.ConfigCommand) sets, describes and deletes every topic
config key (on a single broker and on a 3-broker cluster) and dynamic broker configs; its
printed output is parsed and checked.
"""

from __future__ import annotations

import re

import pytest

from helpers import kafka_tool, unique_topic
from test_configs import REMOVED_KEYS, TOPIC_CONFIGS

CONFIGS = "kafka.admin.ConfigCommand"
TOPICS = "org.apache.kafka.tools.TopicCommand"

LINE = re.compile(r"^  (?P<key>[^=\s]+)=(?P<value>.*?) sensitive=(?P<sensitive>true|false) "
                  r"synonyms=\{(?P<synonyms>.*)\}$")


def configs(broker, *args, check=True):
    return kafka_tool(CONFIGS, "--bootstrap-server", broker.bootstrap, *args, check=check)


def described(output: str, header: str) -> dict[str, tuple[str, bool, list[str]]]:
    """``key -> (value, sensitive, synonyms)`` from kafka-configs --describe output."""
    lines = output.splitlines()
    assert header in lines, output
    out = {}
    for line in lines[lines.index(header) + 1:]:
        m = LINE.match(line)
        if not m:
            break
        synonyms = [s for s in m["synonyms"].split(", ") if s]
        out[m["key"]] = (m["value"], m["sensitive"] == "true", synonyms)
    return out


def tool_value(value: str) -> str:
    """A value as kafka-configs takes it: lists in square brackets."""
    return f"[{value.replace(' ', '')}]" if "," in value else value


def test_kafka_configs_sets_describes_and_deletes_every_topic_key(target):
    broker = target
    name = unique_topic("jcfg")
    rf = len(getattr(target, "ids", [None]))
    out = kafka_tool(TOPICS, "--bootstrap-server", broker.bootstrap, "--create", "--topic", name,
                     "--partitions", "1", "--replication-factor", rf).stdout
    assert f"Created topic {name}." in out

    add = ",".join(f"{k}={tool_value(v[0])}" for k, v in TOPIC_CONFIGS.items())
    out = configs(broker, "--alter", "--entity-type", "topics", "--entity-name", name,
                  "--add-config", add).stdout
    assert f"Completed updating config for topic {name}." in out

    desc = described(configs(broker, "--describe", "--entity-type", "topics",
                             "--entity-name", name).stdout,
                     f"Dynamic configs for topic {name} are:")
    assert set(desc) == set(TOPIC_CONFIGS)
    for key, (_, want, _, _) in TOPIC_CONFIGS.items():
        value, sensitive, synonyms = desc[key]
        assert (value, sensitive) == (want, False), (key, desc[key])
        assert synonyms[0] == f"DYNAMIC_TOPIC_CONFIG:{key}={want}", (key, synonyms)

    # Invalid values: the tool fails with Kafka's exception and message; nothing changes.
    for key, (_, _, bad, message) in TOPIC_CONFIGS.items():
        proc = configs(broker, "--alter", "--entity-type", "topics", "--entity-name", name,
                       "--add-config", f"{key}={tool_value(bad)}", check=False)
        assert proc.returncode != 0, (key, proc.stdout)
        text = proc.stdout + proc.stderr
        assert "InvalidConfigurationException" in text and message in text, (key, text)
    for key in REMOVED_KEYS:
        proc = configs(broker, "--alter", "--entity-type", "topics", "--entity-name", name,
                       "--add-config", f"{key}=1", check=False)
        assert proc.returncode != 0 and f"Unknown topic config name: {key}" in proc.stdout + proc.stderr

    # --delete-config: back to the broker default, which --all describes with its synonym.
    out = configs(broker, "--alter", "--entity-type", "topics", "--entity-name", name,
                  "--delete-config", "retention.ms,cleanup.policy").stdout
    assert f"Completed updating config for topic {name}." in out
    everything = described(configs(broker, "--describe", "--all", "--entity-type", "topics",
                                   "--entity-name", name).stdout,
                           f"All configs for topic {name} are:")
    assert everything["retention.ms"][0] == "604800000"
    assert everything["retention.ms"][2] == ["DEFAULT_CONFIG:log.retention.ms=604800000"]
    assert everything["cleanup.policy"][0] == "delete"
    assert everything["segment.ms"][0] == "60000"
    dynamic = described(configs(broker, "--describe", "--entity-type", "topics",
                                "--entity-name", name).stdout,
                        f"Dynamic configs for topic {name} are:")
    assert set(dynamic) == set(TOPIC_CONFIGS) - {"retention.ms", "cleanup.policy"}


def test_kafka_configs_on_broker_defaults_and_one_broker(make_broker):
    b = make_broker()
    me = str(b.node_id)
    out = configs(b, "--alter", "--entity-type", "brokers", "--entity-default",
                  "--add-config", "log.retention.ms=7200000,log.roll.ms=3600000").stdout
    assert "Completed updating default config for brokers in the cluster." in out
    out = configs(b, "--alter", "--entity-type", "brokers", "--entity-name", me,
                  "--add-config", "message.max.bytes=2000000").stdout
    assert f"Completed updating config for broker {me}." in out

    default = described(configs(b, "--describe", "--entity-type", "brokers",
                                "--entity-default").stdout,
                        "Default configs for brokers in the cluster are:")
    assert default["log.retention.ms"][0] == "7200000"
    assert default["log.roll.ms"][0] == "3600000"
    mine = described(configs(b, "--describe", "--entity-type", "brokers",
                             "--entity-name", me).stdout,
                     f"Dynamic configs for broker {me} are:")
    assert mine["message.max.bytes"][0] == "2000000"
    assert mine["message.max.bytes"][2][0] == "DYNAMIC_BROKER_CONFIG:message.max.bytes=2000000"
    everything = described(configs(b, "--describe", "--all", "--entity-type", "brokers",
                                   "--entity-name", me).stdout,
                           f"All configs for broker {me} are:")
    assert everything["log.retention.ms"][2][0] == "DYNAMIC_DEFAULT_BROKER_CONFIG:log.retention.ms=7200000"
    assert everything["node.id"][0] == me

    # A topic without override follows the new cluster default.
    name = unique_topic("jdef")
    kafka_tool(TOPICS, "--bootstrap-server", b.bootstrap, "--create", "--topic", name)
    topic = described(configs(b, "--describe", "--all", "--entity-type", "topics",
                              "--entity-name", name).stdout,
                      f"All configs for topic {name} are:")
    assert topic["retention.ms"][0] == "7200000"

    # Read-only keys are refused as Kafka refuses them.
    proc = configs(b, "--alter", "--entity-type", "brokers", "--entity-name", me,
                   "--add-config", "node.id=9", check=False)
    assert proc.returncode != 0
    assert "Cannot update these configs dynamically: Set(node.id)" in proc.stdout + proc.stderr

    out = configs(b, "--alter", "--entity-type", "brokers", "--entity-default",
                  "--delete-config", "log.retention.ms").stdout
    assert "Completed updating default config for brokers in the cluster." in out
    default = described(configs(b, "--describe", "--entity-type", "brokers",
                                "--entity-default").stdout,
                        "Default configs for brokers in the cluster are:")
    assert "log.retention.ms" not in default and default["log.roll.ms"][0] == "3600000"
