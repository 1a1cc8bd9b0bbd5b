//! Request handlers: decode a frame, run the API, encode the response.
//!
//! [`Broker::dispatch`] does everything whose order matters on a connection (appends,
//! admin changes) before it returns; what is left (waiting for durability, fetch
//! long-polls) is returned as a future that the connection resolves in request order.

mod admin;
mod configs;
mod fetch;
mod metadata;
mod offsets;
mod produce;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use tokio::sync::Notify;

use crate::config::Config;
use crate::metadata::Catalog;
use crate::metrics::Metrics;
use crate::protocol::{self, encode_response, is_supported, EncodeError};
use crate::storage::Store;

/// Response bytes to send, or `None` when the request gets no response (acks=0).
pub type Reply = Pin<Box<dyn Future<Output = Result<Option<Bytes>, EncodeError>> + Send>>;

/// Why a connection must be closed instead of answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close(pub &'static str);

/// The broker: configuration, storage, topics and metrics shared by all connections.
pub struct Broker {
    /// Effective configuration.
    pub config: Config,
    /// Topic catalog.
    pub catalog: Catalog,
    /// Storage.
    pub store: Arc<Store>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Woken whenever data becomes visible (fetch long-polls wait on it).
    pub data_arrived: Arc<Notify>,
}

fn ready(r: Result<Option<Bytes>, EncodeError>) -> Reply {
    Box::pin(std::future::ready(r))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Broker {
    /// Opens storage and loads every topic.
    pub async fn open(config: Config) -> Result<Arc<Broker>, crate::metadata::CatalogError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            crate::metadata::CatalogError::Storage(Arc::new(crate::storage::StorageError::Corrupt(
                format!("creating data dir: {e}"),
            )))
        })?;
        let store = Arc::new(Store::open(&config.data_dir)?);
        let data_arrived = Arc::new(Notify::new());
        let catalog = Catalog::load(store.clone(), config.clone(), data_arrived.clone()).await?;
        Ok(Arc::new(Broker {
            config,
            catalog,
            store,
            metrics: Metrics::new(),
            data_arrived,
        }))
    }

    /// Host and port advertised to clients.
    pub fn advertised(&self) -> (StrBytes, i32) {
        let (host, port) = self
            .config
            .advertised_host_port()
            .unwrap_or_else(|| ("localhost".to_string(), 9092));
        (StrBytes::from_string(host), port)
    }

    /// Handles one request frame (without its size prefix).
    pub async fn dispatch(self: &Arc<Self>, frame: Bytes) -> Result<Reply, Close> {
        let raw =
            protocol::peek_header(&frame).ok_or(Close("frame shorter than a request header"))?;
        let api = ApiKey::try_from(raw.api_key).map_err(|_| Close("unknown API key"))?;
        let (v, corr) = (raw.api_version, raw.correlation_id);
        if api == ApiKey::ApiVersions && !is_supported(api, v) {
            // Answer with a v0 body listing what we support, so the client retries lower.
            return Ok(ready(
                encode_response(
                    api,
                    0,
                    corr,
                    &self.api_versions(0, ResponseError::UnsupportedVersion.code()),
                )
                .map(Some),
            ));
        }
        if !is_supported(api, v) {
            return Err(Close("unsupported API version"));
        }
        let mut buf = frame;
        RequestHeader::decode(&mut buf, api.request_header_version(v))
            .map_err(|_| Close("undecodable request header"))?;
        let name = api_name(api);
        self.metrics.requests.with_label_values(&[name]).inc();
        let started = Instant::now();

        macro_rules! decode {
            ($t:ty) => {
                <$t>::decode(&mut buf, v).map_err(|_| Close("undecodable request body"))?
            };
        }
        macro_rules! now {
            ($resp:expr) => {{
                let resp = $resp;
                ready(encode_response(api, v, corr, &resp).map(Some))
            }};
        }
        let reply: Reply = match api {
            ApiKey::ApiVersions => now!(self.api_versions(v, 0)),
            ApiKey::Metadata => now!(self.metadata(decode!(MetadataRequest), v).await),
            ApiKey::Produce => {
                return Ok(self.observe(
                    name,
                    started,
                    self.produce(decode!(ProduceRequest), v, corr),
                ))
            }
            ApiKey::Fetch => {
                let req = decode!(FetchRequest);
                let this = self.clone();
                Box::pin(async move {
                    encode_response(api, v, corr, &this.fetch(req, v).await).map(Some)
                })
            }
            ApiKey::ListOffsets => now!(self.list_offsets(decode!(ListOffsetsRequest), v).await),
            ApiKey::OffsetForLeaderEpoch => {
                now!(self.offset_for_leader_epoch(decode!(OffsetForLeaderEpochRequest)))
            }
            ApiKey::InitProducerId => {
                now!(self.init_producer_id(decode!(InitProducerIdRequest)).await)
            }
            ApiKey::CreateTopics => now!(self.create_topics(decode!(CreateTopicsRequest), v).await),
            ApiKey::DeleteTopics => now!(self.delete_topics(decode!(DeleteTopicsRequest), v).await),
            ApiKey::CreatePartitions => now!(
                self.create_partitions(decode!(CreatePartitionsRequest))
                    .await
            ),
            ApiKey::DeleteRecords => now!(self.delete_records(decode!(DeleteRecordsRequest)).await),
            ApiKey::DescribeConfigs => {
                now!(self.describe_configs(decode!(DescribeConfigsRequest), v))
            }
            ApiKey::AlterConfigs => now!(self.alter_configs(decode!(AlterConfigsRequest)).await),
            ApiKey::IncrementalAlterConfigs => {
                now!(
                    self.incremental_alter_configs(decode!(IncrementalAlterConfigsRequest))
                        .await
                )
            }
            ApiKey::DescribeCluster => now!(self.describe_cluster(decode!(DescribeClusterRequest))),
            _ => return Err(Close("unsupported API")),
        };
        Ok(self.observe(name, started, reply))
    }

    fn observe(self: &Arc<Self>, name: &'static str, started: Instant, reply: Reply) -> Reply {
        let this = self.clone();
        Box::pin(async move {
            let out = reply.await;
            this.metrics
                .latency
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            out
        })
    }

    fn api_versions(&self, _version: i16, error_code: i16) -> ApiVersionsResponse {
        let api_keys = protocol::SUPPORTED
            .iter()
            .map(|&(k, min, max)| {
                api_versions_response::ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect();
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(api_keys)
    }

    /// Counts a Kafka error code for an API.
    fn count_error(&self, api: ApiKey, code: i16) {
        self.metrics.error(api_name(api), code);
    }
}

/// Stable metric label for an API.
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        _ => "Other",
    }
}

use kafka_protocol::error::ResponseError;

/// Error code of a catalog failure.
fn catalog_error_code(e: &crate::metadata::CatalogError) -> i16 {
    use crate::metadata::CatalogError as E;
    match e {
        E::TopicExists(_) => ResponseError::TopicAlreadyExists.code(),
        E::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition.code(),
        E::InvalidTopic(_) => ResponseError::InvalidTopicException.code(),
        E::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
        E::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
        E::Storage(_) => ResponseError::KafkaStorageError.code(),
    }
}

/// Checks a client's `current_leader_epoch` against ours (-1 means "not checked").
fn leader_epoch_error(requested: i32, ours: i32) -> i16 {
    if requested < 0 || requested == ours {
        0
    } else if requested > ours {
        ResponseError::UnknownLeaderEpoch.code()
    } else {
        ResponseError::FencedLeaderEpoch.code()
    }
}
