//! Follower side: one fetch loop per leader broker, covering every partition this
//! broker follows there. Each round sends the local log end and last epoch of each
//! partition; answers either carry batches to append (as stored), or tell the follower
//! to truncate a diverging tail or restart at the leader's log start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::cluster::image::{BrokerId, Image};
use crate::cluster::ControlRequest;
use crate::config::FsyncPolicy;
use crate::handlers::Broker;
use crate::log::{LogError, Partition};
use crate::rpc::{FetchPartition, FetchRequest, FetchedPartition};

use super::throttle;

/// Pause before retrying a failed fetch (also woken by a metadata change).
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// Reports of an unreachable leader go to the controller at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// A partition to follow.
#[derive(Clone)]
struct Target {
    topic_id: Uuid,
    part: Arc<Partition>,
    leader_epoch: i32,
    /// Out of sync, and added by a reassignment or listed in the topic's
    /// `follower.replication.throttled.replicas`.
    throttled: bool,
}

type Targets = Arc<Vec<Target>>;

/// Partitions this broker follows, grouped by leader (with the leader's RPC address).
fn followed(broker: &Broker, image: &Image) -> HashMap<BrokerId, (String, Vec<Target>)> {
    let me = broker.config.node_id;
    let mut out: HashMap<BrokerId, (String, Vec<Target>)> = HashMap::new();
    for (name, t) in &image.topics {
        let Some(local) = broker.catalog.get(name) else {
            continue;
        };
        for (i, p) in t.partitions.iter().enumerate() {
            if p.leader < 0 || p.leader == me || !p.replicas.contains(&me) {
                continue;
            }
            let (Some(part), Some(leader)) =
                (local.partition(i as i32), image.brokers.get(&p.leader))
            else {
                continue;
            };
            out.entry(p.leader)
                .or_insert_with(|| (leader.rpc.clone(), Vec::new()))
                .1
                .push(Target {
                    topic_id: t.id,
                    part,
                    leader_epoch: p.leader_epoch,
                    // A replica a reassignment adds is throttled without being listed.
                    throttled: !p.isr.contains(&me)
                        && (p.adding.contains(&me)
                            || throttle::listed(
                                t.configs
                                    .get("follower.replication.throttled.replicas")
                                    .map(String::as_str),
                                i as i32,
                                me,
                            )),
                });
        }
    }
    out
}

/// Keeps one fetch loop per leader in line with the metadata image until `stop`.
pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut images = broker.cluster.image.clone();
    let mut loops: HashMap<BrokerId, (String, watch::Sender<Targets>, JoinHandle<()>)> =
        HashMap::new();
    loop {
        let image = images.borrow_and_update().clone();
        let mut wanted = followed(&broker, &image);
        loops.retain(|leader, (addr, tx, task)| match wanted.remove(leader) {
            Some((a, targets)) if a == *addr => {
                tx.send_replace(Arc::new(targets));
                true
            }
            Some((a, targets)) => {
                // The leader moved to another address: start over.
                task.abort();
                let (ntx, nrx) = watch::channel(Arc::new(targets));
                *task = tokio::spawn(fetch_loop(broker.clone(), *leader, a.clone(), nrx));
                *addr = a;
                *tx = ntx;
                true
            }
            None => {
                task.abort();
                false
            }
        });
        for (leader, (addr, targets)) in wanted {
            let (tx, rx) = watch::channel(Arc::new(targets));
            let task = tokio::spawn(fetch_loop(broker.clone(), leader, addr.clone(), rx));
            loops.insert(leader, (addr, tx, task));
        }
        tokio::select! {
            r = images.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    for (_, (_, _, task)) in loops {
        task.abort();
    }
}

async fn fetch_loop(
    broker: Arc<Broker>,
    leader: BrokerId,
    addr: String,
    mut targets: watch::Receiver<Targets>,
) {
    let cfg = &broker.config;
    let sync = cfg.fsync_policy != FsyncPolicy::Never;
    // Short: a leader that has not applied its leadership yet answers NOT_LEADER for a
    // few milliseconds, and every millisecond here delays acks=all.
    let backoff = RETRY_BACKOFF;
    tracing::debug!(leader, addr, "starting follower fetch loop");
    let mut last_report = std::time::Instant::now() - REPORT_EVERY;
    loop {
        let current = targets.borrow_and_update().clone();
        if current.is_empty() {
            if targets.changed().await.is_err() {
                return;
            }
            continue;
        }
        let client = match broker.cluster.peers.replication(&addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(leader, addr, error = %e, "bad leader address");
                if targets.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        // Throttled replicas sit out rounds while the follower throttle is in debt, and
        // ask for no more than it allows otherwise.
        let (wait, allowance) = if current.iter().any(|t| t.throttled) {
            let rate = broker
                .catalog
                .broker_configs()
                .get_i64("follower.replication.throttled.rate", i64::MAX);
            let th = &broker.follower_throttle;
            (th.delay(rate), th.allowance(rate))
        } else {
            (Duration::ZERO, None)
        };
        let fetched: Vec<&Target> = current
            .iter()
            .filter(|t| wait.is_zero() || !t.throttled)
            .collect();
        if fetched.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = targets.changed() => if r.is_err() { return },
            }
            continue;
        }
        let req = FetchRequest {
            cluster_id: broker.cluster.cluster_id.get(),
            replica_id: cfg.node_id,
            max_wait_ms: if wait.is_zero() {
                cfg.replica_fetch_wait_max_ms as u32
            } else {
                // Come back for the throttled replicas once the debt is paid.
                (wait.as_millis() as u32).clamp(1, cfg.replica_fetch_wait_max_ms as u32)
            },
            max_bytes: cfg.replica_fetch_max_bytes,
            partitions: fetched
                .iter()
                .map(|t| {
                    let (fetch_offset, last_fetched_epoch) = t.part.fetch_position();
                    FetchPartition {
                        topic_id: t.topic_id.as_bytes().to_vec().into(),
                        partition: t.part.index,
                        leader_epoch: t.leader_epoch,
                        fetch_offset,
                        last_fetched_epoch,
                        max_bytes: allowance.filter(|_| t.throttled).unwrap_or(0),
                    }
                })
                .collect(),
        };
        let mut client = client;
        let reply = tokio::select! {
            r = client.fetch(req) => r,
            r = targets.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        broker.lost_leaders.observe(leader, &reply);
        let resp = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::debug!(leader, addr, %status, "follower fetch failed");
                if status.code() == tonic::Code::Unavailable && last_report.elapsed() > REPORT_EVERY
                {
                    // The leader may be dead: let the controller check now rather than
                    // after a whole session of missed heartbeats.
                    last_report = std::time::Instant::now();
                    let b = broker.clone();
                    tokio::spawn(async move {
                        let req = ControlRequest::ReportUnreachable { broker: leader };
                        b.cluster.control(req, Duration::from_secs(2)).await;
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    r = targets.changed() => if r.is_err() { return },
                }
                continue;
            }
        };
        // Any failed step waits a backoff before the next fetch: a refused answer would
        // otherwise come back at once, again and again.
        let mut failed = false;
        for fp in resp.partitions {
            let Some(t) = current.iter().find(|t| {
                t.part.index == fp.partition && t.topic_id.as_bytes()[..] == fp.topic_id[..]
            }) else {
                continue;
            };
            if t.throttled {
                broker.follower_throttle.spend(fp.records.len() as u64);
            }
            if let Err(e) = apply(&broker, &t.part, fp, sync).await {
                failed = true;
                tracing::warn!(topic = %t.part.topic, partition = t.part.index, leader, error = %e, "replication step failed");
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                r = targets.changed() => if r.is_err() { return },
            }
        }
    }
}

/// Applies one partition's fetch answer to the local replica.
async fn apply(
    broker: &Broker,
    part: &Partition,
    fp: FetchedPartition,
    sync: bool,
) -> Result<(), LogError> {
    if fp.error_code != 0 {
        // Not (or no longer) the leader at our epoch: wait for the metadata to catch up.
        return Err(LogError::NotLeader);
    }
    if fp.reset {
        tracing::info!(topic = %part.topic, partition = part.index, log_start = fp.log_start_offset, "restarting replica at the leader's log start");
        return part.reset_to(fp.log_start_offset).await;
    }
    if fp.diverging {
        // Keep what both logs share: the smaller of the leader's end of that epoch
        // and ours.
        let (_, ours) = part.end_offset_for_epoch(fp.diverging_epoch);
        let to = if fp.diverging_epoch < 0 || ours < 0 {
            fp.diverging_end_offset.max(0)
        } else {
            fp.diverging_end_offset.min(ours)
        };
        part.truncate_to(to.max(part.offsets().log_start)).await?;
        return Ok(());
    }
    if !fp.records.is_empty() {
        let bytes = fp.records.len() as u64;
        part.append_replicated(fp.records, sync).await?;
        broker.metrics.replication_bytes_in.inc_by(bytes);
    }
    part.set_follower_high_watermark(fp.high_watermark);
    let local_start = part.offsets().log_start;
    if fp.log_start_offset > local_start {
        let target = fp.log_start_offset.min(part.offsets().high_watermark);
        if target > local_start {
            part.delete_records(target).await?;
        }
    }
    Ok(())
}
