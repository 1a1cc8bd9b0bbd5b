//! One partition's log: offsets, segments, leader epochs, idempotent producer state,
//! its batches in storage, and its replica state (role, ISR, followers' progress).
//!
//! Offsets are assigned under the partition lock and the write is queued to the storage
//! writer in the same critical section, so batches reach storage in offset order. The log
//! end moves once a write is durable per the fsync policy; the high watermark (what
//! consumers see) is the smallest log end over the in-sync replicas.
//!
//! This module knows offsets and epochs only; how followers reach the leader is the
//! `replication` module's business.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::sync::{oneshot, Notify};

use super::compaction::{self, Dirt, Fate};
use super::producer::{BatchSeq, ProducerState, SeqCheck};
use super::topic_config::TopicConfig;
use super::txn::{Aborted, TxnChange, TxnIndex};
use crate::cluster::image::PartitionState;
use crate::protocol::batch::{self, BatchHeader, ATTR_LOG_APPEND_TIME};
use crate::protocol::marker::Marker;
use crate::storage::{
    log_key, partition_bounds, Mutation, SegmentMeta, StorageError, Store, CF_INDEX, CF_LOG,
    CF_META,
};

/// Why an append or read was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// Storage failed or is offline.
    #[error("storage error: {0}")]
    Storage(Arc<StorageError>),
    /// Producer sequence gap.
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    /// Producer epoch is older than the current one.
    #[error("producer epoch is fenced")]
    InvalidProducerEpoch,
    /// A transaction marker from a coordinator older than the last one that wrote here.
    #[error("transaction coordinator is fenced")]
    CoordinatorFenced,
    /// A transactional batch that would open a transaction its coordinator did not confirm
    /// (KIP-890): a late write after its transaction ended would otherwise hang here.
    #[error("the producer's transaction does not include this partition")]
    InvalidTxnState,
    /// CreateTime timestamp outside the topic's accepted window.
    #[error("timestamp {0} is outside the accepted window")]
    InvalidTimestamp(i64),
    /// Offset below the log start or above the high watermark.
    #[error("offset out of range")]
    OffsetOutOfRange,
    /// This broker does not lead the partition (or its leader epoch moved on).
    #[error("not the leader of this partition")]
    NotLeader,
    /// The requester's leader epoch is older than ours.
    #[error("fenced leader epoch")]
    FencedEpoch,
    /// The requester's leader epoch is newer than ours.
    #[error("unknown leader epoch")]
    UnknownEpoch,
    /// Fewer in-sync replicas than `min.insync.replicas`.
    #[error("not enough in-sync replicas")]
    NotEnoughReplicas,
    /// Written locally, but the ISR shrank below `min.insync.replicas` before replication.
    #[error("not enough in-sync replicas after append")]
    NotEnoughReplicasAfterAppend,
    /// Not replicated in time.
    #[error("timed out waiting for replication")]
    Timeout,
    /// A replicated batch does not continue the log.
    #[error("replicated batch at {got} does not continue the log at {expected}")]
    NotContiguous {
        /// Expected base offset.
        expected: i64,
        /// Received base offset.
        got: i64,
    },
    /// A replicated batch is malformed.
    #[error("bad replicated batch: {0}")]
    BadBatch(String),
}

impl From<StorageError> for LogError {
    fn from(e: StorageError) -> Self {
        LogError::Storage(Arc::new(e))
    }
}

/// Result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Broker time for LogAppendTime topics, else -1.
    pub log_append_time: i64,
    /// Log start offset at the time of the append.
    pub log_start_offset: i64,
}

/// An append either finished at once (duplicate or error) or waits for its write.
pub enum AppendOutcome {
    /// Already decided.
    Done(Result<Appended, LogError>),
    /// Resolves once the batch is durable.
    Pending(oneshot::Receiver<Result<Appended, LogError>>),
}

impl AppendOutcome {
    /// Waits for the outcome.
    pub async fn wait(self) -> Result<Appended, LogError> {
        match self {
            AppendOutcome::Done(r) => r,
            AppendOutcome::Pending(rx) => rx
                .await
                .unwrap_or_else(|_| Err(LogError::Storage(Arc::new(StorageError::Offline)))),
        }
    }
}

/// Offsets of a partition, as reported to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// First offset still stored.
    pub log_start: i64,
    /// High watermark: end of the durable, visible log.
    pub high_watermark: i64,
}

/// What this broker is for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts produce and serves fetches.
    Leader,
    /// Copies the leader's log.
    Follower,
    /// Holds no replica (or has not been told yet).
    None,
}

struct State {
    next_offset: i64,
    log_start: i64,
    segments: BTreeMap<i64, SegmentMeta>,
    producers: HashMap<i64, ProducerState>,
    /// Leader epoch → first offset written in it.
    epochs: BTreeMap<i32, i64>,
    role: Role,
    leader_epoch: i32,
    /// Records appended since the last WAL sync this partition asked for (`flush.messages`).
    unsynced_records: i64,
    /// When this partition last asked for a WAL sync (`flush.ms`).
    last_sync_ms: i64,
    /// The cleaner's progress: everything below was compacted since the broker started.
    cleaned_to: i64,
    /// Open and aborted transactions.
    txns: TxnIndex,
}

/// A follower's progress as its leader sees it.
#[derive(Debug, Clone, Copy)]
struct Follower {
    log_end: i64,
    caught_up_at: Instant,
    last_fetch_at: Instant,
    leader_end_at_last_fetch: i64,
}

/// Replica set, ISR and (on the leader) followers' progress.
struct Replicas {
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    partition_epoch: i32,
    followers: HashMap<i32, Follower>,
    /// ISR proposed to the controller and not yet committed. Until it is, the high
    /// watermark also waits for the replicas it adds (Kafka's "maximal ISR"): the
    /// controller may make one of them leader as soon as it commits, so it must hold
    /// every record acknowledged meanwhile.
    pending_isr: Option<Vec<i32>>,
    /// Smallest ISR over which the high watermark advances (`min.insync.replicas`,
    /// capped at the replica count): replicas that left a smaller ISR must still hold
    /// everything below it to be eligible leaders.
    min_isr: usize,
}

/// A partition's replica state as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaView {
    /// This broker's role.
    pub role: Role,
    /// Current leader (-1: none).
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Partition epoch of the state last applied.
    pub partition_epoch: i32,
    /// Replicas.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// First stored offset.
    pub log_start: i64,
    /// End of the durable local log.
    pub log_end: i64,
    /// High watermark.
    pub high_watermark: i64,
    /// Leader epoch → start offset.
    pub epochs: BTreeMap<i32, i64>,
}

/// An ISR change a leader wants the controller to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    /// Proposed ISR.
    pub isr: Vec<i32>,
    /// Leader epoch it was computed at.
    pub leader_epoch: i32,
    /// Partition epoch it was computed from.
    pub partition_epoch: i32,
}

/// What a leader answers a follower's fetch position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerCheck {
    /// Read from the fetch offset; here are the leader's offsets.
    Read {
        /// High watermark.
        high_watermark: i64,
        /// Log start.
        log_start: i64,
    },
    /// The follower's log diverges: truncate to at most `end_offset` of `epoch`.
    Diverging {
        /// Largest leader epoch at or below the follower's last one.
        epoch: i32,
        /// End offset of that epoch on the leader.
        end_offset: i64,
    },
    /// The fetch offset is below the leader's log start: restart from there.
    Reset {
        /// Leader's log start.
        log_start: i64,
    },
}

/// A partition of a topic.
pub struct Partition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub index: i32,
    /// Storage id, unique for the life of the store (never reused).
    pub uid: u64,
    store: Arc<Store>,
    notify: Arc<Notify>,
    /// Woken when the high watermark or the replica state changes (acks=all waiters).
    progress: Notify,
    /// End of the durable local log.
    log_end: AtomicI64,
    high_watermark: AtomicI64,
    state: Mutex<State>,
    replicas: Mutex<Replicas>,
}

/// Part of `segment.ms` a segment rolls early by (`segment.jitter.ms`): fixed per segment
/// (derived from its base offset) so every check agrees, spread like a random draw.
fn segment_jitter(segment_base: i64, cfg: &TopicConfig) -> i64 {
    if cfg.segment_jitter_ms <= 0 {
        return 0;
    }
    // splitmix64 finaliser: neighbouring base offsets land far apart.
    let mut z = (segment_base as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let jitter = (z % cfg.segment_jitter_ms as u64) as i64;
    // Kafka caps the jitter below segment.ms so a segment always lives a little.
    jitter.min(cfg.segment_ms - 1)
}

fn meta_key(tag: u8, uid: u64) -> Vec<u8> {
    let mut k = vec![tag, b'/'];
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

fn epoch_key(uid: u64, epoch: i32) -> Vec<u8> {
    let mut k = meta_key(b'e', uid);
    k.extend_from_slice(&(epoch as u32).to_be_bytes());
    k
}

fn epoch_mutation(uid: u64, epoch: i32, start: i64) -> Mutation {
    Mutation::Put {
        cf: CF_META,
        key: epoch_key(uid, epoch),
        value: start.to_be_bytes().to_vec(),
    }
}

/// Meta key tag of open transactions ("t/" is the catalog's).
const OPEN_TXN_TAG: u8 = b'u';

fn open_txn_key(uid: u64, producer_id: i64) -> Vec<u8> {
    let mut k = meta_key(OPEN_TXN_TAG, uid);
    k.extend_from_slice(&producer_id.to_be_bytes());
    k
}

fn aborted_txn_key(uid: u64, marker_offset: i64) -> Vec<u8> {
    let mut k = meta_key(b'a', uid);
    k.extend_from_slice(&marker_offset.to_be_bytes());
    k
}

fn aborted_txn_put(uid: u64, marker_offset: i64, a: Aborted) -> Mutation {
    let mut v = a.producer_id.to_be_bytes().to_vec();
    v.extend_from_slice(&a.first_offset.to_be_bytes());
    Mutation::Put {
        cf: CF_META,
        key: aborted_txn_key(uid, marker_offset),
        value: v,
    }
}

/// The transaction marker a control batch carries (`None` for data and other controls).
fn control_marker(header: &BatchHeader, raw: &[u8]) -> Option<Marker> {
    if !header.is_control() {
        return None;
    }
    crate::protocol::marker::read_marker(raw).ok().flatten()
}

fn producer_key(uid: u64, producer_id: i64) -> Vec<u8> {
    let mut k = meta_key(b'p', uid);
    k.extend_from_slice(&producer_id.to_be_bytes());
    k
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Partition {
    /// Loads a partition's state from storage (an empty log if it has none).
    pub fn load(
        topic: Arc<str>,
        index: i32,
        uid: u64,
        store: Arc<Store>,
        notify: Arc<Notify>,
    ) -> Result<Partition, StorageError> {
        let log_start = match store.get_meta(&meta_key(b's', uid))? {
            Some(v) => i64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("log start offset".into()))?,
            ),
            None => 0,
        };
        let mut segments = BTreeMap::new();
        for (k, v) in store.scan_prefix(CF_INDEX, &uid.to_be_bytes())? {
            let meta =
                SegmentMeta::decode(&v).ok_or_else(|| StorageError::Corrupt("segment".into()))?;
            segments.insert(crate::storage::offset_of_key(&k), meta);
        }
        let mut producers = HashMap::new();
        let prefix = meta_key(b'p', uid);
        for (k, v) in store.scan_prefix(CF_META, &prefix)? {
            let pid_bytes: [u8; 8] = k[prefix.len()..]
                .try_into()
                .map_err(|_| StorageError::Corrupt("producer key".into()))?;
            let state = ProducerState::decode(&v)
                .ok_or_else(|| StorageError::Corrupt("producer state".into()))?;
            producers.insert(i64::from_be_bytes(pid_bytes), state);
        }
        let corrupt = || StorageError::Corrupt("transaction index".into());
        let be64 = |b: &[u8]| -> Result<i64, StorageError> {
            Ok(i64::from_be_bytes(b.try_into().map_err(|_| corrupt())?))
        };
        let mut txns = TxnIndex::default();
        let prefix = meta_key(OPEN_TXN_TAG, uid);
        for (k, v) in store.scan_prefix(CF_META, &prefix)? {
            txns.open.insert(be64(&k[prefix.len()..])?, be64(&v)?);
        }
        let prefix = meta_key(b'a', uid);
        for (k, v) in store.scan_prefix(CF_META, &prefix)? {
            let a = Aborted {
                producer_id: be64(v.get(..8).ok_or_else(corrupt)?)?,
                first_offset: be64(v.get(8..).ok_or_else(corrupt)?)?,
            };
            txns.aborted.insert(be64(&k[prefix.len()..])?, a);
        }
        let mut epochs = BTreeMap::new();
        let prefix = meta_key(b'e', uid);
        for (k, v) in store.scan_prefix(CF_META, &prefix)? {
            let e: [u8; 4] = k[prefix.len()..]
                .try_into()
                .map_err(|_| StorageError::Corrupt("epoch key".into()))?;
            let start: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::Corrupt("epoch start".into()))?;
            epochs.insert(u32::from_be_bytes(e) as i32, i64::from_be_bytes(start));
        }
        let end = segments
            .values()
            .last()
            .map(|s| s.last_offset + 1)
            .unwrap_or(log_start)
            .max(log_start);
        Ok(Partition {
            topic,
            index,
            uid,
            store,
            notify,
            progress: Notify::new(),
            log_end: AtomicI64::new(end),
            high_watermark: AtomicI64::new(end),
            state: Mutex::new(State {
                next_offset: end,
                log_start,
                segments,
                producers,
                leader_epoch: epochs.keys().next_back().copied().unwrap_or(0),
                epochs,
                role: Role::None,
                unsynced_records: 0,
                last_sync_ms: 0,
                cleaned_to: 0,
                txns,
            }),
            replicas: Mutex::new(Replicas {
                leader: -1,
                replicas: Vec::new(),
                isr: Vec::new(),
                partition_epoch: -1,
                followers: HashMap::new(),
                pending_isr: None,
                min_isr: 1,
            }),
        })
    }

    fn replica_lock(&self) -> MutexGuard<'_, Replicas> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.lock().leader_epoch
    }

    /// This broker's role.
    pub fn role(&self) -> Role {
        self.lock().role
    }

    /// End of the durable local log.
    pub fn log_end(&self) -> i64 {
        self.log_end.load(Ordering::Acquire)
    }

    /// `(leader, replicas, isr)` as last applied.
    pub fn replica_set(&self) -> (i32, Vec<i32>, Vec<i32>) {
        let r = self.replica_lock();
        (r.leader, r.replicas.clone(), r.isr.clone())
    }

    /// Size of the ISR (without copying it).
    pub fn isr_len(&self) -> usize {
        self.replica_lock().isr.len()
    }

    /// Whether `replica` is in the ISR.
    pub fn in_sync(&self, replica: i32) -> bool {
        self.replica_lock().isr.contains(&replica)
    }

    /// Replica state for operators.
    pub fn view(&self) -> ReplicaView {
        let (role, leader_epoch, log_start, epochs) = {
            let st = self.lock();
            (st.role, st.leader_epoch, st.log_start, st.epochs.clone())
        };
        let r = self.replica_lock();
        ReplicaView {
            role,
            leader: r.leader,
            leader_epoch,
            partition_epoch: r.partition_epoch,
            replicas: r.replicas.clone(),
            isr: r.isr.clone(),
            log_start,
            log_end: self.log_end(),
            high_watermark: self.high_watermark.load(Ordering::Acquire),
            epochs,
        }
    }

    /// Applies the partition's state from the metadata image: this broker (`me`) becomes
    /// leader, follower or nothing. A new leader epoch starts at the current log end.
    pub fn apply_state(&self, me: i32, state: &PartitionState, min_isr: usize) {
        let PartitionState {
            leader,
            leader_epoch,
            partition_epoch,
            ref replicas,
            ref isr,
            ..
        } = *state;
        let role = if leader == me {
            Role::Leader
        } else if replicas.contains(&me) {
            Role::Follower
        } else {
            Role::None
        };
        let became_leader;
        {
            let mut st = self.lock();
            became_leader = role == Role::Leader
                && (st.role != Role::Leader || st.leader_epoch != leader_epoch);
            if became_leader
                && st
                    .epochs
                    .keys()
                    .next_back()
                    .is_none_or(|&e| e < leader_epoch)
            {
                let mut m = Vec::new();
                if st.epochs.is_empty() && st.next_offset > st.log_start && leader_epoch > 0 {
                    // Data written before epochs were recorded was written in epoch 0.
                    let start = st.log_start;
                    st.epochs.insert(0, start);
                    m.push(epoch_mutation(self.uid, 0, start));
                }
                let start = st.next_offset;
                st.epochs.insert(leader_epoch, start);
                m.push(epoch_mutation(self.uid, leader_epoch, start));
                // Queued under the lock: ordered before any batch of the new epoch.
                self.store.submit(m, false, Box::new(|_| {}));
            }
            st.role = role;
            st.leader_epoch = st.leader_epoch.max(leader_epoch);
        }
        {
            let mut r = self.replica_lock();
            let now = Instant::now();
            if became_leader || role != Role::Leader {
                r.followers.clear();
            }
            if role == Role::Leader {
                // Followers' positions are unknown until they fetch (also for replicas
                // added while leading).
                r.followers.retain(|b, _| replicas.contains(b));
                for &b in replicas.iter().filter(|&&b| b != me) {
                    r.followers.entry(b).or_insert(Follower {
                        log_end: -1,
                        caught_up_at: now,
                        last_fetch_at: now,
                        leader_end_at_last_fetch: -1,
                    });
                }
            }
            // The metadata image is applied whole on every change anywhere in the
            // cluster: only a new state of this partition settles a pending ISR change
            // (committed, or refused for being based on an older state). Dropping it
            // earlier would let the high watermark pass a replica the controller is
            // about to add to the ISR, and perhaps make leader.
            if partition_epoch != r.partition_epoch {
                r.pending_isr = None;
            }
            r.leader = leader;
            r.replicas = replicas.to_vec();
            r.isr = isr.to_vec();
            r.partition_epoch = partition_epoch;
            r.min_isr = min_isr.clamp(1, replicas.len().max(1));
        }
        if role == Role::Leader {
            self.advance_high_watermark();
        }
        self.progress.notify_waiters();
        self.notify.notify_waiters();
    }

    /// Moves the leader's high watermark to the smallest log end in the ISR.
    fn advance_high_watermark(&self) {
        let mut hw = self.log_end();
        {
            let r = self.replica_lock();
            if r.isr.len() < r.min_isr {
                return;
            }
            for b in r.isr.iter().chain(r.pending_isr.iter().flatten()) {
                if let Some(f) = r.followers.get(b) {
                    hw = hw.min(f.log_end);
                }
            }
        }
        if hw > self.high_watermark.fetch_max(hw, Ordering::AcqRel) {
            self.progress.notify_waiters();
            self.notify.notify_waiters();
        }
    }

    /// Leader side of a follower fetch: checks the follower's epoch and position, records
    /// its progress, and says where it should read from (or truncate to). `durable` is
    /// the end of what the follower has written; it may trail `fetch_offset` while the
    /// follower's appends are queued, and only it moves the high watermark.
    pub fn follower_fetch(
        &self,
        replica: i32,
        leader_epoch: i32,
        fetch_offset: i64,
        durable: i64,
        last_fetched_epoch: i32,
    ) -> Result<FollowerCheck, LogError> {
        let (log_start, log_end) = {
            let st = self.lock();
            if st.role != Role::Leader {
                return Err(LogError::NotLeader);
            }
            if leader_epoch < st.leader_epoch {
                return Err(LogError::FencedEpoch);
            }
            if leader_epoch > st.leader_epoch {
                return Err(LogError::UnknownEpoch);
            }
            let log_end = self.log_end();
            if last_fetched_epoch >= 0 {
                let (epoch, end_offset) = end_offset_for(&st, last_fetched_epoch, log_end);
                if epoch != last_fetched_epoch || end_offset < fetch_offset {
                    return Ok(FollowerCheck::Diverging { epoch, end_offset });
                }
            } else if fetch_offset > log_end {
                return Ok(FollowerCheck::Diverging {
                    epoch: -1,
                    end_offset: log_end,
                });
            }
            if fetch_offset < st.log_start {
                return Ok(FollowerCheck::Reset {
                    log_start: st.log_start,
                });
            }
            (st.log_start, log_end)
        };
        {
            let mut r = self.replica_lock();
            let now = Instant::now();
            if let Some(f) = r.followers.get_mut(&replica) {
                if fetch_offset >= log_end {
                    f.caught_up_at = now;
                } else if fetch_offset >= f.leader_end_at_last_fetch
                    && f.leader_end_at_last_fetch >= 0
                {
                    f.caught_up_at = f.caught_up_at.max(f.last_fetch_at);
                }
                f.log_end = durable.min(fetch_offset);
                f.last_fetch_at = now;
                f.leader_end_at_last_fetch = log_end;
            }
        }
        self.advance_high_watermark();
        Ok(FollowerCheck::Read {
            high_watermark: self.high_watermark.load(Ordering::Acquire),
            log_start,
        })
    }

    /// On the leader: the ISR change due now, if any (followers lagging longer than
    /// `lag_max` leave, caught-up ones join). Only one change is in flight at a time.
    pub fn isr_change_due(&self, me: i32, lag_max: std::time::Duration) -> Option<IsrChange> {
        let (role, leader_epoch, epoch_start) = {
            let st = self.lock();
            let start = st.epochs.get(&st.leader_epoch).copied().unwrap_or(0);
            (st.role, st.leader_epoch, start)
        };
        if role != Role::Leader {
            return None;
        }
        let hw = self.high_watermark.load(Ordering::Acquire);
        let mut r = self.replica_lock();
        if r.pending_isr.is_some() {
            return None;
        }
        let now = Instant::now();
        let mut isr: Vec<i32> = r
            .isr
            .iter()
            .copied()
            .filter(|b| {
                *b == me
                    || r.followers
                        .get(b)
                        .is_none_or(|f| now.duration_since(f.caught_up_at) <= lag_max)
            })
            .collect();
        for (b, f) in &r.followers {
            // Caught up as of a recent fetch: one that went silent (fenced, cut off) has
            // an old position that only looks caught up while the log is idle.
            if !isr.contains(b)
                && f.log_end >= hw
                && f.log_end >= epoch_start
                && now.duration_since(f.last_fetch_at) <= lag_max
            {
                isr.push(*b);
            }
        }
        if !isr.contains(&me) {
            isr.push(me);
        }
        let mut sorted = isr.clone();
        sorted.sort_unstable();
        let mut current = r.isr.clone();
        current.sort_unstable();
        if sorted == current {
            return None;
        }
        r.pending_isr = Some(isr.clone());
        Some(IsrChange {
            isr,
            leader_epoch,
            partition_epoch: r.partition_epoch,
        })
    }

    /// On the leader: whether it has followers and none of them fetched within `within`
    /// (this broker is likely cut off from them).
    pub fn followers_silent(&self, within: std::time::Duration) -> bool {
        let r = self.replica_lock();
        let now = Instant::now();
        !r.followers.is_empty()
            && r.followers
                .values()
                .all(|f| now.duration_since(f.last_fetch_at) > within)
    }

    /// On the leader: each follower's `(id, records behind the log end, time since it was
    /// last caught up)`; a follower that has not fetched yet counts as the whole log behind.
    pub fn follower_lags(&self) -> Vec<(i32, i64, std::time::Duration)> {
        let end = self.log_end();
        let start = self.lock().log_start;
        let r = self.replica_lock();
        let now = Instant::now();
        r.followers
            .iter()
            .map(|(&id, f)| {
                let at = if f.log_end < 0 { start } else { f.log_end };
                (id, (end - at).max(0), now.duration_since(f.caught_up_at))
            })
            .collect()
    }

    /// The controller refused `change` for good (nothing of it was committed): allow
    /// the next attempt.
    pub fn isr_change_refused(&self, change: &IsrChange) {
        {
            let mut r = self.replica_lock();
            if r.partition_epoch != change.partition_epoch {
                return;
            }
            r.pending_isr = None;
        }
        // The replicas it would have added held the high watermark back until now.
        self.advance_high_watermark();
    }

    /// Whether `change` is still waiting for the controller: no newer state of this
    /// partition has been applied since it was proposed.
    pub fn isr_change_pending(&self, change: &IsrChange) -> bool {
        let r = self.replica_lock();
        r.pending_isr.is_some() && r.partition_epoch == change.partition_epoch
    }

    /// Waits until the high watermark reaches `end` while this broker still leads at
    /// `epoch` (acks=all), failing early when the ISR drops below `min_isr`.
    pub async fn wait_replicated(
        &self,
        end: i64,
        epoch: i32,
        min_isr: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(), LogError> {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Leadership before and after reading the high watermark: a deposed
            // leader's high watermark follows the new leader's log, whose records at
            // these offsets may be others.
            let leads = || {
                let st = self.lock();
                st.role == Role::Leader && st.leader_epoch == epoch
            };
            if !leads() {
                return Err(LogError::NotLeader);
            }
            if self.high_watermark.load(Ordering::Acquire) >= end {
                return if leads() {
                    Ok(())
                } else {
                    Err(LogError::NotLeader)
                };
            }
            if self.replica_lock().isr.len() < min_isr {
                return Err(LogError::NotEnoughReplicasAfterAppend);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(LogError::Timeout);
            }
        }
    }

    /// Waits until an append of records up to `base + last_offset_delta` is durable here
    /// and, with `min_isr` (acks=all), until the high watermark covers it.
    pub async fn settle_append(
        &self,
        outcome: AppendOutcome,
        last_offset_delta: i32,
        epoch: i32,
        min_isr: Option<usize>,
        deadline: tokio::time::Instant,
    ) -> Result<Appended, LogError> {
        let appended = match tokio::time::timeout_at(deadline, outcome.wait()).await {
            Ok(r) => r?,
            Err(_) => return Err(LogError::Timeout),
        };
        if let Some(min_isr) = min_isr {
            let end = appended.base_offset + i64::from(last_offset_delta) + 1;
            self.wait_replicated(end, epoch, min_isr, deadline).await?;
        }
        Ok(appended)
    }

    /// Follower side: `(log end, epoch of the last batch)` to fetch from.
    pub fn fetch_position(&self) -> (i64, i32) {
        let st = self.lock();
        (
            st.next_offset,
            st.epochs.keys().next_back().copied().unwrap_or(-1),
        )
    }

    /// End offset of `epoch` in this log (Kafka's OffsetForLeaderEpoch): the largest epoch
    /// at or below it and the start of the next epoch (or the log end).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let st = self.lock();
        end_offset_for(&st, epoch, self.log_end())
    }

    /// Follower side: raises the high watermark to the leader's, capped at our own log
    /// end. Answers may be applied out of order with queued appends, so it never lowers
    /// it (a truncation does).
    pub fn raise_follower_high_watermark(&self, leader_hw: i64) {
        let hw = leader_hw.min(self.log_end());
        if self.high_watermark.fetch_max(hw, Ordering::AcqRel) < hw {
            self.notify.notify_waiters();
        }
    }

    /// Follower side: queues batches exactly as the leader stored them (back to back in
    /// `records`), keeping producer state and epochs as the leader does, so this replica
    /// can take over without duplicates. Returns the number of batches; the next fetch
    /// may start at once from their end. Once they are durable per `sync`, the log end
    /// moves, the high watermark rises towards `leader_hw` and `done` runs (only if this
    /// returns `Ok`), whether or not anyone still waits.
    pub fn append_replicated(
        self: &Arc<Self>,
        mut records: Bytes,
        sync: bool,
        leader_hw: i64,
        done: Box<dyn FnOnce(Result<(), LogError>) + Send>,
    ) -> Result<usize, LogError> {
        let mut mutations = Vec::new();
        let mut count = 0;
        {
            let mut st = self.lock();
            if st.role == Role::Leader {
                return Err(LogError::NotLeader);
            }
            // Every batch is checked before any state changes: a bad one must not leave
            // the offsets ahead of what is written.
            let mut batches = Vec::new();
            let mut next = st.next_offset;
            while !records.is_empty() {
                let header =
                    batch::parse_header(&records).map_err(|e| LogError::BadBatch(e.to_string()))?;
                if header.size > records.len() {
                    return Err(LogError::BadBatch("truncated batch".into()));
                }
                let raw = records.split_to(header.size);
                batch::validate_stored(&raw).map_err(|e| LogError::BadBatch(e.to_string()))?;
                // Above the log end: the leader's log may have gaps left by compaction.
                if header.base_offset < next {
                    return Err(LogError::NotContiguous {
                        expected: next,
                        got: header.base_offset,
                    });
                }
                next = header.last_offset() + 1;
                batches.push((header, raw));
            }
            for (header, raw) in batches {
                let base = header.base_offset;
                let last = header.last_offset();
                let now = now_ms();
                if st
                    .epochs
                    .keys()
                    .next_back()
                    .is_none_or(|&e| e < header.leader_epoch)
                {
                    st.epochs.insert(header.leader_epoch, base);
                    mutations.push(epoch_mutation(self.uid, header.leader_epoch, base));
                }
                let size = raw.len() as u64;
                let (seg_base, mut seg) = match st.segments.iter().next_back() {
                    Some((&b, s)) if s.bytes + size <= SEGMENT_BYTES_FOLLOWER => (b, *s),
                    _ => (
                        base,
                        SegmentMeta {
                            last_offset: base,
                            bytes: 0,
                            max_timestamp: -1,
                            created_ms: now,
                        },
                    ),
                };
                seg.last_offset = last;
                seg.bytes += size;
                seg.max_timestamp = seg.max_timestamp.max(header.max_timestamp);
                mutations.push(Mutation::Put {
                    cf: CF_LOG,
                    key: log_key(self.uid, base).to_vec(),
                    value: raw.to_vec(),
                });
                mutations.push(Mutation::Put {
                    cf: CF_INDEX,
                    key: log_key(self.uid, seg_base).to_vec(),
                    value: seg.encode().to_vec(),
                });
                st.segments.insert(seg_base, seg);
                let marker = control_marker(&header, &raw);
                mutations.extend(self.record_producer(&mut st, &header, marker, base, now));
                mutations.extend(self.note_txn(&mut st, &header, marker, base));
                st.next_offset = last + 1;
                count += 1;
            }
            if mutations.is_empty() {
                drop(st);
                self.raise_follower_high_watermark(leader_hw);
                done(Ok(()));
                return Ok(0);
            }
            let end = st.next_offset;
            let this = Arc::clone(self);
            // Submitted under the lock: storage order is offset order.
            self.store.submit(
                mutations,
                sync,
                Box::new(move |res| {
                    done(match res {
                        Ok(()) => {
                            this.log_end.fetch_max(end, Ordering::AcqRel);
                            this.raise_follower_high_watermark(leader_hw);
                            Ok(())
                        }
                        Err(e) => Err(LogError::Storage(e)),
                    })
                }),
            );
        }
        Ok(count)
    }

    /// Follower side: removes everything at and above `offset` (rounded down to a batch
    /// boundary), with the epochs and producer state that pointed there.
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, LogError> {
        let (start, end, gone) = {
            let mut st = self.lock();
            let gone = if offset >= st.next_offset {
                // Nothing stored to cut, but epochs that start here (a leadership that
                // wrote nothing) must go, or the follower keeps diverging.
                self.trim_epochs(&mut st, offset)
            } else {
                Vec::new()
            };
            (st.log_start, st.next_offset, gone)
        };
        if offset >= end {
            if !gone.is_empty() {
                self.store
                    .write(gone, true)
                    .await
                    .map_err(LogError::Storage)?;
            }
            return Ok(end);
        }
        // Never cut a batch in half: start at the base of the batch holding `offset`.
        let cut = match self
            .store
            .read_batches(self.uid, offset.max(start), i64::MAX, 1)?
            .first()
        {
            Some(b) => batch::parse_header(b)
                .map(|h| h.base_offset.min(offset))
                .unwrap_or(offset),
            None => offset,
        }
        .max(start);
        let kept_in_last_segment: Vec<Bytes> = {
            let st = self.lock();
            match st.segments.range(..cut).next_back() {
                Some((&b, _)) => self.store.read_batches(self.uid, b, cut, usize::MAX)?,
                None => Vec::new(),
            }
        };
        let written = {
            let mut st = self.lock();
            let (_, hi) = partition_bounds(self.uid);
            let mut m = vec![Mutation::DeleteRange {
                cf: CF_LOG,
                from: log_key(self.uid, cut).to_vec(),
                to: hi.clone(),
            }];
            let doomed: Vec<i64> = st.segments.range(cut..).map(|(b, _)| *b).collect();
            for b in doomed {
                st.segments.remove(&b);
                m.push(Mutation::Delete {
                    cf: CF_INDEX,
                    key: log_key(self.uid, b).to_vec(),
                });
            }
            if let Some((&b, seg)) = st.segments.iter_mut().next_back() {
                if seg.last_offset >= cut {
                    seg.last_offset = cut - 1;
                    seg.bytes = kept_in_last_segment.iter().map(|x| x.len() as u64).sum();
                    m.push(Mutation::Put {
                        cf: CF_INDEX,
                        key: log_key(self.uid, b).to_vec(),
                        value: seg.encode().to_vec(),
                    });
                }
            }
            m.extend(self.trim_epochs(&mut st, cut));
            let pids: Vec<i64> = st.producers.keys().copied().collect();
            for pid in pids {
                let Some(ps) = st.producers.get_mut(&pid) else {
                    continue;
                };
                ps.batches.retain(|b| b.base_offset < cut);
                if ps.batches.is_empty() {
                    st.producers.remove(&pid);
                    m.push(Mutation::Delete {
                        cf: CF_META,
                        key: producer_key(self.uid, pid),
                    });
                } else {
                    m.push(Mutation::Put {
                        cf: CF_META,
                        key: producer_key(self.uid, pid),
                        value: ps.encode(),
                    });
                }
            }
            st.txns.truncate(cut);
            m.extend(self.txn_rewrite(&st));
            st.next_offset = cut;
            self.store.queue(m, true)
        };
        written.await.map_err(LogError::Storage)?;
        self.log_end.store(cut, Ordering::Release);
        self.high_watermark.fetch_min(cut, Ordering::AcqRel);
        tracing::info!(topic = %self.topic, partition = self.index, offset = cut, "truncated diverging log");
        Ok(cut)
    }

    /// Records an idempotent producer's batch at `base` (leader and follower alike, so a
    /// follower that takes over recognises retries); returns the write to persist.
    fn record_producer(
        &self,
        st: &mut State,
        header: &BatchHeader,
        marker: Option<Marker>,
        base: i64,
        now: i64,
    ) -> Option<Mutation> {
        if !header.is_idempotent() {
            return None;
        }
        let prev = st.producers.remove(&header.producer_id);
        let ps = if header.is_control() || header.base_sequence < 0 {
            ProducerState::record_unsequenced(
                prev,
                header.producer_epoch,
                marker.map(|m| m.coordinator_epoch),
                now,
            )
        } else {
            ProducerState::record(
                prev,
                header.producer_epoch,
                BatchSeq {
                    first_seq: header.base_sequence,
                    last_seq: header.last_sequence(),
                    base_offset: base,
                },
                now,
            )
        };
        let m = Mutation::Put {
            cf: CF_META,
            key: producer_key(self.uid, header.producer_id),
            value: ps.encode(),
        };
        st.producers.insert(header.producer_id, ps);
        Some(m)
    }

    /// Notes a transactional batch (data, or a control batch carrying `marker`) stored
    /// at `base` in the transaction index; returns the writes to persist.
    fn note_txn(
        &self,
        st: &mut State,
        header: &BatchHeader,
        marker: Option<Marker>,
        base: i64,
    ) -> Vec<Mutation> {
        if !header.is_transactional() || (header.is_control() && marker.is_none()) {
            return Vec::new();
        }
        match st
            .txns
            .note(header.producer_id, true, marker.map(|m| m.commit), base)
        {
            Some(TxnChange::Opened(pid, first)) => vec![Mutation::Put {
                cf: CF_META,
                key: open_txn_key(self.uid, pid),
                value: first.to_be_bytes().to_vec(),
            }],
            Some(TxnChange::Closed {
                producer_id,
                aborted,
            }) => {
                let mut m = vec![Mutation::Delete {
                    cf: CF_META,
                    key: open_txn_key(self.uid, producer_id),
                }];
                m.extend(aborted.map(|(a, at)| aborted_txn_put(self.uid, at, a)));
                m
            }
            None => Vec::new(),
        }
    }

    /// The transaction index rewritten whole (after a truncation).
    fn txn_rewrite(&self, st: &State) -> Vec<Mutation> {
        let mut m = Vec::new();
        for tag in [OPEN_TXN_TAG, b'a'] {
            let from = meta_key(tag, self.uid);
            let mut to = from.clone();
            to.push(0xff);
            m.push(Mutation::DeleteRange {
                cf: CF_META,
                from,
                to,
            });
        }
        for (&pid, &first) in &st.txns.open {
            m.push(Mutation::Put {
                cf: CF_META,
                key: open_txn_key(self.uid, pid),
                value: first.to_be_bytes().to_vec(),
            });
        }
        for (&at, &a) in &st.txns.aborted {
            m.push(aborted_txn_put(self.uid, at, a));
        }
        m
    }

    /// Removes epochs starting at or after `offset`; returns the deletions to persist.
    fn trim_epochs(&self, st: &mut State, offset: i64) -> Vec<Mutation> {
        let gone: Vec<i32> = st
            .epochs
            .iter()
            .filter(|(_, &s)| s >= offset)
            .map(|(e, _)| *e)
            .collect();
        gone.into_iter()
            .map(|e| {
                st.epochs.remove(&e);
                Mutation::Delete {
                    cf: CF_META,
                    key: epoch_key(self.uid, e),
                }
            })
            .collect()
    }

    /// Follower side: drops the whole local log and restarts it at the leader's log start.
    pub async fn reset_to(&self, log_start: i64) -> Result<(), LogError> {
        let written = {
            let mut st = self.lock();
            let mut m = self.erase_mutations();
            st.segments.clear();
            st.producers.clear();
            st.epochs.clear();
            st.txns = TxnIndex::default();
            st.log_start = log_start;
            st.next_offset = log_start;
            m.push(Mutation::Put {
                cf: CF_META,
                key: meta_key(b's', self.uid),
                value: log_start.to_be_bytes().to_vec(),
            });
            self.store.queue(m, true)
        };
        written.await.map_err(LogError::Storage)?;
        self.log_end.store(log_start, Ordering::Release);
        self.high_watermark.store(log_start, Ordering::Release);
        Ok(())
    }

    /// Reads whole stored batches from `offset` up to the durable log end (followers read
    /// past the high watermark). Blocking: call off the async reactor.
    pub fn read_for_replica(&self, offset: i64, max_bytes: usize) -> Result<Bytes, LogError> {
        let end = self.log_end();
        if offset >= end {
            return Ok(Bytes::new());
        }
        Ok(self.store.read_records(self.uid, offset, end, max_bytes)?)
    }

    /// `(base offset, last offset, leader epoch, crc)` of every stored batch up to the log
    /// end, to compare replicas. Blocking.
    pub fn batch_summaries(&self) -> Result<Vec<(i64, i64, i32, u32)>, LogError> {
        let start = self.lock().log_start;
        Ok(self
            .store
            .read_batches(self.uid, start, self.log_end(), usize::MAX)?
            .iter()
            .filter_map(|b| {
                let h = batch::parse_header(b).ok()?;
                Some((
                    h.base_offset,
                    h.last_offset(),
                    h.leader_epoch,
                    batch::stored_crc(b)?,
                ))
            })
            .collect())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave offsets half-updated in a way a
        // reader could misuse, so keep serving rather than poison every later request.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current log start offset and high watermark.
    pub fn offsets(&self) -> Offsets {
        let log_start = self.lock().log_start;
        Offsets {
            log_start,
            high_watermark: self.high_watermark.load(Ordering::Acquire),
        }
    }

    /// Bytes of batches currently stored.
    pub fn size_bytes(&self) -> u64 {
        self.lock().segments.values().map(|s| s.bytes).sum()
    }

    /// Appends one validated batch written by this broker (markers, the coordinators'
    /// records); `sync` asks for a WAL sync before it counts as written.
    pub fn append(
        self: &Arc<Self>,
        raw: &[u8],
        header: &BatchHeader,
        cfg: &TopicConfig,
        sync: bool,
    ) -> AppendOutcome {
        self.append_checked(raw, header, cfg, sync, None)
    }

    /// Starts verifying a producer's transactional batch with its coordinator (KIP-890):
    /// `None` when its transaction is open here already, else the guard to append with.
    pub fn begin_txn_verification(&self, producer_id: i64) -> Option<u64> {
        self.lock().txns.begin_verification(producer_id)
    }

    /// Drops a guard whose verification failed.
    pub fn end_txn_verification(&self, producer_id: i64, guard: u64) {
        self.lock().txns.end_verification(producer_id, guard);
    }

    /// Appends a client's batch. A transactional batch may open its producer's
    /// transaction here only with the guard of a verification that no marker has voided
    /// since (`txn_guard`: `Some(guard)`, or `Some(None)` for a check that was not made).
    pub fn append_produced(
        self: &Arc<Self>,
        raw: &[u8],
        header: &BatchHeader,
        cfg: &TopicConfig,
        sync: bool,
        txn_guard: Option<u64>,
    ) -> AppendOutcome {
        self.append_checked(raw, header, cfg, sync, Some(txn_guard))
    }

    fn append_checked(
        self: &Arc<Self>,
        raw: &[u8],
        header: &BatchHeader,
        cfg: &TopicConfig,
        sync: bool,
        txn_guard: Option<Option<u64>>,
    ) -> AppendOutcome {
        let now = now_ms();
        if !cfg.log_append_time {
            let ts = header.max_timestamp;
            if ts >= 0
                && (now.saturating_sub(ts) > cfg.timestamp_before_max_ms
                    || ts.saturating_sub(now) > cfg.timestamp_after_max_ms)
            {
                return AppendOutcome::Done(Err(LogError::InvalidTimestamp(ts)));
            }
        }
        let mut st = self.lock();
        if st.role != Role::Leader {
            return AppendOutcome::Done(Err(LogError::NotLeader));
        }
        if let Some(guard) = txn_guard {
            if header.is_transactional() && !st.txns.verified(header.producer_id, guard) {
                return AppendOutcome::Done(Err(LogError::InvalidTxnState));
            }
        }
        let marker = control_marker(header, raw);
        let current = st.producers.get(&header.producer_id);
        let check = if header.is_control() || (header.is_idempotent() && header.base_sequence < 0) {
            // Markers and the coordinator's transactional offset commits carry no
            // sequence: they only must not come from a fenced producer or coordinator.
            ProducerState::check_unsequenced(
                current,
                header.producer_epoch,
                marker.map(|m| m.coordinator_epoch),
            )
        } else if header.is_idempotent() {
            ProducerState::check(
                current,
                header.producer_epoch,
                header.base_sequence,
                header.last_sequence(),
            )
        } else {
            SeqCheck::Append
        };
        match check {
            SeqCheck::Append => {}
            SeqCheck::Duplicate(base_offset) => {
                return AppendOutcome::Done(Ok(Appended {
                    base_offset,
                    log_append_time: -1,
                    log_start_offset: st.log_start,
                }))
            }
            SeqCheck::Fenced => return AppendOutcome::Done(Err(LogError::InvalidProducerEpoch)),
            SeqCheck::CoordinatorFenced => {
                return AppendOutcome::Done(Err(LogError::CoordinatorFenced))
            }
            SeqCheck::OutOfOrder => {
                tracing::warn!(
                    topic = %self.topic,
                    partition = self.index,
                    producer_id = header.producer_id,
                    epoch = header.producer_epoch,
                    first_seq = header.base_sequence,
                    last_seq = header.last_sequence(),
                    known = ?current,
                    "out-of-order sequence refused"
                );
                return AppendOutcome::Done(Err(LogError::OutOfOrderSequence));
            }
        }
        let base = st.next_offset;
        let last = base + i64::from(header.last_offset_delta);
        let mut stored = batch::stamped_copy(raw, base, st.leader_epoch);
        let (log_append_time, max_ts) = if cfg.log_append_time {
            batch::set_log_append_time(&mut stored, now);
            (now, now)
        } else {
            (-1, header.max_timestamp)
        };
        let size = stored.len() as u64;

        // Roll a new segment when the active one is full or old.
        let (seg_base, mut seg) = match st.segments.iter().next_back() {
            Some((&b, s))
                if s.bytes + size <= cfg.segment_bytes
                    && now - s.created_ms < cfg.segment_ms - segment_jitter(b, cfg) =>
            {
                (b, *s)
            }
            _ => (
                base,
                SegmentMeta {
                    last_offset: base,
                    bytes: 0,
                    max_timestamp: -1,
                    created_ms: now,
                },
            ),
        };
        seg.last_offset = last;
        seg.bytes += size;
        seg.max_timestamp = seg.max_timestamp.max(max_ts);

        let mut mutations = vec![
            Mutation::Put {
                cf: CF_LOG,
                key: log_key(self.uid, base).to_vec(),
                value: stored,
            },
            Mutation::Put {
                cf: CF_INDEX,
                key: log_key(self.uid, seg_base).to_vec(),
                value: seg.encode().to_vec(),
            },
        ];
        mutations.extend(self.record_producer(&mut st, header, marker, base, now));
        mutations.extend(self.note_txn(&mut st, header, marker, base));
        // `flush.messages` / `flush.ms` ask for a sync beyond the broker's fsync policy.
        st.unsynced_records += i64::from(header.record_count);
        let sync = sync
            || st.unsynced_records >= cfg.flush_messages
            || now.saturating_sub(st.last_sync_ms) >= cfg.flush_ms;
        if sync {
            st.unsynced_records = 0;
            st.last_sync_ms = now;
        }
        st.segments.insert(seg_base, seg);
        st.next_offset = last + 1;
        let info = Appended {
            base_offset: base,
            log_append_time,
            log_start_offset: st.log_start,
        };
        let (tx, rx) = oneshot::channel();
        let this = Arc::clone(self);
        // Submitting under the lock keeps storage order equal to offset order.
        self.store.submit(
            mutations,
            sync,
            Box::new(move |res| {
                let out = match res {
                    Ok(()) => {
                        this.log_end.fetch_max(last + 1, Ordering::AcqRel);
                        // Wakes followers waiting for data even before the HW moves.
                        this.notify.notify_waiters();
                        this.advance_high_watermark();
                        Ok(info)
                    }
                    Err(e) => Err(LogError::Storage(e)),
                };
                let _ = tx.send(out);
            }),
        );
        drop(st);
        AppendOutcome::Pending(rx)
    }

    /// Reads whole batches from `offset` up to the high watermark (`committed`: up to the
    /// last stable offset), at most about `max_bytes` (the first batch is returned whole).
    /// An offset past the high watermark but within the log is in range and reads nothing:
    /// a new leader learns the high watermark its predecessor reached only from its
    /// followers' next fetches, and a consumer already there must wait, not reset.
    /// Blocking: call off the async reactor.
    pub fn read(&self, offset: i64, max_bytes: usize, committed: bool) -> Result<Bytes, LogError> {
        let Offsets {
            log_start,
            high_watermark,
        } = self.offsets();
        if offset < log_start || offset > high_watermark.max(self.log_end()) {
            return Err(LogError::OffsetOutOfRange);
        }
        let end = if committed {
            self.last_stable_offset()
        } else {
            high_watermark
        };
        if offset >= end {
            return Ok(Bytes::new());
        }
        Ok(self.store.read_records(self.uid, offset, end, max_bytes)?)
    }

    /// Last stable offset: the first offset of the oldest open transaction, or the high
    /// watermark when none is open.
    pub fn last_stable_offset(&self) -> i64 {
        let first_open = self.lock().txns.first_unstable();
        let hw = self.high_watermark.load(Ordering::Acquire);
        first_open.map_or(hw, |f| f.min(hw))
    }

    /// Aborted transactions with records in `[from, to]` (for `read_committed` fetches).
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<Aborted> {
        self.lock().txns.aborted_in(from, to)
    }

    /// Producers with a transaction open here, with its first offset.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.lock()
            .txns
            .open
            .iter()
            .map(|(&p, &f)| (p, f))
            .collect()
    }

    /// Idempotent and transactional producers known here, each with the first offset of
    /// its open transaction (for DescribeProducers).
    pub fn producers(&self) -> Vec<(i64, ProducerState, Option<i64>)> {
        let st = self.lock();
        st.producers
            .iter()
            .map(|(&id, ps)| (id, ps.clone(), st.txns.open.get(&id).copied()))
            .collect()
    }

    /// First record with a timestamp at or after `ts` (offset, timestamp). Blocking.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        let (segments, log_start) = {
            let st = self.lock();
            (st.segments.clone(), st.log_start)
        };
        let hw = self.high_watermark.load(Ordering::Acquire);
        for (&seg_base, seg) in segments.iter().filter(|(_, s)| s.max_timestamp >= ts) {
            for b in self
                .store
                .read_batches(self.uid, seg_base.max(log_start), hw, usize::MAX)?
            {
                let Ok(h) = batch::parse_header(&b) else {
                    continue;
                };
                if h.base_offset > seg.last_offset {
                    break;
                }
                if h.max_timestamp < ts {
                    continue;
                }
                if let Some(found) = record_at_or_after(b, &h, log_start, |t| t >= ts) {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// The record holding the largest timestamp (offset, timestamp). Blocking.
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        let (max, seg_base, log_start) = {
            let st = self.lock();
            let Some((b, s)) = st
                .segments
                .iter()
                .max_by_key(|(b, s)| (s.max_timestamp, -**b))
            else {
                return Ok(None);
            };
            (s.max_timestamp, *b, st.log_start)
        };
        let hw = self.high_watermark.load(Ordering::Acquire);
        for b in self
            .store
            .read_batches(self.uid, seg_base.max(log_start), hw, usize::MAX)?
        {
            let Ok(h) = batch::parse_header(&b) else {
                continue;
            };
            if h.max_timestamp == max {
                return Ok(record_at_or_after(b, &h, log_start, |t| t == max));
            }
        }
        Ok(None)
    }

    /// Deletes whole segments expired by retention; returns the new log start if it moved.
    pub async fn apply_retention(&self, cfg: &TopicConfig) -> Result<Option<i64>, LogError> {
        let now = now_ms();
        let (mutations, new_start) = {
            let mut st = self.lock();
            let hw = self.high_watermark.load(Ordering::Acquire);
            let mut total: u64 = st.segments.values().map(|s| s.bytes).sum();
            let mut doomed = Vec::new();
            for (&base, seg) in &st.segments {
                // Only fully written segments; the active one too once all of it expired.
                let written = seg.last_offset < hw;
                let by_time = cfg.retention_ms >= 0
                    && seg.max_timestamp >= 0
                    && now - seg.max_timestamp > cfg.retention_ms;
                let is_active = st.segments.keys().next_back() == Some(&base);
                let by_size = cfg.retention_bytes >= 0
                    && !is_active
                    && total.saturating_sub(seg.bytes) >= cfg.retention_bytes as u64;
                if written && (by_time || by_size) {
                    doomed.push(base);
                    total -= seg.bytes;
                } else {
                    break;
                }
            }
            let Some(&last_doomed) = doomed.last() else {
                return Ok(None);
            };
            let new_start = st.segments[&last_doomed].last_offset + 1;
            let mutations = self.truncate_front(&mut st, &doomed, new_start);
            (mutations, new_start)
        };
        self.store
            .write(mutations, false)
            .await
            .map_err(LogError::Storage)?;
        Ok(Some(new_start))
    }

    /// One compaction pass (`cleanup.policy` with `compact`) when the cleanable range (below
    /// the active segment, the last stable offset and `min.compaction.lag.ms`) is dirty
    /// enough.
    /// Returns the dirt it found and, when it cleaned, the bytes before and after.
    /// Blocking (reads and rewrites batches): call it from `spawn_blocking`.
    pub fn compact(&self, cfg: &TopicConfig) -> Result<(Dirt, Option<(u64, u64)>), LogError> {
        let now = now_ms();
        let bad = |e: batch::BatchError| LogError::BadBatch(e.to_string());
        let (log_start, active, cleaned_to, aborted) = {
            let st = self.lock();
            let active = st
                .segments
                .keys()
                .next_back()
                .copied()
                .unwrap_or(st.log_start);
            let aborted = compaction::AbortedRanges::new(
                st.txns
                    .aborted
                    .iter()
                    .map(|(&marker, a)| (a.producer_id, a.first_offset, marker)),
            );
            (st.log_start, active, st.cleaned_to, aborted)
        };
        // Open transactions may still abort: nothing from the first of them on is cleaned.
        let stable = self.last_stable_offset();
        let lag_limit = now.saturating_sub(cfg.min_compaction_lag_ms);
        // First pass: the cleanable range, its dirt, and the latest offset of every key.
        let mut latest = HashMap::new();
        let mut dirt = Dirt {
            dirty_bytes: 0,
            total_bytes: 0,
            oldest_dirty_ms: -1,
        };
        let mut end = log_start;
        let mut from = log_start;
        'scan: while from < active.min(stable) {
            let chunk =
                self.store
                    .read_batches(self.uid, from, active.min(stable), CLEANER_READ_BYTES)?;
            if chunk.is_empty() {
                break;
            }
            for b in &chunk {
                let h = batch::parse_header(b).map_err(bad)?;
                if h.max_timestamp > lag_limit || h.last_offset() >= stable {
                    break 'scan;
                }
                compaction::note_keys(&mut latest, b, &aborted).map_err(bad)?;
                dirt.total_bytes += b.len() as u64;
                if h.base_offset >= cleaned_to {
                    dirt.dirty_bytes += b.len() as u64;
                    if dirt.oldest_dirty_ms < 0 || h.base_timestamp < dirt.oldest_dirty_ms {
                        dirt.oldest_dirty_ms = h.base_timestamp;
                    }
                }
                end = h.last_offset() + 1;
            }
            from = end;
        }
        if !dirt.due(
            cfg.min_cleanable_dirty_ratio,
            cfg.max_compaction_lag_ms,
            now,
        ) {
            return Ok((dirt, None));
        }
        // Second pass: each batch kept, rewritten or dropped; segment sizes follow.
        let mut fates = Vec::new();
        let (mut before, mut after) = (0u64, 0u64);
        let mut from = log_start;
        while from < end {
            let chunk = self
                .store
                .read_batches(self.uid, from, end, CLEANER_READ_BYTES)?;
            let Some(last) = chunk.last() else {
                break;
            };
            from = batch::parse_header(last).map_err(bad)?.last_offset() + 1;
            for b in chunk {
                let base = batch::parse_header(&b).map_err(bad)?.base_offset;
                let fate = compaction::clean(&b, &latest, &aborted, now, cfg.delete_retention_ms)
                    .map_err(bad)?;
                before += b.len() as u64;
                after += match &fate {
                    Fate::Keep => b.len() as u64,
                    Fate::Rewrite(n) => n.len() as u64,
                    Fate::Drop => 0,
                };
                if fate != Fate::Keep {
                    fates.push((base, b.len() as u64, fate));
                }
            }
        }
        let written = {
            let mut st = self.lock();
            let mut mutations = Vec::new();
            let mut segments = Vec::new();
            // Batches deleted or truncated meanwhile stay gone.
            let live = st.log_start..st.next_offset;
            for (base, old, fate) in fates.into_iter().filter(|(b, _, _)| live.contains(b)) {
                let Some((&seg_base, seg)) = st.segments.range_mut(..=base).next_back() else {
                    continue;
                };
                let key = log_key(self.uid, base).to_vec();
                seg.bytes = seg.bytes.saturating_sub(old);
                match fate {
                    Fate::Rewrite(value) => {
                        seg.bytes += value.len() as u64;
                        mutations.push(Mutation::Put {
                            cf: CF_LOG,
                            key,
                            value,
                        });
                    }
                    _ => mutations.push(Mutation::Delete { cf: CF_LOG, key }),
                }
                segments.push(seg_base);
            }
            segments.dedup();
            for seg_base in segments {
                if let Some(seg) = st.segments.get(&seg_base) {
                    mutations.push(Mutation::Put {
                        cf: CF_INDEX,
                        key: log_key(self.uid, seg_base).to_vec(),
                        value: seg.encode().to_vec(),
                    });
                }
            }
            st.cleaned_to = st.cleaned_to.max(end);
            self.store.queue(mutations, false)
        };
        // (On a blocking thread of the runtime, see the doc line.)
        tokio::runtime::Handle::current()
            .block_on(written)
            .map_err(LogError::Storage)?;
        Ok((dirt, Some((before, after))))
    }

    /// Moves the log start to `offset` (-1: the high watermark), deleting whole segments below it.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, LogError> {
        let hw = self.high_watermark.load(Ordering::Acquire);
        let target = if offset == -1 { hw } else { offset };
        let mutations = {
            let mut st = self.lock();
            if target < 0 || target > hw {
                return Err(LogError::OffsetOutOfRange);
            }
            if target <= st.log_start {
                return Ok(st.log_start);
            }
            let doomed: Vec<i64> = st
                .segments
                .iter()
                .filter(|(_, s)| s.last_offset < target)
                .map(|(b, _)| *b)
                .collect();
            self.truncate_front(&mut st, &doomed, target)
        };
        self.store
            .write(mutations, true)
            .await
            .map_err(LogError::Storage)?;
        Ok(target)
    }

    fn truncate_front(&self, st: &mut State, doomed: &[i64], new_start: i64) -> Vec<Mutation> {
        let mut mutations = Vec::new();
        for base in doomed {
            if let Some(seg) = st.segments.remove(base) {
                mutations.push(Mutation::DeleteRange {
                    cf: CF_LOG,
                    from: log_key(self.uid, *base).to_vec(),
                    to: log_key(self.uid, seg.last_offset + 1).to_vec(),
                });
                mutations.push(Mutation::Delete {
                    cf: CF_INDEX,
                    key: log_key(self.uid, *base).to_vec(),
                });
            }
        }
        st.log_start = st.log_start.max(new_start);
        mutations.push(Mutation::Put {
            cf: CF_META,
            key: meta_key(b's', self.uid),
            value: st.log_start.to_be_bytes().to_vec(),
        });
        let gone: Vec<i64> = st
            .txns
            .aborted
            .range(..st.log_start)
            .map(|(&at, _)| at)
            .collect();
        st.txns.trim(st.log_start);
        mutations.extend(gone.into_iter().map(|at| Mutation::Delete {
            cf: CF_META,
            key: aborted_txn_key(self.uid, at),
        }));
        mutations
    }

    /// Mutations that erase everything this partition stored.
    pub fn erase_mutations(&self) -> Vec<Mutation> {
        let (lo, hi) = partition_bounds(self.uid);
        vec![
            Mutation::DeleteRange {
                cf: CF_LOG,
                from: lo.clone(),
                to: hi.clone(),
            },
            Mutation::DeleteRange {
                cf: CF_INDEX,
                from: lo,
                to: hi,
            },
            Mutation::DeleteRange {
                cf: CF_META,
                from: meta_key(b'p', self.uid),
                to: meta_key(b'p', self.uid.wrapping_add(1)),
            },
            Mutation::DeleteRange {
                cf: CF_META,
                from: meta_key(OPEN_TXN_TAG, self.uid),
                to: meta_key(OPEN_TXN_TAG, self.uid.wrapping_add(1)),
            },
            Mutation::DeleteRange {
                cf: CF_META,
                from: meta_key(b'a', self.uid),
                to: meta_key(b'a', self.uid.wrapping_add(1)),
            },
            Mutation::Delete {
                cf: CF_META,
                key: meta_key(b's', self.uid),
            },
        ]
    }
}

/// Bytes the cleaner reads at a time.
const CLEANER_READ_BYTES: usize = 8 << 20;

/// Segment size on followers (they do not know the topic config; retention on a
/// follower deletes whole segments as on the leader, so keep them comparable).
const SEGMENT_BYTES_FOLLOWER: u64 = 256 << 20;

/// Kafka's end-offset-for-epoch over an epoch history.
fn end_offset_for(st: &State, epoch: i32, log_end: i64) -> (i32, i64) {
    match st.epochs.range(..=epoch).next_back() {
        None => (-1, -1),
        Some((&e, _)) => {
            let end = st
                .epochs
                .range(e + 1..)
                .next()
                .map(|(_, &s)| s)
                .unwrap_or(log_end);
            (e, end)
        }
    }
}

/// Finds the first record in `batch` at or after `log_start` whose timestamp matches.
fn record_at_or_after(
    mut raw: Bytes,
    h: &BatchHeader,
    log_start: i64,
    want: impl Fn(i64) -> bool,
) -> Option<(i64, i64)> {
    if h.attributes & ATTR_LOG_APPEND_TIME != 0 {
        let offset = h.base_offset.max(log_start);
        return want(h.max_timestamp).then_some((offset, h.max_timestamp));
    }
    let set = RecordBatchDecoder::decode(&mut raw).ok()?;
    set.records
        .iter()
        .find(|r| r.offset >= log_start && want(r.timestamp))
        .map(|r| (r.offset, r.timestamp))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use riffle_client::{encode_batch, NewRecord};

    use super::*;
    use crate::configs::broker::BrokerConfigs;

    fn state(isr: &[i32], partition_epoch: i32) -> PartitionState {
        PartitionState {
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            leader: 1,
            leader_epoch: 0,
            partition_epoch,
            elr: Vec::new(),
            adding: Vec::new(),
            removing: Vec::new(),
            before: Vec::new(),
        }
    }

    /// An empty partition in a fresh store (kept while the returned directory lives),
    /// with default topic configs.
    fn new_partition() -> (tempfile::TempDir, Arc<Partition>, TopicConfig) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let part = Arc::new(
            Partition::load("t".into(), 0, 7, store, Arc::new(Notify::new())).expect("load"),
        );
        let cfg = TopicConfig::resolve(&BTreeMap::new(), &BrokerConfigs::default());
        (dir, part, cfg)
    }

    async fn append_ten(part: &Arc<Partition>, cfg: &TopicConfig) {
        let recs: Vec<NewRecord> = (0..10)
            .map(|_| NewRecord {
                key: None,
                value: Some(Bytes::from_static(b"v")),
                timestamp: now_ms(),
            })
            .collect();
        let raw =
            encode_batch(&recs, kafka_protocol::records::Compression::None, None).expect("encode");
        let header = batch::parse_header(&raw).expect("header");
        part.append(&raw, &header, cfg, false)
            .wait()
            .await
            .expect("append");
    }

    /// The leader's view of the partition is re-applied on every metadata change in the
    /// cluster; a re-application must not forget an ISR expansion on its way to the
    /// controller, or the high watermark passes a replica that is about to join the ISR
    /// (and may then be elected without records acknowledged meanwhile).
    #[tokio::test]
    async fn a_pending_isr_expansion_holds_the_high_watermark_until_settled() {
        let (_dir, part, cfg) = new_partition();
        let lag = Duration::from_secs(30);
        part.apply_state(1, &state(&[1, 2], 0), 1);
        append_ten(&part, &cfg).await;
        for follower in [2, 3] {
            part.follower_fetch(follower, 0, 10, 10, 0).expect("fetch");
        }
        assert_eq!(part.offsets().high_watermark, 10);

        let change = part.isr_change_due(1, lag).expect("replica 3 caught up");
        assert_eq!(change.isr, vec![1, 2, 3]);
        append_ten(&part, &cfg).await;
        // Unchanged state applied again (another partition changed), then 2 catches up.
        part.apply_state(1, &state(&[1, 2], 0), 1);
        part.follower_fetch(2, 0, 20, 20, 0).expect("fetch");
        assert!(part.isr_change_pending(&change));
        assert_eq!(part.offsets().high_watermark, 10, "waits for replica 3");

        // A refusal for good settles it: the high watermark moves over the ISR again at
        // once (nothing else may come to move it).
        part.isr_change_refused(&change);
        assert_eq!(part.offsets().high_watermark, 20);

        // Proposed again and committed: the new state settles it.
        append_ten(&part, &cfg).await;
        part.follower_fetch(3, 0, 20, 20, 0).expect("fetch");
        let change = part.isr_change_due(1, lag).expect("replica 3 caught up");
        part.apply_state(1, &state(&[1, 2, 3], 1), 1);
        assert!(!part.isr_change_pending(&change));
        part.follower_fetch(2, 0, 30, 30, 0).expect("fetch");
        assert_eq!(part.offsets().high_watermark, 20, "3 is in the ISR");
    }

    /// A pipelined follower fetches again before its last append is durable: the high
    /// watermark counts only what it has written.
    #[tokio::test]
    async fn only_a_followers_durable_end_moves_the_high_watermark() {
        let (_dir, part, cfg) = new_partition();
        part.apply_state(1, &state(&[1, 2], 0), 1);
        append_ten(&part, &cfg).await;
        append_ten(&part, &cfg).await;
        part.follower_fetch(2, 0, 20, 10, 0).expect("fetch");
        assert_eq!(part.offsets().high_watermark, 10);
        part.follower_fetch(2, 0, 20, 20, 0).expect("progress");
        assert_eq!(part.offsets().high_watermark, 20);
    }

    /// The follower's side of the pipeline: the next fetch may start from the end of a
    /// queued append at once, while the log end (and with it the high watermark) moves
    /// only once the append is written.
    #[tokio::test]
    async fn a_queued_replicated_append_is_fetched_past_at_once_and_counted_once_written() {
        let (_d1, leader, cfg) = new_partition();
        leader.apply_state(1, &state(&[1, 2], 0), 1);
        append_ten(&leader, &cfg).await;
        let records = leader.read_for_replica(0, 1 << 20).expect("read");
        let (_d2, follower, _) = new_partition();
        follower.apply_state(2, &state(&[1, 2], 0), 1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let count = follower
            .append_replicated(records, true, 10, done)
            .expect("queued");
        assert_eq!(count, 1);
        assert_eq!(follower.fetch_position().0, 10);
        rx.await.expect("done").expect("written");
        assert_eq!(follower.log_end(), 10);
        assert_eq!(follower.offsets().high_watermark, 10);

        // A good batch followed by a cut one: refused whole, nothing moves.
        append_ten(&leader, &cfg).await;
        let good = leader.read_for_replica(10, 1 << 20).expect("read");
        let records = Bytes::from([&good[..], &good[..good.len() / 2]].concat());
        let never = Box::new(|_| panic!("a refused append reported written"));
        assert!(matches!(
            follower.append_replicated(records, true, 20, never),
            Err(LogError::BadBatch(_))
        ));
        assert_eq!(follower.fetch_position().0, 10);
    }

    /// Kafka answers OFFSET_OUT_OF_RANGE only outside the log: a consumer at an offset the
    /// previous leader had made visible waits on a new leader whose high watermark is
    /// still catching up, instead of resetting its position.
    #[tokio::test]
    async fn offsets_between_the_high_watermark_and_the_log_end_read_nothing() {
        let (_dir, part, cfg) = new_partition();
        part.apply_state(1, &state(&[1, 2], 0), 1);
        append_ten(&part, &cfg).await;
        part.follower_fetch(2, 0, 10, 10, 0).expect("fetch");
        append_ten(&part, &cfg).await;
        assert_eq!((part.offsets().high_watermark, part.log_end()), (10, 20));
        let read = part.read(5, 1 << 20, false).expect("read");
        assert_eq!(batch::split(&read).count(), 1);
        for offset in [10, 15, 20] {
            assert!(part
                .read(offset, 1 << 20, false)
                .expect("in range")
                .is_empty());
        }
        assert!(matches!(
            part.read(21, 1 << 20, false),
            Err(LogError::OffsetOutOfRange)
        ));
    }
}
