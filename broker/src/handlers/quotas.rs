//! DescribeClientQuotas and AlterClientQuotas (KIP-546): quotas live in the metadata
//! quorum; [`crate::quota`] validates, filters and enforces them.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{control_error, str_bytes, Broker};
use crate::acl::{op, resource, Session, CLUSTER_NAME};
use crate::cluster::ControlRequest;
use crate::quota::{self, Entity, Match, Op, Value};

/// How long an alteration may wait for the quorum.
const QUOTA_TIMEOUT_MS: i32 = 30_000;

impl Broker {
    pub(super) fn describe_client_quotas(
        &self,
        req: DescribeClientQuotasRequest,
    ) -> DescribeClientQuotasResponse {
        let components: Result<Vec<(String, Match)>, String> = req
            .components
            .iter()
            .map(|c| {
                let ty = c.entity_type.to_string();
                let m = match (c.match_type, &c._match) {
                    (0, Some(name)) => Match::Exact(name.to_string()),
                    (0, None) => {
                        return Err("Request specified MATCH_TYPE_EXACT, but set match string \
                                    to null."
                            .into())
                    }
                    (1, None) => Match::Default,
                    (1, Some(_)) => {
                        return Err("Request specified MATCH_TYPE_DEFAULT, but also specified \
                                    a match string."
                            .into())
                    }
                    (2, None) => Match::Specified,
                    (2, Some(_)) => {
                        return Err("Request specified MATCH_TYPE_SPECIFIED, but also \
                                    specified a match string."
                            .into())
                    }
                    (t, _) => return Err(format!("Unknown match type {t}")),
                };
                Ok((ty, m))
            })
            .collect();
        let image = self.cluster.image();
        let found = components.and_then(|c| quota::filter(&image.client_quotas, &c, req.strict));
        let resp = match found {
            Ok(found) => {
                let entries = found
                    .into_iter()
                    .map(|(entity, values)| {
                        describe_client_quotas_response::EntryData::default()
                            .with_entity(
                                entity
                                    .iter()
                                    .map(|(t, n)| {
                                        describe_client_quotas_response::EntityData::default()
                                            .with_entity_type(str_bytes(t))
                                            .with_entity_name(n.as_deref().map(str_bytes))
                                    })
                                    .collect(),
                            )
                            .with_values(
                                values
                                    .iter()
                                    .map(|(k, v)| {
                                        describe_client_quotas_response::ValueData::default()
                                            .with_key(str_bytes(k))
                                            .with_value(v.0)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                DescribeClientQuotasResponse::default().with_entries(Some(entries))
            }
            Err(msg) => DescribeClientQuotasResponse::default()
                .with_error_code(E::InvalidRequest.code())
                .with_error_message(Some(StrBytes::from_string(msg))),
        };
        self.count_error(ApiKey::DescribeClientQuotas, resp.error_code);
        resp
    }

    pub(super) async fn alter_client_quotas(
        &self,
        req: AlterClientQuotasRequest,
        who: &Session,
    ) -> AlterClientQuotasResponse {
        let allowed = self.authorize(who, op::ALTER_CONFIGS, resource::CLUSTER, CLUSTER_NAME);
        // Each entry's outcome; the valid ones are committed together.
        let mut outcomes: Vec<Option<(i16, String)>> = Vec::with_capacity(req.entries.len());
        let mut valid: Vec<(Entity, Vec<Op>)> = Vec::new();
        let mut seen: Vec<Entity> = Vec::new();
        for e in &req.entries {
            let mut entity = Entity::new();
            let mut duplicate_type = None;
            for d in &e.entity {
                let ty = d.entity_type.to_string();
                if entity.contains_key(&ty) {
                    duplicate_type = Some(ty.clone());
                }
                entity.insert(ty, d.entity_name.as_ref().map(|n| n.to_string()));
            }
            let ops: Vec<Op> = e
                .ops
                .iter()
                .map(|o| (o.key.to_string(), (!o.remove).then_some(Value(o.value))))
                .collect();
            let outcome = if !allowed {
                Err((
                    E::ClusterAuthorizationFailed.code(),
                    "Cluster authorization failed.".to_string(),
                ))
            } else if let Some(ty) = duplicate_type {
                Err((
                    E::InvalidRequest.code(),
                    format!("Invalid empty client quota entity, duplicate entity entry {ty}"),
                ))
            } else if seen.contains(&entity) {
                Err((
                    E::InvalidRequest.code(),
                    format!(
                        "Ignoring duplicate entity {}",
                        quota::describe_entity(&entity)
                    ),
                ))
            } else {
                quota::validate(&entity, &ops).map_err(|m| (E::InvalidRequest.code(), m))
            };
            seen.push(entity.clone());
            if outcome.is_ok() {
                valid.push((entity, ops));
            }
            outcomes.push(outcome.err());
        }
        if !valid.is_empty() && !req.validate_only {
            let reply = self
                .control(ControlRequest::AlterClientQuotas(valid), QUOTA_TIMEOUT_MS)
                .await;
            if let Some(err) = control_error(&reply) {
                for o in outcomes.iter_mut().filter(|o| o.is_none()) {
                    *o = Some(err.clone());
                }
            }
        }
        let entries = req
            .entries
            .into_iter()
            .zip(outcomes)
            .map(|(e, outcome)| {
                let (code, msg) = outcome.map_or((0, None), |(c, m)| (c, Some(m)));
                self.count_error(ApiKey::AlterClientQuotas, code);
                alter_client_quotas_response::EntryData::default()
                    .with_error_code(code)
                    .with_error_message(msg.map(StrBytes::from_string))
                    .with_entity(
                        e.entity
                            .into_iter()
                            .map(|d| {
                                alter_client_quotas_response::EntityData::default()
                                    .with_entity_type(d.entity_type)
                                    .with_entity_name(d.entity_name)
                            })
                            .collect(),
                    )
            })
            .collect();
        AlterClientQuotasResponse::default().with_entries(entries)
    }
}
