//! Transaction markers: the control batches that commit or abort a producer's
//! transaction on each partition it wrote to (one record: key `[version, type]`, value
//! `[version, coordinator epoch]`).

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::batch::BatchError;
use crate::records::read_records;

/// Control record type of an abort marker.
const ABORT: i16 = 0;
/// Control record type of a commit marker.
const COMMIT: i16 = 1;

/// A marker batch (base offset 0; the log assigns the real one).
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Bytes {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&(if commit { COMMIT } else { ABORT }).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
        delete_horizon: false,
    };
    let mut buf = BytesMut::new();
    // One small uncompressed record always encodes.
    let _ = RecordBatchEncoder::encode(
        &mut buf,
        std::iter::once(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    );
    buf.freeze()
}

/// What a transaction marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Commit (`true`) or abort.
    pub commit: bool,
    /// The epoch of the coordinator that wrote it (-1 when the value is missing).
    pub coordinator_epoch: i32,
}

/// The marker a control batch carries; `None` for a control batch of another kind.
pub fn read_marker(batch: &[u8]) -> Result<Option<Marker>, BatchError> {
    let records = read_records(batch)?;
    let Some(record) = records.records.first() else {
        return Ok(None);
    };
    let kind = record
        .key
        .as_ref()
        .and_then(|k| k.get(2..4))
        .map(|t| i16::from_be_bytes([t[0], t[1]]));
    let commit = match kind {
        Some(COMMIT) => true,
        Some(ABORT) => false,
        _ => return Ok(None),
    };
    let coordinator_epoch = record
        .value
        .as_ref()
        .and_then(|v| v.get(2..6))
        .map_or(-1, |e| i32::from_be_bytes([e[0], e[1], e[2], e[3]]));
    Ok(Some(Marker {
        commit,
        coordinator_epoch,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_produced;

    #[test]
    fn markers_round_trip_as_valid_control_batches() {
        for commit in [true, false] {
            let b = marker_batch(42, 3, commit, 7, 1_000);
            let h = validate_produced(&b).expect("valid batch");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.record_count),
                (42, 3, 1)
            );
            assert_eq!(
                read_marker(&b).unwrap(),
                Some(Marker {
                    commit,
                    coordinator_epoch: 7
                })
            );
        }
        assert!(read_marker(&[1, 2, 3]).is_err());
    }
}
