//! Leader side: the `Replication.Replicate` stream (and the one-shot `Fetch`). Records
//! each follower's position (moving the high watermark), tells diverging followers where
//! to truncate, and long-polls for new data like a consumer fetch.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::handlers::Broker;
use crate::log::{FollowerCheck, LogError, Partition};
use crate::rpc::{Envelope, FetchRequest, FetchResponse, FetchedPartition, Replication};

use super::throttle;

/// Longest a follower fetch may wait, whatever it asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(10);

/// Serves followers' fetches.
pub struct ReplicationService {
    /// The broker.
    pub broker: Arc<Broker>,
}

struct Item {
    out: FetchedPartition,
    part: Option<Arc<Partition>>,
    offset: i64,
    /// The follower's limit for this partition (0: none).
    max_bytes: u32,
    read: bool,
    /// An out-of-sync follower of a partition listed in `leader.replication.throttled.replicas`.
    throttled: bool,
    /// Held back by the throttle this round.
    held: bool,
}

fn code(e: &LogError) -> i32 {
    i32::from(match e {
        LogError::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        LogError::FencedEpoch => ResponseError::FencedLeaderEpoch.code(),
        LogError::UnknownEpoch => ResponseError::UnknownLeaderEpoch.code(),
        LogError::OffsetOutOfRange => ResponseError::OffsetOutOfRange.code(),
        _ => ResponseError::KafkaStorageError.code(),
    })
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn write_markers(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let env = req.into_inner();
        let b = &self.broker;
        b.cluster.cluster_id.check(&env.cluster_id)?;
        let markers: crate::handlers::txn::Markers = serde_json::from_slice(&env.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable markers: {e}")))?;
        let results = b.write_markers_here(&markers).await;
        let payload = serde_json::to_vec(&results).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Envelope {
            cluster_id: b.cluster.cluster_id.get(),
            payload: payload.into(),
        }))
    }

    async fn verify_txn(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let env = req.into_inner();
        let b = &self.broker;
        b.cluster.cluster_id.check(&env.cluster_id)?;
        let verify: crate::handlers::txn_verify::Verify = serde_json::from_slice(&env.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable verification: {e}")))?;
        let codes = b.verify_txn_here(&verify);
        let payload = serde_json::to_vec(&codes).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Envelope {
            cluster_id: b.cluster.cluster_id.get(),
            payload: payload.into(),
        }))
    }

    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let req = req.into_inner();
        self.broker.cluster.cluster_id.check(&req.cluster_id)?;
        let fetch = check(&self.broker, req);
        Ok(Response::new(respond(&self.broker, fetch).await?))
    }

    type ReplicateStream = Pin<Box<dyn Stream<Item = Result<FetchResponse, Status>> + Send>>;

    async fn replicate(
        &self,
        req: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let mut inbound = req.into_inner();
        let broker = self.broker.clone();
        let (out_tx, out_rx) = mpsc::channel(2);
        // Positions are recorded as messages arrive, in order, so progress reported
        // while a fetch waits for data moves the high watermark at once; fetches are
        // answered one at a time, in order, by a second task.
        let (fetch_tx, mut fetch_rx) = mpsc::channel::<Checked>(1);
        let reader = {
            let (broker, out_tx) = (broker.clone(), out_tx.clone());
            async move {
                loop {
                    let req = match inbound.message().await {
                        Ok(Some(req)) => req,
                        Ok(None) => return,
                        Err(status) => {
                            tracing::debug!(%status, "replication stream broke");
                            return;
                        }
                    };
                    if let Err(status) = broker.cluster.cluster_id.check(&req.cluster_id) {
                        tracing::warn!(replica = req.replica_id, %status, "replication stream refused");
                        let _ = out_tx.send(Err(status)).await;
                        return;
                    }
                    let progress_only = req.progress_only;
                    let fetch = check(&broker, req);
                    if !progress_only && fetch_tx.send(fetch).await.is_err() {
                        return;
                    }
                }
            }
        };
        tokio::spawn(async move {
            // The reader ends with the follower's side of the stream; answering stops
            // with it. A stopping broker ends the stream itself: the RPC server's
            // graceful shutdown waits for every open stream, and a follower would keep
            // one open as long as this broker still leads its partitions.
            let answer = async {
                while let Some(fetch) = fetch_rx.recv().await {
                    let resp = respond(&broker, fetch).await;
                    if out_tx.send(resp).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = reader => {}
                _ = answer => {}
                _ = broker.stopped() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// A follower's fetch, checked against each partition's log and its position recorded.
struct Checked {
    replica_id: i32,
    max_wait_ms: u32,
    max_bytes: u32,
    items: Vec<Item>,
}

/// Checks each partition of `req` (epoch, divergence, log start) and records the
/// follower's position there.
fn check(b: &Broker, req: FetchRequest) -> Checked {
    let items = req
        .partitions
        .into_iter()
        .map(|fp| {
            let mut out = FetchedPartition {
                topic_id: fp.topic_id.clone(),
                partition: fp.partition,
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            };
            let part = Uuid::from_slice(&fp.topic_id)
                .ok()
                .and_then(|id| b.catalog.get_by_id(id))
                .and_then(|t| t.partition(fp.partition));
            let mut read = false;
            let throttled = part.as_ref().is_some_and(|p| {
                !p.in_sync(req.replica_id)
                    && b.catalog.get(&p.topic).is_some_and(|t| {
                        throttle::listed(
                            t.overrides()
                                .get("leader.replication.throttled.replicas")
                                .map(String::as_str),
                            p.index,
                            b.config.node_id,
                        )
                    })
            });
            match &part {
                None => out.error_code = i32::from(ResponseError::UnknownTopicOrPartition.code()),
                Some(p) => match p.follower_fetch(
                    req.replica_id,
                    fp.leader_epoch,
                    fp.fetch_offset,
                    fp.durable_offset.unwrap_or(fp.fetch_offset),
                    fp.last_fetched_epoch,
                ) {
                    Ok(FollowerCheck::Read {
                        high_watermark,
                        log_start,
                    }) => {
                        out.high_watermark = high_watermark;
                        out.log_start_offset = log_start;
                        read = true;
                    }
                    Ok(FollowerCheck::Diverging { epoch, end_offset }) => {
                        out.diverging = true;
                        out.diverging_epoch = epoch;
                        out.diverging_end_offset = end_offset;
                    }
                    Ok(FollowerCheck::Reset { log_start }) => {
                        out.reset = true;
                        out.log_start_offset = log_start;
                    }
                    Err(e) => out.error_code = code(&e),
                },
            }
            Item {
                out,
                part,
                max_bytes: fp.max_bytes,
                offset: fp.fetch_offset,
                read,
                throttled,
                held: false,
            }
        })
        .collect();
    Checked {
        replica_id: req.replica_id,
        max_wait_ms: req.max_wait_ms,
        max_bytes: req.max_bytes,
        items,
    }
}

/// Waits (up to the fetch's wait) for data past some partition's position and reads it.
async fn respond(b: &Broker, fetch: Checked) -> Result<FetchResponse, Status> {
    let Checked {
        replica_id,
        max_wait_ms,
        max_bytes,
        mut items,
    } = fetch;
    // While the leader throttle is in debt, throttled partitions get no data, and no
    // more than it allows otherwise.
    if items.iter().any(|i| i.throttled) {
        let rate = b
            .catalog
            .broker_configs()
            .get_i64("leader.replication.throttled.rate", i64::MAX);
        let in_debt = !b.leader_throttle.delay(rate).is_zero();
        let allowance = b.leader_throttle.allowance(rate);
        for i in items.iter_mut().filter(|i| i.throttled && i.read) {
            if in_debt {
                i.read = false;
                i.held = true;
            } else if let Some(a) = allowance {
                i.max_bytes = if i.max_bytes == 0 {
                    a
                } else {
                    i.max_bytes.min(a)
                };
            }
        }
    }
    // Long-poll until one partition has data past the follower's position.
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(u64::from(max_wait_ms)).min(MAX_WAIT_CAP);
    loop {
        let notified = b.data_arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ready = items.iter().any(|i| {
            (!i.read && !i.held)
                || (i.read && i.part.as_ref().is_some_and(|p| p.log_end() > i.offset))
        });
        if ready || b.is_stopping() || tokio::time::Instant::now() >= deadline {
            break;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
    let max_bytes = (max_bytes as usize).max(1);
    let items = tokio::task::spawn_blocking(move || {
        let mut total = 0usize;
        for i in items.iter_mut().filter(|i| i.read) {
            let Some(p) = &i.part else { continue };
            if total >= max_bytes {
                break;
            }
            let mut limit = max_bytes - total;
            if i.max_bytes > 0 {
                limit = limit.min(i.max_bytes as usize);
            }
            match p.read_for_replica(i.offset, limit) {
                Ok(records) => {
                    total += records.len();
                    i.out.records = records;
                    i.out.high_watermark = p.offsets().high_watermark;
                }
                Err(e) => i.out.error_code = code(&e),
            }
        }
        items
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?;
    let throttled: u64 = items
        .iter()
        .filter(|i| i.throttled)
        .map(|i| i.out.records.len() as u64)
        .sum();
    b.leader_throttle.spend(throttled);
    let sent: u64 = items.iter().map(|i| i.out.records.len() as u64).sum();
    b.metrics.replication_bytes_out.inc_by(sent);
    // Bytes copied to replicas a reassignment adds (moves, decommission, balancing).
    let image = b.cluster.image();
    let moving: u64 = items
        .iter()
        .filter(|i| {
            i.part.as_ref().is_some_and(|p| {
                image
                    .partition(&p.topic, p.index)
                    .is_some_and(|s| s.adding.contains(&replica_id))
            })
        })
        .map(|i| i.out.records.len() as u64)
        .sum();
    b.metrics.reassignment_bytes.inc_by(moving);
    Ok(FetchResponse {
        partitions: items.into_iter().map(|i| i.out).collect(),
    })
}
