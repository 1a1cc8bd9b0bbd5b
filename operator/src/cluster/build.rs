//! Pure builders: a Cluster spec → every Kubernetes object it needs. Deterministic (sorted
//! maps), no I/O, so they are tested with golden snapshots.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::Cluster;

/// Broker settings the operator sets itself; a spec may not override them.
pub const RESERVED_CONFIG: &[&str] = &[
    "node_id",
    "data_dir",
    "listen",
    "advertised_listener",
    "http_listen",
    "rpc_listen",
    "advertised_rpc",
    "voters",
    "config",
];

/// Broker settings a spec may set (see the broker's configuration reference).
pub const BROKER_CONFIG_KEYS: &[&str] = &[
    "auto_create_topics_enable",
    "num_partitions",
    "default_replication_factor",
    "message_max_bytes",
    "socket_request_max_bytes",
    "log_retention_ms",
    "log_retention_bytes",
    "log_segment_bytes",
    "log_roll_ms",
    "log_retention_check_interval_ms",
    "min_insync_replicas",
    "fsync_policy",
    "max_in_flight_per_connection",
    "group_initial_rebalance_delay_ms",
    "group_min_session_timeout_ms",
    "group_max_session_timeout_ms",
    "offsets_retention_minutes",
    "offsets_topic_replication_factor",
    "broker_heartbeat_interval_ms",
    "broker_session_timeout_ms",
    "raft_heartbeat_interval_ms",
    "raft_election_timeout_ms",
    "replica_lag_time_max_ms",
    "replica_fetch_wait_max_ms",
    "replica_fetch_max_bytes",
    "auto_leader_rebalance_enable",
    "leader_imbalance_per_broker_percentage",
    "leader_imbalance_check_interval_seconds",
    "controlled_shutdown_timeout_ms",
    "max_concurrent_moves",
    "balancer_tolerance_percent",
];

/// Settings the brokers take at runtime as cluster-wide dynamic defaults (Kafka's
/// IncrementalAlterConfigs on `BROKER ""`), with their Kafka names: changing one of them
/// in a spec applies it without a rolling restart.
pub const DYNAMIC_CONFIG: &[(&str, &str)] = &[
    ("auto_create_topics_enable", "auto.create.topics.enable"),
    ("log_retention_bytes", "log.retention.bytes"),
    (
        "log_retention_check_interval_ms",
        "log.retention.check.interval.ms",
    ),
    ("log_retention_ms", "log.retention.ms"),
    ("log_roll_ms", "log.roll.ms"),
    ("log_segment_bytes", "log.segment.bytes"),
    ("message_max_bytes", "message.max.bytes"),
    ("min_insync_replicas", "min.insync.replicas"),
];

/// The spec's dynamic settings by Kafka name.
pub fn dynamic_config(cluster: &Cluster) -> BTreeMap<String, String> {
    DYNAMIC_CONFIG
        .iter()
        .filter_map(|(key, kafka)| {
            Some((kafka.to_string(), cluster.spec.config.get(*key)?.clone()))
        })
        .collect()
}

/// What to change in the brokers' dynamic defaults (`current`, by Kafka name) so that the
/// settings this operator manages are as `want`: set (`Some`) what differs, delete
/// (`None`) what `want` no longer has. Other keys are left alone.
pub fn config_changes(
    want: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    DYNAMIC_CONFIG
        .iter()
        .filter_map(|(_, name)| match (want.get(*name), current.get(*name)) {
            (Some(w), Some(c)) if w == c => None,
            (Some(w), _) => Some((name.to_string(), Some(w.clone()))),
            (None, Some(_)) => Some((name.to_string(), None)),
            (None, None) => None,
        })
        .collect()
}

/// Where brokers keep their data inside the pod.
const DATA_PATH: &str = "/var/lib/riffle";
/// Enough for the `preStop` hook (at most `PRE_STOP_WAIT_SECONDS`), then the broker's
/// controlled shutdown: finish requests and flush.
const TERMINATION_GRACE_SECONDS: i64 = 120;
/// How long the `preStop` hook waits for leaderships to move off the broker.
const PRE_STOP_WAIT_SECONDS: i64 = 60;

/// Checks a spec; returns every problem found.
pub fn validate(cluster: &Cluster) -> Vec<String> {
    let spec = &cluster.spec;
    let mut errors = Vec::new();
    if spec.replicas < 1 {
        errors.push(format!(
            "spec.replicas must be at least 1, got {}",
            spec.replicas
        ));
    }
    if !is_quantity(&spec.storage.size) {
        errors.push(format!(
            "spec.storage.size {:?} is not a Kubernetes quantity",
            spec.storage.size
        ));
    }
    let ports = [
        spec.listeners.kafka,
        spec.listeners.http,
        spec.listeners.rpc,
    ];
    if ports
        .iter()
        .enumerate()
        .any(|(i, p)| ports[..i].contains(p))
    {
        errors.push("spec.listeners.kafka, http and rpc must differ".into());
    }
    let started = cluster.status.as_ref().and_then(|s| s.voters);
    if let (Some(was), Some(now)) = (started, spec.voters) {
        if was != now {
            errors.push(format!(
                "spec.voters cannot change once the cluster exists (started with {was})"
            ));
        }
    }
    let voters = voters(cluster);
    if spec.replicas < voters {
        errors.push(format!(
            "spec.replicas {} is fewer than the {voters} metadata voters",
            spec.replicas
        ));
    }
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas < voters {
            errors.push(format!(
                "spec.autoscaling.minReplicas {} is fewer than the {voters} metadata voters",
                a.min_replicas
            ));
        }
    }
    for key in spec.config.keys() {
        if RESERVED_CONFIG.contains(&key.as_str()) {
            errors.push(format!("spec.config.{key} is managed by the operator"));
        } else if !BROKER_CONFIG_KEYS.contains(&key.as_str()) {
            errors.push(format!("spec.config.{key} is not a broker setting"));
        }
    }
    errors
}

fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok()
        && [
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "m",
        ]
        .contains(&suffix)
}

/// Metadata quorum voters: what the brokers were started with, else the spec, else
/// 3 for a cluster of 3 brokers or more and 1 below.
pub fn voters(cluster: &Cluster) -> i32 {
    let started = cluster.status.as_ref().and_then(|s| s.voters);
    started
        .or(cluster.spec.voters)
        .unwrap_or(if cluster.spec.replicas >= 3 { 3 } else { 1 })
}

/// `--voters` value: the lowest ordinals at their stable RPC addresses.
pub fn voter_list(cluster: &Cluster) -> String {
    (0..voters(cluster))
        .map(|id| {
            format!(
                "{id}@{}",
                pod_address(cluster, id, cluster.spec.listeners.rpc)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels every object of a cluster carries; the first three select broker pods.
pub fn selector_labels(cluster: &Cluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "riffle".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            "broker".to_string(),
        ),
    ])
}

fn labels(cluster: &Cluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "riffle-operator".into(),
    );
    l
}

/// Label selector string for the scale subresource.
pub fn selector_string(cluster: &Cluster) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn meta(cluster: &Cluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster)),
        owner_references: cluster
            .controller_owner_ref(&())
            .map(|o: OwnerReference| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Name of the headless Service giving each broker a stable DNS name.
pub fn headless_name(cluster: &Cluster) -> String {
    format!("{}-brokers", cluster.name_any())
}

/// Name of the bootstrap Service clients connect to.
pub fn bootstrap_name(cluster: &Cluster) -> String {
    format!("{}-bootstrap", cluster.name_any())
}

/// `host:port` clients use to bootstrap.
pub fn bootstrap_servers(cluster: &Cluster) -> String {
    format!(
        "{}.{}.svc:{}",
        bootstrap_name(cluster),
        cluster.namespace().unwrap_or_else(|| "default".into()),
        cluster.spec.listeners.kafka
    )
}

/// Stable Kafka address of broker `id`.
pub fn broker_address(cluster: &Cluster, id: i32) -> String {
    pod_address(cluster, id, cluster.spec.listeners.kafka)
}

/// Name of broker `id`'s Pod (the StatefulSet's ordinal `id`).
pub fn pod_name(cluster: &Cluster, id: i32) -> String {
    format!("{}-{id}", cluster.name_any())
}

/// `host:port` of broker `id`'s Pod (stable DNS name through the headless Service).
pub fn pod_address(cluster: &Cluster, id: i32, port: i32) -> String {
    format!(
        "{}.{}.{}.svc:{port}",
        pod_name(cluster, id),
        headless_name(cluster),
        cluster.namespace().unwrap_or_else(|| "default".into()),
    )
}

/// Every object of a cluster, in apply order (configuration before workloads).
pub struct Objects {
    /// Pod identity.
    pub service_account: ServiceAccount,
    /// Broker settings as environment variables.
    pub config_map: ConfigMap,
    /// Per-broker DNS.
    pub headless: Service,
    /// Client entry point.
    pub bootstrap: Service,
    /// At most one broker down at a time during voluntary disruptions.
    pub pdb: PodDisruptionBudget,
    /// The brokers.
    pub stateful_set: StatefulSet,
}

/// Annotation on a Cluster whose every change restarts all brokers, one at a time.
pub const RESTART_ANNOTATION: &str = "riffle.dev/restart";

/// Builds every object for `cluster`, with a StatefulSet of `replicas` brokers (the
/// spec's count, or more while a scale-down drains the highest brokers).
pub fn build(cluster: &Cluster, replicas: i32) -> Objects {
    let name = cluster.name_any();
    let spec = &cluster.spec;
    // Dynamic settings reach the brokers through the metadata quorum (a starting broker
    // has them as soon as it caught up), not through the ConfigMap: a change or removal
    // of one then needs no restart and leaves no stale static value behind.
    let env_config: BTreeMap<String, String> = spec
        .config
        .iter()
        .filter(|(k, _)| !DYNAMIC_CONFIG.iter().any(|(d, _)| d == k))
        .map(|(k, v)| (format!("RIFFLE_{}", k.to_ascii_uppercase()), v.clone()))
        .collect();
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        ..Default::default()
    };
    let client_ports = vec![
        port("kafka", spec.listeners.kafka),
        port("http", spec.listeners.http),
    ];
    // Brokers reach each other's RPC port by their per-pod names.
    let mut broker_ports = client_ports.clone();
    broker_ports.push(port("rpc", spec.listeners.rpc));
    let headless = Service {
        metadata: meta(cluster, headless_name(cluster)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster)),
            ports: Some(broker_ports),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bootstrap = Service {
        metadata: meta(cluster, bootstrap_name(cluster)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(cluster)),
            ports: Some(client_ports),
            ..Default::default()
        }),
        ..Default::default()
    };
    let env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        // Broker id = StatefulSet ordinal, stable across restarts and rescheduling.
        field_env(
            "RIFFLE_NODE_ID",
            "metadata.labels['apps.kubernetes.io/pod-index']",
        ),
        plain_env("RIFFLE_DATA_DIR", DATA_PATH),
        plain_env(
            "RIFFLE_LISTEN",
            &format!("0.0.0.0:{}", spec.listeners.kafka),
        ),
        plain_env(
            "RIFFLE_HTTP_LISTEN",
            &format!("0.0.0.0:{}", spec.listeners.http),
        ),
        plain_env(
            "RIFFLE_ADVERTISED_LISTENER",
            &format!(
                "$(POD_NAME).{}.$(POD_NAMESPACE).svc:{}",
                headless_name(cluster),
                spec.listeners.kafka
            ),
        ),
        plain_env(
            "RIFFLE_RPC_LISTEN",
            &format!("0.0.0.0:{}", spec.listeners.rpc),
        ),
        plain_env(
            "RIFFLE_ADVERTISED_RPC",
            &format!(
                "$(POD_NAME).{}.$(POD_NAMESPACE).svc:{}",
                headless_name(cluster),
                spec.listeners.rpc
            ),
        ),
        plain_env("RIFFLE_VOTERS", &voter_list(cluster)),
    ];
    let probe = |path: &str, initial: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let container = Container {
        name: "riffle".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec!["/usr/local/bin/riffle".into()]),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: format!("{name}-config"),
                optional: None,
            }),
            ..Default::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("kafka".into()),
                container_port: spec.listeners.kafka,
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: spec.listeners.http,
                ..Default::default()
            },
            ContainerPort {
                name: Some("rpc".into()),
                container_port: spec.listeners.rpc,
                ..Default::default()
            },
        ]),
        // Before SIGTERM (an eviction, a node drain, a Pod deleted by hand or by a roll):
        // maintenance until the broker is back, so that its leaderships move while it
        // still serves, and no flag outlives the restart.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/usr/local/bin/riffle".into(),
                        "admin".into(),
                        format!("--http=127.0.0.1:{}", spec.listeners.http),
                        "maintenance".into(),
                        "--until-restart".into(),
                        format!("--wait={PRE_STOP_WAIT_SECONDS}"),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 30)),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_PATH.into(),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let overrides = spec.template.clone().unwrap_or_default();
    let mut pod_labels = labels(cluster);
    pod_labels.extend(overrides.labels.clone());
    pod_labels.extend(selector_labels(cluster));
    let mut annotations = overrides.annotations.clone();
    if spec.metrics.enabled {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), spec.listeners.http.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
    }
    // A config change must roll the brokers: hash it into the pod template.
    annotations.insert(
        "riffle.dev/config-hash".into(),
        format!("{:016x}", fnv1a(&format!("{env_config:?}"))),
    );
    if let Some(restart) = cluster.annotations().get(RESTART_ANNOTATION) {
        annotations.insert(RESTART_ANNOTATION.into(), restart.clone());
    }
    let stateful_set = StatefulSet {
        metadata: meta(cluster, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_name(cluster)),
            // The operator restarts brokers itself, one at a time, once each has
            // handed its leaderships over (see `plan`).
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..Default::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if spec.storage.delete_claim {
                            "Delete"
                        } else {
                            "Retain"
                        }
                        .into(),
                    ),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    containers: vec![container],
                    affinity: overrides.affinity.clone(),
                    tolerations: (!overrides.tolerations.is_empty())
                        .then(|| overrides.tolerations.clone()),
                    node_selector: (!overrides.node_selector.is_empty())
                        .then(|| overrides.node_selector.clone()),
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(10001),
                        run_as_group: Some(10001),
                        fs_group: Some(10001),
                        run_as_non_root: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(selector_labels(cluster)),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(spec.storage.size.clone()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Objects {
        service_account: ServiceAccount {
            metadata: meta(cluster, name.clone()),
            ..Default::default()
        },
        config_map: ConfigMap {
            metadata: meta(cluster, format!("{name}-config")),
            data: Some(env_config),
            ..Default::default()
        },
        headless,
        bootstrap,
        pdb: PodDisruptionBudget {
            metadata: meta(cluster, name),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(cluster)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        stateful_set,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Stable 64-bit FNV-1a (std's hasher is not stable across releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClusterSpec;

    fn cluster(json: serde_json::Value) -> Cluster {
        let spec: ClusterSpec = serde_json::from_value(json).expect("spec");
        let mut c = Cluster::new("events", spec);
        c.metadata.namespace = Some("streaming".into());
        c.metadata.uid = Some("0d2c7c1e-4b7e-4a51-9d8a-3f0c6a1b2c3d".into());
        c
    }

    fn yaml(o: &Objects) -> String {
        let docs = [
            serde_yaml::to_string(&o.service_account),
            serde_yaml::to_string(&o.config_map),
            serde_yaml::to_string(&o.headless),
            serde_yaml::to_string(&o.bootstrap),
            serde_yaml::to_string(&o.pdb),
            serde_yaml::to_string(&o.stateful_set),
        ];
        docs.into_iter()
            .map(|d| d.expect("yaml"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    #[test]
    fn default_cluster_objects() {
        insta::assert_snapshot!(yaml(&build(&cluster(serde_json::json!({})), 3)));
    }

    #[test]
    fn customised_cluster_objects() {
        let c = cluster(serde_json::json!({
            "replicas": 5,
            "image": "registry.local/riffle:dev",
            "storage": {"size": "100Gi", "storageClassName": "fast", "deleteClaim": true},
            "config": {"log_retention_ms": "86400000", "num_partitions": "6"},
            "template": {"nodeSelector": {"disk": "ssd"}, "annotations": {"team": "data"}},
            "metrics": {"enabled": false},
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}
        }));
        insta::assert_snapshot!(yaml(&build(&c, c.spec.replicas)));
    }

    #[test]
    fn building_is_deterministic_and_config_changes_roll_pods() {
        let a = cluster(serde_json::json!({"config": {"num_partitions": "3"}}));
        let b = cluster(serde_json::json!({"config": {"num_partitions": "4"}}));
        assert_eq!(
            yaml(&build(&a, a.spec.replicas)),
            yaml(&build(&a, a.spec.replicas))
        );
        let hash = |c: &Cluster| {
            build(c, c.spec.replicas)
                .stateful_set
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get("riffle.dev/config-hash").cloned())
        };
        assert_ne!(hash(&a), hash(&b));
        // Dynamic settings change no pod: they are applied at runtime.
        let c = cluster(serde_json::json!({"config": {"num_partitions": "3",
            "log_retention_ms": "60000", "min_insync_replicas": "2"}}));
        assert_eq!(hash(&a), hash(&c));
        assert_eq!(
            dynamic_config(&c),
            BTreeMap::from([
                ("log.retention.ms".to_string(), "60000".to_string()),
                ("min.insync.replicas".to_string(), "2".to_string()),
            ])
        );
        let cm = build(&c, 3).config_map.data.unwrap_or_default();
        assert_eq!(cm.keys().collect::<Vec<_>>(), ["RIFFLE_NUM_PARTITIONS"]);
    }

    #[test]
    fn dynamic_changes_set_what_differs_and_delete_what_is_gone() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let want = m(&[("log.retention.ms", "60000"), ("min.insync.replicas", "2")]);
        let current = m(&[
            ("min.insync.replicas", "2"),
            ("log.segment.bytes", "1048576"),
            ("leader.replication.throttled.rate", "1000"),
        ]);
        assert_eq!(
            config_changes(&want, &current),
            BTreeMap::from([
                ("log.retention.ms".to_string(), Some("60000".to_string())),
                ("log.segment.bytes".to_string(), None),
            ]),
            "throttles set by someone else stay"
        );
        assert!(config_changes(&want, &want).is_empty());
    }

    #[test]
    fn every_dynamic_setting_is_a_broker_setting() {
        for (key, _) in DYNAMIC_CONFIG {
            assert!(BROKER_CONFIG_KEYS.contains(key), "{key}");
        }
    }

    #[test]
    fn voters_default_by_size_and_stay_as_started() {
        let small = cluster(serde_json::json!({"replicas": 2}));
        assert_eq!(voters(&small), 1);
        assert_eq!(
            voter_list(&small),
            "0@events-0.events-brokers.streaming.svc:9093"
        );
        let mut c = cluster(serde_json::json!({"replicas": 5}));
        assert_eq!(voters(&c), 3);
        // Started with 3 voters: shrinking below them or changing them is refused.
        c.status = Some(crate::crd::ClusterStatus {
            voters: Some(3),
            ..Default::default()
        });
        c.spec.replicas = 2;
        c.spec.voters = Some(1);
        let errors = validate(&c);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("cannot change") && errors[1].contains("fewer than"));
        assert_eq!(voters(&c), 3);
    }

    #[test]
    fn validation_reports_every_problem() {
        let c = cluster(serde_json::json!({
            "replicas": 0,
            "storage": {"size": "lots"},
            "listeners": {"kafka": 9092, "http": 9092},
            "config": {"node_id": "3", "no_such_setting": "1", "num_partitions": "2"},
            "voters": 1,
            "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "targetBytesInPerBroker": 1000}
        }));
        let errors = validate(&c);
        // replicas, size, ports, two config keys, fewer brokers than the one voter, an
        // autoscaling minimum below it.
        assert_eq!(errors.len(), 7, "{errors:?}");
        assert!(validate(&cluster(serde_json::json!({}))).is_empty());
        assert!(is_quantity("1.5Gi") && is_quantity("500M") && !is_quantity("Gi"));
    }
}
