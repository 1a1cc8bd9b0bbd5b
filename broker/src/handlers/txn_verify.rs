//! KIP-890's defence against hanging transactions. Before a transactional batch opens its
//! producer's transaction on a partition, the partition's leader asks the producer's
//! transaction coordinator whether the partition is in that transaction. A late write
//! (a retry that arrives after its transaction was aborted) or a stray one is refused
//! with INVALID_TXN_STATE; otherwise it would open a transaction no marker ever closes,
//! and hold the partition's last stable offset, and every `read_committed` consumer,
//! for good.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::ProduceRequest;
use serde::{Deserialize, Serialize};

use super::Broker;
use crate::group::offsets::offsets_partition;
use crate::group::OFFSETS_TOPIC;
use crate::log::Partition;
use crate::protocol::batch;
use crate::txn;

/// How long a leader waits for the coordinator's answer (the produce then fails with a
/// retriable error).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Partitions a producer is about to write to in its transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verify {
    /// The producer's transactional id (names its coordinator).
    pub transactional_id: String,
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// (topic, partition).
    pub partitions: Vec<(String, i32)>,
}

/// Per partition of a produce request that had to be verified: the guard its append
/// presents, or the error code it is answered with.
pub(super) type Guards = HashMap<(String, i32), Result<u64, i16>>;

impl Broker {
    /// Verifies the transactional batches of a produce request that would open their
    /// producer's transaction on a partition led here.
    pub(super) async fn verify_txn_writes(&self, req: &ProduceRequest) -> Guards {
        let mut guards = Guards::new();
        if !self.config.transaction_partition_verification_enable {
            return guards;
        }
        type Ask = (String, i32, Arc<Partition>, u64);
        let mut asks: BTreeMap<(i64, i16), Vec<Ask>> = BTreeMap::new();
        for t in &req.topic_data {
            let Some(topic) = self.catalog.get(t.name.0.as_str()) else {
                continue;
            };
            for p in &t.partition_data {
                let Some(h) = p
                    .records
                    .as_deref()
                    .and_then(|r| batch::parse_header(r).ok())
                else {
                    continue;
                };
                if !h.is_transactional() || h.is_control() {
                    continue;
                }
                let Some(part) = topic.partition(p.index).filter(|part| self.leads(part)) else {
                    continue;
                };
                if let Some(guard) = part.begin_txn_verification(h.producer_id) {
                    let ask = (t.name.0.to_string(), p.index, part, guard);
                    asks.entry((h.producer_id, h.producer_epoch))
                        .or_default()
                        .push(ask);
                }
            }
        }
        let id = req.transactional_id.as_deref().filter(|id| !id.is_empty());
        for ((producer_id, producer_epoch), parts) in asks {
            let codes = match id {
                Some(id) => {
                    let v = Verify {
                        transactional_id: id.to_string(),
                        producer_id,
                        producer_epoch,
                        partitions: parts.iter().map(|(t, p, ..)| (t.clone(), *p)).collect(),
                    };
                    self.verify_txn(&v).await
                }
                // A transactional batch with no transactional id has no coordinator to ask.
                None => Vec::new(),
            };
            let mut codes = codes.into_iter();
            for (t, p, part, guard) in parts {
                let code = codes.next().unwrap_or(E::InvalidTxnState.code());
                let result = if code == 0 {
                    Ok(guard)
                } else {
                    part.end_txn_verification(producer_id, guard);
                    Err(produce_code(code))
                };
                guards.insert((t, p), result);
            }
        }
        guards
    }

    /// Asks the coordinator of `v.transactional_id`, here or through its broker's
    /// `VerifyTxn` RPC: a code per partition, in order.
    async fn verify_txn(&self, v: &Verify) -> Vec<i16> {
        let unavailable = vec![E::CoordinatorNotAvailable.code(); v.partitions.len()];
        let image = self.cluster.image();
        let Some(leader) = image
            .topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| {
                t.partitions
                    .get(offsets_partition(&v.transactional_id) as usize)
            })
            .map(|s| s.leader)
        else {
            return unavailable;
        };
        if leader == self.config.node_id {
            return self.verify_txn_here(v);
        }
        let Some(addr) = image.brokers.get(&leader).map(|b| b.rpc.clone()) else {
            return unavailable;
        };
        self.peer_call(&addr, v, VERIFY_TIMEOUT, |mut c, env| async move {
            c.verify_txn(env).await
        })
        .await
        .filter(|codes: &Vec<i16>| codes.len() == v.partitions.len())
        .unwrap_or(unavailable)
    }

    /// The coordinator's side: whether each partition is in the producer's open
    /// transaction.
    pub fn verify_txn_here(&self, v: &Verify) -> Vec<i16> {
        let each = |code: i16| vec![code; v.partitions.len()];
        match self.groups.txn_get(&v.transactional_id) {
            Err(code) => each(code),
            Ok((None, _)) => each(E::InvalidProducerIdMapping.code()),
            Ok((Some(m), _)) => v
                .partitions
                .iter()
                .map(|p| {
                    txn::verify(&m, v.producer_id, v.producer_epoch, p)
                        .err()
                        .unwrap_or(0)
                })
                .collect(),
        }
    }
}

/// The produce error for a coordinator's refusal. Produce keeps to errors every client
/// knows (as Kafka does since 3.6): a coordinator that is moving or busy becomes the
/// retriable NOT_ENOUGH_REPLICAS; a fenced producer INVALID_PRODUCER_EPOCH; the rest
/// INVALID_TXN_STATE, which aborts the transaction.
fn produce_code(coordinator: i16) -> i16 {
    let retriable = [
        E::CoordinatorNotAvailable,
        E::CoordinatorLoadInProgress,
        E::NotCoordinator,
        E::ConcurrentTransactions,
    ];
    if retriable.iter().any(|e| e.code() == coordinator) {
        E::NotEnoughReplicas.code()
    } else if coordinator == E::ProducerFenced.code()
        || coordinator == E::InvalidProducerEpoch.code()
    {
        E::InvalidProducerEpoch.code()
    } else {
        E::InvalidTxnState.code()
    }
}
