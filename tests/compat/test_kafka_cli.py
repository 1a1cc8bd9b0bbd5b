"""Apache Kafka's command-line tools (Kafka 4.1, their main classes run as the bin/*.sh
wrappers run them) against a single broker and a 3-broker cluster: kafka-topics,
kafka-console-producer/-consumer with keys and headers, kafka-consumer-groups (list,
describe, reset-offsets, delete), kafka-get-offsets, kafka-delete-records, the producer
and consumer perf tests and kafka-broker-api-versions. Their printed output is parsed
and checked, not only their exit codes.
"""

from __future__ import annotations

import datetime
import json
import re
import time

from confluent_kafka import Producer

from helpers import kafka_tool, unique_topic, wait_until

TOPICS = "org.apache.kafka.tools.TopicCommand"
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
GET_OFFSETS = "org.apache.kafka.tools.GetOffsetShell"
DELETE_RECORDS = "org.apache.kafka.tools.DeleteRecordsCommand"
PRODUCER_PERF = "org.apache.kafka.tools.ProducerPerformance"
CONSUMER_PERF = "org.apache.kafka.tools.ConsumerPerformance"
API_VERSIONS = "org.apache.kafka.tools.BrokerApiVersionsCommand"


def rf(target) -> int:
    return len(getattr(target, "ids", [None]))


def tool(main_class, target, *args, check=True, **kw):
    return kafka_tool(main_class, "--bootstrap-server", target.bootstrap, *args, check=check,
                      **kw)


def make_topic(target, partitions=1) -> str:
    name = unique_topic("cli")
    out = tool(TOPICS, target, "--create", "--topic", name, "--partitions", partitions,
               "--replication-factor", rf(target)).stdout
    assert f"Created topic {name}." in out, out
    return name


def produce(target, topic, values, partition=0):
    p = Producer({"bootstrap.servers": target.bootstrap, "acks": "all"})
    for v in values:
        p.produce(topic, v.encode(), partition=partition)
    assert p.flush(30) == 0


def describe_topic(target, topic) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(the topic line's fields, one dict per partition line) of kafka-topics --describe."""
    lines = [ln.strip() for ln in tool(TOPICS, target, "--describe", "--topic", topic)
             .stdout.splitlines() if ln.strip()]
    fields = lambda ln: dict(re.findall(r"(\w+): ?(\S*)", ln))  # noqa: E731
    head = fields(lines[0])
    return head, [fields(ln) for ln in lines[1:]]


def test_kafka_topics_create_describe_alter_delete(target):
    name = unique_topic("cli")
    out = tool(TOPICS, target, "--create", "--topic", name, "--partitions", 3,
               "--replication-factor", rf(target), "--config", "retention.ms=3600000",
               "--config", "cleanup.policy=delete").stdout
    assert f"Created topic {name}." in out, out
    assert name in tool(TOPICS, target, "--list").stdout.split()
    head, parts = describe_topic(target, name)
    assert head["Topic"] == name and head["PartitionCount"] == "3", head
    assert head["ReplicationFactor"] == str(rf(target)), head
    assert "retention.ms=3600000" in head["Configs"], head
    assert [p["Partition"] for p in parts] == ["0", "1", "2"], parts
    for p in parts:
        replicas, isr = p["Replicas"].split(","), p["Isr"].split(",")
        assert len(replicas) == rf(target) and p["Leader"] in isr and set(isr) <= set(replicas), p
    # Nothing under-replicated or unavailable.
    for flag in ("--under-replicated-partitions", "--unavailable-partitions"):
        assert tool(TOPICS, target, "--describe", "--topic", name, flag).stdout.strip() == ""
    # The same name again: refused as Kafka refuses it.
    again = tool(TOPICS, target, "--create", "--topic", name, "--partitions", 1, check=False)
    assert again.returncode != 0 and f"Topic '{name}' already exists." in again.stdout, again
    tool(TOPICS, target, "--alter", "--topic", name, "--partitions", 5)
    assert describe_topic(target, name)[0]["PartitionCount"] == "5"
    fewer = tool(TOPICS, target, "--alter", "--topic", name, "--partitions", 2, check=False)
    assert fewer.returncode != 0 and "which is higher than the requested 2" in fewer.stdout, fewer
    tool(TOPICS, target, "--delete", "--topic", name)
    wait_until(lambda: name not in tool(TOPICS, target, "--list").stdout.split(), timeout=30,
               message="the topic gone from the list")
    missing = tool(TOPICS, target, "--describe", "--topic", name, check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stdout + missing.stderr


def test_console_producer_and_consumer_carry_keys_and_headers(target):
    topic = make_topic(target)
    # headers TAB key TAB value (the reader's default separators)
    lines = [f"source:cli,n:{i}\tkey-{i}\tvalue {i}" for i in range(20)]
    tool(CONSOLE_PRODUCER, target, "--topic", topic,
         "--property", "parse.key=true", "--property", "parse.headers=true",
         "--producer-property", "acks=all", input="\n".join(lines) + "\n")
    out = tool(CONSOLE_CONSUMER, target, "--topic", topic, "--from-beginning",
               "--max-messages", 20, "--timeout-ms", 30000,
               "--property", "print.key=true", "--property", "print.headers=true",
               "--property", "print.offset=true", "--property", "print.partition=true",
               "--property", "key.separator=;").stdout
    got = [ln for ln in out.splitlines() if ln.startswith("Partition:")]
    assert len(got) == 20, out
    for i, ln in enumerate(got):
        # (key.separator separates every printed field)
        assert ln == f"Partition:0;Offset:{i};source:cli,n:{i};key-{i};value {i}", ln


def group_rows(target, group) -> list[dict[str, str]]:
    """kafka-consumer-groups --describe: one dict per partition row, by column header."""
    out = tool(GROUPS, target, "--describe", "--group", group).stdout
    rows = [ln.split() for ln in out.splitlines() if ln.strip()]
    header = next(r for r in rows if r[0] == "GROUP")
    return [dict(zip(header, r)) for r in rows if r[0] == group]


def test_kafka_consumer_groups_list_describe_reset_and_delete(target):
    topic, group = make_topic(target), unique_topic("g")
    produce(target, topic, [f"early-{i}" for i in range(15)])
    time.sleep(1.0)
    middle = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(1.0)
    produce(target, topic, [f"late-{i}" for i in range(15)])
    # A console consumer in the group reads everything and commits on exit.
    tool(CONSOLE_CONSUMER, target, "--topic", topic, "--group", group, "--from-beginning",
         "--max-messages", 30, "--timeout-ms", 30000)
    assert group in tool(GROUPS, target, "--list").stdout.split()
    [row] = group_rows(target, group)
    assert (row["TOPIC"], row["PARTITION"], row["CURRENT-OFFSET"], row["LOG-END-OFFSET"],
            row["LAG"]) == (topic, "0", "30", "30", "0"), row
    state = tool(GROUPS, target, "--describe", "--group", group, "--state").stdout
    assert "Empty" in state, state

    def reset(*how) -> str:
        out = tool(GROUPS, target, "--reset-offsets", "--group", group, "--topic", topic,
                   *how, "--execute").stdout
        row = next(ln.split() for ln in out.splitlines() if ln.startswith(group))
        return row[-1]  # NEW-OFFSET

    assert reset("--to-earliest") == "0"
    assert group_rows(target, group)[0]["LAG"] == "30"
    assert reset("--shift-by", 5) == "5"
    assert reset("--to-datetime", middle.strftime("%Y-%m-%dT%H:%M:%S.000")) == "15"
    assert group_rows(target, group)[0]["CURRENT-OFFSET"] == "15"
    # A dry run (the default) changes nothing.
    tool(GROUPS, target, "--reset-offsets", "--group", group, "--topic", topic, "--to-latest")
    assert group_rows(target, group)[0]["CURRENT-OFFSET"] == "15"
    out = tool(GROUPS, target, "--delete", "--group", group).stdout
    assert "successful" in out, out
    assert group not in tool(GROUPS, target, "--list").stdout.split()
    missing = tool(GROUPS, target, "--describe", "--group", group, check=False)
    assert "does not exist" in missing.stdout + missing.stderr, missing


def offsets(target, topic, time_spec) -> dict[int, int]:
    out = tool(GET_OFFSETS, target, "--topic", topic, "--time", time_spec).stdout
    return {int(p): int(o) for t, p, o in (ln.rsplit(":", 2) for ln in out.split()) if t == topic}


def test_kafka_get_offsets_and_kafka_delete_records(target, tmp_path):
    topic = make_topic(target, partitions=2)
    produce(target, topic, [f"a{i}" for i in range(30)], partition=0)
    produce(target, topic, [f"b{i}" for i in range(7)], partition=1)
    assert offsets(target, topic, "latest") == {0: 30, 1: 7}
    assert offsets(target, topic, "earliest") == {0: 0, 1: 0}
    plan = tmp_path / "delete.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": 0, "offset": 12}]}))
    out = tool(DELETE_RECORDS, target, "--offset-json-file", plan).stdout
    assert f"partition: {topic}-0\tlow_watermark: 12" in out, out
    assert offsets(target, topic, "earliest") == {0: 12, 1: 0}
    assert offsets(target, topic, -1) == {0: 30, 1: 7}
    # Past the end: Kafka's error for the partition.
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": 1, "offset": 99}]}))
    out = tool(DELETE_RECORDS, target, "--offset-json-file", plan, check=False)
    assert "OffsetOutOfRangeException" in out.stdout + out.stderr, out


def test_producer_and_consumer_perf_tests(target):
    topic = make_topic(target, partitions=2)
    out = kafka_tool(
        PRODUCER_PERF, "--topic", topic, "--num-records", 20000, "--record-size", 100,
        "--throughput", -1, "--producer-props", f"bootstrap.servers={target.bootstrap}",
        "acks=all").stdout
    m = re.search(r"^(\d+) records sent, [\d.]+ records/sec \([\d.]+ MB/sec\), "
                  r"[\d.]+ ms avg latency, [\d.]+ ms max latency, (\d+) ms 50th", out, re.M)
    assert m and m[1] == "20000", out
    print(out.strip().splitlines()[-1])
    out = tool(CONSUMER_PERF, target, "--topic", topic, "--messages", 20000,
               "--timeout", 30000).stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    header = [c.strip() for c in lines[0].split(",")]
    row = dict(zip(header, (c.strip() for c in lines[1].split(","))))
    assert int(row["data.consumed.in.nMsg"]) == 20000, out
    assert float(row["data.consumed.in.MB"]) >= 20000 * 100 / 2**20 * 0.99, out
    print(f"consumer perf: {row['MB.sec']} MB/s, {row['nMsg.sec']} records/s")


def test_kafka_broker_api_versions_lists_every_broker(target):
    out = tool(API_VERSIONS, target).stdout
    brokers = re.findall(r"^\S+:\d+ \(id: (\d+) rack: \S+ isFenced: \w+\) -> \($", out, re.M)
    assert len(brokers) == rf(target), out
    # Kafka's tool marks APIs the broker lacks as UNSUPPORTED; the client's core ones are there.
    for api in ("Produce", "Fetch", "ListOffsets", "Metadata", "OffsetCommit", "FindCoordinator",
                "JoinGroup", "ApiVersions", "CreateTopics", "InitProducerId"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(api + "("))
        assert "UNSUPPORTED" not in line and "usable:" in line, line
