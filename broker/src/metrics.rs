//! Prometheus metrics of the broker. Label sets are closed: API names, error names,
//! topic names and partition indexes only.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All broker metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Requests by API.
    pub requests: IntCounterVec,
    /// Error codes returned, by API and error.
    pub errors: IntCounterVec,
    /// Request latency by API.
    pub latency: HistogramVec,
    /// Record batch bytes produced, by topic.
    pub bytes_in: IntCounterVec,
    /// Record batch bytes fetched, by topic.
    pub bytes_out: IntCounterVec,
    /// Records produced, by topic.
    pub records_in: IntCounterVec,
    /// Records fetched (counted per returned batch), by topic.
    pub records_out: IntCounterVec,
    /// Log end offset (high watermark) per partition.
    pub log_end_offset: IntGaugeVec,
    /// Log start offset per partition.
    pub log_start_offset: IntGaugeVec,
    /// Stored batch bytes per partition.
    pub partition_bytes: IntGaugeVec,
    /// Open client connections.
    pub connections: IntGauge,
    /// Bytes of requests read and not yet answered (bounded by `queued_max_request_bytes`).
    pub request_bytes_held: IntGauge,
    /// Storage bytes (SST plus memtables) per column family.
    pub storage_bytes: IntGaugeVec,
    /// Write groups synced to the WAL (fsync policy, `flush.messages`, `flush.ms`).
    pub wal_syncs: IntCounter,
    /// Connections closed because of undecodable or oversized requests.
    pub bad_frames: IntCounterVec,
    /// Committed offset per group and partition.
    pub group_committed: IntGaugeVec,
    /// Consumer lag (high watermark minus committed offset) per group and partition.
    pub group_lag: IntGaugeVec,
    /// Groups by state.
    pub groups: IntGaugeVec,
    /// Rebalances started per group.
    pub group_rebalances: IntGaugeVec,
    /// Replica bytes fetched from leaders.
    pub replication_bytes_in: IntCounter,
    /// Replica bytes sent to followers.
    pub replication_bytes_out: IntCounter,
    /// ISR shrinks committed for partitions this broker leads.
    pub isr_shrinks: IntCounter,
    /// ISR expansions committed for partitions this broker leads.
    pub isr_expands: IntCounter,
    /// Partition counts this broker leads, by condition: under-replicated, under-min-isr,
    /// offline (cluster-wide, reported by the controller), leaders.
    pub partitions: IntGaugeVec,
    /// On the leader: records each follower is behind the leader's log end.
    pub replica_lag_records: IntGaugeVec,
    /// On the leader: seconds since each follower was last caught up.
    pub replica_lag_seconds: GaugeVec,
    /// Metadata quorum: is-controller, term, commit index, applied index.
    pub quorum: IntGaugeVec,
    /// Leaderships of this broker's preferred partitions held by other brokers.
    pub preferred_imbalance: IntGauge,
    /// Cluster operations: reassignments in flight, replicas left on decommissioning
    /// brokers, brokers in maintenance.
    pub operations: IntGaugeVec,
    /// Replication throttle rates in effect on this broker (bytes/s; 0: unthrottled).
    pub throttle_rate: IntGaugeVec,
    /// Client quota throttle time imposed, in milliseconds, by quota key.
    pub quota_throttle_ms: IntCounterVec,
    /// Bytes this broker sent to replicas that reassignments add.
    pub reassignment_bytes: IntCounter,
    /// Cluster operations the active controller started, by kind (rack, replicas,
    /// leaders, decommission).
    pub balancer_moves: IntCounterVec,
    /// Log cleaner passes that rewrote a partition, by topic.
    pub cleaner_runs: IntCounterVec,
    /// Bytes the log cleaner read (`read`) and removed (`removed`), by topic.
    pub cleaner_bytes: IntCounterVec,
    /// Dirty share of each compacted partition's cleanable range, as last measured.
    pub dirty_ratio: GaugeVec,
    /// Seconds the log cleaner spent in passes that rewrote a partition.
    pub cleaner_seconds: prometheus::Counter,
    /// Transactions this broker's coordinator ended, by outcome (commit, abort).
    pub transactions: IntCounterVec,
    /// Transactional ids this broker coordinates, by phase.
    pub transaction_ids: IntGaugeVec,
    /// Last stable offset lag (high watermark minus LSO) of partitions this broker leads.
    pub lso_lag: IntGaugeVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are static and unique, so registration cannot fail.
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds: what the
        // operator's autoscaler and capacity dashboards read.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics register once");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let latency = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new("riffle_request_duration_seconds", "Request latency by API")
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                &["api"],
            )
            .expect("valid metric"),
        );
        Metrics {
            requests: counter("riffle_requests_total", "Requests by API", &["api"]),
            errors: counter(
                "riffle_request_errors_total",
                "Error codes returned by API and error",
                &["api", "error"],
            ),
            latency,
            bytes_in: counter(
                "riffle_topic_bytes_in_total",
                "Record batch bytes produced",
                &["topic"],
            ),
            bytes_out: counter(
                "riffle_topic_bytes_out_total",
                "Record batch bytes fetched",
                &["topic"],
            ),
            records_in: counter(
                "riffle_topic_records_in_total",
                "Records produced",
                &["topic"],
            ),
            records_out: counter(
                "riffle_topic_records_out_total",
                "Records fetched",
                &["topic"],
            ),
            log_end_offset: gauge(
                "riffle_partition_log_end_offset",
                "High watermark per partition",
                &["topic", "partition"],
            ),
            log_start_offset: gauge(
                "riffle_partition_log_start_offset",
                "Log start offset per partition",
                &["topic", "partition"],
            ),
            partition_bytes: gauge(
                "riffle_partition_size_bytes",
                "Stored batch bytes per partition",
                &["topic", "partition"],
            ),
            connections: reg(
                &r,
                IntGauge::new("riffle_connections_open", "Open client connections")
                    .expect("valid metric"),
            ),
            request_bytes_held: reg(
                &r,
                IntGauge::new(
                    "riffle_request_bytes_held",
                    "Bytes of requests read and not yet answered",
                )
                .expect("valid metric"),
            ),
            wal_syncs: reg(
                &r,
                IntCounter::new("riffle_wal_syncs_total", "Write groups synced to the WAL")
                    .expect("valid metric"),
            ),
            storage_bytes: gauge(
                "riffle_storage_bytes",
                "RocksDB SST, blob file and memtable bytes by column family",
                &["cf"],
            ),
            bad_frames: counter(
                "riffle_connections_closed_bad_request_total",
                "Connections closed for undecodable, unsupported or oversized requests",
                &["reason"],
            ),
            group_committed: gauge(
                "riffle_group_committed_offset",
                "Committed offset per consumer group and partition",
                &["group", "topic", "partition"],
            ),
            group_lag: gauge(
                "riffle_group_lag",
                "Consumer lag: high watermark minus committed offset",
                &["group", "topic", "partition"],
            ),
            groups: gauge("riffle_groups", "Consumer groups by state", &["state"]),
            group_rebalances: gauge(
                "riffle_group_rebalances_total",
                "Rebalances started per consumer group since broker start",
                &["group"],
            ),
            replication_bytes_in: reg(
                &r,
                IntCounter::new("riffle_replication_bytes_in_total", "Replica bytes fetched from leaders")
                    .expect("valid metric"),
            ),
            replication_bytes_out: reg(
                &r,
                IntCounter::new("riffle_replication_bytes_out_total", "Replica bytes sent to followers")
                    .expect("valid metric"),
            ),
            isr_shrinks: reg(
                &r,
                IntCounter::new("riffle_isr_shrinks_total", "ISR shrinks of partitions led here")
                    .expect("valid metric"),
            ),
            isr_expands: reg(
                &r,
                IntCounter::new("riffle_isr_expands_total", "ISR expansions of partitions led here")
                    .expect("valid metric"),
            ),
            partitions: gauge(
                "riffle_partitions",
                "Partitions by condition: leader (led here), under_replicated and under_min_isr (led here), offline (cluster-wide)",
                &["condition"],
            ),
            replica_lag_records: gauge(
                "riffle_replica_lag_records",
                "On the partition leader: records a follower is behind the leader's log end",
                &["topic", "partition", "replica"],
            ),
            replica_lag_seconds: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "riffle_replica_lag_seconds",
                        "On the partition leader: seconds since a follower was last caught up",
                    ),
                    &["topic", "partition", "replica"],
                )
                .expect("valid metric"),
            ),
            quorum: gauge(
                "riffle_metadata_quorum",
                "Metadata quorum: active_controller (1 if this broker), term, commit_index, applied_index",
                &["field"],
            ),
            preferred_imbalance: reg(
                &r,
                IntGauge::new(
                    "riffle_preferred_leader_imbalance",
                    "Partitions preferring this broker as leader but led elsewhere",
                )
                .expect("valid metric"),
            ),
            operations: gauge(
                "riffle_cluster_operations",
                "reassignments in flight, decommission_replicas_left, brokers in maintenance",
                &["kind"],
            ),
            throttle_rate: gauge(
                "riffle_replication_throttle_rate_bytes",
                "Replication throttle in effect (bytes/s, 0 when unthrottled), by side",
                &["side"],
            ),
            reassignment_bytes: reg(
                &r,
                IntCounter::new(
                    "riffle_reassignment_bytes_out_total",
                    "Bytes sent to replicas that reassignments add",
                )
                .expect("valid metric"),
            ),
            balancer_moves: counter(
                "riffle_balancer_moves_total",
                "Moves the active controller started, by kind",
                &["kind"],
            ),
            quota_throttle_ms: counter(
                "riffle_client_quota_throttle_ms_total",
                "Throttle time imposed on clients over their quota (ms), by quota",
                &["quota"],
            ),
            cleaner_runs: counter(
                "riffle_log_cleaner_runs_total",
                "Log cleaner passes that rewrote a partition, by topic",
                &["topic"],
            ),
            cleaner_bytes: counter(
                "riffle_log_cleaner_bytes_total",
                "Bytes the log cleaner read and removed, by topic",
                &["topic", "kind"],
            ),
            cleaner_seconds: reg(
                &r,
                prometheus::Counter::new(
                    "riffle_log_cleaner_seconds_total",
                    "Seconds the log cleaner spent in passes that rewrote a partition",
                )
                .expect("valid metric"),
            ),
            transactions: counter(
                "riffle_transactions_total",
                "Transactions this broker's coordinator ended, by outcome",
                &["outcome"],
            ),
            transaction_ids: gauge(
                "riffle_transactional_ids",
                "Transactional ids this broker coordinates, by phase",
                &["phase"],
            ),
            lso_lag: gauge(
                "riffle_last_stable_offset_lag",
                "High watermark minus last stable offset (records held back by open transactions)",
                &["topic", "partition"],
            ),
            dirty_ratio: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "riffle_log_cleaner_dirty_ratio",
                        "Dirty share of a compacted partition's cleanable range",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid metric"),
            ),
            registry: r,
        }
    }

    /// Counts an error code returned for an API (0 is not an error).
    pub fn error(&self, api: &str, code: i16) {
        if code != 0 {
            let name = kafka_protocol::error::ResponseError::try_from_code(code)
                .map(|e| format!("{e:?}"))
                .unwrap_or_else(|| code.to_string());
            self.errors.with_label_values(&[api, &name]).inc();
        }
    }

    /// Removes every per-topic and per-partition series of a deleted topic.
    pub fn forget_topic(&self, topic: &str, partitions: i32) {
        for v in [
            &self.bytes_in,
            &self.bytes_out,
            &self.records_in,
            &self.records_out,
        ] {
            let _ = v.remove_label_values(&[topic]);
        }
        for p in 0..partitions {
            let p = p.to_string();
            for g in [
                &self.log_end_offset,
                &self.log_start_offset,
                &self.partition_bytes,
            ] {
                let _ = g.remove_label_values(&[topic, &p]);
            }
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
