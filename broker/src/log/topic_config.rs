//! A topic's effective settings: its overrides over the broker's defaults, parsed once so
//! the produce and retention paths read plain fields.

use std::collections::BTreeMap;

use riffle_protocol::compress::{Codec, Target};

use crate::configs::topic::{default_value, topic_key};
use crate::configs::BrokerConfigs;

/// Effective, parsed settings of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// `retention.ms`.
    pub retention_ms: i64,
    /// `retention.bytes`.
    pub retention_bytes: i64,
    /// `cleanup.policy` includes `delete`: retention removes old segments.
    pub retention_deletes: bool,
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
    /// `segment.jitter.ms`.
    pub segment_jitter_ms: i64,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// `compression.type` and its level; `None` keeps batches as produced.
    pub compression: Option<Target>,
    /// `flush.messages`.
    pub flush_messages: i64,
    /// `flush.ms`.
    pub flush_ms: i64,
    /// `cleanup.policy` includes `compact`: the cleaner keeps the latest record per key.
    pub compacts: bool,
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`: how long tombstones stay readable.
    pub delete_retention_ms: i64,
}

impl TopicConfig {
    /// Resolves overrides (already validated) against the broker's defaults.
    pub fn resolve(overrides: &BTreeMap<String, String>, broker: &BrokerConfigs) -> TopicConfig {
        let get = |name: &str| -> String {
            overrides.get(name).cloned().unwrap_or_else(|| {
                topic_key(name)
                    .map(|k| default_value(k, broker).0)
                    .unwrap_or_default()
            })
        };
        let long = |name: &str, fallback: i64| get(name).trim().parse::<i64>().unwrap_or(fallback);
        let compression = Codec::from_config(get("compression.type").trim()).map(|codec| {
            let level_key = match codec {
                Codec::Gzip => Some("compression.gzip.level"),
                Codec::Lz4 => Some("compression.lz4.level"),
                Codec::Zstd => Some("compression.zstd.level"),
                Codec::None | Codec::Snappy => None,
            };
            let level = level_key
                .map(|k| long(k, -1) as i32)
                .filter(|&l| !(codec == Codec::Gzip && l == -1));
            Target { codec, level }
        });
        TopicConfig {
            retention_ms: long("retention.ms", 604_800_000),
            retention_bytes: long("retention.bytes", -1),
            retention_deletes: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "delete"),
            compacts: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "compact"),
            min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio")
                .trim()
                .parse::<f64>()
                .unwrap_or(0.5),
            min_compaction_lag_ms: long("min.compaction.lag.ms", 0).max(0),
            max_compaction_lag_ms: long("max.compaction.lag.ms", i64::MAX).max(1),
            delete_retention_ms: long("delete.retention.ms", 86_400_000).max(0),
            max_message_bytes: long("max.message.bytes", 1_048_588).max(0) as usize,
            log_append_time: get("message.timestamp.type").trim() == "LogAppendTime",
            timestamp_before_max_ms: long("message.timestamp.before.max.ms", i64::MAX),
            timestamp_after_max_ms: long("message.timestamp.after.max.ms", 3_600_000),
            segment_bytes: long("segment.bytes", 1 << 30).max(14) as u64,
            segment_ms: long("segment.ms", 604_800_000).max(1),
            segment_jitter_ms: long("segment.jitter.ms", 0).max(0),
            min_insync_replicas: long("min.insync.replicas", 1) as i32,
            compression,
            flush_messages: long("flush.messages", i64::MAX).max(1),
            flush_ms: long("flush.ms", i64::MAX).max(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn overrides_win_over_broker_defaults() {
        let mut broker = BrokerConfigs::new(Config {
            log_retention_ms: 1000,
            ..Config::default()
        });
        broker
            .cluster
            .insert("compression.type".into(), "zstd".into());
        let mut o = BTreeMap::new();
        o.insert("max.message.bytes".to_string(), "2048".to_string());
        o.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        o.insert("cleanup.policy".to_string(), "compact".to_string());
        let c = TopicConfig::resolve(&o, &broker);
        assert_eq!(c.retention_ms, 1000);
        assert_eq!(c.max_message_bytes, 2048);
        assert!(c.log_append_time);
        assert!(!c.retention_deletes && c.compacts);
        assert_eq!(c.min_cleanable_dirty_ratio, 0.5);
        assert_eq!(c.delete_retention_ms, 86_400_000);
        assert_eq!(c.segment_bytes, 1 << 30);
        assert_eq!(
            c.compression,
            Some(Target {
                codec: Codec::Zstd,
                level: Some(3)
            })
        );
        o.insert("compression.type".to_string(), "producer".to_string());
        assert_eq!(TopicConfig::resolve(&o, &broker).compression, None);
        o.insert("compression.type".to_string(), "gzip".to_string());
        let gzip = TopicConfig::resolve(&o, &broker).compression;
        assert_eq!(gzip.map(|t| t.level), Some(None));
    }
}
