//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, JSON views of the cluster
//! (`/v1/cluster`) and of a partition's local replica (`/v1/partitions/{topic}/{partition}`),
//! and the admin API for decommissioning, maintenance, balancing and preferred-leader
//! elections (forwarded to the active controller; see `docs/admin-api.yaml`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use kafka_protocol::error::ResponseError as E;

use crate::cluster::image::{BrokerId, BrokerState};
use crate::cluster::{decide, operations, reassign, ControlReply, ControlRequest, MOVE_KINDS};
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
        .route("/v1/cluster", get(cluster))
        .route("/v1/partitions/{topic}/{partition}", get(partition))
        .route(
            "/v1/brokers/{id}/decommission",
            get(decommission_status)
                .put(|s, id| operation(s, id, Op::Decommission, true))
                .delete(|s, id| operation(s, id, Op::Decommission, false)),
        )
        .route(
            "/v1/brokers/{id}/maintenance",
            get(maintenance_status)
                .put(enter_maintenance)
                .delete(|s, id| {
                    operation(
                        s,
                        id,
                        Op::Maintenance {
                            until_restart: false,
                        },
                        false,
                    )
                }),
        )
        .route("/v1/leaders/preferred", post(elect_preferred))
        .route("/v1/reassignments", get(reassignments))
        .route(
            "/v1/reassignments/{topic}/{partition}",
            get(reassignment)
                .put(start_reassignment)
                .delete(|s, p| reassign(s, p, None)),
        )
        .route(
            "/v1/balancer",
            get(balancer_status)
                .put(|s| operation(s, Path(0), Op::Balancer, true))
                .delete(|s| operation(s, Path(0), Op::Balancer, false)),
        )
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) && !s.broker.store.is_offline() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn cluster(State(s): State<HttpState>) -> impl IntoResponse {
    let b = &s.broker;
    let image = b.cluster.image();
    let m = b.cluster.raft.metrics().borrow().clone();
    let offline = image
        .partitions()
        .filter(|(_, _, p)| p.leader == -1)
        .count();
    let under_replicated = image
        .partitions()
        .filter(|(_, _, p)| p.isr.len() < p.replicas.len())
        .count();
    let non_preferred = image
        .partitions()
        .filter(|(_, _, p)| p.leader != -1 && p.replicas.first() != Some(&p.leader))
        .count();
    Json(serde_json::json!({
        "cluster_id": image.cluster_id,
        "node_id": b.config.node_id,
        "controller": b.cluster.controller_id(),
        "raft": {
            "term": m.current_term,
            "last_log_index": m.last_log_index,
            "applied_index": m.last_applied.map(|l| l.index),
            "state": format!("{:?}", m.state),
            "voters": m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
            "learners": m.membership_config.membership().learner_ids().collect::<Vec<_>>(),
        },
        "brokers": image.brokers.values().map(|br| serde_json::json!({
            "id": br.id,
            "kafka": br.kafka,
            "rpc": br.rpc,
            "rack": br.rack,
            "state": br.state,
            "fenced": br.state == BrokerState::Fenced,
            "leaders": decide::leader_count(&image, br.id),
            "replicas": operations::replicas_on(&image, br.id),
            "decommissioning": image.decommissioning.contains(&br.id),
            "maintenance": image.maintenance.contains(&br.id),
        })).collect::<Vec<_>>(),
        "partitions": {
            "total": image.partitions().count(),
            "offline": offline,
            "under_replicated": under_replicated,
            "non_preferred_leaders": non_preferred,
        },
        "reassignments": reassign::ongoing(&image).count(),
        "max_replication_factor": image
            .partitions()
            .map(|(_, _, p)| p.target().len())
            .max()
            .unwrap_or(0),
        // Every broker active, every partition led and with a full ISR.
        "healthy": offline == 0
            && under_replicated == 0
            && image.brokers.values().all(|b| b.state == BrokerState::Active),
    }))
}

/// Admin operations on a broker.
#[derive(Clone, Copy)]
enum Op {
    Decommission,
    Maintenance { until_restart: bool },
    Balancer,
}

/// Query of `PUT /v1/brokers/{id}/maintenance`.
#[derive(serde::Deserialize)]
struct MaintenanceQuery {
    /// `restart`: maintenance ends by itself when the broker registers anew.
    until: Option<String>,
}

async fn enter_maintenance(
    s: State<HttpState>,
    id: Path<BrokerId>,
    Query(q): Query<MaintenanceQuery>,
) -> axum::response::Response {
    let until_restart = match q.until.as_deref() {
        None => false,
        Some("restart") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("until={other}: the only value is 'restart'"),
            )
        }
    };
    operation(s, id, Op::Maintenance { until_restart }, true).await
}

/// Starts (`on`) or cancels an operation through the active controller. Refusals are
/// 4xx with the controller's reason.
async fn operation(
    State(s): State<HttpState>,
    Path(id): Path<BrokerId>,
    op: Op,
    on: bool,
) -> axum::response::Response {
    let req = match op {
        Op::Decommission => ControlRequest::Decommission { id, on },
        Op::Maintenance { until_restart } => ControlRequest::Maintenance {
            id,
            on,
            until_restart,
        },
        Op::Balancer => ControlRequest::Balancer { on },
    };
    match s.broker.cluster.control(req, CONTROL_TIMEOUT).await {
        reply @ (ControlReply::Error { .. } | ControlReply::NotController) => refused(reply),
        _ => match op {
            Op::Decommission => decommission_status(State(s), Path(id)).await,
            Op::Maintenance { .. } => maintenance_status(State(s), Path(id)).await,
            Op::Balancer => balancer_status(State(s)).await,
        },
    }
}

/// How long an admin call waits for the controller.
const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A controller's refusal as an HTTP answer: 404 for an unknown broker, 409 for a request
/// that contradicts the cluster's state, 503 when no controller decides.
fn refused(reply: ControlReply) -> axum::response::Response {
    let (status, message) = match reply {
        ControlReply::Error { code, message } if code == E::BrokerNotAvailable.code() => {
            (StatusCode::NOT_FOUND, message)
        }
        ControlReply::Error { code, message } if code == E::InvalidRequest.code() => {
            (StatusCode::CONFLICT, message)
        }
        ControlReply::Error { message, .. } => (StatusCode::SERVICE_UNAVAILABLE, message),
        ControlReply::NotController => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no active controller".to_string(),
        ),
        other => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected controller answer {other:?}"),
        ),
    };
    error(status, message)
}

/// An error answer: the status and `{"error": message}`.
fn error(status: StatusCode, message: String) -> axum::response::Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Moves leadership back to each partition's preferred replica (its first) wherever that
/// replica is active, in sync and not in maintenance; answers the partitions moved.
async fn elect_preferred(State(s): State<HttpState>) -> axum::response::Response {
    let req = ControlRequest::ElectLeaders {
        unclean: false,
        partitions: None,
    };
    match s.broker.cluster.control(req, CONTROL_TIMEOUT).await {
        ControlReply::Elected(moved) => Json(serde_json::json!({
            "elected": moved.len(),
            "partitions": moved
                .iter()
                .map(|(t, p, _)| serde_json::json!({ "topic": t, "partition": p }))
                .collect::<Vec<_>>(),
        }))
        .into_response(),
        other => refused(other),
    }
}

/// Partition sizes as the active controller knows them from brokers' reports (empty when
/// it does not answer).
async fn partition_sizes(b: &Broker) -> operations::Sizes {
    match b
        .cluster
        .control(ControlRequest::PartitionSizes, CONTROL_TIMEOUT)
        .await
    {
        ControlReply::PartitionSizes(s) => s,
        _ => operations::Sizes::new(),
    }
}

/// Decommission progress: partitions still on the broker, moves in flight, and the bytes
/// of the partitions it still holds (as their leaders last reported them; `null` while the
/// controller knows no size).
async fn decommission_status(
    State(s): State<HttpState>,
    Path(id): Path<BrokerId>,
) -> axum::response::Response {
    let b = &s.broker;
    let image = b.cluster.image();
    let left = operations::replicas_on(&image, id);
    let registered = image.brokers.contains_key(&id);
    let sizes = partition_sizes(b).await;
    let bytes_left = (!sizes.is_empty() || left == 0).then(|| {
        image
            .partitions()
            .filter(|(_, _, p)| p.replicas.contains(&id))
            .filter_map(|(t, i, _)| sizes.get(t)?.get(&i))
            .sum::<u64>()
    });
    Json(serde_json::json!({
        "broker": id,
        "registered": registered,
        "decommissioning": image.decommissioning.contains(&id),
        "partitions_left": left,
        "moves_in_flight": reassign::ongoing(&image).filter(|(_, _, p)| p.removing.contains(&id)).count(),
        "bytes_left": bytes_left,
        "drained": left == 0,
    }))
    .into_response()
}

/// What the balancer does: moving (reassignments in flight), balanced, or what it waits for.
async fn balancer_status(State(s): State<HttpState>) -> axum::response::Response {
    let image = s.broker.cluster.image();
    let tolerance = s.broker.config.balancer_tolerance_percent;
    let blocker = operations::balance_blocker(&image);
    let in_flight = reassign::ongoing(&image).count();
    let sizes = partition_sizes(&s.broker).await;
    let status = match (&blocker, in_flight) {
        (Some(why), _) => format!("waiting: {why}"),
        (None, 0)
            if operations::balance_moves(&image, tolerance, 1).is_empty()
                && operations::byte_moves(&image, &sizes, tolerance, 1).is_empty() =>
        {
            "balanced".to_string()
        }
        (None, 0) => "imbalanced: moves start within a moment".to_string(),
        (None, n) => format!("moving {n} partitions"),
    };
    Json(serde_json::json!({
        "enabled": !image.balancer_off,
        "status": status,
        "tolerance_percent": tolerance,
        "moves_in_flight": in_flight,
        "replicas": operations::replica_counts(&image),
        "bytes": operations::broker_bytes(&image, &sizes),
    }))
    .into_response()
}

/// One partition's replicas and the reassignment in flight, if any.
fn reassignment_json(
    topic: &str,
    partition: i32,
    p: &crate::cluster::image::PartitionState,
) -> serde_json::Value {
    serde_json::json!({
        "topic": topic,
        "partition": partition,
        "replicas": p.replicas,
        "adding": p.adding,
        "removing": p.removing,
        "isr": p.isr,
    })
}

/// Reassignments in flight (as ListPartitionReassignments).
async fn reassignments(State(s): State<HttpState>) -> axum::response::Response {
    let image = s.broker.cluster.image();
    let list: Vec<_> = reassign::ongoing(&image)
        .map(|(t, i, p)| reassignment_json(t, i, p))
        .collect();
    Json(serde_json::json!({ "reassignments": list })).into_response()
}

/// A partition's replicas and its reassignment, if any.
async fn reassignment(
    State(s): State<HttpState>,
    Path((topic, partition)): Path<(String, i32)>,
) -> axum::response::Response {
    let image = s.broker.cluster.image();
    match image.partition(&topic, partition) {
        Some(p) => Json(reassignment_json(&topic, partition, p)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no partition {topic}-{partition}"),
        ),
    }
}

/// Query of `PUT /v1/reassignments/{topic}/{partition}`.
#[derive(serde::Deserialize)]
struct ReassignQuery {
    /// Target replicas, comma-separated broker ids (the first is the preferred leader).
    replicas: String,
}

async fn start_reassignment(
    s: State<HttpState>,
    path: Path<(String, i32)>,
    Query(q): Query<ReassignQuery>,
) -> axum::response::Response {
    let target: Result<Vec<BrokerId>, _> =
        q.replicas.split(',').map(|b| b.trim().parse()).collect();
    match target {
        Ok(t) if !t.is_empty() => reassign(s, path, Some(t)).await,
        _ => error(
            StatusCode::BAD_REQUEST,
            format!(
                "replicas={}: expected broker ids separated by commas",
                q.replicas
            ),
        ),
    }
}

/// Starts (a target) or cancels (`None`) a partition's reassignment, as
/// AlterPartitionReassignments does (the replication factor may change).
async fn reassign(
    State(s): State<HttpState>,
    Path((topic, partition)): Path<(String, i32)>,
    target: Option<Vec<BrokerId>>,
) -> axum::response::Response {
    let epoch = |img: &crate::cluster::image::Image| {
        img.partition(&topic, partition).map(|p| p.partition_epoch)
    };
    let before = epoch(&s.broker.cluster.image());
    let req = ControlRequest::Reassign {
        allow_rf_change: true,
        partitions: vec![(topic.clone(), partition, target)],
    };
    match s.broker.cluster.control(req, CONTROL_TIMEOUT).await {
        ControlReply::Reassigned(results) => match results.into_iter().next() {
            Some((_, _, 0, _)) => {
                // Answer with the change applied here too, not this broker's older view.
                let mut image = s.broker.cluster.image.clone();
                let _ = tokio::time::timeout(
                    CONTROL_TIMEOUT,
                    image.wait_for(|img| epoch(img) != before),
                )
                .await;
                reassignment(State(s), Path((topic, partition))).await
            }
            Some((_, _, code, message)) => {
                let status = if code == E::UnknownTopicOrPartition.code() {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::CONFLICT
                };
                error(
                    status,
                    message.unwrap_or_else(|| format!("error code {code}")),
                )
            }
            None => refused(ControlReply::NotController),
        },
        other => refused(other),
    }
}

/// Maintenance state: done once the broker leads nothing. `sole_replica_leaders` are
/// leaderships no other replica could ever take (replication factor 1).
async fn maintenance_status(
    State(s): State<HttpState>,
    Path(id): Path<BrokerId>,
) -> axum::response::Response {
    let image = s.broker.cluster.image();
    let leaders = decide::leader_count(&image, id);
    Json(serde_json::json!({
        "broker": id,
        "registered": image.brokers.contains_key(&id),
        "maintenance": image.maintenance.contains(&id),
        "until_restart": image.maintenance_until_restart.contains(&id),
        "leaders": leaders,
        "sole_replica_leaders": operations::sole_replica_leaders(&image, id),
        "done": image.maintenance.contains(&id) && leaders == 0,
    }))
    .into_response()
}

async fn partition(
    State(s): State<HttpState>,
    Path((topic, index)): Path<(String, i32)>,
) -> axum::response::Response {
    let Some(part) = s
        .broker
        .catalog
        .get(&topic)
        .and_then(|t| t.partition(index))
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("{topic}-{index} is not known here"),
        )
            .into_response();
    };
    let view = part.view();
    let p = part.clone();
    let batches = match tokio::task::spawn_blocking(move || p.batch_summaries()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let mut v = serde_json::to_value(&view).unwrap_or_default();
    v["last_stable_offset"] = part.last_stable_offset().into();
    v["open_transactions"] = part
        .open_transactions()
        .into_iter()
        .map(|(pid, first)| serde_json::json!({"producer_id": pid, "first_offset": first}))
        .collect();
    v["aborted_transactions"] = part
        .aborted_in(0, i64::MAX)
        .into_iter()
        .map(|a| serde_json::json!({"producer_id": a.producer_id, "first_offset": a.first_offset}))
        .collect();
    v["batches"] = batches
        .into_iter()
        .map(|(base, last, epoch, crc)| {
            serde_json::json!({"base_offset": base, "last_offset": last, "epoch": epoch, "crc": crc})
        })
        .collect();
    Json(v).into_response()
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let b = &s.broker;
    let me = b.config.node_id;
    let image = b.cluster.image();
    let (mut led, mut under, mut under_min) = (0, 0, 0);
    // Rebuilt on each scrape so replicas that moved or stopped being followed disappear.
    b.metrics.replica_lag_records.reset();
    b.metrics.replica_lag_seconds.reset();
    b.metrics.lso_lag.reset();
    b.metrics.transaction_ids.reset();
    for (phase, n) in b.txn_phases() {
        b.metrics.transaction_ids.with_label_values(&[phase]).set(n);
    }
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
            let (leader, replicas, isr) = p.replica_set();
            if leader == me {
                led += 1;
                let lag = o.high_watermark - p.last_stable_offset();
                if lag > 0 {
                    b.metrics.lso_lag.with_label_values(&labels).set(lag);
                }
                under += i64::from(isr.len() < replicas.len());
                under_min += i64::from((isr.len() as i32) < t.config().min_insync_replicas);
                for (replica, records, behind) in p.follower_lags() {
                    let r = replica.to_string();
                    let l = [labels[0], labels[1], r.as_str()];
                    b.metrics
                        .replica_lag_records
                        .with_label_values(&l)
                        .set(records);
                    b.metrics
                        .replica_lag_seconds
                        .with_label_values(&l)
                        .set(behind.as_secs_f64());
                }
            }
        }
    }
    let offline = image
        .partitions()
        .filter(|(_, _, p)| p.leader == -1)
        .count() as i64;
    for (k, v) in [
        ("leader", led),
        ("under_replicated", under),
        ("under_min_isr", under_min),
        ("offline", offline),
    ] {
        b.metrics.partitions.with_label_values(&[k]).set(v);
    }
    b.metrics.preferred_imbalance.set(
        image
            .partitions()
            .filter(|(_, _, p)| p.replicas.first() == Some(&me) && p.leader != me)
            .count() as i64,
    );
    let ops = &b.metrics.operations;
    ops.with_label_values(&["reassignments"])
        .set(reassign::ongoing(&image).count() as i64);
    ops.with_label_values(&["decommission_replicas_left"]).set(
        image
            .decommissioning
            .iter()
            .map(|&d| operations::replicas_on(&image, d) as i64)
            .sum(),
    );
    // Per broker (not cluster-wide like the others): what this broker still holds.
    let own_left = if image.decommissioning.contains(&b.config.node_id) {
        b.replica_sizes()
            .values()
            .flat_map(|m| m.values())
            .sum::<u64>()
    } else {
        0
    };
    ops.with_label_values(&["decommission_bytes_left"])
        .set(own_left as i64);
    ops.with_label_values(&["maintenance"])
        .set(image.maintenance.len() as i64);
    let configs = b.catalog.broker_configs();
    for side in ["leader", "follower"] {
        let rate = configs.get_i64(&format!("{side}.replication.throttled.rate"), i64::MAX);
        b.metrics
            .throttle_rate
            .with_label_values(&[side])
            .set(if rate == i64::MAX { 0 } else { rate });
    }
    {
        let m = b.cluster.raft.metrics().borrow().clone();
        let q = &b.metrics.quorum;
        q.with_label_values(&["active_controller"])
            .set(i64::from(m.current_leader == Some(me as u64)));
        q.with_label_values(&["term"]).set(m.current_term as i64);
        q.with_label_values(&["last_log_index"])
            .set(m.last_log_index.unwrap_or(0) as i64);
        q.with_label_values(&["applied_index"])
            .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
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
    for (kind, total) in MOVE_KINDS.iter().zip(&b.cluster.controller.moves) {
        let c = b.metrics.balancer_moves.with_label_values(&[kind]);
        c.inc_by(total.load(Ordering::Relaxed).saturating_sub(c.get()));
    }
    let syncs = b.store.wal_syncs();
    b.metrics
        .wal_syncs
        .inc_by(syncs.saturating_sub(b.metrics.wal_syncs.get()));
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
