//! Topic controller: finalizer, cluster lookup, admin connection, status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, ResourceExt};
use riffle_client::Connection;

use super::{cleanup, reconcile as sync_topic, topic_name, Reconciled};
use crate::cluster::{build, status::set_condition};
use crate::context::Context;
use crate::crd::{Cluster, Topic, TopicStatus};

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

async fn connect(ctx: &Context, cluster: &Cluster) -> Result<Connection, String> {
    let addr = ctx
        .bootstrap_override
        .clone()
        .unwrap_or_else(|| build::bootstrap_servers(cluster));
    match tokio::time::timeout(ctx.kafka_timeout, Connection::connect(&addr)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: connect timed out")),
    }
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
    let mut conn = match connect(ctx, &cluster).await {
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
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cluster) = clusters.get_opt(&topic.spec.cluster_ref.name).await? else {
        // The cluster (and its data) is gone: nothing left to clean up.
        tracing::info!(topic = %topic.name_any(), "cluster gone; releasing topic without broker cleanup");
        return Ok(Action::await_change());
    };
    let mut conn = connect(ctx, &cluster).await.map_err(Error::Cleanup)?;
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
