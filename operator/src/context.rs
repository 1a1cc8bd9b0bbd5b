//! What every reconcile needs: the API client, an event recorder, metrics.

use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(cluster_step.clone()),
            Box::new(cluster_steps.clone()),
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
    /// How long a restarted broker may take to be ready before a rolling restart stops.
    pub restart_timeout: Duration,
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
            restart_timeout: Duration::from_secs(300),
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
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing event failed");
        }
    }
}
