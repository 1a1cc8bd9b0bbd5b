//! Topic-level configuration: the keys Riffle understands, their defaults and validation.

use std::collections::BTreeMap;

use crate::config::Config;

/// Kafka's config value types, as DescribeConfigs v3+ reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// true or false.
    Boolean = 1,
    /// Free text from a fixed set.
    String = 2,
    /// 32-bit integer.
    Int = 3,
    /// 64-bit integer.
    Long = 5,
    /// Comma-separated list.
    List = 7,
}

/// One topic config key.
pub struct ConfigDef {
    /// Kafka name of the key.
    pub name: &'static str,
    /// Value type.
    pub kind: ConfigType,
    /// Name of the broker setting that provides the default.
    pub broker_synonym: &'static str,
    /// One-line description.
    pub doc: &'static str,
    default: fn(&Config) -> String,
    validate: fn(&str) -> Result<(), String>,
}

impl ConfigDef {
    /// Default value under the given broker configuration.
    pub fn default_value(&self, broker: &Config) -> String {
        (self.default)(broker)
    }
}

fn long_at_least(min: i64) -> impl Fn(&str) -> Result<(), String> {
    move |v| match v.trim().parse::<i64>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(format!("must be an integer >= {min}")),
    }
}

fn v_retention(v: &str) -> Result<(), String> {
    long_at_least(-1)(v)
}
fn v_positive_long(v: &str) -> Result<(), String> {
    long_at_least(1)(v)
}
fn v_max_message(v: &str) -> Result<(), String> {
    match v.trim().parse::<i32>() {
        Ok(n) if n >= 0 => Ok(()),
        _ => Err("must be an integer between 0 and 2147483647".into()),
    }
}
fn v_segment_bytes(v: &str) -> Result<(), String> {
    match v.trim().parse::<i32>() {
        Ok(n) if n >= 14 => Ok(()),
        _ => Err("must be an integer between 14 and 2147483647".into()),
    }
}
fn v_min_isr(v: &str) -> Result<(), String> {
    match v.trim().parse::<i32>() {
        Ok(n) if n >= 1 => Ok(()),
        _ => Err("must be an integer >= 1".into()),
    }
}
fn v_timestamp_type(v: &str) -> Result<(), String> {
    match v {
        "CreateTime" | "LogAppendTime" => Ok(()),
        _ => Err("must be CreateTime or LogAppendTime".into()),
    }
}
fn v_cleanup_policy(v: &str) -> Result<(), String> {
    let ok = !v.trim().is_empty()
        && v.split(',')
            .all(|p| matches!(p.trim(), "delete" | "compact"));
    if ok {
        Ok(())
    } else {
        Err("must be a list of delete and compact".into())
    }
}
fn v_compression(v: &str) -> Result<(), String> {
    // Batches are stored as produced; recompressing on the broker is not supported.
    if v == "producer" {
        Ok(())
    } else {
        Err(
            "only 'producer' is supported (batches are stored as the producer compressed them)"
                .into(),
        )
    }
}
fn v_bool(v: &str) -> Result<(), String> {
    match v {
        "true" | "false" => Ok(()),
        _ => Err("must be true or false".into()),
    }
}
fn v_timestamp_diff(v: &str) -> Result<(), String> {
    long_at_least(0)(v)
}

/// Every topic config key Riffle accepts.
pub static DEFS: &[ConfigDef] = &[
    ConfigDef {
        name: "unclean.leader.election.enable",
        kind: ConfigType::Boolean,
        broker_synonym: "unclean.leader.election.enable",
        doc: "Elect an out-of-sync replica when no in-sync replica is left (may lose acknowledged records)",
        default: |_| "false".into(),
        validate: v_bool,
    },
    ConfigDef {
        name: "cleanup.policy",
        kind: ConfigType::List,
        broker_synonym: "log.cleanup.policy",
        doc: "Retention policy for old segments (delete; compact is accepted and stored)",
        default: |_| "delete".into(),
        validate: v_cleanup_policy,
    },
    ConfigDef {
        name: "compression.type",
        kind: ConfigType::String,
        broker_synonym: "compression.type",
        doc: "Final compression of stored batches: as the producer sent them",
        default: |_| "producer".into(),
        validate: v_compression,
    },
    ConfigDef {
        name: "max.message.bytes",
        kind: ConfigType::Int,
        broker_synonym: "message.max.bytes",
        doc: "Largest record batch accepted",
        default: |c| c.message_max_bytes.to_string(),
        validate: v_max_message,
    },
    ConfigDef {
        name: "message.timestamp.type",
        kind: ConfigType::String,
        broker_synonym: "log.message.timestamp.type",
        doc: "CreateTime keeps producer timestamps; LogAppendTime stamps broker time",
        default: |_| "CreateTime".into(),
        validate: v_timestamp_type,
    },
    ConfigDef {
        name: "message.timestamp.before.max.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.message.timestamp.before.max.ms",
        doc: "How far in the past a CreateTime timestamp may be",
        default: |_| i64::MAX.to_string(),
        validate: v_timestamp_diff,
    },
    ConfigDef {
        name: "message.timestamp.after.max.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.message.timestamp.after.max.ms",
        doc: "How far in the future a CreateTime timestamp may be",
        default: |_| "3600000".into(),
        validate: v_timestamp_diff,
    },
    ConfigDef {
        name: "min.insync.replicas",
        kind: ConfigType::Int,
        broker_synonym: "min.insync.replicas",
        doc: "Replicas that must hold a write before acks=all succeeds",
        default: |c| c.min_insync_replicas.to_string(),
        validate: v_min_isr,
    },
    ConfigDef {
        name: "retention.bytes",
        kind: ConfigType::Long,
        broker_synonym: "log.retention.bytes",
        doc: "Largest partition size before old segments are deleted (-1: unlimited)",
        default: |c| c.log_retention_bytes.to_string(),
        validate: v_retention,
    },
    ConfigDef {
        name: "retention.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.retention.ms",
        doc: "Age after which segments are deleted (-1: forever)",
        default: |c| c.log_retention_ms.to_string(),
        validate: v_retention,
    },
    ConfigDef {
        name: "segment.bytes",
        kind: ConfigType::Int,
        broker_synonym: "log.segment.bytes",
        doc: "Segment size: retention deletes whole segments",
        default: |c| c.log_segment_bytes.to_string(),
        validate: v_segment_bytes,
    },
    ConfigDef {
        name: "segment.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.roll.ms",
        doc: "Age after which a new segment is started",
        default: |c| c.log_roll_ms.to_string(),
        validate: v_positive_long,
    },
];

/// Looks up a config key.
pub fn def(name: &str) -> Option<&'static ConfigDef> {
    DEFS.iter().find(|d| d.name == name)
}

/// Checks one key/value pair.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    match def(name) {
        Some(d) => (d.validate)(value).map_err(|e| format!("{name}: {e}")),
        None => Err(format!("unknown topic config {name}")),
    }
}

/// Effective, parsed settings of one topic (overrides applied on top of broker defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// `retention.ms`.
    pub retention_ms: i64,
    /// `retention.bytes`.
    pub retention_bytes: i64,
    /// `max.message.bytes`.
    pub max_message_bytes: usize,
    /// `message.timestamp.type` is LogAppendTime.
    pub log_append_time: bool,
    /// `message.timestamp.before.max.ms`.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`.
    pub timestamp_after_max_ms: i64,
    /// `segment.bytes`.
    pub segment_bytes: u64,
    /// `segment.ms`.
    pub segment_ms: i64,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
}

impl TopicConfig {
    /// Resolves overrides (already validated) against broker defaults.
    pub fn resolve(overrides: &BTreeMap<String, String>, broker: &Config) -> TopicConfig {
        let get = |name: &str| -> String {
            overrides
                .get(name)
                .cloned()
                .or_else(|| def(name).map(|d| d.default_value(broker)))
                .unwrap_or_default()
        };
        let long = |name: &str, fallback: i64| get(name).trim().parse::<i64>().unwrap_or(fallback);
        TopicConfig {
            retention_ms: long("retention.ms", broker.log_retention_ms),
            retention_bytes: long("retention.bytes", broker.log_retention_bytes),
            max_message_bytes: long("max.message.bytes", i64::from(broker.message_max_bytes)).max(0)
                as usize,
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            timestamp_before_max_ms: long("message.timestamp.before.max.ms", i64::MAX),
            timestamp_after_max_ms: long("message.timestamp.after.max.ms", 3_600_000),
            segment_bytes: long("segment.bytes", broker.log_segment_bytes).max(14) as u64,
            segment_ms: long("segment.ms", broker.log_roll_ms).max(1),
            min_insync_replicas: long("min.insync.replicas", 1) as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_broker_defaults() {
        let broker = Config {
            log_retention_ms: 1000,
            ..Config::default()
        };
        let mut o = BTreeMap::new();
        o.insert("max.message.bytes".to_string(), "2048".to_string());
        o.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let c = TopicConfig::resolve(&o, &broker);
        assert_eq!(c.retention_ms, 1000);
        assert_eq!(c.max_message_bytes, 2048);
        assert!(c.log_append_time);
        assert_eq!(c.segment_bytes, 1 << 30);
    }

    #[test]
    fn validation_rejects_bad_values_and_unknown_keys() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "abc").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("compression.type", "gzip").is_err());
        assert!(validate("no.such.key", "1").is_err());
        assert!(validate("segment.bytes", "13").is_err());
    }
}
