//! The built-in autoscaler (`spec.autoscaling`): how many brokers the measured load asks
//! for, and whether to change the Cluster's size now. The decision is pure; the load
//! comes from the brokers' own Prometheus counters, sampled at each reconcile.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::plan::{Step, View};
use super::status::describe;
use crate::crd::AutoscalingSpec;

/// The policy in numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Fewest brokers.
    pub min: i32,
    /// Most brokers.
    pub max: i32,
    /// Produce bytes per second per broker, if targeted.
    pub bytes_in: Option<f64>,
    /// CPU millicores per broker, if targeted.
    pub cpu_millis: Option<f64>,
    /// How long the load must ask for more brokers before a scale-out.
    pub up_window: Duration,
    /// How long the load must ask for fewer brokers before a scale-in.
    pub down_window: Duration,
    /// Quiet time after any scale.
    pub cooldown: Duration,
}

impl From<&AutoscalingSpec> for Policy {
    fn from(s: &AutoscalingSpec) -> Policy {
        let secs = |s: i64| Duration::from_secs(s.max(0) as u64);
        Policy {
            min: s.min_replicas,
            max: s.max_replicas,
            bytes_in: s.target_bytes_in_per_broker.map(|b| b as f64),
            cpu_millis: s.target_cpu_millis_per_broker.map(|m| m as f64),
            up_window: secs(s.scale_up_window_seconds),
            down_window: secs(s.scale_down_window_seconds),
            cooldown: secs(s.cooldown_seconds),
        }
    }
}

/// Cluster-wide load.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Produced bytes per second, all brokers.
    pub bytes_in: f64,
    /// CPU millicores, all brokers.
    pub cpu_millis: f64,
}

/// Brokers the load asks for: for each target, the total over the target, rounded up;
/// the largest of them, within `[min, max]`.
pub fn recommend(p: &Policy, load: Load) -> i32 {
    let need = |total: f64, target: Option<f64>| match target {
        Some(t) if t > 0.0 => (total / t).ceil().min(f64::from(i32::MAX)) as i32,
        _ => 0,
    };
    need(load.bytes_in, p.bytes_in)
        .max(need(load.cpu_millis, p.cpu_millis))
        .clamp(p.min, p.max.max(p.min))
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep the size (why).
    Hold(String),
    /// Change to this many brokers (why).
    Scale(i32, String),
}

/// Decides from the recommendations of the recent past (`history`: age and brokers,
/// any order), the time since the last scale, and what keeps the cluster busy (a roll,
/// a drain, partitions moving or catching up: never scaled during those). A change must
/// be asked for by every recommendation over a whole window: out by the least of them,
/// in by the largest, so a short burst or lull changes nothing.
pub fn decide(
    p: &Policy,
    current: i32,
    history: &[(Duration, i32)],
    since_scale: Option<Duration>,
    busy: Option<&str>,
) -> Decision {
    if let Some(why) = busy {
        return Decision::Hold(format!("not while {why}"));
    }
    if since_scale.is_some_and(|t| t < p.cooldown) {
        return Decision::Hold("cooling down after the last scale".into());
    }
    let bounded = current.clamp(p.min, p.max.max(p.min));
    if bounded != current {
        return Decision::Scale(
            bounded,
            format!("{current} brokers is outside {}..={}", p.min, p.max),
        );
    }
    // The recommendations of a window, once the history covers all of it.
    let window = |w: Duration| -> Option<Vec<i32>> {
        history.iter().any(|&(age, _)| age >= w).then(|| {
            history
                .iter()
                .filter(|&&(age, _)| age <= w)
                .map(|&(_, n)| n)
                .collect()
        })
    };
    if let Some(recs) = window(p.up_window).filter(|r| !r.is_empty()) {
        if recs.iter().all(|&n| n > current) {
            let to = recs.iter().copied().min().unwrap_or(current);
            return Decision::Scale(
                to,
                format!(
                    "load asked for at least {to} brokers for {} s",
                    p.up_window.as_secs()
                ),
            );
        }
    }
    if let Some(recs) = window(p.down_window).filter(|r| !r.is_empty()) {
        if recs.iter().all(|&n| n < current) {
            let to = recs.iter().copied().max().unwrap_or(current);
            return Decision::Scale(
                to,
                format!(
                    "load asked for at most {to} brokers for {} s",
                    p.down_window.as_secs()
                ),
            );
        }
    }
    Decision::Hold("load within target".into())
}

/// What keeps the cluster from being scaled now, if anything: any step of a scale or a
/// roll, partitions moving or catching up, or no broker answering.
pub fn busy(step: &Step, view: Option<&View>) -> Option<String> {
    match (step, view) {
        (Step::Steady, None) => Some("no broker answers".into()),
        (Step::Steady, Some(v)) if v.reassignments > 0 => {
            Some(format!("{} partitions move", v.reassignments))
        }
        (Step::Steady, Some(v)) if v.under_replicated > 0 => {
            Some(format!("{} partitions catch up", v.under_replicated))
        }
        (Step::Steady, Some(_)) => None,
        (other, _) => Some(describe(other)),
    }
}

/// Counter totals read from one broker's `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// `riffle_topic_bytes_in_total`, all topics.
    pub bytes_in: f64,
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
}

/// Reads the counters out of a Prometheus text exposition.
pub fn parse_counters(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        match name {
            "riffle_topic_bytes_in_total" => c.bytes_in += value,
            "process_cpu_seconds_total" => c.cpu_seconds += value,
            _ => {}
        }
    }
    c
}

/// Load between two samples of per-broker counters (broker id → counters): the sum of
/// each broker's increase, so brokers that come, go or restart (counters back to zero)
/// between the samples do not distort it.
pub fn load_between(
    before: &BTreeMap<i32, Counters>,
    after: &BTreeMap<i32, Counters>,
    elapsed: Duration,
) -> Option<Load> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let mut load = Load::default();
    for (id, a) in after {
        let Some(b) = before.get(id) else { continue };
        load.bytes_in += (a.bytes_in - b.bytes_in).max(0.0) / secs;
        load.cpu_millis += (a.cpu_seconds - b.cpu_seconds).max(0.0) * 1000.0 / secs;
    }
    Some(load)
}

/// The samples and recommendations the operator keeps per Cluster between reconciles
/// (in memory: after an operator restart the windows start over, which only delays).
#[derive(Default)]
pub struct Tracker {
    clusters: Mutex<HashMap<String, Samples>>,
}

#[derive(Default)]
struct Samples {
    last: Option<(Instant, BTreeMap<i32, Counters>)>,
    history: VecDeque<(Instant, i32)>,
}

impl Tracker {
    /// Whether `key` is due for a new sample: none yet, or the last one `interval` old.
    /// (Reconciles come more often — the status the autoscaler writes triggers one —
    /// and must neither scrape the brokers nor shorten the sampling interval.)
    pub fn due(&self, key: &str, at: Instant, interval: Duration) -> bool {
        let all = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        all.get(key)
            .and_then(|s| s.last.as_ref())
            .is_none_or(|(then, _)| at.duration_since(*then) >= interval)
    }

    /// Records a sample of `key`'s brokers taken at `at`; returns the load since the
    /// previous sample, if there was one.
    pub fn sample(
        &self,
        key: &str,
        at: Instant,
        counters: BTreeMap<i32, Counters>,
    ) -> Option<Load> {
        let mut all = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.entry(key.to_string()).or_default();
        let load = s
            .last
            .as_ref()
            .and_then(|(then, before)| load_between(before, &counters, at.duration_since(*then)));
        s.last = Some((at, counters));
        load
    }

    /// Adds a recommendation; returns the history (ages at `at`) within `keep`.
    pub fn recommend(
        &self,
        key: &str,
        at: Instant,
        brokers: i32,
        keep: Duration,
    ) -> Vec<(Duration, i32)> {
        let mut all = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.entry(key.to_string()).or_default();
        s.history.push_front((at, brokers));
        while s
            .history
            .back()
            .is_some_and(|(t, _)| at.duration_since(*t) > keep)
        {
            s.history.pop_back();
        }
        s.history
            .iter()
            .map(|(t, n)| (at.duration_since(*t), *n))
            .collect()
    }

    /// Forgets the recommendations (after a scale they were relative to the old size).
    pub fn clear_history(&self, key: &str) {
        let mut all = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = all.get_mut(key) {
            s.history.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 3,
            max: 6,
            bytes_in: Some(10e6),
            cpu_millis: Some(500.0),
            up_window: Duration::from_secs(60),
            down_window: Duration::from_secs(300),
            cooldown: Duration::from_secs(120),
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn recommendation_is_the_largest_need_within_bounds() {
        let p = policy();
        let load = |bytes_in, cpu_millis| Load {
            bytes_in,
            cpu_millis,
        };
        assert_eq!(recommend(&p, load(0.0, 0.0)), 3, "never below min");
        assert_eq!(recommend(&p, load(41e6, 100.0)), 5, "41 MB/s over 10 MB/s");
        assert_eq!(recommend(&p, load(1e6, 2100.0)), 5, "2.1 cores over 0.5");
        assert_eq!(recommend(&p, load(1e9, 0.0)), 6, "never above max");
        let bytes_only = Policy {
            cpu_millis: None,
            ..policy()
        };
        assert_eq!(recommend(&bytes_only, load(35e6, 1e9)), 4);
    }

    #[test]
    fn scales_out_only_after_a_whole_window_of_higher_recommendations() {
        let p = policy();
        // Not a whole window observed yet.
        let young = [(s(0), 5), (s(30), 5)];
        assert_eq!(
            decide(&p, 3, &young, None, None),
            Decision::Hold("load within target".into())
        );
        // A whole window, all higher: out by the least of them.
        let sustained = [(s(0), 5), (s(30), 4), (s(60), 5), (s(90), 3)];
        assert!(matches!(
            decide(&p, 3, &sustained, None, None),
            Decision::Scale(4, _)
        ));
        // One dip within the window: hold.
        let dip = [(s(0), 5), (s(30), 3), (s(60), 5)];
        assert!(matches!(decide(&p, 3, &dip, None, None), Decision::Hold(_)));
    }

    #[test]
    fn scales_in_after_the_longer_window_by_the_largest_recommendation() {
        let p = policy();
        let lull: Vec<_> = (0..=10)
            .map(|i| (s(i * 30), if i % 2 == 0 { 3 } else { 4 }))
            .collect();
        assert!(matches!(
            decide(&p, 5, &lull, None, None),
            Decision::Scale(4, _)
        ));
        // Only the short window quiet: hold.
        let short: Vec<_> = (0..=10)
            .map(|i| (s(i * 30), if i < 4 { 3 } else { 5 }))
            .collect();
        assert!(matches!(
            decide(&p, 5, &short, None, None),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn never_while_busy_or_cooling_down_and_bounds_first() {
        let p = policy();
        let sustained = [(s(0), 6), (s(60), 6)];
        assert_eq!(
            decide(&p, 3, &sustained, None, Some("restarting broker 2")),
            Decision::Hold("not while restarting broker 2".into())
        );
        assert!(matches!(
            decide(&p, 3, &sustained, Some(s(60)), None),
            Decision::Hold(why) if why.contains("cooling")
        ));
        assert!(matches!(
            decide(&p, 3, &sustained, Some(s(120)), None),
            Decision::Scale(6, _)
        ));
        assert!(matches!(
            decide(&p, 8, &[], None, None),
            Decision::Scale(6, _)
        ));
        assert!(matches!(
            decide(&p, 1, &[], None, None),
            Decision::Scale(3, _)
        ));
    }

    #[test]
    fn busy_during_any_operation_or_movement() {
        let quiet = View::default();
        assert_eq!(busy(&Step::Steady, Some(&quiet)), None);
        assert!(busy(&Step::Steady, None).is_some());
        for step in [
            Step::Restart(1),
            Step::EnterMaintenance(1),
            Step::Decommission(3),
            Step::Resize(4),
            Step::ElectPreferredLeaders,
            Step::Wait("draining broker 3".into()),
        ] {
            assert!(busy(&step, Some(&quiet)).is_some(), "{step:?}");
        }
        let moving = View {
            reassignments: 2,
            ..View::default()
        };
        assert_eq!(
            busy(&Step::Steady, Some(&moving)).as_deref(),
            Some("2 partitions move")
        );
        let behind = View {
            under_replicated: 1,
            ..View::default()
        };
        assert!(busy(&Step::Steady, Some(&behind)).is_some());
    }

    #[test]
    fn counters_are_summed_from_the_exposition() {
        let text = "# HELP riffle_topic_bytes_in_total Record batch bytes produced\n\
                    # TYPE riffle_topic_bytes_in_total counter\n\
                    riffle_topic_bytes_in_total{topic=\"a\"} 1000\n\
                    riffle_topic_bytes_in_total{topic=\"b b\"} 500\n\
                    riffle_topic_bytes_out_total{topic=\"a\"} 7\n\
                    process_cpu_seconds_total 2.5\n";
        assert_eq!(
            parse_counters(text),
            Counters {
                bytes_in: 1500.0,
                cpu_seconds: 2.5
            }
        );
        assert_eq!(parse_counters("garbage {\n"), Counters::default());
    }

    #[test]
    fn load_sums_each_brokers_increase() {
        let c = |bytes_in, cpu_seconds| Counters {
            bytes_in,
            cpu_seconds,
        };
        let before = BTreeMap::from([(0, c(1000.0, 1.0)), (1, c(5000.0, 2.0)), (2, c(0.0, 0.0))]);
        // Broker 1 restarted (counters reset), broker 2 left, broker 3 is new.
        let after = BTreeMap::from([(0, c(3000.0, 1.5)), (1, c(100.0, 0.1)), (3, c(900.0, 9.0))]);
        let load = load_between(&before, &after, s(2)).expect("load");
        assert_eq!(load.bytes_in, 1000.0);
        assert_eq!(load.cpu_millis, 250.0);
        assert_eq!(load_between(&before, &after, Duration::ZERO), None);
    }

    #[test]
    fn tracker_keeps_the_windows_history() {
        let t = Tracker::default();
        let t0 = Instant::now();
        assert!(t.due("ns/a", t0, s(2)));
        let c = BTreeMap::from([(
            0,
            Counters {
                bytes_in: 0.0,
                cpu_seconds: 0.0,
            },
        )]);
        assert_eq!(t.sample("ns/a", t0, c), None);
        assert!(!t.due("ns/a", t0 + s(1), s(2)));
        assert!(t.due("ns/a", t0 + s(2), s(2)));
        let c = BTreeMap::from([(
            0,
            Counters {
                bytes_in: 4000.0,
                cpu_seconds: 1.0,
            },
        )]);
        let load = t.sample("ns/a", t0 + s(2), c).expect("second sample");
        assert_eq!(load.bytes_in, 2000.0);
        t.recommend("ns/a", t0, 3, s(10));
        let h = t.recommend("ns/a", t0 + s(11), 4, s(10));
        assert_eq!(h, vec![(s(0), 4)], "older than kept");
        t.clear_history("ns/a");
        assert_eq!(t.recommend("ns/a", t0 + s(12), 5, s(10)), vec![(s(0), 5)]);
    }
}
