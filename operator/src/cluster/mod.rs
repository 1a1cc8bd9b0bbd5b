//! Cluster reconciliation.

pub mod build;
pub mod status;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::{Context, MANAGER};
use crate::crd::{Cluster, ClusterStatus};

/// Reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Cluster objects are namespaced.
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::NoNamespace => "NoNamespace",
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
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// One reconcile pass: validate, apply every object in order, report status.
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
    let objs = build::build(&cluster);
    apply(&ctx, &ns, &objs.service_account).await?;
    apply(&ctx, &ns, &objs.config_map).await?;
    apply(&ctx, &ns, &objs.headless).await?;
    apply(&ctx, &ns, &objs.bootstrap).await?;
    apply(&ctx, &ns, &objs.pdb).await?;
    let sts: StatefulSet = apply(&ctx, &ns, &objs.stateful_set).await?;
    write_status(
        &ctx,
        &cluster,
        &ns,
        status::observed(&cluster, sts.status.as_ref(), &now),
    )
    .await?;
    // Owned objects trigger reconciles on change; the resync catches anything else.
    Ok(Action::requeue(Duration::from_secs(300)))
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

    async fn expect_objects_applied(handle: &mut ApiHandle) {
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
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
        verifier.await.expect("verifier");
    }

    #[tokio::test]
    async fn unchanged_status_is_not_written_again() {
        let (ctx, mut handle) = setup();
        let mut c = cluster(serde_json::json!({}));
        let then = Time("2026-01-01T00:00:00Z".parse().expect("time"));
        c.status = Some(status::observed(&c, None, &then));
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
