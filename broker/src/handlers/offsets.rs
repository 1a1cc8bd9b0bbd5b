//! ListOffsets, OffsetForLeaderEpoch and DeleteRecords.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::*;

use super::produce::log_error_code;
use super::{leader_check, Broker};
use crate::acl::{op, resource, Session};

/// ListOffsets special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

impl Broker {
    pub(super) async fn list_offsets(
        self: &Arc<Self>,
        req: ListOffsetsRequest,
        version: i16,
        who: &Session,
    ) -> ListOffsetsResponse {
        let denied: Vec<bool> = req
            .topics
            .iter()
            .map(|t| !self.authorize(who, op::DESCRIBE, resource::TOPIC, t.name.0.as_str()))
            .collect();
        let this = self.clone();
        let committed = req.isolation_level == 1;
        let topics = tokio::task::spawn_blocking(move || {
            req.topics
                .into_iter()
                .zip(denied)
                .map(|(t, denied)| {
                    let topic = this.catalog.get(t.name.0.as_str());
                    let partitions = t
                        .partitions
                        .into_iter()
                        .map(|p| {
                            let resp = ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_timestamp(-1)
                                .with_offset(-1)
                                .with_leader_epoch(-1);
                            if denied {
                                return resp.with_error_code(
                                    ResponseError::TopicAuthorizationFailed.code(),
                                );
                            }
                            let Some(part) =
                                topic.as_ref().and_then(|t| t.partition(p.partition_index))
                            else {
                                return resp.with_error_code(
                                    ResponseError::UnknownTopicOrPartition.code(),
                                );
                            };
                            let code = leader_check(&part, p.current_leader_epoch);
                            if code != 0 {
                                return resp.with_error_code(code);
                            }
                            let offsets = part.offsets();
                            let found = match p.timestamp {
                                LATEST if committed => Ok(Some((part.last_stable_offset(), -1))),
                                LATEST => Ok(Some((offsets.high_watermark, -1))),
                                EARLIEST => Ok(Some((offsets.log_start, -1))),
                                MAX_TIMESTAMP => part.max_timestamp(),
                                ts if ts >= 0 => part.offset_for_timestamp(ts),
                                _ => {
                                    return resp
                                        .with_error_code(ResponseError::InvalidRequest.code())
                                }
                            };
                            match found {
                                Ok(Some((offset, ts))) => resp
                                    .with_offset(offset)
                                    .with_timestamp(ts)
                                    // Leader epochs exist in the response from v4 on.
                                    .with_leader_epoch(if version >= 4 {
                                        part.leader_epoch()
                                    } else {
                                        -1
                                    }),
                                Ok(None) => resp,
                                Err(e) => resp.with_error_code(log_error_code(&e)),
                            }
                        })
                        .collect();
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name)
                        .with_partitions(partitions)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for t in &topics {
            for p in &t.partitions {
                self.count_error(ApiKey::ListOffsets, p.error_code);
            }
        }
        ListOffsetsResponse::default().with_topics(topics)
    }

    pub(super) fn offset_for_leader_epoch(
        &self,
        req: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let topics = req
            .topics
            .into_iter()
            .map(|t| {
                let topic = self.catalog.get(t.topic.0.as_str());
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let resp = EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                        let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition))
                        else {
                            return resp
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                        };
                        let code = leader_check(&part, p.current_leader_epoch);
                        if code != 0 {
                            return resp.with_error_code(code);
                        }
                        if p.leader_epoch < 0 {
                            return resp;
                        }
                        let (epoch, end) = part.end_offset_for_epoch(p.leader_epoch);
                        resp.with_leader_epoch(epoch).with_end_offset(end)
                    })
                    .collect();
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic)
                    .with_partitions(partitions)
            })
            .collect();
        OffsetForLeaderEpochResponse::default().with_topics(topics)
    }

    pub(super) async fn delete_records(
        &self,
        req: DeleteRecordsRequest,
        who: &Session,
    ) -> DeleteRecordsResponse {
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let denied = !self.authorize(who, op::DELETE, resource::TOPIC, t.name.0.as_str());
            let topic = self.catalog.get(t.name.0.as_str());
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in t.partitions {
                let resp = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                let resp = match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                    _ if denied => {
                        resp.with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    }
                    None => resp.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                    // Followers move their log start after the leader's.
                    Some(part) if leader_check(&part, -1) != 0 => {
                        resp.with_error_code(leader_check(&part, -1))
                    }
                    Some(part) => match part.delete_records(p.offset).await {
                        Ok(lw) => resp.with_low_watermark(lw),
                        Err(e) => resp.with_error_code(log_error_code(&e)),
                    },
                };
                self.count_error(ApiKey::DeleteRecords, resp.error_code);
                partitions.push(resp);
            }
            topics.push(
                DeleteRecordsTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions),
            );
        }
        DeleteRecordsResponse::default().with_topics(topics)
    }
}
