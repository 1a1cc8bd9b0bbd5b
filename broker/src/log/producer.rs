//! Idempotent producer state per partition: epoch, last sequence and the last five batches.

use std::collections::VecDeque;

/// Batches remembered per producer for duplicate detection (Kafka keeps five).
pub const RETAINED_BATCHES: usize = 5;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSeq {
    /// First sequence number.
    pub first_seq: i32,
    /// Last sequence number.
    pub last_seq: i32,
    /// Offset assigned to the first record.
    pub base_offset: i64,
}

/// State of one producer id on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    /// Current epoch.
    pub epoch: i16,
    /// Most recent batches, oldest first.
    pub batches: VecDeque<BatchSeq>,
    /// Wall-clock ms of the last append (for expiry).
    pub last_update_ms: i64,
    /// Epoch of the transaction coordinator whose marker came last (-1: none): markers
    /// from an older coordinator are refused.
    pub coordinator_epoch: i32,
}

/// Outcome of checking a batch against the producer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// New batch in sequence: append it.
    Append,
    /// Retry of a batch already written at this base offset.
    Duplicate(i64),
    /// Epoch older than the current one.
    Fenced,
    /// Sequence gap.
    OutOfOrder,
    /// A transaction marker from an older transaction coordinator than the last one.
    CoordinatorFenced,
}

impl ProducerState {
    /// Checks whether a batch with this epoch and sequence range may be appended.
    pub fn check(
        current: Option<&ProducerState>,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> SeqCheck {
        let Some(state) = current else {
            // Unknown producer (new, or its state expired): accept and start tracking.
            return SeqCheck::Append;
        };
        if epoch < state.epoch {
            return SeqCheck::Fenced;
        }
        if epoch > state.epoch {
            return if first_seq == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::OutOfOrder
            };
        }
        if let Some(b) = state
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return SeqCheck::Duplicate(b.base_offset);
        }
        let expected = match state.batches.back() {
            Some(last) if last.last_seq == i32::MAX => 0,
            Some(last) => last.last_seq + 1,
            None => return SeqCheck::Append,
        };
        if first_seq == expected {
            SeqCheck::Append
        } else {
            SeqCheck::OutOfOrder
        }
    }

    /// A producer's state at a new epoch: no sequence history, the coordinator epoch kept.
    fn new_epoch(previous: Option<ProducerState>, epoch: i16, now_ms: i64) -> ProducerState {
        ProducerState {
            epoch,
            batches: VecDeque::new(),
            last_update_ms: now_ms,
            coordinator_epoch: previous.map_or(-1, |s| s.coordinator_epoch),
        }
    }

    /// Checks a batch without sequence numbers (a transaction marker, with its
    /// coordinator's epoch, or a coordinator's offsets batch): it must not come from a
    /// fenced producer epoch, nor a marker from a coordinator that lost its partition.
    pub fn check_unsequenced(
        current: Option<&ProducerState>,
        epoch: i16,
        coordinator_epoch: Option<i32>,
    ) -> SeqCheck {
        match current {
            Some(s) if epoch < s.epoch => SeqCheck::Fenced,
            Some(s) if coordinator_epoch.is_some_and(|c| c < s.coordinator_epoch) => {
                SeqCheck::CoordinatorFenced
            }
            _ => SeqCheck::Append,
        }
    }

    /// Records a batch without sequence numbers: it may only move the epoch forward
    /// (clearing the sequence history), and a marker's coordinator epoch is remembered.
    pub fn record_unsequenced(
        current: Option<ProducerState>,
        epoch: i16,
        coordinator_epoch: Option<i32>,
        now_ms: i64,
    ) -> ProducerState {
        let mut state = match current {
            Some(s) if s.epoch >= epoch => s,
            other => ProducerState::new_epoch(other, epoch, now_ms),
        };
        if let Some(c) = coordinator_epoch {
            state.coordinator_epoch = state.coordinator_epoch.max(c);
        }
        state
    }

    /// Records an appended batch (resetting the history on an epoch bump).
    pub fn record(
        current: Option<ProducerState>,
        epoch: i16,
        batch: BatchSeq,
        now_ms: i64,
    ) -> ProducerState {
        let mut state = match current {
            Some(s) if s.epoch == epoch => s,
            other => ProducerState::new_epoch(other, epoch, now_ms),
        };
        if state.batches.len() == RETAINED_BATCHES {
            state.batches.pop_front();
        }
        state.batches.push_back(batch);
        state.last_update_ms = now_ms;
        state
    }

    /// Compact binary encoding for the meta column family (the coordinator epoch last,
    /// so states written before it existed still decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(15 + self.batches.len() * 16);
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.last_update_ms.to_be_bytes());
        b.push(self.batches.len() as u8);
        for x in &self.batches {
            b.extend_from_slice(&x.first_seq.to_be_bytes());
            b.extend_from_slice(&x.last_seq.to_be_bytes());
            b.extend_from_slice(&x.base_offset.to_be_bytes());
        }
        b.extend_from_slice(&self.coordinator_epoch.to_be_bytes());
        b
    }

    /// Decodes [`ProducerState::encode`] output.
    pub fn decode(b: &[u8]) -> Option<ProducerState> {
        let epoch = i16::from_be_bytes(b.get(0..2)?.try_into().ok()?);
        let last_update_ms = i64::from_be_bytes(b.get(2..10)?.try_into().ok()?);
        let n = *b.get(10)? as usize;
        let mut batches = VecDeque::with_capacity(n);
        for i in 0..n {
            let at = 11 + i * 16;
            batches.push_back(BatchSeq {
                first_seq: i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?),
                last_seq: i32::from_be_bytes(b.get(at + 4..at + 8)?.try_into().ok()?),
                base_offset: i64::from_be_bytes(b.get(at + 8..at + 16)?.try_into().ok()?),
            });
        }
        let at = 11 + n * 16;
        let coordinator_epoch = b
            .get(at..at + 4)
            .and_then(|e| e.try_into().ok())
            .map_or(-1, i32::from_be_bytes);
        Some(ProducerState {
            epoch,
            batches,
            last_update_ms,
            coordinator_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(batches: &[(i32, i32, i64)]) -> ProducerState {
        let mut s = None;
        for &(f, l, o) in batches {
            s = Some(ProducerState::record(
                s,
                0,
                BatchSeq {
                    first_seq: f,
                    last_seq: l,
                    base_offset: o,
                },
                0,
            ));
        }
        s.expect("at least one batch")
    }

    #[test]
    fn in_order_duplicate_gap_and_fencing() {
        let s = after(&[(0, 4, 0), (5, 9, 5)]);
        assert_eq!(ProducerState::check(Some(&s), 0, 10, 12), SeqCheck::Append);
        assert_eq!(
            ProducerState::check(Some(&s), 0, 5, 9),
            SeqCheck::Duplicate(5)
        );
        assert_eq!(
            ProducerState::check(Some(&s), 0, 0, 4),
            SeqCheck::Duplicate(0)
        );
        assert_eq!(
            ProducerState::check(Some(&s), 0, 11, 12),
            SeqCheck::OutOfOrder
        );
        assert_eq!(ProducerState::check(Some(&s), 1, 0, 3), SeqCheck::Append);
        assert_eq!(
            ProducerState::check(Some(&s), 1, 7, 8),
            SeqCheck::OutOfOrder
        );
        let bumped = ProducerState::record(
            Some(s),
            2,
            BatchSeq {
                first_seq: 0,
                last_seq: 0,
                base_offset: 20,
            },
            0,
        );
        assert_eq!(
            ProducerState::check(Some(&bumped), 1, 0, 0),
            SeqCheck::Fenced
        );
        assert_eq!(bumped.batches.len(), 1);
    }

    #[test]
    fn keeps_only_five_batches_and_round_trips() {
        let s = after(&[
            (0, 0, 0),
            (1, 1, 1),
            (2, 2, 2),
            (3, 3, 3),
            (4, 4, 4),
            (5, 5, 5),
        ]);
        assert_eq!(s.batches.len(), RETAINED_BATCHES);
        assert_eq!(
            ProducerState::check(Some(&s), 0, 0, 0),
            SeqCheck::OutOfOrder
        );
        assert_eq!(ProducerState::decode(&s.encode()), Some(s));
        assert_eq!(ProducerState::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn markers_fence_older_producer_epochs_and_older_coordinators() {
        let s = ProducerState::record_unsequenced(None, 3, Some(5), 0);
        assert_eq!(
            ProducerState::check_unsequenced(Some(&s), 2, Some(9)),
            SeqCheck::Fenced
        );
        assert_eq!(
            ProducerState::check_unsequenced(Some(&s), 3, Some(4)),
            SeqCheck::CoordinatorFenced
        );
        assert_eq!(
            ProducerState::check_unsequenced(Some(&s), 3, Some(5)),
            SeqCheck::Append
        );
        assert_eq!(
            ProducerState::check_unsequenced(Some(&s), 3, None),
            SeqCheck::Append
        );
        // A producer epoch bump keeps the coordinator epoch; an offsets batch leaves it.
        let bumped = ProducerState::record_unsequenced(Some(s.clone()), 4, None, 0);
        assert_eq!((bumped.epoch, bumped.coordinator_epoch), (4, 5));
        let newer = ProducerState::record_unsequenced(Some(bumped), 4, Some(7), 0);
        assert_eq!(newer.coordinator_epoch, 7);
        assert_eq!(ProducerState::decode(&newer.encode()), Some(newer.clone()));
        // States stored before the coordinator epoch existed decode with none.
        let old = &newer.encode()[..11];
        assert_eq!(
            ProducerState::decode(old).map(|s| s.coordinator_epoch),
            Some(-1)
        );
    }

    #[test]
    fn sequence_wraps_to_zero() {
        let s = after(&[(i32::MAX - 1, i32::MAX, 0)]);
        assert_eq!(ProducerState::check(Some(&s), 0, 0, 3), SeqCheck::Append);
    }
}
