//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::handlers::Broker;

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// The broker.
    pub broker: Arc<Broker>,
    /// True once the Kafka listener serves and until shutdown begins.
    pub ready: Arc<AtomicBool>,
}

/// Builds the HTTP router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) && !s.broker.store.is_offline() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let b = &s.broker;
    for t in b.catalog.all() {
        for p in t.partitions() {
            let labels = [&*t.name, &p.index.to_string()];
            let o = p.offsets();
            b.metrics
                .log_end_offset
                .with_label_values(&labels)
                .set(o.high_watermark);
            b.metrics
                .log_start_offset
                .with_label_values(&labels)
                .set(o.log_start);
            b.metrics
                .partition_bytes
                .with_label_values(&labels)
                .set(p.size_bytes() as i64);
        }
    }
    // Group series are rebuilt on each scrape so deleted groups and partitions disappear.
    b.metrics.group_committed.reset();
    b.metrics.group_lag.reset();
    b.metrics.group_rebalances.reset();
    b.metrics.groups.reset();
    for state in [
        "Empty",
        "PreparingRebalance",
        "CompletingRebalance",
        "Stable",
    ] {
        b.metrics.groups.with_label_values(&[state]).set(0);
    }
    for g in b.groups.snapshot() {
        b.metrics.groups.with_label_values(&[g.state]).inc();
        b.metrics
            .group_rebalances
            .with_label_values(&[&g.id])
            .set(g.rebalances as i64);
        for (topic, partition, committed) in g.committed {
            let p = partition.to_string();
            let labels = [g.id.as_str(), topic.as_str(), p.as_str()];
            b.metrics
                .group_committed
                .with_label_values(&labels)
                .set(committed);
            if let Some(part) = b.catalog.get(&topic).and_then(|t| t.partition(partition)) {
                let hw = part.offsets().high_watermark;
                b.metrics
                    .group_lag
                    .with_label_values(&labels)
                    .set((hw - committed).max(0));
            }
        }
    }
    for (cf, bytes) in b.store.live_bytes() {
        b.metrics
            .storage_bytes
            .with_label_values(&[cf])
            .set(bytes as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        b.metrics.render(),
    )
}
