//! Every topic config Kafka 4 accepts: type, validation, default, the broker key that
//! provides the default, and what the key does in Riffle.

use std::collections::BTreeMap;

use super::broker::BrokerConfigs;
use super::value::{check_value, normalise, Check, Kind};

/// One topic config key.
pub struct TopicKey {
    /// Kafka name.
    pub name: &'static str,
    /// Value type.
    pub kind: Kind,
    /// Accepted values.
    pub check: Check,
    /// Broker key whose value is this key's default, if any.
    pub synonym: Option<&'static str>,
    /// Default when no broker key provides one.
    pub default: &'static str,
    /// One-line description.
    pub doc: &'static str,
    /// Whether Riffle acts on the key (the README's config table says how, or why not).
    pub honoured: bool,
}

macro_rules! topic {
    ($name:literal, $kind:ident, $check:expr, $synonym:expr, $default:expr, $honoured:literal, $doc:literal) => {
        TopicKey {
            name: $name,
            kind: Kind::$kind,
            check: $check,
            synonym: $synonym,
            default: $default,
            doc: $doc,
            honoured: $honoured,
        }
    };
}

const LONG_MAX: &str = "9223372036854775807";

/// The topic configs of Kafka 4, in name order.
pub static TOPIC_KEYS: &[TopicKey] = &[
    topic!(
        "cleanup.policy",
        List,
        Check::ListOf(&["compact", "delete"]),
        Some("log.cleanup.policy"),
        "delete",
        true,
        "delete: retention removes old segments; compact: keep the latest record per key"
    ),
    topic!(
        "compression.gzip.level",
        Int,
        Check::BetweenOr(1, 9, -1),
        Some("compression.gzip.level"),
        "-1",
        true,
        "gzip level when compression.type is gzip (-1: the codec's default)"
    ),
    topic!(
        "compression.lz4.level",
        Int,
        Check::Between(1, 17),
        Some("compression.lz4.level"),
        "9",
        true,
        "lz4 level when compression.type is lz4"
    ),
    topic!(
        "compression.type",
        String,
        Check::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        Some("compression.type"),
        "producer",
        true,
        "Codec of stored batches; producer keeps what the producer sent, others recompress"
    ),
    topic!(
        "compression.zstd.level",
        Int,
        Check::Between(-131072, 22),
        Some("compression.zstd.level"),
        "3",
        true,
        "zstd level when compression.type is zstd"
    ),
    topic!(
        "delete.retention.ms",
        Long,
        Check::AtLeast(0),
        Some("log.cleaner.delete.retention.ms"),
        "86400000",
        false,
        "How long compaction keeps tombstones"
    ),
    topic!(
        "file.delete.delay.ms",
        Long,
        Check::AtLeast(0),
        Some("log.segment.delete.delay.ms"),
        "60000",
        false,
        "Delay before a deleted segment's files are removed"
    ),
    topic!(
        "flush.messages",
        Long,
        Check::AtLeast(1),
        Some("log.flush.interval.messages"),
        LONG_MAX,
        true,
        "Sync the log to disk once this many records are unsynced"
    ),
    topic!(
        "flush.ms",
        Long,
        Check::AtLeast(0),
        Some("log.flush.interval.ms"),
        LONG_MAX,
        true,
        "Sync the log to disk when the last sync is older than this"
    ),
    topic!(
        "follower.replication.throttled.replicas",
        List,
        Check::ThrottledReplicas,
        None,
        "",
        false,
        "Replicas (partition:broker or *) whose follower fetches are throttled"
    ),
    topic!(
        "index.interval.bytes",
        Int,
        Check::AtLeast(0),
        Some("log.index.interval.bytes"),
        "4096",
        false,
        "Bytes between offset index entries"
    ),
    topic!(
        "leader.replication.throttled.replicas",
        List,
        Check::ThrottledReplicas,
        None,
        "",
        false,
        "Replicas (partition:broker or *) whose leader-side replication is throttled"
    ),
    topic!(
        "local.retention.bytes",
        Long,
        Check::AtLeast(-2),
        Some("log.local.retention.bytes"),
        "-2",
        false,
        "Local size limit of tiered-storage topics (-2: retention.bytes)"
    ),
    topic!(
        "local.retention.ms",
        Long,
        Check::AtLeast(-2),
        Some("log.local.retention.ms"),
        "-2",
        false,
        "Local age limit of tiered-storage topics (-2: retention.ms)"
    ),
    topic!(
        "max.compaction.lag.ms",
        Long,
        Check::AtLeast(1),
        Some("log.cleaner.max.compaction.lag.ms"),
        LONG_MAX,
        false,
        "Longest a record may stay uncompacted"
    ),
    topic!(
        "max.message.bytes",
        Int,
        Check::AtLeast(0),
        Some("message.max.bytes"),
        "1048588",
        true,
        "Largest record batch accepted"
    ),
    topic!(
        "message.timestamp.after.max.ms",
        Long,
        Check::AtLeast(0),
        Some("log.message.timestamp.after.max.ms"),
        "3600000",
        true,
        "How far in the future a CreateTime timestamp may be"
    ),
    topic!(
        "message.timestamp.before.max.ms",
        Long,
        Check::AtLeast(0),
        Some("log.message.timestamp.before.max.ms"),
        LONG_MAX,
        true,
        "How far in the past a CreateTime timestamp may be"
    ),
    topic!(
        "message.timestamp.type",
        String,
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
        Some("log.message.timestamp.type"),
        "CreateTime",
        true,
        "CreateTime keeps producer timestamps; LogAppendTime stamps broker time"
    ),
    topic!(
        "min.cleanable.dirty.ratio",
        Double,
        Check::Ratio(0.0, 1.0),
        Some("log.cleaner.min.cleanable.ratio"),
        "0.5",
        false,
        "Share of uncompacted log that triggers compaction"
    ),
    topic!(
        "min.compaction.lag.ms",
        Long,
        Check::AtLeast(0),
        Some("log.cleaner.min.compaction.lag.ms"),
        "0",
        false,
        "Shortest a record stays uncompacted"
    ),
    topic!(
        "min.insync.replicas",
        Int,
        Check::AtLeast(1),
        Some("min.insync.replicas"),
        "1",
        true,
        "In-sync replicas needed before acks=all succeeds"
    ),
    topic!(
        "preallocate",
        Boolean,
        Check::Any,
        Some("log.preallocate"),
        "false",
        false,
        "Preallocate segment files"
    ),
    topic!(
        "remote.log.copy.disable",
        Boolean,
        Check::Any,
        None,
        "false",
        false,
        "Stop copying segments to tiered storage"
    ),
    topic!(
        "remote.log.delete.on.disable",
        Boolean,
        Check::Any,
        None,
        "false",
        false,
        "Delete tiered data when tiered storage is disabled"
    ),
    topic!(
        "remote.storage.enable",
        Boolean,
        Check::Any,
        None,
        "false",
        false,
        "Keep old segments in tiered storage"
    ),
    topic!(
        "retention.bytes",
        Long,
        Check::Any,
        Some("log.retention.bytes"),
        "-1",
        true,
        "Largest partition size before old segments are deleted (-1: unlimited)"
    ),
    topic!(
        "retention.ms",
        Long,
        Check::AtLeast(-1),
        Some("log.retention.ms"),
        "604800000",
        true,
        "Age after which segments are deleted (-1: forever)"
    ),
    topic!(
        "segment.bytes",
        Int,
        Check::AtLeast(14),
        Some("log.segment.bytes"),
        "1073741824",
        true,
        "Segment size: retention deletes whole segments"
    ),
    topic!(
        "segment.index.bytes",
        Int,
        Check::AtLeast(4),
        Some("log.index.size.max.bytes"),
        "10485760",
        false,
        "Size of a segment's offset index"
    ),
    topic!(
        "segment.jitter.ms",
        Long,
        Check::AtLeast(0),
        Some("log.roll.jitter.ms"),
        "0",
        true,
        "Random amount up to this subtracted from segment.ms per segment"
    ),
    topic!(
        "segment.ms",
        Long,
        Check::AtLeast(1),
        Some("log.roll.ms"),
        "604800000",
        true,
        "Age after which a new segment is started"
    ),
    topic!(
        "unclean.leader.election.enable",
        Boolean,
        Check::Any,
        Some("unclean.leader.election.enable"),
        "false",
        true,
        "Elect an out-of-sync replica when no eligible one is left (may lose acknowledged records)"
    ),
];

/// Keys Kafka 4 removed; it refuses them like any unknown key.
pub const REMOVED_IN_KAFKA_4: &[&str] = &[
    "message.format.version",
    "message.timestamp.difference.max.ms",
    "message.downconversion.enable",
];

/// Looks up a topic key.
pub fn topic_key(name: &str) -> Option<&'static TopicKey> {
    TOPIC_KEYS.iter().find(|k| k.name == name)
}

/// Checks one key/value pair; the error is Kafka's message.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let key = topic_key(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    check_value(name, key.kind, key.check, value)?;
    if name == "remote.storage.enable" && value.trim().eq_ignore_ascii_case("true") {
        return Err("Tiered Storage functionality is disabled in the broker. \
                    Topic cannot be configured with remote log storage."
            .into());
    }
    Ok(())
}

/// Checks a whole override set, including the rules that tie keys together.
pub fn validate_set(configs: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in configs {
        validate(k, v)?;
    }
    let lag = |k: &str, default: i64| {
        configs
            .get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(default)
    };
    let (min_lag, max_lag) = (
        lag("min.compaction.lag.ms", 0),
        lag("max.compaction.lag.ms", i64::MAX),
    );
    if min_lag > max_lag {
        return Err(format!(
            "conflict topic config setting min.compaction.lag.ms ({min_lag}) > \
             max.compaction.lag.ms ({max_lag})"
        ));
    }
    Ok(())
}

/// Normalises a valid override the way it is stored and described.
pub fn normalised(name: &str, value: &str) -> String {
    topic_key(name).map_or_else(|| value.to_string(), |k| normalise(k.kind, value))
}

/// Effective default of a topic key on this broker, with the broker layer that sets it.
pub fn default_value(key: &TopicKey, broker: &BrokerConfigs) -> (String, Option<super::Source>) {
    match key.synonym.and_then(|s| broker.value(s)) {
        Some((v, source)) => (v, Some(source)),
        None => (key.default.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_valid_default_and_names_are_sorted_and_unique() {
        for w in TOPIC_KEYS.windows(2) {
            assert!(w[0].name < w[1].name, "{} / {}", w[0].name, w[1].name);
        }
        let broker = BrokerConfigs::default();
        for k in TOPIC_KEYS {
            let (v, _) = default_value(k, &broker);
            assert_eq!(validate(k.name, &v), Ok(()), "{}", k.name);
            if let Some(s) = k.synonym {
                assert!(super::super::broker::broker_key(s).is_some(), "{s}");
            }
        }
    }

    #[test]
    fn kafka_messages_for_bad_values_and_unknown_or_removed_keys() {
        assert_eq!(
            validate("no.such.key", "1").unwrap_err(),
            "Unknown topic config name: no.such.key"
        );
        for k in REMOVED_IN_KAFKA_4 {
            assert!(validate(k, "3.0").is_err());
        }
        assert_eq!(
            validate("compression.type", "brotli").unwrap_err(),
            "Invalid value brotli for configuration compression.type: String must be one of: \
             uncompressed, zstd, lz4, snappy, gzip, producer"
        );
        assert!(validate("compression.type", "lz4").is_ok());
        assert!(validate("delete.retention.ms", "900").is_ok());
        assert!(validate("remote.storage.enable", "true").is_err());
        assert!(validate("remote.storage.enable", "false").is_ok());
        let lags: BTreeMap<String, String> = [
            ("min.compaction.lag.ms".to_string(), "10".to_string()),
            ("max.compaction.lag.ms".to_string(), "5".to_string()),
        ]
        .into();
        assert!(validate_set(&lags)
            .unwrap_err()
            .starts_with("conflict topic config"));
    }
}
