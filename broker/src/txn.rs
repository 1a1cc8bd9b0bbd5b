//! The transaction coordinator's state machine (KIP-98), pure: one `transactional.id`'s
//! producer id, epoch, phase and partitions, and how each request moves them. The
//! coordinator persists every state in its offsets partition and writes the markers.

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError as E;
use serde::{Deserialize, Serialize};

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// No transaction open.
    Empty,
    /// Partitions added: records may be written.
    Ongoing,
    /// EndTxn(commit) accepted: commit markers are being written.
    PrepareCommit,
    /// Abort decided (EndTxn, a timeout or a new producer session): abort markers are being
    /// written.
    PrepareAbort,
    /// Committed on every partition.
    CompleteCommit,
    /// Aborted on every partition.
    CompleteAbort,
}

impl Phase {
    /// Kafka's name (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::Ongoing => "Ongoing",
            Phase::PrepareCommit => "PrepareCommit",
            Phase::PrepareAbort => "PrepareAbort",
            Phase::CompleteCommit => "CompleteCommit",
            Phase::CompleteAbort => "CompleteAbort",
        }
    }

    /// Markers are being written.
    pub fn preparing(self) -> bool {
        matches!(self, Phase::PrepareCommit | Phase::PrepareAbort)
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    /// Producer id.
    pub producer_id: i64,
    /// Current epoch: older ones are fenced.
    pub epoch: i16,
    /// `transaction.timeout.ms`.
    pub timeout_ms: i32,
    /// Phase.
    pub phase: Phase,
    /// Partitions of the transaction (topic, partition).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the transaction started (ms), -1 when none is open.
    pub started_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
}

/// Result of a request: the next state, or a Kafka error code.
pub type Step = Result<TxnMeta, i16>;

/// What InitProducerId does with a transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Store this state and answer with its id and epoch.
    Ready(TxnMeta),
    /// A transaction is open: store this PrepareAbort (epoch already bumped, fencing the
    /// old producer), write its abort markers, complete it, then answer.
    AbortFirst(TxnMeta),
}

/// InitProducerId: a new id for a new transactional id, else the same id with the next
/// epoch (a new id once the epoch is exhausted). `expected` is the id and epoch the
/// producer already holds (KIP-360), `(-1, -1)` for none.
pub fn init(
    current: Option<&TxnMeta>,
    fresh_id: impl FnOnce() -> Result<i64, i16>,
    timeout_ms: i32,
    expected: (i64, i16),
    now: i64,
) -> Result<Init, i16> {
    let fresh = |id: i64| TxnMeta {
        producer_id: id,
        epoch: 0,
        timeout_ms,
        phase: Phase::Empty,
        partitions: BTreeSet::new(),
        started_ms: -1,
        updated_ms: now,
    };
    let Some(m) = current else {
        return Ok(Init::Ready(fresh(fresh_id()?)));
    };
    if expected.0 >= 0 && (expected.0 != m.producer_id || expected.1 != m.epoch) {
        return Err(E::ProducerFenced.code());
    }
    if m.phase.preparing() {
        return Err(E::ConcurrentTransactions.code());
    }
    if m.epoch >= i16::MAX - 1 {
        return Ok(Init::Ready(fresh(fresh_id()?)));
    }
    let bumped = TxnMeta {
        epoch: m.epoch + 1,
        timeout_ms,
        updated_ms: now,
        ..m.clone()
    };
    if m.phase == Phase::Ongoing {
        return Ok(Init::AbortFirst(TxnMeta {
            phase: Phase::PrepareAbort,
            ..bumped
        }));
    }
    Ok(Init::Ready(TxnMeta {
        phase: Phase::Empty,
        partitions: BTreeSet::new(),
        started_ms: -1,
        ..bumped
    }))
}

/// Checks that a request comes from the current producer session.
fn check_producer(m: &TxnMeta, producer_id: i64, epoch: i16) -> Result<(), i16> {
    if producer_id != m.producer_id {
        return Err(E::InvalidProducerIdMapping.code());
    }
    if epoch < m.epoch {
        return Err(E::ProducerFenced.code());
    }
    if epoch > m.epoch {
        return Err(E::InvalidProducerEpoch.code());
    }
    Ok(())
}

/// AddPartitionsToTxn / AddOffsetsToTxn: the partitions join the transaction (which opens
/// if it was not).
pub fn add_partitions(
    m: &TxnMeta,
    producer_id: i64,
    epoch: i16,
    partitions: impl IntoIterator<Item = (String, i32)>,
    now: i64,
) -> Step {
    check_producer(m, producer_id, epoch)?;
    if m.phase.preparing() {
        return Err(E::ConcurrentTransactions.code());
    }
    let mut next = m.clone();
    if m.phase != Phase::Ongoing {
        next.partitions.clear();
        next.started_ms = now;
    }
    next.partitions.extend(partitions);
    next.phase = Phase::Ongoing;
    next.updated_ms = now;
    Ok(next)
}

/// KIP-890 verification: may this producer write to `partition` in its open transaction?
/// A write that its transaction did not add, or that arrives after the transaction ended,
/// is refused with INVALID_TXN_STATE.
pub fn verify(
    m: &TxnMeta,
    producer_id: i64,
    epoch: i16,
    partition: &(String, i32),
) -> Result<(), i16> {
    check_producer(m, producer_id, epoch)?;
    if m.phase.preparing() {
        return Err(E::ConcurrentTransactions.code());
    }
    if m.phase == Phase::Ongoing && m.partitions.contains(partition) {
        Ok(())
    } else {
        Err(E::InvalidTxnState.code())
    }
}

/// EndTxn: the transaction prepares to commit or abort. A retry of an end already done
/// answers the same; ending a transaction that never started is refused.
pub fn end(
    m: &TxnMeta,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now: i64,
) -> Result<Option<TxnMeta>, i16> {
    check_producer(m, producer_id, epoch)?;
    match (m.phase, commit) {
        (Phase::Ongoing, _) => Ok(Some(TxnMeta {
            phase: if commit {
                Phase::PrepareCommit
            } else {
                Phase::PrepareAbort
            },
            updated_ms: now,
            ..m.clone()
        })),
        (Phase::CompleteCommit, true) | (Phase::CompleteAbort, false) => Ok(None),
        (Phase::PrepareCommit, true) | (Phase::PrepareAbort, false) => {
            Err(E::ConcurrentTransactions.code())
        }
        // librdkafka and the Java client abort with nothing added: nothing to do.
        (Phase::Empty, false) => Ok(None),
        _ => Err(E::InvalidTxnState.code()),
    }
}

/// The state once every marker of a prepared transaction is written.
pub fn complete(m: &TxnMeta, now: i64) -> TxnMeta {
    TxnMeta {
        phase: if m.phase == Phase::PrepareCommit {
            Phase::CompleteCommit
        } else {
            Phase::CompleteAbort
        },
        partitions: BTreeSet::new(),
        started_ms: -1,
        updated_ms: now,
        ..m.clone()
    }
}

/// An open transaction past its timeout: abort it with the epoch bumped, so the producer
/// that let it expire is fenced.
pub fn expire(m: &TxnMeta, now: i64) -> Option<TxnMeta> {
    let late = m.phase == Phase::Ongoing && now - m.started_ms > i64::from(m.timeout_ms);
    (late && m.epoch < i16::MAX - 1).then(|| TxnMeta {
        phase: Phase::PrepareAbort,
        epoch: m.epoch + 1,
        updated_ms: now,
        ..m.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(r: Result<Init, i16>) -> TxnMeta {
        match r {
            Ok(Init::Ready(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_transaction_from_init_to_commit() {
        let m = ready(init(None, || Ok(7), 60_000, (-1, -1), 0));
        assert_eq!((m.producer_id, m.epoch, m.phase), (7, 0, Phase::Empty));
        let m2 = ready(init(Some(&m), || unreachable!(), 60_000, (-1, -1), 1));
        assert_eq!((m2.producer_id, m2.epoch), (7, 1), "same id, next epoch");
        let on = add_partitions(&m2, 7, 1, [("t".to_string(), 0)], 5).unwrap();
        assert_eq!((on.phase, on.started_ms), (Phase::Ongoing, 5));
        let on = add_partitions(&on, 7, 1, [("t".to_string(), 1)], 6).unwrap();
        assert_eq!((on.partitions.len(), on.started_ms), (2, 5));
        let prep = end(&on, 7, 1, true, 7).unwrap().unwrap();
        assert_eq!(prep.phase, Phase::PrepareCommit);
        assert_eq!(
            add_partitions(&prep, 7, 1, [], 8),
            Err(E::ConcurrentTransactions.code())
        );
        let done = complete(&prep, 9);
        assert_eq!(
            (done.phase, done.partitions.len()),
            (Phase::CompleteCommit, 0)
        );
        assert_eq!(end(&done, 7, 1, true, 10), Ok(None), "a retried commit");
        assert_eq!(end(&done, 7, 1, false, 10), Err(E::InvalidTxnState.code()));
    }

    #[test]
    fn only_partitions_of_the_open_transaction_are_verified() {
        let m = ready(init(None, || Ok(5), 60_000, (-1, -1), 0));
        let t0 = ("t".to_string(), 0);
        let t1 = ("t".to_string(), 1);
        assert_eq!(
            verify(&m, 5, 0, &t0),
            Err(E::InvalidTxnState.code()),
            "none open"
        );
        let on = add_partitions(&m, 5, 0, [t0.clone()], 1).unwrap();
        assert_eq!(verify(&on, 5, 0, &t0), Ok(()));
        assert_eq!(
            verify(&on, 5, 0, &t1),
            Err(E::InvalidTxnState.code()),
            "not added"
        );
        assert_eq!(
            verify(&on, 6, 0, &t0),
            Err(E::InvalidProducerIdMapping.code())
        );
        let prep = end(&on, 5, 0, false, 2).unwrap().unwrap();
        assert_eq!(
            verify(&prep, 5, 0, &t0),
            Err(E::ConcurrentTransactions.code())
        );
        let done = complete(&prep, 3);
        assert_eq!(
            verify(&done, 5, 0, &t0),
            Err(E::InvalidTxnState.code()),
            "ended"
        );
        let next = ready(init(Some(&done), || unreachable!(), 60_000, (-1, -1), 4));
        assert_eq!(
            verify(&next, 5, 0, &t0),
            Err(E::ProducerFenced.code()),
            "a zombie"
        );
    }

    #[test]
    fn zombies_are_fenced_and_open_transactions_abort() {
        let m = ready(init(None, || Ok(3), 1_000, (-1, -1), 0));
        let on = add_partitions(&m, 3, 0, [("t".to_string(), 0)], 1).unwrap();
        // A new session while a transaction is open: abort it at the next epoch first.
        let Ok(Init::AbortFirst(abort)) = init(Some(&on), || unreachable!(), 1_000, (-1, -1), 2)
        else {
            panic!()
        };
        assert_eq!((abort.epoch, abort.phase), (1, Phase::PrepareAbort));
        assert_eq!(abort.partitions.len(), 1);
        let after = complete(&abort, 3);
        // The old producer (epoch 0) is fenced; a stranger id is refused.
        assert_eq!(
            add_partitions(&after, 3, 0, [], 4),
            Err(E::ProducerFenced.code())
        );
        assert_eq!(
            add_partitions(&after, 4, 1, [], 4),
            Err(E::InvalidProducerIdMapping.code())
        );
        assert_eq!(
            init(Some(&after), || unreachable!(), 1_000, (3, 0), 5),
            Err(E::ProducerFenced.code()),
            "KIP-360: a producer holding an old epoch"
        );
        // Timeouts: only an open transaction past its timeout expires.
        let on = add_partitions(&after, 3, 1, [("t".to_string(), 0)], 10).unwrap();
        assert_eq!(expire(&on, 1_000), None);
        let x = expire(&on, 1_011).unwrap();
        assert_eq!((x.epoch, x.phase), (2, Phase::PrepareAbort));
        assert_eq!(
            end(&on, 3, 1, false, 11).unwrap().unwrap().phase,
            Phase::PrepareAbort
        );
        assert_eq!(end(&m, 3, 0, false, 1), Ok(None), "abort with nothing open");
        assert_eq!(end(&m, 3, 0, true, 1), Err(E::InvalidTxnState.code()));
    }
}
