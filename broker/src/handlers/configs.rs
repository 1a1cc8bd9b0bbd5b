//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{catalog_error_code, str_bytes, Broker};
use crate::config::Config;
use crate::log::topic_config::{self, ConfigType, DEFS};
use crate::metadata::Catalog;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// One described config value.
pub(super) struct Entry {
    pub name: &'static str,
    pub value: String,
    pub source: i8,
    pub kind: ConfigType,
    pub doc: &'static str,
    /// Broker-level synonym and its value, when the topic value overrides it.
    pub synonym: Option<(&'static str, String, i8)>,
}

/// Every topic config with its effective value and where it comes from.
pub(super) fn topic_config_entries(
    overrides: &BTreeMap<String, String>,
    broker: &Config,
) -> Vec<Entry> {
    let kafka_defaults = Config::default();
    DEFS.iter()
        .map(|d| {
            let default = d.default_value(broker);
            let default_source = if default == d.default_value(&kafka_defaults) {
                SOURCE_DEFAULT
            } else {
                SOURCE_STATIC_BROKER
            };
            let synonym = Some((d.broker_synonym, default.clone(), default_source));
            match overrides.get(d.name) {
                Some(v) => Entry {
                    name: d.name,
                    value: v.clone(),
                    source: SOURCE_TOPIC,
                    kind: d.kind,
                    doc: d.doc,
                    synonym,
                },
                None => Entry {
                    name: d.name,
                    value: default,
                    source: default_source,
                    kind: d.kind,
                    doc: d.doc,
                    synonym,
                },
            }
        })
        .collect()
}

fn broker_entries(c: &Config) -> Vec<Entry> {
    let e = |name: &'static str, value: String, kind: ConfigType, doc: &'static str| Entry {
        name,
        value,
        source: SOURCE_STATIC_BROKER,
        kind,
        doc,
        synonym: None,
    };
    vec![
        e(
            "node.id",
            c.node_id.to_string(),
            ConfigType::Int,
            "Broker id",
        ),
        e(
            "listeners",
            format!("PLAINTEXT://{}", c.listen),
            ConfigType::String,
            "Kafka listener",
        ),
        e(
            "advertised.listeners",
            format!("PLAINTEXT://{}", c.advertised_listener),
            ConfigType::String,
            "Address advertised to clients",
        ),
        e(
            "auto.create.topics.enable",
            c.auto_create_topics_enable.to_string(),
            ConfigType::String,
            "Auto-create topics on metadata requests",
        ),
        e(
            "num.partitions",
            c.num_partitions.to_string(),
            ConfigType::Int,
            "Default partition count",
        ),
        e(
            "default.replication.factor",
            c.default_replication_factor.to_string(),
            ConfigType::Int,
            "Default replication factor",
        ),
        e(
            "message.max.bytes",
            c.message_max_bytes.to_string(),
            ConfigType::Int,
            "Largest record batch",
        ),
        e(
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            ConfigType::Int,
            "Largest request",
        ),
        e(
            "log.retention.ms",
            c.log_retention_ms.to_string(),
            ConfigType::Long,
            "Default retention.ms",
        ),
        e(
            "log.retention.bytes",
            c.log_retention_bytes.to_string(),
            ConfigType::Long,
            "Default retention.bytes",
        ),
        e(
            "log.segment.bytes",
            c.log_segment_bytes.to_string(),
            ConfigType::Int,
            "Default segment.bytes",
        ),
        e(
            "log.roll.ms",
            c.log_roll_ms.to_string(),
            ConfigType::Long,
            "Default segment.ms",
        ),
        e(
            "log.retention.check.interval.ms",
            c.log_retention_check_interval_ms.to_string(),
            ConfigType::Long,
            "Retention check interval",
        ),
        e(
            "min.insync.replicas",
            c.min_insync_replicas.to_string(),
            ConfigType::Int,
            "Default min.insync.replicas",
        ),
    ]
}

fn to_result(
    entries: Vec<Entry>,
    keys: &Option<Vec<StrBytes>>,
    synonyms: bool,
    docs: bool,
    read_only: bool,
) -> Vec<DescribeConfigsResourceResult> {
    entries
        .into_iter()
        .filter(|e| {
            keys.as_ref()
                .is_none_or(|k| k.iter().any(|k| k.as_str() == e.name))
        })
        .map(|e| {
            let mut syn = Vec::new();
            if synonyms {
                if e.source == SOURCE_TOPIC {
                    syn.push(
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(e.name))
                            .with_value(Some(StrBytes::from_string(e.value.clone())))
                            .with_source(SOURCE_TOPIC),
                    );
                }
                if let Some((name, value, source)) = &e.synonym {
                    syn.push(
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(name))
                            .with_value(Some(StrBytes::from_string(value.clone())))
                            .with_source(*source),
                    );
                }
            }
            DescribeConfigsResourceResult::default()
                .with_name(str_bytes(e.name))
                .with_value(Some(StrBytes::from_string(e.value)))
                .with_read_only(read_only)
                .with_config_source(e.source)
                .with_config_type(e.kind as i8)
                .with_documentation(docs.then(|| str_bytes(e.doc)))
                .with_synonyms(syn)
        })
        .collect()
}

/// Applies one IncrementalAlterConfigs operation to a set of overrides.
fn apply_op(
    overrides: &mut BTreeMap<String, String>,
    name: &str,
    op: i8,
    value: Option<&str>,
    broker: &Config,
) -> Result<(), String> {
    let def = topic_config::def(name).ok_or_else(|| format!("unknown topic config {name}"))?;
    let list = |m: &BTreeMap<String, String>| -> Vec<String> {
        let raw = m
            .get(name)
            .cloned()
            .unwrap_or_else(|| def.default_value(broker));
        raw.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    match op {
        0 => {
            let v = value.ok_or_else(|| format!("{name}: SET needs a value"))?;
            overrides.insert(name.to_string(), v.to_string());
        }
        1 => {
            overrides.remove(name);
        }
        2 | 3 if def.kind != ConfigType::List => {
            return Err(format!("{name} is not a list config"))
        }
        2 => {
            let mut items = list(overrides);
            for v in value
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                if !items.iter().any(|i| i == v) {
                    items.push(v.to_string());
                }
            }
            overrides.insert(name.to_string(), items.join(","));
        }
        3 => {
            let remove: Vec<&str> = value
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .collect();
            let items: Vec<String> = list(overrides)
                .into_iter()
                .filter(|i| !remove.contains(&i.as_str()))
                .collect();
            overrides.insert(name.to_string(), items.join(","));
        }
        _ => return Err(format!("unknown config operation {op}")),
    }
    Ok(())
}

impl Broker {
    pub(super) fn describe_configs(
        &self,
        req: DescribeConfigsRequest,
        version: i16,
    ) -> DescribeConfigsResponse {
        let results = req
            .resources
            .into_iter()
            .map(|r| {
                let res = DescribeConfigsResult::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone());
                let docs = version >= 3 && req.include_documentation;
                let res = match r.resource_type {
                    RESOURCE_TOPIC => match self.catalog.get(r.resource_name.as_str()) {
                        Some(t) => res.with_configs(to_result(
                            topic_config_entries(&t.overrides(), &self.config),
                            &r.configuration_keys,
                            req.include_synonyms,
                            docs,
                            false,
                        )),
                        None => res
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "topic '{}' does not exist",
                                r.resource_name.as_str()
                            )))),
                    },
                    RESOURCE_BROKER
                        if r.resource_name.is_empty()
                            || r.resource_name.as_str() == self.config.node_id.to_string() =>
                    {
                        res.with_configs(to_result(
                            broker_entries(&self.config),
                            &r.configuration_keys,
                            req.include_synonyms,
                            docs,
                            true,
                        ))
                    }
                    _ => res
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes("unsupported resource"))),
                };
                self.count_error(ApiKey::DescribeConfigs, res.error_code);
                res
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    /// Validates and (unless `validate_only`) stores a new override set for a topic resource.
    async fn alter_topic(
        &self,
        resource_type: i8,
        name: &str,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), String>,
        validate_only: bool,
    ) -> (i16, Option<String>) {
        if resource_type != RESOURCE_TOPIC {
            let msg = if resource_type == RESOURCE_BROKER {
                "broker configs are static: set them in the config file, environment or flags"
            } else {
                "unsupported resource"
            };
            return (ResponseError::InvalidRequest.code(), Some(msg.into()));
        }
        let Some(topic) = self.catalog.get(name) else {
            return (
                ResponseError::UnknownTopicOrPartition.code(),
                Some(format!("topic '{name}' does not exist")),
            );
        };
        let mut overrides = topic.overrides();
        if let Err(msg) = change(&mut overrides) {
            return (ResponseError::InvalidConfig.code(), Some(msg));
        }
        if let Err(e) = Catalog::validate_configs(&overrides) {
            return (catalog_error_code(&e), Some(e.to_string()));
        }
        if validate_only {
            return (0, None);
        }
        let reply = self
            .control(
                crate::cluster::ControlRequest::SetTopicConfigs {
                    name: name.to_string(),
                    configs: overrides,
                },
                0,
            )
            .await;
        match super::control_error(&reply) {
            None => (0, None),
            Some((code, msg)) => (code, Some(msg)),
        }
    }

    pub(super) async fn alter_configs(&self, req: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut responses = Vec::with_capacity(req.resources.len());
        for r in req.resources {
            let (code, msg) = self
                .alter_topic(
                    r.resource_type,
                    r.resource_name.as_str(),
                    |o| {
                        // AlterConfigs replaces the whole set.
                        o.clear();
                        for c in &r.configs {
                            if let Some(v) = &c.value {
                                o.insert(c.name.to_string(), v.to_string());
                            }
                        }
                        Ok(())
                    },
                    req.validate_only,
                )
                .await;
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
    ) -> IncrementalAlterConfigsResponse {
        let mut responses = Vec::with_capacity(req.resources.len());
        for r in req.resources {
            let broker = &self.config;
            let (code, msg) = self
                .alter_topic(
                    r.resource_type,
                    r.resource_name.as_str(),
                    |o| {
                        for c in &r.configs {
                            apply_op(
                                o,
                                c.name.as_str(),
                                c.config_operation,
                                c.value.as_ref().map(|v| v.as_str()),
                                broker,
                            )?;
                        }
                        Ok(())
                    },
                    req.validate_only,
                )
                .await;
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

    #[test]
    fn incremental_ops_on_list_and_scalar_configs() {
        let broker = Config::default();
        let mut o = BTreeMap::new();
        apply_op(&mut o, "retention.ms", 0, Some("1000"), &broker).expect("set");
        assert_eq!(o["retention.ms"], "1000");
        apply_op(&mut o, "cleanup.policy", 2, Some("compact"), &broker).expect("append");
        assert_eq!(o["cleanup.policy"], "delete,compact");
        apply_op(&mut o, "cleanup.policy", 3, Some("delete"), &broker).expect("subtract");
        assert_eq!(o["cleanup.policy"], "compact");
        apply_op(&mut o, "retention.ms", 1, None, &broker).expect("delete");
        assert!(!o.contains_key("retention.ms"));
        assert!(apply_op(&mut o, "retention.ms", 2, Some("1"), &broker).is_err());
        assert!(apply_op(&mut o, "nope", 0, Some("1"), &broker).is_err());
    }

    #[test]
    fn entries_report_sources() {
        let broker = Config {
            log_retention_ms: 5,
            ..Config::default()
        };
        let mut o = BTreeMap::new();
        o.insert("max.message.bytes".to_string(), "2000".to_string());
        let e = topic_config_entries(&o, &broker);
        let get = |n: &str| e.iter().find(|x| x.name == n).expect("entry");
        assert_eq!(get("max.message.bytes").source, SOURCE_TOPIC);
        assert_eq!(get("retention.ms").source, SOURCE_STATIC_BROKER);
        assert_eq!(get("retention.ms").value, "5");
        assert_eq!(get("segment.bytes").source, SOURCE_DEFAULT);
        assert_eq!(e.len(), DEFS.len());
    }
}
