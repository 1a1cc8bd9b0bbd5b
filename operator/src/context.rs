//! What every reconcile needs: the API client, an event recorder, metrics.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use riffle_client::Connection;

use crate::cluster::autoscale::Tracker;
use crate::cluster::build;
use crate::cluster::plan::Limits;
use crate::crd::Cluster;

/// Field manager for server-side apply and the event reporter name.
pub const MANAGER: &str = "riffle-operator";

/// Operator metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by controller.
    pub reconciles: IntCounterVec,
    /// Failed reconciles by controller and reason.
    pub failures: IntCounterVec,
    /// Reconcile duration by controller.
    pub duration: HistogramVec,
    /// The step each Cluster is at (1 for the current kind, 0 for the others).
    pub cluster_step: IntGaugeVec,
    /// Steps taken per Cluster and kind (decommissions, restarts, ...).
    pub cluster_steps: IntCounterVec,
    /// Partitions not led by their preferred replica, per Cluster.
    pub non_preferred_leaders: IntGaugeVec,
    /// Leaderships moved back to preferred replicas by the operator, per Cluster.
    pub preferred_elections: IntCounterVec,
    /// Brokers the built-in autoscaler's last reading asks for, per Cluster.
    pub recommended_replicas: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "riffle_operator_reconciles_total",
                "Reconciles by controller",
            ),
            &["controller"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "riffle_operator_reconcile_failures_total",
                "Failed reconciles by controller and reason",
            ),
            &["controller", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "riffle_operator_reconcile_duration_seconds",
                "Reconcile duration",
            ),
            &["controller"],
        )
        .expect("valid metric");
        let cluster_step = IntGaugeVec::new(
            Opts::new(
                "riffle_operator_cluster_step",
                "Current step of each Cluster's scale or roll (1 = current kind)",
            ),
            &["namespace", "cluster", "step"],
        )
        .expect("valid metric");
        let cluster_steps = IntCounterVec::new(
            Opts::new(
                "riffle_operator_cluster_steps_total",
                "Scale and roll steps taken, by Cluster and kind",
            ),
            &["namespace", "cluster", "step"],
        )
        .expect("valid metric");
        let non_preferred_leaders = IntGaugeVec::new(
            Opts::new(
                "riffle_operator_cluster_non_preferred_leaders",
                "Partitions led by a replica other than their preferred one (leader imbalance)",
            ),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        let preferred_elections = IntCounterVec::new(
            Opts::new(
                "riffle_operator_preferred_leader_elections_total",
                "Leaderships the operator moved back to preferred replicas",
            ),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        let recommended_replicas = IntGaugeVec::new(
            Opts::new(
                "riffle_operator_autoscaler_recommended_replicas",
                "Brokers the built-in autoscaler's last load reading asks for",
            ),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(cluster_step.clone()),
            Box::new(cluster_steps.clone()),
            Box::new(non_preferred_leaders.clone()),
            Box::new(preferred_elections.clone()),
            Box::new(recommended_replicas.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            cluster_step,
            cluster_steps,
            non_preferred_leaders,
            preferred_elections,
            recommended_replicas,
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

/// Shared reconcile context.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Kafka bootstrap address to use instead of the cluster's Service (for running the
    /// operator outside the cluster, e.g. during development).
    pub bootstrap_override: Option<String>,
    /// Connect timeout for the Kafka admin connection (and the brokers' admin API).
    pub kafka_timeout: Duration,
    /// Time limits of the Cluster planner.
    pub limits: Limits,
    /// Load samples and recommendations of the built-in autoscaler.
    pub autoscaler: Tracker,
}

impl Context {
    /// A context around `client`.
    pub fn new(client: Client, bootstrap_override: Option<String>) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            recorder,
            metrics: Metrics::new(),
            bootstrap_override,
            kafka_timeout: Duration::from_secs(5),
            limits: Limits {
                restart_timeout: Duration::from_secs(300),
                leader_election_interval: Duration::from_secs(300),
            },
            autoscaler: Tracker::default(),
        }
    }

    /// A Kafka connection to `cluster` (its bootstrap Service, or the override).
    pub async fn kafka(&self, cluster: &Cluster) -> Result<Connection, String> {
        let addr = self
            .bootstrap_override
            .clone()
            .unwrap_or_else(|| build::bootstrap_servers(cluster));
        match tokio::time::timeout(self.kafka_timeout, Connection::connect(&addr)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Err(_) => Err(format!("{addr}: connect timed out")),
        }
    }

    /// Publishes an event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.event_related(obj, None, warning, reason, note).await;
    }

    /// Publishes an event about `obj` that also concerns `related` (a broker's Pod).
    /// Events with the same reason fold into one series per (object, related object),
    /// keeping the first note: naming the Pod keeps one broker's events apart from
    /// another's.
    pub async fn event_related<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        related: Option<ObjectReference>,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: related,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing event failed");
        }
    }
}
