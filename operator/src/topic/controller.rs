//! Topic controller: finalizer, cluster lookup, admin connection, status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, ResourceExt};

use super::{cleanup, reconcile as sync_topic, topic_name, Reconciled};
use crate::cluster::status::set_condition;
use crate::context::Context;
use crate::crd::{Cluster, DeletionPolicy, Topic, TopicStatus};

/// Finalizer that lets the operator delete the Kafka topic before the object goes.
pub const FINALIZER: &str = "riffle.dev/topic-cleanup";
/// Escape hatch: with this annotation set to "true", deletion skips broker cleanup.
pub const SKIP_CLEANUP: &str = "riffle.dev/skip-cleanup";

/// Reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The broker could not be reached or refused during cleanup.
    #[error("cleanup: {0}")]
    Cleanup(String),
    /// Topic objects are namespaced.
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Finalizer(_) => "Finalizer",
            Error::Cleanup(_) => "Cleanup",
            Error::NoNamespace => "NoNamespace",
        }
    }
}

/// Entry point for the controller.
pub async fn reconcile(topic: Arc<Topic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = topic.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Topic> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, topic, |event| async {
        match event {
            Finalizer::Apply(t) => apply(&t, &ctx, &ns).await,
            Finalizer::Cleanup(t) => delete(&t, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// Another Topic object in the namespace that claims the same Kafka topic first.
async fn conflicting(api: &Api<Topic>, topic: &Topic) -> Result<Option<String>, kube::Error> {
    let name = topic_name(topic);
    let mut claimants: Vec<Topic> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|t| {
            t.spec.cluster_ref == topic.spec.cluster_ref
                && topic_name(t) == name
                && t.metadata.deletion_timestamp.is_none()
        })
        .collect();
    // The oldest claim wins; ties go to the lexically first object name.
    claimants.sort_by(|a, b| {
        (a.metadata.creation_timestamp.clone(), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.clone(), b.name_any()))
    });
    Ok(claimants
        .first()
        .filter(|t| t.name_any() != topic.name_any())
        .map(|t| t.name_any()))
}

async fn apply(topic: &Topic, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let api: Api<Topic> = Api::namespaced(ctx.client.clone(), ns);
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), ns);
    let retry_soon = Action::requeue(Duration::from_secs(30));
    let Some(cluster) = clusters.get_opt(&topic.spec.cluster_ref.name).await? else {
        let msg = format!(
            "Cluster {} not found in namespace {ns}",
            topic.spec.cluster_ref.name
        );
        write_status(&api, topic, false, "ClusterNotFound", &msg, None).await?;
        return Ok(retry_soon);
    };
    if let Some(owner) = conflicting(&api, topic).await? {
        let msg = format!(
            "Topic {owner} already manages Kafka topic {}",
            topic_name(topic)
        );
        ctx.event(topic, true, "ResourceConflict", msg.clone())
            .await;
        write_status(&api, topic, false, "ResourceConflict", &msg, None).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let mut conn = match ctx.kafka(&cluster).await {
        Ok(c) => c,
        Err(msg) => {
            write_status(&api, topic, false, "BrokerUnavailable", &msg, None).await?;
            return Ok(retry_soon);
        }
    };
    match sync_topic(&mut conn, &topic_name(topic), &topic.spec).await {
        Ok(Reconciled::Ready(desc)) => {
            let observed = TopicStatus {
                topic_id: Some(desc.id),
                partitions: Some(desc.partitions),
                replication_factor: Some(desc.replication_factor),
                ..Default::default()
            };
            write_status(
                &api,
                topic,
                true,
                "Created",
                "topic matches the spec",
                Some(observed),
            )
            .await?;
            // Periodic resync reverts config drift made outside the operator.
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Ok(Reconciled::Invalid(e)) => {
            ctx.event(topic, true, e.reason(), e.to_string()).await;
            write_status(&api, topic, false, e.reason(), &e.to_string(), None).await?;
            Ok(Action::await_change())
        }
        Err(e) => {
            write_status(&api, topic, false, "KafkaError", &e.to_string(), None).await?;
            Ok(retry_soon)
        }
    }
}

async fn delete(topic: &Topic, ctx: &Context, ns: &str) -> Result<Action, Error> {
    if topic.annotations().get(SKIP_CLEANUP).map(String::as_str) == Some("true") {
        tracing::warn!(topic = %topic.name_any(), "cleanup skipped by annotation");
        return Ok(Action::await_change());
    }
    if topic.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cluster) = clusters.get_opt(&topic.spec.cluster_ref.name).await? else {
        // The cluster (and its data) is gone: nothing left to clean up.
        tracing::info!(topic = %topic.name_any(), "cluster gone; releasing topic without broker cleanup");
        return Ok(Action::await_change());
    };
    let mut conn = ctx.kafka(&cluster).await.map_err(Error::Cleanup)?;
    cleanup(&mut conn, &topic_name(topic), topic.spec.deletion_policy)
        .await
        .map_err(|e| Error::Cleanup(e.to_string()))?;
    Ok(Action::await_change())
}

/// Writes the Ready condition (and observed fields) only when something changed.
async fn write_status(
    api: &Api<Topic>,
    topic: &Topic,
    ok: bool,
    reason: &str,
    message: &str,
    observed: Option<TopicStatus>,
) -> Result<(), kube::Error> {
    let previous = topic.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        &previous.conditions,
        "Ready",
        (ok, reason, message),
        topic.metadata.generation,
        &now,
    );
    let base = observed.unwrap_or(previous.clone());
    let status = TopicStatus {
        observed_generation: topic.metadata.generation,
        conditions,
        ..base
    };
    if status == previous {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &topic.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClusterRef, TopicSpec};
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use kube::Client;
    use riffle_client::testkit::{broker_binary, TestBroker};
    use tower_test::mock::{self, Handle};

    type ApiHandle = Handle<Request<Body>, Response<Body>>;
    const TOPICS: &str = "/apis/riffle.dev/v1alpha1/namespaces/apps/topics/orders";
    const CLUSTER: &str = "/apis/riffle.dev/v1alpha1/namespaces/apps/clusters/events";

    fn topic(finalized: bool, deleting: bool, policy: DeletionPolicy) -> Topic {
        let mut t = Topic::new(
            "orders",
            TopicSpec {
                cluster_ref: ClusterRef {
                    name: "events".into(),
                },
                topic_name: None,
                partitions: 2,
                replication_factor: 1,
                config: Default::default(),
                deletion_policy: policy,
            },
        );
        t.metadata.namespace = Some("apps".into());
        t.metadata.generation = Some(1);
        if finalized {
            t.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        if deleting {
            t.metadata.deletion_timestamp =
                Some(Time("2026-01-01T00:00:00Z".parse().expect("time")));
        }
        t
    }

    fn setup(bootstrap: Option<String>) -> (Arc<Context>, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            Arc::new(Context::new(Client::new(service, "default"), bootstrap)),
            handle,
        )
    }

    /// Asserts the next request and answers with `reply` (or 404 when `None`).
    async fn expect(
        handle: &mut ApiHandle,
        method: Method,
        path: &str,
        reply: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), method, "{}", req.uri());
        assert!(
            req.uri().to_string().starts_with(path),
            "expected {path}, got {}",
            req.uri()
        );
        let body = req.into_body().collect_bytes().await.expect("body");
        let resp = match reply {
            Some(v) => Response::builder().body(Body::from(serde_json::to_vec(&v).expect("json"))),
            None => Response::builder().status(StatusCode::NOT_FOUND).body(Body::from(
                serde_json::to_vec(&serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})).expect("json"),
            )),
        };
        send.send_response(resp.expect("response"));
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
    }

    async fn done(handle: &mut ApiHandle) {
        let next = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(
            next.is_err() || next.as_ref().is_ok_and(|r| r.is_none()),
            "unexpected extra request"
        );
    }

    fn cluster_json() -> serde_json::Value {
        serde_json::json!({"apiVersion": "riffle.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": "events", "namespace": "apps"}, "spec": {}})
    }

    #[tokio::test]
    async fn new_topic_first_gets_the_finalizer() {
        let (ctx, mut handle) = setup(None);
        let t = topic(false, false, DeletionPolicy::Delete);
        let echo = serde_json::to_value(topic(true, false, DeletionPolicy::Delete)).expect("json");
        let verifier = tokio::spawn(async move {
            let patch = expect(&mut handle, Method::PATCH, TOPICS, Some(echo)).await;
            assert!(
                patch.to_string().contains(FINALIZER),
                "finalizer not added: {patch}"
            );
            done(&mut handle).await;
        });
        reconcile(Arc::new(t), ctx).await.expect("reconcile");
        verifier.await.expect("verifier");
    }

    #[tokio::test]
    async fn missing_cluster_is_reported_in_status() {
        let (ctx, mut handle) = setup(None);
        let t = topic(true, false, DeletionPolicy::Delete);
        let echo = serde_json::to_value(&t).expect("json");
        let verifier = tokio::spawn(async move {
            expect(&mut handle, Method::GET, CLUSTER, None).await;
            let patch = expect(
                &mut handle,
                Method::PATCH,
                &format!("{TOPICS}/status"),
                Some(echo),
            )
            .await;
            assert_eq!(
                patch["status"]["conditions"][0]["reason"],
                "ClusterNotFound"
            );
            assert_eq!(patch["status"]["conditions"][0]["status"], "False");
            done(&mut handle).await;
        });
        let action = reconcile(Arc::new(t), ctx).await.expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        verifier.await.expect("verifier");
    }

    /// The finalizer removal patch, answered with the object as it then is.
    async fn expect_finalizer_removed(handle: &mut ApiHandle) {
        let patch = expect(
            handle,
            Method::PATCH,
            TOPICS,
            Some(serde_json::to_value(topic(false, true, DeletionPolicy::Delete)).expect("json")),
        )
        .await;
        assert!(
            patch.to_string().contains("remove") || patch.to_string().contains("test"),
            "not a finalizer removal: {patch}"
        );
    }

    #[tokio::test]
    async fn retain_policy_releases_without_touching_the_broker() {
        let (ctx, mut handle) = setup(Some("127.0.0.1:1".into()));
        let verifier = tokio::spawn(async move {
            expect_finalizer_removed(&mut handle).await;
            done(&mut handle).await;
        });
        reconcile(Arc::new(topic(true, true, DeletionPolicy::Retain)), ctx)
            .await
            .expect("reconcile");
        verifier.await.expect("verifier");
    }

    #[tokio::test]
    async fn deletion_gives_up_cleanly_when_the_cluster_is_gone() {
        let (ctx, mut handle) = setup(Some("127.0.0.1:1".into()));
        let verifier = tokio::spawn(async move {
            expect(&mut handle, Method::GET, CLUSTER, None).await;
            expect_finalizer_removed(&mut handle).await;
            done(&mut handle).await;
        });
        reconcile(Arc::new(topic(true, true, DeletionPolicy::Delete)), ctx)
            .await
            .expect("reconcile");
        verifier.await.expect("verifier");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_policy_deletes_the_kafka_topic_then_the_finalizer() {
        let broker = TestBroker::start(broker_binary(), &[]);
        broker.create_topic("orders", 2, &[]).await;
        let (ctx, mut handle) = setup(Some(broker.kafka.clone()));
        let verifier = tokio::spawn(async move {
            expect(&mut handle, Method::GET, CLUSTER, Some(cluster_json())).await;
            expect_finalizer_removed(&mut handle).await;
            done(&mut handle).await;
        });
        reconcile(Arc::new(topic(true, true, DeletionPolicy::Delete)), ctx)
            .await
            .expect("reconcile");
        verifier.await.expect("verifier");
        let mut c = broker.connect().await;
        assert!(
            c.describe_topic("orders")
                .await
                .expect("describe")
                .is_none(),
            "Kafka topic not deleted"
        );
    }

    fn topic_list(items: Vec<Topic>) -> serde_json::Value {
        serde_json::json!({"apiVersion": "riffle.dev/v1alpha1", "kind": "TopicList", "metadata": {}, "items": items})
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_creates_the_kafka_topic_and_reports_it() {
        let broker = TestBroker::start(broker_binary(), &[]);
        let (ctx, mut handle) = setup(Some(broker.kafka.clone()));
        let t = topic(true, false, DeletionPolicy::Delete);
        let (list, echo) = (
            topic_list(vec![t.clone()]),
            serde_json::to_value(&t).expect("json"),
        );
        let verifier = tokio::spawn(async move {
            expect(&mut handle, Method::GET, CLUSTER, Some(cluster_json())).await;
            expect(
                &mut handle,
                Method::GET,
                "/apis/riffle.dev/v1alpha1/namespaces/apps/topics",
                Some(list),
            )
            .await;
            let patch = expect(
                &mut handle,
                Method::PATCH,
                &format!("{TOPICS}/status"),
                Some(echo),
            )
            .await;
            assert_eq!(patch["status"]["conditions"][0]["status"], "True");
            assert_eq!(patch["status"]["conditions"][0]["reason"], "Created");
            assert_eq!(patch["status"]["partitions"], 2);
            assert!(patch["status"]["topicId"]
                .as_str()
                .is_some_and(|id| !id.is_empty()));
            done(&mut handle).await;
        });
        reconcile(Arc::new(t), ctx).await.expect("reconcile");
        verifier.await.expect("verifier");
        let mut c = broker.connect().await;
        assert_eq!(
            c.describe_topic("orders")
                .await
                .expect("describe")
                .map(|d| d.partitions),
            Some(2)
        );
    }

    #[tokio::test]
    async fn second_claim_on_a_kafka_topic_is_a_conflict() {
        let (ctx, mut handle) = setup(Some("127.0.0.1:1".into()));
        let mut first = topic(true, false, DeletionPolicy::Delete);
        first.metadata.name = Some("orders-owner".into());
        first.spec.topic_name = Some("orders".into());
        first.metadata.creation_timestamp =
            Some(Time("2025-01-01T00:00:00Z".parse().expect("time")));
        let mut second = topic(true, false, DeletionPolicy::Delete);
        second.metadata.creation_timestamp =
            Some(Time("2026-01-01T00:00:00Z".parse().expect("time")));
        let (list, echo) = (
            topic_list(vec![first, second.clone()]),
            serde_json::to_value(&second).expect("json"),
        );
        let verifier = tokio::spawn(async move {
            expect(&mut handle, Method::GET, CLUSTER, Some(cluster_json())).await;
            expect(
                &mut handle,
                Method::GET,
                "/apis/riffle.dev/v1alpha1/namespaces/apps/topics",
                Some(list),
            )
            .await;
            let ev = expect(
                &mut handle,
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/apps/events",
                Some(serde_json::json!({})),
            )
            .await;
            assert_eq!(ev["reason"], "ResourceConflict");
            let patch = expect(
                &mut handle,
                Method::PATCH,
                &format!("{TOPICS}/status"),
                Some(echo),
            )
            .await;
            assert_eq!(
                patch["status"]["conditions"][0]["reason"],
                "ResourceConflict"
            );
            done(&mut handle).await;
        });
        reconcile(Arc::new(second), ctx).await.expect("reconcile");
        verifier.await.expect("verifier");
    }
}
