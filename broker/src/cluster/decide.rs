//! Controller decisions as pure functions over the metadata image: replica placement,
//! leader elections, and the partition changes that fencing, unfencing, controlled
//! shutdown and preferred-leader balancing call for.

use std::collections::BTreeSet;

use super::image::{BrokerId, Command, Image, PartitionState};

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// More replicas than live brokers.
    #[error("replication factor {rf} is larger than the {live} available brokers")]
    ReplicationFactor {
        /// Requested factor.
        rf: i16,
        /// Live brokers.
        live: usize,
    },
}

/// Live brokers ordered so that consecutive entries alternate racks (brokers without a
/// rack count as one rack of their own each).
fn rack_alternated(image: &Image) -> Vec<(BrokerId, Option<String>)> {
    let mut by_rack: std::collections::BTreeMap<String, Vec<BrokerId>> = Default::default();
    for b in image
        .brokers
        .values()
        .filter(|b| image.is_active(b.id) && !image.decommissioning.contains(&b.id))
    {
        let rack = b.rack.clone().unwrap_or_else(|| format!("\0{}", b.id));
        by_rack.entry(rack).or_default().push(b.id);
    }
    let mut out = Vec::new();
    let mut round = 0;
    loop {
        let mut any = false;
        for (rack, ids) in &by_rack {
            if let Some(&id) = ids.get(round) {
                any = true;
                let rack = (!rack.starts_with('\0')).then(|| rack.clone());
                out.push((id, rack));
            }
        }
        if !any {
            return out;
        }
        round += 1;
    }
}

/// Places `count` new partitions with `rf` replicas each over the live brokers: first
/// replicas (preferred leaders) round-robin from `start`, followers shifted so that
/// replica pairs vary, distinct racks wherever there are enough racks.
pub fn place(
    image: &Image,
    count: i32,
    rf: i16,
    start: usize,
) -> Result<Vec<Vec<BrokerId>>, PlaceError> {
    let brokers = rack_alternated(image);
    let n = brokers.len();
    if rf < 1 || rf as usize > n {
        return Err(PlaceError::ReplicationFactor { rf, live: n });
    }
    let rf = rf as usize;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    let mut shift = 0;
    for i in 0..count.max(0) as usize {
        if i > 0 && i % n == 0 {
            shift += 1;
        }
        let first = (start + i) % n;
        let mut chosen = vec![first];
        let mut racks: BTreeSet<&str> = brokers[first].1.as_deref().into_iter().collect();
        // Walk the others from a shifting offset; take new racks first, then anything.
        let order: Vec<usize> = (0..n - 1)
            .map(|j| (first + 1 + (shift + j) % (n - 1).max(1)) % n)
            .collect();
        for pass in 0..2 {
            for &c in &order {
                if chosen.len() == rf {
                    break;
                }
                if chosen.contains(&c) {
                    continue;
                }
                let rack = brokers[c].1.as_deref();
                if pass == 0 && rack.is_some_and(|r| racks.contains(r)) {
                    continue;
                }
                racks.extend(rack);
                chosen.push(c);
            }
        }
        out.push(chosen.into_iter().map(|c| brokers[c].0).collect());
    }
    Ok(out)
}

/// The first replica, in preference order, that is in `set`, active and not `gone`;
/// brokers in maintenance only when no other qualifies.
pub(super) fn first_active(
    image: &Image,
    p: &PartitionState,
    set: &[BrokerId],
    gone: BrokerId,
) -> Option<BrokerId> {
    p.replicas
        .iter()
        .copied()
        .filter(|&b| b != gone && set.contains(&b) && image.is_active(b))
        .min_by_key(|b| image.maintenance.contains(b))
}

/// `p` led by a new leader once `gone` stops leading: the first active in-sync replica;
/// else the first active eligible replica (ELR), which becomes the whole ISR; with
/// `unclean`, else any active replica, whose log is the truth from then on. `None` when
/// no replica qualifies.
pub fn elect(
    image: &Image,
    p: &PartitionState,
    gone: BrokerId,
    unclean: bool,
) -> Option<PartitionState> {
    if let Some(l) = first_active(image, p, &p.isr, gone) {
        return Some(with_leader(p, l));
    }
    if let Some(l) = first_active(image, p, &p.elr, gone) {
        return Some(PartitionState {
            isr: vec![l],
            elr: p.elr.iter().copied().filter(|&b| b != l).collect(),
            ..with_leader(p, l)
        });
    }
    let l = first_active(image, p, &p.replicas, gone).filter(|_| unclean)?;
    Some(PartitionState {
        isr: vec![l],
        elr: Vec::new(),
        ..with_leader(p, l)
    })
}

pub(super) fn change(
    topic: &str,
    partition: i32,
    old: &PartitionState,
    new: PartitionState,
) -> Command {
    Command::ChangePartition {
        topic: topic.to_string(),
        partition,
        expected_epoch: old.partition_epoch,
        state: new,
    }
}

/// A copy of `p` led by `leader`, with the leader epoch bumped if the leader changed.
pub(super) fn with_leader(p: &PartitionState, leader: BrokerId) -> PartitionState {
    PartitionState {
        leader_epoch: if leader != p.leader {
            p.leader_epoch + 1
        } else {
            p.leader_epoch
        },
        leader,
        ..p.clone()
    }
}

/// `p` without `broker` in its ISR.
fn without(p: &PartitionState, broker: BrokerId) -> PartitionState {
    PartitionState {
        isr: p.isr.iter().copied().filter(|&b| b != broker).collect(),
        ..p.clone()
    }
}

/// Partition changes once `broker` is fenced (`image` already has it fenced): it leaves
/// every ISR and loses its leaderships. The last member of an ISR stays in it, so that
/// only it, an eligible replica or an unclean election can bring the partition back
/// without loss.
pub fn on_fenced(image: &Image, broker: BrokerId, unclean: impl Fn(&str) -> bool) -> Vec<Command> {
    let mut out = Vec::new();
    for (topic, i, p) in image.partitions() {
        if !p.isr.contains(&broker) && p.leader != broker {
            continue;
        }
        let mut rest = without(p, broker);
        if rest.isr.is_empty() {
            rest.isr = p.isr.clone();
        }
        let new = if p.leader == broker || p.leader == -1 {
            elect(image, &rest, broker, unclean(topic)).unwrap_or_else(|| with_leader(&rest, -1))
        } else {
            rest
        };
        if new != *p {
            out.push(change(topic, i, p, new));
        }
    }
    out
}

/// Partition changes once `broker` is active again: offline partitions it can lead (it
/// is in their ISR or eligible) get a leader.
pub fn on_unfenced(image: &Image, broker: BrokerId) -> Vec<Command> {
    image
        .partitions()
        .filter(|(_, _, p)| p.leader == -1 && (p.isr.contains(&broker) || p.elr.contains(&broker)))
        .filter_map(|(topic, i, p)| Some(change(topic, i, p, elect(image, p, -1, false)?)))
        .collect()
}

/// Partition changes for a controlled shutdown of `broker`: each partition it leads moves
/// to another in-sync active replica (and `broker` leaves that ISR); partitions where no
/// other replica is in sync stay with it.
pub fn on_shutdown(image: &Image, broker: BrokerId) -> Vec<Command> {
    let mut out = Vec::new();
    for (topic, i, p) in image.partitions() {
        if p.leader == broker {
            if let Some(leader) = first_active(image, p, &p.isr, broker) {
                out.push(change(
                    topic,
                    i,
                    p,
                    with_leader(&without(p, broker), leader),
                ));
            }
        } else if p.isr.contains(&broker) && p.leader != -1 {
            out.push(change(topic, i, p, without(p, broker)));
        }
    }
    out
}

/// Number of partitions `broker` leads.
pub fn leader_count(image: &Image, broker: BrokerId) -> usize {
    image
        .partitions()
        .filter(|(_, _, p)| p.leader == broker)
        .count()
}

/// Moves leadership back to preferred replicas that are active and in sync. With
/// `only_if_above` set, only brokers whose share of non-preferred leaderships exceeds
/// that percentage are rebalanced (Kafka's `leader.imbalance.per.broker.percentage`).
pub fn preferred_elections(image: &Image, only_if_above: Option<u32>) -> Vec<Command> {
    let imbalanced = |preferred: BrokerId| match only_if_above {
        None => true,
        Some(pct) => {
            let (mut owned, mut misled) = (0u64, 0u64);
            for (_, _, p) in image.partitions() {
                if p.replicas.first() == Some(&preferred) {
                    owned += 1;
                    if p.leader != preferred {
                        misled += 1;
                    }
                }
            }
            owned > 0 && misled * 100 > owned * u64::from(pct)
        }
    };
    let mut out = Vec::new();
    for (topic, i, p) in image.partitions() {
        let Some(&preferred) = p.replicas.first() else {
            continue;
        };
        if p.leader != preferred
            && !image.maintenance.contains(&preferred)
            && p.isr.contains(&preferred)
            && image.is_active(preferred)
            && imbalanced(preferred)
        {
            out.push(change(topic, i, p, with_leader(p, preferred)));
        }
    }
    out
}

/// Why a leader's ISR change request was refused (Kafka error code and message).
pub type Refusal = (i16, String);

/// An ISR change a partition leader asks for (Kafka's AlterPartition).
#[derive(Debug, Clone)]
pub struct IsrRequest<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// The requesting leader.
    pub leader: BrokerId,
    /// Its leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch its request is based on.
    pub partition_epoch: i32,
    /// The ISR it asks for.
    pub isr: &'a [BrokerId],
}

/// Validates an ISR change: the requester must be the current leader at the current
/// epochs, the new ISR must keep the leader, name only replicas, and add only active
/// brokers. Replicas leaving an ISR smaller than `min_isr` become eligible leaders; an
/// ISR back at `min_isr` ends their eligibility (the high watermark moves on again).
pub fn check_isr_change(
    image: &Image,
    req: &IsrRequest,
    min_isr: usize,
) -> Result<Command, Refusal> {
    let IsrRequest {
        topic,
        partition,
        leader,
        leader_epoch,
        partition_epoch,
        isr: new_isr,
    } = *req;
    use kafka_protocol::error::ResponseError as E;
    let p = image.partition(topic, partition).ok_or_else(|| {
        (
            E::UnknownTopicOrPartition.code(),
            format!("{topic}-{partition}"),
        )
    })?;
    if p.leader != leader {
        return Err((
            E::NotLeaderOrFollower.code(),
            format!("leader is {}", p.leader),
        ));
    }
    if p.leader_epoch != leader_epoch {
        return Err((
            E::FencedLeaderEpoch.code(),
            format!("leader epoch is {}", p.leader_epoch),
        ));
    }
    if p.partition_epoch != partition_epoch {
        return Err((
            E::InvalidUpdateVersion.code(),
            format!("partition epoch is {}", p.partition_epoch),
        ));
    }
    if !new_isr.contains(&leader) || new_isr.iter().any(|b| !p.replicas.contains(b)) {
        return Err((E::InvalidRequest.code(), format!("bad ISR {new_isr:?}")));
    }
    if new_isr
        .iter()
        .any(|b| !p.isr.contains(b) && !image.is_active(*b))
    {
        return Err((
            E::IneligibleReplica.code(),
            "added replica is not active".into(),
        ));
    }
    let mut isr: Vec<BrokerId> = p
        .replicas
        .iter()
        .copied()
        .filter(|b| new_isr.contains(b))
        .collect();
    isr.dedup();
    let elr = if isr.len() < min_isr.min(p.replicas.len()) {
        p.replicas
            .iter()
            .copied()
            .filter(|b| !isr.contains(b) && (p.elr.contains(b) || p.isr.contains(b)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(change(
        topic,
        partition,
        p,
        PartitionState {
            isr,
            elr,
            ..p.clone()
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::image::tests::{broker, image_with};
    use super::super::image::{BrokerState, Command, CommandReply};
    use super::*;

    fn with_topic(mut img: Image, partitions: Vec<Vec<BrokerId>>) -> Image {
        let parts = partitions
            .into_iter()
            .map(|r| PartitionState::new(r, |_| true))
            .collect();
        img.apply(&Command::CreateTopic {
            name: "t".into(),
            id: uuid::Uuid::nil(),
            configs: BTreeMap::new(),
            partitions: parts,
        });
        img
    }

    /// An ISR change by `leader` at the given epochs (min ISR 1 unless said).
    fn isr(
        img: &Image,
        leader: BrokerId,
        epochs: (i32, i32),
        isr: &[BrokerId],
        min_isr: usize,
    ) -> Result<Command, Refusal> {
        let req = IsrRequest {
            topic: "t",
            partition: 0,
            leader,
            leader_epoch: epochs.0,
            partition_epoch: epochs.1,
            isr,
        };
        check_isr_change(img, &req, min_isr)
    }

    fn apply_all(img: &mut Image, cmds: &[Command]) {
        for c in cmds {
            assert_eq!(img.apply(c), CommandReply::Done, "{c:?}");
        }
    }

    #[test]
    fn placement_spreads_leaders_and_replicas_evenly() {
        let img = image_with(&[1, 2, 3, 4, 5, 6]);
        let a = place(&img, 60, 3, 0).unwrap();
        let mut leaders = BTreeMap::new();
        let mut replicas = BTreeMap::new();
        for r in &a {
            assert_eq!(r.len(), 3);
            assert_eq!(
                r.iter().collect::<BTreeSet<_>>().len(),
                3,
                "distinct: {r:?}"
            );
            *leaders.entry(r[0]).or_insert(0) += 1;
            for b in r {
                *replicas.entry(*b).or_insert(0) += 1;
            }
        }
        assert!(leaders.values().all(|&c| c == 10), "{leaders:?}");
        assert!(replicas.values().all(|&c| c == 30), "{replicas:?}");
        // Follower pairs vary across rounds (not always the same two neighbours).
        let pairs: BTreeSet<_> = a.iter().filter(|r| r[0] == 1).cloned().collect();
        assert!(pairs.len() > 1);
    }

    #[test]
    fn placement_refuses_more_replicas_than_live_brokers() {
        let mut img = image_with(&[1, 2, 3]);
        img.apply(&Command::SetBrokerState {
            id: 3,
            state: BrokerState::Fenced,
        });
        assert_eq!(
            place(&img, 1, 3, 0),
            Err(PlaceError::ReplicationFactor { rf: 3, live: 2 })
        );
        assert!(place(&img, 1, 2, 0).unwrap()[0].iter().all(|&b| b != 3));
    }

    #[test]
    fn placement_puts_replicas_on_distinct_racks() {
        let mut img = Image::default();
        for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
            img.apply(&Command::RegisterBroker(broker(id, Some(rack))));
        }
        let rack = |b: BrokerId| img.brokers[&b].rack.clone().unwrap();
        for r in place(&img, 30, 3, 2).unwrap() {
            let racks: BTreeSet<_> = r.iter().map(|&b| rack(b)).collect();
            assert_eq!(racks.len(), 3, "{r:?}");
        }
    }

    #[test]
    fn fencing_the_leader_elects_the_next_in_sync_replica() {
        let mut img = with_topic(image_with(&[1, 2, 3]), vec![vec![1, 2, 3], vec![2, 3, 1]]);
        img.apply(&Command::SetBrokerState {
            id: 1,
            state: BrokerState::Fenced,
        });
        let cmds = on_fenced(&img, 1, |_| false);
        apply_all(&mut img, &cmds);
        let p0 = img.partition("t", 0).unwrap();
        assert_eq!(
            (p0.leader, p0.leader_epoch, p0.isr.clone()),
            (2, 1, vec![2, 3])
        );
        let p1 = img.partition("t", 1).unwrap();
        assert_eq!(
            (p1.leader, p1.leader_epoch, p1.isr.clone()),
            (2, 0, vec![2, 3])
        );
    }

    #[test]
    fn last_in_sync_replica_keeps_the_partition_until_it_returns() {
        let mut img = with_topic(image_with(&[1, 2]), vec![vec![1, 2]]);
        // 2 fell out of sync earlier.
        let p = img.partition("t", 0).unwrap().clone();
        let shrink = isr(&img, 1, (0, 0), &[1], 1).unwrap();
        apply_all(&mut img, &[shrink]);
        assert_eq!(img.partition("t", 0).unwrap().isr, vec![1]);
        img.apply(&Command::SetBrokerState {
            id: 1,
            state: BrokerState::Fenced,
        });
        let cmds = on_fenced(&img, 1, |_| false);
        apply_all(&mut img, &cmds);
        let off = img.partition("t", 0).unwrap().clone();
        assert_eq!(
            (off.leader, off.isr.clone()),
            (-1, vec![1]),
            "offline, not unclean"
        );
        assert_eq!(off.leader_epoch, p.leader_epoch + 1);
        // An unclean election would pick 2 and reset the ISR to it.
        let unclean = on_fenced(&img, 1, |_| true);
        let mut img2 = img.clone();
        apply_all(&mut img2, &unclean);
        assert_eq!(img2.partition("t", 0).unwrap().leader, 2);
        assert_eq!(img2.partition("t", 0).unwrap().isr, vec![2]);
        // 1 comes back: it leads again.
        img.apply(&Command::SetBrokerState {
            id: 1,
            state: BrokerState::Active,
        });
        let cmds = on_unfenced(&img, 1);
        apply_all(&mut img, &cmds);
        assert_eq!(img.partition("t", 0).unwrap().leader, 1);
    }

    #[test]
    fn replicas_leaving_a_too_small_isr_stay_eligible_leaders() {
        let mut img = with_topic(image_with(&[1, 2, 3]), vec![vec![1, 2, 3]]);
        // min ISR 2: leaving [1, 2, 3] for [1, 2] keeps the ISR big enough.
        let c = isr(&img, 1, (0, 0), &[1, 2], 2).unwrap();
        apply_all(&mut img, &[c]);
        assert!(img.partition("t", 0).unwrap().elr.is_empty());
        // Now 2 leaves too: the ISR is below min ISR, so 2 is eligible (3 is not).
        let c = isr(&img, 1, (0, 1), &[1], 2).unwrap();
        apply_all(&mut img, &[c]);
        let p = img.partition("t", 0).unwrap().clone();
        assert_eq!((p.isr.clone(), p.elr.clone()), (vec![1], vec![2]));
        // The leader dies: 2 takes over without an unclean election, alone in the ISR.
        let mut dead = img.clone();
        dead.apply(&Command::SetBrokerState {
            id: 1,
            state: BrokerState::Fenced,
        });
        let cmds = on_fenced(&dead, 1, |_| false);
        apply_all(&mut dead, &cmds);
        let q = dead.partition("t", 0).unwrap();
        assert_eq!(
            (q.leader, q.leader_epoch, q.isr.clone(), q.elr.clone()),
            (2, 1, vec![2], vec![])
        );
        // Instead, 3 catches up and the ISR is big enough again: eligibility ends.
        let c = isr(&img, 1, (0, 2), &[1, 3], 2).unwrap();
        apply_all(&mut img, &[c]);
        let p = img.partition("t", 0).unwrap();
        assert_eq!((p.isr.clone(), p.elr.clone()), (vec![1, 3], vec![]));
    }

    #[test]
    fn an_eligible_replica_coming_back_leads_an_offline_partition() {
        let mut img = with_topic(image_with(&[1, 2, 3]), vec![vec![1, 2, 3]]);
        let c = isr(&img, 1, (0, 0), &[1], 2).unwrap();
        apply_all(&mut img, &[c]);
        assert_eq!(img.partition("t", 0).unwrap().elr, vec![2, 3]);
        for b in [2, 3, 1] {
            img.apply(&Command::SetBrokerState {
                id: b,
                state: BrokerState::Fenced,
            });
            let cmds = on_fenced(&img, b, |_| false);
            apply_all(&mut img, &cmds);
        }
        assert_eq!(img.partition("t", 0).unwrap().leader, -1);
        img.apply(&Command::SetBrokerState {
            id: 3,
            state: BrokerState::Active,
        });
        let cmds = on_unfenced(&img, 3);
        apply_all(&mut img, &cmds);
        let p = img.partition("t", 0).unwrap();
        assert_eq!(
            (p.leader, p.isr.clone(), p.elr.clone()),
            (3, vec![3], vec![2])
        );
    }

    #[test]
    fn controlled_shutdown_moves_leadership_and_preferred_election_returns_it() {
        let mut img = with_topic(image_with(&[1, 2, 3]), vec![vec![1, 2, 3]]);
        let cmds = on_shutdown(&img, 1);
        apply_all(&mut img, &cmds);
        let p = img.partition("t", 0).unwrap();
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2, 3]));
        assert_eq!(leader_count(&img, 1), 0);
        // Not in sync yet: no preferred election.
        assert!(preferred_elections(&img, None).is_empty());
        let p = img.partition("t", 0).unwrap().clone();
        let grow = isr(&img, 2, (p.leader_epoch, p.partition_epoch), &[2, 3, 1], 1).unwrap();
        apply_all(&mut img, &[grow]);
        assert_eq!(img.partition("t", 0).unwrap().isr, vec![1, 2, 3]);
        let cmds = preferred_elections(&img, Some(10));
        assert_eq!(cmds.len(), 1);
        apply_all(&mut img, &cmds);
        assert_eq!(img.partition("t", 0).unwrap().leader, 1);
    }

    #[test]
    fn isr_changes_are_checked_against_leader_and_epochs() {
        let img = with_topic(image_with(&[1, 2, 3]), vec![vec![1, 2, 3]]);
        assert!(isr(&img, 2, (0, 0), &[2, 3], 1).is_err(), "not leader");
        assert!(
            isr(&img, 1, (1, 0), &[1, 2], 1).is_err(),
            "stale leader epoch"
        );
        assert!(
            isr(&img, 1, (0, 5), &[1, 2], 1).is_err(),
            "stale partition epoch"
        );
        assert!(
            isr(&img, 1, (0, 0), &[2, 3], 1).is_err(),
            "drops the leader"
        );
        assert!(isr(&img, 1, (0, 0), &[1, 9], 1).is_err(), "not a replica");
        assert!(isr(&img, 1, (0, 0), &[1, 2], 1).is_ok());
    }
}
