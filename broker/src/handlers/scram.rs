//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554): credentials
//! live in the cluster metadata. Describing needs DESCRIBE on the cluster, altering ALTER.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::*;

use super::{control_error, str_bytes, Broker};
use crate::acl::{op, resource, Session, CLUSTER_NAME};
use crate::cluster::{ControlReply, ControlRequest};
use crate::scram;

/// Timeout for credential changes (the request carries none).
const SCRAM_TIMEOUT_MS: i32 = 30_000;

impl Broker {
    pub(super) fn describe_user_scram_credentials(
        &self,
        req: DescribeUserScramCredentialsRequest,
        who: &Session,
    ) -> DescribeUserScramCredentialsResponse {
        if !self.authorize(who, op::DESCRIBE, resource::CLUSTER, CLUSTER_NAME) {
            return DescribeUserScramCredentialsResponse::default()
                .with_error_code(E::ClusterAuthorizationFailed.code())
                .with_error_message(Some(str_bytes("Cluster authorization failed")));
        }
        let image = self.cluster.image();
        let describe = |user: &str| {
            let r = DescribeUserScramCredentialsResult::default().with_user(str_bytes(user));
            match image.scram.get(user) {
                Some(creds) => r.with_credential_infos(
                    creds
                        .iter()
                        .map(|(&mechanism, c)| {
                            CredentialInfo::default()
                                .with_mechanism(mechanism)
                                .with_iterations(c.iterations)
                        })
                        .collect(),
                ),
                None => r
                    .with_error_code(E::ResourceNotFound.code())
                    .with_error_message(Some(str_bytes(
                        "Attempt to describe a user credential that does not exist",
                    ))),
            }
        };
        let results = match req.users.filter(|u| !u.is_empty()) {
            None => image.scram.keys().map(|u| describe(u)).collect(),
            Some(users) => {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for u in &users {
                    *counts.entry(u.name.as_str()).or_default() += 1;
                }
                counts
                    .into_iter()
                    .map(|(u, n)| {
                        if n > 1 {
                            DescribeUserScramCredentialsResult::default()
                                .with_user(str_bytes(u))
                                .with_error_code(E::DuplicateResource.code())
                                .with_error_message(Some(str_bytes(
                                    "Cannot describe SCRAM credentials for the same user twice in a single request",
                                )))
                        } else {
                            describe(u)
                        }
                    })
                    .collect()
            }
        };
        DescribeUserScramCredentialsResponse::default().with_results(results)
    }

    pub(super) async fn alter_user_scram_credentials(
        &self,
        req: AlterUserScramCredentialsRequest,
        who: &Session,
    ) -> AlterUserScramCredentialsResponse {
        let users: BTreeSet<String> = req
            .deletions
            .iter()
            .map(|d| d.name.to_string())
            .chain(req.upsertions.iter().map(|u| u.name.to_string()))
            .collect();
        let mut refused: BTreeMap<String, (i16, String)> = BTreeMap::new();
        if !self.authorize(who, op::ALTER, resource::CLUSTER, CLUSTER_NAME) {
            for u in &users {
                let why = (
                    E::ClusterAuthorizationFailed.code(),
                    "Cluster authorization failed".into(),
                );
                refused.insert(u.clone(), why);
            }
        }
        // One operation per user and request, as Kafka requires.
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for u in req
            .deletions
            .iter()
            .map(|d| &d.name)
            .chain(req.upsertions.iter().map(|u| &u.name))
        {
            *seen.entry(u.to_string()).or_default() += 1;
        }
        for (u, n) in seen {
            if n > 1 {
                refused.entry(u).or_insert((
                    E::DuplicateResource.code(),
                    "A user credential cannot be altered twice in the same request".into(),
                ));
            }
        }
        let mut deletions = Vec::new();
        for d in &req.deletions {
            let user = d.name.to_string();
            if refused.contains_key(&user) {
                continue;
            }
            match scram::check_mechanism(d.mechanism) {
                Ok(()) if user.is_empty() => {
                    refused.insert(
                        user,
                        (
                            E::UnacceptableCredential.code(),
                            "Username must not be empty".into(),
                        ),
                    );
                }
                Ok(()) => deletions.push((user, d.mechanism)),
                Err(why) => {
                    refused.insert(user, why);
                }
            }
        }
        let mut upsertions = Vec::new();
        for u in &req.upsertions {
            let user = u.name.to_string();
            if refused.contains_key(&user) {
                continue;
            }
            match scram::credential(
                &user,
                u.mechanism,
                u.iterations,
                &u.salt,
                &u.salted_password,
            ) {
                Ok(c) => upsertions.push((user, u.mechanism, c)),
                Err(why) => {
                    refused.insert(user, why);
                }
            }
        }
        if !deletions.is_empty() || !upsertions.is_empty() {
            let reply = self
                .control(
                    ControlRequest::AlterScram {
                        deletions: deletions.clone(),
                        upsertions: upsertions.clone(),
                    },
                    SCRAM_TIMEOUT_MS,
                )
                .await;
            match reply {
                ControlReply::ScramAltered { refused: r, .. } => {
                    for (u, code, msg) in r {
                        refused.insert(u, (code, msg));
                    }
                }
                other => {
                    let why = control_error(&other)
                        .unwrap_or((E::UnknownServerError.code(), format!("{other:?}")));
                    let sent = deletions
                        .iter()
                        .map(|d| &d.0)
                        .chain(upsertions.iter().map(|u| &u.0));
                    for u in sent {
                        refused.insert(u.clone(), why.clone());
                    }
                }
            }
        }
        let results = users
            .into_iter()
            .map(|u| {
                let r = AlterUserScramCredentialsResult::default().with_user(str_bytes(&u));
                match refused.remove(&u) {
                    Some((code, msg)) => r
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(&msg))),
                    None => r,
                }
            })
            .collect();
        AlterUserScramCredentialsResponse::default().with_results(results)
    }
}
