//! Leader side: the `Replication.Fetch` RPC. Records each follower's position (moving
//! the high watermark), tells diverging followers where to truncate, and long-polls for
//! new data like a consumer fetch.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::handlers::Broker;
use crate::log::{FollowerCheck, LogError, Partition};
use crate::rpc::{FetchRequest, FetchResponse, FetchedPartition, Replication};

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
    read: bool,
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
    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let req = req.into_inner();
        let b = &self.broker;
        b.cluster.cluster_id.check(&req.cluster_id)?;
        let mut items: Vec<Item> = req
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
                match &part {
                    None => {
                        out.error_code = i32::from(ResponseError::UnknownTopicOrPartition.code())
                    }
                    Some(p) => match p.follower_fetch(
                        req.replica_id,
                        fp.leader_epoch,
                        fp.fetch_offset,
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
                    offset: fp.fetch_offset,
                    read,
                }
            })
            .collect();
        // Long-poll until one partition has data past the follower's position.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT_CAP);
        loop {
            let notified = b.data_arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ready = items
                .iter()
                .any(|i| !i.read || i.part.as_ref().is_some_and(|p| p.log_end() > i.offset));
            if ready || b.is_stopping() || tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        let max_bytes = (req.max_bytes as usize).max(1);
        let items = tokio::task::spawn_blocking(move || {
            let mut total = 0usize;
            for i in items.iter_mut().filter(|i| i.read) {
                let Some(p) = &i.part else { continue };
                if total >= max_bytes {
                    break;
                }
                match p.read_for_replica(i.offset, max_bytes - total) {
                    Ok(batches) => {
                        let size: usize = batches.iter().map(|x| x.len()).sum();
                        let mut buf = BytesMut::with_capacity(size);
                        for x in &batches {
                            buf.extend_from_slice(x);
                        }
                        total += size;
                        i.out.records = buf.freeze();
                        i.out.high_watermark = p.offsets().high_watermark;
                    }
                    Err(e) => i.out.error_code = code(&e),
                }
            }
            items
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let sent: u64 = items.iter().map(|i| i.out.records.len() as u64).sum();
        b.metrics.replication_bytes_out.inc_by(sent);
        Ok(Response::new(FetchResponse {
            partitions: items.into_iter().map(|i| i.out).collect(),
        }))
    }
}
