//! Request handlers: decode a frame, run the API, encode the response.
//!
//! [`Broker::dispatch`] does everything whose order matters on a connection (appends,
//! admin changes) before it returns; what is left (waiting for durability, fetch
//! long-polls) is returned as a future that the connection resolves in request order.

mod acls;
mod admin;
mod authz;
mod configs;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod quotas;
mod reassign;
mod scram;
pub mod txn;
mod txn_admin;
pub mod txn_verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Notify;

use crate::acl::Session;
use crate::cluster::{Cluster, ControlReply, ControlRequest, Import};
use crate::config::Config;
use crate::group::{Coordinator, GroupTimings};
use crate::metadata::Catalog;
use crate::metrics::Metrics;
use crate::protocol::{
    self, decode_request, encode_response, encode_response_sharing, Body, DecodeError, EncodeError,
    Frame, Request,
};
use crate::storage::{Store, StoreOptions};

/// Response frame to send, or `None` when the request gets no response (acks=0).
pub type Reply = Pin<Box<dyn Future<Output = Result<Option<Frame>, EncodeError>> + Send>>;

/// Why a broker could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Local topics could not be loaded.
    #[error(transparent)]
    Catalog(#[from] crate::metadata::CatalogError),
    /// The cluster layer could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// The broker: configuration, storage, topics and metrics shared by all connections.
pub struct Broker {
    /// Effective configuration.
    pub config: Config,
    /// Local topics and partitions (kept in line with the cluster metadata).
    pub catalog: Arc<Catalog>,
    /// The cluster: metadata quorum, controller, registration.
    pub cluster: Arc<Cluster>,
    /// Authorization settings.
    acl_policy: crate::acl::Policy,
    /// Producer ids reserved for this broker: (next, end).
    pids: std::sync::Mutex<(i64, i64)>,
    /// Storage.
    pub store: Arc<Store>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Woken whenever data becomes visible (fetch long-polls wait on it).
    pub data_arrived: Arc<Notify>,
    /// Consumer group coordinator.
    pub groups: Arc<Coordinator>,
    /// Turns true when shutdown begins: parked fetches and group calls answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Throttle of replication traffic this broker serves to out-of-sync throttled replicas.
    pub leader_throttle: crate::replication::throttle::Throttle,
    /// Throttle of replication traffic this broker fetches for its throttled replicas.
    pub follower_throttle: crate::replication::throttle::Throttle,
    /// Leaders whose replication connection this broker lost (see [`crate::replication::lost`]).
    pub lost_leaders: crate::replication::lost::LostLeaders,
    /// Fenced brokers Metadata answers still list (see [`crate::replication::lost`]).
    pub recently_fenced: crate::replication::lost::RecentlyFenced,
    /// Client byte rates counted against their quotas.
    quota_rates: crate::quota::Rates,
    /// One lock per transactional id coordinated here: its requests run one at a time.
    txn_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn ready(r: Result<Option<Frame>, EncodeError>) -> Reply {
    Box::pin(std::future::ready(r))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Broker {
    /// Opens storage, loads every topic and joins the cluster (starting its quorum member).
    pub async fn open(config: Config) -> Result<Arc<Broker>, OpenError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(crate::storage::StorageError::from)
            .map_err(crate::metadata::CatalogError::from)?;
        let store = Arc::new(
            Store::open_with(
                &config.data_dir,
                &StoreOptions {
                    log_memtable_bytes: config.log_memtable_bytes,
                    direct_io: config.storage_direct_io,
                    wal_recycle_files: config.storage_wal_recycle_files,
                    blob_min_bytes: config.storage_blob_min_bytes,
                },
            )
            .map_err(crate::metadata::CatalogError::from)?,
        );
        let data_arrived = Arc::new(Notify::new());
        let catalog =
            Arc::new(Catalog::load(store.clone(), config.clone(), data_arrived.clone()).await?);
        let timings = GroupTimings {
            initial_rebalance_delay: std::time::Duration::from_millis(
                config.group_initial_rebalance_delay_ms,
            ),
            min_session_timeout_ms: config.group_min_session_timeout_ms,
            max_session_timeout_ms: config.group_max_session_timeout_ms,
        };
        let retention_ms = config.offsets_retention_minutes.saturating_mul(60_000);
        let groups = Arc::new(Coordinator::new(
            catalog.clone(),
            store.clone(),
            timings,
            retention_ms,
            config.fsync_policy != crate::config::FsyncPolicy::Never,
        ));
        let import = Import {
            cluster_id: catalog.cluster_id.clone(),
            topics: catalog
                .all()
                .iter()
                .map(|t| (t.name.to_string(), t.id, t.partition_count(), t.overrides()))
                .collect(),
            next_producer_id: catalog.legacy_next_producer_id(),
        };
        let applier: crate::cluster::store::Applier = {
            let (catalog, groups, me) = (catalog.clone(), groups.clone(), config.node_id);
            Arc::new(move |image| {
                let (catalog, groups) = (catalog.clone(), groups.clone());
                Box::pin(async move {
                    match catalog.reconcile(&image, me).await {
                        Ok(deleted) => {
                            groups.sync_leadership();
                            for t in deleted {
                                // Committed offsets must not carry over to a re-created topic.
                                let _ = groups.forget_topic(&t).await;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "applying cluster metadata locally failed")
                        }
                    }
                })
            })
        };
        let cluster = Cluster::start(&config, store.clone(), applier, import).await?;
        let quota_rates = crate::quota::Rates::new(
            config.quota_window_num as usize,
            std::time::Duration::from_secs(config.quota_window_size_seconds.into()),
        );
        Ok(Arc::new(Broker {
            acl_policy: config.acl_policy(),
            quota_rates,
            config,
            catalog,
            cluster,
            pids: std::sync::Mutex::new((0, 0)),
            store,
            metrics: Metrics::new(),
            data_arrived,
            groups,
            stopping: tokio::sync::watch::Sender::new(false),
            leader_throttle: Default::default(),
            follower_throttle: Default::default(),
            lost_leaders: Default::default(),
            recently_fenced: Default::default(),
            txn_locks: Default::default(),
        }))
    }

    /// Starts shutdown: requests waiting for data or for a rebalance are answered now.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Cluster id: the quorum's once it has one.
    pub fn cluster_id(&self) -> String {
        self.cluster
            .image()
            .cluster_id
            .clone()
            .unwrap_or_else(|| self.catalog.cluster_id.clone())
    }

    /// Sends a metadata change to the active controller, waiting as long as a client
    /// request may (`timeout_ms` from the request, at least a few seconds).
    async fn control(&self, req: ControlRequest, timeout_ms: i32) -> ControlReply {
        let t = std::time::Duration::from_millis(timeout_ms.clamp(5_000, 60_000) as u64);
        self.cluster.control(req, t).await
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Whether `who` may perform `operation` on a resource, under the cluster's ACLs.
    pub fn authorize(&self, who: &Session, operation: i8, resource_type: i8, name: &str) -> bool {
        !self.acl_policy.enabled
            || crate::acl::authorize(
                &self.cluster.image().acls,
                &self.acl_policy,
                who,
                operation,
                resource_type,
                name,
            )
    }

    /// Counts `bytes` of a client's traffic against its `key` quota (if one applies) and
    /// returns the throttle time in ms; a throttled connection's next request waits that
    /// long.
    pub fn throttle(&self, key: &'static str, who: &Session, client_id: &str, bytes: usize) -> i32 {
        let image = self.cluster.image();
        let Some((account, quota)) =
            crate::quota::resolve(&image.client_quotas, key, who.user(), client_id)
        else {
            return 0;
        };
        let now = Instant::now();
        let wait = self.quota_rates.record(key, account, quota, bytes, now);
        if wait.is_zero() {
            return 0;
        }
        who.throttle_until(now + wait);
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        self.metrics
            .quota_throttle_ms
            .with_label_values(&[key])
            .inc_by(ms as u64);
        ms
    }

    /// Kafka's authorized-operations bits of a resource for `who`.
    pub fn authorized_operations(&self, who: &Session, resource_type: i8, name: &str) -> i32 {
        crate::acl::authorized_operations(
            &self.cluster.image().acls,
            &self.acl_policy,
            who,
            resource_type,
            name,
        )
    }

    /// Whether this broker may act as leader of `part`. A leader that has lost its
    /// controller session and hears from none of its followers is cut off from the
    /// cluster: another leader has most likely been elected, so it steps aside (clients
    /// get NOT_LEADER_OR_FOLLOWER and look elsewhere) instead of stalling them. With the
    /// quorum down but followers fetching, it keeps serving.
    pub fn leads(&self, part: &crate::log::Partition) -> bool {
        let session = std::time::Duration::from_millis(self.config.broker_session_timeout_ms);
        part.role() == crate::log::Role::Leader
            && !(self.cluster.session_lost(session) && part.followers_silent(session))
    }

    /// Host and port advertised to clients.
    pub fn advertised(&self) -> (StrBytes, i32) {
        let (host, port) = self
            .config
            .advertised_host_port()
            .unwrap_or_else(|| ("localhost".to_string(), 9092));
        (StrBytes::from_string(host), port)
    }

    /// Handles one request frame (without its size prefix) from the client `who`.
    pub async fn dispatch(
        self: &Arc<Self>,
        frame: Bytes,
        who: &Arc<Session>,
    ) -> Result<Reply, DecodeError> {
        let Request {
            api,
            version: v,
            correlation_id: corr,
            client_id,
            body,
        } = decode_request(frame)?;
        let name = api_name(api);
        self.metrics.requests.with_label_values(&[name]).inc();
        let started = Instant::now();
        macro_rules! now {
            ($resp:expr) => {{
                let resp = $resp;
                ready(encode_response(api, v, corr, &resp).map(Some))
            }};
        }
        if let Some(refused) = self.refusal(api, v, corr, &body, who) {
            return Ok(self.observe(name, started, refused));
        }
        let reply: Reply = match body {
            // Answer with a v0 body listing what we support, so the client retries lower.
            Body::ApiVersionsUnsupported => ready(
                encode_response(
                    api,
                    0,
                    corr,
                    &self.api_versions(ResponseError::UnsupportedVersion.code()),
                )
                .map(Some),
            ),
            Body::ApiVersions(_) => now!(self.api_versions(0)),
            Body::Metadata(req) => now!(self.metadata(req, v, who).await),
            Body::Produce(req) => self.produce(req, v, corr, who, &client_id).await,
            Body::Fetch(req) => {
                let (this, who) = (self.clone(), who.clone());
                Box::pin(async move {
                    let resp = this.fetch(req, &who, &client_id).await;
                    let records: Vec<Bytes> = resp
                        .responses
                        .iter()
                        .flat_map(|t| &t.partitions)
                        .filter_map(|p| p.records.clone())
                        .collect();
                    encode_response_sharing(api, v, corr, &resp, &records).map(Some)
                })
            }
            Body::ListOffsets(req) => now!(self.list_offsets(req, v, who).await),
            Body::OffsetForLeaderEpoch(req) => now!(self.offset_for_leader_epoch(req)),
            Body::InitProducerId(req) => now!(self.init_producer_id(req).await),
            Body::CreateTopics(req) => now!(self.create_topics(req, v, who).await),
            Body::DeleteTopics(req) => now!(self.delete_topics(req, v, who).await),
            Body::CreatePartitions(req) => now!(self.create_partitions(req, who).await),
            Body::DeleteRecords(req) => now!(self.delete_records(req, who).await),
            Body::DescribeConfigs(req) => now!(self.describe_configs(req, v, who)),
            Body::AlterConfigs(req) => now!(self.alter_configs(req, who).await),
            Body::IncrementalAlterConfigs(req) => {
                now!(self.incremental_alter_configs(req, who).await)
            }
            Body::DescribeCluster(req) => now!(self.describe_cluster(req, who)),
            Body::ElectLeaders(req) => now!(self.elect_leaders(req).await),
            Body::AlterPartitionReassignments(req) => {
                now!(self.alter_partition_reassignments(req).await)
            }
            Body::ListPartitionReassignments(req) => now!(self.list_partition_reassignments(req)),
            Body::DescribeLogDirs(req) => now!(self.describe_log_dirs(req)),
            Body::FindCoordinator(req) => now!(self.find_coordinator(req, v, who)),
            Body::JoinGroup(req) => {
                self.join_group(req, v, corr, &client_id, &format!("/{}", who.host))
            }
            Body::SyncGroup(req) => self.sync_group(req, v, corr),
            Body::Heartbeat(req) => now!(self.heartbeat(req)),
            Body::LeaveGroup(req) => now!(self.leave_group(req, v)),
            Body::OffsetCommit(req) => now!(self.offset_commit(req, who).await),
            Body::OffsetFetch(req) => now!(self.offset_fetch(req, v, who)),
            Body::DescribeGroups(req) => now!(self.describe_groups(req, who)),
            Body::ListGroups(req) => now!(self.list_groups(req, v, who)),
            Body::DeleteGroups(req) => now!(self.delete_groups(req, who).await),
            Body::OffsetDelete(req) => now!(self.offset_delete(req).await),
            Body::AddPartitionsToTxn(req) => now!(self.add_partitions_to_txn(req, who).await),
            Body::AddOffsetsToTxn(req) => now!(self.add_offsets_to_txn(req).await),
            Body::EndTxn(req) => now!(self.end_txn(req).await),
            Body::TxnOffsetCommit(req) => now!(self.txn_offset_commit(req, who).await),
            Body::DescribeTransactions(req) => now!(self.describe_transactions(req, who)),
            Body::ListTransactions(req) => now!(self.list_transactions(req, who)),
            Body::DescribeProducers(req) => now!(self.describe_producers(req, who)),
            Body::DescribeAcls(req) => now!(self.describe_acls(req, who)),
            Body::CreateAcls(req) => now!(self.create_acls(req, who).await),
            Body::DeleteAcls(req) => now!(self.delete_acls(req, who).await),
            Body::DescribeUserScramCredentials(req) => {
                now!(self.describe_user_scram_credentials(req, who))
            }
            Body::AlterUserScramCredentials(req) => {
                now!(self.alter_user_scram_credentials(req, who).await)
            }
            Body::DescribeClientQuotas(req) => now!(self.describe_client_quotas(req)),
            Body::AlterClientQuotas(req) => now!(self.alter_client_quotas(req, who).await),
            Body::ListConfigResources(req) => now!(self.list_config_resources(req, v)),
        };
        Ok(self.observe(name, started, reply))
    }

    fn observe(self: &Arc<Self>, name: &'static str, started: Instant, reply: Reply) -> Reply {
        let this = self.clone();
        Box::pin(async move {
            let out = reply.await;
            this.metrics
                .latency
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            out
        })
    }

    fn api_versions(&self, error_code: i16) -> ApiVersionsResponse {
        let api_keys = protocol::SUPPORTED
            .iter()
            .map(|&(k, min, max)| {
                api_versions_response::ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect();
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(api_keys)
    }

    /// Counts a Kafka error code for an API.
    fn count_error(&self, api: ApiKey, code: i16) {
        self.metrics.error(api_name(api), code);
    }
}

/// Stable metric label for an API.
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::ElectLeaders => "ElectLeaders",
        ApiKey::AlterPartitionReassignments => "AlterPartitionReassignments",
        ApiKey::ListPartitionReassignments => "ListPartitionReassignments",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        ApiKey::DescribeClientQuotas => "DescribeClientQuotas",
        ApiKey::AlterClientQuotas => "AlterClientQuotas",
        ApiKey::ListConfigResources => "ListConfigResources",
        _ => "Other",
    }
}

use kafka_protocol::error::ResponseError;

/// Kafka error code of a controller refusal (other replies count as success).
fn control_error(r: &ControlReply) -> Option<(i16, String)> {
    match r {
        ControlReply::Error { code, message } => Some((*code, message.clone())),
        ControlReply::NotController => Some((
            ResponseError::NotController.code(),
            "no active controller".into(),
        )),
        _ => None,
    }
}

/// Checks that this broker leads `part` at the client's `current_leader_epoch` (-1: any).
fn leader_check(part: &crate::log::Partition, requested: i32) -> i16 {
    if part.role() != crate::log::Role::Leader {
        return ResponseError::NotLeaderOrFollower.code();
    }
    leader_epoch_error(requested, part.leader_epoch())
}

/// Checks a client's `current_leader_epoch` against ours (-1 means "not checked").
fn leader_epoch_error(requested: i32, ours: i32) -> i16 {
    if requested < 0 || requested == ours {
        0
    } else if requested > ours {
        ResponseError::UnknownLeaderEpoch.code()
    } else {
        ResponseError::FencedLeaderEpoch.code()
    }
}
