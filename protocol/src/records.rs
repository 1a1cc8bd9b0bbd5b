//! Record-level reading and rewriting of v2 batches, for log compaction: which records a
//! batch holds (offset, key, value) and the same batch with only some
//! of them. A rewritten batch keeps its base offset, last offset delta, timestamps,
//! producer id, epoch and base sequence and its codec, so offsets never move and
//! idempotence state stays valid; record count, length and CRC are recomputed.

use std::ops::Range;

use bytes::Bytes;

use crate::batch::{
    parse_header, BatchError, BatchHeader, ATTR_POS, CRC_POS, HEADER_LEN, LENGTH_END,
};
use crate::compress::{compress, decompress, Codec, Target};

/// Position of the record count in the batch header.
const COUNT_POS: usize = 57;

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone on a compacted topic.
    pub value: Option<Bytes>,
    /// Where the whole record lies in the decompressed records section.
    span: Range<usize>,
}

/// A batch's header and records, decompressed.
#[derive(Debug, Clone)]
pub struct Records {
    /// The batch header.
    pub header: BatchHeader,
    /// The records, in order.
    pub records: Vec<Record>,
    codec: Codec,
    raw: Bytes,
}

fn malformed(what: &'static str) -> BatchError {
    BatchError::Malformed(what)
}

/// A zigzag varint (Kafka's varint and varlong).
fn varint(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos).ok_or(malformed("truncated varint"))?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(malformed("varint too long"))
}

/// `len` bytes at `pos` (`None` for a null, length -1).
fn bytes_field(raw: &Bytes, pos: &mut usize) -> Result<Option<Bytes>, BatchError> {
    let len = varint(raw, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos
        .checked_add(usize::try_from(len).map_err(|_| malformed("field length"))?)
        .filter(|&e| e <= raw.len())
        .ok_or(malformed("field past the end of the records"))?;
    let out = raw.slice(*pos..end);
    *pos = end;
    Ok(Some(out))
}

/// Reads every record of a batch (decompressing it).
pub fn read_records(batch: &[u8]) -> Result<Records, BatchError> {
    let header = parse_header(batch)?;
    let codec = Codec::from_attributes(header.attributes)?;
    let section = batch
        .get(HEADER_LEN..header.size)
        .ok_or(malformed("batch shorter than its length"))?;
    let raw = decompress(codec, section)?;
    let mut records = Vec::with_capacity(header.record_count.max(0) as usize);
    let mut pos = 0;
    for _ in 0..header.record_count {
        let record_start = pos;
        let len = varint(&raw, &mut pos)?;
        let start = pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= raw.len())
            .ok_or(malformed("record past the end of the records"))?;
        pos += 1; // attributes
        let timestamp_delta = varint(&raw, &mut pos)?;
        let offset_delta =
            i32::try_from(varint(&raw, &mut pos)?).map_err(|_| malformed("offset delta"))?;
        let key = bytes_field(&raw, &mut pos)?;
        let value = bytes_field(&raw, &mut pos)?;
        if pos > end {
            return Err(malformed("record longer than its length"));
        }
        records.push(Record {
            offset_delta,
            timestamp_delta,
            key,
            value,
            span: record_start..end,
        });
        pos = end;
    }
    Ok(Records {
        header,
        records,
        codec,
        raw,
    })
}

impl Records {
    /// The original batch with only the records `keep` accepts, or `None` when it keeps
    /// them all. Compressed again with the batch's codec (default level).
    pub fn retain(
        &self,
        batch: &[u8],
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Option<Vec<u8>>, BatchError> {
        let kept: Vec<&Record> = self.records.iter().filter(|r| keep(r)).collect();
        if kept.len() == self.records.len() {
            return Ok(None);
        }
        let mut section = Vec::with_capacity(self.raw.len());
        for r in &kept {
            section.extend_from_slice(&self.raw[r.span.clone()]);
        }
        let packed = compress(
            Target {
                codec: self.codec,
                level: None,
            },
            &section,
        )?;
        let mut out = Vec::with_capacity(HEADER_LEN + packed.len());
        out.extend_from_slice(&batch[..HEADER_LEN]);
        out.extend_from_slice(&packed);
        let length = i32::try_from(out.len() - LENGTH_END)
            .map_err(|_| malformed("rewritten batch too large"))?;
        out[8..LENGTH_END].copy_from_slice(&length.to_be_bytes());
        out[COUNT_POS..COUNT_POS + 4].copy_from_slice(&(kept.len() as i32).to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTR_POS..]);
        out[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(Some(out))
    }
}

/// Whether every record of a batch has a key (compacted topics refuse keyless records).
pub fn all_keyed(batch: &[u8]) -> Result<bool, BatchError> {
    Ok(read_records(batch)?.records.iter().all(|r| r.key.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::encode;
    use crate::batch::{validate_produced, validate_stored};
    use kafka_protocol::records::{
        Compression, Record as KRecord, RecordBatchDecoder, TimestampType,
    };

    fn batch(values: &[(Option<&str>, Option<&str>)], compression: Compression) -> Vec<u8> {
        let records: Vec<KRecord> = values
            .iter()
            .enumerate()
            .map(|(i, (k, v))| KRecord {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: 7,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: 100 + i as i64,
                sequence: 40 + i as i32,
                timestamp: 1_700_000_000_000 + i as i64,
                key: k.map(|k| Bytes::from(k.to_string())),
                value: v.map(|v| Bytes::from(v.to_string())),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        encode(&records, compression)
    }

    #[test]
    fn reads_records_and_keeps_a_subset_at_their_offsets() {
        let values = [
            (Some("a"), Some("1")),
            (Some("b"), None),
            (Some("a"), Some("2")),
            (None, Some("keyless")),
        ];
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let original = batch(&values, compression);
            let r = read_records(&original).expect("read");
            let keys: Vec<_> = r.records.iter().map(|r| r.key.clone()).collect();
            assert_eq!(keys[0].as_deref(), Some(&b"a"[..]));
            assert_eq!(keys[3], None);
            assert!(r.records[1].value.is_none() && r.records[0].value.is_some());
            assert_eq!(
                r.records.iter().map(|r| r.offset_delta).collect::<Vec<_>>(),
                [0, 1, 2, 3]
            );
            assert!(!all_keyed(&original).expect("keys"));
            assert_eq!(r.retain(&original, |_| true).expect("retain"), None);
            let out = r
                .retain(&original, |rec| rec.offset_delta >= 2)
                .expect("retain")
                .expect("changed");
            // Valid for readers: the CRC checks, offsets and producer fields stay.
            let h = parse_header(&out).expect("header");
            assert_eq!(h.record_count, 2);
            assert_eq!(h.last_offset_delta, 3);
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (7, 1, 40)
            );
            assert_eq!(h.base_offset, 100);
            assert_eq!(
                crate::batch::stored_crc(&out),
                Some(crc32c::crc32c(&out[ATTR_POS..]))
            );
            // Replicas take it; a producer could not send it.
            assert!(validate_stored(&out).is_ok() && validate_produced(&out).is_err());
            let mut bytes = Bytes::from(out);
            let decoded = RecordBatchDecoder::decode(&mut bytes).expect("decode");
            let got: Vec<_> = decoded
                .records
                .iter()
                .map(|r| (r.offset, r.value.clone()))
                .collect();
            assert_eq!(
                got,
                [
                    (102, Some(Bytes::from("2"))),
                    (103, Some(Bytes::from("keyless")))
                ]
            );
        }
        let keyed = batch(&[(Some("k"), Some("v"))], Compression::None);
        assert!(validate_produced(&keyed).is_ok() && all_keyed(&keyed).expect("keys"));
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let mut b = batch(&[(Some("key"), Some("value"))], Compression::None);
        // A record length pointing past the end.
        b[HEADER_LEN] = 0x7e;
        assert!(read_records(&b).is_err());
        b.truncate(HEADER_LEN + 2);
        assert!(read_records(&b).is_err());
    }
}
