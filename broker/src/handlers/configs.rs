//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for TOPIC, BROKER and
//! GROUP resources. Topic and group overrides and dynamic broker configs all go through
//! the metadata quorum; the key tables are in [`crate::configs`].

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, Broker};
use crate::acl::{self, op, resource, Session};
use crate::cluster::ControlRequest;
use crate::configs::broker::{broker_key, check_dynamic, Scope, BROKER_KEYS};
use crate::configs::group::{self, GROUP_KEYS};
use crate::configs::topic::{self, default_value, TOPIC_KEYS};
use crate::configs::value::{list_items, Kind};
use crate::configs::{BrokerConfigs, Source};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_CLIENT_METRICS: i8 = 16;
const RESOURCE_GROUP: i8 = 32;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// One described config value.
pub(super) struct Entry {
    pub name: String,
    pub value: String,
    /// Value type; `None` for a custom key Riffle does not know (described like Kafka
    /// describes one: type unknown, value hidden as possibly sensitive).
    pub kind: Option<Kind>,
    pub doc: &'static str,
    pub read_only: bool,
    /// Every layer that sets the key, highest precedence first: `(key, value, source)`.
    pub layers: Vec<(String, String, Source)>,
}

impl Entry {
    /// Source of the effective value.
    pub fn source(&self) -> i8 {
        self.layers.first().map_or(Source::Default, |l| l.2) as i8
    }
}

/// Every topic config with its effective value and where it comes from.
pub(super) fn topic_config_entries(
    overrides: &BTreeMap<String, String>,
    broker: &BrokerConfigs,
) -> Vec<Entry> {
    TOPIC_KEYS
        .iter()
        .map(|k| {
            let mut layers = Vec::new();
            if let Some(v) = overrides.get(k.name) {
                layers.push((k.name.to_string(), v.clone(), Source::Topic));
            }
            match k.synonym {
                Some(s) => layers.extend(
                    broker
                        .layers(s)
                        .into_iter()
                        .map(|(v, src)| (s.to_string(), v, src)),
                ),
                None => layers.push((
                    k.name.to_string(),
                    default_value(k, broker).0,
                    Source::Default,
                )),
            }
            Entry {
                name: k.name.to_string(),
                value: layers.first().map(|l| l.1.clone()).unwrap_or_default(),
                kind: Some(k.kind),
                doc: k.doc,
                read_only: false,
                layers,
            }
        })
        .collect()
}

/// Every group config with its effective value: the group's own or Kafka's default.
fn group_config_entries(overrides: &BTreeMap<String, String>) -> Vec<Entry> {
    GROUP_KEYS
        .iter()
        .map(|k| {
            let layers: Vec<_> = overrides
                .get(k.name)
                .map(|v| (k.name.to_string(), v.clone(), Source::Group))
                .into_iter()
                .collect();
            Entry {
                name: k.name.to_string(),
                value: layers
                    .first()
                    .map_or_else(|| k.default.to_string(), |l| l.1.clone()),
                kind: Some(k.kind),
                doc: k.doc,
                read_only: false,
                layers,
            }
        })
        .collect()
}

/// This broker's configs (`cluster_default`: only the cluster-wide dynamic ones, as
/// Kafka describes the `""` resource).
fn broker_entries(b: &BrokerConfigs, cluster_default: bool) -> Vec<Entry> {
    let custom = b
        .mine
        .iter()
        .map(|(k, v)| (k, v, Source::DynamicBroker))
        .filter(|_| !cluster_default)
        .chain(
            b.cluster
                .iter()
                .map(|(k, v)| (k, v, Source::DynamicDefaultBroker)),
        )
        .filter(|(k, _, _)| broker_key(k).is_none())
        .map(|(k, v, source)| Entry {
            name: k.clone(),
            value: v.clone(),
            kind: None,
            doc: "",
            read_only: true,
            layers: vec![(k.clone(), v.clone(), source)],
        });
    let mut entries: Vec<Entry> = BROKER_KEYS
        .iter()
        .filter_map(|k| {
            let layers: Vec<_> = if cluster_default {
                let v = b.cluster.get(k.name)?;
                vec![(k.name.to_string(), v.clone(), Source::DynamicDefaultBroker)]
            } else {
                b.layers(k.name)
                    .into_iter()
                    .map(|(v, s)| (k.name.to_string(), v, s))
                    .collect()
            };
            Some(Entry {
                name: k.name.to_string(),
                value: layers.first().map(|l| l.1.clone()).unwrap_or_default(),
                kind: Some(k.kind),
                doc: k.doc,
                read_only: k.scope == Scope::ReadOnly,
                layers,
            })
        })
        .collect();
    for e in custom {
        // A custom key set both per broker and cluster-wide shows its per-broker value.
        if !entries.iter().any(|x| x.name == e.name) {
            entries.push(e);
        }
    }
    entries
}

fn to_result(
    entries: Vec<Entry>,
    keys: &Option<Vec<StrBytes>>,
    synonyms: bool,
    docs: bool,
) -> Vec<DescribeConfigsResourceResult> {
    entries
        .into_iter()
        .filter(|e| {
            keys.as_ref()
                .is_none_or(|k| k.iter().any(|k| k.as_str() == e.name.as_str()))
        })
        .map(|e| {
            let shown = |v: &String| e.kind.map(|_| StrBytes::from_string(v.clone()));
            let syn = if synonyms {
                e.layers
                    .iter()
                    .map(|(name, value, source)| {
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(name))
                            .with_value(shown(value))
                            .with_source(*source as i8)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            DescribeConfigsResourceResult::default()
                .with_name(StrBytes::from_string(e.name.clone()))
                .with_value(shown(&e.value))
                .with_read_only(e.read_only)
                .with_is_sensitive(e.kind.is_none())
                .with_config_source(e.source())
                .with_config_type(e.kind.map_or(0, |k| k as i8))
                .with_documentation(docs.then(|| str_bytes(e.doc)))
                .with_synonyms(syn)
        })
        .collect()
}

/// Applies one IncrementalAlterConfigs operation to a set of values. `default` gives the
/// current effective value of a list key that the set does not hold.
fn apply_op(
    values: &mut BTreeMap<String, String>,
    name: &str,
    kind: Option<Kind>,
    op: i8,
    value: Option<&str>,
    default: impl Fn() -> String,
) -> Result<(), (i16, String)> {
    let invalid_request = |msg: String| (ResponseError::InvalidRequest.code(), msg);
    match op {
        OP_SET => {
            let v = value
                .ok_or_else(|| invalid_request(format!("Null value not supported for : {name}")))?;
            values.insert(name.to_string(), v.to_string());
        }
        OP_DELETE => {
            values.remove(name);
        }
        OP_APPEND | OP_SUBTRACT if kind != Some(Kind::List) => {
            let verb = if op == OP_APPEND {
                "APPEND"
            } else {
                "SUBTRACT"
            };
            return Err((
                ResponseError::InvalidConfig.code(),
                format!("Can't {verb} to key {name} because its type is not LIST."),
            ));
        }
        OP_APPEND | OP_SUBTRACT => {
            let current = values.get(name).cloned().unwrap_or_else(default);
            let mut items: Vec<String> =
                list_items(&current).into_iter().map(String::from).collect();
            let given = list_items(value.unwrap_or_default());
            if op == OP_APPEND {
                for v in given {
                    if !items.iter().any(|i| i == v) {
                        items.push(v.to_string());
                    }
                }
            } else {
                items.retain(|i| !given.contains(&i.as_str()));
            }
            values.insert(name.to_string(), items.join(","));
        }
        _ => return Err(invalid_request(format!("unknown config operation {op}"))),
    }
    Ok(())
}

/// A config change of one resource, as both alter APIs express it.
enum Change<'a> {
    /// AlterConfigs: the given keys replace every dynamic value of the resource.
    Replace(Vec<(&'a str, Option<&'a str>)>),
    /// IncrementalAlterConfigs: operations on single keys.
    Ops(Vec<(&'a str, i8, Option<&'a str>)>),
}

/// The answer to a GROUP resource without a name.
fn empty_group() -> (i16, String) {
    (
        ResponseError::InvalidRequest.code(),
        "Group name must not be empty".into(),
    )
}

/// Applies a change to a topic's or group's overrides. `key` gives a known key's type
/// and current default; unknown keys are left for the caller's validation to refuse
/// (after the LIST check, in Kafka's order).
fn edit_overrides(
    values: &mut BTreeMap<String, String>,
    change: Change<'_>,
    key: impl Fn(&str) -> Option<(Kind, String)>,
) -> Result<(), (i16, String)> {
    match change {
        Change::Replace(set) => {
            values.clear();
            for (k, v) in set {
                let v = v.ok_or_else(|| {
                    (
                        ResponseError::InvalidRequest.code(),
                        format!("Null value not supported for : {k}"),
                    )
                })?;
                values.insert(k.to_string(), v.to_string());
            }
        }
        Change::Ops(ops) => {
            for (k, op, v) in ops {
                let known = key(k);
                let kind = known.as_ref().map(|d| d.0);
                apply_op(values, k, kind, op, v, || {
                    known.as_ref().map(|d| d.1.clone()).unwrap_or_default()
                })?;
            }
        }
    }
    Ok(())
}

impl Broker {
    /// Whether `who` may describe (or alter) the configs of a resource: topics and groups
    /// are authorized on themselves, broker resources on the cluster.
    fn config_access(
        &self,
        who: &Session,
        operation: i8,
        resource_type: i8,
        name: &str,
    ) -> Result<(), (i16, String)> {
        let (allowed, code) = match resource_type {
            RESOURCE_TOPIC => (
                self.authorize(who, operation, resource::TOPIC, name),
                ResponseError::TopicAuthorizationFailed.code(),
            ),
            RESOURCE_GROUP => (
                self.authorize(who, operation, resource::GROUP, name),
                ResponseError::GroupAuthorizationFailed.code(),
            ),
            _ => (
                self.authorize(who, operation, resource::CLUSTER, acl::CLUSTER_NAME),
                ResponseError::ClusterAuthorizationFailed.code(),
            ),
        };
        if allowed {
            Ok(())
        } else {
            Err((code, "Authorization failed.".into()))
        }
    }

    pub(super) fn describe_configs(
        &self,
        req: DescribeConfigsRequest,
        version: i16,
        who: &Session,
    ) -> DescribeConfigsResponse {
        let broker = self.catalog.broker_configs();
        let me = self.config.node_id.to_string();
        let docs = version >= 3 && req.include_documentation;
        let results = req
            .resources
            .into_iter()
            .map(|r| {
                let res = DescribeConfigsResult::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone());
                let name = r.resource_name.as_str();
                let access = self.config_access(who, op::DESCRIBE_CONFIGS, r.resource_type, name);
                let entries = access.and_then(|()| match r.resource_type {
                    RESOURCE_TOPIC => match self.catalog.get(name) {
                        Some(t) => Ok(topic_config_entries(&t.overrides(), &broker)),
                        None => Err((
                            ResponseError::UnknownTopicOrPartition.code(),
                            format!("Topic {name} does not exist"),
                        )),
                    },
                    RESOURCE_GROUP if name.is_empty() => Err(empty_group()),
                    RESOURCE_GROUP => Ok(group_config_entries(
                        self.cluster.image().group_configs.get(name).unwrap_or(&BTreeMap::new()),
                    )),
                    RESOURCE_BROKER if name.is_empty() || name == me => {
                        Ok(broker_entries(&broker, name.is_empty()))
                    }
                    RESOURCE_BROKER => Err((
                        ResponseError::InvalidRequest.code(),
                        format!("Unexpected broker id, expected {me} or empty string, but received {name}"),
                    )),
                    t => Err((
                        ResponseError::InvalidRequest.code(),
                        format!("Unsupported resource type {t}"),
                    )),
                });
                let res = match entries {
                    Ok(e) => res.with_configs(to_result(e, &r.configuration_keys, req.include_synonyms, docs)),
                    Err((code, msg)) => res
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(msg))),
                };
                self.count_error(ApiKey::DescribeConfigs, res.error_code);
                res
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    /// ListConfigResources: the topics, brokers and groups whose configs can be described
    /// (v0 asks for client-metrics resources only, which Riffle has none of).
    pub(super) fn list_config_resources(
        &self,
        req: ListConfigResourcesRequest,
        version: i16,
    ) -> ListConfigResourcesResponse {
        let types = match version {
            0 => vec![RESOURCE_CLIENT_METRICS],
            _ if req.resource_types.is_empty() => {
                vec![
                    RESOURCE_TOPIC,
                    RESOURCE_BROKER,
                    RESOURCE_CLIENT_METRICS,
                    RESOURCE_GROUP,
                ]
            }
            _ => req.resource_types,
        };
        let image = self.cluster.image();
        let mut found: Vec<(i8, String)> = Vec::new();
        for t in types {
            match t {
                RESOURCE_TOPIC => found.extend(image.topics.keys().map(|n| (t, n.clone()))),
                RESOURCE_BROKER => found.extend(image.brokers.keys().map(|id| (t, id.to_string()))),
                RESOURCE_CLIENT_METRICS => {}
                RESOURCE_GROUP => {
                    let mut groups: Vec<String> = self
                        .groups
                        .list()
                        .into_iter()
                        .map(|(id, _, _)| id)
                        .collect();
                    groups.extend(image.group_configs.keys().cloned());
                    groups.sort();
                    groups.dedup();
                    found.extend(groups.into_iter().map(|g| (t, g)));
                }
                _ => {
                    return ListConfigResourcesResponse::default()
                        .with_error_code(ResponseError::UnsupportedVersion.code())
                }
            }
        }
        let resources = found
            .into_iter()
            .map(|(t, name)| {
                list_config_resources_response::ConfigResource::default()
                    .with_resource_type(t)
                    .with_resource_name(StrBytes::from_string(name))
            })
            .collect();
        ListConfigResourcesResponse::default().with_config_resources(resources)
    }

    /// Validates one resource's change and (unless `validate_only`) commits it.
    async fn alter(
        &self,
        resource_type: i8,
        name: &str,
        change: Change<'_>,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        let invalid_config = |msg: String| (ResponseError::InvalidConfig.code(), msg);
        let request = match resource_type {
            RESOURCE_TOPIC => {
                let topic = self.catalog.get(name).ok_or_else(|| {
                    (
                        ResponseError::UnknownTopicOrPartition.code(),
                        format!("Topic {name} does not exist"),
                    )
                })?;
                let broker = self.catalog.broker_configs();
                let mut values = topic.overrides();
                edit_overrides(&mut values, change, |k| {
                    topic::topic_key(k).map(|d| (d.kind, default_value(d, &broker).0))
                })?;
                topic::validate_set(&values).map_err(invalid_config)?;
                let configs = values
                    .iter()
                    .map(|(k, v)| (k.clone(), topic::normalised(k, v)))
                    .collect();
                ControlRequest::SetTopicConfigs {
                    name: name.to_string(),
                    configs,
                }
            }
            RESOURCE_GROUP if name.is_empty() => return Err(empty_group()),
            RESOURCE_GROUP => {
                let mut values = self
                    .cluster
                    .image()
                    .group_configs
                    .get(name)
                    .cloned()
                    .unwrap_or_default();
                edit_overrides(&mut values, change, |k| {
                    group::group_key(k).map(|d| (d.kind, d.default.to_string()))
                })?;
                group::validate_set(&values).map_err(invalid_config)?;
                let configs = values
                    .iter()
                    .map(|(k, v)| (k.clone(), group::normalised(k, v)))
                    .collect();
                ControlRequest::SetGroupConfigs {
                    group: name.to_string(),
                    configs,
                }
            }
            RESOURCE_BROKER => {
                // As in Kafka, a broker changes its own configs or the cluster default;
                // clients send a broker's resource to that broker.
                let me = self.config.node_id.to_string();
                if !(name.is_empty() || name == me) {
                    return Err((
                        ResponseError::InvalidRequest.code(),
                        format!("Unexpected broker id, expected {me}, but received {name}"),
                    ));
                }
                let invalid_request = |msg: String| (ResponseError::InvalidRequest.code(), msg);
                let image = self.cluster.image();
                let mut values = image.broker_configs.get(name).cloned().unwrap_or_default();
                let broker = self.catalog.broker_configs();
                match change {
                    Change::Replace(set) => {
                        values.clear();
                        for (k, v) in set {
                            if let Some(v) = v {
                                values.insert(k.to_string(), v.to_string());
                            }
                        }
                    }
                    Change::Ops(ops) => {
                        for (k, op, v) in ops {
                            check_dynamic(name, k, None).map_err(invalid_request)?;
                            let kind = broker_key(k).map(|d| d.kind);
                            if matches!(op, OP_APPEND | OP_SUBTRACT) && kind != Some(Kind::List) {
                                let verb = if op == OP_APPEND {
                                    "append"
                                } else {
                                    "subtract"
                                };
                                return Err(invalid_config(format!(
                                    "Config value {verb} is not allowed for config key: {k}"
                                )));
                            }
                            apply_op(&mut values, k, kind, op, v, || broker.get(k))?;
                        }
                    }
                }
                for (k, v) in &values {
                    check_dynamic(name, k, Some(v)).map_err(invalid_request)?;
                }
                let configs = values
                    .iter()
                    .map(|(k, v)| {
                        let kind = broker_key(k).map_or(Kind::String, |d| d.kind);
                        (k.clone(), crate::configs::value::normalise(kind, v))
                    })
                    .collect();
                ControlRequest::SetBrokerConfigs {
                    resource: name.to_string(),
                    configs,
                }
            }
            t => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    format!("Unsupported resource type {t}"),
                ))
            }
        };
        if validate_only {
            return Ok(());
        }
        match super::control_error(&self.control(request, 0).await) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    pub(super) async fn alter_configs(
        &self,
        req: AlterConfigsRequest,
        who: &Session,
    ) -> AlterConfigsResponse {
        let mut responses = Vec::with_capacity(req.resources.len());
        for r in req.resources {
            let name = r.resource_name.as_str();
            let access = self.config_access(who, op::ALTER_CONFIGS, r.resource_type, name);
            let set = r
                .configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str())))
                .collect();
            let outcome = match access {
                Err(e) => Err(e),
                Ok(()) => {
                    self.alter(
                        r.resource_type,
                        name,
                        Change::Replace(set),
                        req.validate_only,
                    )
                    .await
                }
            };
            let (code, msg) = outcome.err().map_or((0, None), |(c, m)| (c, Some(m)));
            self.count_error(ApiKey::AlterConfigs, code);
            responses.push(
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(msg.map(StrBytes::from_string))
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name),
            );
        }
        AlterConfigsResponse::default().with_responses(responses)
    }

    pub(super) async fn incremental_alter_configs(
        &self,
        req: IncrementalAlterConfigsRequest,
        who: &Session,
    ) -> IncrementalAlterConfigsResponse {
        let mut responses = Vec::with_capacity(req.resources.len());
        for r in req.resources {
            let name = r.resource_name.as_str();
            let access = self.config_access(who, op::ALTER_CONFIGS, r.resource_type, name);
            let ops = r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.as_str(),
                        c.config_operation,
                        c.value.as_ref().map(|v| v.as_str()),
                    )
                })
                .collect();
            let outcome = match access {
                Err(e) => Err(e),
                Ok(()) => {
                    self.alter(r.resource_type, name, Change::Ops(ops), req.validate_only)
                        .await
                }
            };
            let (code, msg) = outcome.err().map_or((0, None), |(c, m)| (c, Some(m)));
            self.count_error(ApiKey::IncrementalAlterConfigs, code);
            responses.push(
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(msg.map(StrBytes::from_string))
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name),
            );
        }
        IncrementalAlterConfigsResponse::default().with_responses(responses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn incremental_ops_on_list_and_scalar_configs() {
        let mut o = BTreeMap::new();
        let delete = || "delete".to_string();
        apply_op(
            &mut o,
            "retention.ms",
            Some(Kind::Long),
            OP_SET,
            Some("1000"),
            delete,
        )
        .expect("set");
        assert_eq!(o["retention.ms"], "1000");
        apply_op(
            &mut o,
            "cleanup.policy",
            Some(Kind::List),
            OP_APPEND,
            Some("compact"),
            delete,
        )
        .expect("append");
        assert_eq!(o["cleanup.policy"], "delete,compact");
        apply_op(
            &mut o,
            "cleanup.policy",
            Some(Kind::List),
            OP_SUBTRACT,
            Some("delete"),
            delete,
        )
        .expect("subtract");
        assert_eq!(o["cleanup.policy"], "compact");
        apply_op(
            &mut o,
            "retention.ms",
            Some(Kind::Long),
            OP_DELETE,
            None,
            delete,
        )
        .expect("delete");
        assert!(!o.contains_key("retention.ms"));
        let err = apply_op(
            &mut o,
            "retention.ms",
            Some(Kind::Long),
            OP_APPEND,
            Some("1"),
            delete,
        )
        .expect_err("append on a long");
        assert_eq!(err.0, ResponseError::InvalidConfig.code());
        assert_eq!(
            err.1,
            "Can't APPEND to key retention.ms because its type is not LIST."
        );
        assert!(apply_op(
            &mut o,
            "retention.ms",
            Some(Kind::Long),
            9,
            Some("1"),
            delete
        )
        .is_err());
    }

    #[test]
    fn entries_report_sources_and_synonyms_in_precedence_order() {
        let mut broker = BrokerConfigs::new(Config {
            log_retention_ms: 5,
            ..Config::default()
        });
        broker.cluster.insert("log.roll.ms".into(), "60000".into());
        let mut o = BTreeMap::new();
        o.insert("max.message.bytes".to_string(), "2000".to_string());
        let e = topic_config_entries(&o, &broker);
        let get = |n: &str| e.iter().find(|x| x.name == n).expect("entry");
        assert_eq!(get("max.message.bytes").source(), Source::Topic as i8);
        assert_eq!(get("max.message.bytes").layers[1].0, "message.max.bytes");
        assert_eq!(get("retention.ms").source(), Source::StaticBroker as i8);
        assert_eq!(get("retention.ms").value, "5");
        assert_eq!(
            get("segment.ms").source(),
            Source::DynamicDefaultBroker as i8
        );
        assert_eq!(get("segment.ms").value, "60000");
        assert_eq!(get("segment.bytes").source(), Source::Default as i8);
        assert_eq!(e.len(), TOPIC_KEYS.len());
        let cluster = broker_entries(&broker, true);
        assert_eq!(cluster.len(), 1);
        let all = broker_entries(&broker, false);
        assert!(
            all.iter()
                .find(|x| x.name == "node.id")
                .expect("node.id")
                .read_only
        );
        assert!(
            !all.iter()
                .find(|x| x.name == "log.roll.ms")
                .expect("roll")
                .read_only
        );
    }
}
