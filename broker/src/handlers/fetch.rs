//! Fetch with long-poll: return whole batches from the requested offsets, waiting up to
//! `max_wait_ms` for `min_bytes` to accumulate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName,
};
use tokio::time::Instant;

use super::{leader_check, Broker};
use crate::acl::{op, resource, Session};
use crate::log::LogError;
use crate::protocol::batch;

/// Upper bound on how long one fetch may wait, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);

struct Wanted {
    partition: i32,
    offset: i64,
    max_bytes: usize,
    leader_epoch: i32,
    /// The client may not read this topic.
    denied: bool,
}

impl Broker {
    pub(super) async fn fetch(
        self: &Arc<Self>,
        req: FetchRequest,
        who: &Session,
        client_id: &str,
    ) -> FetchResponse {
        // A client already over its byte rate gets nothing but the time to wait, as from
        // Kafka; otherwise what it is sent counts against its quota.
        let key = crate::quota::CONSUMER_BYTE_RATE;
        let throttled = self.throttle(key, who, client_id, 0);
        if throttled > 0 {
            return FetchResponse::default().with_throttle_time_ms(throttled);
        }
        let wanted: Vec<(TopicName, Vec<Wanted>)> = req
            .topics
            .into_iter()
            .map(|t| {
                let denied = !self.authorize(who, op::READ, resource::TOPIC, t.topic.0.as_str());
                let parts = t
                    .partitions
                    .into_iter()
                    .map(|p| Wanted {
                        partition: p.partition,
                        offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes.max(0) as usize,
                        leader_epoch: p.current_leader_epoch,
                        denied,
                    })
                    .collect();
                (t.topic, parts)
            })
            .collect();
        let wanted = Arc::new(wanted);
        let max_bytes = if req.max_bytes <= 0 {
            usize::MAX
        } else {
            req.max_bytes as usize
        };
        let min_bytes = req.min_bytes.max(0) as usize;
        // read_committed: stop at the last stable offset and name the aborted transactions.
        let committed = req.isolation_level == 1;
        let deadline =
            Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
        loop {
            // Register interest before reading so an append between the read and the wait wakes us.
            let notified = self.data_arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let this = self.clone();
            let w = wanted.clone();
            let read =
                tokio::task::spawn_blocking(move || this.read_fetch(&w, max_bytes, committed))
                    .await;
            let (responses, total, any_error) = match read {
                Ok(r) => r,
                Err(_) => {
                    return FetchResponse::default()
                        .with_error_code(ResponseError::UnknownServerError.code());
                }
            };
            let stopping = *self.stopping.borrow();
            if total >= min_bytes.max(1) || any_error || stopping || Instant::now() >= deadline {
                self.count_fetched(&responses);
                return FetchResponse::default()
                    .with_throttle_time_ms(self.throttle(key, who, client_id, total))
                    .with_responses(responses);
            }
            // On wake-up, deadline or shutdown: read once more so fresh data is returned.
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, notified) => {}
                _ = self.stopped() => {}
            }
        }
    }

    fn count_fetched(&self, responses: &[FetchableTopicResponse]) {
        for t in responses {
            for p in &t.partitions {
                self.count_error(ApiKey::Fetch, p.error_code);
                let Some(records) = &p.records else { continue };
                if records.is_empty() {
                    continue;
                }
                let name = t.topic.0.as_str();
                self.metrics
                    .bytes_out
                    .with_label_values(&[name])
                    .inc_by(records.len() as u64);
                let count: u64 = batch::split(records)
                    .map(|(h, _)| h.record_count as u64)
                    .sum();
                self.metrics
                    .records_out
                    .with_label_values(&[name])
                    .inc_by(count);
            }
        }
    }

    /// Blocking: reads every requested partition once.
    fn read_fetch(
        &self,
        wanted: &[(TopicName, Vec<Wanted>)],
        max_bytes: usize,
        committed: bool,
    ) -> (Vec<FetchableTopicResponse>, usize, bool) {
        let mut total = 0usize;
        let mut any_error = false;
        let mut out = Vec::with_capacity(wanted.len());
        for (name, parts) in wanted {
            let topic = self.catalog.get(name.0.as_str());
            let mut partitions = Vec::with_capacity(parts.len());
            for w in parts {
                let mut pd = PartitionData::default()
                    .with_partition_index(w.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_preferred_read_replica(BrokerId(-1))
                    .with_aborted_transactions(Some(Vec::new()))
                    .with_records(Some(Bytes::new()));
                if w.denied {
                    any_error = true;
                    partitions
                        .push(pd.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
                    continue;
                }
                let Some(part) = topic.as_ref().and_then(|t| t.partition(w.partition)) else {
                    any_error = true;
                    partitions
                        .push(pd.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                    continue;
                };
                let offsets = part.offsets();
                pd = pd
                    .with_high_watermark(offsets.high_watermark)
                    .with_last_stable_offset(part.last_stable_offset())
                    .with_log_start_offset(offsets.log_start);
                let epoch_err = leader_check(&part, w.leader_epoch);
                if epoch_err != 0 {
                    any_error = true;
                    partitions.push(pd.with_error_code(epoch_err));
                    continue;
                }
                let budget = w.max_bytes.min(max_bytes.saturating_sub(total));
                if total > 0 && budget == 0 {
                    partitions.push(pd);
                    continue;
                }
                match part.read(w.offset, budget.max(1), committed) {
                    Ok(records) => {
                        let size = records.len();
                        // Only the first data in a response may exceed the limits.
                        if size > 0 && (total == 0 || size <= budget) {
                            if committed {
                                let last = batch::split(&records)
                                    .last()
                                    .map_or(w.offset, |(h, _)| h.last_offset());
                                let aborted = part
                                    .aborted_in(w.offset, last)
                                    .into_iter()
                                    .map(|a| {
                                        AbortedTransaction::default()
                                            .with_producer_id(ProducerId(a.producer_id))
                                            .with_first_offset(a.first_offset)
                                    })
                                    .collect();
                                pd = pd.with_aborted_transactions(Some(aborted));
                            }
                            total += size;
                            pd = pd.with_records(Some(records));
                        }
                        partitions.push(pd);
                    }
                    Err(e) => {
                        any_error = true;
                        let code = match e {
                            LogError::OffsetOutOfRange => ResponseError::OffsetOutOfRange.code(),
                            _ => ResponseError::KafkaStorageError.code(),
                        };
                        if let LogError::Storage(err) = &e {
                            tracing::error!(topic = %name.0.as_str(), partition = w.partition, error = %err, "fetch read failed");
                        }
                        partitions.push(pd.with_error_code(code));
                    }
                }
            }
            out.push(
                FetchableTopicResponse::default()
                    .with_topic(name.clone())
                    .with_partitions(partitions),
            );
        }
        (out, total, any_error)
    }
}
