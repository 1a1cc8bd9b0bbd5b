//! Access control lists (Kafka's KIP-140 model) and the authorizer that evaluates them,
//! as pure functions over the ACLs in the cluster metadata.
//!
//! Codes are Kafka's wire values, so bindings travel between the protocol and the image
//! without translation.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Resource types (`ResourceType`).
pub mod resource {
    /// Matches any type (filters only).
    pub const ANY: i8 = 1;
    /// A topic.
    pub const TOPIC: i8 = 2;
    /// A consumer group.
    pub const GROUP: i8 = 3;
    /// The cluster (resource name `kafka-cluster`).
    pub const CLUSTER: i8 = 4;
    /// A transactional id.
    pub const TRANSACTIONAL_ID: i8 = 5;
    /// A delegation token.
    pub const DELEGATION_TOKEN: i8 = 6;
    /// A user.
    pub const USER: i8 = 7;
}

/// Resource pattern types (`PatternType`).
pub mod pattern {
    /// Any pattern type, names compared exactly (filters only).
    pub const ANY: i8 = 1;
    /// Every binding that applies to the filter's name (filters only).
    pub const MATCH: i8 = 2;
    /// The exact name, or `*` for every resource of the type.
    pub const LITERAL: i8 = 3;
    /// Every name starting with the pattern's name.
    pub const PREFIXED: i8 = 4;
}

/// Operations (`AclOperation`).
pub mod op {
    /// Any operation (filters only).
    pub const ANY: i8 = 1;
    /// Every operation.
    pub const ALL: i8 = 2;
    /// Read.
    pub const READ: i8 = 3;
    /// Write.
    pub const WRITE: i8 = 4;
    /// Create.
    pub const CREATE: i8 = 5;
    /// Delete.
    pub const DELETE: i8 = 6;
    /// Alter.
    pub const ALTER: i8 = 7;
    /// Describe.
    pub const DESCRIBE: i8 = 8;
    /// Cluster action (inter-broker).
    pub const CLUSTER_ACTION: i8 = 9;
    /// Describe configs.
    pub const DESCRIBE_CONFIGS: i8 = 10;
    /// Alter configs.
    pub const ALTER_CONFIGS: i8 = 11;
    /// Idempotent write.
    pub const IDEMPOTENT_WRITE: i8 = 12;
    /// Create delegation tokens.
    pub const CREATE_TOKENS: i8 = 13;
    /// Describe delegation tokens.
    pub const DESCRIBE_TOKENS: i8 = 14;
}

/// Permission types (`AclPermissionType`).
pub mod permission {
    /// Any permission (filters only).
    pub const ANY: i8 = 1;
    /// Deny: wins over any allow.
    pub const DENY: i8 = 2;
    /// Allow.
    pub const ALLOW: i8 = 3;
}

/// The resource name of the cluster.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// The principal of a connection that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// One ACL: who may (or may not) do what from where on which resources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    /// Resource type.
    pub resource_type: i8,
    /// Resource name (or prefix, or `*`).
    pub resource_name: String,
    /// [`pattern::LITERAL`] or [`pattern::PREFIXED`].
    pub pattern_type: i8,
    /// `Type:name`, e.g. `User:alice` (`User:*`: everyone).
    pub principal: String,
    /// Client host (`*`: any).
    pub host: String,
    /// Operation.
    pub operation: i8,
    /// Allow or deny.
    pub permission: i8,
}

/// Which bindings a describe or delete applies to; `None` names match any value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    /// Resource type, or [`resource::ANY`].
    pub resource_type: i8,
    /// Resource name.
    pub resource_name: Option<String>,
    /// Pattern type, or [`pattern::ANY`] / [`pattern::MATCH`].
    pub pattern_type: i8,
    /// Principal.
    pub principal: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Operation, or [`op::ANY`].
    pub operation: i8,
    /// Permission, or [`permission::ANY`].
    pub permission: i8,
}

fn valid_principal(p: &str) -> bool {
    matches!(p.split_once(':'), Some((kind, name)) if !kind.is_empty() && !name.is_empty())
}

/// Checks a new binding as Kafka does; the message says what is wrong.
pub fn validate(b: &AclBinding) -> Result<(), String> {
    if !(resource::TOPIC..=resource::USER).contains(&b.resource_type) {
        return Err(format!("Invalid resource type {}", b.resource_type));
    }
    if b.pattern_type != pattern::LITERAL && b.pattern_type != pattern::PREFIXED {
        return Err(format!(
            "Invalid pattern type {}: only LITERAL and PREFIXED bindings can be created",
            b.pattern_type
        ));
    }
    if !(op::ALL..=op::DESCRIBE_TOKENS).contains(&b.operation) {
        return Err(format!("Invalid operation {}", b.operation));
    }
    if b.permission != permission::ALLOW && b.permission != permission::DENY {
        return Err(format!("Invalid permission type {}", b.permission));
    }
    if b.resource_name.is_empty() {
        return Err("Resource name must not be empty".into());
    }
    if b.resource_type == resource::CLUSTER && b.resource_name != CLUSTER_NAME {
        return Err(format!(
            "The only valid name for the CLUSTER resource is {CLUSTER_NAME}"
        ));
    }
    if !valid_principal(&b.principal) {
        return Err(format!(
            "Could not parse principal {:?}: expected principalType:principalName",
            b.principal
        ));
    }
    if b.host.is_empty() {
        return Err("Host must not be empty (use * for any host)".into());
    }
    Ok(())
}

/// Checks a filter: every code must be known.
pub fn validate_filter(f: &AclFilter) -> Result<(), String> {
    if !(resource::ANY..=resource::USER).contains(&f.resource_type) {
        return Err(format!("Invalid resource type filter {}", f.resource_type));
    }
    if !(pattern::ANY..=pattern::PREFIXED).contains(&f.pattern_type) {
        return Err(format!("Invalid pattern type filter {}", f.pattern_type));
    }
    if !(op::ANY..=op::DESCRIBE_TOKENS).contains(&f.operation) {
        return Err(format!("Invalid operation filter {}", f.operation));
    }
    if !(permission::ANY..=permission::ALLOW).contains(&f.permission) {
        return Err(format!("Invalid permission type filter {}", f.permission));
    }
    Ok(())
}

/// Whether a binding's pattern applies to the resource `name`.
fn pattern_applies(b: &AclBinding, name: &str) -> bool {
    match b.pattern_type {
        pattern::LITERAL => b.resource_name == name || b.resource_name == "*",
        pattern::PREFIXED => name.starts_with(b.resource_name.as_str()),
        _ => false,
    }
}

impl AclFilter {
    /// Whether `b` is one of the bindings this filter selects.
    pub fn matches(&self, b: &AclBinding) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let code = |want: i8, any: i8, have: i8| want == any || want == have;
        code(self.resource_type, resource::ANY, b.resource_type)
            && self.matches_pattern(b)
            && eq(&self.principal, &b.principal)
            && eq(&self.host, &b.host)
            && code(self.operation, op::ANY, b.operation)
            && code(self.permission, permission::ANY, b.permission)
    }

    fn matches_pattern(&self, b: &AclBinding) -> bool {
        if self.pattern_type != pattern::ANY
            && self.pattern_type != pattern::MATCH
            && self.pattern_type != b.pattern_type
        {
            return false;
        }
        match &self.resource_name {
            None => true,
            Some(name) if self.pattern_type == pattern::MATCH => pattern_applies(b, name),
            Some(name) => *name == b.resource_name,
        }
    }
}

/// One client connection: who asks (the principal and the client's host), and until
/// when its quotas hold its next request back.
#[derive(Debug, Default)]
pub struct Session {
    /// `Type:name`.
    pub principal: String,
    /// Client IP address.
    pub host: String,
    /// A client over its quota is not read from again before this instant (Kafka mutes
    /// the channel for the throttle time).
    pub throttled_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Session {
    /// The principal's name without its type (`alice` for `User:alice`).
    pub fn user(&self) -> &str {
        self.principal
            .split_once(':')
            .map_or(self.principal.as_str(), |(_, n)| n)
    }

    /// Holds the connection's next request back until `until` (the later of two holds wins).
    pub fn throttle_until(&self, until: std::time::Instant) {
        let mut t = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *t = Some(t.map_or(until, |old| old.max(until)));
    }

    /// Takes the pending hold, if any.
    pub fn take_throttle(&self) -> Option<std::time::Instant> {
        self.throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Authorization settings (from the broker configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// ACLs are enforced (Kafka: an `authorizer.class.name` is set).
    pub enabled: bool,
    /// Principals allowed everything.
    pub super_users: BTreeSet<String>,
    /// A resource without any ACL is open to everyone (else closed to all but super users).
    pub allow_everyone_if_no_acl_found: bool,
}

/// Operations an allow on `granted` also allows (Kafka's implied operations).
fn implies(granted: i8, wanted: i8) -> bool {
    granted == wanted
        || granted == op::ALL
        || (wanted == op::DESCRIBE
            && matches!(granted, op::READ | op::WRITE | op::DELETE | op::ALTER))
        || (wanted == op::DESCRIBE_CONFIGS && granted == op::ALTER_CONFIGS)
}

/// Whether `who` may perform `operation` on the resource `(resource_type, name)`.
pub fn authorize<'a>(
    acls: impl IntoIterator<Item = &'a AclBinding>,
    policy: &Policy,
    who: &Session,
    operation: i8,
    resource_type: i8,
    name: &str,
) -> bool {
    if !policy.enabled || policy.super_users.contains(&who.principal) {
        return true;
    }
    let mut any_acl = false;
    let mut allowed = false;
    for b in acls {
        if b.resource_type != resource_type || !pattern_applies(b, name) {
            continue;
        }
        any_acl = true;
        let principal = b.principal == who.principal || b.principal == "User:*";
        let host = b.host == who.host || b.host == "*";
        if !principal || !host {
            continue;
        }
        match b.permission {
            permission::DENY if b.operation == operation || b.operation == op::ALL => return false,
            permission::ALLOW if implies(b.operation, operation) => allowed = true,
            _ => {}
        }
    }
    allowed || (!any_acl && policy.allow_everyone_if_no_acl_found)
}

/// Operations a resource type has (for "authorized operations" answers).
pub fn operations_of(resource_type: i8) -> &'static [i8] {
    use op::*;
    match resource_type {
        resource::TOPIC => &[
            READ,
            WRITE,
            CREATE,
            DELETE,
            ALTER,
            DESCRIBE,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
        ],
        resource::GROUP => &[READ, DESCRIBE, DELETE],
        resource::CLUSTER => &[
            CREATE,
            CLUSTER_ACTION,
            DESCRIBE_CONFIGS,
            ALTER_CONFIGS,
            IDEMPOTENT_WRITE,
            ALTER,
            DESCRIBE,
        ],
        _ => &[],
    }
}

/// Kafka's authorized-operations bit field: bit `op` set for each operation `who` may
/// perform on the resource.
pub fn authorized_operations(
    acls: &BTreeSet<AclBinding>,
    policy: &Policy,
    who: &Session,
    resource_type: i8,
    name: &str,
) -> i32 {
    operations_of(resource_type)
        .iter()
        .filter(|&&o| authorize(acls, policy, who, o, resource_type, name))
        .fold(0, |bits, &o| bits | (1 << o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(rt: i8, name: &str, pt: i8, who: &str, host: &str, o: i8, perm: i8) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: who.into(),
            host: host.into(),
            operation: o,
            permission: perm,
        }
    }

    fn session(who: &str, host: &str) -> Session {
        Session {
            principal: who.into(),
            host: host.into(),
            ..Session::default()
        }
    }

    fn on() -> Policy {
        Policy {
            enabled: true,
            super_users: ["User:admin".to_string()].into(),
            allow_everyone_if_no_acl_found: false,
        }
    }

    #[test]
    fn validation_refuses_what_kafka_refuses() {
        let good = acl(
            resource::TOPIC,
            "t",
            pattern::LITERAL,
            "User:a",
            "*",
            op::READ,
            permission::ALLOW,
        );
        assert!(validate(&good).is_ok());
        for bad in [
            AclBinding {
                resource_type: resource::ANY,
                ..good.clone()
            },
            AclBinding {
                pattern_type: pattern::MATCH,
                ..good.clone()
            },
            AclBinding {
                operation: op::ANY,
                ..good.clone()
            },
            AclBinding {
                permission: permission::ANY,
                ..good.clone()
            },
            AclBinding {
                principal: "alice".into(),
                ..good.clone()
            },
            AclBinding {
                resource_type: resource::CLUSTER,
                resource_name: "other".into(),
                ..good.clone()
            },
            AclBinding {
                host: String::new(),
                ..good.clone()
            },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_select_like_kafka() {
        let lit = acl(
            resource::TOPIC,
            "orders",
            pattern::LITERAL,
            "User:a",
            "*",
            op::READ,
            permission::ALLOW,
        );
        let wild = AclBinding {
            resource_name: "*".into(),
            ..lit.clone()
        };
        let pre = AclBinding {
            resource_name: "ord".into(),
            pattern_type: pattern::PREFIXED,
            ..lit.clone()
        };
        let f = |name: Option<&str>, pt: i8| AclFilter {
            resource_type: resource::ANY,
            resource_name: name.map(String::from),
            pattern_type: pt,
            principal: None,
            host: None,
            operation: op::ANY,
            permission: permission::ANY,
        };
        let sel = |flt: &AclFilter| -> Vec<bool> {
            [&lit, &wild, &pre].iter().map(|b| flt.matches(b)).collect()
        };
        assert_eq!(sel(&f(None, pattern::ANY)), [true, true, true]);
        assert_eq!(sel(&f(Some("orders"), pattern::ANY)), [true, false, false]);
        assert_eq!(sel(&f(Some("orders"), pattern::MATCH)), [true, true, true]);
        assert_eq!(
            sel(&f(Some("ord"), pattern::PREFIXED)),
            [false, false, true]
        );
        assert_eq!(sel(&f(None, pattern::LITERAL)), [true, true, false]);
        let by_principal = AclFilter {
            principal: Some("User:b".into()),
            ..f(None, pattern::ANY)
        };
        assert_eq!(sel(&by_principal), [false, false, false]);
        assert!(validate_filter(&f(None, 0)).is_err());
    }

    #[test]
    fn deny_wins_allows_imply_describe_and_no_acl_follows_the_policy() {
        let a = session("User:a", "10.0.0.1");
        let acls = [
            acl(
                resource::TOPIC,
                "pay",
                pattern::PREFIXED,
                "User:*",
                "*",
                op::WRITE,
                permission::ALLOW,
            ),
            acl(
                resource::TOPIC,
                "payroll",
                pattern::LITERAL,
                "User:a",
                "10.0.0.1",
                op::ALL,
                permission::DENY,
            ),
        ];
        let policy = on();
        let can = |o: i8, name: &str, who: &Session| {
            authorize(&acls, &policy, who, o, resource::TOPIC, name)
        };
        assert!(can(op::WRITE, "payments", &a));
        assert!(can(op::DESCRIBE, "payments", &a), "WRITE implies DESCRIBE");
        assert!(!can(op::READ, "payments", &a));
        assert!(!can(op::WRITE, "payroll", &a), "deny wins");
        assert!(can(op::WRITE, "payroll", &session("User:a", "10.0.0.2")));
        assert!(!can(op::READ, "other", &a), "no ACL: closed");
        assert!(can(op::READ, "payroll", &session("User:admin", "h")));
        let open = Policy {
            allow_everyone_if_no_acl_found: true,
            ..on()
        };
        assert!(authorize(
            &acls,
            &open,
            &a,
            op::READ,
            resource::TOPIC,
            "other"
        ));
        assert!(!authorize(
            &acls,
            &open,
            &a,
            op::READ,
            resource::TOPIC,
            "payments"
        ));
        assert!(authorize(
            &acls,
            &Policy::default(),
            &a,
            op::WRITE,
            resource::TOPIC,
            "payroll"
        ));
        let set: BTreeSet<AclBinding> = acls.into_iter().collect();
        let bits = authorized_operations(&set, &policy, &a, resource::TOPIC, "payments");
        assert_eq!(bits, (1 << op::WRITE) | (1 << op::DESCRIBE));
    }
}
