//! The active controller: runs on the quorum leader. It turns requests (topic changes,
//! ISR changes, heartbeats) into commands decided by [`super::decide`], commits them,
//! fences brokers whose heartbeats stop, and moves leadership back to preferred replicas.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::image::{
    BrokerId, BrokerInfo, BrokerState, Command, CommandReply, Image, PartitionState,
};
use super::operations::Sizes;
use super::{decide, operations, reassign};
use super::{Import, Raft};
use crate::acl::{AclBinding, AclFilter};
use crate::config::Config;
use crate::group::{OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::metadata::{names::validate_topic_name, Catalog};
use crate::scram::Credential;

/// Kinds of moves the controller starts: replicas spread over racks, replicas balanced,
/// preferred leaderships balanced, replicas off decommissioning brokers.
pub const MOVE_KINDS: [&str; 5] = ["rack", "replicas", "leaders", "decommission", "bytes"];

/// A request for the active controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Broker liveness (and registration on first contact or a new incarnation).
    Heartbeat {
        /// The broker as it runs now.
        broker: BrokerInfo,
        /// Asks for a controlled shutdown: move its leaderships away.
        shutting_down: bool,
        /// Bytes of the broker's replicas (sent every few seconds, not every beat).
        #[serde(default)]
        sizes: Option<Sizes>,
    },
    /// The partition sizes the active controller knows from brokers' reports.
    PartitionSizes,
    /// Join the quorum as a non-voting member.
    AddLearner {
        /// Broker id.
        id: BrokerId,
        /// RPC address.
        rpc: String,
    },
    /// CreateTopics.
    CreateTopic {
        /// Name.
        name: String,
        /// Partition count (-1: broker default, or the assignment's length).
        partitions: i32,
        /// Replication factor (-1: broker default).
        replication_factor: i16,
        /// Explicit replica assignment per partition (empty: place automatically).
        assignment: Vec<Vec<BrokerId>>,
        /// Config overrides.
        configs: BTreeMap<String, String>,
        /// Check only.
        validate_only: bool,
    },
    /// DeleteTopics.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// CreatePartitions.
    AddPartitions {
        /// Topic.
        name: String,
        /// New total count.
        count: i32,
        /// Explicit assignment of the new partitions (empty: automatic).
        assignment: Vec<Vec<BrokerId>>,
        /// Check only.
        validate_only: bool,
    },
    /// Replace a topic's config overrides.
    SetTopicConfigs {
        /// Topic.
        name: String,
        /// New overrides.
        configs: BTreeMap<String, String>,
    },
    /// Replace the dynamic configs of a BROKER resource (`""`: cluster-wide default).
    SetBrokerConfigs {
        /// Resource name.
        resource: String,
        /// New dynamic configs.
        configs: BTreeMap<String, String>,
    },
    /// AlterClientQuotas (each entity's alteration already validated).
    AlterClientQuotas(Vec<(crate::quota::Entity, Vec<crate::quota::Op>)>),
    /// Replace a group's config overrides.
    SetGroupConfigs {
        /// Group id.
        group: String,
        /// New overrides.
        configs: BTreeMap<String, String>,
    },
    /// A partition leader asks to change its ISR (Kafka's AlterPartition).
    AlterIsr {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Requesting leader.
        leader: BrokerId,
        /// Its leader epoch.
        leader_epoch: i32,
        /// The partition epoch it knows.
        partition_epoch: i32,
        /// Proposed ISR.
        isr: Vec<BrokerId>,
    },
    /// Reserve a block of producer ids.
    AllocateProducerIds,
    /// A broker could not connect to another one (its RPC port refused the connection).
    ReportUnreachable {
        /// The broker that could not be reached.
        broker: BrokerId,
    },
    /// AlterPartitionReassignments: a target replica list per partition (`None` cancels).
    Reassign {
        /// Whether a target may have another length than the original replica list.
        allow_rf_change: bool,
        /// `(topic, partition, target)`.
        partitions: Vec<(String, i32, Option<Vec<BrokerId>>)>,
    },
    /// Starts (`on`) or cancels (recommission) the decommissioning of a broker.
    Decommission {
        /// Broker.
        id: BrokerId,
        /// Decommission (true) or recommission (false).
        on: bool,
    },
    /// Starts (`on`) or ends maintenance of a broker.
    Maintenance {
        /// Broker.
        id: BrokerId,
        /// Start (true) or end (false).
        on: bool,
        /// End it by itself when the broker registers anew.
        #[serde(default)]
        until_restart: bool,
    },
    /// Switches continuous balancing on or off.
    Balancer {
        /// On.
        on: bool,
    },
    /// CreateAcls (bindings already validated).
    CreateAcls(Vec<AclBinding>),
    /// DeleteAcls: removes every binding each filter selects.
    DeleteAcls(Vec<AclFilter>),
    /// AlterUserScramCredentials (already validated, one operation per user).
    AlterScram {
        /// `(user, mechanism)` to remove.
        deletions: Vec<(String, i8)>,
        /// `(user, mechanism, credential)` to add or replace.
        upsertions: Vec<(String, i8, Credential)>,
    },
    /// Elect leaders: preferred replicas, or (unclean) any live replica of offline partitions.
    ElectLeaders {
        /// Unclean instead of preferred.
        unclean: bool,
        /// Partitions (none: all).
        partitions: Option<Vec<(String, i32)>>,
    },
}

impl ControlRequest {
    /// The topic a request creates, deletes or grows.
    fn topic(&self) -> Option<&str> {
        match self {
            ControlRequest::CreateTopic { name, .. }
            | ControlRequest::DeleteTopic { name }
            | ControlRequest::AddPartitions { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// The controller's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlReply {
    /// Committed at this log index.
    Done {
        /// Raft log index.
        log_index: u64,
    },
    /// Topic created (or would be, when validating only).
    Created {
        /// Raft log index (0 when validating only).
        log_index: u64,
        /// Topic id.
        id: Uuid,
        /// Partitions.
        partitions: i32,
        /// Replication factor.
        replication_factor: i16,
    },
    /// Heartbeat answer.
    Heartbeat {
        /// The broker's state now.
        state: BrokerState,
        /// Partitions it leads.
        leaders: usize,
    },
    /// Producer ids `[first, first + count)`.
    ProducerIds {
        /// First id.
        first: i64,
        /// How many.
        count: i64,
    },
    /// Per-partition results of an election (Kafka error codes).
    Elected(Vec<(String, i32, i16)>),
    /// Per-partition results of a reassignment request (Kafka error code and message).
    Reassigned(Vec<(String, i32, i16, Option<String>)>),
    /// Partition sizes.
    PartitionSizes(Sizes),
    /// DeleteAcls done.
    AclsDeleted {
        /// Raft log index of the change (0: nothing changed).
        log_index: u64,
        /// The bindings each filter removed, in filter order.
        deleted: Vec<Vec<AclBinding>>,
    },
    /// AlterUserScramCredentials done.
    ScramAltered {
        /// Raft log index of the change (0: nothing changed).
        log_index: u64,
        /// Users whose alteration was refused: `(user, Kafka error code, message)`; the
        /// others were committed.
        refused: Vec<(String, i16, String)>,
    },
    /// Refused with a Kafka error code.
    Error {
        /// Kafka error code.
        code: i16,
        /// Message.
        message: String,
    },
    /// This broker is not the active controller.
    NotController,
}

fn refuse(code: i16, message: impl Into<String>) -> ControlReply {
    ControlReply::Error {
        code,
        message: message.into(),
    }
}

/// Producer ids reserved per request.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// Timings the controller works with.
#[derive(Debug, Clone)]
struct Timings {
    session_timeout: Duration,
    commit_timeout: Duration,
    tick: Duration,
    rebalance: Option<(Duration, u32)>,
}

/// The controller logic of one broker; acts only while its Raft node leads.
pub struct Controller {
    node_id: BrokerId,
    raft: Raft,
    image: watch::Receiver<Arc<Image>>,
    timings: Timings,
    default_partitions: i32,
    default_rf: i16,
    offsets_rf: i16,
    /// `min.insync.replicas` of topics that do not set it.
    default_min_isr: i32,
    /// Most reassignments decommissioning and balancing run at once.
    max_moves: usize,
    /// Balancer tolerance, percent of the mean replica count.
    balance_tolerance: u32,
    last_seen: Mutex<HashMap<BrokerId, Instant>>,
    /// Partition sizes from brokers' reports.
    sizes: Mutex<Sizes>,
    /// Moves started while this broker was the active controller, by `MOVE_KINDS`.
    pub moves: [std::sync::atomic::AtomicU64; MOVE_KINDS.len()],
    /// Serialises decide-and-commit so decisions see every earlier commit.
    lock: tokio::sync::Mutex<()>,
    import: Mutex<Option<Import>>,
}

impl Controller {
    pub(super) fn new(
        config: &Config,
        raft: Raft,
        image: watch::Receiver<Arc<Image>>,
        import: Import,
    ) -> Controller {
        Controller {
            node_id: config.node_id,
            raft,
            image,
            timings: Timings {
                session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
                commit_timeout: Duration::from_millis(config.raft_election_timeout_ms * 4)
                    .max(Duration::from_secs(2)),
                tick: Duration::from_millis(config.broker_heartbeat_interval_ms / 2)
                    .max(Duration::from_millis(20)),
                rebalance: config.auto_leader_rebalance_enable.then(|| {
                    (
                        Duration::from_secs(config.leader_imbalance_check_interval_seconds),
                        config.leader_imbalance_per_broker_percentage,
                    )
                }),
            },
            default_partitions: config.num_partitions,
            default_rf: config.default_replication_factor,
            offsets_rf: config.offsets_topic_replication_factor,
            default_min_isr: config.min_insync_replicas,
            max_moves: config.max_concurrent_moves.max(1),
            balance_tolerance: config.balancer_tolerance_percent,
            last_seen: Mutex::default(),
            sizes: Mutex::default(),
            moves: Default::default(),
            lock: tokio::sync::Mutex::new(()),
            import: Mutex::new(Some(import)),
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id as u64)
    }

    fn image(&self) -> Arc<Image> {
        self.image.borrow().clone()
    }

    /// Commits a command; the caller holds `lock` when the command was decided from the image.
    async fn commit(&self, cmd: Command) -> Result<(u64, CommandReply), ControlReply> {
        // Without a quorum a write never commits: give up so callers can answer.
        match tokio::time::timeout(self.timings.commit_timeout, self.raft.client_write(cmd)).await {
            Ok(Ok(r)) => Ok((r.log_id.index, r.data)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(ControlReply::NotController)
            }
            Ok(Err(e)) => Err(refuse(E::UnknownServerError.code(), e.to_string())),
            Err(_) => Err(refuse(
                E::RequestTimedOut.code(),
                "metadata change not committed in time (is a majority of the voters up?)",
            )),
        }
    }

    /// Commits `cmd` unless it would change nothing (`unchanged`); the log index of the
    /// change, 0 when nothing was committed.
    async fn commit_unless(&self, unchanged: bool, cmd: Command) -> Result<u64, ControlReply> {
        if unchanged {
            return Ok(0);
        }
        self.commit(cmd).await.map(|(log_index, _)| log_index)
    }

    async fn commit_done(&self, cmd: Command) -> ControlReply {
        match self.commit(cmd).await {
            Ok((log_index, CommandReply::Done)) => ControlReply::Done { log_index },
            Ok((_, CommandReply::Rejected(why))) => refuse(E::InvalidRequest.code(), why),
            Ok((log_index, _)) => ControlReply::Done { log_index },
            Err(r) => r,
        }
    }

    /// Handles a request on the leader (anything else answers NotController).
    pub async fn handle(&self, req: ControlRequest) -> ControlReply {
        if !self.is_leader() {
            return ControlReply::NotController;
        }
        let _g = self.lock.lock().await;
        if self.image().cluster_id.is_none() {
            // A new quorum: set it up before the first change is decided.
            self.initialize().await;
        }
        let img = self.image();
        if let Some(name) = req.topic().filter(|n| *n == OFFSETS_TOPIC) {
            return refuse(
                E::InvalidRequest.code(),
                format!("{name} is internal: the cluster creates and manages it"),
            );
        }
        match req {
            ControlRequest::Heartbeat {
                broker,
                shutting_down,
                sizes,
            } => {
                if let Some(sizes) = sizes {
                    operations::note_sizes(&mut self.lock_sizes(), &img, broker.id, sizes);
                }
                self.heartbeat(&img, broker, shutting_down).await
            }
            ControlRequest::PartitionSizes => {
                let mut known = self.lock_sizes();
                operations::note_sizes(&mut known, &img, self.node_id, Sizes::new());
                ControlReply::PartitionSizes(known.clone())
            }
            ControlRequest::AddLearner { id, rpc } => {
                match self
                    .raft
                    .add_learner(id as u64, BasicNode { addr: rpc }, false)
                    .await
                {
                    Ok(r) => ControlReply::Done {
                        log_index: r.log_id.index,
                    },
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        ControlReply::NotController
                    }
                    Err(e) => refuse(E::UnknownServerError.code(), e.to_string()),
                }
            }
            ControlRequest::CreateTopic {
                name,
                partitions,
                replication_factor,
                assignment,
                configs,
                validate_only,
            } => {
                self.create_topic(
                    &img,
                    name,
                    partitions,
                    replication_factor,
                    assignment,
                    configs,
                    validate_only,
                )
                .await
            }
            ControlRequest::DeleteTopic { name } => {
                if !img.topics.contains_key(&name) {
                    return refuse(
                        E::UnknownTopicOrPartition.code(),
                        format!("topic '{name}' does not exist"),
                    );
                }
                self.commit_done(Command::DeleteTopic { name }).await
            }
            ControlRequest::AddPartitions {
                name,
                count,
                assignment,
                validate_only,
            } => {
                self.add_partitions(&img, name, count, assignment, validate_only)
                    .await
            }
            ControlRequest::SetTopicConfigs { name, configs } => {
                if !img.topics.contains_key(&name) {
                    return refuse(
                        E::UnknownTopicOrPartition.code(),
                        format!("topic '{name}' does not exist"),
                    );
                }
                if let Err(e) = Catalog::validate_configs(&configs) {
                    return refuse(E::InvalidConfig.code(), e.to_string());
                }
                self.commit_done(Command::SetTopicConfigs { name, configs })
                    .await
            }
            ControlRequest::SetBrokerConfigs { resource, configs } => {
                let checked = configs.iter().try_for_each(|(k, v)| {
                    crate::configs::broker::check_dynamic(&resource, k, Some(v))
                });
                if let Err(msg) = checked {
                    return refuse(E::InvalidConfig.code(), msg);
                }
                self.commit_done(Command::SetBrokerConfigs { resource, configs })
                    .await
            }
            ControlRequest::AlterClientQuotas(alterations) => {
                let checked = alterations
                    .iter()
                    .try_for_each(|(entity, ops)| crate::quota::validate(entity, ops));
                if let Err(msg) = checked {
                    return refuse(E::InvalidRequest.code(), msg);
                }
                self.commit_done(Command::AlterClientQuotas(alterations))
                    .await
            }
            ControlRequest::SetGroupConfigs { group, configs } => {
                if let Err(msg) = crate::configs::group::validate_set(&configs) {
                    return refuse(E::InvalidConfig.code(), msg);
                }
                self.commit_done(Command::SetGroupConfigs { group, configs })
                    .await
            }
            ControlRequest::CreateAcls(acls) => self.commit_done(Command::CreateAcls(acls)).await,
            ControlRequest::DeleteAcls(filters) => {
                let matched: Vec<Vec<AclBinding>> = filters
                    .iter()
                    .map(|f| img.acls.iter().filter(|b| f.matches(b)).cloned().collect())
                    .collect();
                let all: BTreeSet<AclBinding> = matched.iter().flatten().cloned().collect();
                let unchanged = all.is_empty();
                let cmd = Command::DeleteAcls(all.into_iter().collect());
                let log_index = match self.commit_unless(unchanged, cmd).await {
                    Ok(i) => i,
                    Err(r) => return r,
                };
                ControlReply::AclsDeleted {
                    log_index,
                    deleted: matched,
                }
            }
            ControlRequest::AlterScram {
                mut deletions,
                upsertions,
            } => {
                let mut refused = Vec::new();
                deletions.retain(|(user, mechanism)| {
                    let known = img
                        .scram
                        .get(user)
                        .is_some_and(|m| m.contains_key(mechanism));
                    if !known {
                        refused.push((
                            user.clone(),
                            E::ResourceNotFound.code(),
                            "Attempt to delete a user credential that does not exist".into(),
                        ));
                    }
                    known
                });
                let unchanged = deletions.is_empty() && upsertions.is_empty();
                let cmd = Command::AlterScram {
                    deletions,
                    upsertions,
                };
                let log_index = match self.commit_unless(unchanged, cmd).await {
                    Ok(i) => i,
                    Err(r) => return r,
                };
                ControlReply::ScramAltered { log_index, refused }
            }
            ControlRequest::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => match decide::check_isr_change(
                &img,
                &decide::IsrRequest {
                    topic: &topic,
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    isr: &isr,
                },
                self.min_isr(&img, &topic),
            ) {
                Ok(cmd) => {
                    let reply = self.commit_done(cmd).await;
                    // A replica joining the ISR may be the last a reassignment waits for.
                    self.complete_reassignments().await;
                    reply
                }
                Err((code, message)) => refuse(code, message),
            },
            ControlRequest::Decommission { id, on } => self.decommission(&img, id, on).await,
            ControlRequest::Maintenance {
                id,
                on,
                until_restart,
            } => self.maintenance(&img, id, on, until_restart).await,
            ControlRequest::Balancer { on } => {
                let reply = self.commit_done(Command::SetBalancer { on }).await;
                self.run_operations().await;
                reply
            }
            ControlRequest::Reassign {
                allow_rf_change,
                partitions,
            } => self.reassign(&img, allow_rf_change, partitions).await,
            ControlRequest::ReportUnreachable { broker } => self.unreachable(&img, broker).await,
            ControlRequest::AllocateProducerIds => match self
                .commit(Command::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })
                .await
            {
                Ok((_, CommandReply::ProducerIds { first })) => ControlReply::ProducerIds {
                    first,
                    count: PRODUCER_ID_BLOCK,
                },
                Ok((_, other)) => refuse(E::UnknownServerError.code(), format!("{other:?}")),
                Err(r) => r,
            },
            ControlRequest::ElectLeaders {
                unclean,
                partitions,
            } => self.elect_leaders(&img, unclean, partitions).await,
        }
    }

    fn lock_sizes(&self) -> std::sync::MutexGuard<'_, Sizes> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A topic's `min.insync.replicas`.
    fn min_isr(&self, img: &Image, topic: &str) -> usize {
        topic_config(img, topic, "min.insync.replicas")
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(self.default_min_isr)
            .max(1) as usize
    }

    async fn heartbeat(
        &self,
        img: &Image,
        broker: BrokerInfo,
        shutting_down: bool,
    ) -> ControlReply {
        let id = broker.id;
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        let mut next = img.clone();
        let mut cmds = Vec::new();
        let mut push = |next: &mut Image, c: Command| {
            next.apply(&c);
            cmds.push(c);
        };
        let known = img.brokers.get(&id);
        let same = known.is_some_and(|k| {
            k.kafka == broker.kafka
                && k.rpc == broker.rpc
                && k.rack == broker.rack
                && k.incarnation == broker.incarnation
        });
        if !same {
            // New broker or a new incarnation: whatever it led or was in sync for before
            // it restarted is re-decided, then it is active again.
            let fenced = BrokerInfo {
                state: BrokerState::Fenced,
                ..broker.clone()
            };
            push(&mut next, Command::RegisterBroker(fenced));
            if img.maintenance_until_restart.contains(&id) {
                push(
                    &mut next,
                    Command::SetMaintenance {
                        id,
                        on: false,
                        until_restart: false,
                    },
                );
            }
            for c in decide::on_fenced(&next.clone(), id, |t| unclean_enabled(&next, t)) {
                push(&mut next, c);
            }
        }
        let state = next
            .brokers
            .get(&id)
            .map(|b| b.state)
            .unwrap_or(BrokerState::Fenced);
        if shutting_down {
            if state != BrokerState::ShuttingDown {
                push(
                    &mut next,
                    Command::SetBrokerState {
                        id,
                        state: BrokerState::ShuttingDown,
                    },
                );
            }
            for c in decide::on_shutdown(&next.clone(), id) {
                push(&mut next, c);
            }
        } else if state != BrokerState::Active {
            push(
                &mut next,
                Command::SetBrokerState {
                    id,
                    state: BrokerState::Active,
                },
            );
            for c in decide::on_unfenced(&next.clone(), id) {
                push(&mut next, c);
            }
        }
        if !cmds.is_empty() {
            if let Err(r) = self.commit(Command::Batch(cmds)).await {
                return r;
            }
            // Before the broker serves clients, so their first group request finds it.
            self.create_offsets_topic_locked().await;
        }
        let img = self.image();
        ControlReply::Heartbeat {
            state: img
                .brokers
                .get(&id)
                .map(|b| b.state)
                .unwrap_or(BrokerState::Fenced),
            leaders: decide::leader_count(&img, id),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_topic(
        &self,
        img: &Image,
        name: String,
        partitions: i32,
        rf: i16,
        assignment: Vec<Vec<BrokerId>>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> ControlReply {
        if let Err(e) = validate_topic_name(&name) {
            return refuse(E::InvalidTopicException.code(), e);
        }
        if img.topics.contains_key(&name) {
            return refuse(
                E::TopicAlreadyExists.code(),
                format!("Topic '{name}' already exists."),
            );
        }
        if let Err(e) = Catalog::validate_configs(&configs) {
            return refuse(E::InvalidConfig.code(), e.to_string());
        }
        let assignment = if assignment.is_empty() {
            let count = if partitions == -1 {
                self.default_partitions
            } else {
                partitions
            };
            if !(1..=100_000).contains(&count) {
                return refuse(
                    E::InvalidPartitions.code(),
                    format!("number of partitions must be between 1 and 100000, got {count}"),
                );
            }
            let rf = if rf == -1 { self.default_rf } else { rf };
            let start = img.partitions().count();
            match decide::place(img, count, rf, start) {
                Ok(a) => a,
                Err(e) => return refuse(E::InvalidReplicationFactor.code(), e.to_string()),
            }
        } else {
            if partitions != -1 || rf != -1 {
                return refuse(
                    E::InvalidRequest.code(),
                    "partitions and replication factor must be -1 with an explicit assignment",
                );
            }
            if let Err(msg) = check_assignment(img, &assignment, None) {
                return refuse(E::InvalidReplicaAssignment.code(), msg);
            }
            assignment
        };
        let count = assignment.len() as i32;
        let rf = assignment.first().map(|r| r.len()).unwrap_or(0) as i16;
        let id = Uuid::new_v4();
        if validate_only {
            return ControlReply::Created {
                log_index: 0,
                id,
                partitions: count,
                replication_factor: rf,
            };
        }
        let parts = assignment
            .into_iter()
            .map(|r| PartitionState::new(r, |b| img.is_active(b)))
            .collect();
        match self
            .commit(Command::CreateTopic {
                name,
                id,
                configs,
                partitions: parts,
            })
            .await
        {
            Ok((log_index, CommandReply::Done)) => ControlReply::Created {
                log_index,
                id,
                partitions: count,
                replication_factor: rf,
            },
            Ok((_, CommandReply::Rejected(why))) => refuse(E::TopicAlreadyExists.code(), why),
            Ok((_, other)) => refuse(E::UnknownServerError.code(), format!("{other:?}")),
            Err(r) => r,
        }
    }

    async fn add_partitions(
        &self,
        img: &Image,
        name: String,
        count: i32,
        assignment: Vec<Vec<BrokerId>>,
        validate_only: bool,
    ) -> ControlReply {
        let Some(topic) = img.topics.get(&name) else {
            return refuse(
                E::UnknownTopicOrPartition.code(),
                format!("topic '{name}' does not exist"),
            );
        };
        let current = topic.partitions.len() as i32;
        if count <= current {
            return refuse(
                E::InvalidPartitions.code(),
                format!("Topic currently has {current} partitions, which is higher than the requested {count}."),
            );
        }
        if count > 100_000 {
            return refuse(E::InvalidPartitions.code(), "at most 100000 partitions");
        }
        let rf = topic
            .partitions
            .first()
            .map(|p| p.replicas.len())
            .unwrap_or(1);
        let new = if assignment.is_empty() {
            match decide::place(img, count - current, rf as i16, img.partitions().count()) {
                Ok(a) => a,
                Err(e) => return refuse(E::InvalidReplicationFactor.code(), e.to_string()),
            }
        } else {
            if assignment.len() as i32 != count - current {
                return refuse(
                    E::InvalidReplicaAssignment.code(),
                    format!(
                        "{} assignments given for {} new partitions",
                        assignment.len(),
                        count - current
                    ),
                );
            }
            if let Err(msg) = check_assignment(img, &assignment, Some(rf)) {
                return refuse(E::InvalidReplicaAssignment.code(), msg);
            }
            assignment
        };
        if validate_only {
            return ControlReply::Done { log_index: 0 };
        }
        let partitions = new
            .into_iter()
            .map(|r| PartitionState::new(r, |b| img.is_active(b)))
            .collect();
        self.commit_done(Command::AddPartitions { name, partitions })
            .await
    }

    async fn elect_leaders(
        &self,
        img: &Image,
        unclean: bool,
        wanted: Option<Vec<(String, i32)>>,
    ) -> ControlReply {
        let cmds: Vec<Command> = if unclean {
            img.partitions()
                .filter(|(_, _, p)| p.leader == -1)
                .filter_map(|(t, i, p)| {
                    Some(Command::ChangePartition {
                        topic: t.to_string(),
                        partition: i,
                        expected_epoch: p.partition_epoch,
                        state: decide::elect(img, p, -1, true)?,
                    })
                })
                .collect()
        } else {
            decide::preferred_elections(img, None)
        };
        let targets = |c: &Command| match c {
            Command::ChangePartition {
                topic, partition, ..
            } => Some((topic.clone(), *partition)),
            _ => None,
        };
        let chosen: Vec<Command> = cmds
            .into_iter()
            .filter(|c| match (&wanted, targets(c)) {
                (None, _) => true,
                (Some(w), Some(tp)) => w.contains(&tp),
                _ => false,
            })
            .collect();
        let elected: Vec<(String, i32)> = chosen.iter().filter_map(targets).collect();
        if !chosen.is_empty() {
            if let Err(r) = self.commit(Command::Batch(chosen)).await {
                return r;
            }
        }
        let img = self.image();
        let results = match wanted {
            None => elected.into_iter().map(|(t, p)| (t, p, 0)).collect(),
            Some(w) => w
                .into_iter()
                .map(|(t, p)| {
                    let code = match img.partition(&t, p) {
                        None => E::UnknownTopicOrPartition.code(),
                        Some(_) if elected.contains(&(t.clone(), p)) => 0,
                        Some(s) if !unclean && s.replicas.first() == Some(&s.leader) => {
                            E::ElectionNotNeeded.code()
                        }
                        Some(s) if unclean && s.leader != -1 => E::ElectionNotNeeded.code(),
                        Some(_) if unclean => E::EligibleLeadersNotAvailable.code(),
                        Some(_) => E::PreferredLeaderNotAvailable.code(),
                    };
                    (t, p, code)
                })
                .collect(),
        };
        ControlReply::Elected(results)
    }

    /// Starts or cancels reassignments; each partition succeeds or fails on its own.
    async fn reassign(
        &self,
        img: &Image,
        allow_rf_change: bool,
        wanted: Vec<(String, i32, Option<Vec<BrokerId>>)>,
    ) -> ControlReply {
        let mut next = img.clone();
        let mut cmds = Vec::new();
        let mut results = Vec::with_capacity(wanted.len());
        for (topic, partition, target) in wanted {
            let outcome = match next.partition(&topic, partition) {
                None => Err((
                    E::UnknownTopicOrPartition.code(),
                    format!("{topic}-{partition} does not exist"),
                )),
                Some(p) => match &target {
                    Some(t) if !allow_rf_change && t.len() != p.original().len() => Err((
                        E::InvalidReplicationFactor.code(),
                        format!(
                            "The replication factor is changed from {} to {} but \
                             allowReplicationFactorChange is false",
                            p.original().len(),
                            t.len()
                        ),
                    )),
                    Some(t) => reassign::start(&next, p, t),
                    None => reassign::cancel(&next, p),
                }
                .map(|state| decide::change(&topic, partition, p, state)),
            };
            match outcome {
                Ok(cmd) => {
                    next.apply(&cmd);
                    cmds.push(cmd);
                    results.push((topic, partition, 0, None));
                }
                Err((code, msg)) => results.push((topic, partition, code, Some(msg))),
            }
        }
        if !cmds.is_empty() {
            if let Err(r) = self.commit(Command::Batch(cmds)).await {
                return r;
            }
        }
        ControlReply::Reassigned(results)
    }

    /// Decommissions a broker (refused when it would lose availability) or recommissions
    /// it, cancelling the moves in flight off it.
    async fn decommission(&self, img: &Image, id: BrokerId, on: bool) -> ControlReply {
        if let Err(r) = registered(img, id) {
            return r;
        }
        let mut cmds = vec![Command::SetDecommissioning { id, on }];
        if on {
            if img.decommissioning.contains(&id) {
                return ControlReply::Done { log_index: 0 };
            }
            let voters: Vec<BrokerId> = {
                let m = self.raft.metrics().borrow().clone();
                m.membership_config
                    .membership()
                    .voter_ids()
                    .map(|v| v as BrokerId)
                    .collect()
            };
            if let Err(msg) = operations::check_decommission(img, id, &voters) {
                return refuse(E::InvalidRequest.code(), msg);
            }
        } else {
            cmds.extend(
                reassign::ongoing(img)
                    .filter(|(_, _, p)| p.removing.contains(&id))
                    .filter_map(|(t, i, p)| {
                        Some(decide::change(t, i, p, reassign::cancel(img, p).ok()?))
                    }),
            );
        }
        let reply = self.commit_done(Command::Batch(cmds)).await;
        self.run_operations().await;
        reply
    }

    /// Starts maintenance (leaderships move away at once) or ends it (the broker's
    /// preferred leaderships return).
    async fn maintenance(
        &self,
        img: &Image,
        id: BrokerId,
        on: bool,
        until_restart: bool,
    ) -> ControlReply {
        if let Err(r) = registered(img, id) {
            return r;
        }
        if on {
            if let Err(msg) = operations::check_maintenance(img, id) {
                return refuse(E::InvalidRequest.code(), msg);
            }
        }
        let mut next = img.clone();
        let first = Command::SetMaintenance {
            id,
            on,
            until_restart,
        };
        next.apply(&first);
        let mut cmds = vec![first];
        if on {
            cmds.extend(operations::maintenance_moves(&next));
        } else {
            cmds.extend(decide::preferred_elections(&next, None).into_iter().filter(
                |c| matches!(c, Command::ChangePartition { state, .. } if state.leader == id),
            ));
        }
        self.commit_done(Command::Batch(cmds)).await
    }

    /// One step of the operations in progress: leaderships off brokers in maintenance,
    /// moves off decommissioning brokers, completed reassignments, drained brokers
    /// removed, balancing moves. The caller holds `lock`.
    async fn run_operations(&self) {
        self.complete_reassignments().await;
        // Each step decides from the image the previous ones leave, so that one batch
        // never changes a partition twice from the same epoch.
        let mut next = (*self.image()).clone();
        let mut cmds = Vec::new();
        let mut take = |next: &mut Image, step: Vec<Command>| {
            for c in step {
                next.apply(&c);
                cmds.push(c);
            }
        };
        let mut started = [0u64; MOVE_KINDS.len()];
        let step = operations::maintenance_moves(&next);
        take(&mut next, step);
        let step = operations::decommission_moves(&next, self.max_moves);
        started[3] = step.len() as u64;
        take(&mut next, step);
        let step = operations::unregistrations(&next);
        take(&mut next, step);
        let step = operations::rack_moves(&next, self.max_moves);
        started[0] = step.len() as u64;
        take(&mut next, step);
        let step = operations::balance_moves(&next, self.balance_tolerance, self.max_moves);
        started[1] = step.len() as u64;
        take(&mut next, step);
        if started[1] == 0 {
            let sizes = self.lock_sizes().clone();
            let step =
                operations::byte_moves(&next, &sizes, self.balance_tolerance, self.max_moves);
            started[4] = step.len() as u64;
            take(&mut next, step);
        }
        let step = operations::leader_moves(&next, self.balance_tolerance);
        started[2] = step.len() as u64;
        take(&mut next, step);
        if !cmds.is_empty() {
            tracing::info!(changes = cmds.len(), ?started, "cluster operations step");
            let gone: BTreeSet<u64> = cmds
                .iter()
                .filter_map(|c| match c {
                    Command::UnregisterBroker { id } => u64::try_from(*id).ok(),
                    _ => None,
                })
                .collect();
            if self.commit(Command::Batch(cmds)).await.is_ok() {
                for (total, n) in self.moves.iter().zip(started) {
                    total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                self.remove_learners(gone).await;
            }
        }
    }

    /// Takes brokers that left the cluster out of the metadata quorum too, so the Raft
    /// leader stops replicating to them. Voters are never decommissioned; a broker that
    /// comes back under the same id asks to join again (`AddLearner`, under the same lock).
    async fn remove_learners(&self, ids: BTreeSet<u64>) {
        let learners: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .collect();
        let ids: BTreeSet<u64> = ids.intersection(&learners).copied().collect();
        if ids.is_empty() {
            return;
        }
        match self
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids.clone()), false)
            .await
        {
            Ok(_) => tracing::info!(?ids, "left the metadata quorum"),
            Err(e) => {
                tracing::warn!(?ids, error = %e, "could not take brokers out of the metadata quorum")
            }
        }
    }

    /// Commits the completion of every reassignment whose target replicas are in sync;
    /// the caller holds `lock`.
    async fn complete_reassignments(&self) {
        let cmds = reassign::completions(&self.image());
        if !cmds.is_empty() {
            tracing::info!(partitions = cmds.len(), "completing reassignments");
            let _ = self.commit(Command::Batch(cmds)).await;
        }
    }

    /// Timers of the active controller: fence brokers whose heartbeats stopped, set up a
    /// new quorum, balance leaders. Runs until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut was_leader = false;
        let mut next_rebalance = Instant::now();
        loop {
            let slept = Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(self.timings.tick) => {}
                _ = stop.changed() => return,
            }
            let leader = self.is_leader();
            // After this process was paused (SIGSTOP, a stalled machine) every heartbeat
            // looks old: give brokers a fresh session instead of fencing them all. Only
            // an oversleep counts: a slow step of this loop (a commit, a probe) must not
            // renew the grace of a broker that is really gone, or it is never fenced.
            let paused = slept.elapsed() > self.timings.tick + self.timings.session_timeout / 2;
            if leader && (!was_leader || paused) {
                self.on_elected().await;
                if let Some((every, _)) = self.timings.rebalance {
                    next_rebalance = Instant::now() + every;
                }
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            self.fence_silent_brokers().await;
            self.create_offsets_topic().await;
            {
                let _g = self.lock.lock().await;
                self.run_operations().await;
            }
            if let Some((every, pct)) = self.timings.rebalance {
                if Instant::now() >= next_rebalance {
                    next_rebalance = Instant::now() + every;
                    let _g = self.lock.lock().await;
                    let cmds = decide::preferred_elections(&self.image(), Some(pct));
                    if !cmds.is_empty() {
                        tracing::info!(
                            moves = cmds.len(),
                            "moving leadership back to preferred replicas"
                        );
                        let _ = self.commit(Command::Batch(cmds)).await;
                    }
                }
            }
        }
    }

    /// A newly elected (or resumed) controller gives every broker a full session before
    /// fencing it, and sets up a new quorum.
    async fn on_elected(&self) {
        let _g = self.lock.lock().await;
        let img = self.image();
        tracing::info!(
            node = self.node_id,
            "this broker is now the active controller"
        );
        // A full session, as Kafka gives: live brokers may first have to reconnect to
        // this node (a restarted controller is often elected again). A broker whose
        // process is gone is fenced at once below, whatever its grace.
        let grace = Instant::now();
        {
            let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            for id in img.brokers.keys() {
                seen.insert(*id, grace);
            }
        }
        if img.cluster_id.is_none() {
            self.initialize().await;
        }
        // The previous controller often died with a partition leader on it: fence brokers
        // whose process is gone right away.
        for id in img.brokers.keys().copied().filter(|&b| b != self.node_id) {
            self.unreachable(&img, id).await;
        }
    }

    /// Sets up a new quorum: cluster id, and the topics of a data directory that served as
    /// a single node before it had a quorum. The caller holds `lock`.
    async fn initialize(&self) {
        let import = self
            .import
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        let mut cmds = vec![Command::InitCluster {
            cluster_id: import.cluster_id.clone(),
        }];
        let me = self.node_id;
        for (name, id, count, configs) in import.topics {
            let partitions = (0..count)
                .map(|_| PartitionState::new(vec![me], |_| true))
                .collect();
            tracing::info!(
                topic = name,
                "importing topic of this data directory into the quorum"
            );
            cmds.push(Command::CreateTopic {
                name,
                id,
                configs,
                partitions,
            });
        }
        if import.next_producer_id > 0 {
            cmds.push(Command::AllocateProducerIds {
                count: import.next_producer_id,
            });
        }
        if let Err(e) = self.commit(Command::Batch(cmds)).await {
            tracing::warn!(reply = ?e, "could not initialise the cluster metadata");
        }
    }

    /// Creates the offsets topic once enough brokers are up for its replication factor
    /// (`offsets_topic_replication_factor`, at most the number of voters).
    async fn create_offsets_topic(&self) {
        if self.image().topics.contains_key(OFFSETS_TOPIC) {
            return;
        }
        let _g = self.lock.lock().await;
        self.create_offsets_topic_locked().await;
    }

    /// [`Self::create_offsets_topic`] for a caller holding `lock`.
    async fn create_offsets_topic_locked(&self) {
        let img = self.image();
        if img.cluster_id.is_none() || img.topics.contains_key(OFFSETS_TOPIC) {
            return;
        }
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        let active = img.brokers.keys().filter(|&&b| img.is_active(b)).count();
        let rf = (self.offsets_rf.max(1) as usize).min(voters.max(1));
        if active < rf {
            return;
        }
        // Commits are kept until a group deletes them, not by age; compaction keeps the
        // latest per group and partition once a segment (Kafka's 100 MiB) is full.
        let configs = [
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("cleanup.policy", "compact"),
            ("segment.bytes", "104857600"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let reply = self
            .create_topic(
                &img,
                OFFSETS_TOPIC.to_string(),
                OFFSETS_PARTITIONS as i32,
                rf as i16,
                Vec::new(),
                configs,
                false,
            )
            .await;
        tracing::info!(replication_factor = rf, ?reply, "created the offsets topic");
    }

    async fn fence_silent_brokers(&self) {
        let _g = self.lock.lock().await;
        let img = self.image();
        let now = Instant::now();
        let silent: Vec<BrokerId> = {
            let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            img.brokers
                .values()
                .filter(|b| b.state != BrokerState::Fenced)
                .filter(|b| {
                    let last = *seen.entry(b.id).or_insert(now);
                    now.duration_since(last) > self.timings.session_timeout
                })
                .map(|b| b.id)
                .collect()
        };
        for id in silent {
            self.fence(id, "heartbeats stopped").await;
        }
    }

    /// Fences a broker and moves its leaderships (the caller holds `lock`).
    async fn fence(&self, id: BrokerId, why: &str) -> ControlReply {
        let mut next = (*self.image()).clone();
        let fence = Command::SetBrokerState {
            id,
            state: BrokerState::Fenced,
        };
        next.apply(&fence);
        let mut cmds = vec![fence];
        cmds.extend(decide::on_fenced(&next, id, |t| unclean_enabled(&next, t)));
        tracing::warn!(broker = id, changes = cmds.len() - 1, why, "fencing broker");
        let reply = self.commit_done(Command::Batch(cmds)).await;
        if let ControlReply::Error { .. } | ControlReply::NotController = &reply {
            tracing::warn!(broker = id, ?reply, "fencing failed");
        }
        reply
    }

    /// A broker found another broker's RPC port closed. A closed port means the process
    /// is gone (a paused or partitioned one still accepts connections), so the controller
    /// checks for itself and fences at once instead of waiting out the session.
    async fn unreachable(&self, img: &Image, id: BrokerId) -> ControlReply {
        let Some(b) = img
            .brokers
            .get(&id)
            .filter(|b| b.state != BrokerState::Fenced)
        else {
            return ControlReply::Done { log_index: 0 };
        };
        let probe = tokio::time::timeout(
            PROBE_TIMEOUT,
            tokio::net::TcpStream::connect(b.rpc.as_str()),
        )
        .await;
        match probe {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                self.fence(id, "its RPC port is closed").await
            }
            _ => ControlReply::Done { log_index: 0 },
        }
    }
}

/// BROKER_NOT_AVAILABLE unless `id` is a registered broker.
fn registered(img: &Image, id: BrokerId) -> Result<(), ControlReply> {
    if img.brokers.contains_key(&id) {
        Ok(())
    } else {
        Err(refuse(
            E::BrokerNotAvailable.code(),
            format!("broker {id} is not registered"),
        ))
    }
}

/// How long the controller tries to reach a broker reported unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

fn unclean_enabled(img: &Image, topic: &str) -> bool {
    topic_config(img, topic, "unclean.leader.election.enable").is_some_and(|v| v == "true")
}

/// A topic's config: its override, else the cluster-wide dynamic default of its broker
/// synonym (static broker settings are the caller's fallback).
fn topic_config<'a>(img: &'a Image, topic: &str, key: &str) -> Option<&'a str> {
    img.topics
        .get(topic)
        .and_then(|t| t.configs.get(key))
        .or_else(|| {
            let synonym = crate::configs::topic::topic_key(key)?.synonym?;
            img.broker_configs.get("")?.get(synonym)
        })
        .map(String::as_str)
}

/// Checks an explicit replica assignment: registered brokers, no duplicates, one
/// replication factor (`rf` when given).
fn check_assignment(img: &Image, a: &[Vec<BrokerId>], rf: Option<usize>) -> Result<(), String> {
    let rf = rf.or_else(|| a.first().map(Vec::len)).unwrap_or(0);
    for (i, r) in a.iter().enumerate() {
        if r.is_empty() || r.len() != rf {
            return Err(format!(
                "partition {i}: {} replicas, expected {rf}",
                r.len()
            ));
        }
        let mut seen = r.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != r.len() {
            return Err(format!("partition {i}: duplicate broker in {r:?}"));
        }
        if let Some(b) = r.iter().find(|b| !img.brokers.contains_key(b)) {
            return Err(format!("partition {i}: broker {b} is not registered"));
        }
    }
    Ok(())
}
