//! Metadata, DescribeCluster and ElectLeaders: brokers, topics and partition leaders as
//! the cluster metadata image has them.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;

use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, Broker};
use crate::acl::{self, op, resource, Session};
use crate::cluster::image::BrokerState;
use crate::cluster::{ControlReply, ControlRequest};
use crate::config::split_host_port;
use crate::group::OFFSETS_TOPIC;
use crate::metadata::{names::validate_topic_name, Topic};

/// Longest a Metadata answer waits for its probes of the leaders this broker follows.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(20);

impl Broker {
    /// Registered, unfenced brokers as `(id, host, port, rack)`; this broker at least.
    /// With `recently_fenced`, also brokers fenced a moment ago (for Metadata answers).
    fn live_brokers(&self, recently_fenced: bool) -> Vec<(i32, StrBytes, i32, Option<StrBytes>)> {
        let image = self.cluster.image();
        let fenced: Vec<(i32, u64)> = image
            .brokers
            .values()
            .filter(|b| b.state == BrokerState::Fenced && b.id != self.config.node_id)
            .map(|b| (b.id, b.incarnation))
            .collect();
        let listed = if recently_fenced {
            self.recently_fenced.still_listed(&fenced)
        } else {
            Vec::new()
        };
        let mut out: Vec<_> = image
            .brokers
            .values()
            .filter(|b| !fenced.iter().any(|f| f.0 == b.id) || listed.contains(&b.id))
            .filter_map(|b| {
                let (host, port) = split_host_port(&b.kafka)?;
                Some((
                    b.id,
                    str_bytes(&host),
                    port,
                    b.rack.as_deref().map(str_bytes),
                ))
            })
            .collect();
        if !out.iter().any(|b| b.0 == self.config.node_id) {
            let (host, port) = self.advertised();
            out.push((
                self.config.node_id,
                host,
                port,
                self.config.rack.as_deref().map(str_bytes),
            ));
        }
        out
    }

    /// The active controller's id, or this broker's while none is known.
    fn controller(&self) -> BrokerId {
        BrokerId(self.cluster.controller_id().unwrap_or(self.config.node_id))
    }

    /// Whether this broker is cut off from the cluster and leads nothing any more (see
    /// [`Broker::leads`]): its metadata is stale, so it leaves itself out of the broker
    /// list and clients (librdkafka, the Java client) ask the others instead.
    fn cut_off(&self) -> bool {
        let session = std::time::Duration::from_millis(self.config.broker_session_timeout_ms);
        self.cluster.session_lost(session)
            && !self.catalog.all().iter().any(|t| {
                t.partitions()
                    .iter()
                    .any(|p| p.role() == crate::log::Role::Leader && self.leads(p))
            })
    }

    /// Checks the replication connection to each broker that leads a partition this
    /// broker follows, so that a leader that died a moment ago is already left out of
    /// this answer (see [`crate::replication::lost`]): the client asks right after its
    /// connection broke, often before this broker's fetch from that leader has failed.
    /// A refused or broken connection counts as lost; an answer, or none within
    /// [`PROBE_TIMEOUT`] (a busy or paused leader), does not.
    async fn probe_followed_leaders(&self) {
        let image = self.cluster.image();
        let me = self.config.node_id;
        let mut leaders: Vec<(i32, &str)> = image
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.leader >= 0 && p.leader != me && p.replicas.contains(&me))
            .filter_map(|p| image.brokers.get(&p.leader).map(|b| (b.id, b.rpc.as_str())))
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        for (id, addr) in leaders {
            let Ok(mut client) = self.cluster.peers.replication(addr) else {
                continue;
            };
            // No partitions and no wait: the leader answers at once.
            let probe = crate::rpc::FetchRequest {
                cluster_id: self.cluster.cluster_id.get(),
                replica_id: me,
                ..Default::default()
            };
            if let Ok(reply) = tokio::time::timeout_at(deadline, client.fetch(probe)).await {
                self.lost_leaders.observe(id, &reply);
            }
        }
    }

    pub(super) async fn metadata(
        &self,
        req: MetadataRequest,
        version: i16,
        who: &Session,
    ) -> MetadataResponse {
        self.probe_followed_leaders().await;
        let hide_self = self.cut_off();
        let brokers = self
            .live_brokers(true)
            .into_iter()
            .filter(|b| !(hide_self && b.0 == self.config.node_id))
            .map(|(id, host, port, rack)| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(id))
                    .with_host(host)
                    .with_port(port)
                    .with_rack(rack)
            })
            .collect();
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
        let auto_create = self
            .catalog
            .broker_configs()
            .get_bool("auto.create.topics.enable", true)
            && (version < 4 || req.allow_auto_topic_creation);
        let may = |o: i8, name: &str| self.authorize(who, o, resource::TOPIC, name);
        let topics: Vec<MetadataResponseTopic> = match requested {
            // Listing all topics shows those the client may describe.
            None => self
                .catalog
                .all()
                .iter()
                .filter(|t| may(op::DESCRIBE, &t.name))
                .map(|t| self.describe_topic(t))
                .collect(),
            Some(refs) => {
                let mut out = Vec::with_capacity(refs.len());
                for r in refs {
                    out.push(match r {
                        MetadataRequestTopicRef::Name(name) => {
                            let n = name.0.as_str();
                            if !may(op::DESCRIBE, n) {
                                denied(Some(name), uuid::Uuid::nil())
                            } else {
                                // Creating needs CREATE on the cluster or on the topic.
                                let create = auto_create
                                    && (self.authorize(
                                        who,
                                        op::CREATE,
                                        resource::CLUSTER,
                                        acl::CLUSTER_NAME,
                                    ) || may(op::CREATE, n));
                                self.metadata_for_name(name, create).await
                            }
                        }
                        MetadataRequestTopicRef::Id(id) => match self.catalog.get_by_id(id) {
                            Some(t) if !may(op::DESCRIBE, &t.name) => denied(None, id),
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
        let topics = if req.include_topic_authorized_operations {
            topics
                .into_iter()
                .map(|t| {
                    let ops = match &t.name {
                        Some(n) if t.error_code == 0 => {
                            self.authorized_operations(who, resource::TOPIC, n.0.as_str())
                        }
                        _ => i32::MIN,
                    };
                    t.with_topic_authorized_operations(ops)
                })
                .collect()
        } else {
            topics
        };
        let resp = MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(str_bytes(&self.cluster_id())))
            .with_controller_id(self.controller())
            .with_topics(topics);
        if req.include_cluster_authorized_operations {
            resp.with_cluster_authorized_operations(self.authorized_operations(
                who,
                resource::CLUSTER,
                acl::CLUSTER_NAME,
            ))
        } else {
            resp
        }
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
        // The offsets topic is created by the controller, with its own layout.
        if !auto_create || name.0.as_str() == OFFSETS_TOPIC {
            return unknown(ResponseError::UnknownTopicOrPartition.code());
        }
        let reply = self
            .control(
                ControlRequest::CreateTopic {
                    name: name.0.to_string(),
                    partitions: -1,
                    replication_factor: -1,
                    assignment: Vec::new(),
                    configs: BTreeMap::new(),
                    validate_only: false,
                },
                0,
            )
            .await;
        match (
            super::control_error(&reply),
            self.catalog.get(name.0.as_str()),
        ) {
            // Created now, or concurrently by another request: describe what is there.
            (_, Some(t)) => self.describe_topic(&t),
            // Created by someone else but not applied here yet: retriable, like Kafka.
            (Some((code, _)), None) if code == ResponseError::TopicAlreadyExists.code() => {
                unknown(ResponseError::LeaderNotAvailable.code())
            }
            (Some((code, _)), None) => unknown(code),
            (None, None) => unknown(ResponseError::LeaderNotAvailable.code()),
        }
    }

    fn describe_topic(&self, t: &Topic) -> MetadataResponseTopic {
        let image = self.cluster.image();
        let session = std::time::Duration::from_millis(self.config.broker_session_timeout_ms);
        let ids = |v: &[i32]| v.iter().map(|&b| BrokerId(b)).collect::<Vec<_>>();
        let partitions = image
            .topics
            .get(&*t.name)
            .map(|ti| ti.partitions.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let offline: Vec<i32> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|&b| {
                        !image.is_active(b)
                            && image
                                .brokers
                                .get(&b)
                                .is_none_or(|x| x.state == BrokerState::Fenced)
                    })
                    .collect();
                // A leader that stepped aside (see `Broker::leads`) names none, so
                // clients ask other brokers for the new one; so does one this broker
                // just lost as a follower, while the controller decides.
                let me = self.config.node_id;
                let leader = if (p.leader == me
                    && t.partition(i as i32).is_some_and(|part| !self.leads(&part)))
                    || (p.leader != me && self.lost_leaders.recently_lost(p.leader, session))
                {
                    -1
                } else {
                    p.leader
                };
                let code = if leader == -1 {
                    ResponseError::LeaderNotAvailable.code()
                } else {
                    0
                };
                MetadataResponsePartition::default()
                    .with_error_code(code)
                    .with_partition_index(i as i32)
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(ids(&p.replicas))
                    .with_isr_nodes(ids(&p.isr))
                    .with_offline_replicas(ids(&offline))
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(&t.name))))
            .with_topic_id(t.id)
            .with_is_internal(&*t.name == OFFSETS_TOPIC)
            .with_partitions(partitions)
    }

    pub(super) fn describe_cluster(
        &self,
        req: DescribeClusterRequest,
        who: &Session,
    ) -> DescribeClusterResponse {
        let brokers = self
            .live_brokers(false)
            .into_iter()
            .map(|(id, host, port, rack)| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(id))
                    .with_host(host)
                    .with_port(port)
                    .with_rack(rack)
            })
            .collect();
        let ops = if req.include_cluster_authorized_operations {
            self.authorized_operations(who, resource::CLUSTER, acl::CLUSTER_NAME)
        } else {
            i32::MIN
        };
        DescribeClusterResponse::default()
            .with_cluster_id(str_bytes(&self.cluster_id()))
            .with_controller_id(self.controller())
            .with_endpoint_type(1)
            .with_brokers(brokers)
            .with_cluster_authorized_operations(ops)
    }

    pub(super) async fn elect_leaders(&self, req: ElectLeadersRequest) -> ElectLeadersResponse {
        use kafka_protocol::messages::elect_leaders_response::{
            PartitionResult, ReplicaElectionResult,
        };
        let unclean = req.election_type == 1;
        let wanted: Option<Vec<(String, i32)>> = req.topic_partitions.map(|tps| {
            tps.into_iter()
                .flat_map(|t| {
                    let name = t.topic.0.to_string();
                    t.partitions.into_iter().map(move |p| (name.clone(), p))
                })
                .collect()
        });
        let reply = self
            .control(
                ControlRequest::ElectLeaders {
                    unclean,
                    partitions: wanted,
                },
                req.timeout_ms,
            )
            .await;
        let results = match reply {
            ControlReply::Elected(r) => r,
            other => {
                let code = super::control_error(&other)
                    .map(|e| e.0)
                    .unwrap_or(ResponseError::UnknownServerError.code());
                return ElectLeadersResponse::default().with_error_code(code);
            }
        };
        let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
        for (t, p, code) in results {
            by_topic.entry(t).or_default().push(
                PartitionResult::default()
                    .with_partition_id(p)
                    .with_error_code(code),
            );
        }
        ElectLeadersResponse::default().with_replica_election_results(
            by_topic
                .into_iter()
                .map(|(t, parts)| {
                    ReplicaElectionResult::default()
                        .with_topic(TopicName(str_bytes(&t)))
                        .with_partition_result(parts)
                })
                .collect(),
        )
    }
}

enum MetadataRequestTopicRef {
    Name(TopicName),
    Id(uuid::Uuid),
}

/// A topic the client may not describe: named as asked, nothing else said.
fn denied(name: Option<TopicName>, id: uuid::Uuid) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_topic_id(id)
        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
}
