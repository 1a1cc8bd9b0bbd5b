//! Metadata and DescribeCluster: this broker, its topics and their partitions.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;

use super::{str_bytes, Broker};
use crate::metadata::{names::validate_topic_name, CatalogError, Topic};

impl Broker {
    pub(super) async fn metadata(&self, req: MetadataRequest, version: i16) -> MetadataResponse {
        let node = BrokerId(self.config.node_id);
        let (host, port) = self.advertised();
        let broker = MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port);
        // v0: an empty list means all topics; v1+: null means all, empty means none.
        let requested: Option<Vec<MetadataRequestTopicRef>> = match req.topics {
            None => None,
            Some(t) if t.is_empty() && version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .map(|t| match t.name {
                        Some(n) => MetadataRequestTopicRef::Name(n),
                        None => MetadataRequestTopicRef::Id(t.topic_id),
                    })
                    .collect(),
            ),
        };
        let auto_create =
            self.config.auto_create_topics_enable && (version < 4 || req.allow_auto_topic_creation);
        let topics = match requested {
            None => self
                .catalog
                .all()
                .iter()
                .map(|t| self.describe_topic(t))
                .collect(),
            Some(refs) => {
                let mut out = Vec::with_capacity(refs.len());
                for r in refs {
                    out.push(match r {
                        MetadataRequestTopicRef::Name(name) => {
                            self.metadata_for_name(name, auto_create).await
                        }
                        MetadataRequestTopicRef::Id(id) => match self.catalog.get_by_id(id) {
                            Some(t) => self.describe_topic(&t),
                            None => MetadataResponseTopic::default()
                                .with_topic_id(id)
                                .with_name(None)
                                .with_error_code(ResponseError::UnknownTopicId.code()),
                        },
                    });
                }
                out
            }
        };
        for t in &topics {
            self.count_error(ApiKey::Metadata, t.error_code);
        }
        MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_cluster_id(Some(str_bytes(&self.catalog.cluster_id)))
            .with_controller_id(node)
            .with_topics(topics)
    }

    async fn metadata_for_name(&self, name: TopicName, auto_create: bool) -> MetadataResponseTopic {
        let unknown = |code: i16| {
            MetadataResponseTopic::default()
                .with_name(Some(name.clone()))
                .with_error_code(code)
        };
        if validate_topic_name(name.0.as_str()).is_err() {
            return unknown(ResponseError::InvalidTopicException.code());
        }
        if let Some(t) = self.catalog.get(name.0.as_str()) {
            return self.describe_topic(&t);
        }
        if !auto_create {
            return unknown(ResponseError::UnknownTopicOrPartition.code());
        }
        match self
            .catalog
            .create(name.0.as_str(), self.config.num_partitions, BTreeMap::new())
            .await
        {
            Ok(t) => self.describe_topic(&t),
            // Created concurrently by another request: describe what is there.
            Err(CatalogError::TopicExists(_)) => match self.catalog.get(name.0.as_str()) {
                Some(t) => self.describe_topic(&t),
                None => unknown(ResponseError::UnknownTopicOrPartition.code()),
            },
            Err(e) => unknown(super::catalog_error_code(&e)),
        }
    }

    fn describe_topic(&self, t: &Topic) -> MetadataResponseTopic {
        let node = BrokerId(self.config.node_id);
        let partitions = t
            .partitions()
            .iter()
            .map(|p| {
                MetadataResponsePartition::default()
                    .with_partition_index(p.index)
                    .with_leader_id(node)
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(&t.name))))
            .with_topic_id(t.id)
            .with_partitions(partitions)
    }

    pub(super) fn describe_cluster(&self, _req: DescribeClusterRequest) -> DescribeClusterResponse {
        let (host, port) = self.advertised();
        DescribeClusterResponse::default()
            .with_cluster_id(str_bytes(&self.catalog.cluster_id))
            .with_controller_id(BrokerId(self.config.node_id))
            .with_endpoint_type(1)
            .with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(self.config.node_id))
                .with_host(host)
                .with_port(port)])
    }
}

enum MetadataRequestTopicRef {
    Name(TopicName),
    Id(uuid::Uuid),
}
