//! Broker configs as Kafka names them: the static ones (file, environment, flags) and the
//! dynamic ones set with IncrementalAlterConfigs/AlterConfigs on a BROKER resource, either
//! for one broker (`"<id>"`) or as the cluster-wide default (`""`). Dynamic values live in
//! the metadata image, so every broker sees them at once and they survive restarts.

use std::collections::BTreeMap;

use super::value::{Check, Kind};
use super::Source;
use crate::config::Config;

/// Whether and where a broker key may change at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Static only: file, environment or flags, then a restart.
    ReadOnly,
    /// Per broker or as the cluster-wide default.
    PerBroker,
    /// Only as the cluster-wide default.
    ClusterWide,
}

/// One broker config key.
pub struct BrokerKey {
    /// Kafka name.
    pub name: &'static str,
    /// Value type.
    pub kind: Kind,
    /// Accepted values.
    pub check: Check,
    /// Where it may change at runtime.
    pub scope: Scope,
    /// One-line description.
    pub doc: &'static str,
    /// Value when nothing sets it (Kafka's default unless Riffle documents another).
    pub default: &'static str,
    /// Static value from this broker's [`Config`], for keys it has.
    static_value: Option<fn(&Config) -> String>,
}

macro_rules! key {
    ($name:literal, $kind:ident, $check:expr, $scope:ident, $default:expr, $doc:literal) => {
        BrokerKey {
            name: $name,
            kind: Kind::$kind,
            check: $check,
            scope: Scope::$scope,
            doc: $doc,
            default: $default,
            static_value: None,
        }
    };
    ($name:literal, $kind:ident, $check:expr, $scope:ident, $default:expr, $doc:literal, $get:expr) => {
        BrokerKey {
            static_value: Some($get),
            ..key!($name, $kind, $check, $scope, $default, $doc)
        }
    };
}

const LONG_MAX: &str = "9223372036854775807";

/// Every broker key Riffle describes, static and dynamic.
pub static BROKER_KEYS: &[BrokerKey] = &[
    key!(
        "node.id",
        Int,
        Check::Any,
        ReadOnly,
        "-1",
        "Broker id",
        |c| c.node_id.to_string()
    ),
    key!(
        "broker.rack",
        String,
        Check::Any,
        ReadOnly,
        "",
        "Rack of this broker, for replica placement",
        |c| c.rack.clone().unwrap_or_default()
    ),
    key!(
        "listeners",
        String,
        Check::Any,
        ReadOnly,
        "PLAINTEXT://:9092",
        "Kafka listener",
        |c| format!("PLAINTEXT://{}", c.listen)
    ),
    key!(
        "advertised.listeners",
        String,
        Check::Any,
        ReadOnly,
        "",
        "Address advertised to clients",
        |c| format!("PLAINTEXT://{}", c.advertised_listener)
    ),
    key!(
        "controller.quorum.voters",
        List,
        Check::Any,
        ReadOnly,
        "",
        "Metadata quorum voters",
        |c| c.voters.clone().unwrap_or_default()
    ),
    key!(
        "num.partitions",
        Int,
        Check::AtLeast(1),
        ReadOnly,
        "1",
        "Default partition count",
        |c| c.num_partitions.to_string()
    ),
    key!(
        "default.replication.factor",
        Int,
        Check::Any,
        ReadOnly,
        "1",
        "Default replication factor",
        |c| c.default_replication_factor.to_string()
    ),
    key!(
        "offsets.topic.replication.factor",
        Short,
        Check::AtLeast(1),
        ReadOnly,
        "3",
        "Replication factor of __consumer_offsets",
        |c| c.offsets_topic_replication_factor.to_string()
    ),
    key!(
        "offsets.retention.minutes",
        Int,
        Check::AtLeast(1),
        ReadOnly,
        "10080",
        "Committed offsets of empty groups expire after this",
        |c| c.offsets_retention_minutes.to_string()
    ),
    key!(
        "group.initial.rebalance.delay.ms",
        Int,
        Check::Any,
        ReadOnly,
        "3000",
        "Wait for more members when the first joins an empty group",
        |c| c.group_initial_rebalance_delay_ms.to_string()
    ),
    key!(
        "group.min.session.timeout.ms",
        Int,
        Check::Any,
        ReadOnly,
        "6000",
        "Smallest consumer session timeout",
        |c| c.group_min_session_timeout_ms.to_string()
    ),
    key!(
        "group.max.session.timeout.ms",
        Int,
        Check::Any,
        ReadOnly,
        "1800000",
        "Largest consumer session timeout",
        |c| c.group_max_session_timeout_ms.to_string()
    ),
    key!(
        "transaction.max.timeout.ms",
        Int,
        Check::Any,
        ReadOnly,
        "900000",
        "Longest transaction timeout a producer may ask for",
        |c| c.transaction_max_timeout_ms.to_string()
    ),
    key!(
        "transaction.partition.verification.enable",
        Boolean,
        Check::Any,
        ReadOnly,
        "true",
        "Check a transaction's first write to a partition with its coordinator",
        |c| c.transaction_partition_verification_enable.to_string()
    ),
    key!(
        "socket.request.max.bytes",
        Int,
        Check::AtLeast(1),
        ReadOnly,
        "104857600",
        "Largest request frame",
        |c| c.socket_request_max_bytes.to_string()
    ),
    key!(
        "queued.max.request.bytes",
        Long,
        Check::AtLeast(-1),
        ReadOnly,
        "-1",
        "Request bytes read and not yet answered, over all connections",
        |c| c.queued_max_request_bytes.to_string()
    ),
    key!(
        "quota.window.num",
        Int,
        Check::AtLeast(1),
        ReadOnly,
        "11",
        "Samples a client quota's rate is measured over",
        |c| c.quota_window_num.to_string()
    ),
    key!(
        "quota.window.size.seconds",
        Int,
        Check::AtLeast(1),
        ReadOnly,
        "1",
        "Length of one client quota sample in seconds",
        |c| c.quota_window_size_seconds.to_string()
    ),
    key!(
        "broker.heartbeat.interval.ms",
        Int,
        Check::Any,
        ReadOnly,
        "2000",
        "Heartbeat interval to the controller",
        |c| c.broker_heartbeat_interval_ms.to_string()
    ),
    key!(
        "broker.session.timeout.ms",
        Int,
        Check::Any,
        ReadOnly,
        "9000",
        "A silent broker is fenced after this",
        |c| c.broker_session_timeout_ms.to_string()
    ),
    key!(
        "replica.lag.time.max.ms",
        Long,
        Check::Any,
        ReadOnly,
        "30000",
        "A follower behind this long leaves the ISR",
        |c| c.replica_lag_time_max_ms.to_string()
    ),
    key!(
        "replica.fetch.wait.max.ms",
        Int,
        Check::Any,
        ReadOnly,
        "500",
        "Longest wait of a follower fetch",
        |c| c.replica_fetch_wait_max_ms.to_string()
    ),
    key!(
        "replica.fetch.max.bytes",
        Int,
        Check::AtLeast(0),
        ReadOnly,
        "1048576",
        "Most bytes per follower fetch",
        |c| c.replica_fetch_max_bytes.to_string()
    ),
    key!(
        "auto.leader.rebalance.enable",
        Boolean,
        Check::Any,
        ReadOnly,
        "true",
        "Move leaders back to preferred replicas",
        |c| c.auto_leader_rebalance_enable.to_string()
    ),
    key!(
        "leader.imbalance.per.broker.percentage",
        Int,
        Check::Any,
        ReadOnly,
        "10",
        "Imbalance that triggers a rebalance",
        |c| c.leader_imbalance_per_broker_percentage.to_string()
    ),
    key!(
        "leader.imbalance.check.interval.seconds",
        Long,
        Check::AtLeast(1),
        ReadOnly,
        "300",
        "Leader imbalance check interval",
        |c| c.leader_imbalance_check_interval_seconds.to_string()
    ),
    // Dynamic, beyond Kafka's own set: these two take effect at once here too.
    key!(
        "auto.create.topics.enable",
        Boolean,
        Check::Any,
        ClusterWide,
        "true",
        "Create topics on first metadata request",
        |c| c.auto_create_topics_enable.to_string()
    ),
    key!(
        "log.retention.check.interval.ms",
        Long,
        Check::AtLeast(1),
        ClusterWide,
        "300000",
        "How often retention runs",
        |c| c.log_retention_check_interval_ms.to_string()
    ),
    // Defaults of topic configs (the topic key's synonym), per broker or cluster-wide.
    key!(
        "log.retention.ms",
        Long,
        Check::AtLeast(-1),
        PerBroker,
        "604800000",
        "Default retention.ms",
        |c| c.log_retention_ms.to_string()
    ),
    key!(
        "log.retention.bytes",
        Long,
        Check::Any,
        PerBroker,
        "-1",
        "Default retention.bytes",
        |c| c.log_retention_bytes.to_string()
    ),
    key!(
        "log.segment.bytes",
        Int,
        Check::AtLeast(14),
        PerBroker,
        "1073741824",
        "Default segment.bytes",
        |c| c.log_segment_bytes.to_string()
    ),
    key!(
        "log.roll.ms",
        Long,
        Check::AtLeast(1),
        PerBroker,
        "604800000",
        "Default segment.ms",
        |c| c.log_roll_ms.to_string()
    ),
    key!(
        "message.max.bytes",
        Int,
        Check::AtLeast(0),
        PerBroker,
        "1048588",
        "Default max.message.bytes",
        |c| c.message_max_bytes.to_string()
    ),
    key!(
        "min.insync.replicas",
        Int,
        Check::AtLeast(1),
        PerBroker,
        "1",
        "Default min.insync.replicas",
        |c| c.min_insync_replicas.to_string()
    ),
    key!(
        "log.roll.jitter.ms",
        Long,
        Check::AtLeast(0),
        PerBroker,
        "0",
        "Default segment.jitter.ms"
    ),
    key!(
        "log.cleanup.policy",
        List,
        Check::ListOf(&["compact", "delete"]),
        PerBroker,
        "delete",
        "Default cleanup.policy"
    ),
    key!(
        "compression.type",
        String,
        Check::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        PerBroker,
        "producer",
        "Default compression.type"
    ),
    key!(
        "compression.gzip.level",
        Int,
        Check::BetweenOr(1, 9, -1),
        PerBroker,
        "-1",
        "Default compression.gzip.level"
    ),
    key!(
        "compression.lz4.level",
        Int,
        Check::Between(1, 17),
        PerBroker,
        "9",
        "Default compression.lz4.level"
    ),
    key!(
        "compression.zstd.level",
        Int,
        Check::Between(-131072, 22),
        PerBroker,
        "3",
        "Default compression.zstd.level"
    ),
    key!(
        "log.cleaner.backoff.ms",
        Long,
        Check::AtLeast(0),
        ClusterWide,
        "15000",
        "How long the log cleaner waits when no log needs cleaning"
    ),
    key!(
        "log.cleaner.io.max.bytes.per.second",
        Double,
        Check::Ratio(0.0, f64::MAX),
        ClusterWide,
        "1.7976931348623157E308",
        "Bytes per second the log cleaner may read and write (its throttle)"
    ),
    key!(
        "log.cleaner.delete.retention.ms",
        Long,
        Check::AtLeast(0),
        PerBroker,
        "86400000",
        "Default delete.retention.ms"
    ),
    key!(
        "log.cleaner.min.compaction.lag.ms",
        Long,
        Check::AtLeast(0),
        PerBroker,
        "0",
        "Default min.compaction.lag.ms"
    ),
    key!(
        "log.cleaner.max.compaction.lag.ms",
        Long,
        Check::AtLeast(1),
        PerBroker,
        LONG_MAX,
        "Default max.compaction.lag.ms"
    ),
    key!(
        "log.cleaner.min.cleanable.ratio",
        Double,
        Check::Ratio(0.0, 1.0),
        PerBroker,
        "0.5",
        "Default min.cleanable.dirty.ratio"
    ),
    key!(
        "log.flush.interval.messages",
        Long,
        Check::AtLeast(1),
        PerBroker,
        LONG_MAX,
        "Default flush.messages"
    ),
    key!(
        "log.flush.interval.ms",
        Long,
        Check::AtLeast(0),
        PerBroker,
        LONG_MAX,
        "Default flush.ms"
    ),
    key!(
        "log.index.interval.bytes",
        Int,
        Check::AtLeast(0),
        PerBroker,
        "4096",
        "Default index.interval.bytes"
    ),
    key!(
        "log.index.size.max.bytes",
        Int,
        Check::AtLeast(4),
        PerBroker,
        "10485760",
        "Default segment.index.bytes"
    ),
    key!(
        "log.segment.delete.delay.ms",
        Long,
        Check::AtLeast(0),
        PerBroker,
        "60000",
        "Default file.delete.delay.ms"
    ),
    key!(
        "log.preallocate",
        Boolean,
        Check::Any,
        PerBroker,
        "false",
        "Default preallocate"
    ),
    key!(
        "log.message.timestamp.type",
        String,
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
        PerBroker,
        "CreateTime",
        "Default message.timestamp.type"
    ),
    key!(
        "log.message.timestamp.before.max.ms",
        Long,
        Check::AtLeast(0),
        PerBroker,
        LONG_MAX,
        "Default message.timestamp.before.max.ms"
    ),
    key!(
        "log.message.timestamp.after.max.ms",
        Long,
        Check::AtLeast(0),
        PerBroker,
        "3600000",
        "Default message.timestamp.after.max.ms"
    ),
    key!(
        "unclean.leader.election.enable",
        Boolean,
        Check::Any,
        PerBroker,
        "false",
        "Default unclean.leader.election.enable"
    ),
    key!(
        "log.local.retention.ms",
        Long,
        Check::AtLeast(-2),
        PerBroker,
        "-2",
        "Default local.retention.ms"
    ),
    key!(
        "log.local.retention.bytes",
        Long,
        Check::AtLeast(-2),
        PerBroker,
        "-2",
        "Default local.retention.bytes"
    ),
    // Replication throttles (bytes per second), per broker.
    key!(
        "leader.replication.throttled.rate",
        Long,
        Check::AtLeast(0),
        PerBroker,
        LONG_MAX,
        "Throttle of replication traffic this broker sends as a leader, for throttled replicas"
    ),
    key!(
        "follower.replication.throttled.rate",
        Long,
        Check::AtLeast(0),
        PerBroker,
        LONG_MAX,
        "Throttle of replication traffic this broker fetches as a follower, for throttled replicas"
    ),
    key!(
        "replica.alter.log.dirs.io.max.bytes.per.second",
        Long,
        Check::AtLeast(1),
        PerBroker,
        LONG_MAX,
        "Throttle of moves between log directories (accepted; a Riffle broker has one log directory)"
    ),
];

/// Looks up a broker key.
pub fn broker_key(name: &str) -> Option<&'static BrokerKey> {
    BROKER_KEYS.iter().find(|k| k.name == name)
}

/// Checks a dynamic change of one key on a BROKER resource (`""`: cluster default).
/// Messages follow Kafka's (which prints key sets as Scala `Set(...)`).
pub fn check_dynamic(resource: &str, name: &str, value: Option<&str>) -> Result<(), String> {
    // Like Kafka, keys it does not know are stored as custom configs (without effect).
    let Some(key) = broker_key(name) else {
        return Ok(());
    };
    match key.scope {
        Scope::ReadOnly => {
            return Err(format!(
                "Cannot update these configs dynamically: Set({name})"
            ))
        }
        Scope::ClusterWide if !resource.is_empty() => {
            return Err(format!(
                "Cannot update these configs per broker, only at default cluster level: Set({name})"
            ))
        }
        // Eligible leaders need one min.insync.replicas for the whole cluster (as in Kafka
        // with ELR), or brokers would disagree on what the high watermark waits for.
        Scope::PerBroker if name == "min.insync.replicas" && !resource.is_empty() => {
            return Err(
                "Broker-level min.insync.replicas cannot be altered while ELR is enabled.".into(),
            )
        }
        _ => {}
    }
    match value {
        Some(v) => super::value::check_value(name, key.kind, key.check, v),
        None => Ok(()),
    }
}

/// One broker's view of its configs: static settings with the image's dynamic layers.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfigs {
    /// Settings from file, environment and flags.
    pub static_cfg: Config,
    /// Cluster-wide dynamic defaults (resource `""`).
    pub cluster: BTreeMap<String, String>,
    /// This broker's dynamic values (resource `"<node id>"`).
    pub mine: BTreeMap<String, String>,
}

impl BrokerConfigs {
    /// Static settings only.
    pub fn new(static_cfg: Config) -> BrokerConfigs {
        BrokerConfigs {
            static_cfg,
            ..BrokerConfigs::default()
        }
    }

    /// Where the static value of a key comes from and what it is.
    fn static_layer(&self, key: &BrokerKey) -> (String, Source) {
        match key.static_value {
            Some(get) => {
                let v = get(&self.static_cfg);
                let source = if v == get(&Config::default()) {
                    Source::Default
                } else {
                    Source::StaticBroker
                };
                (v, source)
            }
            None => (key.default.to_string(), Source::Default),
        }
    }

    /// Every layer that sets a key, highest precedence first (never empty for known keys).
    pub fn layers(&self, name: &str) -> Vec<(String, Source)> {
        let Some(key) = broker_key(name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(v) = self.mine.get(name) {
            out.push((v.clone(), Source::DynamicBroker));
        }
        if let Some(v) = self.cluster.get(name) {
            out.push((v.clone(), Source::DynamicDefaultBroker));
        }
        let (v, source) = self.static_layer(key);
        if source == Source::StaticBroker {
            out.push((v, source));
        }
        out.push((
            key.static_value
                .map_or_else(|| key.default.to_string(), |g| g(&Config::default())),
            Source::Default,
        ));
        out
    }

    /// Effective value of a key and its source.
    pub fn value(&self, name: &str) -> Option<(String, Source)> {
        self.layers(name).into_iter().next()
    }

    /// Effective value as a string ("" for unknown keys).
    pub fn get(&self, name: &str) -> String {
        self.value(name).map(|(v, _)| v).unwrap_or_default()
    }

    /// Effective value parsed as an integer, or `fallback`.
    pub fn get_i64(&self, name: &str, fallback: i64) -> i64 {
        self.get(name).trim().parse().unwrap_or(fallback)
    }

    /// Effective boolean value, or `fallback`.
    pub fn get_bool(&self, name: &str, fallback: bool) -> bool {
        match self.get(name).trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => fallback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_in_precedence_order() {
        let static_cfg = Config {
            log_retention_ms: 1000,
            ..Config::default()
        };
        let mut b = BrokerConfigs::new(static_cfg);
        assert_eq!(
            b.value("log.retention.ms"),
            Some(("1000".into(), Source::StaticBroker))
        );
        assert_eq!(
            b.value("log.retention.bytes"),
            Some(("-1".into(), Source::Default))
        );
        b.cluster.insert("log.retention.ms".into(), "2000".into());
        assert_eq!(b.get_i64("log.retention.ms", 0), 2000);
        b.mine.insert("log.retention.ms".into(), "3000".into());
        let layers: Vec<Source> = b
            .layers("log.retention.ms")
            .into_iter()
            .map(|l| l.1)
            .collect();
        assert_eq!(
            layers,
            [
                Source::DynamicBroker,
                Source::DynamicDefaultBroker,
                Source::StaticBroker,
                Source::Default
            ]
        );
        assert_eq!(b.get_i64("log.retention.ms", 0), 3000);
        assert_eq!(b.get("compression.type"), "producer");
        assert!(b.value("no.such.key").is_none());
    }

    #[test]
    fn dynamic_changes_are_checked_by_scope_and_value() {
        assert!(check_dynamic("1", "log.retention.ms", Some("5000")).is_ok());
        assert!(check_dynamic("", "log.retention.ms", None).is_ok());
        assert!(check_dynamic("1", "node.id", Some("2"))
            .unwrap_err()
            .contains("Cannot update these configs dynamically"));
        assert!(check_dynamic("1", "auto.create.topics.enable", Some("false")).is_err());
        assert!(check_dynamic("1", "min.insync.replicas", Some("2")).is_err());
        assert!(check_dynamic("", "min.insync.replicas", Some("2")).is_ok());
        assert!(check_dynamic("", "auto.create.topics.enable", Some("false")).is_ok());
        assert!(check_dynamic("", "log.retention.ms", Some("-5")).is_err());
        assert!(check_dynamic("1", "sasl.kerberos.min.time.before.relogin", Some("1")).is_ok());
    }
}
