//! What a broker's Metadata answers do right after a leader dies, so that clients move
//! to the new leader at once instead of on their next periodic check (librdkafka's is a
//! second away):
//! - [`LostLeaders`]: until the controller has fenced a leader this broker lost its
//!   replication connection to (milliseconds after a kill; a Raft election when it was
//!   also the controller), its partitions are answered with no leader, and clients
//!   ask again soon (librdkafka's fast leader query: 100 ms, backing off);
//! - [`RecentlyFenced`]: a fenced broker stays in the broker list for a moment. When a
//!   leader change and the old leader's removal came in the same answer, librdkafka
//!   closed its handle on the old leader while moving the partition away from it, lost
//!   the new leader, and waited a second to ask again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::image::BrokerId;

/// When each leader's connection was first lost, since it was last reached.
#[derive(Default)]
pub struct LostLeaders(Mutex<HashMap<BrokerId, Instant>>);

impl LostLeaders {
    /// Notes the outcome of a fetch from (or a probe of) `leader`: an answer clears its
    /// mark; a failure at the transport (refused, reset) starts its clock unless it is
    /// running; other errors (a timeout, a refusal by a live leader) change nothing.
    pub fn observe<T>(&self, leader: BrokerId, reply: &Result<T, tonic::Status>) {
        match reply {
            Ok(_) => {
                self.lock().remove(&leader);
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                self.lock().entry(leader).or_insert_with(Instant::now);
            }
            Err(_) => {}
        }
    }

    /// Whether `leader` was lost less than `within` ago and not reached since. Bounded, so
    /// that a link broken between two brokers (with the leader still serving clients)
    /// hides it from clients for no longer than `within`.
    pub fn recently_lost(&self, leader: BrokerId, within: Duration) -> bool {
        self.lock()
            .get(&leader)
            .is_some_and(|at| at.elapsed() < within)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BrokerId, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Fenced brokers (by id and incarnation), and when this broker first answered Metadata
/// since they were fenced.
#[derive(Default)]
pub struct RecentlyFenced(Mutex<HashMap<(BrokerId, u64), Instant>>);

impl RecentlyFenced {
    /// How long a fenced broker stays listed: long enough for a client to follow the
    /// leader change, short enough that a paused (not dead) broker, whose connections
    /// hang rather than fail, is not offered to clients for long.
    pub const LISTED_FOR: Duration = Duration::from_secs(1);

    /// Of the brokers fenced now (id, incarnation), the ids to keep listing; forgets the
    /// others. A restarted broker is a new incarnation, so its next fencing counts anew.
    pub fn still_listed(&self, fenced: &[(BrokerId, u64)]) -> Vec<BrokerId> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|b, _| fenced.contains(b));
        fenced
            .iter()
            .filter(|b| seen.entry(**b).or_insert_with(Instant::now).elapsed() < Self::LISTED_FOR)
            .map(|b| b.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_leader_is_hidden_until_reached_or_for_at_most_the_window() {
        let l = LostLeaders::default();
        let window = Duration::from_millis(50);
        let lost = || Err::<(), _>(tonic::Status::unavailable("connection refused"));
        assert!(!l.recently_lost(1, window));
        l.observe(1, &lost());
        assert!(l.recently_lost(1, window));
        assert!(!l.recently_lost(2, window));
        l.observe(1, &Ok(()));
        assert!(!l.recently_lost(1, window));
        // A live leader that refuses or is slow is not lost.
        l.observe(1, &Err::<(), _>(tonic::Status::deadline_exceeded("slow")));
        assert!(!l.recently_lost(1, window));

        l.observe(1, &lost());
        std::thread::sleep(window);
        // Failing again does not restart the clock: a link that stays broken hides the
        // leader once, for one window.
        l.observe(1, &lost());
        assert!(!l.recently_lost(1, window));
    }

    #[test]
    fn a_fenced_broker_stays_listed_for_a_moment_from_its_first_answer() {
        let f = RecentlyFenced::default();
        assert_eq!(f.still_listed(&[(2, 1), (3, 1)]), vec![2, 3]);
        assert_eq!(f.still_listed(&[(2, 1), (3, 1)]), vec![2, 3]);
        // Broker 3 came back: fenced again later, it gets a new moment.
        assert_eq!(f.still_listed(&[(2, 1)]), vec![2]);
        std::thread::sleep(RecentlyFenced::LISTED_FOR);
        assert_eq!(f.still_listed(&[(2, 1), (3, 1)]), vec![3]);
        // So does a broker restarted and fenced before anyone asked in between.
        assert_eq!(f.still_listed(&[(2, 2), (3, 1)]), vec![2, 3]);
    }
}
