//! Partition reassignment as Kafka does it (KIP-455), as pure functions over the image.
//!
//! Starting a reassignment to a target replica list makes the partition's replicas the
//! target followed by the original replicas it drops (`removing`); target replicas that
//! are new (`adding`) fetch from the leader and join the ISR like any follower. Once
//! every target replica is in sync the controller commits the target as the replica
//! list (leadership moves to a target replica first when the leader is being removed).
//! Cancelling returns to the original replicas in their order.

use kafka_protocol::error::ResponseError as E;

use super::decide::{change, first_active, with_leader, Refusal};
use super::image::{minus, BrokerId, Command, Image, PartitionState};

/// Checks a target replica list as Kafka checks a manual assignment.
fn check_target(image: &Image, target: &[BrokerId]) -> Result<(), Refusal> {
    let refuse = |m: String| Err((E::InvalidReplicaAssignment.code(), m));
    if target.is_empty() {
        return refuse("The manual partition assignment includes an empty replica list.".into());
    }
    for (i, b) in target.iter().enumerate() {
        if target[..i].contains(b) {
            return refuse(format!(
                "The manual partition assignment includes the broker {b} more than once."
            ));
        }
        if !image.brokers.contains_key(b) {
            return refuse(format!(
                "The manual partition assignment includes broker {b}, but no such broker is registered."
            ));
        }
    }
    Ok(())
}

/// `p` reassigned to `target` (replacing any reassignment in progress), completed at
/// once when every target replica is already in sync.
pub fn start(
    image: &Image,
    p: &PartitionState,
    target: &[BrokerId],
) -> Result<PartitionState, Refusal> {
    check_target(image, target)?;
    let original = p.original();
    let removing = minus(&original, target);
    let replicas: Vec<BrokerId> = target.iter().chain(&removing).copied().collect();
    let mut next = PartitionState {
        adding: minus(target, &original),
        removing,
        isr: p
            .isr
            .iter()
            .copied()
            .filter(|b| replicas.contains(b))
            .collect(),
        elr: p
            .elr
            .iter()
            .copied()
            .filter(|b| replicas.contains(b))
            .collect(),
        replicas,
        before: original,
        ..p.clone()
    };
    if !next.reassigning() {
        next.before.clear();
    }
    if !next.replicas.contains(&next.leader) {
        // A replica an earlier reassignment was adding led: an original in-sync one leads.
        let l = first_active(image, &next, &next.isr, -1).ok_or_else(|| {
            (
                E::InvalidReplicaAssignment.code(),
                "no in-sync replica would remain to lead the partition".to_string(),
            )
        })?;
        next = with_leader(&next, l);
    }
    Ok(complete(image, &next).unwrap_or(next))
}

/// `p` back at its original replicas, or NO_REASSIGNMENT_IN_PROGRESS.
pub fn cancel(image: &Image, p: &PartitionState) -> Result<PartitionState, Refusal> {
    if !p.reassigning() {
        return Err((
            E::NoReassignmentInProgress.code(),
            "no reassignment in progress".to_string(),
        ));
    }
    let replicas = p.original();
    let mut next = PartitionState {
        isr: minus(&p.isr, &p.adding),
        elr: minus(&p.elr, &p.adding),
        adding: Vec::new(),
        removing: Vec::new(),
        before: Vec::new(),
        replicas,
        ..p.clone()
    };
    if next.isr.is_empty() {
        return Err((
            E::InvalidReplicaAssignment.code(),
            "no original replica is in sync: cancelling would take the partition offline"
                .to_string(),
        ));
    }
    if !next.replicas.contains(&next.leader) {
        let l = first_active(image, &next, &next.isr, -1).unwrap_or(-1);
        next = with_leader(&next, l);
    }
    Ok(next)
}

/// The final state of a reassignment whose target replicas are all in sync: the target
/// is the replica list, replicas being removed leave the ISR, and leadership moves to
/// the first in-sync target replica when the leader was being removed. `None` while
/// nothing is in progress, a target replica is still catching up, or no target replica
/// could lead.
pub fn complete(image: &Image, p: &PartitionState) -> Option<PartitionState> {
    if !p.reassigning() {
        return None;
    }
    let target = p.target();
    if !target.iter().all(|b| p.isr.contains(b)) {
        return None;
    }
    let done = PartitionState {
        isr: target.clone(),
        elr: minus(&p.elr, &p.removing),
        adding: Vec::new(),
        removing: Vec::new(),
        before: Vec::new(),
        replicas: target.clone(),
        ..p.clone()
    };
    if target.contains(&p.leader) {
        return Some(done);
    }
    let l = first_active(image, &done, &p.isr, -1)?;
    Some(with_leader(&done, l))
}

/// Commands completing every reassignment that can complete now.
pub fn completions(image: &Image) -> Vec<Command> {
    image
        .partitions()
        .filter_map(|(t, i, p)| Some(change(t, i, p, complete(image, p)?)))
        .collect()
}

/// Partitions with a reassignment in progress: `(topic, partition, state)`.
pub fn ongoing(image: &Image) -> impl Iterator<Item = (&str, i32, &PartitionState)> {
    image.partitions().filter(|(_, _, p)| p.reassigning())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::image::tests::image_with;
    use super::super::image::{BrokerState, CommandReply};
    use super::*;

    fn image(brokers: &[BrokerId], replicas: Vec<BrokerId>) -> Image {
        let mut img = image_with(brokers);
        img.apply(&Command::CreateTopic {
            name: "t".into(),
            id: uuid::Uuid::nil(),
            configs: BTreeMap::new(),
            partitions: vec![PartitionState::new(replicas, |_| true)],
        });
        img
    }

    fn commit(img: &mut Image, state: PartitionState) {
        let p = img.partition("t", 0).unwrap().clone();
        assert_eq!(img.apply(&change("t", 0, &p, state)), CommandReply::Done);
    }

    fn reassign_to(img: &mut Image, target: &[BrokerId]) {
        let s = start(img, &p(img), target).unwrap();
        commit(img, s);
    }

    fn p(img: &Image) -> PartitionState {
        img.partition("t", 0).unwrap().clone()
    }

    /// The leader lets `b` join the ISR (what AlterPartition commits).
    fn join_isr(img: &mut Image, b: BrokerId) {
        let mut s = p(img);
        s.isr.push(b);
        commit(img, s);
    }

    #[test]
    fn move_adds_catches_up_then_removes_and_moves_leadership() {
        let mut img = image(&[1, 2, 3, 4, 5], vec![1, 2, 3]);
        let s = start(&img, &p(&img), &[4, 5, 3]).unwrap();
        assert_eq!(s.replicas, vec![4, 5, 3, 1, 2]);
        assert_eq!(
            (s.adding.clone(), s.removing.clone()),
            (vec![4, 5], vec![1, 2])
        );
        assert_eq!((s.leader, s.isr.clone()), (1, vec![1, 2, 3]));
        commit(&mut img, s);
        assert!(
            completions(&img).is_empty(),
            "target replicas not in sync yet"
        );
        join_isr(&mut img, 4);
        assert!(completions(&img).is_empty());
        join_isr(&mut img, 5);
        let cmds = completions(&img);
        assert_eq!(cmds.len(), 1);
        img.apply(&cmds[0]);
        let done = p(&img);
        assert_eq!(done.replicas, vec![4, 5, 3]);
        assert_eq!(done.isr, vec![4, 5, 3]);
        assert_eq!(done.leader, 4, "leadership leaves the removed leader");
        assert_eq!(done.leader_epoch, 1);
        assert!(!done.reassigning());
        assert_eq!(ongoing(&img).count(), 0);
    }

    #[test]
    fn shrinking_the_replication_factor_completes_at_once() {
        let img = image(&[1, 2, 3], vec![1, 2, 3]);
        let s = start(&img, &p(&img), &[2, 3]).unwrap();
        assert_eq!((s.replicas, s.isr, s.leader), (vec![2, 3], vec![2, 3], 2));
        assert!(s.adding.is_empty() && s.removing.is_empty());
    }

    #[test]
    fn growing_the_replication_factor_keeps_the_leader() {
        let mut img = image(&[1, 2, 3], vec![1]);
        reassign_to(&mut img, &[1, 2, 3]);
        assert_eq!((p(&img).adding, p(&img).removing), (vec![2, 3], vec![]));
        join_isr(&mut img, 2);
        join_isr(&mut img, 3);
        img.apply(&completions(&img)[0]);
        assert_eq!(
            (p(&img).replicas, p(&img).leader, p(&img).leader_epoch),
            (vec![1, 2, 3], 1, 0)
        );
    }

    #[test]
    fn a_removed_replica_out_of_sync_does_not_hold_completion() {
        let mut img = image(&[1, 2, 3, 4], vec![1, 2, 3]);
        let mut s = p(&img);
        s.isr = vec![1, 2];
        commit(&mut img, s);
        reassign_to(&mut img, &[1, 2, 4]);
        join_isr(&mut img, 4);
        img.apply(&completions(&img)[0]);
        assert_eq!(
            (p(&img).replicas, p(&img).isr),
            (vec![1, 2, 4], vec![1, 2, 4])
        );
    }

    #[test]
    fn cancel_returns_to_the_original_replicas() {
        let mut img = image(&[1, 2, 3, 4], vec![1, 2, 3]);
        reassign_to(&mut img, &[4, 2, 3]);
        join_isr(&mut img, 4);
        // Still reassigning: 4 joined but the completion has not been committed.
        let back = cancel(&img, &p(&img)).unwrap();
        // The original order comes back (Kafka keeps the reassigning list's order, which
        // would make 2 the preferred leader).
        assert_eq!((back.replicas.clone(), back.leader), (vec![1, 2, 3], 1));
        assert_eq!(back.isr, vec![1, 2, 3]);
        assert!(!back.reassigning());
        let idle = image(&[1, 2, 3], vec![1, 2, 3]);
        assert_eq!(
            cancel(&idle, &p(&idle)).unwrap_err().0,
            E::NoReassignmentInProgress.code()
        );
    }

    #[test]
    fn a_new_target_replaces_the_reassignment_in_progress() {
        let mut img = image(&[1, 2, 3, 4, 5], vec![1, 2, 3]);
        reassign_to(&mut img, &[1, 2, 4]);
        let s = start(&img, &p(&img), &[1, 2, 5]).unwrap();
        assert_eq!(
            s.replicas,
            vec![1, 2, 5, 3],
            "4 was never an original replica"
        );
        assert_eq!((s.adding, s.removing), (vec![5], vec![3]));
    }

    #[test]
    fn bad_targets_are_refused_with_kafkas_messages() {
        let img = image(&[1, 2, 3], vec![1, 2, 3]);
        let code = E::InvalidReplicaAssignment.code();
        let err = |t: &[BrokerId]| start(&img, &p(&img), t).unwrap_err();
        assert_eq!(err(&[]).0, code);
        assert!(err(&[1, 1]).1.contains("broker 1 more than once"));
        assert!(err(&[1, 9])
            .1
            .contains("broker 9, but no such broker is registered"));
    }

    #[test]
    fn a_fenced_target_replica_leads_nothing() {
        let mut img = image(&[1, 2, 3], vec![1, 2]);
        img.apply(&Command::SetBrokerState {
            id: 3,
            state: BrokerState::Fenced,
        });
        reassign_to(&mut img, &[3, 2]);
        let s = p(&img);
        assert_eq!((s.leader, s.adding.clone()), (1, vec![3]));
        assert!(completions(&img).is_empty());
    }
}
