//! Record batch v2 header parsing and the few in-place edits the broker makes.
//!
//! The broker stores batches exactly as producers send them. Only the header
//! is parsed on the hot path; records are never decoded or re-encoded.

use bytes::Buf;

/// Size of the fixed record batch v2 header.
pub const HEADER_LEN: usize = 61;
/// Offset of the `batchLength` field; the length counts bytes after it.
pub(crate) const LENGTH_END: usize = 12;
const EPOCH_POS: usize = 12;
pub(crate) const CRC_POS: usize = 17;
pub(crate) const ATTR_POS: usize = 21;
const MAX_TS_POS: usize = 35;

/// Attribute bit: timestamps are broker append time.
pub const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
/// Attribute bit: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit: the batch holds control records.
pub const ATTR_CONTROL: i16 = 1 << 5;

/// Why a batch was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// The bytes are too short or the length fields are inconsistent.
    #[error("malformed record batch: {0}")]
    Malformed(&'static str),
    /// Magic byte is not 2.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// CRC-32C does not match.
    #[error("record batch CRC mismatch")]
    CorruptCrc,
    /// The records section could not be decompressed or compressed.
    #[error("record batch compression: {0}")]
    Compression(String),
}

/// Header fields of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (assigned by the broker).
    pub base_offset: i64,
    /// Whole batch size in bytes, header included.
    pub size: usize,
    /// Leader epoch stamped by the broker.
    pub leader_epoch: i32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Sequence number of the last record (wrapping like Kafka does).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }

    /// Whether the batch comes from an idempotent producer.
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }

    /// Whether the batch holds control records.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Whether the batch is part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
}

/// Parses the header of the batch at the start of `buf` without checking the CRC.
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Malformed("shorter than a batch header"));
    }
    let mut b = buf;
    let base_offset = b.get_i64();
    let batch_length = b.get_i32();
    if batch_length < (HEADER_LEN - LENGTH_END) as i32 {
        return Err(BatchError::Malformed("batch length too small"));
    }
    let size = LENGTH_END + batch_length as usize;
    let leader_epoch = b.get_i32();
    let magic = b.get_i8();
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    let _crc = b.get_u32();
    let attributes = b.get_i16();
    let last_offset_delta = b.get_i32();
    let base_timestamp = b.get_i64();
    let max_timestamp = b.get_i64();
    let producer_id = b.get_i64();
    let producer_epoch = b.get_i16();
    let base_sequence = b.get_i32();
    let record_count = b.get_i32();
    if last_offset_delta < 0 || record_count < 0 {
        return Err(BatchError::Malformed(
            "negative record count or offset delta",
        ));
    }
    Ok(BatchHeader {
        base_offset,
        size,
        leader_epoch,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    })
}

/// The whole batches stored back to back in `records`, each with its header, as views
/// into the same buffer (no copy). Stops at the first malformed or cut batch.
pub fn split(records: &bytes::Bytes) -> impl Iterator<Item = (BatchHeader, bytes::Bytes)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let h = parse_header(&records[at..]).ok()?;
        if h.size > records.len() - at {
            return None;
        }
        let batch = records.slice(at..at + h.size);
        at += h.size;
        Some((h, batch))
    })
}

/// The CRC-32C stored in a batch header (covers everything from the attributes on).
pub fn stored_crc(buf: &[u8]) -> Option<u32> {
    let b = buf.get(CRC_POS..CRC_POS + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Validates a produced record set: exactly one v2 batch, consistent sizes and a good CRC.
pub fn validate_produced(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate_stored(buf)?;
    if i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1 {
        return Err(BatchError::Malformed(
            "record count does not match last offset delta",
        ));
    }
    Ok(header)
}

/// Validates one stored (replicated) batch: as [`validate_produced`], except that
/// compaction may have left fewer records than the batch's offset range spans.
pub fn validate_stored(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(buf)?;
    if header.size != buf.len() {
        return Err(BatchError::Malformed(
            "record set must hold exactly one whole batch",
        ));
    }
    if header.record_count == 0 {
        return Err(BatchError::Malformed("empty batch"));
    }
    if i64::from(header.record_count) > i64::from(header.last_offset_delta) + 1 {
        return Err(BatchError::Malformed(
            "more records than the last offset delta allows",
        ));
    }
    let stored = u32::from_be_bytes([
        buf[CRC_POS],
        buf[CRC_POS + 1],
        buf[CRC_POS + 2],
        buf[CRC_POS + 3],
    ]);
    if crc32c::crc32c(&buf[ATTR_POS..]) != stored {
        return Err(BatchError::CorruptCrc);
    }
    Ok(header)
}

/// Stamps the broker-assigned base offset and leader epoch (both outside the CRC).
pub fn stamp(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[EPOCH_POS..EPOCH_POS + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Switches a batch to LogAppendTime with the given time and recomputes its CRC.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attrs = i16::from_be_bytes([batch[ATTR_POS], batch[ATTR_POS + 1]]) | ATTR_LOG_APPEND_TIME;
    batch[ATTR_POS..ATTR_POS + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TS_POS..MAX_TS_POS + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTR_POS..]);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Copies `batch` and stamps it, producing the bytes to store.
pub fn stamped_copy(batch: &[u8], base_offset: i64, leader_epoch: i32) -> Vec<u8> {
    let mut out = batch.to_vec();
    stamp(&mut out, base_offset, leader_epoch);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    /// Encodes `n` small records as one v2 batch.
    pub(crate) fn sample_batch(n: i32, compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                sequence: i,
                timestamp: 1_700_000_000_000 + i64::from(i),
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("value-{i}"))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        encode(&records, compression)
    }

    /// Encodes records as one v2 batch.
    pub(crate) fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    #[test]
    fn parses_and_validates_a_client_batch() {
        for c in [Compression::None, Compression::Gzip, Compression::Lz4] {
            let b = sample_batch(5, c);
            let h = validate_produced(&b).expect("valid");
            assert_eq!(h.record_count, 5);
            assert_eq!(h.last_offset_delta, 4);
            assert_eq!(h.size, b.len());
            assert_eq!(h.max_timestamp, 1_700_000_000_004);
        }
    }

    #[test]
    fn splits_back_to_back_batches_and_stops_at_a_cut_one() {
        let (a, b) = (
            sample_batch(2, Compression::None),
            sample_batch(3, Compression::None),
        );
        let all = Bytes::from([&a[..], &b[..], &a[..10]].concat());
        let parts: Vec<_> = split(&all).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].0.record_count, &parts[0].1[..]), (2, &a[..]));
        assert_eq!((parts[1].0.record_count, &parts[1].1[..]), (3, &b[..]));
    }

    #[test]
    fn rejects_bad_crc_truncation_and_trailing_bytes() {
        let mut b = sample_batch(3, Compression::None);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert_eq!(validate_produced(&b), Err(BatchError::CorruptCrc));
        let b = sample_batch(3, Compression::None);
        assert!(matches!(
            validate_produced(&b[..b.len() - 1]),
            Err(BatchError::Malformed(_))
        ));
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(
            validate_produced(&extra),
            Err(BatchError::Malformed(_))
        ));
        assert!(matches!(
            validate_produced(&b[..10]),
            Err(BatchError::Malformed(_))
        ));
    }

    #[test]
    fn stamping_keeps_the_crc_valid_and_records_decodable() {
        let b = sample_batch(4, Compression::Snappy);
        let stamped = stamped_copy(&b, 1000, 7);
        let h = validate_produced(&stamped).expect("crc still valid");
        assert_eq!(h.base_offset, 1000);
        assert_eq!(h.leader_epoch, 7);
        let mut bytes = Bytes::from(stamped);
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![1000, 1001, 1002, 1003]);
    }

    #[test]
    fn log_append_time_rewrites_max_timestamp_and_crc() {
        let mut b = sample_batch(2, Compression::None);
        set_log_append_time(&mut b, 42);
        let h = validate_produced(&b).expect("crc recomputed");
        assert_eq!(h.max_timestamp, 42);
        assert!(h.attributes & ATTR_LOG_APPEND_TIME != 0);
    }

    #[test]
    fn last_sequence_wraps() {
        let mut h = parse_header(&sample_batch(3, Compression::None)).expect("header");
        h.base_sequence = i32::MAX;
        assert_eq!(h.last_sequence(), 1);
    }
}
