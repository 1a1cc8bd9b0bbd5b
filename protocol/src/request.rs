//! Decoding one request frame into a typed request.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use crate::{is_supported, peek_header};

/// Why a frame cannot be answered; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a request header.
    #[error("frame shorter than a request header")]
    TooShort,
    /// API key unknown to Kafka.
    #[error("unknown API key")]
    UnknownApi,
    /// Known API at a version this broker does not serve.
    #[error("unsupported API version")]
    UnsupportedVersion,
    /// The request header does not decode.
    #[error("undecodable request header")]
    BadHeader,
    /// The request body does not decode.
    #[error("undecodable request body")]
    BadBody,
}

impl DecodeError {
    /// Short stable label (for metrics).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::TooShort => "too_short",
            DecodeError::UnknownApi => "unknown_api",
            DecodeError::UnsupportedVersion => "unsupported_version",
            DecodeError::BadHeader => "bad_header",
            DecodeError::BadBody => "bad_body",
        }
    }
}

/// A decoded request body.
#[allow(missing_docs)]
#[derive(Debug)]
pub enum Body {
    /// ApiVersions at a version we do not serve: answer with a v0 body and error 35.
    ApiVersionsUnsupported,
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    InitProducerId(InitProducerIdRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DeleteRecords(DeleteRecordsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    ElectLeaders(ElectLeadersRequest),
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest),
    ListPartitionReassignments(ListPartitionReassignmentsRequest),
    DescribeLogDirs(DescribeLogDirsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    DescribeGroups(DescribeGroupsRequest),
    ListGroups(ListGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    OffsetDelete(OffsetDeleteRequest),
    AddPartitionsToTxn(AddPartitionsToTxnRequest),
    AddOffsetsToTxn(AddOffsetsToTxnRequest),
    EndTxn(EndTxnRequest),
    TxnOffsetCommit(TxnOffsetCommitRequest),
    DescribeTransactions(DescribeTransactionsRequest),
    ListTransactions(ListTransactionsRequest),
    DescribeProducers(DescribeProducersRequest),
    DescribeAcls(DescribeAclsRequest),
    CreateAcls(CreateAclsRequest),
    DeleteAcls(DeleteAclsRequest),
    DescribeUserScramCredentials(DescribeUserScramCredentialsRequest),
    AlterUserScramCredentials(AlterUserScramCredentialsRequest),
    DescribeClientQuotas(DescribeClientQuotasRequest),
    AlterClientQuotas(AlterClientQuotasRequest),
    ListConfigResources(ListConfigResourcesRequest),
}

/// A decoded request with the header fields handlers need.
#[derive(Debug)]
pub struct Request {
    /// API of the request.
    pub api: ApiKey,
    /// Version of the request (and of its response).
    pub version: i16,
    /// Correlation id to echo.
    pub correlation_id: i32,
    /// Client id from the header ("" when null).
    pub client_id: String,
    /// The body.
    pub body: Body,
}

/// Decodes one frame (without its size prefix). Never panics on any input.
pub fn decode_request(frame: Bytes) -> Result<Request, DecodeError> {
    let raw = peek_header(&frame).ok_or(DecodeError::TooShort)?;
    let api = ApiKey::try_from(raw.api_key).map_err(|_| DecodeError::UnknownApi)?;
    let version = raw.api_version;
    let done = |body, client_id: String| Request {
        api,
        version,
        correlation_id: raw.correlation_id,
        client_id,
        body,
    };
    if !is_supported(api, version) {
        return if api == ApiKey::ApiVersions {
            Ok(done(Body::ApiVersionsUnsupported, String::new()))
        } else {
            Err(DecodeError::UnsupportedVersion)
        };
    }
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|_| DecodeError::BadHeader)?;
    let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
    macro_rules! body {
        ($variant:ident, $t:ty) => {
            Body::$variant(<$t>::decode(&mut buf, version).map_err(|_| DecodeError::BadBody)?)
        };
    }
    let body = match api {
        ApiKey::ApiVersions => body!(ApiVersions, ApiVersionsRequest),
        ApiKey::Metadata => body!(Metadata, MetadataRequest),
        ApiKey::Produce => body!(Produce, ProduceRequest),
        ApiKey::Fetch => body!(Fetch, FetchRequest),
        ApiKey::ListOffsets => body!(ListOffsets, ListOffsetsRequest),
        ApiKey::OffsetForLeaderEpoch => body!(OffsetForLeaderEpoch, OffsetForLeaderEpochRequest),
        ApiKey::InitProducerId => body!(InitProducerId, InitProducerIdRequest),
        ApiKey::CreateTopics => body!(CreateTopics, CreateTopicsRequest),
        ApiKey::DeleteTopics => body!(DeleteTopics, DeleteTopicsRequest),
        ApiKey::CreatePartitions => body!(CreatePartitions, CreatePartitionsRequest),
        ApiKey::DeleteRecords => body!(DeleteRecords, DeleteRecordsRequest),
        ApiKey::DescribeConfigs => body!(DescribeConfigs, DescribeConfigsRequest),
        ApiKey::AlterConfigs => body!(AlterConfigs, AlterConfigsRequest),
        ApiKey::IncrementalAlterConfigs => {
            body!(IncrementalAlterConfigs, IncrementalAlterConfigsRequest)
        }
        ApiKey::DescribeCluster => body!(DescribeCluster, DescribeClusterRequest),
        ApiKey::ElectLeaders => body!(ElectLeaders, ElectLeadersRequest),
        ApiKey::AlterPartitionReassignments => {
            body!(
                AlterPartitionReassignments,
                AlterPartitionReassignmentsRequest
            )
        }
        ApiKey::ListPartitionReassignments => {
            body!(
                ListPartitionReassignments,
                ListPartitionReassignmentsRequest
            )
        }
        ApiKey::DescribeLogDirs => body!(DescribeLogDirs, DescribeLogDirsRequest),
        ApiKey::FindCoordinator => body!(FindCoordinator, FindCoordinatorRequest),
        ApiKey::JoinGroup => body!(JoinGroup, JoinGroupRequest),
        ApiKey::SyncGroup => body!(SyncGroup, SyncGroupRequest),
        ApiKey::Heartbeat => body!(Heartbeat, HeartbeatRequest),
        ApiKey::LeaveGroup => body!(LeaveGroup, LeaveGroupRequest),
        ApiKey::OffsetCommit => body!(OffsetCommit, OffsetCommitRequest),
        ApiKey::OffsetFetch => body!(OffsetFetch, OffsetFetchRequest),
        ApiKey::DescribeGroups => body!(DescribeGroups, DescribeGroupsRequest),
        ApiKey::ListGroups => body!(ListGroups, ListGroupsRequest),
        ApiKey::DeleteGroups => body!(DeleteGroups, DeleteGroupsRequest),
        ApiKey::OffsetDelete => body!(OffsetDelete, OffsetDeleteRequest),
        ApiKey::AddPartitionsToTxn => body!(AddPartitionsToTxn, AddPartitionsToTxnRequest),
        ApiKey::AddOffsetsToTxn => body!(AddOffsetsToTxn, AddOffsetsToTxnRequest),
        ApiKey::EndTxn => body!(EndTxn, EndTxnRequest),
        ApiKey::TxnOffsetCommit => body!(TxnOffsetCommit, TxnOffsetCommitRequest),
        ApiKey::DescribeTransactions => body!(DescribeTransactions, DescribeTransactionsRequest),
        ApiKey::ListTransactions => body!(ListTransactions, ListTransactionsRequest),
        ApiKey::DescribeProducers => body!(DescribeProducers, DescribeProducersRequest),
        ApiKey::DescribeAcls => body!(DescribeAcls, DescribeAclsRequest),
        ApiKey::CreateAcls => body!(CreateAcls, CreateAclsRequest),
        ApiKey::DeleteAcls => body!(DeleteAcls, DeleteAclsRequest),
        ApiKey::DescribeUserScramCredentials => {
            body!(
                DescribeUserScramCredentials,
                DescribeUserScramCredentialsRequest
            )
        }
        ApiKey::DescribeClientQuotas => body!(DescribeClientQuotas, DescribeClientQuotasRequest),
        ApiKey::AlterClientQuotas => body!(AlterClientQuotas, AlterClientQuotasRequest),
        ApiKey::ListConfigResources => body!(ListConfigResources, ListConfigResourcesRequest),
        ApiKey::AlterUserScramCredentials => {
            body!(AlterUserScramCredentials, AlterUserScramCredentialsRequest)
        }
        _ => return Err(DecodeError::UnsupportedVersion),
    };
    Ok(done(body, client_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(api: i16, version: i16, body: &[u8]) -> Bytes {
        let mut f = Vec::new();
        f.extend_from_slice(&api.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&7i32.to_be_bytes());
        f.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
        f.extend_from_slice(body);
        Bytes::from(f)
    }

    #[test]
    fn decodes_supported_and_rejects_the_rest() {
        let r = decode_request(frame(3, 1, &(-1i32).to_be_bytes())).expect("metadata v1");
        assert!(matches!(r.body, Body::Metadata(ref m) if m.topics.is_none()));
        assert_eq!(r.correlation_id, 7);
        assert!(matches!(
            decode_request(frame(18, 9, &[])).map(|r| r.body),
            Ok(Body::ApiVersionsUnsupported)
        ));
        assert_eq!(
            decode_request(frame(0, 1, &[])).err(),
            Some(DecodeError::UnsupportedVersion)
        );
        assert_eq!(
            decode_request(frame(999, 0, &[])).err(),
            Some(DecodeError::UnknownApi)
        );
        assert_eq!(
            decode_request(Bytes::from_static(&[0, 3])).err(),
            Some(DecodeError::TooShort)
        );
        assert_eq!(
            decode_request(frame(3, 1, &[0, 0])).err(),
            Some(DecodeError::BadBody)
        );
    }

    #[test]
    fn truncations_of_a_valid_request_never_panic() {
        let full = frame(3, 1, &[0, 0, 0, 1, 0, 3, b'a', b'b', b'c']);
        for n in 0..full.len() {
            let _ = decode_request(full.slice(..n));
        }
        assert!(decode_request(full).is_ok());
    }
}
