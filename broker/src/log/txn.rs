//! Transactions as one partition sees them: which producers have a transaction open
//! (from their first transactional batch to their marker), where the last stable offset
//! is, and which ranges were aborted (what `read_committed` consumers must drop).

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Commit markers remembered so that a truncation that cuts one reopens its transaction:
/// only an unreplicated tail is ever truncated, a few batches at most.
const RECENT_COMMITS: usize = 1024;

/// An aborted transaction's range on a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted {
    /// The producer.
    pub producer_id: i64,
    /// Its first offset in the transaction.
    pub first_offset: i64,
}

/// What a batch did to the index (what to persist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnChange {
    /// A producer's transaction opened at this offset.
    Opened(i64, i64),
    /// A producer's transaction ended; an abort leaves its range at the marker's offset.
    Closed {
        /// Producer.
        producer_id: i64,
        /// The aborted range and the marker offset, for an abort of an open transaction.
        aborted: Option<(Aborted, i64)>,
    },
}

/// Open and aborted transactions of a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnIndex {
    /// Producer id → first offset of its open transaction.
    pub open: BTreeMap<i64, i64>,
    /// Aborted transactions by the offset of their abort marker.
    pub aborted: BTreeMap<i64, Aborted>,
    /// The latest commits (marker offset, producer, first offset), oldest first; kept in
    /// memory only.
    recent_commits: VecDeque<(i64, i64, i64)>,
    /// KIP-890 verification guards: producer → the guard of its batch being checked with
    /// its coordinator before it may open a transaction here. A marker for the producer
    /// voids it, so a batch verified before an abort cannot open a transaction after it.
    verifying: HashMap<i64, u64>,
    /// The last guard handed out.
    last_guard: u64,
}

impl TxnIndex {
    /// Notes a batch stored at `base`: a transactional data batch opens its producer's
    /// transaction (if not open yet); a marker (`Some(commit)`) at `base` closes it.
    pub fn note(
        &mut self,
        producer_id: i64,
        transactional: bool,
        marker: Option<bool>,
        base: i64,
    ) -> Option<TxnChange> {
        if transactional {
            self.verifying.remove(&producer_id);
        }
        match marker {
            Some(commit) => {
                let first = self.open.remove(&producer_id);
                if let Some(first) = first.filter(|_| commit) {
                    if self.recent_commits.len() == RECENT_COMMITS {
                        self.recent_commits.pop_front();
                    }
                    self.recent_commits.push_back((base, producer_id, first));
                }
                let aborted = first.filter(|_| !commit).map(|first_offset| {
                    let a = Aborted {
                        producer_id,
                        first_offset,
                    };
                    self.aborted.insert(base, a);
                    (a, base)
                });
                Some(TxnChange::Closed {
                    producer_id,
                    aborted,
                })
            }
            None if transactional && !self.open.contains_key(&producer_id) => {
                self.open.insert(producer_id, base);
                Some(TxnChange::Opened(producer_id, base))
            }
            None => None,
        }
    }

    /// Starts verifying a producer's transactional batch: `None` when its transaction is
    /// already open here (nothing to verify), else the guard the append must present.
    pub fn begin_verification(&mut self, producer_id: i64) -> Option<u64> {
        if self.open.contains_key(&producer_id) {
            return None;
        }
        self.last_guard += 1;
        self.verifying.insert(producer_id, self.last_guard);
        Some(self.last_guard)
    }

    /// Drops a guard whose verification failed.
    pub fn end_verification(&mut self, producer_id: i64, guard: u64) {
        if self.verifying.get(&producer_id) == Some(&guard) {
            self.verifying.remove(&producer_id);
        }
    }

    /// May this producer's transactional batch be appended: its transaction is open here,
    /// or `guard` is still the one its verification began with.
    pub fn verified(&self, producer_id: i64, guard: Option<u64>) -> bool {
        self.open.contains_key(&producer_id)
            || guard.is_some_and(|g| self.verifying.get(&producer_id) == Some(&g))
    }

    /// The first offset of the oldest open transaction: nothing at or above it is stable.
    pub fn first_unstable(&self) -> Option<i64> {
        self.open.values().min().copied()
    }

    /// Aborted transactions with records in `[from, to]`, as `(producer, first offset)`.
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<Aborted> {
        self.aborted
            .range(from..)
            .map(|(_, a)| *a)
            .filter(|a| a.first_offset <= to)
            .collect()
    }

    /// Forgets what lies at or above `cut` (a truncated log): transactions opened there,
    /// and markers (their transaction is open again).
    pub fn truncate(&mut self, cut: i64) {
        self.open.retain(|_, &mut first| first < cut);
        for (_, a) in self.aborted.split_off(&cut) {
            if a.first_offset < cut {
                self.open.insert(a.producer_id, a.first_offset);
            }
        }
        while let Some(&(marker, producer_id, first)) = self.recent_commits.back() {
            if marker < cut {
                break;
            }
            self.recent_commits.pop_back();
            if first < cut {
                self.open.insert(producer_id, first);
            }
        }
    }

    /// Forgets markers below `log_start` (deleted by retention).
    pub fn trim(&mut self, log_start: i64) {
        self.aborted = self.aborted.split_off(&log_start);
        self.recent_commits
            .retain(|&(marker, _, _)| marker >= log_start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_commit_abort_and_the_last_stable_offset() {
        let mut t = TxnIndex::default();
        assert_eq!(t.note(7, false, None, 0), None, "not transactional");
        assert_eq!(t.note(1, true, None, 10), Some(TxnChange::Opened(1, 10)));
        assert_eq!(t.note(1, true, None, 12), None, "already open");
        assert_eq!(t.note(2, true, None, 11), Some(TxnChange::Opened(2, 11)));
        assert_eq!(t.first_unstable(), Some(10));
        assert_eq!(
            t.note(1, true, Some(true), 13),
            Some(TxnChange::Closed {
                producer_id: 1,
                aborted: None
            })
        );
        assert_eq!(t.first_unstable(), Some(11));
        let a = Aborted {
            producer_id: 2,
            first_offset: 11,
        };
        assert_eq!(
            t.note(2, true, Some(false), 14),
            Some(TxnChange::Closed {
                producer_id: 2,
                aborted: Some((a, 14))
            })
        );
        assert_eq!(t.first_unstable(), None);
        assert_eq!(t.aborted_in(0, 10), Vec::new());
        assert_eq!(t.aborted_in(0, 11), vec![a]);
        assert_eq!(t.aborted_in(14, 20), vec![a]);
        assert_eq!(t.aborted_in(15, 20), Vec::new());
    }

    #[test]
    fn a_marker_voids_a_verification_in_flight() {
        let mut t = TxnIndex::default();
        let g = t.begin_verification(1).expect("nothing open: verify");
        assert!(t.verified(1, Some(g)));
        assert!(!t.verified(1, None), "no guard, no transaction");
        assert!(!t.verified(2, Some(g)), "another producer's guard");
        t.note(1, true, Some(false), 5);
        assert!(!t.verified(1, Some(g)), "aborted while verifying");
        let g2 = t.begin_verification(1).expect("verify again");
        assert_ne!(g, g2);
        assert!(!t.verified(1, Some(g)), "an older guard");
        t.note(1, true, None, 6);
        assert_eq!(t.begin_verification(1), None, "open: nothing to verify");
        assert!(t.verified(1, None));
        let g3 = t.begin_verification(3).expect("verify");
        t.end_verification(3, g3);
        assert!(!t.verified(3, Some(g3)), "dropped after a failed check");
    }

    #[test]
    fn truncation_reopens_and_retention_trims() {
        let mut t = TxnIndex::default();
        t.note(1, true, None, 5);
        t.note(1, true, Some(false), 8);
        t.note(2, true, None, 9);
        t.truncate(8);
        assert_eq!(
            t.open,
            BTreeMap::from([(1, 5)]),
            "abort marker cut: open again"
        );
        assert!(t.aborted.is_empty());
        t.note(1, true, Some(false), 8);
        t.note(3, true, None, 9);
        t.note(3, true, Some(true), 10);
        t.truncate(10);
        assert_eq!(t.open.get(&3), Some(&9), "commit marker cut: open again");
        t.note(3, true, Some(true), 10);
        assert_eq!(t.open.get(&3), None);
        t.trim(8);
        assert_eq!(t.aborted.len(), 1);
        t.trim(9);
        assert!(t.aborted.is_empty());
    }
}
