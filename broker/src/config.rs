//! Broker configuration: one typed struct filled from defaults, a TOML file, `RIFFLE_*`
//! environment variables and command-line flags (later sources win).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// When the write-ahead log is synced to disk before a produce is acknowledged.
///
/// A process crash (kill -9) never loses an acknowledged write under any policy: writes
/// reach the operating system before the acknowledgement. The policy decides what also
/// survives a machine crash or power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// Sync (group-committed) before acknowledging `acks=all`; `acks=0/1` are not synced.
    AcksAll,
    /// Sync every produce before acknowledging it.
    Always,
    /// Never sync on the produce path; the OS writes back in its own time.
    Never,
}

/// Every broker setting, with Kafka's defaults where Kafka has the same setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Broker id, stable across restarts.
    pub node_id: i32,
    /// Directory holding the RocksDB store.
    pub data_dir: PathBuf,
    /// Kafka listener address.
    pub listen: SocketAddr,
    /// `host:port` clients are told to connect to.
    pub advertised_listener: String,
    /// HTTP listener for `/metrics`, `/healthz` and `/readyz`.
    pub http_listen: SocketAddr,
    /// Create topics on first metadata request for them.
    pub auto_create_topics_enable: bool,
    /// Partitions of auto-created topics and of CreateTopics without a count.
    pub num_partitions: i32,
    /// Replication factor used when a request leaves it unset.
    pub default_replication_factor: i16,
    /// Largest record batch accepted (topic `max.message.bytes` default).
    pub message_max_bytes: i32,
    /// Largest request frame accepted; larger frames close the connection.
    pub socket_request_max_bytes: i32,
    /// Default topic `retention.ms` (-1: keep forever).
    pub log_retention_ms: i64,
    /// Default topic `retention.bytes` (-1: no size limit).
    pub log_retention_bytes: i64,
    /// Default topic `segment.bytes`: retention deletes whole segments.
    pub log_segment_bytes: i64,
    /// Default topic `segment.ms`.
    pub log_roll_ms: i64,
    /// How often retention runs.
    pub log_retention_check_interval_ms: u64,
    /// Default topic `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// WAL sync policy for produce requests.
    pub fsync_policy: FsyncPolicy,
    /// Requests processed concurrently per connection (responses still go out in order).
    pub max_in_flight_per_connection: usize,
    /// Memtable memory of the log column family (RocksDB write buffers).
    pub log_memtable_bytes: usize,
    /// Memtable flushes and compactions write with O_DIRECT (where the filesystem allows),
    /// so their writeback does not delay WAL syncs.
    pub storage_direct_io: bool,
    /// Obsolete WAL files kept for reuse instead of deleted (deleting them stalled WAL
    /// syncs); each is about a memtable's size.
    pub storage_wal_recycle_files: usize,
    /// Record batches of at least this many bytes are kept in RocksDB blob files, apart
    /// from their keys, so that compactions rewrite keys only; 0 keeps every batch in
    /// the LSM tree.
    pub storage_blob_min_bytes: u64,
    /// Bytes of requests read and not yet answered, over all connections; a request that
    /// would pass it is not read until others finish (Kafka's `queued.max.request.bytes`).
    pub queued_max_request_bytes: u64,
    /// Samples a client quota's rate is measured over (Kafka's `quota.window.num`).
    pub quota_window_num: u32,
    /// Length of one sample in seconds (Kafka's `quota.window.size.seconds`).
    pub quota_window_size_seconds: u32,
    /// Wait for more members when the first joins an empty group.
    pub group_initial_rebalance_delay_ms: u64,
    /// Smallest consumer session timeout accepted.
    pub group_min_session_timeout_ms: i32,
    /// Largest consumer session timeout accepted.
    pub group_max_session_timeout_ms: i32,
    /// Committed offsets of groups left empty this long expire (-1: never).
    pub offsets_retention_minutes: i64,
    /// Longest `transaction.timeout.ms` a transactional producer may ask for.
    pub transaction_max_timeout_ms: i32,
    /// Before a transactional batch opens a transaction on a partition, its leader asks the
    /// producer's coordinator whether the partition is in that transaction (KIP-890).
    pub transaction_partition_verification_enable: bool,
    /// Replication factor of the internal offsets topic (capped at the number of voters);
    /// the controller creates the topic once this many brokers are up.
    pub offsets_topic_replication_factor: i16,
    /// gRPC listener for the metadata quorum and replication. When `voters` is unset and
    /// this port is taken, a single node falls back to an ephemeral loopback port.
    pub rpc_listen: SocketAddr,
    /// `host:port` other brokers reach the RPC listener at (default: the listen address,
    /// or the advertised Kafka host with the RPC port when listening on all interfaces).
    pub advertised_rpc: Option<String>,
    /// Metadata quorum voters, `ID@HOST:PORT,...` (unset: this broker alone).
    pub voters: Option<String>,
    /// Rack of this broker, for rack-aware replica placement.
    pub rack: Option<String>,
    /// How often a broker heartbeats to the active controller.
    pub broker_heartbeat_interval_ms: u64,
    /// A broker without a heartbeat for this long is fenced and loses its leaderships.
    pub broker_session_timeout_ms: u64,
    /// Raft heartbeat interval of the metadata quorum.
    pub raft_heartbeat_interval_ms: u64,
    /// Raft election timeout (randomised between this and twice this).
    pub raft_election_timeout_ms: u64,
    /// A follower that has not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// Longest a follower's fetch waits at the leader for new data.
    pub replica_fetch_wait_max_ms: u64,
    /// Most bytes one follower fetch returns.
    pub replica_fetch_max_bytes: u32,
    /// Move leadership back to preferred replicas automatically.
    pub auto_leader_rebalance_enable: bool,
    /// Rebalance a broker's leaderships once more than this percentage is elsewhere.
    pub leader_imbalance_per_broker_percentage: u32,
    /// How often leader imbalance is checked.
    pub leader_imbalance_check_interval_seconds: u64,
    /// Longest a SIGTERM waits for leaderships to move away before shutting down anyway.
    pub controlled_shutdown_timeout_ms: u64,
    /// Most partition moves the controller itself (decommissioning, balancing) runs at once.
    pub max_concurrent_moves: usize,
    /// The balancer leaves brokers alone whose replica count (and bytes) is within this percentage
    /// of the mean.
    pub balancer_tolerance_percent: u32,
    /// Enforce ACLs (Kafka: an `authorizer.class.name` is set). Off, every request is
    /// allowed and the ACL APIs answer SECURITY_DISABLED, as Kafka without an authorizer.
    pub authorizer_enabled: bool,
    /// Principals allowed everything, `;`-separated (e.g. `User:admin;User:ops`).
    pub super_users: String,
    /// With the authorizer on, a resource without any ACL is open to everyone (else
    /// only super users may use it).
    pub allow_everyone_if_no_acl_found: bool,
}

impl Default for Config {
    fn default() -> Self {
        let store = crate::storage::StoreOptions::default();
        Config {
            node_id: 0,
            data_dir: PathBuf::from("data"),
            listen: ([0, 0, 0, 0], 9092).into(),
            advertised_listener: "localhost:9092".into(),
            http_listen: ([0, 0, 0, 0], 9644).into(),
            auto_create_topics_enable: true,
            num_partitions: 1,
            default_replication_factor: 1,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            log_retention_ms: 7 * 24 * 3600 * 1000,
            log_retention_bytes: -1,
            log_segment_bytes: 1 << 30,
            log_roll_ms: 7 * 24 * 3600 * 1000,
            log_retention_check_interval_ms: 300_000,
            min_insync_replicas: 1,
            fsync_policy: FsyncPolicy::AcksAll,
            max_in_flight_per_connection: 16,
            queued_max_request_bytes: 128 << 20,
            log_memtable_bytes: store.log_memtable_bytes,
            storage_direct_io: store.direct_io,
            storage_wal_recycle_files: store.wal_recycle_files,
            storage_blob_min_bytes: store.blob_min_bytes,
            quota_window_num: 11,
            quota_window_size_seconds: 1,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            offsets_retention_minutes: 7 * 24 * 60,
            transaction_max_timeout_ms: 900_000,
            transaction_partition_verification_enable: true,
            offsets_topic_replication_factor: 3,
            rpc_listen: ([0, 0, 0, 0], 9093).into(),
            advertised_rpc: None,
            voters: None,
            rack: None,
            broker_heartbeat_interval_ms: 250,
            broker_session_timeout_ms: 1500,
            raft_heartbeat_interval_ms: 100,
            raft_election_timeout_ms: 400,
            replica_lag_time_max_ms: 10_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 8 << 20,
            auto_leader_rebalance_enable: true,
            leader_imbalance_per_broker_percentage: 10,
            leader_imbalance_check_interval_seconds: 300,
            controlled_shutdown_timeout_ms: 30_000,
            max_concurrent_moves: 10,
            balancer_tolerance_percent: 10,
            authorizer_enabled: false,
            super_users: String::new(),
            allow_everyone_if_no_acl_found: false,
        }
    }
}

/// Command line; each flag also reads `RIFFLE_<NAME>` from the environment.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "riffle",
    version,
    about = "Riffle: a Kafka-compatible event-streaming broker"
)]
pub struct Cli {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "RIFFLE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Broker id [default: 0].
    #[arg(long, env = "RIFFLE_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i32>,
    /// Data directory [default: ./data].
    #[arg(long, env = "RIFFLE_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener [default: 0.0.0.0:9092].
    #[arg(long, env = "RIFFLE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address advertised to clients [default: localhost:9092].
    #[arg(long, env = "RIFFLE_ADVERTISED_LISTENER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_listener: Option<String>,
    /// HTTP listener [default: 0.0.0.0:9644].
    #[arg(long, env = "RIFFLE_HTTP_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// Auto-create topics on metadata requests [default: true].
    #[arg(long, env = "RIFFLE_AUTO_CREATE_TOPICS_ENABLE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_create_topics_enable: Option<bool>,
    /// Default partition count [default: 1].
    #[arg(long, env = "RIFFLE_NUM_PARTITIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_partitions: Option<i32>,
    /// Default replication factor [default: 1].
    #[arg(long, env = "RIFFLE_DEFAULT_REPLICATION_FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_replication_factor: Option<i16>,
    /// Largest record batch [default: 1048588].
    #[arg(long, env = "RIFFLE_MESSAGE_MAX_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_max_bytes: Option<i32>,
    /// Largest request frame [default: 104857600].
    #[arg(long, env = "RIFFLE_SOCKET_REQUEST_MAX_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_request_max_bytes: Option<i32>,
    /// Default retention.ms [default: 604800000].
    #[arg(long, env = "RIFFLE_LOG_RETENTION_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention_ms: Option<i64>,
    /// Default retention.bytes [default: -1].
    #[arg(long, env = "RIFFLE_LOG_RETENTION_BYTES", allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention_bytes: Option<i64>,
    /// Default segment.bytes [default: 1073741824].
    #[arg(long, env = "RIFFLE_LOG_SEGMENT_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_segment_bytes: Option<i64>,
    /// Default segment.ms [default: 604800000].
    #[arg(long, env = "RIFFLE_LOG_ROLL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_roll_ms: Option<i64>,
    /// Retention check interval [default: 300000].
    #[arg(long, env = "RIFFLE_LOG_RETENTION_CHECK_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Default min.insync.replicas [default: 1].
    #[arg(long, env = "RIFFLE_MIN_INSYNC_REPLICAS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_insync_replicas: Option<i32>,
    /// WAL sync policy [default: acks-all].
    #[arg(long, env = "RIFFLE_FSYNC_POLICY", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_policy: Option<FsyncPolicy>,
    /// Concurrent requests per connection [default: 16].
    #[arg(long, env = "RIFFLE_MAX_IN_FLIGHT_PER_CONNECTION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_connection: Option<usize>,
    /// Memtable memory of the log [default: 134217728].
    #[arg(long, env = "RIFFLE_LOG_MEMTABLE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_memtable_bytes: Option<usize>,
    /// Flushes and compactions write with O_DIRECT [default: true].
    #[arg(long, env = "RIFFLE_STORAGE_DIRECT_IO")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_direct_io: Option<bool>,
    /// Obsolete WAL files kept for reuse [default: 4].
    #[arg(long, env = "RIFFLE_STORAGE_WAL_RECYCLE_FILES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_wal_recycle_files: Option<usize>,
    /// Smallest record batch kept in a blob file; 0: none [default: 4096].
    #[arg(long, env = "RIFFLE_STORAGE_BLOB_MIN_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_blob_min_bytes: Option<u64>,
    /// Request bytes held at once over all connections [default: 134217728].
    #[arg(long, env = "RIFFLE_QUEUED_MAX_REQUEST_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_max_request_bytes: Option<u64>,
    /// Samples of a client quota's rate window [default: 11].
    #[arg(long, env = "RIFFLE_QUOTA_WINDOW_NUM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_window_num: Option<u32>,
    /// Seconds per quota sample [default: 1].
    #[arg(long, env = "RIFFLE_QUOTA_WINDOW_SIZE_SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_window_size_seconds: Option<u32>,
    /// Initial group rebalance delay [default: 3000].
    #[arg(long, env = "RIFFLE_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout [default: 6000].
    #[arg(long, env = "RIFFLE_GROUP_MIN_SESSION_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_min_session_timeout_ms: Option<i32>,
    /// Largest session timeout [default: 1800000].
    #[arg(long, env = "RIFFLE_GROUP_MAX_SESSION_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_max_session_timeout_ms: Option<i32>,
    /// Offset retention for empty groups in minutes [default: 10080].
    #[arg(
        long,
        env = "RIFFLE_OFFSETS_RETENTION_MINUTES",
        allow_hyphen_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets_retention_minutes: Option<i64>,
    /// Longest transaction timeout a producer may ask for, ms [default: 900000].
    #[arg(long, env = "RIFFLE_TRANSACTION_MAX_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_max_timeout_ms: Option<i32>,
    /// Check a transaction's first write to a partition with its coordinator [default: true].
    #[arg(long, env = "RIFFLE_TRANSACTION_PARTITION_VERIFICATION_ENABLE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_partition_verification_enable: Option<bool>,
    /// Replication factor of the offsets topic, at most the voters [default: 3].
    #[arg(long, env = "RIFFLE_OFFSETS_TOPIC_REPLICATION_FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets_topic_replication_factor: Option<i16>,
    /// RPC listener for the quorum and replication [default: 0.0.0.0:9093].
    #[arg(long, env = "RIFFLE_RPC_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_listen: Option<SocketAddr>,
    /// RPC address other brokers connect to [default: derived from the listeners].
    #[arg(long, env = "RIFFLE_ADVERTISED_RPC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_rpc: Option<String>,
    /// Metadata quorum voters, ID@HOST:PORT,... [default: this broker alone].
    #[arg(long, env = "RIFFLE_VOTERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voters: Option<String>,
    /// Rack of this broker, for rack-aware placement.
    #[arg(long, env = "RIFFLE_RACK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// Heartbeat interval to the controller [default: 250].
    #[arg(long, env = "RIFFLE_BROKER_HEARTBEAT_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_heartbeat_interval_ms: Option<u64>,
    /// Fence a broker after this long without heartbeats [default: 1500].
    #[arg(long, env = "RIFFLE_BROKER_SESSION_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_session_timeout_ms: Option<u64>,
    /// Raft heartbeat interval [default: 100].
    #[arg(long, env = "RIFFLE_RAFT_HEARTBEAT_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_heartbeat_interval_ms: Option<u64>,
    /// Raft election timeout [default: 400].
    #[arg(long, env = "RIFFLE_RAFT_ELECTION_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Followers lagging this long leave the ISR [default: 10000].
    #[arg(long, env = "RIFFLE_REPLICA_LAG_TIME_MAX_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_lag_time_max_ms: Option<u64>,
    /// Follower fetch long-poll [default: 500].
    #[arg(long, env = "RIFFLE_REPLICA_FETCH_WAIT_MAX_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_fetch_wait_max_ms: Option<u64>,
    /// Bytes per follower fetch [default: 8388608].
    #[arg(long, env = "RIFFLE_REPLICA_FETCH_MAX_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_fetch_max_bytes: Option<u32>,
    /// Rebalance leaders to preferred replicas [default: true].
    #[arg(long, env = "RIFFLE_AUTO_LEADER_REBALANCE_ENABLE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_leader_rebalance_enable: Option<bool>,
    /// Leader imbalance tolerated per broker [default: 10].
    #[arg(long, env = "RIFFLE_LEADER_IMBALANCE_PER_BROKER_PERCENTAGE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_imbalance_per_broker_percentage: Option<u32>,
    /// Leader imbalance check interval [default: 300].
    #[arg(long, env = "RIFFLE_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_imbalance_check_interval_seconds: Option<u64>,
    /// Longest wait for leaderships to move on SIGTERM [default: 30000].
    #[arg(long, env = "RIFFLE_CONTROLLED_SHUTDOWN_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controlled_shutdown_timeout_ms: Option<u64>,
    /// Most partition moves decommissioning and balancing run at once [default: 10].
    #[arg(long, env = "RIFFLE_MAX_CONCURRENT_MOVES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_moves: Option<usize>,
    /// Replica-count tolerance of the balancer, percent of the mean [default: 10].
    #[arg(long, env = "RIFFLE_BALANCER_TOLERANCE_PERCENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balancer_tolerance_percent: Option<u32>,
    /// Enforce ACLs [default: false].
    #[arg(long, env = "RIFFLE_AUTHORIZER_ENABLED")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorizer_enabled: Option<bool>,
    /// Principals allowed everything, `;`-separated [default: none].
    #[arg(long, env = "RIFFLE_SUPER_USERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub super_users: Option<String>,
    /// Open resources without ACLs to everyone when the authorizer is on [default: false].
    #[arg(long, env = "RIFFLE_ALLOW_EVERYONE_IF_NO_ACL_FOUND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_everyone_if_no_acl_found: Option<bool>,
}

/// Configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A value is malformed or unknown.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Builds the configuration: defaults, then the file, then environment and flags.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut table = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        let overrides =
            toml::Table::try_from(cli).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        table.extend(overrides);
        let cfg: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node_id < 0 {
            return bad("node_id must be >= 0");
        }
        if self.offsets_topic_replication_factor < 1 {
            return bad("offsets_topic_replication_factor must be >= 1");
        }
        if self.transaction_max_timeout_ms < 1 {
            return bad("transaction_max_timeout_ms must be >= 1");
        }
        if self.num_partitions < 1 {
            return bad("num_partitions must be >= 1");
        }
        if self.message_max_bytes < 1024 {
            return bad("message_max_bytes must be >= 1024");
        }
        if self.socket_request_max_bytes < self.message_max_bytes {
            return bad("socket_request_max_bytes must be >= message_max_bytes");
        }
        if self.max_in_flight_per_connection == 0 {
            return bad("max_in_flight_per_connection must be >= 1");
        }
        if self.log_memtable_bytes < 4 << 20 {
            return bad("log_memtable_bytes must be >= 4194304");
        }
        if self.queued_max_request_bytes == 0 {
            return bad("queued_max_request_bytes must be >= 1");
        }
        if self.quota_window_num == 0 || self.quota_window_size_seconds == 0 {
            return bad("quota_window_num and quota_window_size_seconds must be >= 1");
        }
        if self.group_min_session_timeout_ms < 1
            || self.group_min_session_timeout_ms > self.group_max_session_timeout_ms
        {
            return bad(
                "group_min_session_timeout_ms must be >= 1 and <= group_max_session_timeout_ms",
            );
        }
        if self.advertised_host_port().is_none() {
            return bad("advertised_listener must be host:port");
        }
        if let Some(v) = &self.voters {
            crate::cluster::parse_voters(v)
                .map_err(|e| ConfigError::Invalid(format!("voters: {e}")))?;
        }
        if self.broker_heartbeat_interval_ms == 0
            || self.broker_session_timeout_ms <= self.broker_heartbeat_interval_ms
        {
            return bad(
                "broker_session_timeout_ms must be larger than broker_heartbeat_interval_ms (> 0)",
            );
        }
        if self.raft_heartbeat_interval_ms == 0
            || self.raft_election_timeout_ms <= self.raft_heartbeat_interval_ms
        {
            return bad(
                "raft_election_timeout_ms must be larger than raft_heartbeat_interval_ms (> 0)",
            );
        }
        Ok(())
    }

    /// Fills in `advertised_rpc` from the address the RPC listener is bound to.
    pub fn resolve_advertised_rpc(&mut self, bound: SocketAddr) {
        if self.advertised_rpc.is_some() {
            return;
        }
        self.advertised_rpc = Some(if bound.ip().is_unspecified() {
            let host = self
                .advertised_host_port()
                .map(|(h, _)| h)
                .unwrap_or_else(|| "localhost".into());
            format!("{host}:{}", bound.port())
        } else {
            bound.to_string()
        });
    }

    /// `host:port` other brokers reach this broker's RPC listener at.
    pub fn advertised_rpc(&self) -> String {
        self.advertised_rpc
            .clone()
            .unwrap_or_else(|| self.rpc_listen.to_string())
    }

    /// The authorization policy these settings describe.
    pub fn acl_policy(&self) -> crate::acl::Policy {
        crate::acl::Policy {
            enabled: self.authorizer_enabled,
            super_users: self
                .super_users
                .split(';')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect(),
            allow_everyone_if_no_acl_found: self.allow_everyone_if_no_acl_found,
        }
    }

    /// Host and port split out of `advertised_listener`.
    pub fn advertised_host_port(&self) -> Option<(String, i32)> {
        split_host_port(&self.advertised_listener)
    }
}

/// Splits `host:port` (IPv6 hosts may be bracketed) into host and port.
pub fn split_host_port(addr: &str) -> Option<(String, i32)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some((host.trim_matches(['[', ']']).to_string(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("riffle.toml");
        std::fs::write(
            &file,
            "node_id = 7\nnum_partitions = 3\nfsync_policy = \"always\"\n",
        )
        .expect("write");
        let cli = Cli::parse_from([
            "riffle",
            "--config",
            file.to_str().expect("utf8"),
            "--num-partitions",
            "5",
            "--advertised-listener",
            "broker-0.riffle:9092",
        ]);
        let cfg = Config::load(&cli).expect("load");
        assert_eq!(cfg.node_id, 7);
        assert_eq!(cfg.num_partitions, 5);
        assert_eq!(cfg.fsync_policy, FsyncPolicy::Always);
        assert_eq!(cfg.listen, Config::default().listen);
        assert_eq!(
            cfg.advertised_host_port(),
            Some(("broker-0.riffle".to_string(), 9092))
        );
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("riffle.toml");
        std::fs::write(&file, "no_such_key = 1\n").expect("write");
        let cli = Cli::parse_from(["riffle", "--config", file.to_str().expect("utf8")]);
        assert!(Config::load(&cli).is_err());
        let cli = Cli::parse_from(["riffle", "--num-partitions", "0"]);
        assert!(Config::load(&cli).is_err());
    }
}
