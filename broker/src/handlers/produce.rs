//! Produce: validate each partition's batch, append it, answer once it is durable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    ProducerId,
};

use super::{Broker, Reply};
use crate::acl::{op, resource, Session};
use crate::cluster::{ControlReply, ControlRequest};
use crate::config::FsyncPolicy;
use crate::group::OFFSETS_TOPIC;
use crate::log::{AppendOutcome, Appended, LogError, Partition};
use crate::metadata::Topic;
use crate::protocol::{batch, encode_response};

impl Broker {
    /// Appends before returning (so pipelined requests keep their order: the connection
    /// reads its next request only then) and returns the future that waits for
    /// durability and encodes the response. A transaction's first batch on a partition
    /// is verified with its coordinator first (`txn_verify`).
    pub(super) async fn produce(
        self: &Arc<Self>,
        req: ProduceRequest,
        version: i16,
        corr: i32,
        who: &Session,
        client_id: &str,
    ) -> Reply {
        let acks = req.acks;
        let bytes: usize = req
            .topic_data
            .iter()
            .flat_map(|t| &t.partition_data)
            .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
            .sum();
        let throttle_ms = self.throttle(crate::quota::PRODUCER_BYTE_RATE, who, client_id, bytes);
        let sync = match self.config.fsync_policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::AcksAll => acks == -1,
            FsyncPolicy::Never => false,
        };
        let guards = self.verify_txn_writes(&req).await;
        let mut pending = Vec::with_capacity(req.topic_data.len());
        for t in req.topic_data {
            let topic = self.catalog.get(t.name.0.as_str());
            let allowed = self.authorize(who, op::WRITE, resource::TOPIC, t.name.0.as_str());
            let parts: Vec<_> = t
                .partition_data
                .into_iter()
                .map(|p| {
                    let result = if !allowed {
                        Err(ResponseError::TopicAuthorizationFailed.code())
                    } else if matches!(acks, -1..=1) {
                        let key = || (t.name.0.to_string(), p.index);
                        match (!guards.is_empty()).then(|| guards.get(&key())).flatten() {
                            Some(Err(code)) => Err(*code),
                            guard => self.append_partition(
                                topic.as_ref(),
                                p.index,
                                p.records.unwrap_or_default(),
                                acks,
                                sync,
                                guard.and_then(|g| g.ok()),
                            ),
                        }
                    } else {
                        Err(ResponseError::InvalidRequiredAcks.code())
                    };
                    (p.index, result)
                })
                .collect();
            pending.push((t.name, parts));
        }
        let this = self.clone();
        let timeout = Duration::from_millis(req.timeout_ms.max(1000) as u64);
        if acks == 0 {
            // No response, but the request stays in flight until its records are written
            // locally: a client sending faster than the log writes is held back instead
            // of queueing without bound.
            return Box::pin(async move {
                let deadline = tokio::time::Instant::now() + timeout;
                for (_, result) in pending.into_iter().flat_map(|(_, parts)| parts) {
                    if let Ok(p) = result {
                        let _ = p.wait(&this, 1, deadline).await;
                    }
                }
                Ok(None)
            });
        }
        Box::pin(async move {
            let mut responses = Vec::with_capacity(pending.len());
            for (name, parts) in pending {
                let mut out = Vec::with_capacity(parts.len());
                for (index, result) in parts {
                    let deadline = tokio::time::Instant::now() + timeout;
                    let waited = match result {
                        Err(code) => Err(code),
                        Ok(pending) => pending
                            .wait(&this, acks, deadline)
                            .await
                            .map_err(|e| log_error_code(&e)),
                    };
                    let resp = PartitionProduceResponse::default().with_index(index);
                    let resp = match waited {
                        Ok(a) => resp
                            .with_base_offset(a.base_offset)
                            .with_log_append_time_ms(a.log_append_time)
                            .with_log_start_offset(a.log_start_offset),
                        Err(code) => {
                            this.count_error(ApiKey::Produce, code);
                            resp.with_error_code(code)
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                        }
                    };
                    out.push(resp);
                }
                responses.push(
                    TopicProduceResponse::default()
                        .with_name(name)
                        .with_partition_responses(out),
                );
            }
            let resp = ProduceResponse::default()
                .with_responses(responses)
                .with_throttle_time_ms(throttle_ms);
            encode_response(ApiKey::Produce, version, corr, &resp).map(Some)
        })
    }

    fn append_partition(
        &self,
        topic: Option<&Arc<Topic>>,
        index: i32,
        records: Bytes,
        acks: i16,
        sync: bool,
        txn_guard: Option<u64>,
    ) -> Result<PendingAppend, i16> {
        let unknown = ResponseError::UnknownTopicOrPartition.code();
        let topic = topic.ok_or(unknown)?;
        if &*topic.name == OFFSETS_TOPIC {
            // Only the group coordinator writes committed offsets.
            return Err(ResponseError::InvalidTopicException.code());
        }
        let part = topic.partition(index).ok_or(unknown)?;
        let cfg = topic.config();
        if !self.leads(&part) {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        let min_isr = cfg.min_insync_replicas.max(1) as usize;
        if acks == -1 && part.isr_len() < min_isr {
            return Err(ResponseError::NotEnoughReplicas.code());
        }
        let mut header = check_batch(&records, cfg.max_message_bytes)?;
        // Compaction keeps the latest record per key: keyless records have no place there.
        if cfg.compacts && !crate::protocol::records::all_keyed(&records).unwrap_or(false) {
            return Err(ResponseError::InvalidRecord.code());
        }
        let name = &*topic.name;
        self.metrics
            .bytes_in
            .with_label_values(&[name])
            .inc_by(records.len() as u64);
        self.metrics
            .records_in
            .with_label_values(&[name])
            .inc_by(header.record_count as u64);
        let records = match cfg.compression {
            Some(target) => match batch_recompress(&records, target)? {
                Some((packed, h)) => {
                    header = h;
                    Bytes::from(packed)
                }
                None => records,
            },
            None => records,
        };
        let epoch = part.leader_epoch();
        let outcome = if self.config.transaction_partition_verification_enable {
            part.append_produced(&records, &header, &cfg, sync, txn_guard)
        } else {
            part.append(&records, &header, &cfg, sync)
        };
        Ok(PendingAppend {
            part,
            outcome,
            records: header.last_offset_delta,
            epoch,
            min_isr,
        })
    }
}

/// An append waiting for local durability and, for acks=all, replication.
struct PendingAppend {
    part: Arc<Partition>,
    outcome: AppendOutcome,
    records: i32,
    epoch: i32,
    min_isr: usize,
}

impl PendingAppend {
    /// Waits per `acks`; gives up with NOT_LEADER_OR_FOLLOWER as soon as this broker
    /// steps aside as leader (see [`Broker::leads`]), so the client retries at the new
    /// leader instead of waiting out its request timeout.
    async fn wait(
        self,
        broker: &Broker,
        acks: i16,
        deadline: tokio::time::Instant,
    ) -> Result<Appended, LogError> {
        let min_isr = (acks == -1).then_some(self.min_isr);
        let part = self.part.clone();
        let settle =
            self.part
                .settle_append(self.outcome, self.records, self.epoch, min_isr, deadline);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                r = &mut settle => return r,
                _ = tokio::time::sleep(STEP_ASIDE_CHECK) => {
                    if !broker.leads(&part) {
                        return Err(LogError::NotLeader);
                    }
                }
            }
        }
    }
}

/// How often a waiting produce checks that this broker may still lead.
const STEP_ASIDE_CHECK: Duration = Duration::from_millis(100);

/// Validates a produced record set; returns the Kafka error code on rejection.
fn check_batch(records: &[u8], max_message_bytes: usize) -> Result<batch::BatchHeader, i16> {
    if records.len() > max_message_bytes {
        return Err(ResponseError::MessageTooLarge.code());
    }
    let header = batch::validate_produced(records).map_err(|e| match e {
        batch::BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
        _ => ResponseError::CorruptMessage.code(),
    })?;
    if header.is_control() {
        // Only the transaction coordinator writes control batches (markers).
        return Err(ResponseError::InvalidRecord.code());
    }
    Ok(header)
}

/// Rewrites a batch in the topic's codec (`None`: already in it); a batch that does not
/// decompress is corrupt.
fn batch_recompress(
    records: &[u8],
    target: riffle_protocol::compress::Target,
) -> Result<Option<(Vec<u8>, batch::BatchHeader)>, i16> {
    let corrupt = |_| ResponseError::CorruptMessage.code();
    match riffle_protocol::compress::recompress(records, target).map_err(corrupt)? {
        Some(packed) => {
            let header = batch::parse_header(&packed).map_err(corrupt)?;
            Ok(Some((packed, header)))
        }
        None => Ok(None),
    }
}

/// Kafka error code of a log error.
pub(super) fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::Storage(_) => ResponseError::KafkaStorageError.code(),
        LogError::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber.code(),
        LogError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch.code(),
        LogError::CoordinatorFenced => ResponseError::TransactionCoordinatorFenced.code(),
        LogError::InvalidTxnState => ResponseError::InvalidTxnState.code(),
        LogError::InvalidTimestamp(_) => ResponseError::InvalidTimestamp.code(),
        LogError::OffsetOutOfRange => ResponseError::OffsetOutOfRange.code(),
        LogError::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        LogError::FencedEpoch => ResponseError::FencedLeaderEpoch.code(),
        LogError::UnknownEpoch => ResponseError::UnknownLeaderEpoch.code(),
        LogError::NotEnoughReplicas => ResponseError::NotEnoughReplicas.code(),
        LogError::NotEnoughReplicasAfterAppend => {
            ResponseError::NotEnoughReplicasAfterAppend.code()
        }
        LogError::Timeout => ResponseError::RequestTimedOut.code(),
        LogError::NotContiguous { .. } | LogError::BadBatch(_) => {
            ResponseError::CorruptMessage.code()
        }
    }
}

impl Broker {
    /// InitProducerId: for idempotent producers a fresh id, or the same id with a bumped
    /// epoch; with a transactional id, the transaction coordinator's answer.
    pub(super) async fn init_producer_id(
        &self,
        req: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        let resp = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let (id, epoch) = (req.producer_id.0, req.producer_epoch);
        if let Some(txn_id) = req.transactional_id.as_ref().filter(|t| !t.is_empty()) {
            return match self
                .init_transactional(txn_id.as_str(), req.transaction_timeout_ms, (id, epoch))
                .await
            {
                Ok((id, epoch)) => resp
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(epoch),
                Err(code) => {
                    self.count_error(ApiKey::InitProducerId, code);
                    resp.with_error_code(code)
                }
            };
        }
        // KIP-360: a known producer asking again gets its epoch bumped.
        let known = id >= 0 && id < self.cluster.image().next_producer_id;
        if known && (0..i16::MAX - 1).contains(&epoch) {
            return resp
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch + 1);
        }
        match self.allocate_producer_id().await {
            Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
            Err(code) => {
                self.count_error(ApiKey::InitProducerId, code);
                resp.with_error_code(code)
            }
        }
    }

    /// A producer id unique in the cluster: from this broker's block, reserving a new
    /// block through the controller when it is used up.
    pub(super) async fn allocate_producer_id(&self) -> Result<i64, i16> {
        loop {
            {
                let mut g = self.pids.lock().unwrap_or_else(|p| p.into_inner());
                if g.0 < g.1 {
                    g.0 += 1;
                    return Ok(g.0 - 1);
                }
            }
            let reply = self.control(ControlRequest::AllocateProducerIds, 0).await;
            match reply {
                ControlReply::ProducerIds { first, count } => {
                    let mut g = self.pids.lock().unwrap_or_else(|p| p.into_inner());
                    if g.0 >= g.1 {
                        *g = (first, first + count);
                    }
                }
                other => {
                    return Err(super::control_error(&other)
                        .map(|e| e.0)
                        .unwrap_or(ResponseError::UnknownServerError.code()))
                }
            }
        }
    }
}
