//! The replicated cluster: the metadata quorum (Raft via openraft, persisted in the
//! broker's RocksDB), the active controller, and this broker's registration with it.
//!
//! - [`image`]: the metadata image and the commands that change it (pure);
//! - [`decide`]: placement, elections and ISR rules (pure, unit-tested);
//! - [`reassign`]: partition reassignment steps (pure, unit-tested);
//! - [`operations`]: decommissioning and maintenance (pure, unit-tested);
//! - [`store`]: Raft log and state machine in RocksDB;
//! - `network`/`service`: Raft and controller messages over gRPC;
//! - `controller`: what the Raft leader does with requests, heartbeats and timers.

mod controller;
pub mod decide;
pub mod image;
mod network;
pub mod operations;
pub mod reassign;
mod service;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use controller::{ControlReply, ControlRequest, Controller, MOVE_KINDS};
use image::{BrokerId, BrokerInfo, BrokerState, Image};
pub use service::QuorumService;

use crate::config::Config;

/// How often a heartbeat carries the broker's replica sizes: they feed the byte balancer
/// and decommission progress, which act on minutes, not on each beat.
const SIZE_REPORT_INTERVAL: Duration = Duration::from_secs(5);
use crate::rpc::{Envelope, Peers};
use crate::storage::Store;

openraft::declare_raft_types!(
    /// openraft types of the metadata quorum.
    pub TypeConfig:
        D = image::Command,
        R = image::CommandReply,
);

/// The metadata quorum's Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Why the cluster layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Bad `--voters` or RPC address.
    #[error("{0}")]
    Config(String),
    /// Raft could not start.
    #[error("raft: {0}")]
    Raft(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// A metadata voter: broker id and RPC address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voter {
    /// Broker id.
    pub id: BrokerId,
    /// `host:port` of its RPC listener.
    pub rpc: String,
}

/// Parses `ID@HOST:PORT,...`.
pub fn parse_voters(s: &str) -> Result<Vec<Voter>, String> {
    let mut out: Vec<Voter> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('@')
            .ok_or_else(|| format!("voter '{part}' is not ID@HOST:PORT"))?;
        let id: BrokerId = id
            .parse()
            .map_err(|_| format!("voter '{part}': '{id}' is not a broker id"))?;
        if id < 0 || !addr.contains(':') {
            return Err(format!("voter '{part}' is not ID@HOST:PORT"));
        }
        if out.iter().any(|v| v.id == id) {
            return Err(format!("voter {id} is listed twice"));
        }
        out.push(Voter {
            id,
            rpc: addr.to_string(),
        });
    }
    if out.is_empty() {
        return Err("no voters given".into());
    }
    Ok(out)
}

/// The cluster id as this broker knows it ("" until learned), shared with RPC code.
#[derive(Clone, Default)]
pub struct ClusterId(Arc<RwLock<String>>);

impl ClusterId {
    /// Current value.
    pub fn get(&self) -> String {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, id: &str) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = id.to_string();
    }

    /// Refuses a message from a peer of another cluster.
    pub fn check(&self, theirs: &str) -> Result<(), tonic::Status> {
        let ours = self.get();
        if !ours.is_empty() && !theirs.is_empty() && ours != theirs {
            tracing::warn!(ours, theirs, "refused RPC from a broker of another cluster");
            return Err(tonic::Status::permission_denied(format!(
                "cluster id {theirs} does not match {ours}"
            )));
        }
        Ok(())
    }
}

/// Topics of a single-node data directory from before the quorum existed, to import.
#[derive(Debug, Clone, Default)]
pub struct Import {
    /// Cluster id the broker already had.
    pub cluster_id: String,
    /// `(name, id, partitions, configs)`.
    pub topics: Vec<(String, uuid::Uuid, i32, BTreeMap<String, String>)>,
    /// First producer id not handed out yet.
    pub next_producer_id: i64,
}

/// This broker's view of the cluster and its handle on the quorum.
pub struct Cluster {
    /// This broker's id.
    pub node_id: BrokerId,
    /// The Raft node.
    pub raft: Raft,
    /// Latest applied image.
    pub image: watch::Receiver<Arc<Image>>,
    /// Client channels to other brokers.
    pub peers: Arc<Peers>,
    /// Cluster id (shared with RPC checks).
    pub cluster_id: ClusterId,
    /// This broker's registration.
    pub me: BrokerInfo,
    /// The controller logic (acts only while this node leads the quorum).
    pub controller: Arc<Controller>,
    /// This broker's state as the controller last answered it.
    pub state: watch::Sender<BrokerState>,
    /// When the controller last answered a heartbeat.
    last_heartbeat: std::sync::Mutex<std::time::Instant>,
    voters: Vec<Voter>,
}

impl Cluster {
    /// Starts the Raft node (initialising the quorum when this broker is a voter of a new
    /// one) and the controller. `applier` keeps local state in line with the image.
    pub async fn start(
        config: &Config,
        store: Arc<Store>,
        applier: store::Applier,
        import: Import,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let me_rpc = config.advertised_rpc();
        let voters = match &config.voters {
            Some(v) => parse_voters(v).map_err(ClusterError::Config)?,
            None => vec![Voter {
                id: config.node_id,
                rpc: me_rpc.clone(),
            }],
        };
        let raft_config = openraft::Config {
            cluster_name: "riffle".into(),
            heartbeat_interval: config.raft_heartbeat_interval_ms,
            election_timeout_min: config.raft_election_timeout_ms,
            election_timeout_max: config.raft_election_timeout_ms * 2,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let (image_tx, image_rx) = watch::channel(Arc::new(Image::default()));
        let cluster_id = ClusterId::default();
        let cid = cluster_id.clone();
        let applier: store::Applier = Arc::new(move |img: Arc<Image>| {
            if let Some(id) = &img.cluster_id {
                cid.set(id);
            }
            applier(img)
        });
        let sm = store::StateMachine::load(store.clone(), applier.clone(), image_tx)
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let persisted = Arc::new(sm.image().clone());
        let peers = Arc::new(Peers::new(Duration::from_millis(
            config.raft_election_timeout_ms,
        )));
        let network = network::Network {
            peers: peers.clone(),
            cluster_id: cluster_id.clone(),
        };
        let raft = Raft::new(
            config.node_id as u64,
            Arc::new(raft_config),
            network,
            store::LogStore::new(store),
            sm,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        // Bring local state in line with what was applied before a restart.
        applier(persisted).await;

        let is_voter = voters.iter().any(|v| v.id == config.node_id);
        if is_voter
            && !raft
                .is_initialized()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?
        {
            let members: BTreeMap<u64, BasicNode> = voters
                .iter()
                .map(|v| {
                    (
                        v.id as u64,
                        BasicNode {
                            addr: v.rpc.clone(),
                        },
                    )
                })
                .collect();
            // Every voter of a new quorum proposes the same membership; the first wins.
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "quorum already initialised");
            }
        }
        let me = BrokerInfo {
            id: config.node_id,
            kafka: config.advertised_listener.clone(),
            rpc: me_rpc,
            rack: config.rack.clone(),
            incarnation: crate::log::now_ms() as u64,
            state: BrokerState::Active,
        };
        let controller = Arc::new(Controller::new(
            config,
            raft.clone(),
            image_rx.clone(),
            import,
        ));
        Ok(Arc::new(Cluster {
            node_id: config.node_id,
            raft,
            image: image_rx,
            peers,
            cluster_id,
            me,
            controller,
            state: watch::Sender::new(BrokerState::Fenced),
            last_heartbeat: std::sync::Mutex::new(std::time::Instant::now()),
            voters,
        }))
    }

    /// Whether the controller has not answered a heartbeat for longer than `session`:
    /// it has fenced this broker by now, unless the quorum itself is down.
    pub fn session_lost(&self, session: Duration) -> bool {
        self.last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > session
    }

    /// The latest applied image.
    pub fn image(&self) -> Arc<Image> {
        self.image.borrow().clone()
    }

    /// The active controller (the quorum leader), if known.
    pub fn controller_id(&self) -> Option<BrokerId> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map(|id| id as BrokerId)
    }

    /// Whether this broker is a metadata voter.
    pub fn is_voter(&self) -> bool {
        self.voters.iter().any(|v| v.id == self.node_id)
    }

    /// RPC address of a quorum member (voter or learner).
    fn member_addr(&self, id: u64) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .or_else(|| {
                self.voters
                    .iter()
                    .find(|v| v.id as u64 == id)
                    .map(|v| v.rpc.clone())
            })
    }

    /// Sends a request to the active controller (wherever it is), retrying while there
    /// is none or it moves, until `timeout`. Changes are applied locally before this returns.
    pub async fn control(&self, req: ControlRequest, timeout: Duration) -> ControlReply {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tried: BTreeSet<u64> = BTreeSet::new();
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let reply = match leader {
                Some(l) if l == self.node_id as u64 => self.controller.handle(req.clone()).await,
                Some(l) => match self.member_addr(l) {
                    Some(addr) => {
                        // A controller that stopped answering (paused, partitioned) is
                        // soon replaced: ask the new one instead of waiting out the
                        // deadline, or heartbeats miss the new controller's grace period.
                        let mut metrics = self.raft.metrics();
                        let moved = metrics.wait_for(|m| m.current_leader != Some(l));
                        tokio::select! {
                            r = self.remote_control(&addr, &req, deadline) => r,
                            _ = moved => ControlReply::NotController,
                        }
                    }
                    None => ControlReply::NotController,
                },
                // A voter learns the leader from Raft within an election: wait for it
                // rather than ask peers that may not answer (paused, partitioned).
                None if self.is_voter() => ControlReply::NotController,
                None => {
                    // No leader known (a learner that has not joined yet): ask the voters.
                    let next = self
                        .voters
                        .iter()
                        .find(|v| v.id != self.node_id && !tried.contains(&(v.id as u64)));
                    match next {
                        Some(v) => {
                            tried.insert(v.id as u64);
                            self.remote_control(&v.rpc, &req, deadline).await
                        }
                        None => {
                            tried.clear();
                            ControlReply::NotController
                        }
                    }
                }
            };
            match reply {
                ControlReply::NotController => {
                    if tokio::time::Instant::now() >= deadline {
                        return ControlReply::Error {
                            code: kafka_protocol::error::ResponseError::RequestTimedOut.code(),
                            message:
                                "no active controller (is a majority of the metadata voters up?)"
                                    .into(),
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ControlReply::Done { log_index } => {
                    self.wait_applied(log_index, deadline).await;
                    return reply;
                }
                ControlReply::Created { log_index, .. }
                | ControlReply::AclsDeleted { log_index, .. }
                | ControlReply::ScramAltered { log_index, .. } => {
                    self.wait_applied(log_index, deadline).await;
                    return reply;
                }
                other => return other,
            }
        }
    }

    /// Sends a request to another broker's controller; a peer that accepts connections but
    /// does not answer (paused, partitioned) counts as not the controller once `deadline`
    /// passes, so callers move on instead of waiting for it.
    async fn remote_control(
        &self,
        addr: &str,
        req: &ControlRequest,
        deadline: tokio::time::Instant,
    ) -> ControlReply {
        let Ok(payload) = serde_json::to_vec(req) else {
            return ControlReply::NotController;
        };
        let Ok(mut client) = self.peers.quorum(addr) else {
            return ControlReply::NotController;
        };
        let env = Envelope {
            cluster_id: self.cluster_id.get(),
            payload: payload.into(),
        };
        match tokio::time::timeout_at(deadline, client.control(env)).await {
            Ok(Ok(r)) => serde_json::from_slice(&r.into_inner().payload)
                .unwrap_or(ControlReply::NotController),
            Ok(Err(e)) => {
                tracing::debug!(addr, error = %e, "controller request failed");
                self.peers.forget(addr);
                ControlReply::NotController
            }
            Err(_) => {
                tracing::debug!(addr, "controller request timed out");
                self.peers.forget(addr);
                ControlReply::NotController
            }
        }
    }

    /// Waits (bounded) until this node has applied log index `index`.
    async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) {
        let mut m = self.raft.metrics();
        let _ = tokio::time::timeout_at(
            deadline,
            m.wait_for(|m| m.last_applied.is_some_and(|l| l.index >= index)),
        )
        .await;
    }

    /// During a controlled shutdown: waits until no partition this broker leads has
    /// another active in-sync replica to move to (bounded by `timeout`).
    pub async fn wait_leaderships_moved(&self, timeout: Duration, session: Duration) -> bool {
        let me = self.node_id;
        let movable = |img: &Image| {
            img.partitions()
                .filter(|(_, _, p)| p.leader == me)
                .any(|(_, _, p)| p.isr.iter().any(|&b| b != me && img.is_active(b)))
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.image.clone();
        loop {
            if !movable(&rx.borrow_and_update()) {
                return true;
            }
            // No controller answers (the quorum is going down too): nothing will move.
            let silent = self
                .last_heartbeat
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if silent > session || tokio::time::Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    /// Registers with the controller and heartbeats until `stop`; a non-voter first asks
    /// to join the quorum as a learner. `shutting_down` asks for a controlled shutdown.
    pub async fn heartbeat_loop(
        self: Arc<Self>,
        interval: Duration,
        local_sizes: impl Fn() -> operations::Sizes,
        shutting_down: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        if !self.is_voter() {
            loop {
                let r = self
                    .control(
                        ControlRequest::AddLearner {
                            id: self.node_id,
                            rpc: self.me.rpc.clone(),
                        },
                        Duration::from_secs(5),
                    )
                    .await;
                if matches!(r, ControlReply::Done { .. }) {
                    break;
                }
                tracing::info!(reply = ?r, "waiting to join the metadata quorum");
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
            }
        }
        let mut shutting_down = shutting_down;
        let mut sizes_due = std::time::Instant::now();
        loop {
            let sizes = (std::time::Instant::now() >= sizes_due).then(|| {
                sizes_due = std::time::Instant::now() + SIZE_REPORT_INTERVAL;
                local_sizes()
            });
            let req = ControlRequest::Heartbeat {
                broker: self.me.clone(),
                shutting_down: *shutting_down.borrow_and_update(),
                sizes,
            };
            match self.control(req, interval * 4).await {
                ControlReply::Heartbeat { state, .. } => {
                    *self
                        .last_heartbeat
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
                    self.state.send_if_modified(|s| {
                        let changed = *s != state;
                        *s = state;
                        changed
                    });
                }
                other => tracing::debug!(reply = ?other, "heartbeat not answered"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutting_down.changed() => {}
                _ = stop.changed() => return,
            }
        }
    }
}
