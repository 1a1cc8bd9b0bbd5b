//! One partition's log: offsets, segments, idempotent producer state, and its batches in storage.
//!
//! Offsets are assigned under the partition lock and the write is queued to the storage
//! writer in the same critical section, so batches reach storage in offset order. The
//! visible end of the log (the high watermark on a single node) only moves once the write
//! is durable per the fsync policy.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use tokio::sync::{oneshot, Notify};

use super::producer::{BatchSeq, ProducerState, SeqCheck};
use super::topic_config::TopicConfig;
use crate::protocol::batch::{self, BatchHeader, ATTR_LOG_APPEND_TIME};
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
    /// CreateTime timestamp outside the topic's accepted window.
    #[error("timestamp {0} is outside the accepted window")]
    InvalidTimestamp(i64),
    /// Offset below the log start or above the high watermark.
    #[error("offset out of range")]
    OffsetOutOfRange,
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

struct State {
    next_offset: i64,
    log_start: i64,
    segments: BTreeMap<i64, SegmentMeta>,
    producers: HashMap<i64, ProducerState>,
}

/// A partition of a topic.
pub struct Partition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub index: i32,
    /// Storage id, unique for the life of the store (never reused).
    pub uid: u64,
    /// Leader epoch (a single node stays at 0).
    pub leader_epoch: i32,
    store: Arc<Store>,
    notify: Arc<Notify>,
    high_watermark: AtomicI64,
    state: Mutex<State>,
}

fn meta_key(tag: u8, uid: u64) -> Vec<u8> {
    let mut k = vec![tag, b'/'];
    k.extend_from_slice(&uid.to_be_bytes());
    k
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
            leader_epoch: 0,
            store,
            notify,
            high_watermark: AtomicI64::new(end),
            state: Mutex::new(State {
                next_offset: end,
                log_start,
                segments,
                producers,
            }),
        })
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

    /// Appends one validated batch; `sync` asks for a WAL sync before it counts as written.
    pub fn append(
        self: &Arc<Self>,
        raw: &[u8],
        header: &BatchHeader,
        cfg: &TopicConfig,
        sync: bool,
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
        if header.is_idempotent() {
            let current = st.producers.get(&header.producer_id);
            match ProducerState::check(
                current,
                header.producer_epoch,
                header.base_sequence,
                header.last_sequence(),
            ) {
                SeqCheck::Append => {}
                SeqCheck::Duplicate(base_offset) => {
                    return AppendOutcome::Done(Ok(Appended {
                        base_offset,
                        log_append_time: -1,
                        log_start_offset: st.log_start,
                    }))
                }
                SeqCheck::Fenced => {
                    return AppendOutcome::Done(Err(LogError::InvalidProducerEpoch))
                }
                SeqCheck::OutOfOrder => {
                    return AppendOutcome::Done(Err(LogError::OutOfOrderSequence))
                }
            }
        }
        let base = st.next_offset;
        let last = base + i64::from(header.last_offset_delta);
        let mut stored = batch::stamped_copy(raw, base, self.leader_epoch);
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
                if s.bytes + size <= cfg.segment_bytes && now - s.created_ms < cfg.segment_ms =>
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
        if header.is_idempotent() {
            let prev = st.producers.remove(&header.producer_id);
            let ps = ProducerState::record(
                prev,
                header.producer_epoch,
                BatchSeq {
                    first_seq: header.base_sequence,
                    last_seq: header.last_sequence(),
                    base_offset: base,
                },
                now,
            );
            mutations.push(Mutation::Put {
                cf: CF_META,
                key: producer_key(self.uid, header.producer_id),
                value: ps.encode(),
            });
            st.producers.insert(header.producer_id, ps);
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
                        this.high_watermark.fetch_max(last + 1, Ordering::AcqRel);
                        this.notify.notify_waiters();
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

    /// Reads whole batches from `offset` up to the high watermark, at most about `max_bytes`
    /// (the first batch is returned whole). Blocking: call off the async reactor.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, LogError> {
        let Offsets {
            log_start,
            high_watermark,
        } = self.offsets();
        if offset < log_start || offset > high_watermark {
            return Err(LogError::OffsetOutOfRange);
        }
        if offset == high_watermark {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .read_batches(self.uid, offset, high_watermark, max_bytes)?)
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
            Mutation::Delete {
                cf: CF_META,
                key: meta_key(b's', self.uid),
            },
        ]
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
