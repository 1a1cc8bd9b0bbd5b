//! Transactions: the coordinator's requests (InitProducerId with a transactional id,
//! AddPartitionsToTxn, AddOffsetsToTxn, EndTxn), TxnOffsetCommit at the group
//! coordinator, and the markers that end a transaction on every partition it wrote to.
//!
//! Ending a transaction is synchronous: EndTxn stores PrepareCommit/PrepareAbort, writes
//! the markers (here or through the leaders' `WriteMarkers` RPC), stores the completion,
//! then answers. A prepared transaction left behind (coordinator failover, a leader down
//! past the marker timeout) is finished by the next request for its id or by the timer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::Broker;
use crate::acl::{op, resource, Session};
use crate::group::offsets::offsets_partition;
use crate::group::{Committed, OFFSETS_TOPIC};
use crate::log::now_ms;
use crate::protocol::batch;
use crate::rpc::ReplicationClient;
use crate::txn::{self, Init, Phase, TxnMeta};

/// How long the coordinator keeps retrying markers before it answers and leaves the
/// rest to the timer.
const MARKER_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between marker rounds while a partition has no reachable leader.
const MARKER_RETRY: Duration = Duration::from_millis(50);

/// How often the timer looks for expired and unfinished transactions.
pub const TXN_TICK: Duration = Duration::from_secs(1);

/// Markers for one producer's transaction on partitions the receiver leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Markers {
    /// Producer.
    pub producer_id: i64,
    /// Its epoch (the marker fences older ones).
    pub producer_epoch: i16,
    /// Commit or abort.
    pub commit: bool,
    /// The coordinator's epoch.
    pub coordinator_epoch: i32,
    /// (topic, partition).
    pub partitions: Vec<(String, i32)>,
}

impl Broker {
    /// The per-id lock that serialises a transactional id's requests on this coordinator.
    fn txn_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.txn_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle ids now and then so the map stays as large as the live ids.
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
    }

    /// InitProducerId for a transactional id.
    pub(super) async fn init_transactional(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: (i64, i16),
    ) -> Result<(i64, i16), i16> {
        if timeout_ms <= 0 || timeout_ms > self.config.transaction_max_timeout_ms {
            return Err(E::InvalidTransactionTimeout.code());
        }
        let lock = self.txn_lock(id);
        let _g = lock.lock().await;
        let (current, coordinator_epoch) = self.settled_txn(id).await?;
        let fresh = match &current {
            Some(m) if m.epoch < i16::MAX - 1 => None,
            _ => Some(self.allocate_producer_id().await?),
        };
        let fresh_id = || fresh.ok_or(E::UnknownServerError.code());
        let next = match txn::init(current.as_ref(), fresh_id, timeout_ms, expected, now_ms())? {
            Init::Ready(m) => {
                self.groups.txn_put(id, m.clone()).await?;
                m
            }
            Init::AbortFirst(m) => {
                self.groups.txn_put(id, m.clone()).await?;
                self.finish(id, &m, coordinator_epoch).await?
            }
        };
        Ok((next.producer_id, next.epoch))
    }

    /// The state of a transactional id coordinated here, with any prepared transaction
    /// finished first.
    async fn settled_txn(&self, id: &str) -> Result<(Option<TxnMeta>, i32), i16> {
        let (current, coordinator_epoch) = self.groups.txn_get(id)?;
        match current {
            Some(m) if m.phase.preparing() => {
                let done = self.finish(id, &m, coordinator_epoch).await?;
                Ok((Some(done), coordinator_epoch))
            }
            other => Ok((other, coordinator_epoch)),
        }
    }

    /// Writes a prepared transaction's markers and stores its completion.
    async fn finish(&self, id: &str, m: &TxnMeta, coordinator_epoch: i32) -> Result<TxnMeta, i16> {
        let markers = Markers {
            producer_id: m.producer_id,
            producer_epoch: m.epoch,
            commit: m.phase == Phase::PrepareCommit,
            coordinator_epoch,
            partitions: m.partitions.iter().cloned().collect(),
        };
        self.send_markers(id, &markers).await?;
        let done = txn::complete(m, now_ms());
        self.groups.txn_put(id, done.clone()).await?;
        let kind = if markers.commit { "commit" } else { "abort" };
        self.metrics.transactions.with_label_values(&[kind]).inc();
        Ok(done)
    }

    /// Writes markers on every partition through its current leader, retrying until all
    /// are written or [`MARKER_TIMEOUT`] passes (then CONCURRENT_TRANSACTIONS: the client
    /// retries and the timer keeps finishing it). Partitions of deleted topics are done.
    /// Stops with NOT_COORDINATOR once this broker no longer coordinates `id` at the
    /// markers' coordinator epoch: the new coordinator finishes the transaction, and
    /// partitions refuse this one's late markers.
    async fn send_markers(&self, id: &str, markers: &Markers) -> Result<(), i16> {
        let mut left: BTreeSet<(String, i32)> = markers.partitions.iter().cloned().collect();
        let deadline = tokio::time::Instant::now() + MARKER_TIMEOUT;
        loop {
            if self.groups.txn_get(id).map(|(_, epoch)| epoch) != Ok(markers.coordinator_epoch) {
                return Err(E::NotCoordinator.code());
            }
            let image = self.cluster.image();
            let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
            left.retain(|(t, p)| {
                let Some(state) = image.topics.get(t).map(|topic| {
                    usize::try_from(*p)
                        .ok()
                        .and_then(|i| topic.partitions.get(i))
                }) else {
                    return false;
                };
                if let Some(state) = state {
                    by_leader
                        .entry(state.leader)
                        .or_default()
                        .push((t.clone(), *p));
                }
                true
            });
            for (leader, partitions) in by_leader {
                let req = Markers {
                    partitions,
                    ..markers.clone()
                };
                let results = if leader == self.config.node_id {
                    self.write_markers_here(&req).await
                } else {
                    let Some(addr) = image.brokers.get(&leader).map(|b| b.rpc.clone()) else {
                        continue;
                    };
                    self.write_markers_at(&addr, &req).await
                };
                for (t, p, code) in results {
                    if code == E::TransactionCoordinatorFenced.code() {
                        return Err(E::NotCoordinator.code());
                    }
                    if code == 0 {
                        left.remove(&(t, p));
                    }
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(producer_id = markers.producer_id, partitions = ?left, "transaction markers not written in time; retrying later");
                return Err(E::ConcurrentTransactions.code());
            }
            tokio::time::sleep(MARKER_RETRY).await;
        }
    }

    /// Markers through another broker's `WriteMarkers` RPC (no answer: nothing written).
    async fn write_markers_at(&self, addr: &str, req: &Markers) -> Vec<(String, i32, i16)> {
        self.peer_call(addr, req, MARKER_TIMEOUT, |mut c, env| async move {
            c.write_markers(env).await
        })
        .await
        .unwrap_or_default()
    }

    /// Calls one of another broker's JSON-payload `Replication` RPCs; `None` when it did
    /// not answer in time or its answer does not decode.
    pub(super) async fn peer_call<Q, A, F, Fut>(
        &self,
        addr: &str,
        req: &Q,
        timeout: Duration,
        call: F,
    ) -> Option<A>
    where
        Q: Serialize,
        A: serde::de::DeserializeOwned,
        F: FnOnce(ReplicationClient<Channel>, crate::rpc::Envelope) -> Fut,
        Fut: std::future::Future<
            Output = Result<tonic::Response<crate::rpc::Envelope>, tonic::Status>,
        >,
    {
        let payload = serde_json::to_vec(req).ok()?;
        let client = self.cluster.peers.replication(addr).ok()?;
        let env = crate::rpc::Envelope {
            cluster_id: self.cluster.cluster_id.get(),
            payload: payload.into(),
        };
        let reply = tokio::time::timeout(timeout, call(client, env))
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice(&reply.into_inner().payload).ok()
    }

    /// Writes markers on partitions this broker leads, each answered once its in-sync
    /// replicas have it; a marker on an offsets partition applies or drops the offsets
    /// the transaction committed there.
    pub async fn write_markers_here(&self, req: &Markers) -> Vec<(String, i32, i16)> {
        let deadline = tokio::time::Instant::now() + MARKER_TIMEOUT;
        let sync = self.config.fsync_policy != crate::config::FsyncPolicy::Never;
        let raw = crate::protocol::marker::marker_batch(
            req.producer_id,
            req.producer_epoch,
            req.commit,
            req.coordinator_epoch,
            now_ms(),
        );
        let Ok(header) = batch::validate_produced(&raw) else {
            return Vec::new();
        };
        let mut waits = Vec::new();
        for (t, p) in &req.partitions {
            let Some(topic) = self.catalog.get(t) else {
                waits.push((t.clone(), *p, Err(E::UnknownTopicOrPartition.code())));
                continue;
            };
            let Some(part) = topic.partition(*p).filter(|part| self.leads(part)) else {
                waits.push((t.clone(), *p, Err(E::NotLeaderOrFollower.code())));
                continue;
            };
            let cfg = topic.config();
            let min_isr = cfg.min_insync_replicas.max(1) as usize;
            let epoch = part.leader_epoch();
            let outcome = part.append(&raw, &header, &cfg, sync);
            let wait = async move {
                part.settle_append(outcome, 0, epoch, Some(min_isr), deadline)
                    .await
                    .map_err(|e| super::produce::log_error_code(&e))
            };
            waits.push((t.clone(), *p, Ok(tokio::spawn(wait))));
        }
        let mut out = Vec::with_capacity(waits.len());
        for (t, p, w) in waits {
            let code = match w {
                Ok(handle) => match handle.await {
                    Ok(Ok(_)) => {
                        if t == OFFSETS_TOPIC {
                            self.groups
                                .complete_txn(p as u32, req.producer_id, req.commit);
                        }
                        0
                    }
                    Ok(Err(code)) => code,
                    Err(_) => E::UnknownServerError.code(),
                },
                Err(code) => code,
            };
            out.push((t, p, code));
        }
        out
    }

    /// AddPartitionsToTxn (v0–v3: one transaction per request).
    pub(super) async fn add_partitions_to_txn(
        &self,
        req: AddPartitionsToTxnRequest,
        who: &Session,
    ) -> AddPartitionsToTxnResponse {
        let id = req.v3_and_below_transactional_id.0.to_string();
        let txn_allowed = self.authorize(who, op::WRITE, resource::TRANSACTIONAL_ID, &id);
        let wanted: Vec<(String, i32)> = req
            .v3_and_below_topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
            .collect();
        let image = self.cluster.image();
        // Partitions refused on their own (not authorized, unknown) fail the others.
        let refused: Vec<Option<i16>> = wanted
            .iter()
            .map(|(t, p)| {
                if !txn_allowed {
                    Some(E::TransactionalIdAuthorizationFailed.code())
                } else if !self.authorize(who, op::WRITE, resource::TOPIC, t) {
                    Some(E::TopicAuthorizationFailed.code())
                } else if image.topics.get(t).is_none_or(|topic| {
                    usize::try_from(*p).map_or(true, |i| i >= topic.partitions.len())
                }) {
                    Some(E::UnknownTopicOrPartition.code())
                } else {
                    None
                }
            })
            .collect();
        let code = if refused.iter().any(Option::is_some) {
            Err(E::OperationNotAttempted.code())
        } else {
            let pid = req.v3_and_below_producer_id.0;
            let epoch = req.v3_and_below_producer_epoch;
            self.add_to_txn(&id, pid, epoch, wanted.clone()).await
        };
        let mut by_topic: BTreeMap<String, Vec<AddPartitionsToTxnPartitionResult>> =
            BTreeMap::new();
        for ((t, p), refused) in wanted.into_iter().zip(refused) {
            let c = match (&code, refused) {
                (_, Some(c)) => c,
                (Ok(()), None) => 0,
                (Err(c), None) => *c,
            };
            self.count_error(ApiKey::AddPartitionsToTxn, c);
            by_topic.entry(t).or_default().push(
                AddPartitionsToTxnPartitionResult::default()
                    .with_partition_index(p)
                    .with_partition_error_code(c),
            );
        }
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
            by_topic
                .into_iter()
                .map(|(t, parts)| {
                    AddPartitionsToTxnTopicResult::default()
                        .with_name(TopicName(super::str_bytes(&t)))
                        .with_results_by_partition(parts)
                })
                .collect(),
        )
    }

    /// Adds partitions to a producer's transaction.
    async fn add_to_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), i16> {
        let lock = self.txn_lock(id);
        let _g = lock.lock().await;
        let (current, _) = self.settled_txn(id).await?;
        let m = current.ok_or(E::InvalidProducerIdMapping.code())?;
        if m.phase == Phase::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)) {
            return txn::add_partitions(&m, producer_id, epoch, [], 0).map(|_| ());
        }
        let next = txn::add_partitions(&m, producer_id, epoch, partitions, now_ms())?;
        self.groups.txn_put(id, next).await
    }

    /// AddOffsetsToTxn: the group's offsets partition joins the transaction.
    pub(super) async fn add_offsets_to_txn(
        &self,
        req: AddOffsetsToTxnRequest,
    ) -> AddOffsetsToTxnResponse {
        let group = req.group_id.0.as_str();
        let partition = (OFFSETS_TOPIC.to_string(), offsets_partition(group) as i32);
        let code = self
            .add_to_txn(
                req.transactional_id.0.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                vec![partition],
            )
            .await
            .err()
            .unwrap_or(0);
        self.count_error(ApiKey::AddOffsetsToTxn, code);
        AddOffsetsToTxnResponse::default().with_error_code(code)
    }

    /// EndTxn: commit or abort, markers written before the answer.
    pub(super) async fn end_txn(&self, req: EndTxnRequest) -> EndTxnResponse {
        let id = req.transactional_id.0.to_string();
        let code = async {
            let lock = self.txn_lock(&id);
            let _g = lock.lock().await;
            let (current, coordinator_epoch) = self.settled_txn(&id).await?;
            let m = current.ok_or(E::InvalidProducerIdMapping.code())?;
            let Some(prepared) = txn::end(
                &m,
                req.producer_id.0,
                req.producer_epoch,
                req.committed,
                now_ms(),
            )?
            else {
                return Ok(());
            };
            self.groups.txn_put(&id, prepared.clone()).await?;
            self.finish(&id, &prepared, coordinator_epoch)
                .await
                .map(|_| ())
        }
        .await
        .err()
        .unwrap_or(0);
        self.count_error(ApiKey::EndTxn, code);
        EndTxnResponse::default().with_error_code(code)
    }

    /// TxnOffsetCommit: offsets in a transaction, visible once it commits.
    pub(super) async fn txn_offset_commit(
        &self,
        req: TxnOffsetCommitRequest,
        who: &Session,
    ) -> TxnOffsetCommitResponse {
        let now = now_ms();
        let commits: Vec<(String, i32, Committed)> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| {
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p
                                .committed_metadata
                                .as_ref()
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                            commit_ms: now,
                        },
                    )
                })
            })
            .collect();
        let member = (req.generation_id >= 0 && !req.member_id.is_empty()).then(|| {
            (
                req.member_id.as_str(),
                req.group_instance_id.as_deref(),
                req.generation_id,
            )
        });
        let too_long = commits
            .iter()
            .any(|(_, _, c)| c.metadata.len() > crate::group::MAX_METADATA_BYTES);
        let code = if !self.authorize(
            who,
            op::WRITE,
            resource::TRANSACTIONAL_ID,
            req.transactional_id.0.as_str(),
        ) {
            E::TransactionalIdAuthorizationFailed.code()
        } else if !self.authorize(who, op::READ, resource::GROUP, req.group_id.0.as_str()) {
            E::GroupAuthorizationFailed.code()
        } else if req
            .topics
            .iter()
            .any(|t| !self.authorize(who, op::READ, resource::TOPIC, t.name.0.as_str()))
        {
            E::TopicAuthorizationFailed.code()
        } else if too_long {
            E::OffsetMetadataTooLarge.code()
        } else {
            self.groups
                .txn_commit_offsets(
                    req.group_id.0.as_str(),
                    (req.producer_id.0, req.producer_epoch),
                    member,
                    commits,
                )
                .await
                .err()
                .unwrap_or(0)
        };
        self.count_error(ApiKey::TxnOffsetCommit, code);
        TxnOffsetCommitResponse::default().with_topics(
            req.topics
                .iter()
                .map(|t| {
                    TxnOffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    TxnOffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    /// Timer work: aborts transactions past their timeout (bumping the epoch, which fences
    /// the producer) and finishes prepared ones nobody is working on.
    pub async fn txn_tick(&self) {
        let now = now_ms();
        for (id, m) in self.groups.txn_list() {
            let due = m.phase.preparing() || txn::expire(&m, now).is_some();
            if !due {
                continue;
            }
            let lock = self.txn_lock(&id);
            let Ok(_g) = lock.try_lock() else { continue };
            let Ok((Some(m), coordinator_epoch)) = self.groups.txn_get(&id) else {
                continue;
            };
            let prepared = match txn::expire(&m, now_ms()) {
                Some(abort) => {
                    tracing::info!(transactional_id = %id, producer_id = m.producer_id, "transaction timed out: aborting");
                    if self.groups.txn_put(&id, abort.clone()).await.is_err() {
                        continue;
                    }
                    abort
                }
                None if m.phase.preparing() => m,
                None => continue,
            };
            let _ = self.finish(&id, &prepared, coordinator_epoch).await;
        }
    }

    /// Open transactions coordinated here, by phase (for metrics).
    pub fn txn_phases(&self) -> HashMap<&'static str, i64> {
        let mut out = HashMap::new();
        for (_, m) in self.groups.txn_list() {
            *out.entry(m.phase.name()).or_default() += 1;
        }
        out
    }
}
