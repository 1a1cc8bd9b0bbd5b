//! The metadata image: everything the quorum agrees on, and the pure function that
//! applies a committed command to it.
//!
//! Every broker holds the same image once it has applied the same log prefix; the
//! controller's decisions (placement, elections, ISR changes) are computed from it and
//! committed as explicit commands, so applying stays deterministic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::acl::AclBinding;
use crate::scram::Credential;

/// A broker id (Kafka's `node.id`).
pub type BrokerId = i32;

/// Liveness of a registered broker as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerState {
    /// Heartbeating: may lead and be in ISRs.
    Active,
    /// Missed heartbeats (or never caught up): leads nothing, in no ISR.
    Fenced,
    /// Controlled shutdown in progress: leaderships are being moved away.
    ShuttingDown,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// Broker id.
    pub id: BrokerId,
    /// `host:port` Kafka clients connect to.
    pub kafka: String,
    /// `host:port` of the broker's gRPC endpoint.
    pub rpc: String,
    /// Rack, for rack-aware placement.
    pub rack: Option<String>,
    /// Incarnation: changes each time the process registers anew.
    pub incarnation: u64,
    /// Liveness.
    pub state: BrokerState,
}

/// Replicas, leader and ISR of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Assigned replicas; the first is the preferred leader.
    pub replicas: Vec<BrokerId>,
    /// In-sync replicas (always includes the leader while there is one).
    pub isr: Vec<BrokerId>,
    /// Current leader, or -1 when the partition is offline.
    pub leader: BrokerId,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every change of this state (ISR, leader, replicas).
    pub partition_epoch: i32,
    /// Eligible leader replicas: replicas that left the ISR while it was smaller than
    /// `min.insync.replicas`. The high watermark stands still while the ISR is that
    /// small, so they hold every committed record and may lead when no ISR member can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elr: Vec<BrokerId>,
    /// Replicas an ongoing reassignment adds (they are in `replicas`, catching up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding: Vec<BrokerId>,
    /// Replicas an ongoing reassignment removes once every target replica is in sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing: Vec<BrokerId>,
    /// The replica list before the ongoing reassignment, in its order (for a cancel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<BrokerId>,
}

impl PartitionState {
    /// A new partition led by its first live replica (in `live`), with those live replicas in sync.
    pub fn new(replicas: Vec<BrokerId>, live: impl Fn(BrokerId) -> bool) -> PartitionState {
        let isr: Vec<BrokerId> = replicas.iter().copied().filter(|&b| live(b)).collect();
        PartitionState {
            leader: isr.first().copied().unwrap_or(-1),
            isr,
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            elr: Vec::new(),
            adding: Vec::new(),
            removing: Vec::new(),
            before: Vec::new(),
        }
    }

    /// Whether a reassignment is in progress.
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas a reassignment moves to (the replicas when none is in progress).
    pub fn target(&self) -> Vec<BrokerId> {
        minus(&self.replicas, &self.removing)
    }

    /// The replicas before the reassignment in progress (the replicas when none is).
    pub fn original(&self) -> Vec<BrokerId> {
        if self.before.is_empty() {
            minus(&self.replicas, &self.adding)
        } else {
            self.before.clone()
        }
    }
}

/// `list` without the members of `drop`, order kept.
pub fn minus(list: &[BrokerId], drop: &[BrokerId]) -> Vec<BrokerId> {
    list.iter().copied().filter(|b| !drop.contains(b)).collect()
}

/// A topic in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    /// Topic id.
    pub id: Uuid,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
    /// Partitions by index.
    pub partitions: Vec<PartitionState>,
}

/// The replicated cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Cluster id, set once by the first controller.
    pub cluster_id: Option<String>,
    /// Registered brokers.
    pub brokers: BTreeMap<BrokerId, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicImage>,
    /// First producer id not yet handed out.
    pub next_producer_id: i64,
    /// Dynamic broker configs by resource: `""` is the cluster-wide default, `"<id>"` one broker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Client quotas by entity.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "crate::quota::as_pairs"
    )]
    pub client_quotas: crate::quota::Quotas,
    /// Group config overrides by group id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Brokers being decommissioned: no new replicas go there, theirs move away.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub decommissioning: BTreeSet<BrokerId>,
    /// Brokers in maintenance: they lead nothing while another replica can.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub maintenance: BTreeSet<BrokerId>,
    /// Brokers whose maintenance ends when they register anew (entered by a Pod's
    /// `preStop` hook: it must not outlive the restart it prepares).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub maintenance_until_restart: BTreeSet<BrokerId>,
    /// Continuous balancing switched off cluster-wide.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub balancer_off: bool,
    /// Access control lists.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub acls: BTreeSet<AclBinding>,
    /// SCRAM credentials by user and mechanism.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scram: BTreeMap<String, BTreeMap<i8, Credential>>,
}

/// A change to the image, committed through the quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id (ignored once set).
    InitCluster {
        /// Cluster id.
        cluster_id: String,
    },
    /// Adds or updates a broker registration.
    RegisterBroker(BrokerInfo),
    /// Changes a broker's liveness.
    SetBrokerState {
        /// Broker.
        id: BrokerId,
        /// New state.
        state: BrokerState,
    },
    /// Creates a topic with explicit partition states.
    CreateTopic {
        /// Name.
        name: String,
        /// Id.
        id: Uuid,
        /// Config overrides.
        configs: BTreeMap<String, String>,
        /// Partition states by index.
        partitions: Vec<PartitionState>,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Appends partitions to a topic.
    AddPartitions {
        /// Topic name.
        name: String,
        /// New partitions, in index order after the existing ones.
        partitions: Vec<PartitionState>,
    },
    /// Replaces a topic's config overrides.
    SetTopicConfigs {
        /// Topic name.
        name: String,
        /// New overrides.
        configs: BTreeMap<String, String>,
    },
    /// Replaces the dynamic configs of a BROKER resource (`""`: cluster-wide default).
    SetBrokerConfigs {
        /// Resource name.
        resource: String,
        /// New dynamic configs (empty: none).
        configs: BTreeMap<String, String>,
    },
    /// Alters client quotas, entity by entity (each alteration validated).
    AlterClientQuotas(Vec<(crate::quota::Entity, Vec<crate::quota::Op>)>),
    /// Replaces a group's config overrides.
    SetGroupConfigs {
        /// Group id.
        group: String,
        /// New overrides (empty: none).
        configs: BTreeMap<String, String>,
    },
    /// Replaces a partition's state if its partition epoch is still `expected_epoch`.
    ChangePartition {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// Partition epoch the change was computed from.
        expected_epoch: i32,
        /// New state (its partition epoch is set by apply).
        state: PartitionState,
    },
    /// Reserves `count` producer ids; the reply carries the first.
    AllocateProducerIds {
        /// How many.
        count: i64,
    },
    /// Starts (`on`) or cancels the decommissioning of a registered broker.
    SetDecommissioning {
        /// Broker.
        id: BrokerId,
        /// Decommissioning from now on.
        on: bool,
    },
    /// Starts (`on`) or ends maintenance of a registered broker.
    SetMaintenance {
        /// Broker.
        id: BrokerId,
        /// In maintenance from now on.
        on: bool,
        /// Only until the broker registers anew.
        #[serde(default)]
        until_restart: bool,
    },
    /// Switches continuous balancing on or off.
    SetBalancer {
        /// Balancing on.
        on: bool,
    },
    /// Removes a broker that holds no replica from the cluster.
    UnregisterBroker {
        /// Broker.
        id: BrokerId,
    },
    /// Adds ACLs (already present ones stay once).
    CreateAcls(Vec<AclBinding>),
    /// Removes ACLs.
    DeleteAcls(Vec<AclBinding>),
    /// Removes and adds (or replaces) SCRAM credentials: `(user, mechanism)` and
    /// `(user, mechanism, credential)`.
    AlterScram {
        /// Credentials removed.
        deletions: Vec<(String, i8)>,
        /// Credentials added or replaced.
        upsertions: Vec<(String, i8, Credential)>,
    },
    /// Several commands applied in order, as one log entry.
    Batch(Vec<Command>),
}

/// Outcome of applying a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandReply {
    /// Applied.
    Done,
    /// Producer ids `[first, first + count)` reserved.
    ProducerIds {
        /// First id.
        first: i64,
    },
    /// Not applied (the image changed since the command was computed, or it was invalid).
    Rejected(String),
}

impl Image {
    /// Applies a committed command. Invalid commands change nothing and say why.
    pub fn apply(&mut self, cmd: &Command) -> CommandReply {
        match cmd {
            Command::InitCluster { cluster_id } => {
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(cluster_id.clone());
                }
            }
            Command::RegisterBroker(info) => {
                self.brokers.insert(info.id, info.clone());
            }
            Command::SetDecommissioning { id, on } | Command::SetMaintenance { id, on, .. } => {
                if !self.brokers.contains_key(id) {
                    return CommandReply::Rejected(format!("broker {id} is not registered"));
                }
                let set = match cmd {
                    Command::SetDecommissioning { .. } => &mut self.decommissioning,
                    _ => &mut self.maintenance,
                };
                if *on {
                    set.insert(*id);
                } else {
                    set.remove(id);
                }
                if let Command::SetMaintenance { until_restart, .. } = cmd {
                    if *on && *until_restart {
                        self.maintenance_until_restart.insert(*id);
                    } else {
                        self.maintenance_until_restart.remove(id);
                    }
                }
            }
            Command::SetBalancer { on } => self.balancer_off = !on,
            Command::UnregisterBroker { id } => {
                if self.partitions().any(|(_, _, p)| p.replicas.contains(id)) {
                    return CommandReply::Rejected(format!("broker {id} still holds replicas"));
                }
                self.brokers.remove(id);
                self.decommissioning.remove(id);
                self.maintenance.remove(id);
                self.maintenance_until_restart.remove(id);
            }
            Command::SetBrokerState { id, state } => match self.brokers.get_mut(id) {
                Some(b) => b.state = *state,
                None => return CommandReply::Rejected(format!("broker {id} is not registered")),
            },
            Command::CreateTopic {
                name,
                id,
                configs,
                partitions,
            } => {
                if self.topics.contains_key(name) {
                    return CommandReply::Rejected(format!("topic '{name}' already exists"));
                }
                self.topics.insert(
                    name.clone(),
                    TopicImage {
                        id: *id,
                        configs: configs.clone(),
                        partitions: partitions.clone(),
                    },
                );
            }
            Command::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return CommandReply::Rejected(format!("topic '{name}' does not exist"));
                }
            }
            Command::AddPartitions { name, partitions } => match self.topics.get_mut(name) {
                Some(t) => t.partitions.extend(partitions.iter().cloned()),
                None => return CommandReply::Rejected(format!("topic '{name}' does not exist")),
            },
            Command::SetTopicConfigs { name, configs } => match self.topics.get_mut(name) {
                Some(t) => t.configs = configs.clone(),
                None => return CommandReply::Rejected(format!("topic '{name}' does not exist")),
            },
            Command::CreateAcls(acls) => self.acls.extend(acls.iter().cloned()),
            Command::AlterScram {
                deletions,
                upsertions,
            } => {
                for (user, mechanism) in deletions {
                    if let Some(m) = self.scram.get_mut(user) {
                        m.remove(mechanism);
                        if m.is_empty() {
                            self.scram.remove(user);
                        }
                    }
                }
                for (user, mechanism, c) in upsertions {
                    self.scram
                        .entry(user.clone())
                        .or_default()
                        .insert(*mechanism, c.clone());
                }
            }
            Command::DeleteAcls(acls) => {
                for a in acls {
                    self.acls.remove(a);
                }
            }
            Command::SetBrokerConfigs { resource, configs } => {
                if configs.is_empty() {
                    self.broker_configs.remove(resource);
                } else {
                    self.broker_configs
                        .insert(resource.clone(), configs.clone());
                }
            }
            Command::AlterClientQuotas(alterations) => {
                for (entity, ops) in alterations {
                    crate::quota::apply(&mut self.client_quotas, entity, ops);
                }
            }
            Command::SetGroupConfigs { group, configs } => {
                if configs.is_empty() {
                    self.group_configs.remove(group);
                } else {
                    self.group_configs.insert(group.clone(), configs.clone());
                }
            }
            Command::ChangePartition {
                topic,
                partition,
                expected_epoch,
                state,
            } => {
                let Some(p) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                else {
                    return CommandReply::Rejected(format!("{topic}-{partition} does not exist"));
                };
                if p.partition_epoch != *expected_epoch {
                    return CommandReply::Rejected(format!(
                        "{topic}-{partition}: partition epoch is {}, not {expected_epoch}",
                        p.partition_epoch
                    ));
                }
                let mut next = state.clone();
                next.partition_epoch = p.partition_epoch + 1;
                *p = next;
            }
            Command::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id = first.saturating_add((*count).max(1));
                return CommandReply::ProducerIds { first };
            }
            Command::Batch(cmds) => {
                // All or nothing: a rejected part leaves the image as it was.
                let mut next = self.clone();
                let mut last = CommandReply::Done;
                for c in cmds {
                    last = next.apply(c);
                    if let CommandReply::Rejected(_) = last {
                        return last;
                    }
                }
                *self = next;
                return last;
            }
        }
        CommandReply::Done
    }

    /// Whether a broker may lead and count in ISRs.
    pub fn is_active(&self, id: BrokerId) -> bool {
        self.brokers
            .get(&id)
            .is_some_and(|b| b.state == BrokerState::Active)
    }

    /// A partition's state.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionState> {
        self.topics.get(topic).and_then(|t| {
            usize::try_from(partition)
                .ok()
                .and_then(|i| t.partitions.get(i))
        })
    }

    /// Every partition as `(topic, index, state)`.
    pub fn partitions(&self) -> impl Iterator<Item = (&str, i32, &PartitionState)> {
        self.topics.iter().flat_map(|(name, t)| {
            t.partitions
                .iter()
                .enumerate()
                .map(move |(i, p)| (name.as_str(), i as i32, p))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn broker(id: BrokerId, rack: Option<&str>) -> BrokerInfo {
        BrokerInfo {
            id,
            kafka: format!("127.0.0.1:{}", 9000 + id),
            rpc: format!("127.0.0.1:{}", 9100 + id),
            rack: rack.map(str::to_string),
            incarnation: 1,
            state: BrokerState::Active,
        }
    }

    pub(crate) fn image_with(brokers: &[BrokerId]) -> Image {
        let mut img = Image::default();
        for &b in brokers {
            img.apply(&Command::RegisterBroker(broker(b, None)));
        }
        img
    }

    #[test]
    fn change_partition_needs_the_current_epoch() {
        let mut img = image_with(&[1, 2, 3]);
        let p = PartitionState::new(vec![1, 2, 3], |_| true);
        img.apply(&Command::CreateTopic {
            name: "t".into(),
            id: Uuid::nil(),
            configs: BTreeMap::new(),
            partitions: vec![p.clone()],
        });
        let shrunk = PartitionState {
            isr: vec![1, 2],
            ..p.clone()
        };
        let change = Command::ChangePartition {
            topic: "t".into(),
            partition: 0,
            expected_epoch: 0,
            state: shrunk.clone(),
        };
        assert_eq!(img.apply(&change), CommandReply::Done);
        assert_eq!(img.partition("t", 0).unwrap().isr, vec![1, 2]);
        assert_eq!(img.partition("t", 0).unwrap().partition_epoch, 1);
        // The same change computed from the old epoch is stale now.
        assert!(matches!(img.apply(&change), CommandReply::Rejected(_)));
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut img = image_with(&[1]);
        let before = img.clone();
        let reply = img.apply(&Command::Batch(vec![
            Command::SetBrokerState {
                id: 1,
                state: BrokerState::Fenced,
            },
            Command::DeleteTopic {
                name: "nope".into(),
            },
        ]));
        assert!(matches!(reply, CommandReply::Rejected(_)));
        assert_eq!(img, before);
    }

    #[test]
    fn producer_ids_are_never_handed_out_twice() {
        let mut img = Image::default();
        let a = img.apply(&Command::AllocateProducerIds { count: 1000 });
        let b = img.apply(&Command::AllocateProducerIds { count: 1000 });
        assert_eq!(a, CommandReply::ProducerIds { first: 0 });
        assert_eq!(b, CommandReply::ProducerIds { first: 1000 });
    }

    #[test]
    fn maintenance_until_restart_is_a_flag_that_plain_maintenance_and_leaving_clear() {
        let mut img = image_with(&[1, 2]);
        let set = |on, until_restart| Command::SetMaintenance {
            id: 1,
            on,
            until_restart,
        };
        img.apply(&set(true, true));
        assert!(img.maintenance.contains(&1) && img.maintenance_until_restart.contains(&1));
        // Asked for without a limit: it stays across restarts from now on.
        img.apply(&set(true, false));
        assert!(img.maintenance.contains(&1) && img.maintenance_until_restart.is_empty());
        img.apply(&set(true, true));
        img.apply(&set(false, false));
        assert!(img.maintenance.is_empty() && img.maintenance_until_restart.is_empty());
        img.apply(&set(true, true));
        img.apply(&Command::UnregisterBroker { id: 1 });
        assert!(img.maintenance.is_empty() && img.maintenance_until_restart.is_empty());
        // Logs written before the flag existed still read.
        let old: Command =
            serde_json::from_str(r#"{"SetMaintenance":{"id":2,"on":true}}"#).expect("old entry");
        assert_eq!(
            old,
            Command::SetMaintenance {
                id: 2,
                on: true,
                until_restart: false
            }
        );
    }

    #[test]
    fn quotas_and_group_configs_survive_the_snapshot_encoding() {
        let mut img = Image::default();
        let entity: crate::quota::Entity = [
            ("user".to_string(), Some("alice".to_string())),
            ("client-id".to_string(), None),
        ]
        .into();
        let op = (
            "producer_byte_rate".to_string(),
            Some(crate::quota::Value(1024.0)),
        );
        img.apply(&Command::AlterClientQuotas(vec![(entity, vec![op])]));
        img.apply(&Command::SetGroupConfigs {
            group: "g".into(),
            configs: [(
                "consumer.session.timeout.ms".to_string(),
                "50000".to_string(),
            )]
            .into(),
        });
        let text = serde_json::to_string(&img).expect("encodes");
        let back: Image = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, img);
        assert_eq!(back.client_quotas.len(), 1);
    }

    #[test]
    fn new_partition_skips_dead_replicas_for_leader_and_isr() {
        let p = PartitionState::new(vec![3, 1, 2], |b| b != 3);
        assert_eq!(p.leader, 1);
        assert_eq!(p.isr, vec![1, 2]);
    }
}
