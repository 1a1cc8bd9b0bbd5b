//! The `riffle.dev/v1alpha1` custom resources: `Cluster` and `Topic`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A Riffle broker cluster: a StatefulSet of brokers with its services and config.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "riffle.dev",
    version = "v1alpha1",
    kind = "Cluster",
    namespaced,
    shortname = "rfc",
    status = "ClusterStatus",
    cel,
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Bootstrap","type":"string","jsonPath":".status.bootstrapServers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.voters) || self.replicas >= self.voters").message("replicas cannot be fewer than voters"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Number of brokers.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1").message("a cluster needs at least one broker"))]
    pub replicas: i32,
    /// Broker image.
    #[serde(default = "default_image")]
    pub image: String,
    /// Image pull policy (Kubernetes default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Broker container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Persistent storage per broker.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Broker settings (keys of the broker config file, e.g. `log_retention_ms`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Listener ports.
    #[serde(default)]
    pub listeners: ListenerSpec,
    /// Pod template overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodOverrides>,
    /// Metrics exposure.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Brokers that vote in the metadata quorum (the lowest ordinals): 1, or 3 to
    /// survive the loss of one. Default: 3 when the cluster has 3 brokers or more.
    /// Fixed once the cluster exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 1 || self == 3").message("voters must be 1 or 3"))]
    pub voters: Option<i32>,
    /// Built-in autoscaling from the brokers' own load: the operator sets `replicas`
    /// (through the scale subresource) between `minReplicas` and `maxReplicas`. Do not
    /// combine with a HorizontalPodAutoscaler on the same Cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// Built-in autoscaling policy. Brokers needed = the Cluster's total load over the
/// per-broker target, rounded up (the larger of the two when both targets are set).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas cannot exceed maxReplicas"))]
#[x_kube(validation = Rule::new("has(self.targetBytesInPerBroker) || has(self.targetCpuMillisPerBroker)").message("set targetBytesInPerBroker, targetCpuMillisPerBroker or both"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest brokers (at least the voters and the largest replication factor).
    #[x_kube(validation = Rule::new("self >= 1").message("minReplicas must be at least 1"))]
    pub min_replicas: i32,
    /// Most brokers.
    pub max_replicas: i32,
    /// Produced bytes per second each broker should take on average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("targetBytesInPerBroker must be positive"))]
    pub target_bytes_in_per_broker: Option<i64>,
    /// CPU each broker should use on average, in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("targetCpuMillisPerBroker must be positive"))]
    pub target_cpu_millis_per_broker: Option<i64>,
    /// Seconds the load must ask for more brokers before a scale-out.
    #[serde(default = "default_scale_up_window")]
    #[x_kube(validation = Rule::new("self >= 0").message("scaleUpWindowSeconds must not be negative"))]
    pub scale_up_window_seconds: i64,
    /// Seconds the load must ask for fewer brokers before a scale-in.
    #[serde(default = "default_scale_down_window")]
    #[x_kube(validation = Rule::new("self >= 0").message("scaleDownWindowSeconds must not be negative"))]
    pub scale_down_window_seconds: i64,
    /// Seconds after any scale before the next one.
    #[serde(default = "default_cooldown")]
    #[x_kube(validation = Rule::new("self >= 0").message("cooldownSeconds must not be negative"))]
    pub cooldown_seconds: i64,
    /// Seconds between two readings of the brokers' metrics.
    #[serde(default = "default_autoscaling_interval")]
    #[x_kube(validation = Rule::new("self >= 1").message("intervalSeconds must be at least 1"))]
    pub interval_seconds: i64,
}

fn default_scale_up_window() -> i64 {
    120
}

fn default_scale_down_window() -> i64 {
    600
}

fn default_cooldown() -> i64 {
    300
}

fn default_autoscaling_interval() -> i64 {
    15
}

fn default_replicas() -> i32 {
    3
}

fn default_image() -> String {
    "ghcr.io/riffle-dev/riffle:0.1.0".into()
}

/// Broker storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size per broker.
    #[serde(default = "default_size")]
    pub size: String,
    /// Storage class (cluster default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the brokers' volume claims when the Cluster is deleted.
    #[serde(default)]
    pub delete_claim: bool,
}

fn default_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_size(),
            storage_class_name: None,
            delete_claim: false,
        }
    }
}

/// Listener ports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Kafka protocol port.
    #[serde(default = "default_kafka_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port out of range"))]
    pub kafka: i32,
    /// HTTP port (metrics, health).
    #[serde(default = "default_http_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port out of range"))]
    pub http: i32,
    /// Replication and metadata-quorum port (gRPC, between brokers).
    #[serde(default = "default_rpc_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port out of range"))]
    pub rpc: i32,
}

fn default_kafka_port() -> i32 {
    9092
}

fn default_http_port() -> i32 {
    9644
}

fn default_rpc_port() -> i32 {
    9093
}

impl Default for ListenerSpec {
    fn default() -> Self {
        ListenerSpec {
            kafka: default_kafka_port(),
            http: default_http_port(),
            rpc: default_rpc_port(),
        }
    }
}

/// Pod template overrides.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Scheduling affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Metrics exposure.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Annotate pods for Prometheus scraping.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec { enabled: true }
    }
}

/// Observed state of a Cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Brokers that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Brokers that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `host:port` list for clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    /// Broker addresses by broker id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
    /// Label selector of the broker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Metadata quorum voters the brokers were started with (kept even when
    /// `spec.replicas` changes the default later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<i32>,
    /// What the operator is doing or waiting for (scaling, rolling restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Broker being restarted by a rolling restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarting: Option<i32>,
    /// When that restart began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarting_since: Option<Time>,
    /// Partitions led by a replica other than their preferred one (leader imbalance),
    /// as the brokers last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_preferred_leaders: Option<i32>,
    /// When the operator last triggered a preferred-leader election (cleared when a
    /// broker restart ends, so that one follows every roll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_leader_election: Option<Time>,
    /// What the built-in autoscaler measured and decided last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// The built-in autoscaler's last reading and decision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// Produced bytes per second, all brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in_per_second: Option<i64>,
    /// CPU millicores, all brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<i64>,
    /// Brokers the current load asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_replicas: Option<i32>,
    /// The last decision, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// When the autoscaler last changed `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// A topic on a Riffle cluster, managed through the Kafka admin API.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "riffle.dev",
    version = "v1alpha1",
    kind = "Topic",
    namespaced,
    shortname = "rft",
    status = "TopicStatus",
    cel,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef.name"}"#,
    printcolumn = r#"{"name":"Partitions","type":"integer","jsonPath":".spec.partitions"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.partitions >= oldSelf.partitions").message("partitions can only grow"))]
#[x_kube(validation = Rule::new("self.clusterRef == oldSelf.clusterRef").message("clusterRef is immutable"))]
#[x_kube(validation = Rule::new("has(self.topicName) == has(oldSelf.topicName) && (!has(self.topicName) || self.topicName == oldSelf.topicName)").message("topicName is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Cluster the topic lives on (same namespace).
    pub cluster_ref: ClusterRef,
    /// Kafka topic name; defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// Partition count (may only grow).
    #[x_kube(validation = Rule::new("self >= 1").message("partitions must be at least 1"))]
    pub partitions: i32,
    /// Replication factor.
    #[serde(default = "default_rf")]
    #[x_kube(validation = Rule::new("self >= 1").message("replicationFactor must be at least 1"))]
    pub replication_factor: i32,
    /// Topic configs; a null value leaves that key unmanaged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, Option<String>>,
    /// What happens to the Kafka topic when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_rf() -> i32 {
    1
}

/// Reference to a Cluster in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClusterRef {
    /// Cluster name.
    pub name: String,
}

/// What to do with the Kafka topic when the Topic object is deleted.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DeletionPolicy {
    /// Delete the Kafka topic and its data.
    #[default]
    Delete,
    /// Keep the Kafka topic.
    Retain,
}

/// Observed state of a Topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready condition with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Kafka topic id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partitions observed on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor observed on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
}
