//! Group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, DescribeGroups, ListGroups, DeleteGroups, OffsetDelete.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::{str_bytes, Broker, Reply};
use crate::acl::{op, resource, Session};
use crate::group::offsets::offsets_partition;
use crate::group::{
    Committed, JoinParams, JoinReply, Outcome, SyncReply, MAX_METADATA_BYTES, OFFSETS_TOPIC,
};
use crate::log::now_ms;
use crate::protocol::encode_response;

/// A topic's partitions with their committed offsets.
type TopicCommits = (String, Vec<(i32, Option<Committed>)>);

fn opt_str(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

/// Waits for a parked group answer; a dropped sender means the member was removed.
/// On shutdown the wait ends with COORDINATOR_NOT_AVAILABLE so clients look elsewhere.
async fn settle<T>(
    broker: &Broker,
    outcome: Outcome<T>,
    dropped: i16,
    fail: impl FnOnce(i16) -> T,
) -> T {
    match outcome {
        Outcome::Now(r) => r,
        Outcome::Wait(rx) => tokio::select! {
            r = rx => r.unwrap_or_else(|_| fail(dropped)),
            _ = broker.stopped() => fail(ResponseError::CoordinatorNotAvailable.code()),
        },
    }
}

/// Whether a consumer-protocol subscription (JoinGroup metadata) names `topic`.
fn subscribes_to(topic: &str, metadata: &[Bytes]) -> bool {
    metadata.iter().any(|m| {
        let mut b = m.clone();
        if b.len() < 2 {
            return false;
        }
        let version = i16::from_be_bytes([b[0], b[1]]);
        let _ = bytes::Buf::get_i16(&mut b);
        ConsumerProtocolSubscription::decode(&mut b, version.clamp(0, 3))
            .map(|s| s.topics.iter().any(|t| t.as_str() == topic))
            .unwrap_or(false)
    })
}

impl Broker {
    /// The coordinator of a group: the leader of its offsets partition.
    fn group_coordinator(&self, group: &str) -> Result<(BrokerId, StrBytes, i32), i16> {
        let image = self.cluster.image();
        let p = offsets_partition(group) as usize;
        image
            .topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| t.partitions.get(p))
            .and_then(|s| image.brokers.get(&s.leader))
            .filter(|b| image.is_active(b.id))
            .and_then(|b| {
                let (host, port) = crate::config::split_host_port(&b.kafka)?;
                Some((BrokerId(b.id), StrBytes::from_string(host), port))
            })
            .ok_or(ResponseError::CoordinatorNotAvailable.code())
    }

    pub(super) fn find_coordinator(
        &self,
        req: FindCoordinatorRequest,
        version: i16,
        who: &Session,
    ) -> FindCoordinatorResponse {
        // Groups (0) and transactional ids (1) share the offsets partitions' leaders;
        // as in Kafka, finding one takes DESCRIBE on it.
        let lookup = |key: &str| match req.key_type {
            0 if !self.authorize(who, op::DESCRIBE, resource::GROUP, key) => {
                Err(ResponseError::GroupAuthorizationFailed.code())
            }
            1 if !self.authorize(who, op::DESCRIBE, resource::TRANSACTIONAL_ID, key) => {
                Err(ResponseError::TransactionalIdAuthorizationFailed.code())
            }
            0 | 1 => self.group_coordinator(key),
            _ => Err(ResponseError::InvalidRequest.code()),
        };
        if version >= 4 {
            let coordinators = req
                .coordinator_keys
                .iter()
                .map(|key| {
                    let c = CoordinatorEntry::default().with_key(key.clone());
                    match lookup(key) {
                        Ok((node, host, port)) => {
                            c.with_node_id(node).with_host(host).with_port(port)
                        }
                        Err(code) => {
                            self.count_error(ApiKey::FindCoordinator, code);
                            c.with_node_id(BrokerId(-1))
                                .with_port(-1)
                                .with_error_code(code)
                        }
                    }
                })
                .collect();
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        match lookup(&req.key) {
            Ok((node, host, port)) => FindCoordinatorResponse::default()
                .with_node_id(node)
                .with_host(host)
                .with_port(port),
            Err(code) => {
                self.count_error(ApiKey::FindCoordinator, code);
                FindCoordinatorResponse::default()
                    .with_error_code(code)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
            }
        }
    }

    pub(super) fn join_group(
        self: &Arc<Self>,
        req: JoinGroupRequest,
        version: i16,
        corr: i32,
        client_id: &str,
        client_host: &str,
    ) -> Reply {
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        let outcome = if group_id.is_empty() {
            Outcome::Now(JoinReply {
                error: ResponseError::InvalidGroupId.code(),
                generation: -1,
                protocol_type: None,
                protocol_name: None,
                leader: String::new(),
                member_id: member_id.clone(),
                members: vec![],
                skip_assignment: false,
            })
        } else {
            let rebalance = if version == 0 || req.rebalance_timeout_ms <= 0 {
                req.session_timeout_ms
            } else {
                req.rebalance_timeout_ms
            };
            self.groups.join(
                &group_id,
                JoinParams {
                    member_id: member_id.clone(),
                    instance_id: opt_str(&req.group_instance_id),
                    client_id: client_id.to_string(),
                    client_host: client_host.to_string(),
                    session_timeout_ms: req.session_timeout_ms,
                    rebalance_timeout_ms: rebalance,
                    protocol_type: req.protocol_type.to_string(),
                    protocols: req
                        .protocols
                        .into_iter()
                        .map(|p| (p.name.to_string(), p.metadata))
                        .collect(),
                    require_known_member: version >= 4,
                    skip_assignment_supported: version >= 9,
                },
            )
        };
        let this = self.clone();
        Box::pin(async move {
            let r = settle(
                &this,
                outcome,
                ResponseError::UnknownMemberId.code(),
                |error| JoinReply {
                    error,
                    generation: -1,
                    protocol_type: None,
                    protocol_name: None,
                    leader: String::new(),
                    member_id,
                    members: vec![],
                    skip_assignment: false,
                },
            )
            .await;
            if r.error != ResponseError::MemberIdRequired.code() {
                this.count_error(ApiKey::JoinGroup, r.error);
            }
            let members = r
                .members
                .into_iter()
                .map(|(id, iid, meta)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_group_instance_id(if version >= 5 {
                            iid.map(StrBytes::from_string)
                        } else {
                            None
                        })
                        .with_metadata(meta)
                })
                .collect();
            let protocol_name = match (r.protocol_name, version >= 7) {
                (Some(n), _) => Some(StrBytes::from_string(n)),
                (None, true) => None,
                (None, false) => Some(StrBytes::default()),
            };
            let resp = JoinGroupResponse::default()
                .with_error_code(r.error)
                .with_generation_id(r.generation)
                .with_protocol_type(if version >= 7 {
                    r.protocol_type.map(StrBytes::from_string)
                } else {
                    None
                })
                .with_protocol_name(protocol_name)
                .with_leader(StrBytes::from_string(r.leader))
                .with_member_id(StrBytes::from_string(r.member_id))
                .with_members(members)
                .with_skip_assignment(version >= 9 && r.skip_assignment);
            encode_response(ApiKey::JoinGroup, version, corr, &resp).map(Some)
        })
    }

    pub(super) fn sync_group(
        self: &Arc<Self>,
        req: SyncGroupRequest,
        version: i16,
        corr: i32,
    ) -> Reply {
        let outcome = self.groups.sync(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|s| s.as_str()),
            req.generation_id,
            req.assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        );
        let this = self.clone();
        Box::pin(async move {
            let r = settle(
                &this,
                outcome,
                ResponseError::RebalanceInProgress.code(),
                |error| SyncReply {
                    error,
                    protocol_type: None,
                    protocol_name: None,
                    assignment: Bytes::new(),
                },
            )
            .await;
            this.count_error(ApiKey::SyncGroup, r.error);
            let mut resp = SyncGroupResponse::default()
                .with_error_code(r.error)
                .with_assignment(r.assignment);
            if version >= 5 {
                resp = resp
                    .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
                    .with_protocol_name(r.protocol_name.map(StrBytes::from_string));
            }
            encode_response(ApiKey::SyncGroup, version, corr, &resp).map(Some)
        })
    }

    pub(super) fn heartbeat(&self, req: HeartbeatRequest) -> HeartbeatResponse {
        let code = self.groups.heartbeat(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|s| s.as_str()),
            req.generation_id,
        );
        if code != ResponseError::RebalanceInProgress.code() {
            self.count_error(ApiKey::Heartbeat, code);
        }
        HeartbeatResponse::default().with_error_code(code)
    }

    pub(super) fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let members: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| (m.member_id.to_string(), opt_str(&m.group_instance_id)))
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let codes = self.groups.leave(req.group_id.0.as_str(), &members);
        for c in &codes {
            self.count_error(ApiKey::LeaveGroup, *c);
        }
        if version >= 3 {
            let resp = members
                .into_iter()
                .zip(codes)
                .map(|((m, i), code)| {
                    MemberResponse::default()
                        .with_member_id(StrBytes::from_string(m))
                        .with_group_instance_id(i.map(StrBytes::from_string))
                        .with_error_code(code)
                })
                .collect();
            LeaveGroupResponse::default().with_members(resp)
        } else {
            LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
        }
    }

    pub(super) async fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        who: &Session,
    ) -> OffsetCommitResponse {
        let group_id = req.group_id.0.to_string();
        let group_allowed = self.authorize(who, op::READ, resource::GROUP, &group_id);
        let now = now_ms();
        let mut valid = Vec::new();
        // Per-partition checks first; the group-level check then covers the rest.
        let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let topic = self.catalog.get(t.name.0.as_str());
            let mut parts = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let meta = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let code = if !group_allowed {
                    ResponseError::GroupAuthorizationFailed.code()
                } else if !self.authorize(who, op::READ, resource::TOPIC, t.name.0.as_str()) {
                    ResponseError::TopicAuthorizationFailed.code()
                } else if topic
                    .as_ref()
                    .and_then(|tp| tp.partition(p.partition_index))
                    .is_none()
                {
                    ResponseError::UnknownTopicOrPartition.code()
                } else if meta.len() > MAX_METADATA_BYTES {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else {
                    valid.push((
                        t.name.0.to_string(),
                        p.partition_index,
                        Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: meta,
                            commit_ms: now,
                        },
                    ));
                    0
                };
                parts.push((p.partition_index, code));
            }
            results.push((t.name.clone(), parts));
        }
        let group_error = if group_id.is_empty() {
            Err(ResponseError::InvalidGroupId.code())
        } else if valid.is_empty() {
            Ok(())
        } else {
            self.groups
                .commit(
                    &group_id,
                    req.member_id.as_str(),
                    req.group_instance_id.as_ref().map(|s| s.as_str()),
                    req.generation_id_or_member_epoch,
                    valid,
                )
                .await
        };
        let topics = results
            .into_iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .into_iter()
                    .map(|(p, code)| {
                        let code = if code != 0 {
                            code
                        } else {
                            group_error.err().unwrap_or(0)
                        };
                        self.count_error(ApiKey::OffsetCommit, code);
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(p)
                            .with_error_code(code)
                    })
                    .collect();
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(partitions)
            })
            .collect();
        OffsetCommitResponse::default().with_topics(topics)
    }

    pub(super) fn offset_fetch(
        &self,
        req: OffsetFetchRequest,
        version: i16,
        who: &Session,
    ) -> OffsetFetchResponse {
        let lookup = |group: &str, topics: Option<Vec<(String, Vec<i32>)>>| {
            if !self.authorize(who, op::DESCRIBE, resource::GROUP, group) {
                return Err(ResponseError::GroupAuthorizationFailed.code());
            }
            let mut by_topic: Vec<TopicCommits> = Vec::new();
            for (t, p, c) in self.groups.committed(group, topics.as_deref())? {
                match by_topic.iter_mut().find(|(name, _)| *name == t) {
                    Some((_, v)) => v.push((p, c)),
                    None => by_topic.push((t, vec![(p, c)])),
                }
            }
            Ok::<_, i16>(by_topic)
        };
        let committed = |c: &Option<Committed>| match c {
            Some(c) => (
                c.offset,
                if version >= 5 { c.leader_epoch } else { -1 },
                c.metadata.clone(),
            ),
            None => (-1, -1, String::new()),
        };
        // KIP-447: a consumer asking for stable offsets waits (retries) while a
        // transaction still holds an offset of the partition.
        let require_stable = req.require_stable;
        let fetched = |group: &str, topic: &str, p: i32, c: &Option<Committed>| {
            let code = if require_stable && self.groups.unstable(group, topic, p) {
                ResponseError::UnstableOffsetCommit.code()
            } else {
                0
            };
            self.count_error(ApiKey::OffsetFetch, code);
            let (o, e, m) = committed(if code == 0 { c } else { &None });
            (code, o, e, m)
        };
        if version >= 8 {
            let groups = req
                .groups
                .into_iter()
                .map(|g| {
                    let wanted = g.topics.map(|ts| {
                        ts.into_iter()
                            .map(|t| (t.name.0.to_string(), t.partition_indexes))
                            .collect()
                    });
                    let (topics, code) = match lookup(g.group_id.0.as_str(), wanted) {
                        Ok(t) => (t, 0),
                        Err(code) => (Vec::new(), code),
                    };
                    self.count_error(ApiKey::OffsetFetch, code);
                    let group = g.group_id.0.as_str();
                    let topics = topics
                        .into_iter()
                        .map(|(t, parts)| {
                            let partitions = parts
                                .iter()
                                .map(|(p, c)| {
                                    let (code, o, e, m) = fetched(group, &t, *p, c);
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(o)
                                        .with_committed_leader_epoch(e)
                                        .with_metadata(Some(StrBytes::from_string(m)))
                                        .with_error_code(code)
                                })
                                .collect();
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(StrBytes::from_string(t)))
                                .with_partitions(partitions)
                        })
                        .collect();
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_topics(topics)
                        .with_error_code(code)
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let wanted_v1 = wanted.clone();
        let by_topic = match lookup(req.group_id.0.as_str(), wanted) {
            Ok(t) => t,
            Err(code) => {
                self.count_error(ApiKey::OffsetFetch, code);
                // v0-1 have no top-level error: clients read it from the partitions.
                let partitions = |ps: Vec<i32>| {
                    ps.into_iter()
                        .map(|p| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(-1)
                                .with_error_code(code)
                        })
                        .collect()
                };
                let topics = wanted_v1
                    .into_iter()
                    .flatten()
                    .map(|(t, ps)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t)))
                            .with_partitions(partitions(ps))
                    })
                    .collect();
                return OffsetFetchResponse::default()
                    .with_error_code(code)
                    .with_topics(topics);
            }
        };
        let group = req.group_id.0.as_str();
        let topics = by_topic
            .into_iter()
            .map(|(t, parts)| {
                let partitions = parts
                    .iter()
                    .map(|(p, c)| {
                        let (code, o, e, m) = fetched(group, &t, *p, c);
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(o)
                            .with_committed_leader_epoch(e)
                            .with_metadata(Some(StrBytes::from_string(m)))
                            .with_error_code(code)
                    })
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t)))
                    .with_partitions(partitions)
            })
            .collect();
        OffsetFetchResponse::default().with_topics(topics)
    }

    pub(super) fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        who: &Session,
    ) -> DescribeGroupsResponse {
        let with_ops = req.include_authorized_operations;
        let groups = req
            .groups
            .into_iter()
            .map(|gid| {
                if !self.authorize(who, op::DESCRIBE, resource::GROUP, gid.0.as_str()) {
                    let code = ResponseError::GroupAuthorizationFailed.code();
                    self.count_error(ApiKey::DescribeGroups, code);
                    return DescribedGroup::default()
                        .with_error_code(code)
                        .with_group_id(gid);
                }
                let ops = if with_ops {
                    self.authorized_operations(who, resource::GROUP, gid.0.as_str())
                } else {
                    i32::MIN
                };
                let d = self.groups.describe(gid.0.as_str());
                self.count_error(ApiKey::DescribeGroups, d.error);
                let members = d
                    .members
                    .into_iter()
                    .map(|(id, iid, client, host, meta, assignment)| {
                        DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(id))
                            .with_group_instance_id(iid.map(StrBytes::from_string))
                            .with_client_id(StrBytes::from_string(client))
                            .with_client_host(StrBytes::from_string(host))
                            .with_member_metadata(meta)
                            .with_member_assignment(assignment)
                    })
                    .collect();
                DescribedGroup::default()
                    .with_error_code(d.error)
                    .with_group_id(gid)
                    .with_group_state(str_bytes(d.state))
                    .with_protocol_type(StrBytes::from_string(d.protocol_type))
                    .with_protocol_data(StrBytes::from_string(d.protocol))
                    .with_members(members)
                    .with_authorized_operations(ops)
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    pub(super) fn list_groups(
        &self,
        req: ListGroupsRequest,
        version: i16,
        who: &Session,
    ) -> ListGroupsResponse {
        // Kafka: DESCRIBE on the cluster lists every group, else those the client may describe.
        let all = self.authorize(
            who,
            op::DESCRIBE,
            resource::CLUSTER,
            crate::acl::CLUSTER_NAME,
        );
        let groups =
            self.groups
                .list()
                .into_iter()
                .filter(|(id, _, _)| all || self.authorize(who, op::DESCRIBE, resource::GROUP, id))
                .filter(|(_, _, state)| {
                    req.states_filter.is_empty()
                        || req
                            .states_filter
                            .iter()
                            .any(|f| f.as_str().eq_ignore_ascii_case(state))
                })
                .filter(|(_, ptype, _)| {
                    req.types_filter.is_empty()
                        || req.types_filter.iter().any(|f| {
                            f.as_str().eq_ignore_ascii_case("classic") || f.as_str() == ptype
                        })
                })
                .map(|(id, ptype, state)| {
                    let g = ListedGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(id)))
                        .with_protocol_type(StrBytes::from_string(ptype));
                    match version {
                        v if v >= 5 => g
                            .with_group_state(str_bytes(state))
                            .with_group_type(str_bytes("classic")),
                        4 => g.with_group_state(str_bytes(state)),
                        _ => g,
                    }
                })
                .collect();
        ListGroupsResponse::default().with_groups(groups)
    }

    pub(super) async fn delete_groups(
        &self,
        req: DeleteGroupsRequest,
        who: &Session,
    ) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(req.groups_names.len());
        for g in req.groups_names {
            let code = if self.authorize(who, op::DELETE, resource::GROUP, g.0.as_str()) {
                self.groups.delete_group(g.0.as_str()).await
            } else {
                ResponseError::GroupAuthorizationFailed.code()
            };
            self.count_error(ApiKey::DeleteGroups, code);
            results.push(
                delete_groups_response::DeletableGroupResult::default()
                    .with_group_id(g)
                    .with_error_code(code),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }

    pub(super) async fn offset_delete(&self, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
        let partitions: Vec<(String, i32)> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.0.to_string(), p.partition_index))
            })
            .collect();
        match self
            .groups
            .delete_offsets(req.group_id.0.as_str(), &partitions, subscribes_to)
            .await
        {
            Err(code) => {
                self.count_error(ApiKey::OffsetDelete, code);
                OffsetDeleteResponse::default().with_error_code(code)
            }
            Ok(codes) => {
                let mut codes = codes.into_iter();
                let topics = req
                    .topics
                    .into_iter()
                    .map(|t| {
                        let parts = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let code = codes.next().unwrap_or(0);
                                self.count_error(ApiKey::OffsetDelete, code);
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect();
                        OffsetDeleteResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(parts)
                    })
                    .collect();
                OffsetDeleteResponse::default().with_topics(topics)
            }
        }
    }
}
