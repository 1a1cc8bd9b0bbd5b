//! Kafka admin operations on one connection: topics, partitions, configs.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::{ClientError, Connection};

/// A Kafka error code returned for an admin operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AdminError {
    /// Kafka error code.
    pub code: i16,
    /// Broker message or the error's name.
    pub message: String,
}

/// Admin call failure: transport or a Kafka error.
#[derive(Debug, thiserror::Error)]
pub enum AdminFailure {
    /// Connection or codec failure.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The broker refused.
    #[error("broker error {0}")]
    Kafka(AdminError),
}

fn check(code: i16, message: Option<&StrBytes>) -> Result<(), AdminFailure> {
    if code == 0 {
        return Ok(());
    }
    let message = message
        .map(|m| m.to_string())
        .or_else(|| ResponseError::try_from_code(code).map(|e| e.to_string()))
        .unwrap_or_default();
    Err(AdminFailure::Kafka(AdminError { code, message }))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Topic id.
    pub id: String,
    /// Partition count.
    pub partitions: i32,
    /// Replicas of partition 0.
    pub replication_factor: i32,
}

/// Resource type of topics in config APIs.
const TOPIC_RESOURCE: i8 = 2;
/// Resource type of brokers in config APIs (name `""`: the cluster-wide default).
const BROKER_RESOURCE: i8 = 4;
/// Config source of per-topic overrides.
const TOPIC_CONFIG_SOURCE: i8 = 1;
/// Config source of cluster-wide dynamic broker defaults.
const DYNAMIC_DEFAULT_BROKER_SOURCE: i8 = 3;

impl Connection {
    /// Describes a topic; `None` if it does not exist.
    pub async fn describe_topic(
        &mut self,
        name: &str,
    ) -> Result<Option<TopicDescription>, AdminFailure> {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(s(name))))
            ]))
            .with_allow_auto_topic_creation(false);
        let resp = self.call(12, &req).await?;
        let Some(t) = resp.topics.into_iter().next() else {
            return Ok(None);
        };
        if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
            return Ok(None);
        }
        check(t.error_code, None)?;
        Ok(Some(TopicDescription {
            id: t.topic_id.to_string(),
            partitions: t.partitions.len() as i32,
            replication_factor: t
                .partitions
                .first()
                .map(|p| p.replica_nodes.len() as i32)
                .unwrap_or(0),
        }))
    }

    /// Creates a topic.
    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), AdminFailure> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            );
        let resp = self
            .call(
                7,
                &CreateTopicsRequest::default()
                    .with_topics(vec![topic])
                    .with_timeout_ms(30_000),
            )
            .await?;
        let t = resp
            .topics
            .first()
            .ok_or(ClientError::Codec("empty CreateTopics response".into()))?;
        check(t.error_code, t.error_message.as_ref())
    }

    /// Deletes a topic.
    pub async fn delete_topic(&mut self, name: &str) -> Result<(), AdminFailure> {
        let resp = self
            .call(
                5,
                &DeleteTopicsRequest::default()
                    .with_topic_names(vec![TopicName(s(name))])
                    .with_timeout_ms(30_000),
            )
            .await?;
        let t = resp
            .responses
            .first()
            .ok_or(ClientError::Codec("empty DeleteTopics response".into()))?;
        check(t.error_code, t.error_message.as_ref())
    }

    /// Grows a topic to `count` partitions.
    pub async fn create_partitions(&mut self, name: &str, count: i32) -> Result<(), AdminFailure> {
        let req = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(TopicName(s(name)))
                .with_count(count)])
            .with_timeout_ms(30_000);
        let resp = self.call(3, &req).await?;
        let r = resp
            .results
            .first()
            .ok_or(ClientError::Codec("empty CreatePartitions response".into()))?;
        check(r.error_code, r.error_message.as_ref())
    }

    /// The topic's explicitly set configs (overrides only).
    pub async fn topic_overrides(
        &mut self,
        name: &str,
    ) -> Result<BTreeMap<String, String>, AdminFailure> {
        self.configs_from(TOPIC_RESOURCE, name, TOPIC_CONFIG_SOURCE)
            .await
    }

    /// Sets (`Some`) or removes (`None`) topic configs incrementally.
    pub async fn alter_topic_configs(
        &mut self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<(), AdminFailure> {
        self.alter_configs(TOPIC_RESOURCE, name, changes).await
    }

    /// The cluster-wide dynamic broker defaults (`BROKER ""`), by Kafka name.
    pub async fn cluster_broker_defaults(
        &mut self,
    ) -> Result<BTreeMap<String, String>, AdminFailure> {
        self.configs_from(BROKER_RESOURCE, "", DYNAMIC_DEFAULT_BROKER_SOURCE)
            .await
    }

    /// Sets (`Some`) or removes (`None`) cluster-wide dynamic broker defaults.
    pub async fn alter_cluster_broker_defaults(
        &mut self,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<(), AdminFailure> {
        self.alter_configs(BROKER_RESOURCE, "", changes).await
    }

    /// A resource's configs that come from `source`.
    async fn configs_from(
        &mut self,
        resource_type: i8,
        name: &str,
        source: i8,
    ) -> Result<BTreeMap<String, String>, AdminFailure> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(s(name))
                .with_configuration_keys(None),
        ]);
        let resp = self.call(4, &req).await?;
        let r = resp
            .results
            .first()
            .ok_or(ClientError::Codec("empty DescribeConfigs response".into()))?;
        check(r.error_code, r.error_message.as_ref())?;
        Ok(r.configs
            .iter()
            .filter(|c| c.config_source == source)
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect())
    }

    /// IncrementalAlterConfigs of one resource: SET for `Some`, DELETE for `None`.
    async fn alter_configs(
        &mut self,
        resource_type: i8,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<(), AdminFailure> {
        let configs = changes
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(s(k))
                    .with_config_operation(if v.is_some() { 0 } else { 1 })
                    .with_value(v.as_deref().map(s))
            })
            .collect();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(s(name))
                .with_configs(configs),
        ]);
        let resp = self.call(1, &req).await?;
        let r = resp.responses.first().ok_or(ClientError::Codec(
            "empty IncrementalAlterConfigs response".into(),
        ))?;
        check(r.error_code, r.error_message.as_ref())
    }
}
