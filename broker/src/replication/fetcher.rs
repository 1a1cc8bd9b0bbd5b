//! Follower side: one fetch stream per leader broker, covering every partition this
//! broker follows there. Each fetch sends the local log end and last epoch of each
//! partition; answers either carry batches to append (as stored), or tell the follower
//! to truncate a diverging tail or restart at the leader's log start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::cluster::image::{BrokerId, Image};
use crate::cluster::ControlRequest;
use crate::config::FsyncPolicy;
use crate::handlers::Broker;
use crate::log::{LogError, Partition};
use crate::rpc::{FetchPartition, FetchRequest, FetchResponse, FetchedPartition};

use super::throttle;

/// Pause before retrying a failed fetch (also woken by a metadata change). Short: a
/// leader that has not applied its leadership yet answers NOT_LEADER for a few
/// milliseconds, and every millisecond here delays acks=all.
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

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        Arc::ptr_eq(&self.part, &other.part)
            && self.topic_id == other.topic_id
            && self.leader_epoch == other.leader_epoch
            && self.throttled == other.throttled
    }
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
                // Every change anywhere in the cluster lands here: restart the stream
                // only for one that changes what is fetched.
                tx.send_if_modified(|t| {
                    let changed = **t != targets;
                    if changed {
                        *t = Arc::new(targets);
                    }
                    changed
                });
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

/// Opens a `Replicate` stream to `leader` and keeps it busy until the targets change or
/// the stream breaks, then starts over. Each answer's batches are queued for writing.
/// While the leader has a backlog (an answer at least half of `replica_fetch_max_bytes`:
/// catching up after a restart or a reassignment) the next fetch goes out at once, so
/// the write and its sync overlap the next transfer, and a progress message tells the
/// leader when they are durable. Otherwise the next fetch waits for the write and
/// carries the position itself: pipelining small answers would only add messages per
/// byte, which costs throughput where the CPU is the bound (see bench/README.md).
async fn fetch_loop(
    broker: Arc<Broker>,
    leader: BrokerId,
    addr: String,
    mut targets: watch::Receiver<Targets>,
) {
    let mut queued = Queued::new();
    let max_bytes = u64::from(broker.config.replica_fetch_max_bytes);
    // Catching up, appends may wait in the writer's queue for up to two fetches' worth.
    let max_queued = 2 * max_bytes;
    let mut backlog = false;
    let mut last_report = Instant::now() - REPORT_EVERY;
    tracing::debug!(leader, addr, "starting follower fetch loop");
    loop {
        let current = targets.borrow_and_update().clone();
        if current.is_empty() {
            if targets.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut client = match broker.cluster.peers.replication(&addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(leader, addr, error = %e, "bad leader address");
                if targets.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let (req_tx, req_rx) = mpsc::channel(4);
        let opened = tokio::select! {
            r = client.replicate(ReceiverStream::new(req_rx)) => r,
            r = targets.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        broker.lost_leaders.observe(leader, &opened);
        let mut answers = match opened {
            Ok(r) => r.into_inner(),
            Err(status) => {
                unreachable(&broker, leader, &addr, &status, &mut last_report);
                if backoff(&mut targets).await.is_err() {
                    return;
                }
                continue;
            }
        };
        // A fetch is out and not yet answered.
        let mut asked = false;
        // While every target is throttled: when to fetch again.
        let mut resume: Option<Instant> = None;
        loop {
            let room = queued.bytes == 0 || (backlog && queued.bytes < max_queued);
            if !asked && resume.is_none() && room {
                match next_fetch(&broker, &current, false) {
                    Ok(req) => {
                        if req_tx.send(req).await.is_err() {
                            break;
                        }
                        asked = true;
                    }
                    Err(wait) => resume = Some(Instant::now() + wait),
                }
            }
            tokio::select! {
                r = targets.changed() => {
                    if r.is_err() { return; }
                    break;
                }
                Some(first) = queued.rx.recv() => {
                    queued.settled(first, leader);
                    // With no fetch out, the next one carries the position.
                    if asked {
                        if let Ok(req) = next_fetch(&broker, &current, true) {
                            if req_tx.send(req).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                _ = sleep_until(resume), if resume.is_some() => resume = None,
                answer = answers.message(), if asked => {
                    broker.lost_leaders.observe(leader, &answer);
                    asked = false;
                    let taken = match answer {
                        Ok(Some(resp)) => {
                            let bytes: usize = resp.partitions.iter().map(|p| p.records.len()).sum();
                            backlog = 2 * bytes as u64 >= max_bytes;
                            take(&broker, leader, &current, resp, &mut queued).await
                        }
                        Ok(None) => false,
                        Err(status) => {
                            unreachable(&broker, leader, &addr, &status, &mut last_report);
                            false
                        }
                    };
                    // A failed step waits a backoff and starts over: a refused answer
                    // would otherwise come back at once, again and again.
                    if !taken {
                        if backoff(&mut targets).await.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Appends queued on the local log and not yet written, across streams.
struct Queued {
    tx: mpsc::UnboundedSender<(u64, Result<(), LogError>)>,
    rx: mpsc::UnboundedReceiver<(u64, Result<(), LogError>)>,
    bytes: u64,
}

impl Queued {
    fn new() -> Queued {
        let (tx, rx) = mpsc::unbounded_channel();
        Queued { tx, rx, bytes: 0 }
    }

    /// What the log calls once an append of `bytes` is written.
    fn on_written(&self, bytes: u64) -> Box<dyn FnOnce(Result<(), LogError>) + Send> {
        let tx = self.tx.clone();
        Box::new(move |r| {
            let _ = tx.send((bytes, r));
        })
    }

    /// Counts `first` and every other append already reported written.
    fn settled(&mut self, first: (u64, Result<(), LogError>), leader: BrokerId) {
        let mut next = Some(first);
        while let Some((bytes, outcome)) = next {
            self.bytes -= bytes;
            if let Err(e) = outcome {
                tracing::warn!(leader, error = %e, "replicated append failed");
            }
            next = self.rx.try_recv().ok();
        }
    }

    /// Waits until every queued append is written.
    async fn drain(&mut self, leader: BrokerId) {
        while self.bytes > 0 {
            match self.rx.recv().await {
                Some(first) => self.settled(first, leader),
                None => return,
            }
        }
    }
}

/// Applies a fetch answer to the local replicas; `false` if a step failed.
async fn take(
    broker: &Broker,
    leader: BrokerId,
    targets: &[Target],
    resp: FetchResponse,
    queued: &mut Queued,
) -> bool {
    let sync = broker.config.fsync_policy != FsyncPolicy::Never;
    let mut ok = true;
    for fp in resp.partitions {
        let Some(t) = targets
            .iter()
            .find(|t| t.part.index == fp.partition && t.topic_id.as_bytes()[..] == fp.topic_id[..])
        else {
            continue;
        };
        if t.throttled {
            broker.follower_throttle.spend(fp.records.len() as u64);
        }
        if fp.reset || fp.diverging {
            // Cutting the log waits for what is queued on it.
            queued.drain(leader).await;
        }
        let bytes = fp.records.len() as u64;
        match apply(broker, &t.part, fp, sync, queued.on_written(bytes)).await {
            Ok(true) => queued.bytes += bytes,
            Ok(false) => {}
            Err(e) => {
                ok = false;
                tracing::warn!(topic = %t.part.topic, partition = t.part.index, leader, error = %e, "replication step failed");
            }
        }
    }
    ok
}

/// Waits the retry backoff, or less if the targets change; `Err` once they never will.
async fn backoff(targets: &mut watch::Receiver<Targets>) -> Result<(), ()> {
    tokio::select! {
        _ = tokio::time::sleep(RETRY_BACKOFF) => Ok(()),
        r = targets.changed() => r.map_err(|_| ()),
    }
}

/// Sleeps until `at` (forever if `None`).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Logs a failed stream; if the leader may be dead, lets the controller check now
/// rather than after a whole session of missed heartbeats.
fn unreachable(
    broker: &Arc<Broker>,
    leader: BrokerId,
    addr: &str,
    status: &tonic::Status,
    last_report: &mut Instant,
) {
    tracing::debug!(leader, addr, %status, "follower fetch failed");
    if status.code() == tonic::Code::Unavailable && last_report.elapsed() > REPORT_EVERY {
        *last_report = Instant::now();
        let b = broker.clone();
        tokio::spawn(async move {
            let req = ControlRequest::ReportUnreachable { broker: leader };
            b.cluster.control(req, Duration::from_secs(2)).await;
        });
    }
}

/// This replica's position in each target (`progress_only`: a report, not a fetch).
fn positions(broker: &Broker, targets: &[Target], progress_only: bool) -> FetchRequest {
    FetchRequest {
        cluster_id: broker.cluster.cluster_id.get(),
        replica_id: broker.config.node_id,
        max_wait_ms: broker.config.replica_fetch_wait_max_ms as u32,
        max_bytes: broker.config.replica_fetch_max_bytes,
        progress_only,
        partitions: targets
            .iter()
            .map(|t| {
                let (fetch_offset, last_fetched_epoch) = t.part.fetch_position();
                FetchPartition {
                    topic_id: t.topic_id.as_bytes().to_vec().into(),
                    partition: t.part.index,
                    leader_epoch: t.leader_epoch,
                    fetch_offset,
                    durable_offset: Some(t.part.log_end()),
                    last_fetched_epoch,
                    max_bytes: 0,
                }
            })
            .collect(),
    }
}

/// The next fetch (`progress_only`: report), or how long to wait while every target is
/// throttled. Throttled replicas sit out rounds while the follower throttle is in debt
/// (unseen by the leader, so a move does not complete ahead of its throttle), and ask
/// for no more than it allows otherwise.
fn next_fetch(
    broker: &Broker,
    targets: &[Target],
    progress_only: bool,
) -> Result<FetchRequest, Duration> {
    let (wait, allowance) = if targets.iter().any(|t| t.throttled) {
        let rate = broker
            .catalog
            .broker_configs()
            .get_i64("follower.replication.throttled.rate", i64::MAX);
        let th = &broker.follower_throttle;
        (th.delay(rate), th.allowance(rate))
    } else {
        (Duration::ZERO, None)
    };
    let fetched: Vec<Target> = targets
        .iter()
        .filter(|t| wait.is_zero() || !t.throttled)
        .cloned()
        .collect();
    if fetched.is_empty() {
        return Err(wait);
    }
    let mut req = positions(broker, &fetched, progress_only);
    if !wait.is_zero() {
        // Come back for the throttled replicas once the debt is paid.
        req.max_wait_ms = (wait.as_millis() as u32).clamp(1, req.max_wait_ms);
    }
    if let Some(a) = allowance {
        for (p, t) in req.partitions.iter_mut().zip(&fetched) {
            if t.throttled {
                p.max_bytes = a;
            }
        }
    }
    Ok(req)
}

/// Applies one partition's fetch answer to the local replica. Batches are queued, and
/// `done` runs once they are written: `Ok(true)` says it will.
async fn apply(
    broker: &Broker,
    part: &Arc<Partition>,
    fp: FetchedPartition,
    sync: bool,
    done: Box<dyn FnOnce(Result<(), LogError>) + Send>,
) -> Result<bool, LogError> {
    if fp.error_code != 0 {
        // Not (or no longer) the leader at our epoch: wait for the metadata to catch up.
        return Err(LogError::NotLeader);
    }
    if fp.reset {
        tracing::info!(topic = %part.topic, partition = part.index, log_start = fp.log_start_offset, "restarting replica at the leader's log start");
        part.reset_to(fp.log_start_offset).await?;
        return Ok(false);
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
        return Ok(false);
    }
    let local_start = part.offsets().log_start;
    if fp.log_start_offset > local_start {
        let target = fp.log_start_offset.min(part.offsets().high_watermark);
        if target > local_start {
            part.delete_records(target).await?;
        }
    }
    if fp.records.is_empty() {
        part.raise_follower_high_watermark(fp.high_watermark);
        return Ok(false);
    }
    broker
        .metrics
        .replication_bytes_in
        .inc_by(fp.records.len() as u64);
    part.append_replicated(fp.records, sync, fp.high_watermark, done)?;
    Ok(true)
}
