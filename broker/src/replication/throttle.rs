//! Replication throttles (Kafka's `leader.replication.throttled.rate` and
//! `follower.replication.throttled.rate`): bytes per second for replicas that are not in
//! sync and that a topic's `*.replication.throttled.replicas` lists — or, on the follower
//! side, that a reassignment adds (decommissioning and balancing moves too) — so that
//! moving a replica does not starve clients and in-sync replication.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket that may go into debt: a fetch larger than the balance is let through
/// and the following ones wait until the debt is paid, so the average holds.
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<(f64, Instant)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            state: Mutex::new((0.0, Instant::now())),
        }
    }
}

/// Longest burst a rate allows: one second of traffic.
const BURST: Duration = Duration::from_secs(1);

impl Throttle {
    /// Time to wait before throttled traffic may flow at `rate` bytes/s (zero: now).
    pub fn delay(&self, rate: i64) -> Duration {
        if rate <= 0 || rate == i64::MAX {
            return Duration::ZERO;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let rate = rate as f64;
        st.0 =
            (st.0 + now.duration_since(st.1).as_secs_f64() * rate).min(rate * BURST.as_secs_f64());
        st.1 = now;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.0 / rate)
        }
    }

    /// Bytes throttled traffic may take now at `rate` bytes/s (`None`: unlimited). At
    /// least one byte, so a fetch always returns a whole batch and makes progress.
    pub fn allowance(&self, rate: i64) -> Option<u32> {
        if rate <= 0 || rate == i64::MAX {
            return None;
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = st.1.elapsed().as_secs_f64() * rate as f64;
        let balance = (st.0 + elapsed).min(rate as f64 * BURST.as_secs_f64());
        Some(balance.clamp(1.0, u32::MAX as f64) as u32)
    }

    /// Records `bytes` of throttled traffic.
    pub fn spend(&self, bytes: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 -= bytes as f64;
    }
}

/// Whether a topic's `*.replication.throttled.replicas` value lists `partition` on `broker`.
pub fn listed(value: Option<&str>, partition: i32, broker: i32) -> bool {
    let Some(v) = value else { return false };
    let v = v.trim();
    v == "*"
        || v.split(',').any(|r| {
            r.trim().split_once(':').is_some_and(|(p, b)| {
                p.trim().parse() == Ok(partition) && b.trim().parse() == Ok(broker)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_makes_later_traffic_wait_in_proportion() {
        let t = Throttle::default();
        assert_eq!(t.delay(1000), Duration::ZERO);
        t.spend(2000);
        let d = t.delay(1000);
        assert!(
            d > Duration::from_millis(1900) && d <= Duration::from_secs(2),
            "{d:?}"
        );
        assert_eq!(t.delay(i64::MAX), Duration::ZERO, "unlimited");
        assert_eq!(t.allowance(i64::MAX), None);
        assert_eq!(t.allowance(1000), Some(1), "in debt: one batch at most");
    }

    #[test]
    fn replica_lists_match_partition_and_broker() {
        assert!(listed(Some("*"), 3, 7));
        assert!(listed(Some("0:1, 3:7"), 3, 7));
        assert!(!listed(Some("0:1,3:8"), 3, 7));
        assert!(!listed(None, 0, 1));
        assert!(!listed(Some(""), 0, 1));
    }
}
