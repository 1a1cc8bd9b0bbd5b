//! AlterPartitionReassignments, ListPartitionReassignments and DescribeLogDirs: moving
//! replicas between brokers, and the sizes that tell where to move them.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{control_error, str_bytes, Broker};
use crate::cluster::image::BrokerId as Id;
use crate::cluster::operations::Sizes;
use crate::cluster::reassign;
use crate::cluster::{ControlReply, ControlRequest};

fn ids(list: &[Id]) -> Vec<BrokerId> {
    list.iter().map(|&b| BrokerId(b)).collect()
}

impl Broker {
    pub(super) async fn alter_partition_reassignments(
        &self,
        req: AlterPartitionReassignmentsRequest,
    ) -> AlterPartitionReassignmentsResponse {
        let wanted: Vec<(String, i32, Option<Vec<Id>>)> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let target = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
                    (t.name.0.to_string(), p.partition_index, target)
                })
            })
            .collect();
        let resp = AlterPartitionReassignmentsResponse::default()
            .with_allow_replication_factor_change(req.allow_replication_factor_change);
        let reply = self
            .control(
                ControlRequest::Reassign {
                    allow_rf_change: req.allow_replication_factor_change,
                    partitions: wanted,
                },
                req.timeout_ms,
            )
            .await;
        let results = match reply {
            ControlReply::Reassigned(r) => r,
            other => {
                let (code, msg) = control_error(&other).unwrap_or((
                    ResponseError::UnknownServerError.code(),
                    format!("unexpected controller reply {other:?}"),
                ));
                self.count_error(ApiKey::AlterPartitionReassignments, code);
                return resp
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(msg)));
            }
        };
        let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
        for (topic, partition, code, msg) in results {
            if code != 0 {
                self.count_error(ApiKey::AlterPartitionReassignments, code);
            }
            by_topic.entry(topic).or_default().push(
                ReassignablePartitionResponse::default()
                    .with_partition_index(partition)
                    .with_error_code(code)
                    .with_error_message(msg.map(StrBytes::from_string)),
            );
        }
        resp.with_responses(
            by_topic
                .into_iter()
                .map(|(t, partitions)| {
                    ReassignableTopicResponse::default()
                        .with_name(TopicName(str_bytes(&t)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
    }

    /// Answered from this broker's copy of the metadata image.
    pub(super) fn list_partition_reassignments(
        &self,
        req: ListPartitionReassignmentsRequest,
    ) -> ListPartitionReassignmentsResponse {
        let img = self.cluster.image();
        let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let mut by_topic: BTreeMap<&str, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
        for (topic, partition, p) in reassign::ongoing(&img) {
            if wanted
                .as_ref()
                .is_some_and(|w| !w.get(topic).is_some_and(|ps| ps.contains(&partition)))
            {
                continue;
            }
            by_topic.entry(topic).or_default().push(
                OngoingPartitionReassignment::default()
                    .with_partition_index(partition)
                    .with_replicas(ids(&p.replicas))
                    .with_adding_replicas(ids(&p.adding))
                    .with_removing_replicas(ids(&p.removing)),
            );
        }
        ListPartitionReassignmentsResponse::default().with_topics(
            by_topic
                .into_iter()
                .map(|(t, partitions)| {
                    OngoingTopicReassignment::default()
                        .with_name(TopicName(str_bytes(t)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
    }

    /// Bytes of every partition this broker holds a replica of.
    pub fn replica_sizes(&self) -> Sizes {
        let me = self.config.node_id;
        let mut out = Sizes::new();
        for (name, i, p) in self.cluster.image().partitions() {
            if !p.replicas.contains(&me) {
                continue;
            }
            if let Some(part) = self.catalog.get(name).and_then(|t| t.partition(i)) {
                out.entry(name.to_string())
                    .or_default()
                    .insert(i, part.size_bytes());
            }
        }
        out
    }

    /// The one log directory of this broker (its data dir) with the size of every
    /// partition it holds a replica of.
    pub(super) fn describe_log_dirs(&self, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
        let me = self.config.node_id;
        let img = self.cluster.image();
        let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.topic.0.to_string(), t.partitions))
                .collect()
        });
        let mut topics = Vec::new();
        for (name, t) in &img.topics {
            let Some(local) = self.catalog.get(name) else {
                continue;
            };
            let partitions: Vec<DescribeLogDirsPartition> = t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| (i as i32, p))
                .filter(|(i, p)| {
                    p.replicas.contains(&me)
                        && wanted
                            .as_ref()
                            .is_none_or(|w| w.get(name).is_some_and(|ps| ps.contains(i)))
                })
                .filter_map(|(i, _)| {
                    let part = local.partition(i)?;
                    let lag = (part.offsets().high_watermark - part.log_end()).max(0);
                    Some(
                        DescribeLogDirsPartition::default()
                            .with_partition_index(i)
                            .with_partition_size(part.size_bytes() as i64)
                            .with_offset_lag(lag),
                    )
                })
                .collect();
            if !partitions.is_empty() {
                topics.push(
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions),
                );
            }
        }
        let (total, usable) = volume_bytes(&self.config.data_dir).unwrap_or((-1, -1));
        let dir = self.config.data_dir.to_string_lossy();
        DescribeLogDirsResponse::default().with_results(vec![DescribeLogDirsResult::default()
            .with_log_dir(str_bytes(&dir))
            .with_topics(topics)
            .with_total_bytes(total)
            .with_usable_bytes(usable)])
    }
}

/// Size and free space (for unprivileged users) of the volume holding `path`.
fn volume_bytes(path: &std::path::Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as i64;
    Some((st.f_blocks as i64 * frsize, st.f_bavail as i64 * frsize))
}
