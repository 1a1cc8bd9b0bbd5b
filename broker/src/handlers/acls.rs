//! CreateAcls, DescribeAcls, DeleteAcls: the ACLs live in the cluster metadata, so every
//! broker enforces the same ones and they survive restarts.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::*;

use super::{str_bytes, Broker};
use crate::acl::{self, op, resource, AclBinding, AclFilter, Session};
use crate::cluster::{ControlReply, ControlRequest};

/// Timeout for ACL changes (the requests carry none).
const ACL_TIMEOUT_MS: i32 = 30_000;

const DISABLED: &str = "No Authorizer is configured on the broker";

impl Broker {
    /// Whether the session may change ACLs (`ALTER` on the cluster) or read them
    /// (`DESCRIBE`); the error to answer otherwise.
    fn acl_access(&self, who: &Session, operation: i8) -> Result<(), (i16, String)> {
        if !self.config.authorizer_enabled {
            return Err((ResponseError::SecurityDisabled.code(), DISABLED.into()));
        }
        if !self.authorize(who, operation, resource::CLUSTER, acl::CLUSTER_NAME) {
            return Err((
                ResponseError::ClusterAuthorizationFailed.code(),
                "Cluster authorization failed".into(),
            ));
        }
        Ok(())
    }

    pub(super) async fn create_acls(
        &self,
        req: CreateAclsRequest,
        who: &Session,
    ) -> CreateAclsResponse {
        let result = |code: i16, msg: Option<&str>| {
            AclCreationResult::default()
                .with_error_code(code)
                .with_error_message(msg.map(str_bytes))
        };
        if let Err((code, msg)) = self.acl_access(who, op::ALTER) {
            let refused = req.creations.iter().map(|_| result(code, Some(&msg)));
            return CreateAclsResponse::default().with_results(refused.collect());
        }
        let bindings: Vec<Result<AclBinding, String>> = req
            .creations
            .iter()
            .map(|c| {
                let b = AclBinding {
                    resource_type: c.resource_type,
                    resource_name: c.resource_name.to_string(),
                    pattern_type: c.resource_pattern_type,
                    principal: c.principal.to_string(),
                    host: c.host.to_string(),
                    operation: c.operation,
                    permission: c.permission_type,
                };
                acl::validate(&b).map(|_| b)
            })
            .collect();
        let valid: Vec<AclBinding> = bindings.iter().filter_map(|b| b.clone().ok()).collect();
        let outcome = if valid.is_empty() {
            Ok(())
        } else {
            match self
                .control(ControlRequest::CreateAcls(valid), ACL_TIMEOUT_MS)
                .await
            {
                ControlReply::Done { .. } => Ok(()),
                other => Err(super::control_error(&other).unwrap_or((
                    ResponseError::UnknownServerError.code(),
                    format!("{other:?}"),
                ))),
            }
        };
        let results = bindings
            .into_iter()
            .map(|b| match (b, &outcome) {
                (Err(why), _) => result(ResponseError::InvalidRequest.code(), Some(&why)),
                (Ok(_), Ok(())) => result(0, None),
                (Ok(_), Err((code, msg))) => result(*code, Some(msg)),
            })
            .collect();
        CreateAclsResponse::default().with_results(results)
    }

    pub(super) fn describe_acls(
        &self,
        req: DescribeAclsRequest,
        who: &Session,
    ) -> DescribeAclsResponse {
        let fail = |code: i16, msg: String| {
            DescribeAclsResponse::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&msg)))
        };
        if let Err((code, msg)) = self.acl_access(who, op::DESCRIBE) {
            return fail(code, msg);
        }
        let filter = AclFilter {
            resource_type: req.resource_type_filter,
            resource_name: req.resource_name_filter.map(|s| s.to_string()),
            pattern_type: req.pattern_type_filter,
            principal: req.principal_filter.map(|s| s.to_string()),
            host: req.host_filter.map(|s| s.to_string()),
            operation: req.operation,
            permission: req.permission_type,
        };
        if let Err(msg) = acl::validate_filter(&filter) {
            return fail(ResponseError::InvalidRequest.code(), msg);
        }
        let image = self.cluster.image();
        let mut by_resource: BTreeMap<(i8, &str, i8), Vec<AclDescription>> = BTreeMap::new();
        for b in image.acls.iter().filter(|b| filter.matches(b)) {
            by_resource
                .entry((b.resource_type, &b.resource_name, b.pattern_type))
                .or_default()
                .push(
                    AclDescription::default()
                        .with_principal(str_bytes(&b.principal))
                        .with_host(str_bytes(&b.host))
                        .with_operation(b.operation)
                        .with_permission_type(b.permission),
                );
        }
        let resources = by_resource
            .into_iter()
            .map(|((rt, name, pt), acls)| {
                DescribeAclsResource::default()
                    .with_resource_type(rt)
                    .with_resource_name(str_bytes(name))
                    .with_pattern_type(pt)
                    .with_acls(acls)
            })
            .collect();
        DescribeAclsResponse::default().with_resources(resources)
    }

    pub(super) async fn delete_acls(
        &self,
        req: DeleteAclsRequest,
        who: &Session,
    ) -> DeleteAclsResponse {
        let failed = |code: i16, msg: &str| {
            DeleteAclsFilterResult::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(msg)))
        };
        if let Err((code, msg)) = self.acl_access(who, op::ALTER) {
            return DeleteAclsResponse::default()
                .with_filter_results(req.filters.iter().map(|_| failed(code, &msg)).collect());
        }
        let filters: Vec<Result<AclFilter, String>> = req
            .filters
            .iter()
            .map(|f: &DeleteAclsFilter| {
                let filter = AclFilter {
                    resource_type: f.resource_type_filter,
                    resource_name: f.resource_name_filter.as_ref().map(|s| s.to_string()),
                    pattern_type: f.pattern_type_filter,
                    principal: f.principal_filter.as_ref().map(|s| s.to_string()),
                    host: f.host_filter.as_ref().map(|s| s.to_string()),
                    operation: f.operation,
                    permission: f.permission_type,
                };
                acl::validate_filter(&filter).map(|_| filter)
            })
            .collect();
        let valid: Vec<AclFilter> = filters.iter().filter_map(|f| f.clone().ok()).collect();
        let deleted = match self
            .control(ControlRequest::DeleteAcls(valid), ACL_TIMEOUT_MS)
            .await
        {
            ControlReply::AclsDeleted { deleted, .. } => Ok(deleted),
            other => Err(super::control_error(&other).unwrap_or((
                ResponseError::UnknownServerError.code(),
                format!("{other:?}"),
            ))),
        };
        let mut matched = match &deleted {
            Ok(d) => d.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let results = filters
            .into_iter()
            .map(|f| match (f, &deleted) {
                (Err(why), _) => failed(ResponseError::InvalidRequest.code(), &why),
                (Ok(_), Err((code, msg))) => failed(*code, msg),
                (Ok(_), Ok(_)) => DeleteAclsFilterResult::default().with_matching_acls(
                    matched
                        .next()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|b| {
                            DeleteAclsMatchingAcl::default()
                                .with_resource_type(b.resource_type)
                                .with_resource_name(str_bytes(&b.resource_name))
                                .with_pattern_type(b.pattern_type)
                                .with_principal(str_bytes(&b.principal))
                                .with_host(str_bytes(&b.host))
                                .with_operation(b.operation)
                                .with_permission_type(b.permission)
                        })
                        .collect(),
                ),
            })
            .collect();
        DeleteAclsResponse::default().with_filter_results(results)
    }
}
