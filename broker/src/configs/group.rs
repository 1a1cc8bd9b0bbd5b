//! Group configs (KIP-848's GROUP config resource) as Kafka 4.1 defines them. They tune
//! the consumer, share and streams group protocols; Riffle runs classic groups, whose
//! timeouts come from each JoinGroup request, so these keys are stored and described for
//! tools and clients that set them but change nothing here.

use std::collections::BTreeMap;

use super::value::{check_value, normalise, Check, Kind};

/// One group config key.
pub struct GroupKey {
    /// Kafka name.
    pub name: &'static str,
    /// Value type.
    pub kind: Kind,
    /// What the key's own type accepts.
    check: Check,
    /// The broker-wide bounds Kafka checks it against: `(min, max, min key, max key)`.
    bounds: Option<(i64, i64, &'static str, &'static str)>,
    /// Default (Kafka's broker-wide default for the group type).
    pub default: &'static str,
    /// One-line description.
    pub doc: &'static str,
}

const fn int(
    name: &'static str,
    check: Check,
    bounds: Option<(i64, i64, &'static str, &'static str)>,
    default: &'static str,
    doc: &'static str,
) -> GroupKey {
    GroupKey {
        name,
        kind: Kind::Int,
        check,
        bounds,
        default,
        doc,
    }
}

const SESSION: (i64, i64) = (45_000, 60_000);
const HEARTBEAT: (i64, i64) = (5_000, 15_000);

/// Every group config key of Kafka 4.1.
pub const GROUP_KEYS: &[GroupKey] = &[
    int(
        "consumer.session.timeout.ms",
        Check::AtLeast(1),
        Some((
            SESSION.0,
            SESSION.1,
            "group.consumer.min.session.timeout.ms",
            "group.consumer.max.session.timeout.ms",
        )),
        "45000",
        "The timeout to detect client failures when using the consumer group protocol.",
    ),
    int(
        "consumer.heartbeat.interval.ms",
        Check::AtLeast(1),
        Some((
            HEARTBEAT.0,
            HEARTBEAT.1,
            "group.consumer.min.heartbeat.interval.ms",
            "group.consumer.max.heartbeat.interval.ms",
        )),
        "5000",
        "The heartbeat interval given to the members of a consumer group.",
    ),
    int(
        "share.session.timeout.ms",
        Check::AtLeast(1),
        Some((
            SESSION.0,
            SESSION.1,
            "group.share.min.session.timeout.ms",
            "group.share.max.session.timeout.ms",
        )),
        "45000",
        "The timeout to detect client failures when using the share group protocol.",
    ),
    int(
        "share.heartbeat.interval.ms",
        Check::AtLeast(1),
        Some((
            HEARTBEAT.0,
            HEARTBEAT.1,
            "group.share.min.heartbeat.interval.ms",
            "group.share.max.heartbeat.interval.ms",
        )),
        "5000",
        "The heartbeat interval given to the members of a share group.",
    ),
    int(
        "share.record.lock.duration.ms",
        Check::AtLeast(1000),
        Some((
            15_000,
            60_000,
            "group.share.min.record.lock.duration.ms",
            "group.share.max.record.lock.duration.ms",
        )),
        "30000",
        "The record acquisition lock duration in milliseconds for share groups.",
    ),
    GroupKey {
        name: "share.auto.offset.reset",
        kind: Kind::String,
        check: Check::Any,
        bounds: None,
        default: "latest",
        doc: "The strategy to initialize the share-partition start offset.",
    },
    GroupKey {
        name: "share.isolation.level",
        kind: Kind::String,
        check: Check::OneOf(&["read_committed", "read_uncommitted"]),
        bounds: None,
        default: "read_uncommitted",
        doc: "Controls how to read records written transactionally.",
    },
    int(
        "streams.session.timeout.ms",
        Check::AtLeast(1),
        Some((
            SESSION.0,
            SESSION.1,
            "group.streams.min.session.timeout.ms",
            "group.streams.max.session.timeout.ms",
        )),
        "45000",
        "The timeout to detect client failures when using the streams group protocol.",
    ),
    int(
        "streams.heartbeat.interval.ms",
        Check::AtLeast(1),
        Some((
            HEARTBEAT.0,
            HEARTBEAT.1,
            "group.streams.min.heartbeat.interval.ms",
            "group.streams.max.heartbeat.interval.ms",
        )),
        "5000",
        "The heartbeat interval given to the members of a streams group.",
    ),
    int(
        "streams.num.standby.replicas",
        Check::AtLeast(0),
        Some((0, 2, "", "group.streams.max.standby.replicas")),
        "0",
        "The number of standby replicas for each task.",
    ),
];

/// The key of this name.
pub fn group_key(name: &str) -> Option<&'static GroupKey> {
    GROUP_KEYS.iter().find(|k| k.name == name)
}

/// `share.auto.offset.reset`: `latest`, `earliest` or `by_duration:<ISO-8601 duration>`.
fn check_reset(value: &str) -> Result<(), String> {
    let v = value.trim();
    let ok = match v.strip_prefix("by_duration:") {
        Some(d) => d.starts_with('P') && d.len() > 1,
        None => v == "latest" || v == "earliest",
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Invalid value {value} for configuration share.auto.offset.reset: \
             Invalid value `{v}` for configuration share.auto.offset.reset. \
             The value must be either 'earliest', 'latest' or of the format 'by_duration:<PnDTnHnMn.nS.>'."
        ))
    }
}

/// Checks a group's whole override set with Kafka's rules and messages: known keys,
/// values of their type, and the broker-wide bounds (which also keep every session
/// timeout above its heartbeat interval).
pub fn validate_set(configs: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in configs {
        let key = group_key(name).ok_or_else(|| format!("Unknown group config name: {name}"))?;
        if key.name == "share.auto.offset.reset" {
            check_reset(value)?;
        } else {
            check_value(name, key.kind, key.check, value)?;
        }
    }
    let int_of = |name: &str| -> i64 {
        let v = configs.get(name).map_or_else(
            || group_key(name).map_or("0", |k| k.default),
            String::as_str,
        );
        v.trim().parse().unwrap_or(0)
    };
    for key in GROUP_KEYS {
        let Some((min, max, min_key, max_key)) = key.bounds else {
            continue;
        };
        let n = int_of(key.name);
        if n < min {
            return Err(format!(
                "{} must be greater than or equal to {min_key}",
                key.name
            ));
        }
        if n > max {
            return Err(format!(
                "{} must be less than or equal to {max_key}",
                key.name
            ));
        }
    }
    Ok(())
}

/// Normalises a valid value the way it is stored and described.
pub fn normalised(name: &str, value: &str) -> String {
    group_key(name).map_or_else(|| value.to_string(), |k| normalise(k.kind, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kafka_rules_and_messages() {
        assert!(validate_set(&set(&[("consumer.session.timeout.ms", "50000")])).is_ok());
        assert!(validate_set(&BTreeMap::new()).is_ok());
        assert_eq!(
            validate_set(&set(&[("consumer.session.timeout.ms", "1000")])).unwrap_err(),
            "consumer.session.timeout.ms must be greater than or equal to \
             group.consumer.min.session.timeout.ms"
        );
        assert_eq!(
            validate_set(&set(&[("share.heartbeat.interval.ms", "20000")])).unwrap_err(),
            "share.heartbeat.interval.ms must be less than or equal to \
             group.share.max.heartbeat.interval.ms"
        );
        assert_eq!(
            validate_set(&set(&[("consumer.session.timeout.ms", "0")])).unwrap_err(),
            "Invalid value 0 for configuration consumer.session.timeout.ms: Value must be at least 1"
        );
        assert_eq!(
            validate_set(&set(&[("session.timeout.ms", "50000")])).unwrap_err(),
            "Unknown group config name: session.timeout.ms"
        );
        assert!(validate_set(&set(&[("streams.num.standby.replicas", "3")])).is_err());
        assert!(validate_set(&set(&[("share.isolation.level", "read_committed")])).is_ok());
        assert!(validate_set(&set(&[("share.isolation.level", "committed")])).is_err());
        assert!(validate_set(&set(&[("share.auto.offset.reset", "by_duration:PT1H")])).is_ok());
        assert!(validate_set(&set(&[("share.auto.offset.reset", "newest")])).is_err());
    }

    #[test]
    fn every_default_is_valid() {
        let all = GROUP_KEYS
            .iter()
            .map(|k| (k.name.to_string(), k.default.to_string()))
            .collect();
        assert_eq!(validate_set(&all), Ok(()));
    }
}
