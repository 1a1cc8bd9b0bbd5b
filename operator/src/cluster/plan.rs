//! Pure decisions for changing a running Cluster safely: (wanted size, what the
//! StatefulSet, the Pods and the brokers report) → the one next step. Scaling down
//! drains the highest broker through decommission before its Pod goes; a rolling restart
//! moves one broker at a time into maintenance (no leaderships), restarts it, and waits
//! for a full ISR everywhere before the next, the active controller last. A quiet cluster
//! whose leaderships drifted from their preferred replicas gets a preferred-leader
//! election, after each roll and then at most once per interval.

use std::collections::BTreeMap;
use std::time::Duration;

/// One broker as the cluster's metadata reports it (admin API `/v1/cluster`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Broker {
    /// Replicas the broker holds.
    pub replicas: usize,
    /// Partitions it leads.
    pub leaders: usize,
    /// Being drained.
    pub decommissioning: bool,
    /// Kept free of leaderships.
    pub maintenance: bool,
}

/// The brokers' own account of the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Registered brokers by id.
    pub brokers: BTreeMap<i32, Broker>,
    /// Active controller.
    pub controller: Option<i32>,
    /// Partitions without a full ISR, or without a leader.
    pub under_replicated: usize,
    /// Largest replication factor of any partition.
    pub max_replication_factor: usize,
    /// Partitions led by a replica other than their preferred (first) one.
    pub non_preferred_leaders: usize,
    /// Partition reassignments in flight (balancing, draining).
    pub reassignments: usize,
}

/// A broker Pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    /// StatefulSet ordinal = broker id.
    pub ordinal: i32,
    /// Passes its readiness probe.
    pub ready: bool,
    /// Runs the StatefulSet's current revision.
    pub updated: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// Everything the decision looks at.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Replicas of the StatefulSet as it is (0: not created yet).
    pub sts_replicas: i32,
    /// Broker Pods.
    pub pods: Vec<Pod>,
    /// The brokers' view; None while no broker answers.
    pub view: Option<View>,
    /// Broker the operator is restarting, and for how long (from the Cluster status).
    pub restarting: Option<(i32, Duration)>,
    /// Time since the operator's last preferred-leader election (None: none since the
    /// last restart of a broker, so one is due).
    pub since_leader_election: Option<Duration>,
}

/// Time limits of the decisions.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a restarted broker may take to be back before a roll stops.
    pub restart_timeout: Duration,
    /// Least time between two preferred-leader elections.
    pub leader_election_interval: Duration,
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change.
    Steady,
    /// Set the StatefulSet to this many brokers.
    Resize(i32),
    /// Start draining a broker.
    Decommission(i32),
    /// Stop draining a broker (the Cluster grew again).
    Recommission(i32),
    /// Move leaderships off a broker before restarting it.
    EnterMaintenance(i32),
    /// The restarted broker may lead again; its restart is done.
    ExitMaintenance(i32),
    /// Delete the broker's Pod, so it comes back at the new revision.
    Restart(i32),
    /// Move leaderships back to their preferred replicas.
    ElectPreferredLeaders,
    /// Something must happen first (why).
    Wait(String),
    /// Cannot go on without a person (why): reported, nothing done.
    Refuse(String),
}

impl Step {
    /// Every kind of step, as metric labels.
    pub const KINDS: [&'static str; 10] = [
        "steady",
        "resize",
        "decommission",
        "recommission",
        "enter_maintenance",
        "exit_maintenance",
        "restart",
        "elect_preferred_leaders",
        "wait",
        "stopped",
    ];

    /// The broker a step acts on, if any.
    pub fn broker(&self) -> Option<i32> {
        match self {
            Step::Decommission(id)
            | Step::Recommission(id)
            | Step::EnterMaintenance(id)
            | Step::ExitMaintenance(id)
            | Step::Restart(id) => Some(*id),
            _ => None,
        }
    }

    /// This step's kind (one of `KINDS`).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Steady => "steady",
            Step::Resize(_) => "resize",
            Step::Decommission(_) => "decommission",
            Step::Recommission(_) => "recommission",
            Step::EnterMaintenance(_) => "enter_maintenance",
            Step::ExitMaintenance(_) => "exit_maintenance",
            Step::Restart(_) => "restart",
            Step::ElectPreferredLeaders => "elect_preferred_leaders",
            Step::Wait(_) => "wait",
            Step::Refuse(_) => "stopped",
        }
    }
}

/// Decides the next step towards `want` brokers, all at the current revision.
pub fn next(want: i32, obs: &Observed, limits: &Limits) -> Step {
    if obs.sts_replicas == 0 {
        return Step::Resize(want);
    }
    // A broker that stays after all is taken back first.
    if let Some(view) = &obs.view {
        if let Some((&id, _)) = view
            .brokers
            .iter()
            .find(|(&id, b)| id < want && b.decommissioning)
        {
            return Step::Recommission(id);
        }
    }
    if want > obs.sts_replicas {
        return Step::Resize(want);
    }
    let Some(view) = &obs.view else {
        return if want < obs.sts_replicas || obs.pods.iter().any(|p| !p.updated) {
            Step::Wait("no broker answers the admin API".into())
        } else {
            Step::Steady
        };
    };
    if want < obs.sts_replicas {
        return scale_down(want, obs.sts_replicas, view);
    }
    roll(want, obs, view, limits)
}

fn scale_down(want: i32, current: i32, view: &View) -> Step {
    if (want as usize) < view.max_replication_factor {
        return Step::Refuse(format!(
            "cannot scale to {want} brokers: a partition has {} replicas",
            view.max_replication_factor
        ));
    }
    let id = current - 1;
    match view.brokers.get(&id) {
        // Never registered, or already gone from the metadata: nothing to drain.
        None => Step::Resize(id),
        Some(b) if !b.decommissioning => Step::Decommission(id),
        Some(b) if b.replicas > 0 => Step::Wait(format!(
            "draining broker {id}: {} replicas left",
            b.replicas
        )),
        Some(_) => Step::Resize(id),
    }
}

fn roll(want: i32, obs: &Observed, view: &View, limits: &Limits) -> Step {
    let pod = |id: i32| obs.pods.iter().find(|p| p.ordinal == id);
    // (A broker removed by a scale-down meanwhile is no longer restarting.)
    if let Some((id, elapsed)) = obs.restarting.filter(|&(id, _)| id < want) {
        let broker = view.brokers.get(&id);
        let p = pod(id);
        let back = p.is_some_and(|p| p.updated && p.ready && !p.terminating);
        if back {
            return Step::ExitMaintenance(id);
        }
        // A Pod still (or, after the spec changed again, once more) at an older revision
        // is restarted; one at the current revision is waited for, but not forever.
        let outdated = p.is_some_and(|p| !p.updated && !p.terminating);
        if !outdated && elapsed > limits.restart_timeout {
            return Step::Refuse(format!(
                "broker {id} is not back after {}s: rolling restart stopped",
                elapsed.as_secs()
            ));
        }
        if !outdated {
            return Step::Wait(format!("broker {id} is restarting"));
        }
        return match broker {
            Some(b) if !b.maintenance => Step::EnterMaintenance(id),
            Some(b) if b.leaders > 0 => {
                Step::Wait(format!("moving {} leaderships off broker {id}", b.leaders))
            }
            _ => Step::Restart(id),
        };
    }
    let mut outdated: Vec<i32> = obs
        .pods
        .iter()
        .filter(|p| !p.updated && p.ordinal < want)
        .map(|p| p.ordinal)
        .collect();
    if outdated.is_empty() {
        return leaders(obs, view, limits.leader_election_interval);
    }
    let all_up = (0..want).all(|id| pod(id).is_some_and(|p| p.ready && !p.terminating));
    if !all_up {
        return Step::Wait("waiting for every broker to be ready".into());
    }
    if view.under_replicated > 0 {
        return Step::Wait(format!(
            "waiting for {} under-replicated partitions to catch up",
            view.under_replicated
        ));
    }
    // Highest ordinal first, the active controller last (one controller move per roll).
    outdated.sort_by_key(|&id| (Some(id) == view.controller, std::cmp::Reverse(id)));
    Step::EnterMaintenance(outdated[0])
}

/// A preferred-leader election when leaderships drifted, the cluster is quiet (full ISRs,
/// no moves, no broker in maintenance or draining) and the last one is old enough.
fn leaders(obs: &Observed, view: &View, interval: Duration) -> Step {
    let due = obs.since_leader_election.is_none_or(|t| t >= interval);
    let quiet = view.under_replicated == 0
        && view.reassignments == 0
        && view
            .brokers
            .values()
            .all(|b| !b.maintenance && !b.decommissioning);
    if due && quiet && view.non_preferred_leaders > 0 {
        Step::ElectPreferredLeaders
    } else {
        Step::Steady
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &Limits = &Limits {
        restart_timeout: Duration::from_secs(300),
        leader_election_interval: Duration::from_secs(600),
    };

    fn view(n: i32) -> View {
        View {
            brokers: (0..n)
                .map(|id| {
                    (
                        id,
                        Broker {
                            replicas: 10,
                            leaders: 3,
                            ..Broker::default()
                        },
                    )
                })
                .collect(),
            controller: Some(0),
            under_replicated: 0,
            max_replication_factor: 3,
            non_preferred_leaders: 0,
            reassignments: 0,
        }
    }

    fn pods(n: i32) -> Vec<Pod> {
        (0..n)
            .map(|ordinal| Pod {
                ordinal,
                ready: true,
                updated: true,
                terminating: false,
            })
            .collect()
    }

    fn obs(sts: i32, brokers: i32) -> Observed {
        Observed {
            sts_replicas: sts,
            pods: pods(sts),
            view: Some(view(brokers)),
            restarting: None,
            since_leader_election: Some(Duration::ZERO),
        }
    }

    fn broker(o: &mut Observed, id: i32) -> &mut Broker {
        o.view
            .as_mut()
            .and_then(|v| v.brokers.get_mut(&id))
            .expect("broker in the view")
    }

    #[test]
    fn creation_and_scale_up_resize_at_once() {
        let none = Observed::default();
        assert_eq!(next(3, &none, T), Step::Resize(3));
        assert_eq!(next(5, &obs(3, 3), T), Step::Resize(5));
        // Even without an answer from the brokers.
        let blind = Observed {
            view: None,
            ..obs(3, 3)
        };
        assert_eq!(next(5, &blind, T), Step::Resize(5));
        assert_eq!(next(3, &obs(3, 3), T), Step::Steady);
    }

    #[test]
    fn scale_down_drains_the_highest_broker_before_its_pod_goes() {
        let mut o = obs(5, 5);
        assert_eq!(next(3, &o, T), Step::Decommission(4));
        broker(&mut o, 4).decommissioning = true;
        assert_eq!(
            next(3, &o, T),
            Step::Wait("draining broker 4: 10 replicas left".into())
        );
        broker(&mut o, 4).replicas = 0;
        assert_eq!(next(3, &o, T), Step::Resize(4));
        // Pod 4 gone; broker 4 unregistered once its process stopped; then broker 3.
        let mut o = obs(4, 4);
        assert_eq!(next(3, &o, T), Step::Decommission(3));
        o.view.as_mut().map(|v| v.brokers.remove(&3));
        assert_eq!(next(3, &o, T), Step::Resize(3));
    }

    #[test]
    fn scale_down_waits_for_the_brokers_and_refuses_below_the_replication_factor() {
        let blind = Observed {
            view: None,
            ..obs(5, 5)
        };
        assert!(matches!(next(3, &blind, T), Step::Wait(_)));
        let Step::Refuse(why) = next(2, &obs(3, 3), T) else {
            panic!("not refused")
        };
        assert!(why.contains("3 replicas"), "{why}");
    }

    #[test]
    fn growing_again_recommissions_a_broker_being_drained() {
        let mut o = obs(5, 5);
        broker(&mut o, 4).decommissioning = true;
        assert_eq!(next(5, &o, T), Step::Recommission(4));
        assert_eq!(
            next(4, &o, T),
            Step::Wait("draining broker 4: 10 replicas left".into())
        );
    }

    fn outdated(o: &mut Observed, ids: &[i32]) {
        for p in o.pods.iter_mut().filter(|p| ids.contains(&p.ordinal)) {
            p.updated = false;
        }
    }

    #[test]
    fn roll_order_is_highest_first_and_the_controller_last() {
        let mut o = obs(3, 3);
        outdated(&mut o, &[0, 1, 2]);
        assert_eq!(next(3, &o, T), Step::EnterMaintenance(2));
        outdated(&mut o, &[]);
        o.pods[2].updated = true;
        assert_eq!(next(3, &o, T), Step::EnterMaintenance(1));
        o.pods[1].updated = true;
        assert_eq!(next(3, &o, T), Step::EnterMaintenance(0));
        o.view.as_mut().expect("view").controller = Some(2);
        o.pods[1].updated = false;
        assert_eq!(
            next(3, &o, T),
            Step::EnterMaintenance(1),
            "0 before controller 2"
        );
    }

    #[test]
    fn one_broker_restart_step_by_step() {
        let mut o = obs(3, 3);
        outdated(&mut o, &[0, 1, 2]);
        o.restarting = Some((2, Duration::from_secs(1)));
        assert_eq!(next(3, &o, T), Step::EnterMaintenance(2));
        broker(&mut o, 2).maintenance = true;
        assert_eq!(
            next(3, &o, T),
            Step::Wait("moving 3 leaderships off broker 2".into())
        );
        broker(&mut o, 2).leaders = 0;
        assert_eq!(next(3, &o, T), Step::Restart(2));
        o.pods[2].terminating = true;
        assert_eq!(next(3, &o, T), Step::Wait("broker 2 is restarting".into()));
        o.pods[2] = Pod {
            ordinal: 2,
            ready: false,
            updated: true,
            terminating: false,
        };
        assert_eq!(next(3, &o, T), Step::Wait("broker 2 is restarting".into()));
        o.pods[2].ready = true;
        assert_eq!(next(3, &o, T), Step::ExitMaintenance(2));
    }

    #[test]
    fn a_broker_that_does_not_come_back_stops_the_roll() {
        let mut o = obs(3, 3);
        outdated(&mut o, &[0, 1]);
        o.pods[2].ready = false;
        o.restarting = Some((2, Duration::from_secs(301)));
        assert!(matches!(next(3, &o, T), Step::Refuse(_)));
        // Fixing the spec (a new revision) restarts the broker again, past the timeout.
        let mut fixed = o.clone();
        fixed.pods[2].updated = false;
        broker(&mut fixed, 2).maintenance = true;
        broker(&mut fixed, 2).leaders = 0;
        assert_eq!(next(3, &fixed, T), Step::Restart(2));
        // Not restarting anything: a broker down blocks starting the next one.
        o.restarting = None;
        assert_eq!(
            next(3, &o, T),
            Step::Wait("waiting for every broker to be ready".into())
        );
    }

    #[test]
    fn roll_waits_for_full_isrs_and_for_the_brokers() {
        let mut o = obs(3, 3);
        outdated(&mut o, &[1]);
        o.view.as_mut().expect("view").under_replicated = 4;
        assert_eq!(
            next(3, &o, T),
            Step::Wait("waiting for 4 under-replicated partitions to catch up".into())
        );
        o.view = None;
        assert!(matches!(next(3, &o, T), Step::Wait(_)));
    }

    #[test]
    fn scaling_comes_before_rolling() {
        let mut o = obs(5, 5);
        outdated(&mut o, &[0, 1, 2, 3, 4]);
        assert_eq!(next(3, &o, T), Step::Decommission(4));
        assert_eq!(next(6, &o, T), Step::Resize(6));
    }

    #[test]
    fn drifted_leaderships_get_an_election_when_quiet_and_due() {
        let mut o = obs(3, 3);
        o.view.as_mut().expect("view").non_preferred_leaders = 4;
        // The last election is recent: nothing.
        assert_eq!(next(3, &o, T), Step::Steady);
        o.since_leader_election = Some(Duration::from_secs(600));
        assert_eq!(next(3, &o, T), Step::ElectPreferredLeaders);
        // After a broker restart (no election since): at once.
        o.since_leader_election = None;
        assert_eq!(next(3, &o, T), Step::ElectPreferredLeaders);
        // Not while partitions catch up or move, or a broker is in maintenance.
        let disturbances: [fn(&mut View); 3] = [
            |v: &mut View| v.under_replicated = 1,
            |v: &mut View| v.reassignments = 2,
            |v: &mut View| v.brokers.entry(1).or_default().maintenance = true,
        ];
        for disturb in disturbances {
            let mut busy = o.clone();
            disturb(busy.view.as_mut().expect("view"));
            assert_eq!(next(3, &busy, T), Step::Steady);
        }
        // Nothing drifted: nothing to elect.
        o.view.as_mut().expect("view").non_preferred_leaders = 0;
        assert_eq!(next(3, &o, T), Step::Steady);
        // A roll comes first.
        o.view.as_mut().expect("view").non_preferred_leaders = 4;
        outdated(&mut o, &[1]);
        assert_eq!(next(3, &o, T), Step::EnterMaintenance(1));
    }
}
