//! Kafka wire protocol for the Riffle broker: supported versions, request decoding,
//! response framing and record batch headers. Message codecs come from `kafka-protocol`.
//! Kept free of storage dependencies so decoders can be fuzzed on their own.

pub mod alloc;
pub mod batch;
pub mod compress;
mod frame;
pub mod marker;
pub mod records;
mod request;

pub use frame::Frame;
pub use request::{decode_request, Body, DecodeError, Request};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;

/// APIs and version ranges this broker advertises.
///
/// Produce is advertised from v0 (older librdkafka only enables compression when it sees
/// v0) but v0–v2 requests are refused, as Kafka 4 does.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // Transactions as Kafka 3.x clients run them (KIP-98, KIP-447). KIP-890's
    // verification runs between brokers over RPC; its transaction version 2
    // (AddPartitionsToTxn v4+, EndTxn v5) is not offered.
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    // Transaction tooling; ListTransactions v2 (a regex over ids) is not offered.
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    // ACLs (KIP-140, prefixed patterns KIP-290); v0 is gone from Kafka 4 (KIP-896).
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    // SCRAM credentials (KIP-554).
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // Client quotas (KIP-546).
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    // The config resources that exist (KIP-1142; v0 lists client-metrics resources).
    (ApiKey::ListConfigResources, 0, 1),
];

/// Lowest Produce version actually served.
pub const MIN_SERVED_PRODUCE_VERSION: i16 = 3;

/// Whether `(key, version)` is advertised and served.
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    if key == ApiKey::Produce && version < MIN_SERVED_PRODUCE_VERSION {
        return false;
    }
    SUPPORTED
        .iter()
        .any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

/// The fixed part of a request header, read without decoding the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    /// API key as sent (may be unknown).
    pub api_key: i16,
    /// API version as sent.
    pub api_version: i16,
    /// Correlation id to echo.
    pub correlation_id: i32,
}

/// Reads api key, version and correlation id; `None` if the frame is too short.
pub fn peek_header(frame: &[u8]) -> Option<RawHeader> {
    if frame.len() < 8 {
        return None;
    }
    Some(RawHeader {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

/// A response could not be encoded at the requested version.
#[derive(Debug, thiserror::Error)]
#[error("response encoding failed: {0}")]
pub struct EncodeError(String);

/// Encodes a size-prefixed response frame.
pub fn encode_response<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Frame, EncodeError> {
    encode_response_sharing(api, version, correlation_id, body, &[])
}

/// [`encode_response`], with the byte fields that are slices of `shared` (the record
/// sets of a fetch) left where they are, as parts of the frame, instead of copied.
pub fn encode_response_sharing<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
    shared: &[Bytes],
) -> Result<Frame, EncodeError> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = frame::FrameBuf::new(shared);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| EncodeError(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| EncodeError(e.to_string()))?;
    Ok(buf.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_v0_is_advertised_but_not_served() {
        assert!(!is_supported(ApiKey::Produce, 0));
        assert!(is_supported(ApiKey::Produce, 3));
        assert!(is_supported(ApiKey::Produce, 11));
        assert!(!is_supported(ApiKey::Produce, 12));
        assert!(!is_supported(ApiKey::Fetch, 3));
        assert!(!is_supported(ApiKey::JoinGroup, 10));
        assert!(is_supported(ApiKey::EndTxn, 3) && !is_supported(ApiKey::EndTxn, 4));
    }

    #[test]
    fn every_advertised_range_is_decodable_by_the_codec_crate() {
        for &(k, min, max) in SUPPORTED {
            let v = k.valid_versions();
            let served_min = if k == ApiKey::Produce {
                MIN_SERVED_PRODUCE_VERSION
            } else {
                min
            };
            assert!(v.min <= served_min && max <= v.max, "{k:?}");
        }
    }

    #[test]
    fn peek_header_needs_eight_bytes() {
        assert_eq!(peek_header(&[0, 18, 0, 3, 0, 0, 0]), None);
        let h = peek_header(&[0, 18, 0, 3, 0, 0, 0, 9]).expect("header");
        assert_eq!((h.api_key, h.api_version, h.correlation_id), (18, 3, 9));
    }
}
