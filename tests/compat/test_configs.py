"""Topic and broker configs with confluent-kafka's and kafka-python's admin clients.

Every Kafka 4 topic config key: a valid value is accepted and described back, an
invalid one is refused with INVALID_CONFIG and Kafka's message. compression.type
recompresses produced batches. Dynamic broker configs (cluster-wide default and per
broker) take effect without a restart and survive one; so do group configs.
"""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic, ResourceType,
)
from kafka import errors as Errors
from kafka.admin import ConfigResource as KpResource, ConfigResourceType, NewTopic as KpNewTopic

import kafka_wire as kw
import test_confluent_kafka as ck
import test_kafka_python as kp
from helpers import kp_consume_all, sample_records, unique_topic, wait_until
from test_kcat import kcat

OP_TIMEOUT = ck.OP_TIMEOUT

# key -> (valid value, value described back, invalid value, part of Kafka's message).
TOPIC_CONFIGS = {
    "cleanup.policy": ("compact, delete, compact", "compact,delete", "shred", "String must be one of"),
    "compression.gzip.level": ("5", "5", "10", "Value must be between 1 and 9 or equal to -1"),
    "compression.lz4.level": ("12", "12", "0", "Value must be at least 1"),
    "compression.type": ("lz4", "lz4", "brotli", "String must be one of"),
    "compression.zstd.level": ("10", "10", "23", "Value must be no more than 22"),
    "delete.retention.ms": ("900", "900", "-1", "Value must be at least 0"),
    "file.delete.delay.ms": ("1000", "1000", "-1", "Value must be at least 0"),
    "flush.messages": ("1", "1", "0", "Value must be at least 1"),
    "flush.ms": ("1000", "1000", "-1", "Value must be at least 0"),
    "follower.replication.throttled.replicas": ("0:1,1:1", "0:1,1:1", "0-1", "[partitionId]:[brokerId]"),
    "index.interval.bytes": ("8192", "8192", "-1", "Value must be at least 0"),
    "leader.replication.throttled.replicas": ("*", "*", "all", "[partitionId]:[brokerId]"),
    "local.retention.bytes": ("-2", "-2", "-3", "Value must be at least -2"),
    "local.retention.ms": ("-2", "-2", "-3", "Value must be at least -2"),
    "max.compaction.lag.ms": ("60000", "60000", "0", "Value must be at least 1"),
    "max.message.bytes": ("2000000", "2000000", "-1", "Value must be at least 0"),
    "message.timestamp.after.max.ms": ("1000", "1000", "-1", "Value must be at least 0"),
    "message.timestamp.before.max.ms": ("1000", "1000", "-1", "Value must be at least 0"),
    "message.timestamp.type": ("LogAppendTime", "LogAppendTime", "Wallclock", "String must be one of"),
    "min.cleanable.dirty.ratio": ("0.2", "0.2", "1.5", "Value must be no more than 1"),
    "min.compaction.lag.ms": ("100", "100", "-1", "Value must be at least 0"),
    "min.insync.replicas": ("1", "1", "0", "Value must be at least 1"),
    "preallocate": ("TRUE", "true", "maybe", "Expected value to be either true or false"),
    "remote.log.copy.disable": ("true", "true", "x", "Expected value to be either true or false"),
    "remote.log.delete.on.disable": ("true", "true", "x", "Expected value to be either true or false"),
    "remote.storage.enable": ("false", "false", "true", "Tiered Storage functionality is disabled"),
    "retention.bytes": ("1048576", "1048576", "ten", "Not a number of type LONG"),
    "retention.ms": ("3600000", "3600000", "-2", "Value must be at least -1"),
    "segment.bytes": ("1048576", "1048576", "13", "Value must be at least 14"),
    "segment.index.bytes": ("4096", "4096", "3", "Value must be at least 4"),
    "segment.jitter.ms": ("100", "100", "-1", "Value must be at least 0"),
    "segment.ms": ("60000", "60000", "0", "Value must be at least 1"),
    "unclean.leader.election.enable": ("true", "true", "yes", "Expected value to be either true or false"),
}

# Keys Kafka 4 removed: refused like any unknown key.
REMOVED_KEYS = ["message.format.version", "message.timestamp.difference.max.ms",
                "message.downconversion.enable"]


def _ck_error(fut):
    with pytest.raises(KafkaException) as exc:
        fut.result(timeout=OP_TIMEOUT)
    err = exc.value.args[0]
    return err.code(), err.str()


def _ck_describe(adm, rtype, name):
    res = ConfigResource(rtype, name)
    return adm.describe_configs([res], request_timeout=OP_TIMEOUT)[res].result(timeout=OP_TIMEOUT)


def _cluster_default(broker, *ops):
    """IncrementalAlterConfigs on the cluster-wide default BROKER resource ("")."""
    with kw.Conn(broker.port) as conn:
        return kw.incremental_alter_configs_v0(conn, kw.RESOURCE_BROKER, "", list(ops))


def _ck_incremental(adm, rtype, name, *entries):
    res = ConfigResource(rtype, name, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=op) for k, v, op in entries])
    return adm.incremental_alter_configs([res], request_timeout=OP_TIMEOUT)[res]


def test_every_topic_config_with_confluent_kafka(broker):
    adm = ck.admin(broker)
    name = unique_topic("cfgall")
    valid = {k: v[0] for k, v in TOPIC_CONFIGS.items()}
    fs = adm.create_topics([NewTopic(name, 1, 1, config=valid)],
                           operation_timeout=OP_TIMEOUT, request_timeout=OP_TIMEOUT)
    fs[name].result(timeout=OP_TIMEOUT)
    desc = _ck_describe(adm, ResourceType.TOPIC, name)
    for key, (_, described, _, _) in TOPIC_CONFIGS.items():
        assert desc[key].value == described, (key, desc[key])
        assert desc[key].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, (key, desc[key])
        assert not desc[key].is_read_only

    for key, (_, _, bad, message) in TOPIC_CONFIGS.items():
        other = unique_topic("cfgbad")
        fs = adm.create_topics([NewTopic(other, 1, 1, config={key: bad})], validate_only=True,
                               operation_timeout=OP_TIMEOUT, request_timeout=OP_TIMEOUT)
        code, text = _ck_error(fs[other])
        assert code == KafkaError.INVALID_CONFIG, (key, code, text)
        assert message in text, (key, text)
        if not message.startswith("Tiered"):
            # The value is the offending element of a list (Kafka's wording).
            assert text.startswith("Invalid value ") and f" for configuration {key}: " in text, text
        # The same value through IncrementalAlterConfigs leaves the topic unchanged.
        code, text = _ck_error(_ck_incremental(adm, ResourceType.TOPIC, name,
                                               (key, bad, AlterConfigOpType.SET)))
        assert code == KafkaError.INVALID_CONFIG and message in text, (key, text)
    after = _ck_describe(adm, ResourceType.TOPIC, name)
    assert {k: e.value for k, e in after.items()} == {k: e.value for k, e in desc.items()}

    for key in REMOVED_KEYS + ["no.such.config"]:
        other = unique_topic("cfgold")
        fs = adm.create_topics([NewTopic(other, 1, 1, config={key: "1"})],
                               operation_timeout=OP_TIMEOUT, request_timeout=OP_TIMEOUT)
        code, text = _ck_error(fs[other])
        assert code == KafkaError.INVALID_CONFIG, (key, text)
        assert f"Unknown topic config name: {key}" in text
        assert other not in adm.list_topics(timeout=10).topics

    # APPEND/SUBTRACT work on list keys only.
    _ck_incremental(adm, ResourceType.TOPIC, name,
                    ("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT)).result(timeout=OP_TIMEOUT)
    assert _ck_describe(adm, ResourceType.TOPIC, name)["cleanup.policy"].value == "compact"
    _ck_incremental(adm, ResourceType.TOPIC, name,
                    ("cleanup.policy", "delete", AlterConfigOpType.APPEND)).result(timeout=OP_TIMEOUT)
    assert _ck_describe(adm, ResourceType.TOPIC, name)["cleanup.policy"].value == "compact,delete"
    code, text = _ck_error(_ck_incremental(adm, ResourceType.TOPIC, name,
                                           ("retention.ms", "1", AlterConfigOpType.APPEND)))
    assert code == KafkaError.INVALID_CONFIG, text
    assert text == "Can't APPEND to key retention.ms because its type is not LIST.", text
    # Compaction lags are checked against each other.
    code, text = _ck_error(_ck_incremental(adm, ResourceType.TOPIC, name,
                                           ("min.compaction.lag.ms", "5000", AlterConfigOpType.SET),
                                           ("max.compaction.lag.ms", "1000", AlterConfigOpType.SET)))
    assert code == KafkaError.INVALID_CONFIG and "conflict topic config setting" in text, text

    # DELETE falls back to the broker default, described with its synonyms.
    _ck_incremental(adm, ResourceType.TOPIC, name,
                    ("retention.ms", None, AlterConfigOpType.DELETE)).result(timeout=OP_TIMEOUT)
    res = ConfigResource(ResourceType.TOPIC, name)
    entry = adm.describe_configs([res], request_timeout=OP_TIMEOUT)[res] \
        .result(timeout=OP_TIMEOUT)["retention.ms"]
    assert entry.value == "604800000" and entry.is_default
    assert [s.name for s in entry.synonyms.values()] == ["log.retention.ms"]
    adm.delete_topics([name], operation_timeout=OP_TIMEOUT)


def test_every_topic_config_with_kafka_python(broker):
    adm = kp.admin(broker)
    name = unique_topic("kpcfg")
    try:
        adm.create_topics([KpNewTopic(name, 1, 1)])
        wait_until(lambda: name in adm.list_topics(), timeout=20, message="topic creation")
        for key, (good, described, bad, message) in TOPIC_CONFIGS.items():
            res = adm.alter_configs([KpResource(ConfigResourceType.TOPIC, name, configs={key: good})])
            assert res["topic"][name] == "OK", (key, res)
            desc = adm.describe_configs([KpResource(ConfigResourceType.TOPIC, name)],
                                        config_filter="all")
            assert desc["topic"][name][key]["value"] == described, (key, desc["topic"][name][key])
            with pytest.raises(Errors.InvalidConfigurationError) as exc:
                adm.create_topics([KpNewTopic(unique_topic("kpbad"), 1, 1, topic_configs={key: bad})],
                                  validate_only=True)
            assert message in str(exc.value), (key, str(exc.value))
        for key in REMOVED_KEYS:
            with pytest.raises(Errors.InvalidConfigurationError):
                adm.create_topics([KpNewTopic(unique_topic("kpold"), 1, 1, topic_configs={key: "3.0"})])
        adm.delete_topics([name])
    finally:
        adm.close()


def _stored_codecs(port, topic):
    """Compression codec of every stored batch of partition 0, read with a raw Fetch."""
    with kw.Conn(port) as conn:
        data = kw.fetch_v4(conn, topic, 0, 0, 100, max_bytes=8 << 20)[topic][0]["records"]
    codecs, pos = [], 0
    while pos + 61 <= len(data):
        length = struct.unpack_from(">i", data, pos + 8)[0]
        attributes = struct.unpack_from(">h", data, pos + 21)[0]
        codecs.append(attributes & 7)
        pos += 12 + length
    return codecs


CODEC_NUMBER = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.mark.parametrize("topic_codec,producer_codec",
                         [("lz4", "gzip"), ("zstd", "none"), ("gzip", "snappy"), ("uncompressed", "lz4")])
def test_topic_compression_recompresses_what_every_client_reads(broker, topic_codec, producer_codec):
    name = ck.create_topic(broker, unique_topic("recomp"), config={"compression.type": topic_codec})
    records = sample_records(300)
    prod = ck.producer(broker, **{"compression.type": producer_codec, "linger.ms": 20,
                                  "enable.idempotence": True})
    ck.produce_all(prod, name, records)
    kp_prod = kp.producer(broker, compression_type=None if producer_codec == "none" else producer_codec)
    kp.send_all(kp_prod, name, records)
    kp_prod.close()

    codecs = _stored_codecs(broker.port, name)
    want = CODEC_NUMBER["none" if topic_codec == "uncompressed" else topic_codec]
    assert codecs and set(codecs) == {want}, codecs

    values = [r["value"] for r in records] * 2
    assert [m.value() for m in ck.consume_all(broker, name, len(values))] == values
    assert [m.value for m in kp_consume_all(broker.bootstrap, name, len(values))] == values
    out = kcat(broker, "-C", "-t", name, "-o", "beginning", "-e", "-q", "-f", "%s\n").stdout
    assert out.decode().splitlines() == [(v or b"").decode() for v in values]


def _log_start(broker, topic):
    c = ck.consumer(broker)
    try:
        return c.get_watermark_offsets(ck.TopicPartition(topic, 0), timeout=5)[0]
    finally:
        c.close()


def test_dynamic_broker_configs_take_effect_and_survive_a_restart(make_broker):
    b = make_broker()
    adm = ck.admin(b)
    name = ck.create_topic(b, unique_topic("dyn"))
    me = str(b.node_id)

    # Cluster-wide default: a topic without override follows it at once.
    assert _cluster_default(b, ("log.retention.ms", kw.OP_SET, "123456"),
                            ("log.retention.check.interval.ms", kw.OP_SET, "200")) == (0, None)
    entry = _ck_describe(adm, ResourceType.TOPIC, name)["retention.ms"]
    assert entry.value == "123456"
    assert entry.source == ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value
    with kw.Conn(b.port) as conn:
        cluster = kw.describe_configs_v1(conn, kw.RESOURCE_BROKER, "")
    assert cluster == {"log.retention.ms": ("123456", False, 3),
                       "log.retention.check.interval.ms": ("200", False, 3)}

    # Per broker wins over the cluster default; message.max.bytes applies to produce at once.
    _ck_incremental(adm, ResourceType.BROKER, me,
                    ("message.max.bytes", "2000", AlterConfigOpType.SET)).result(timeout=OP_TIMEOUT)
    mine = _ck_describe(adm, ResourceType.BROKER, me)
    assert mine["message.max.bytes"].value == "2000"
    assert mine["message.max.bytes"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert mine["node.id"].is_read_only and not mine["message.max.bytes"].is_read_only
    prod = ck.producer(b, **{"compression.type": "none", "message.timeout.ms": 10000})
    d = ck.Deliveries()
    prod.produce(name, value=b"x" * 5000, on_delivery=d)
    prod.flush(15)
    assert [e.code() for e, _ in d.errors] == [KafkaError.MSG_SIZE_TOO_LARGE], d.errors

    # Retention follows dynamic defaults: segments older than 300 ms go.
    assert _cluster_default(b, ("log.retention.ms", kw.OP_SET, "300"),
                            ("log.roll.ms", kw.OP_SET, "100")) == (0, None)
    prod = ck.producer(b)
    ck.produce_all(prod, name, sample_records(5))
    wait_until(lambda: ck.produce_all(prod, name, sample_records(1)) is not None
               and _log_start(b, name) > 0, timeout=20, interval=0.5,
               message="retention from a dynamic default")

    # min.insync.replicas raised cluster-wide: acks=all on this RF1 topic is refused at once.
    def produce_code():
        with kw.Conn(b.port) as conn:
            return kw.produce_v3(conn, name, 0, kw.record_batch([(None, b"v")]))[name][0]["error_code"]

    assert _cluster_default(b, ("min.insync.replicas", kw.OP_SET, "2")) == (0, None)
    assert produce_code() == kw.ERR_NOT_ENOUGH_REPLICAS
    assert _cluster_default(b, ("min.insync.replicas", kw.OP_DELETE, None)) == (0, None)
    assert produce_code() == 0

    # Auto-creation switched off cluster-wide.
    assert _cluster_default(b, ("auto.create.topics.enable", kw.OP_SET, "false")) == (0, None)
    ghost = unique_topic("ghost")
    with kw.Conn(b.port) as conn:
        kw.metadata_v4(conn, [ghost], allow_auto_topic_creation=True)
    assert ghost not in adm.list_topics(timeout=10).topics

    # Refusals (INVALID_REQUEST with Kafka's texts): read-only keys, cluster-wide keys per
    # broker, per-broker min.insync.replicas (eligible leaders need one value), bad values.
    code, text = _ck_error(_ck_incremental(adm, ResourceType.BROKER, me,
                                           ("node.id", "7", AlterConfigOpType.SET)))
    assert code == KafkaError.INVALID_REQUEST
    assert text == "Cannot update these configs dynamically: Set(node.id)", text
    code, text = _ck_error(_ck_incremental(adm, ResourceType.BROKER, me,
                                           ("auto.create.topics.enable", "true", AlterConfigOpType.SET)))
    assert code == KafkaError.INVALID_REQUEST and "only at default cluster level" in text
    code, text = _ck_error(_ck_incremental(adm, ResourceType.BROKER, me,
                                           ("min.insync.replicas", "2", AlterConfigOpType.SET)))
    assert code == KafkaError.INVALID_REQUEST and "while ELR is enabled" in text
    code, text = _cluster_default(b, ("log.retention.ms", kw.OP_SET, "-5"))
    assert code == KafkaError.INVALID_REQUEST and "Value must be at least -1" in text
    code, text = _ck_error(_ck_incremental(adm, ResourceType.BROKER, me,
                                           ("log.retention.ms", "1", AlterConfigOpType.APPEND)))
    assert code == KafkaError.INVALID_CONFIG
    assert text == "Config value append is not allowed for config key: log.retention.ms", text

    b.restart()
    adm = ck.admin(b)
    mine = _ck_describe(adm, ResourceType.BROKER, me)
    assert mine["message.max.bytes"].value == "2000"
    assert mine["auto.create.topics.enable"].value == "false"
    assert mine["log.retention.ms"].source == ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value

    # kafka-python sees the same, and DELETE restores the static value.
    kadm = kp.admin(b)
    try:
        desc = kadm.describe_configs([KpResource(ConfigResourceType.BROKER, me)])
        assert desc["broker"][me]["message.max.bytes"]["value"] == "2000"
    finally:
        kadm.close()
    _ck_incremental(adm, ResourceType.BROKER, me,
                    ("message.max.bytes", None, AlterConfigOpType.DELETE)).result(timeout=OP_TIMEOUT)
    assert _ck_describe(adm, ResourceType.BROKER, me)["message.max.bytes"].value == "1048588"
    d = ck.Deliveries()
    prod = ck.producer(b, **{"compression.type": "none"})
    prod.produce(name, value=b"x" * 5000, on_delivery=d)
    prod.flush(15)
    assert not d.errors and len(d.ok) == 1


def _wal_syncs(broker):
    status, text = broker.http_get("/metrics")
    assert status == 200
    (line,) = [x for x in text.splitlines() if x.startswith("riffle_wal_syncs_total ")]
    return float(line.split()[1])


def test_flush_messages_syncs_the_log_beyond_the_fsync_policy(make_broker):
    """With fsync_policy=never nothing is synced, except for a topic whose
    flush.messages=1 asks for a sync with every record (and flush.messages=10 for
    every tenth)."""
    b = make_broker("--fsync-policy", "never")
    plain = ck.create_topic(b, unique_topic("noflush"))
    every = ck.create_topic(b, unique_topic("flush1"), config={"flush.messages": "1"})
    tenth = ck.create_topic(b, unique_topic("flush10"), config={"flush.messages": "10"})
    prod = ck.producer(b, **{"acks": "1", "linger.ms": 0})

    def produce_one_by_one(topic, n):
        before = _wal_syncs(b)
        for r in sample_records(n):
            ck.produce_all(prod, topic, [r])
        return _wal_syncs(b) - before

    # Slack of 2 for metadata writes (synced through the same WAL) in the window.
    assert produce_one_by_one(plain, 20) <= 2
    assert produce_one_by_one(every, 20) >= 20
    assert 2 <= produce_one_by_one(tenth, 20) <= 4


# Group configs (the GROUP resource, Kafka 4.1): key -> default.
GROUP_DEFAULTS = {
    "consumer.session.timeout.ms": "45000", "consumer.heartbeat.interval.ms": "5000",
    "share.session.timeout.ms": "45000", "share.heartbeat.interval.ms": "5000",
    "share.record.lock.duration.ms": "30000", "share.auto.offset.reset": "latest",
    "share.isolation.level": "read_uncommitted", "streams.session.timeout.ms": "45000",
    "streams.heartbeat.interval.ms": "5000", "streams.num.standby.replicas": "0",
}


def test_group_configs_are_set_described_validated_and_survive_a_restart(make_broker):
    b = make_broker()
    adm = ck.admin(b)
    group = unique_topic("gcfg")

    # Any group id, existing or not, describes Kafka's defaults.
    desc = _ck_describe(adm, ResourceType.GROUP, group)
    assert {k: e.value for k, e in desc.items()} == GROUP_DEFAULTS
    assert {e.source for e in desc.values()} == {ConfigSource.DEFAULT_CONFIG.value}

    _ck_incremental(adm, ResourceType.GROUP, group,
                    ("consumer.session.timeout.ms", "50000", AlterConfigOpType.SET),
                    ("share.auto.offset.reset", "by_duration:PT1H", AlterConfigOpType.SET),
                    ).result(timeout=OP_TIMEOUT)
    entry = _ck_describe(adm, ResourceType.GROUP, group)["consumer.session.timeout.ms"]
    assert (entry.value, entry.source) == ("50000", ConfigSource.GROUP_CONFIG.value)
    assert [(s.name, s.value) for s in entry.synonyms.values()] == \
        [("consumer.session.timeout.ms", "50000")]
    # Other groups are untouched.
    other = _ck_describe(adm, ResourceType.GROUP, group + "-other")
    assert other["consumer.session.timeout.ms"].value == "45000"

    # Kafka's refusals: bounds, types, unknown keys, list operations, the empty name.
    for ops, message in [
        ([("consumer.session.timeout.ms", "1000", AlterConfigOpType.SET)],
         "consumer.session.timeout.ms must be greater than or equal to "
         "group.consumer.min.session.timeout.ms"),
        ([("streams.num.standby.replicas", "3", AlterConfigOpType.SET)],
         "streams.num.standby.replicas must be less than or equal to "
         "group.streams.max.standby.replicas"),
        ([("share.isolation.level", "dirty", AlterConfigOpType.SET)],
         "Invalid value dirty for configuration share.isolation.level: "
         "String must be one of: read_committed, read_uncommitted"),
        ([("session.timeout.ms", "50000", AlterConfigOpType.SET)],
         "Unknown group config name: session.timeout.ms"),
        ([("consumer.heartbeat.interval.ms", "6000", AlterConfigOpType.APPEND)],
         "Can't APPEND to key consumer.heartbeat.interval.ms because its type is not LIST."),
    ]:
        code, text = _ck_error(_ck_incremental(adm, ResourceType.GROUP, group, *ops))
        assert (code, text) == (KafkaError.INVALID_CONFIG, message)
    with kw.Conn(b.port) as conn:
        code, text = kw.incremental_alter_configs_v0(
            conn, kw.RESOURCE_GROUP, "", [("consumer.session.timeout.ms", kw.OP_SET, "50000")])
    assert (code, text) == (KafkaError.INVALID_REQUEST, "Group name must not be empty")
    # A refused change left the stored value alone.
    assert _ck_describe(adm, ResourceType.GROUP, group)["consumer.session.timeout.ms"].value == "50000"

    b.restart()
    adm = ck.admin(b)
    desc = _ck_describe(adm, ResourceType.GROUP, group)
    assert desc["consumer.session.timeout.ms"].value == "50000"
    assert desc["share.auto.offset.reset"].value == "by_duration:PT1H"
    _ck_incremental(adm, ResourceType.GROUP, group,
                    ("consumer.session.timeout.ms", None, AlterConfigOpType.DELETE),
                    ).result(timeout=OP_TIMEOUT)
    entry = _ck_describe(adm, ResourceType.GROUP, group)["consumer.session.timeout.ms"]
    assert (entry.value, entry.source) == ("45000", ConfigSource.DEFAULT_CONFIG.value)
