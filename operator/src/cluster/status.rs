//! Cluster status from what the StatefulSet reports and what the operator does (pure).

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::build;
use super::plan::Step;
use crate::crd::{Cluster, ClusterStatus};

/// Sets a condition `(status, reason, message)`, keeping its transition time when its
/// status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    kind: &str,
    (ok, reason, message): (bool, &str, &str),
    generation: Option<i64>,
    now: &Time,
) {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    conditions.push(Condition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    });
}

/// Status for a spec that failed validation.
pub fn invalid(cluster: &Cluster, message: &str, now: &Time) -> ClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let mut conditions = Vec::new();
    for (kind, ok) in [("Ready", false), ("Progressing", false), ("Degraded", true)] {
        set_condition(
            &mut conditions,
            &previous.conditions,
            kind,
            (ok, "InvalidSpec", message),
            generation,
            now,
        );
    }
    ClusterStatus {
        observed_generation: generation,
        conditions,
        ..previous
    }
}

/// What the status keeps of the operator's work between reconciles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Broker being restarted, and since when.
    pub restarting: Option<(i32, Time)>,
    /// Last preferred-leader election.
    pub last_leader_election: Option<Time>,
}

/// Status of a reconciled cluster: the StatefulSet's counts, and what the operator is
/// doing (`step`, `progress`).
pub fn observed(
    cluster: &Cluster,
    sts: Option<&StatefulSetStatus>,
    step: &Step,
    progress: Progress,
    now: &Time,
) -> ClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let want = cluster.spec.replicas;
    let replicas = sts.map(|s| s.replicas).unwrap_or(0);
    let ready = sts.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = sts.and_then(|s| s.updated_replicas).unwrap_or(0);
    let all_ready = ready == want && updated == want && replicas == want;
    let msg = format!("{ready}/{want} brokers ready");
    let (stable, operation) = match step {
        Step::Steady | Step::ElectPreferredLeaders => (all_ready, None),
        Step::Wait(why) | Step::Refuse(why) => (false, Some(why.clone())),
        other => (false, Some(describe(other))),
    };
    let progress_reason = match step {
        Step::Steady | Step::ElectPreferredLeaders if all_ready => "Stable",
        Step::Steady | Step::Resize(_) => "RollingOut",
        Step::Decommission(_) | Step::Recommission(_) => "Scaling",
        Step::Wait(_) if replicas > want => "Scaling",
        Step::Refuse(_) => "Stopped",
        _ => "RollingRestart",
    };
    let progress_msg = operation.clone().unwrap_or_else(|| msg.clone());
    let refused = matches!(step, Step::Refuse(_));
    let mut conditions = Vec::new();
    let prev = &previous.conditions;
    let ready_reason = if all_ready {
        "AllBrokersReady"
    } else {
        "BrokersNotReady"
    };
    set_condition(
        &mut conditions,
        prev,
        "Ready",
        (all_ready, ready_reason, &msg),
        generation,
        now,
    );
    set_condition(
        &mut conditions,
        prev,
        "Progressing",
        (!stable && !refused, progress_reason, &progress_msg),
        generation,
        now,
    );
    let degraded = if refused {
        (true, "OperationStopped", progress_msg.as_str())
    } else {
        (false, "AsExpected", "")
    };
    set_condition(&mut conditions, prev, "Degraded", degraded, generation, now);
    let (restarting, restarting_since) = progress.restarting.unzip();
    ClusterStatus {
        observed_generation: generation,
        conditions,
        replicas,
        ready_replicas: ready,
        bootstrap_servers: Some(build::bootstrap_servers(cluster)),
        brokers: (0..want)
            .map(|id| build::broker_address(cluster, id))
            .collect(),
        selector: Some(build::selector_string(cluster)),
        voters: Some(build::voters(cluster)),
        operation,
        restarting,
        restarting_since,
        non_preferred_leaders: previous.non_preferred_leaders,
        last_leader_election: progress.last_leader_election,
        autoscaler: previous.autoscaler,
    }
}

/// What a step does, for people.
pub fn describe(step: &Step) -> String {
    match step {
        Step::Steady => "nothing to do".into(),
        Step::Resize(n) => format!("setting the StatefulSet to {n} brokers"),
        Step::Decommission(id) => format!("decommissioning broker {id}"),
        Step::Recommission(id) => format!("cancelling the decommission of broker {id}"),
        Step::EnterMaintenance(id) => format!("moving leaderships off broker {id} to restart it"),
        Step::ExitMaintenance(id) => format!("broker {id} restarted"),
        Step::Restart(id) => format!("restarting broker {id}"),
        Step::ElectPreferredLeaders => "moving leaderships back to preferred replicas".into(),
        Step::Wait(why) | Step::Refuse(why) => why.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClusterSpec;

    fn cluster() -> Cluster {
        let mut c = Cluster::new(
            "events",
            serde_json::from_value::<ClusterSpec>(serde_json::json!({"replicas": 3}))
                .expect("spec"),
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.generation = Some(4);
        c
    }

    fn t(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn ready_when_every_broker_is_ready_and_stable_over_time() {
        let mut c = cluster();
        let sts = StatefulSetStatus {
            replicas: 3,
            ready_replicas: Some(3),
            updated_replicas: Some(3),
            ..Default::default()
        };
        let s1 = observed(
            &c,
            Some(&sts),
            &Step::Steady,
            Progress::default(),
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(s1.ready_replicas, 3);
        assert_eq!(s1.conditions[0].status, "True");
        assert_eq!(
            s1.bootstrap_servers.as_deref(),
            Some("events-bootstrap.ns.svc:9092")
        );
        assert_eq!(s1.brokers[2], "events-2.events-brokers.ns.svc:9092");
        assert_eq!(s1.observed_generation, Some(4));
        // Same observation later: identical status, so nothing needs writing.
        c.status = Some(s1.clone());
        assert_eq!(
            observed(
                &c,
                Some(&sts),
                &Step::Steady,
                Progress::default(),
                &t("2026-01-01T01:00:00Z")
            ),
            s1
        );
    }

    #[test]
    fn not_ready_while_rolling_and_invalid_spec_is_degraded() {
        let c = cluster();
        let sts = StatefulSetStatus {
            replicas: 3,
            ready_replicas: Some(1),
            updated_replicas: Some(3),
            ..Default::default()
        };
        let s = observed(
            &c,
            Some(&sts),
            &Step::Steady,
            Progress::default(),
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            (
                s.conditions[0].status.as_str(),
                s.conditions[0].reason.as_str()
            ),
            ("False", "BrokersNotReady")
        );
        assert_eq!(s.conditions[1].status, "True");
        let bad = invalid(
            &c,
            "spec.replicas must be at least 1",
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(bad.conditions[2].type_, "Degraded");
        assert_eq!(bad.conditions[2].status, "True");
        assert_eq!(bad.conditions[0].reason, "InvalidSpec");
    }
}
