//! Leader election through a `coordination.k8s.io` Lease, so that of several operator
//! replicas only one reconciles. Timings follow Kubernetes' own components (client-go's
//! defaults: a 15 s lease, renewed well before it runs out, retried every 2 s).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// Name of the Lease the operator replicas compete for.
pub const LEASE_NAME: &str = "riffle-operator";

/// What a candidate does with the Lease it has read.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, held by us.
    Create,
    /// Free or expired: take it over.
    Take,
    /// Ours: renew it.
    Renew,
    /// Held by a live leader: wait.
    Wait,
}

/// Decides from the Lease as read at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::Take,
        Some(_) => {
            let ttl = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
            match &spec.renew_time {
                Some(t) if t.0 + ttl > now => Step::Wait,
                _ => Step::Take,
            }
        }
    }
}

/// The Lease after `step` by `me` at `now`.
fn next(
    spec: Option<&LeaseSpec>,
    step: &Step,
    me: &str,
    ttl: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let mut s = spec.cloned().unwrap_or_default();
    if *step != Step::Renew {
        s.acquire_time = Some(MicroTime(now));
        s.lease_transitions = Some(s.lease_transitions.map_or(0, |n| n + 1));
    }
    s.holder_identity = Some(me.to_string());
    s.lease_duration_seconds = Some(ttl.as_secs() as i32);
    s.renew_time = Some(MicroTime(now));
    s
}

/// Leader-election failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be renewed before it expired: another replica may lead now.
    #[error("leadership lost: the lease was not renewed for {0:?}")]
    Lost(Duration),
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    me: String,
    ttl: Duration,
}

impl Elector {
    /// A candidate named `me` for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, me: String, ttl: Duration) -> Elector {
        Elector { api, me, ttl }
    }

    /// One read-decide-write round; true when we hold the Lease afterwards.
    async fn round(&self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(LEASE_NAME).await?;
        let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
        let now = Timestamp::now();
        let step = decide(spec, &self.me, now);
        let written = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                // Optimistic concurrency: a competing write in between gets a conflict.
                resource_version: lease
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(next(spec, &step, &self.me, self.ttl, now)),
        };
        let result = match step {
            Step::Wait => return Ok(false),
            Step::Create => self.api.create(&PostParams::default(), &written).await,
            Step::Take | Step::Renew => {
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &written)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if step != Step::Renew {
                    tracing::info!(identity = %self.me, "acquired the leader lease");
                }
                Ok(true)
            }
            // Someone else wrote first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate leads.
    pub async fn acquire(&self) {
        let mut waiting_logged = false;
        loop {
            match self.round().await {
                Ok(true) => return,
                Ok(false) if !waiting_logged => {
                    tracing::info!(identity = %self.me, "another replica leads; standing by");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Renews the Lease until it cannot be renewed in time; then returns why.
    pub async fn hold(&self) -> Error {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.round().await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => return Error::Lost(renewed.elapsed()),
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease"),
            }
            // Stop before the Lease can run out under us.
            if renewed.elapsed() + self.ttl / 3 >= self.ttl {
                return Error::Lost(renewed.elapsed());
            }
        }
    }

    /// Gives the Lease up (on shutdown), so a standby replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "releasing the leader lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn held(by: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn every_case_of_the_lease() {
        let now = t("2026-01-01T00:00:20Z");
        assert_eq!(decide(None, "a", now), Step::Create);
        assert_eq!(decide(Some(&LeaseSpec::default()), "a", now), Step::Take);
        assert_eq!(
            decide(Some(&held("a", "2026-01-01T00:00:00Z")), "a", now),
            Step::Renew,
            "our own lease, even expired (a restart with the same identity)"
        );
        assert_eq!(
            decide(Some(&held("b", "2026-01-01T00:00:10Z")), "a", now),
            Step::Wait,
            "renewed 10 s ago, 15 s lease"
        );
        assert_eq!(
            decide(Some(&held("b", "2026-01-01T00:00:04Z")), "a", now),
            Step::Take,
            "expired 1 s ago"
        );
        let no_renew = LeaseSpec {
            holder_identity: Some("b".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(decide(Some(&no_renew), "a", now), Step::Take);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let now = t("2026-01-01T00:00:20Z");
        let ttl = Duration::from_secs(15);
        let old = held("b", "2026-01-01T00:00:00Z");
        let taken = next(Some(&old), &Step::Take, "a", ttl, now);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(0));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        let later = t("2026-01-01T00:00:25Z");
        let renewed = next(Some(&taken), &Step::Renew, "a", ttl, later);
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
        let again = next(Some(&renewed), &Step::Take, "c", ttl, later);
        assert_eq!(again.lease_transitions, Some(1));
    }
}
