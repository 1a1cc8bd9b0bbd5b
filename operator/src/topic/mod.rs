//! Topic reconciliation against a broker through the Kafka admin API: decide (pure) what
//! must change, then apply it.

use std::collections::BTreeMap;

use riffle_client::admin::{AdminFailure, TopicDescription};
use riffle_client::Connection;

pub mod controller;

use crate::crd::{DeletionPolicy, Topic, TopicSpec};

/// One change to bring a Kafka topic in line with its Topic object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicAction {
    /// Create the topic.
    Create {
        /// Partitions.
        partitions: i32,
        /// Replication factor.
        replication_factor: i16,
        /// Initial configs.
        configs: BTreeMap<String, String>,
    },
    /// Grow to this many partitions.
    GrowPartitions(i32),
    /// Set (`Some`) or reset (`None`) these configs.
    AlterConfigs(BTreeMap<String, Option<String>>),
}

/// Why a Topic cannot be reconciled as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Kafka cannot remove partitions.
    #[error("partitions cannot decrease from {current} to {wanted}")]
    PartitionDecreaseNotSupported {
        /// On the broker.
        current: i32,
        /// In the spec.
        wanted: i32,
    },
    /// Replication factor out of the i16 range Kafka uses.
    #[error("replication factor {0} is out of range")]
    InvalidReplicationFactor(i32),
}

impl PlanError {
    /// Condition reason for the Ready condition.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::PartitionDecreaseNotSupported { .. } => "PartitionDecreaseNotSupported",
            PlanError::InvalidReplicationFactor(_) => "InvalidReplicationFactor",
        }
    }
}

/// Kafka topic name of a Topic object.
pub fn topic_name(topic: &Topic) -> String {
    topic
        .spec
        .topic_name
        .clone()
        .or_else(|| topic.metadata.name.clone())
        .unwrap_or_default()
}

/// Decides the actions for `spec` given what the broker has (`None`: no such topic).
///
/// Config keys with a value are enforced, keys set to null are left alone, and overrides on
/// the broker that the spec does not mention are reset (drift is reverted).
pub fn plan(
    spec: &TopicSpec,
    observed: Option<(&TopicDescription, &BTreeMap<String, String>)>,
) -> Result<Vec<TopicAction>, PlanError> {
    let rf = i16::try_from(spec.replication_factor)
        .map_err(|_| PlanError::InvalidReplicationFactor(spec.replication_factor))?;
    let wanted: BTreeMap<String, String> = spec
        .config
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
        .collect();
    let Some((desc, overrides)) = observed else {
        return Ok(vec![TopicAction::Create {
            partitions: spec.partitions,
            replication_factor: rf,
            configs: wanted,
        }]);
    };
    let mut actions = Vec::new();
    if spec.partitions < desc.partitions {
        return Err(PlanError::PartitionDecreaseNotSupported {
            current: desc.partitions,
            wanted: spec.partitions,
        });
    }
    if spec.partitions > desc.partitions {
        actions.push(TopicAction::GrowPartitions(spec.partitions));
    }
    let mut changes = BTreeMap::new();
    for (k, v) in &wanted {
        if overrides.get(k) != Some(v) {
            changes.insert(k.clone(), Some(v.clone()));
        }
    }
    for k in overrides.keys() {
        if !spec.config.contains_key(k) {
            changes.insert(k.clone(), None);
        }
    }
    if !changes.is_empty() {
        actions.push(TopicAction::AlterConfigs(changes));
    }
    Ok(actions)
}

/// Outcome of one reconcile pass against the broker.
#[derive(Debug)]
pub enum Reconciled {
    /// The topic matches the spec.
    Ready(TopicDescription),
    /// The spec asks for something Kafka cannot do.
    Invalid(PlanError),
}

/// Brings the broker's topic in line with `spec`.
pub async fn reconcile(
    conn: &mut Connection,
    name: &str,
    spec: &TopicSpec,
) -> Result<Reconciled, AdminFailure> {
    let observed = match conn.describe_topic(name).await? {
        Some(desc) => {
            let overrides = conn.topic_overrides(name).await?;
            Some((desc, overrides))
        }
        None => None,
    };
    let actions = match plan(spec, observed.as_ref().map(|(d, o)| (d, o))) {
        Ok(a) => a,
        Err(e) => return Ok(Reconciled::Invalid(e)),
    };
    for action in actions {
        tracing::info!(topic = name, ?action, "applying topic change");
        match action {
            TopicAction::Create {
                partitions,
                replication_factor,
                configs,
            } => {
                conn.create_topic(name, partitions, replication_factor, &configs)
                    .await?
            }
            TopicAction::GrowPartitions(n) => conn.create_partitions(name, n).await?,
            TopicAction::AlterConfigs(changes) => conn.alter_topic_configs(name, &changes).await?,
        }
    }
    let desc = conn.describe_topic(name).await?.ok_or_else(|| {
        AdminFailure::Client(riffle_client::ClientError::Codec(format!(
            "topic {name} missing after reconcile"
        )))
    })?;
    Ok(Reconciled::Ready(desc))
}

/// Cleans up when a Topic object is deleted, per its deletion policy.
pub async fn cleanup(
    conn: &mut Connection,
    name: &str,
    policy: DeletionPolicy,
) -> Result<(), AdminFailure> {
    match policy {
        DeletionPolicy::Retain => Ok(()),
        DeletionPolicy::Delete => match conn.delete_topic(name).await {
            // Already gone is fine.
            Err(AdminFailure::Kafka(e)) if e.code == 3 => Ok(()),
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClusterRef;

    fn spec(partitions: i32, config: &[(&str, Option<&str>)]) -> TopicSpec {
        TopicSpec {
            cluster_ref: ClusterRef { name: "c".into() },
            topic_name: None,
            partitions,
            replication_factor: 1,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(String::from)))
                .collect(),
            deletion_policy: DeletionPolicy::Delete,
        }
    }

    fn desc(partitions: i32) -> TopicDescription {
        TopicDescription {
            id: "id".into(),
            partitions,
            replication_factor: 1,
        }
    }

    fn overrides(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn missing_topic_is_created_with_managed_configs() {
        let a = plan(
            &spec(6, &[("retention.ms", Some("1000")), ("segment.ms", None)]),
            None,
        )
        .expect("plan");
        assert_eq!(
            a,
            vec![TopicAction::Create {
                partitions: 6,
                replication_factor: 1,
                configs: overrides(&[("retention.ms", "1000")])
            }]
        );
    }

    #[test]
    fn in_sync_topic_needs_nothing() {
        let s = spec(3, &[("retention.ms", Some("1000"))]);
        assert_eq!(
            plan(
                &s,
                Some((&desc(3), &overrides(&[("retention.ms", "1000")])))
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn grows_partitions_and_reverts_drift_but_leaves_null_keys() {
        let s = spec(8, &[("retention.ms", Some("1000")), ("segment.ms", None)]);
        let observed = overrides(&[
            ("retention.ms", "5"),
            ("segment.ms", "77"),
            ("max.message.bytes", "2048"),
        ]);
        let a = plan(&s, Some((&desc(3), &observed))).expect("plan");
        let mut changes = BTreeMap::new();
        changes.insert("retention.ms".to_string(), Some("1000".to_string()));
        changes.insert("max.message.bytes".to_string(), None);
        assert_eq!(
            a,
            vec![
                TopicAction::GrowPartitions(8),
                TopicAction::AlterConfigs(changes)
            ]
        );
    }

    #[test]
    fn shrinking_is_refused() {
        let e = plan(&spec(2, &[]), Some((&desc(3), &BTreeMap::new()))).expect_err("refused");
        assert_eq!(
            e,
            PlanError::PartitionDecreaseNotSupported {
                current: 3,
                wanted: 2
            }
        );
        assert_eq!(e.reason(), "PartitionDecreaseNotSupported");
    }
}
