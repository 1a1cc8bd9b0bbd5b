//! CreateTopics, DeleteTopics and CreatePartitions.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{configs::topic_config_entries, control_error, Broker};
use crate::acl::{self, op, resource, Session};
use crate::cluster::{ControlReply, ControlRequest};

impl Broker {
    pub(super) async fn create_topics(
        &self,
        req: CreateTopicsRequest,
        version: i16,
        who: &Session,
    ) -> CreateTopicsResponse {
        let mut results = Vec::with_capacity(req.topics.len());
        let cluster_create = self.authorize(who, op::CREATE, resource::CLUSTER, acl::CLUSTER_NAME);
        for t in req.topics {
            let name = t.name.0.to_string();
            let mut result = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            let partitions = match (t.num_partitions, t.assignments.is_empty()) {
                (-1, true) => self.config.num_partitions,
                (-1, false) => t.assignments.len() as i32,
                (n, _) => n,
            };
            let mut configs = BTreeMap::new();
            let mut null_config = None;
            for c in &t.configs {
                match &c.value {
                    Some(v) => {
                        let (k, v) = (c.name.as_str(), v.as_str());
                        configs.insert(k.to_string(), crate::configs::topic::normalised(k, v));
                    }
                    None => null_config = Some(c.name.to_string()),
                }
            }
            let may_create =
                cluster_create || self.authorize(who, op::CREATE, resource::TOPIC, &name);
            let outcome = match null_config {
                _ if !may_create => Err((
                    ResponseError::TopicAuthorizationFailed.code(),
                    "Authorization failed.".to_string(),
                )),
                Some(k) => Err((
                    ResponseError::InvalidConfig.code(),
                    format!("Null value not supported for topic configs: {k}"),
                )),
                None => {
                    let req_cfg = ControlRequest::CreateTopic {
                        name: name.clone(),
                        partitions: if t.assignments.is_empty() {
                            partitions
                        } else {
                            -1
                        },
                        replication_factor: t.replication_factor,
                        assignment: t
                            .assignments
                            .iter()
                            .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                            .collect(),
                        configs: configs.clone(),
                        validate_only: req.validate_only,
                    };
                    let reply = self.control(req_cfg, req.timeout_ms).await;
                    match (control_error(&reply), reply) {
                        (Some(e), _) => Err(e),
                        (
                            None,
                            ControlReply::Created {
                                id,
                                replication_factor,
                                ..
                            },
                        ) => Ok((id, replication_factor)),
                        (None, other) => Err((
                            ResponseError::UnknownServerError.code(),
                            format!("unexpected controller reply {other:?}"),
                        )),
                    }
                }
            };
            match outcome {
                Err((code, msg)) => {
                    self.count_error(ApiKey::CreateTopics, code);
                    result = result
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(msg)));
                }
                Ok((id, rf)) => {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(rf);
                    if version >= 5 {
                        let entries =
                            topic_config_entries(&configs, &self.catalog.broker_configs())
                                .into_iter()
                                .map(|e| {
                                    CreatableTopicConfigs::default()
                                        .with_config_source(e.source())
                                        .with_name(StrBytes::from_string(e.name))
                                        .with_value(Some(StrBytes::from_string(e.value)))
                                })
                                .collect();
                        result = result.with_configs(Some(entries));
                    }
                    if version >= 7 {
                        result = result.with_topic_id(id);
                    }
                }
            }
            results.push(result);
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    pub(super) async fn delete_topics(
        &self,
        req: DeleteTopicsRequest,
        version: i16,
        who: &Session,
    ) -> DeleteTopicsResponse {
        let names: Vec<TopicName> = if version >= 6 {
            req.topics.into_iter().filter_map(|t| t.name).collect()
        } else {
            req.topic_names
        };
        let mut responses = Vec::with_capacity(names.len());
        for name in names {
            if !self.authorize(who, op::DELETE, resource::TOPIC, name.0.as_str()) {
                let code = ResponseError::TopicAuthorizationFailed.code();
                self.count_error(ApiKey::DeleteTopics, code);
                responses.push(
                    DeletableTopicResult::default()
                        .with_name(Some(name))
                        .with_error_code(code),
                );
                continue;
            }
            let partitions = self
                .catalog
                .get(name.0.as_str())
                .map(|t| t.partition_count())
                .unwrap_or(0);
            let reply = self
                .control(
                    ControlRequest::DeleteTopic {
                        name: name.0.to_string(),
                    },
                    req.timeout_ms,
                )
                .await;
            let code = match control_error(&reply) {
                Some((code, _)) => code,
                None => {
                    self.metrics.forget_topic(name.0.as_str(), partitions);
                    0
                }
            };
            self.count_error(ApiKey::DeleteTopics, code);
            responses.push(
                DeletableTopicResult::default()
                    .with_name(Some(name))
                    .with_error_code(code),
            );
        }
        DeleteTopicsResponse::default().with_responses(responses)
    }

    pub(super) async fn create_partitions(
        &self,
        req: CreatePartitionsRequest,
        who: &Session,
    ) -> CreatePartitionsResponse {
        let mut results = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            if !self.authorize(who, op::ALTER, resource::TOPIC, t.name.0.as_str()) {
                let code = ResponseError::TopicAuthorizationFailed.code();
                self.count_error(ApiKey::CreatePartitions, code);
                results.push(
                    CreatePartitionsTopicResult::default()
                        .with_name(t.name)
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_static_str(
                            "Authorization failed.",
                        ))),
                );
                continue;
            }
            let assignments: Vec<Vec<BrokerId>> = t
                .assignments
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.broker_ids)
                .collect();
            let reply = self
                .control(
                    ControlRequest::AddPartitions {
                        name: t.name.0.to_string(),
                        count: t.count,
                        assignment: assignments
                            .into_iter()
                            .map(|a| a.into_iter().map(|b| b.0).collect())
                            .collect(),
                        validate_only: req.validate_only,
                    },
                    req.timeout_ms,
                )
                .await;
            let outcome = control_error(&reply).map_or(Ok(()), Err);
            let mut r = CreatePartitionsTopicResult::default().with_name(t.name);
            if let Err((code, msg)) = outcome {
                self.count_error(ApiKey::CreatePartitions, code);
                r = r
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(msg)));
            }
            results.push(r);
        }
        CreatePartitionsResponse::default().with_results(results)
    }
}
