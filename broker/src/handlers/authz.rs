//! Authorization of requests that act on one resource as a whole (a group, a
//! transactional id, the cluster): refused before they reach their handler. Requests that
//! name several topics or groups are checked per resource in their handlers.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{ready, Broker, Reply};
use crate::acl::{op, resource, Session, CLUSTER_NAME};
use crate::protocol::{encode_response, Body};

impl Broker {
    /// The refusal to send instead of running `body`, when `who` may not.
    pub(super) fn refusal(
        &self,
        api: ApiKey,
        version: i16,
        corr: i32,
        body: &Body,
        who: &Session,
    ) -> Option<Reply> {
        if !self.config.authorizer_enabled {
            return None;
        }
        let group = |g: &GroupId| !self.authorize(who, op::READ, resource::GROUP, g.0.as_str());
        let txn = |t: &TransactionalId| {
            !self.authorize(who, op::WRITE, resource::TRANSACTIONAL_ID, t.0.as_str())
        };
        let cluster = |o: i8| !self.authorize(who, o, resource::CLUSTER, CLUSTER_NAME);
        let group_err = ResponseError::GroupAuthorizationFailed.code();
        let txn_err = ResponseError::TransactionalIdAuthorizationFailed.code();
        let cluster_err = ResponseError::ClusterAuthorizationFailed.code();
        macro_rules! refuse {
            ($resp:expr) => {
                Some(ready(encode_response(api, version, corr, &$resp).map(Some)))
            };
        }
        match body {
            Body::JoinGroup(r) if group(&r.group_id) => {
                refuse!(JoinGroupResponse::default().with_error_code(group_err))
            }
            Body::SyncGroup(r) if group(&r.group_id) => {
                refuse!(SyncGroupResponse::default().with_error_code(group_err))
            }
            Body::Heartbeat(r) if group(&r.group_id) => {
                refuse!(HeartbeatResponse::default().with_error_code(group_err))
            }
            Body::LeaveGroup(r) if group(&r.group_id) => {
                refuse!(LeaveGroupResponse::default().with_error_code(group_err))
            }
            Body::OffsetDelete(r)
                if !self.authorize(who, op::DELETE, resource::GROUP, r.group_id.0.as_str()) =>
            {
                refuse!(OffsetDeleteResponse::default().with_error_code(group_err))
            }
            Body::InitProducerId(r) => match &r.transactional_id {
                Some(t) if txn(t) => {
                    refuse!(InitProducerIdResponse::default().with_error_code(txn_err))
                }
                // KIP-679: an idempotent producer needs IDEMPOTENT_WRITE on the cluster,
                // or WRITE on some topic.
                None if cluster(op::IDEMPOTENT_WRITE)
                    && !self
                        .catalog
                        .all()
                        .iter()
                        .any(|t| self.authorize(who, op::WRITE, resource::TOPIC, &t.name)) =>
                {
                    refuse!(InitProducerIdResponse::default().with_error_code(cluster_err))
                }
                _ => None,
            },
            Body::AddOffsetsToTxn(r) if txn(&r.transactional_id) => {
                refuse!(AddOffsetsToTxnResponse::default().with_error_code(txn_err))
            }
            Body::AddOffsetsToTxn(r) if group(&r.group_id) => {
                refuse!(AddOffsetsToTxnResponse::default().with_error_code(group_err))
            }
            Body::EndTxn(r) if txn(&r.transactional_id) => {
                refuse!(EndTxnResponse::default().with_error_code(txn_err))
            }
            Body::ElectLeaders(_) if cluster(op::ALTER) => {
                refuse!(ElectLeadersResponse::default().with_error_code(cluster_err))
            }
            Body::AlterPartitionReassignments(_) if cluster(op::ALTER) => {
                refuse!(AlterPartitionReassignmentsResponse::default()
                    .with_error_code(cluster_err)
                    .with_error_message(Some(StrBytes::from_static_str(
                        "Cluster authorization failed."
                    ))))
            }
            Body::ListPartitionReassignments(_) if cluster(op::DESCRIBE) => {
                refuse!(ListPartitionReassignmentsResponse::default().with_error_code(cluster_err))
            }
            Body::DescribeClientQuotas(_) if cluster(op::DESCRIBE_CONFIGS) => {
                refuse!(DescribeClientQuotasResponse::default()
                    .with_error_code(cluster_err)
                    .with_error_message(Some(StrBytes::from_static_str(
                        "Cluster authorization failed."
                    ))))
            }
            Body::ListConfigResources(_) if cluster(op::DESCRIBE_CONFIGS) => {
                refuse!(ListConfigResourcesResponse::default().with_error_code(cluster_err))
            }
            Body::DescribeLogDirs(_) if cluster(op::DESCRIBE) => {
                refuse!(DescribeLogDirsResponse::default().with_error_code(cluster_err))
            }
            _ => None,
        }
    }
}
