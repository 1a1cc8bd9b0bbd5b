//! Log compaction decisions, pure: which partitions are worth cleaning, and what becomes
//! of each stored batch once the latest offset of every key is known. Only records below
//! the active segment, the last stable offset and `min.compaction.lag.ms` are cleaned.
//! Offsets never move: a batch keeps its base offset and last offset delta, dropped
//! records leave gaps, and a batch left with no record goes (producer state is stored
//! apart from the log). Records of aborted transactions go and never supersede a key's
//! committed value. Control batches stay as they are.

use std::collections::HashMap;

use bytes::Bytes;

use crate::protocol::batch::{parse_header, BatchError, BatchHeader, ATTR_LOG_APPEND_TIME};
use crate::protocol::records::read_records;

/// What the cleaner knows of the part of a log it may clean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dirt {
    /// Bytes of the cleanable range not cleaned since the broker started.
    pub dirty_bytes: u64,
    /// Bytes of the whole cleanable range.
    pub total_bytes: u64,
    /// Oldest first-record timestamp of the dirty batches (-1: none).
    pub oldest_dirty_ms: i64,
}

impl Dirt {
    /// Dirty share of the cleanable range (0 when it is empty).
    pub fn ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / self.total_bytes as f64
        }
    }

    /// Whether to clean now: dirty enough (`min.cleanable.dirty.ratio`), or a dirty record
    /// waited longer than `max.compaction.lag.ms`.
    pub fn due(&self, min_ratio: f64, max_lag_ms: i64, now_ms: i64) -> bool {
        self.dirty_bytes > 0
            && (self.ratio() >= min_ratio
                || (self.oldest_dirty_ms >= 0
                    && now_ms.saturating_sub(self.oldest_dirty_ms) > max_lag_ms))
    }
}

/// What becomes of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Unchanged.
    Keep,
    /// Rewritten with fewer records (same base offset and last offset delta).
    Rewrite(Vec<u8>),
    /// No record left.
    Drop,
}

/// Records whose keys the cleaner tracks.
type Latest = HashMap<Bytes, i64>;

/// The aborted transactions of the cleanable range: per producer, the offsets from its
/// first record to its abort marker.
#[derive(Debug, Clone, Default)]
pub struct AbortedRanges(HashMap<i64, Vec<(i64, i64)>>);

impl AbortedRanges {
    /// From `(producer, first offset, abort marker offset)` triples.
    pub fn new(aborted: impl IntoIterator<Item = (i64, i64, i64)>) -> Self {
        let mut by_producer: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for (producer, first, marker) in aborted {
            by_producer
                .entry(producer)
                .or_default()
                .push((first, marker));
        }
        for ranges in by_producer.values_mut() {
            ranges.sort_unstable();
        }
        AbortedRanges(by_producer)
    }

    /// Whether a transactional batch of `producer` at `offset` was aborted (one producer's
    /// transactions never overlap).
    fn contains(&self, producer: i64, offset: i64) -> bool {
        let Some(ranges) = self.0.get(&producer) else {
            return false;
        };
        let i = ranges.partition_point(|&(first, _)| first <= offset);
        i > 0 && offset < ranges[i - 1].1
    }

    fn aborted(&self, header: &BatchHeader) -> bool {
        header.is_transactional()
            && !header.is_control()
            && self.contains(header.producer_id, header.base_offset)
    }
}

/// Adds the keys of one batch to the latest offset of each key (aborted records have
/// none).
pub fn note_keys(
    latest: &mut Latest,
    batch: &[u8],
    aborted: &AbortedRanges,
) -> Result<(), BatchError> {
    let header = parse_header(batch)?;
    if header.is_control() || aborted.aborted(&header) {
        return Ok(());
    }
    for r in read_records(batch)?.records {
        if let Some(key) = r.key {
            latest.insert(key, header.base_offset + i64::from(r.offset_delta));
        }
    }
    Ok(())
}

/// A record's timestamp (the batch's for LogAppendTime).
fn timestamp(header: &BatchHeader, delta: i64) -> i64 {
    if header.attributes & ATTR_LOG_APPEND_TIME != 0 {
        header.max_timestamp
    } else {
        header.base_timestamp.saturating_add(delta)
    }
}

/// Cleans one batch: keeps keyless records and the latest record of each key, except
/// tombstones older than `delete_retention_ms`; an aborted batch goes whole.
pub fn clean(
    batch: &[u8],
    latest: &Latest,
    aborted: &AbortedRanges,
    now_ms: i64,
    delete_retention_ms: i64,
) -> Result<Fate, BatchError> {
    let header = parse_header(batch)?;
    if header.is_control() {
        return Ok(Fate::Keep);
    }
    if aborted.aborted(&header) {
        return Ok(Fate::Drop);
    }
    let records = read_records(batch)?;
    let keep = |r: &crate::protocol::records::Record| match &r.key {
        None => true,
        Some(key) => {
            let offset = header.base_offset + i64::from(r.offset_delta);
            latest.get(key) == Some(&offset)
                && !(r.value.is_none()
                    && now_ms.saturating_sub(timestamp(&header, r.timestamp_delta))
                        > delete_retention_ms)
        }
    };
    if !records.records.iter().any(keep) {
        return Ok(Fate::Drop);
    }
    Ok(match records.retain(batch, keep)? {
        None => Fate::Keep,
        Some(b) => Fate::Rewrite(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    const T0: i64 = 1_700_000_000_000;

    fn batch(base: i64, kv: &[(&str, Option<&str>)], ts: i64) -> Vec<u8> {
        txn_batch(base, kv, ts, None)
    }

    /// A batch, transactional for `producer` when given.
    fn txn_batch(
        base: i64,
        kv: &[(&str, Option<&str>)],
        ts: i64,
        producer: Option<i64>,
    ) -> Vec<u8> {
        let records: Vec<Record> = kv
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: producer.is_some(),
                control: false,
                partition_leader_epoch: 0,
                producer_id: producer.unwrap_or(-1),
                producer_epoch: if producer.is_some() { 0 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                // (The encoder starts a new batch where sequences do not follow.)
                sequence: i as i32,
                timestamp: ts,
                key: Some(Bytes::from(k.to_string())),
                value: v.map(|v| Bytes::from(v.to_string())),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Lz4,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    fn values(b: &[u8]) -> Vec<(i64, String, Option<String>)> {
        let mut bytes = Bytes::copy_from_slice(b);
        RecordBatchDecoder::decode(&mut bytes)
            .expect("decode")
            .records
            .into_iter()
            .map(|r| {
                let s = |b: Bytes| String::from_utf8_lossy(&b).into_owned();
                (r.offset, r.key.map(s).unwrap_or_default(), r.value.map(s))
            })
            .collect()
    }

    #[test]
    fn keeps_the_latest_record_per_key_at_its_offset() {
        let log = [
            batch(
                0,
                &[("k1", Some("a")), ("k2", Some("b")), ("k1", Some("c"))],
                T0,
            ),
            batch(3, &[("k3", Some("d")), ("k3", Some("e"))], T0),
            batch(5, &[("k2", Some("f")), ("k4", None)], T0),
        ];
        let mut latest = Latest::new();
        let none = AbortedRanges::default();
        for b in &log {
            note_keys(&mut latest, b, &none).expect("keys");
        }
        let fates: Vec<Fate> = log
            .iter()
            .map(|b| clean(b, &latest, &none, T0 + 1000, 86_400_000).expect("clean"))
            .collect();
        let Fate::Rewrite(first) = &fates[0] else {
            panic!("{:?}", fates[0]);
        };
        assert_eq!(values(first), [(2, "k1".into(), Some("c".into()))]);
        let h = parse_header(first).expect("header");
        assert_eq!(
            (h.base_offset, h.last_offset_delta, h.record_count),
            (0, 2, 1)
        );
        let Fate::Rewrite(second) = &fates[1] else {
            panic!("{:?}", fates[1]);
        };
        assert_eq!(values(second), [(4, "k3".into(), Some("e".into()))]);
        // Already the latest of its keys, the recent tombstone included.
        assert_eq!(fates[2], Fate::Keep);
        // Once the tombstone is older than delete.retention.ms it goes too; nothing left
        // of a batch whose every record is superseded.
        let later = clean(&log[2], &latest, &none, T0 + 86_400_001, 86_400_000).expect("clean");
        let Fate::Rewrite(third) = later else {
            panic!("{later:?}");
        };
        assert_eq!(values(&third), [(5, "k2".into(), Some("f".into()))]);
        latest.insert(Bytes::from("k2"), 99);
        latest.insert(Bytes::from("k4"), 99);
        assert_eq!(
            clean(&log[2], &latest, &none, T0, 1).expect("clean"),
            Fate::Drop
        );
    }

    #[test]
    fn aborted_records_go_and_never_supersede_a_committed_value() {
        let committed = txn_batch(0, &[("k1", Some("kept"))], T0, Some(9));
        let aborted = txn_batch(1, &[("k1", Some("aborted"))], T0, Some(9));
        let ranges = AbortedRanges::new([(9, 1, 2)]);
        assert!(ranges.contains(9, 1) && !ranges.contains(9, 2) && !ranges.contains(8, 1));
        let mut latest = Latest::new();
        for b in [&committed, &aborted] {
            note_keys(&mut latest, b, &ranges).expect("keys");
        }
        assert_eq!(latest.get(&Bytes::from("k1")), Some(&0));
        assert_eq!(
            clean(&committed, &latest, &ranges, T0, 1).expect("clean"),
            Fate::Keep
        );
        assert_eq!(
            clean(&aborted, &latest, &ranges, T0, 1).expect("clean"),
            Fate::Drop
        );
    }

    #[test]
    fn due_when_dirty_enough_or_waiting_too_long() {
        let d = Dirt {
            dirty_bytes: 40,
            total_bytes: 100,
            oldest_dirty_ms: T0,
        };
        assert!((d.ratio() - 0.4).abs() < 1e-9);
        assert!(!d.due(0.5, i64::MAX, T0 + 10));
        assert!(d.due(0.3, i64::MAX, T0 + 10));
        assert!(d.due(0.5, 5, T0 + 10), "max.compaction.lag.ms passed");
        let clean = Dirt {
            dirty_bytes: 0,
            ..d
        };
        assert!(!clean.due(0.0, 0, T0 + 10));
    }
}
