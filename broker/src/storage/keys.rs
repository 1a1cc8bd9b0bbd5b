//! Key layouts. Big-endian integers keep one partition's batches contiguous and in offset order.

/// Key of the batch (or segment summary) of partition `uid` starting at `offset`.
pub fn log_key(uid: u64, offset: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&uid.to_be_bytes());
    k[8..].copy_from_slice(&(offset as u64).to_be_bytes());
    k
}

/// Key range `[lower, upper)` covering every key of partition `uid`.
pub fn partition_bounds(uid: u64) -> (Vec<u8>, Vec<u8>) {
    (
        uid.to_be_bytes().to_vec(),
        uid.wrapping_add(1).to_be_bytes().to_vec(),
    )
}

/// Offset part of a log or index key.
pub fn offset_of(key: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    if key.len() >= 16 {
        b.copy_from_slice(&key[8..16]);
    }
    u64::from_be_bytes(b) as i64
}

/// Summary of one segment: a run of consecutive batches retention deletes as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Offset of the last record in the segment.
    pub last_offset: i64,
    /// Bytes of batches in the segment.
    pub bytes: u64,
    /// Largest record timestamp in the segment.
    pub max_timestamp: i64,
    /// Wall-clock time the segment was started (for `segment.ms`).
    pub created_ms: i64,
}

impl SegmentMeta {
    /// Fixed-size big-endian encoding.
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&self.last_offset.to_be_bytes());
        b[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        b[16..24].copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[24..].copy_from_slice(&self.created_ms.to_be_bytes());
        b
    }

    /// Decodes [`SegmentMeta::encode`] output.
    pub fn decode(b: &[u8]) -> Option<SegmentMeta> {
        if b.len() != 32 {
            return None;
        }
        let int = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[r]);
            a
        };
        Some(SegmentMeta {
            last_offset: i64::from_be_bytes(int(0..8)),
            bytes: u64::from_be_bytes(int(8..16)),
            max_timestamp: i64::from_be_bytes(int(16..24)),
            created_ms: i64::from_be_bytes(int(24..32)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_partition_then_offset() {
        let mut keys = vec![
            log_key(2, 0),
            log_key(1, 300),
            log_key(1, 2),
            log_key(1, 256),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                log_key(1, 2),
                log_key(1, 256),
                log_key(1, 300),
                log_key(2, 0)
            ]
        );
        assert_eq!(offset_of(&log_key(9, 123_456)), 123_456);
        let (lo, hi) = partition_bounds(1);
        assert!(lo.as_slice() <= &log_key(1, 0)[..] && &log_key(1, i64::MAX)[..] < hi.as_slice());
    }

    #[test]
    fn segment_meta_round_trips() {
        let m = SegmentMeta {
            last_offset: 99,
            bytes: 4096,
            max_timestamp: -1,
            created_ms: 1_700_000_000_000,
        };
        assert_eq!(SegmentMeta::decode(&m.encode()), Some(m));
        assert_eq!(SegmentMeta::decode(&[0; 3]), None);
    }
}
