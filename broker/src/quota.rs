//! Client quotas (KIP-546): entities, validation and filters as Kafka's controller has
//! them, the resolution of a client's quota (KIP-55's precedence), and the byte-rate
//! windows that turn a quota into a throttle time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Entity types.
pub const USER: &str = "user";
/// Client id entity type.
pub const CLIENT_ID: &str = "client-id";
/// Client address entity type.
pub const IP: &str = "ip";

/// Bytes per second a client may produce.
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
/// Bytes per second a client may fetch.
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";

/// Keys a user or client-id entity accepts, and whether their values are whole numbers.
const CLIENT_KEYS: &[(&str, bool)] = &[
    (PRODUCER_BYTE_RATE, true),
    (CONSUMER_BYTE_RATE, true),
    ("request_percentage", false),
    ("controller_mutation_rate", false),
];
/// Keys an ip entity accepts.
const IP_KEYS: &[(&str, bool)] = &[("connection_creation_rate", true)];

/// A quota entity: entity type → name (`None`: that type's default).
pub type Entity = BTreeMap<String, Option<String>>;

/// A quota value. Compared by bits so the metadata image stays `Eq`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Value(pub f64);

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Value {}

/// One entity's quotas by key.
pub type Values = BTreeMap<String, Value>;

/// Every entity's quotas.
pub type Quotas = BTreeMap<Entity, Values>;

/// Serde of [`Quotas`] as a list of pairs: an entity cannot be a JSON object key.
pub mod as_pairs {
    use super::{Entity, Quotas, Values};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the pairs.
    pub fn serialize<S: Serializer>(quotas: &Quotas, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(quotas.iter())
    }

    /// Reads the pairs.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Quotas, D::Error> {
        let pairs = Vec::<(Entity, Values)>::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

/// One change: set a key (`Some`) or remove it (`None`).
pub type Op = (String, Option<Value>);

/// Checks one entity's alteration with Kafka's rules; the error is Kafka's message for
/// INVALID_REQUEST.
pub fn validate(entity: &Entity, ops: &[Op]) -> Result<(), String> {
    if entity.is_empty() {
        return Err("Invalid empty client quota entity".into());
    }
    for (ty, name) in entity {
        if ![USER, CLIENT_ID, IP].contains(&ty.as_str()) {
            return Err(format!("Unhandled client quota entity type: {ty}"));
        }
        if name.as_deref() == Some("") {
            return Err(format!("Empty {ty} not supported"));
        }
    }
    let keys = if entity.contains_key(IP) {
        if entity.len() > 1 {
            return Err("Invalid empty client quota entity".into());
        }
        if let Some(Some(ip)) = entity.get(IP) {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("{ip} is not a valid IP or resolvable host."));
            }
        }
        IP_KEYS
    } else {
        CLIENT_KEYS
    };
    let mut seen = Vec::new();
    for (key, value) in ops {
        if seen.contains(&key) {
            return Err(format!(
                "Duplicate quota key {key} not updating quota for this entity {}",
                describe_entity(entity)
            ));
        }
        seen.push(key);
        let Some(Value(value)) = value else { continue };
        let whole = keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, whole)| *whole)
            .ok_or_else(|| format!("Invalid configuration key {key}"))?;
        if whole && (value.round() - value).abs() > 1e-6 {
            return Err(format!("Configuration {key} must be a Long value"));
        }
    }
    Ok(())
}

/// Kafka's text for an entity, e.g. `ClientQuotaEntity(entries={user=alice})`.
pub fn describe_entity(entity: &Entity) -> String {
    let entries: Vec<String> = entity
        .iter()
        .map(|(t, n)| format!("{t}={}", n.as_deref().unwrap_or("null")))
        .collect();
    format!("ClientQuotaEntity(entries={{{}}})", entries.join(", "))
}

/// Applies a validated alteration.
pub fn apply(quotas: &mut Quotas, entity: &Entity, ops: &[Op]) {
    let values = quotas.entry(entity.clone()).or_default();
    for (key, value) in ops {
        match value {
            Some(v) => {
                values.insert(key.clone(), *v);
            }
            None => {
                values.remove(key);
            }
        }
    }
    if values.is_empty() {
        quotas.remove(entity);
    }
}

/// How a DescribeClientQuotas filter component matches an entity type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Exactly this name.
    Exact(String),
    /// The type's default entity.
    Default,
    /// Any entity of the type, the default included.
    Specified,
}

/// The entities a DescribeClientQuotas filter selects (`strict`: no other entity types).
pub fn filter<'a>(
    quotas: &'a Quotas,
    components: &[(String, Match)],
    strict: bool,
) -> Result<Vec<(&'a Entity, &'a Values)>, String> {
    let mut seen: Vec<&str> = Vec::new();
    for (ty, _) in components {
        if ty.is_empty() {
            return Err("Invalid empty entity type.".into());
        }
        if seen.contains(&ty.as_str()) {
            return Err(format!(
                "Entity type {ty} cannot appear more than once in the filter."
            ));
        }
        if ![USER, CLIENT_ID, IP].contains(&ty.as_str()) {
            return Err(format!("Unable to filter on unknown entity type: {ty}"));
        }
        seen.push(ty);
    }
    if seen.contains(&IP) && (seen.contains(&USER) || seen.contains(&CLIENT_ID)) {
        return Err(
            "Invalid entity filter component combination, IP filter component should \
                    not be used with user or clientId filter component."
                .into(),
        );
    }
    let matches = |entity: &Entity| {
        (!strict || entity.len() == components.len())
            && components.iter().all(|(ty, m)| match (entity.get(ty), m) {
                (None, _) => false,
                (Some(name), Match::Exact(want)) => name.as_deref() == Some(want.as_str()),
                (Some(name), Match::Default) => name.is_none(),
                (Some(_), Match::Specified) => true,
            })
    };
    Ok(quotas.iter().filter(|(e, _)| matches(e)).collect())
}

/// Who a rate is counted for: the user and client id of the entity that set the quota
/// (`None` where that entity has no such type), as Kafka's quota metrics are tagged.
pub type Account = (Option<String>, Option<String>);

/// The quota `key` that applies to a client, with the account its usage is counted in:
/// the most specific entity that sets the key, in Kafka's order (user and client id,
/// user and default client, user, default user and client id, defaults, client id,
/// default client).
pub fn resolve(quotas: &Quotas, key: &str, user: &str, client: &str) -> Option<(Account, f64)> {
    if quotas.is_empty() {
        return None;
    }
    // Each level: the user part and the client part of the entity (`None`: absent,
    // `Some(None)`: the type's default).
    let (u, c) = (Some(Some(user)), Some(Some(client)));
    let levels = [
        (u, c),
        (u, Some(None)),
        (u, None),
        (Some(None), c),
        (Some(None), Some(None)),
        (Some(None), None),
        (None, c),
        (None, Some(None)),
    ];
    levels.into_iter().find_map(|(user_part, client_part)| {
        let mut entity = Entity::new();
        for (ty, part) in [(USER, user_part), (CLIENT_ID, client_part)] {
            if let Some(name) = part {
                entity.insert(ty.to_string(), name.map(String::from));
            }
        }
        let value = quotas.get(&entity)?.get(key)?.0;
        let account = (
            user_part.map(|_| user.to_string()),
            client_part.map(|_| client.to_string()),
        );
        Some((account, value))
    })
}

/// Byte rates over a sliding window of `samples` windows of `sample` each (Kafka's
/// `quota.window.num` and `quota.window.size.seconds`).
pub struct Rates {
    samples: usize,
    sample: Duration,
    accounts: Mutex<HashMap<(&'static str, Account), Window>>,
}

/// Recent samples of one account: `(start, bytes)`, oldest first.
#[derive(Default)]
struct Window(Vec<(Instant, f64)>);

impl Window {
    /// Adds bytes at `now` and returns the rate (bytes/s) and the span it is measured
    /// over. As in Kafka, the span counts as at least `samples - 1` full samples, so a new
    /// account's first burst is not read as an enormous rate.
    fn record(
        &mut self,
        samples: usize,
        sample: Duration,
        bytes: f64,
        now: Instant,
    ) -> (f64, Duration) {
        let horizon = sample * samples as u32;
        self.0
            .retain(|(start, _)| now.duration_since(*start) < horizon);
        match self.0.last_mut() {
            Some((start, b)) if now.duration_since(*start) < sample => *b += bytes,
            _ => self.0.push((now, bytes)),
        }
        let total: f64 = self.0.iter().map(|(_, b)| b).sum();
        let elapsed = self
            .0
            .first()
            .map_or(Duration::ZERO, |(s, _)| now.duration_since(*s));
        let span = elapsed
            .max(sample * (samples.saturating_sub(1)) as u32)
            .max(sample);
        (total / span.as_secs_f64(), span)
    }
}

impl Rates {
    /// Empty windows.
    pub fn new(samples: usize, sample: Duration) -> Rates {
        Rates {
            samples: samples.max(1),
            sample,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts `bytes` against `account`'s `quota` (bytes/s) and returns how long the
    /// client must wait: Kafka's `(rate - quota) / quota × span`, at most the whole
    /// window.
    pub fn record(
        &self,
        kind: &'static str,
        account: Account,
        quota: f64,
        bytes: usize,
        now: Instant,
    ) -> Duration {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let window = accounts.entry((kind, account)).or_default();
        let (rate, span) = window.record(self.samples, self.sample, bytes as f64, now);
        throttle(rate, quota, span, self.sample * self.samples as u32)
    }
}

/// Time to wait so that `rate`, measured over `span`, falls back to `quota`; at most `max`.
fn throttle(rate: f64, quota: f64, span: Duration, max: Duration) -> Duration {
    if rate <= quota {
        return Duration::ZERO;
    }
    if quota <= 0.0 {
        return max;
    }
    span.mul_f64((rate - quota) / quota).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(pairs: &[(&str, Option<&str>)]) -> Entity {
        pairs
            .iter()
            .map(|(t, n)| (t.to_string(), n.map(String::from)))
            .collect()
    }

    fn set(key: &str, v: f64) -> Op {
        (key.to_string(), Some(Value(v)))
    }

    #[test]
    fn validation_follows_kafka() {
        let alice = entity(&[(USER, Some("alice"))]);
        assert_eq!(validate(&alice, &[set(PRODUCER_BYTE_RATE, 1024.0)]), Ok(()));
        assert_eq!(
            validate(&alice, &[set(PRODUCER_BYTE_RATE, 1.5)]).unwrap_err(),
            "Configuration producer_byte_rate must be a Long value"
        );
        assert!(validate(&alice, &[set("request_percentage", 12.5)]).is_ok());
        assert_eq!(
            validate(&alice, &[set("connection_creation_rate", 5.0)]).unwrap_err(),
            "Invalid configuration key connection_creation_rate"
        );
        assert_eq!(
            validate(&entity(&[]), &[]).unwrap_err(),
            "Invalid empty client quota entity"
        );
        assert_eq!(
            validate(&entity(&[(USER, Some(""))]), &[]).unwrap_err(),
            "Empty user not supported"
        );
        assert!(validate(&entity(&[("group", Some("g"))]), &[]).is_err());
        assert!(validate(
            &entity(&[(IP, Some("10.0.0.1"))]),
            &[set("connection_creation_rate", 5.0)]
        )
        .is_ok());
        assert!(validate(&entity(&[(IP, Some("not an ip"))]), &[]).is_err());
        assert!(validate(&entity(&[(IP, None), (USER, None)]), &[]).is_err());
        let dup = [set(PRODUCER_BYTE_RATE, 1.0), set(PRODUCER_BYTE_RATE, 2.0)];
        assert!(validate(&alice, &dup)
            .unwrap_err()
            .starts_with("Duplicate quota key"));
    }

    #[test]
    fn apply_sets_and_removes_and_forgets_empty_entities() {
        let mut q = Quotas::new();
        let e = entity(&[(CLIENT_ID, Some("app"))]);
        apply(&mut q, &e, &[set(PRODUCER_BYTE_RATE, 10.0)]);
        assert_eq!(q[&e][PRODUCER_BYTE_RATE], Value(10.0));
        apply(&mut q, &e, &[(PRODUCER_BYTE_RATE.to_string(), None)]);
        assert!(q.is_empty());
    }

    #[test]
    fn filters_select_like_kafka() {
        let mut q = Quotas::new();
        for e in [
            entity(&[(USER, Some("alice"))]),
            entity(&[(USER, None)]),
            entity(&[(USER, Some("alice")), (CLIENT_ID, Some("app"))]),
            entity(&[(CLIENT_ID, Some("app"))]),
        ] {
            apply(&mut q, &e, &[set(PRODUCER_BYTE_RATE, 1.0)]);
        }
        let count = |c: &[(&str, Match)], strict| {
            let c: Vec<_> = c.iter().map(|(t, m)| (t.to_string(), m.clone())).collect();
            filter(&q, &c, strict).map(|v| v.len())
        };
        assert_eq!(count(&[(USER, Match::Specified)], false), Ok(3));
        assert_eq!(count(&[(USER, Match::Specified)], true), Ok(2));
        assert_eq!(count(&[(USER, Match::Default)], false), Ok(1));
        assert_eq!(count(&[(USER, Match::Exact("alice".into()))], true), Ok(1));
        assert_eq!(
            count(&[(CLIENT_ID, Match::Exact("app".into()))], false),
            Ok(2)
        );
        assert_eq!(count(&[], false), Ok(4));
        assert!(count(&[(IP, Match::Specified), (USER, Match::Specified)], false).is_err());
        assert!(count(&[(USER, Match::Specified), (USER, Match::Default)], false).is_err());
    }

    #[test]
    fn the_most_specific_entity_wins_and_names_the_account() {
        let mut q = Quotas::new();
        apply(
            &mut q,
            &entity(&[(CLIENT_ID, None)]),
            &[set(PRODUCER_BYTE_RATE, 8.0)],
        );
        let who = |q: &Quotas| resolve(q, PRODUCER_BYTE_RATE, "alice", "app");
        assert_eq!(who(&q), Some(((None, Some("app".into())), 8.0)));
        apply(
            &mut q,
            &entity(&[(USER, None)]),
            &[set(PRODUCER_BYTE_RATE, 4.0)],
        );
        assert_eq!(who(&q), Some(((Some("alice".into()), None), 4.0)));
        apply(
            &mut q,
            &entity(&[(USER, Some("alice")), (CLIENT_ID, Some("app"))]),
            &[set(PRODUCER_BYTE_RATE, 2.0)],
        );
        assert_eq!(
            who(&q),
            Some(((Some("alice".into()), Some("app".into())), 2.0))
        );
        assert_eq!(resolve(&q, CONSUMER_BYTE_RATE, "alice", "app"), None);
    }

    #[test]
    fn a_rate_above_the_quota_is_throttled_in_proportion() {
        let rates = Rates::new(11, Duration::from_secs(1));
        let t0 = Instant::now();
        let acct: Account = (None, Some("app".into()));
        // 10 kB in the first second reads as 1 kB/s over the 10 s minimum window.
        let d = rates.record("produce", acct.clone(), 2000.0, 10_000, t0);
        assert_eq!(d, Duration::ZERO);
        // 40 kB more: 5 kB/s over 10 s against 4 kB/s ⇒ (5 - 4) / 4 × 10 s.
        let d = rates.record("produce", acct.clone(), 4000.0, 40_000, t0);
        assert_eq!(d, Duration::from_millis(2500));
        // Against 2 kB/s it would be 15 s: capped at the 11 s window.
        let d = rates.record("produce", acct, 2000.0, 0, t0);
        assert_eq!(d, Duration::from_secs(11));
        let max = Duration::from_secs(3);
        assert_eq!(throttle(1.0, 0.0, max, max), max);
    }
}
