//! Committed offsets as records of the internal offsets topic.
//!
//! A group belongs to partition `hash(group) % 50` of `__consumer_offsets`, like Kafka's.
//! Each commit is a record keyed by (group, topic, partition) whose value is the commit
//! (no value deletes it), so replaying a partition in order rebuilds its groups' offsets.
//! Before the topic existed, commits were stored under the same keys in the `meta` column
//! family; those are moved into the topic when their partition is first loaded.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Partitions of the offsets topic.
pub const OFFSETS_PARTITIONS: u32 = 50;

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Next offset to consume.
    pub offset: i64,
    /// Leader epoch of the record before `offset` (-1 unknown).
    pub leader_epoch: i32,
    /// Client metadata string.
    pub metadata: String,
    /// Commit time (ms since the epoch), for expiry.
    pub commit_ms: i64,
}

/// Offsets partition of a group: Java's `String.hashCode`, like Kafka, so tools agree.
pub fn offsets_partition(group: &str) -> u32 {
    let mut h: i32 = 0;
    for c in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(c));
    }
    // Kafka's Utils.abs: i32::MIN maps to 0.
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs as u32 % OFFSETS_PARTITIONS
}

/// Key prefix of every commit of `group`.
pub fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = b"o/".to_vec();
    k.extend_from_slice(&offsets_partition(group).to_be_bytes());
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k
}

/// Key of one commit.
pub fn key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Key of a transactional id's state (stored with the groups of the same partition).
pub fn txn_key(transactional_id: &str) -> Vec<u8> {
    let mut k = b"t/".to_vec();
    k.extend_from_slice(&offsets_partition(transactional_id).to_be_bytes());
    k.extend_from_slice(transactional_id.as_bytes());
    k
}

/// The transactional id of a [`txn_key`], `None` for any other key.
pub fn parse_txn_key(k: &[u8]) -> Option<String> {
    let rest = k.strip_prefix(b"t/")?;
    String::from_utf8(rest.get(4..)?.to_vec()).ok()
}

/// Parses a key back into (group, topic, partition).
pub fn parse_key(k: &[u8]) -> Option<(String, String, i32)> {
    let rest = k.strip_prefix(b"o/")?;
    let glen = u32::from_be_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
    let group = std::str::from_utf8(rest.get(8..8 + glen)?).ok()?;
    let rest = &rest[8 + glen..];
    let tlen = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(rest.get(2..2 + tlen)?).ok()?;
    let partition = i32::from_be_bytes(rest.get(2 + tlen..6 + tlen)?.try_into().ok()?);
    Some((group.to_string(), topic.to_string(), partition))
}

/// A record of the offsets topic: key and value (`None` deletes the key).
pub type OffsetRecord = (Vec<u8>, Option<Vec<u8>>);

/// Encodes records as one uncompressed v2 batch: plain, or part of a producer's
/// transaction (`producer`: id and epoch; no sequence, as Kafka's coordinator writes them).
pub fn encode_batch(
    records: &[OffsetRecord],
    producer: Option<(i64, i16)>,
    now_ms: i64,
) -> Result<Bytes, String> {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: producer.is_some(),
            control: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps offset - sequence constant within a batch: a base
            // sequence of -1 (none) means -1 + i for the record at offset i.
            sequence: if producer.is_some() {
                i as i32 - 1
            } else {
                i as i32
            },
            timestamp: now_ms,
            key: Some(Bytes::copy_from_slice(k)),
            value: v.as_deref().map(Bytes::copy_from_slice),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        recs.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Decodes one stored batch into `(offset, key, value)` records.
pub fn decode_batch(mut raw: Bytes) -> Result<Vec<(i64, Bytes, Option<Bytes>)>, String> {
    let set = RecordBatchDecoder::decode(&mut raw).map_err(|e| e.to_string())?;
    set.records
        .into_iter()
        .map(|r| Ok((r.offset, r.key.ok_or("record without a key")?, r.value)))
        .collect()
}

impl Committed {
    /// Binary value encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20 + self.metadata.len());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.leader_epoch.to_be_bytes());
        v.extend_from_slice(&self.commit_ms.to_be_bytes());
        v.extend_from_slice(self.metadata.as_bytes());
        v
    }

    /// Decodes [`Committed::encode`] output.
    pub fn decode(v: &[u8]) -> Option<Committed> {
        Some(Committed {
            offset: i64::from_be_bytes(v.get(0..8)?.try_into().ok()?),
            leader_epoch: i32::from_be_bytes(v.get(8..12)?.try_into().ok()?),
            commit_ms: i64::from_be_bytes(v.get(12..20)?.try_into().ok()?),
            metadata: String::from_utf8(v.get(20..)?.to_vec()).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_matches_kafka_hashing() {
        // Values from Java: Math.abs("my-consumer-group".hashCode()) % 50 etc.
        assert_eq!(offsets_partition(""), 0);
        let h = "a"
            .encode_utf16()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
        assert_eq!(h, 97);
        assert_eq!(offsets_partition("a"), 97 % 50);
        assert!(offsets_partition("my-consumer-group") < OFFSETS_PARTITIONS);
    }

    #[test]
    fn keys_and_values_round_trip() {
        let k = key("grp", "orders", 7);
        assert!(k.starts_with(&group_prefix("grp")));
        assert!(!key("grp2", "orders", 7).starts_with(&group_prefix("grp")));
        assert_eq!(parse_key(&k), Some(("grp".into(), "orders".into(), 7)));
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_ms: 9,
        };
        assert_eq!(Committed::decode(&c.encode()), Some(c));
        assert_eq!(parse_key(b"o/xx"), None);
    }

    #[test]
    fn batches_round_trip_with_tombstones() {
        let recs = vec![
            (key("g", "t", 0), Some(b"v1".to_vec())),
            (key("g", "t", 1), None),
        ];
        let raw = encode_batch(&recs, None, 5).unwrap();
        let back = decode_batch(raw).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, 0);
        assert_eq!(&back[0].1[..], &recs[0].0[..]);
        assert_eq!(back[0].2.as_deref(), Some(&b"v1"[..]));
        assert_eq!((back[1].0, back[1].2.clone()), (1, None));
        assert!(decode_batch(Bytes::from_static(b"junk")).is_err());
    }
}
