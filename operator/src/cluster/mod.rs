//! Cluster reconciliation.

pub mod admin;
pub mod autoscale;
pub mod build;
pub mod plan;
pub mod status;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::{Context, MANAGER};
use crate::crd::{AutoscalerStatus, Cluster, ClusterStatus};
use admin::Admin;
use plan::{Observed, Step};

/// Reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Cluster objects are namespaced.
    #[error("object has no namespace")]
    NoNamespace,
    /// A broker's admin API refused or did not answer.
    #[error("broker admin API: {0}")]
    Admin(#[from] admin::Error),
}

impl Error {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::NoNamespace => "NoNamespace",
            Error::Admin(_) => "BrokerAdmin",
        }
    }
}

async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Writes the status only when it differs from what the object already has.
async fn write_status(
    ctx: &Context,
    cluster: &Cluster,
    ns: &str,
    status: ClusterStatus,
) -> Result<(), kube::Error> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Cluster> = Api::namespaced(ctx.client.clone(), ns);
    let mut fields = serde_json::to_value(&status).unwrap_or_default();
    // A merge patch keeps what it does not mention: fields now unset are sent as null.
    if let (Some(new), Ok(serde_json::Value::Object(old))) = (
        fields.as_object_mut(),
        serde_json::to_value(&cluster.status),
    ) {
        for key in old.keys() {
            new.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": fields });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Requeue interval while a scale or a roll is under way.
const STEP_INTERVAL: Duration = Duration::from_secs(3);

/// One reconcile pass: validate, decide the next step of any scale or roll, apply every
/// object in order, take the step, report status.
pub async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let errors = build::validate(&cluster);
    if !errors.is_empty() {
        let msg = errors.join("; ");
        ctx.event(&*cluster, true, "InvalidSpec", msg.clone()).await;
        write_status(&ctx, &cluster, &ns, status::invalid(&cluster, &msg, &now)).await?;
        return Ok(Action::await_change());
    }
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let current = sts_api.get_opt(&cluster.name_any()).await?;
    let (observed, admin) = observe(&ctx, &cluster, &ns, current.as_ref(), &now).await?;
    let step = plan::next(cluster.spec.replicas, &observed, &ctx.limits);
    let name = cluster.name_any();
    let non_preferred = observed.view.as_ref().map(|v| v.non_preferred_leaders);
    if let Some(n) = non_preferred {
        ctx.metrics
            .non_preferred_leaders
            .with_label_values(&[ns.as_str(), name.as_str()])
            .set(n as i64);
    }
    for kind in Step::KINDS {
        ctx.metrics
            .cluster_step
            .with_label_values(&[ns.as_str(), name.as_str(), kind])
            .set(i64::from(kind == step.kind()));
    }
    let replicas = match step {
        Step::Resize(n) => n,
        _ => observed.sts_replicas,
    };
    let objs = build::build(&cluster, replicas);
    apply(&ctx, &ns, &objs.service_account).await?;
    apply(&ctx, &ns, &objs.config_map).await?;
    apply(&ctx, &ns, &objs.headless).await?;
    apply(&ctx, &ns, &objs.bootstrap).await?;
    apply(&ctx, &ns, &objs.pdb).await?;
    let sts: StatefulSet = apply(&ctx, &ns, &objs.stateful_set).await?;
    if admin.is_some() {
        apply_dynamic_config(&ctx, &cluster).await;
    }
    let progress = take_step(&ctx, &cluster, &ns, &step, admin, &now).await?;
    let mut status = status::observed(&cluster, sts.status.as_ref(), &step, progress, &now);
    status.non_preferred_leaders = non_preferred.map(|n| n as i32);
    status.autoscaler = autoscale(&ctx, &cluster, &ns, &observed, &step, &now).await?;
    write_status(&ctx, &cluster, &ns, status).await?;
    if step != Step::Steady {
        return Ok(Action::requeue(STEP_INTERVAL));
    }
    // Owned objects trigger reconciles on change; the resync catches anything else,
    // sooner while the autoscaler samples or leaderships wait for an election.
    let mut next = Duration::from_secs(300);
    if let Some(a) = &cluster.spec.autoscaling {
        next = next.min(Duration::from_secs(a.interval_seconds.max(1) as u64));
    }
    if non_preferred.is_some_and(|n| n > 0) {
        next = next.min(ctx.limits.leader_election_interval.max(STEP_INTERVAL));
    }
    Ok(Action::requeue(next))
}

/// Brings the brokers' cluster-wide dynamic defaults in line with the spec's dynamic
/// settings, without a restart. A failure is logged and retried at the next reconcile;
/// it holds nothing else up.
async fn apply_dynamic_config(ctx: &Context, cluster: &Cluster) {
    let applied = async {
        let mut conn = ctx.kafka(cluster).await?;
        let current = conn
            .cluster_broker_defaults()
            .await
            .map_err(|e| e.to_string())?;
        let changes = build::config_changes(&build::dynamic_config(cluster), &current);
        if !changes.is_empty() {
            conn.alter_cluster_broker_defaults(&changes)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(changes)
    }
    .await;
    match applied {
        Ok(changes) if !changes.is_empty() => {
            let list: Vec<String> = changes
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => format!("{k} removed"),
                })
                .collect();
            let note = format!("applied without restart: {}", list.join(", "));
            ctx.event(cluster, false, "ConfigApplied", note).await;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "applying dynamic broker settings"),
    }
}

/// The built-in autoscaler's turn: reads every ready broker's counters, records what the
/// load asks for and, when the policy decides so, sets `spec.replicas` through the scale
/// subresource (the scale itself then runs like any other). Returns its status.
async fn autoscale(
    ctx: &Context,
    cluster: &Cluster,
    ns: &str,
    observed: &Observed,
    step: &Step,
    now: &Time,
) -> Result<Option<AutoscalerStatus>, Error> {
    let Some(spec) = &cluster.spec.autoscaling else {
        return Ok(None);
    };
    let name = cluster.name_any();
    let key = format!("{ns}/{name}");
    let policy = autoscale::Policy::from(spec);
    let at = Instant::now();
    let previous = cluster
        .status
        .as_ref()
        .and_then(|s| s.autoscaler.clone())
        .unwrap_or_default();
    let interval = Duration::from_secs(spec.interval_seconds.max(1) as u64);
    if !ctx.autoscaler.due(&key, at, interval) {
        return Ok(Some(previous));
    }
    let mut counters = BTreeMap::new();
    for p in observed.pods.iter().filter(|p| p.ready && !p.terminating) {
        let addr = build::pod_address(cluster, p.ordinal, cluster.spec.listeners.http);
        match Admin::new(&addr, ctx.kafka_timeout).metrics().await {
            Ok(text) => {
                counters.insert(p.ordinal, autoscale::parse_counters(&text));
            }
            Err(e) => tracing::debug!(error = %e, "broker metrics"),
        }
    }
    let Some(load) = ctx.autoscaler.sample(&key, at, counters) else {
        return Ok(Some(AutoscalerStatus {
            decision: Some("measuring the load".into()),
            ..previous
        }));
    };
    let recommended = autoscale::recommend(&policy, load);
    ctx.metrics
        .recommended_replicas
        .with_label_values(&[ns, name.as_str()])
        .set(i64::from(recommended));
    let keep = policy.up_window.max(policy.down_window) + interval;
    let history = ctx.autoscaler.recommend(&key, at, recommended, keep);
    let since_scale = previous
        .last_scale_time
        .as_ref()
        .map(|t| now.0.duration_since(t.0).unsigned_abs());
    let busy = autoscale::busy(step, observed.view.as_ref());
    let current = cluster.spec.replicas;
    let mut last_scale_time = previous.last_scale_time;
    let decision = match autoscale::decide(&policy, current, &history, since_scale, busy.as_deref())
    {
        autoscale::Decision::Hold(why) => why,
        autoscale::Decision::Scale(to, why) => {
            let api: Api<Cluster> = Api::namespaced(ctx.client.clone(), ns);
            let patch = serde_json::json!({ "spec": { "replicas": to } });
            api.patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            ctx.autoscaler.clear_history(&key);
            last_scale_time = Some(now.clone());
            let note = format!("{current} -> {to} brokers: {why}");
            // One reason per direction: the recorder folds repeats of a reason into one
            // event series.
            let reason = if to > current {
                "AutoscaledOut"
            } else {
                "AutoscaledIn"
            };
            ctx.event(cluster, false, reason, note.clone()).await;
            note
        }
    };
    Ok(Some(AutoscalerStatus {
        bytes_in_per_second: Some(load.bytes_in.round() as i64),
        cpu_millis: Some(load.cpu_millis.round() as i64),
        recommended_replicas: Some(recommended),
        decision: Some(decision),
        last_scale_time,
    }))
}

/// The StatefulSet, its Pods and the brokers' own view, as the planner needs them; and
/// the admin API of a broker that answered.
async fn observe(
    ctx: &Context,
    cluster: &Cluster,
    ns: &str,
    sts: Option<&StatefulSet>,
    now: &Time,
) -> Result<(Observed, Option<Admin>), Error> {
    let Some(sts) = sts else {
        return Ok((Observed::default(), None));
    };
    let revision = sts.status.as_ref().and_then(|s| s.update_revision.clone());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&build::selector_string(cluster)))
        .await?;
    let pods: Vec<plan::Pod> = listed
        .items
        .iter()
        .filter_map(|p| {
            let labels = p.metadata.labels.as_ref()?;
            let ordinal = labels.get("apps.kubernetes.io/pod-index")?.parse().ok()?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(plan::Pod {
                ordinal,
                ready,
                updated: revision.is_some()
                    && labels.get("controller-revision-hash") == revision.as_ref(),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect();
    // Any ready broker answers for the cluster.
    let mut view = None;
    let mut answered = None;
    for p in pods.iter().filter(|p| p.ready && !p.terminating) {
        let addr = build::pod_address(cluster, p.ordinal, cluster.spec.listeners.http);
        let admin = Admin::new(&addr, ctx.kafka_timeout);
        match admin.cluster().await {
            Ok(v) => {
                view = Some(v);
                answered = Some(admin);
                break;
            }
            Err(e) => tracing::debug!(error = %e, "broker admin API"),
        }
    }
    let status = cluster.status.as_ref();
    let since = |t: &Time| now.0.duration_since(t.0).unsigned_abs();
    let observed = Observed {
        sts_replicas: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        pods,
        view,
        restarting: status.and_then(|s| Some((s.restarting?, since(s.restarting_since.as_ref()?)))),
        since_leader_election: status
            .and_then(|s| s.last_leader_election.as_ref())
            .map(since),
    };
    Ok((observed, answered))
}

/// Takes `step` (admin API calls, Pod deletion, events); returns what the status keeps
/// of the operation.
async fn take_step(
    ctx: &Context,
    cluster: &Cluster,
    ns: &str,
    step: &Step,
    admin: Option<Admin>,
    now: &Time,
) -> Result<status::Progress, Error> {
    let status = cluster.status.clone().unwrap_or_default();
    let mut restarting = status.restarting.zip(status.restarting_since);
    let mut last_leader_election = status.last_leader_election;
    // Steps that call the admin API are only planned from a view some broker gave.
    let admin = || admin.as_ref().ok_or(admin::Error::NoBroker);
    match step {
        Step::Decommission(id) => admin()?.decommission(*id, true).await?,
        Step::Recommission(id) => admin()?.decommission(*id, false).await?,
        Step::EnterMaintenance(id) => {
            admin()?.maintenance(*id, true).await?;
            if restarting.as_ref().map(|r| r.0) != Some(*id) {
                restarting = Some((*id, now.clone()));
            }
        }
        Step::ExitMaintenance(id) => {
            admin()?.maintenance(*id, false).await?;
            restarting = None;
            last_leader_election = None;
        }
        Step::ElectPreferredLeaders => {
            let moved = admin()?.elect_preferred().await?;
            last_leader_election = Some(now.clone());
            ctx.metrics
                .preferred_elections
                .with_label_values(&[ns, cluster.name_any().as_str()])
                .inc_by(moved as u64);
            if moved > 0 {
                let note = format!("moved {moved} leaderships back to preferred replicas");
                ctx.event(cluster, false, "PreferredLeaderElection", note)
                    .await;
            }
        }
        Step::Restart(id) => {
            // The time to come back counts from the deletion.
            restarting = Some((*id, now.clone()));
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            match pods
                .delete(&build::pod_name(cluster, *id), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Step::Steady | Step::Resize(_) | Step::Wait(_) | Step::Refuse(_) => {}
    }
    if !matches!(step, Step::Steady | Step::Wait(_) | Step::Refuse(_)) {
        ctx.metrics
            .cluster_steps
            .with_label_values(&[ns, cluster.name_any().as_str(), step.kind()])
            .inc();
    }
    let note = status::describe(step);
    let changed = status.operation.as_deref() != Some(note.as_str());
    match step {
        Step::Steady | Step::Wait(_) | Step::Resize(_) | Step::ElectPreferredLeaders => {}
        Step::Refuse(_) if changed => ctx.event(cluster, true, "OperationStopped", note).await,
        Step::Refuse(_) => {}
        _ => {
            let pod = step.broker().map(|id| ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(build::pod_name(cluster, id)),
                namespace: Some(ns.to_string()),
                ..Default::default()
            });
            ctx.event_related(cluster, pod, false, "Operation", note)
                .await
        }
    }
    if restarting
        .as_ref()
        .is_some_and(|r| r.0 >= cluster.spec.replicas)
    {
        restarting = None;
    }
    Ok(status::Progress {
        restarting,
        last_leader_election,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClusterSpec;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use kube::Client;
    use tower_test::mock::{self, Handle};

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    fn cluster(json: serde_json::Value) -> Cluster {
        let mut c = Cluster::new(
            "events",
            serde_json::from_value::<ClusterSpec>(json).expect("spec"),
        );
        c.metadata.namespace = Some("streaming".into());
        c.metadata.uid = Some("0d2c7c1e-4b7e-4a51-9d8a-3f0c6a1b2c3d".into());
        c.metadata.generation = Some(1);
        c
    }

    fn setup() -> (Arc<Context>, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            Arc::new(Context::new(Client::new(service, "default"), None)),
            handle,
        )
    }

    /// Asserts the next request and answers it by echoing its body (what the API server
    /// returns for an apply or a patch that it accepts as is).
    async fn expect(handle: &mut ApiHandle, method: Method, path: &str) -> serde_json::Value {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), method, "{}", req.uri());
        let uri = req.uri().to_string();
        assert!(uri.starts_with(path), "expected {path}, got {uri}");
        if method == Method::PATCH && !uri.contains("/status") {
            assert!(
                uri.contains("fieldManager=riffle-operator") && uri.contains("force=true"),
                "not a server-side apply: {uri}"
            );
        }
        let body = req.into_body().collect_bytes().await.expect("body");
        let value: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        // A status patch is answered with the whole object, as the API server does.
        let reply = if value.get("metadata").is_none() && value.get("status").is_some() {
            serde_json::json!({
                "apiVersion": "riffle.dev/v1alpha1",
                "kind": "Cluster",
                "metadata": {"name": "events", "namespace": "streaming"},
                "spec": {},
                "status": value["status"],
            })
        } else {
            value.clone()
        };
        let bytes = serde_json::to_vec(&reply).expect("json");
        send.send_response(
            Response::builder()
                .body(Body::from(bytes))
                .expect("response"),
        );
        value
    }

    /// Asserts a GET of `path` and answers that the object does not exist.
    async fn expect_not_found(handle: &mut ApiHandle, path: &str) {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), path);
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found",
        });
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(serde_json::to_vec(&status).expect("json")))
                .expect("response"),
        );
    }

    async fn expect_objects_applied(handle: &mut ApiHandle) {
        // A new cluster: no StatefulSet yet, so no scale or roll to plan.
        expect_not_found(
            handle,
            "/apis/apps/v1/namespaces/streaming/statefulsets/events",
        )
        .await;
        let ns = "/api/v1/namespaces/streaming";
        expect(
            handle,
            Method::PATCH,
            &format!("{ns}/serviceaccounts/events?"),
        )
        .await;
        expect(
            handle,
            Method::PATCH,
            &format!("{ns}/configmaps/events-config?"),
        )
        .await;
        expect(
            handle,
            Method::PATCH,
            &format!("{ns}/services/events-brokers?"),
        )
        .await;
        expect(
            handle,
            Method::PATCH,
            &format!("{ns}/services/events-bootstrap?"),
        )
        .await;
        expect(
            handle,
            Method::PATCH,
            "/apis/policy/v1/namespaces/streaming/poddisruptionbudgets/events?",
        )
        .await;
        let sts = expect(
            handle,
            Method::PATCH,
            "/apis/apps/v1/namespaces/streaming/statefulsets/events?",
        )
        .await;
        assert_eq!(sts["spec"]["replicas"], 3);
    }

    async fn assert_no_more_requests(handle: &mut ApiHandle) {
        let next = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(
            next.is_err() || next.as_ref().is_ok_and(|r| r.is_none()),
            "unexpected extra request"
        );
    }

    #[tokio::test]
    async fn applies_objects_in_order_then_writes_status() {
        let (ctx, mut handle) = setup();
        let c = Arc::new(cluster(serde_json::json!({})));
        let verifier = tokio::spawn(async move {
            expect_objects_applied(&mut handle).await;
            let patch = expect(
                &mut handle,
                Method::PATCH,
                "/apis/riffle.dev/v1alpha1/namespaces/streaming/clusters/events/status",
            )
            .await;
            assert_eq!(
                patch["status"]["bootstrapServers"],
                "events-bootstrap.streaming.svc:9092"
            );
            assert_eq!(patch["status"]["conditions"][0]["type"], "Ready");
            assert_eq!(patch["status"]["conditions"][0]["status"], "False");
            assert_no_more_requests(&mut handle).await;
        });
        let action = reconcile(c, ctx).await.expect("reconcile");
        // Just created: looked at again soon, until the brokers are up.
        assert_eq!(action, Action::requeue(STEP_INTERVAL));
        verifier.await.expect("verifier");
    }

    #[tokio::test]
    async fn unchanged_status_is_not_written_again() {
        let (ctx, mut handle) = setup();
        let mut c = cluster(serde_json::json!({}));
        let then = Time("2026-01-01T00:00:00Z".parse().expect("time"));
        c.status = Some(status::observed(
            &c,
            None,
            &Step::Resize(3),
            status::Progress::default(),
            &then,
        ));
        let verifier = tokio::spawn(async move {
            expect_objects_applied(&mut handle).await;
            assert_no_more_requests(&mut handle).await;
        });
        reconcile(Arc::new(c), ctx).await.expect("reconcile");
        verifier.await.expect("verifier");
    }

    #[tokio::test]
    async fn invalid_spec_gets_event_and_condition_and_nothing_is_applied() {
        let (ctx, mut handle) = setup();
        let c = Arc::new(cluster(serde_json::json!({"config": {"node_id": "7"}})));
        let verifier = tokio::spawn(async move {
            let ev = expect(
                &mut handle,
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/streaming/events",
            )
            .await;
            assert_eq!(ev["reason"], "InvalidSpec");
            assert_eq!(ev["type"], "Warning");
            let patch = expect(
                &mut handle,
                Method::PATCH,
                "/apis/riffle.dev/v1alpha1/namespaces/streaming/clusters/events/status",
            )
            .await;
            assert_eq!(patch["status"]["conditions"][0]["reason"], "InvalidSpec");
            assert_no_more_requests(&mut handle).await;
        });
        let action = reconcile(c, ctx).await.expect("reconcile");
        assert_eq!(action, Action::await_change());
        verifier.await.expect("verifier");
    }
}
