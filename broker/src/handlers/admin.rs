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

use super::{catalog_error_code, configs::topic_config_entries, str_bytes, Broker};
use crate::metadata::CatalogError;

/// Replication factors this single-node broker can satisfy.
fn check_replication(
    rf: i16,
    assignments: &[Vec<BrokerId>],
    node: i32,
) -> Result<(), (i16, String)> {
    if rf > 1 {
        return Err((
            ResponseError::InvalidReplicationFactor.code(),
            format!("replication factor {rf} is larger than the 1 available broker"),
        ));
    }
    if rf == 0 || rf < -1 {
        return Err((
            ResponseError::InvalidReplicationFactor.code(),
            "replication factor must be at least 1".into(),
        ));
    }
    if assignments.iter().any(|a| a.len() != 1 || a[0].0 != node) {
        return Err((
            ResponseError::InvalidReplicaAssignment.code(),
            format!("replica assignments may only name broker {node}"),
        ));
    }
    Ok(())
}

impl Broker {
    pub(super) async fn create_topics(
        &self,
        req: CreateTopicsRequest,
        version: i16,
    ) -> CreateTopicsResponse {
        let mut results = Vec::with_capacity(req.topics.len());
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
                        configs.insert(c.name.to_string(), v.to_string());
                    }
                    None => null_config = Some(c.name.to_string()),
                }
            }
            let assignments: Vec<Vec<BrokerId>> =
                t.assignments.iter().map(|a| a.broker_ids.clone()).collect();
            let checked = match null_config {
                Some(k) => Err((
                    ResponseError::InvalidConfig.code(),
                    format!("config {k} has a null value"),
                )),
                None => check_replication(t.replication_factor, &assignments, self.config.node_id)
                    .and_then(|_| {
                        self.catalog
                            .check_create(&name, partitions, &configs)
                            .map_err(|e| (catalog_error_code(&e), e.to_string()))
                    }),
            };
            let outcome = match checked {
                Err(e) => Err(e),
                Ok(()) if req.validate_only => Ok(None),
                Ok(()) => self
                    .catalog
                    .create(&name, partitions, configs.clone())
                    .await
                    .map(Some)
                    .map_err(|e| (catalog_error_code(&e), e.to_string())),
            };
            match outcome {
                Err((code, msg)) => {
                    self.count_error(ApiKey::CreateTopics, code);
                    result = result
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(msg)));
                }
                Ok(created) => {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(1);
                    if version >= 5 {
                        let entries = topic_config_entries(&configs, &self.config)
                            .into_iter()
                            .map(|e| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(e.name))
                                    .with_value(Some(StrBytes::from_string(e.value)))
                                    .with_config_source(e.source)
                            })
                            .collect();
                        result = result.with_configs(Some(entries));
                    }
                    if let (Some(t), true) = (created, version >= 7) {
                        result = result.with_topic_id(t.id);
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
    ) -> DeleteTopicsResponse {
        let names: Vec<TopicName> = if version >= 6 {
            req.topics.into_iter().filter_map(|t| t.name).collect()
        } else {
            req.topic_names
        };
        let mut responses = Vec::with_capacity(names.len());
        for name in names {
            let partitions = self
                .catalog
                .get(name.0.as_str())
                .map(|t| t.partition_count())
                .unwrap_or(0);
            let code = match self.catalog.delete(name.0.as_str()).await {
                Ok(()) => {
                    self.metrics.forget_topic(name.0.as_str(), partitions);
                    // Committed offsets must not carry over to a topic re-created later.
                    self.groups
                        .forget_topic(name.0.as_str())
                        .await
                        .err()
                        .unwrap_or(0)
                }
                Err(e) => catalog_error_code(&e),
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
    ) -> CreatePartitionsResponse {
        let mut results = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let assignments: Vec<Vec<BrokerId>> = t
                .assignments
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.broker_ids)
                .collect();
            let outcome = match check_replication(1, &assignments, self.config.node_id) {
                Err(e) => Err(e),
                Ok(()) => self
                    .catalog
                    .add_partitions(t.name.0.as_str(), t.count, req.validate_only)
                    .await
                    .map_err(|e: CatalogError| (catalog_error_code(&e), e.to_string())),
            };
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
