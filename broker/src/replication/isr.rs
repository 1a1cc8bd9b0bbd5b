//! Leader side: keeps each led partition's ISR current. Followers that have not caught
//! up for `replica_lag_time_max_ms` leave it, caught-up ones rejoin; each change is
//! committed by the controller (Kafka's AlterPartition) before it takes effect.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{ControlReply, ControlRequest};
use crate::handlers::Broker;
use crate::log::{IsrChange, Partition};

/// Checks every led partition on a short interval until `stop`.
pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let lag_max = Duration::from_millis(broker.config.replica_lag_time_max_ms);
    let tick = (lag_max / 8).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let me = broker.config.node_id;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => return,
        }
        for topic in broker.catalog.all() {
            for part in topic.partitions() {
                let Some(change) = part.isr_change_due(me, lag_max) else {
                    continue;
                };
                let (b, t) = (broker.clone(), topic.name.to_string());
                tokio::spawn(async move { propose(&b, &t, &part, change, tick).await });
            }
        }
    }
}

/// Asks the controller to commit `change`. Until an answer settles it, the change may
/// still be committed: it stays pending (and is asked again every `retry`) until this
/// partition's next state is applied, so the high watermark keeps waiting for the
/// replicas it adds.
async fn propose(
    broker: &Broker,
    topic: &str,
    part: &Partition,
    change: IsrChange,
    retry: Duration,
) {
    let me = broker.config.node_id;
    tracing::info!(topic, partition = part.index, isr = ?change.isr, "changing ISR");
    let req = ControlRequest::AlterIsr {
        topic: topic.to_string(),
        partition: part.index,
        leader: me,
        leader_epoch: change.leader_epoch,
        partition_epoch: change.partition_epoch,
        isr: change.isr.clone(),
    };
    let grew = change.isr.len() > part.isr_len();
    while part.isr_change_pending(&change) {
        match broker
            .cluster
            .control(req.clone(), Duration::from_secs(5))
            .await
        {
            ControlReply::Done { .. } => {
                let m = if grew {
                    &broker.metrics.isr_expands
                } else {
                    &broker.metrics.isr_shrinks
                };
                m.inc();
                return;
            }
            ControlReply::Error { code, message } if refused_for_good(code) => {
                tracing::info!(
                    topic,
                    partition = part.index,
                    code,
                    message,
                    "ISR change refused"
                );
                part.isr_change_refused(&change);
                return;
            }
            other => {
                tracing::info!(topic, partition = part.index, reply = ?other, "ISR change not committed yet");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Refusals of a change checked against the partition's current state: nothing of it
/// can be committed later. Others (no controller, a timeout, a newer partition state) wait
/// for the next state or another attempt.
fn refused_for_good(code: i16) -> bool {
    use kafka_protocol::error::ResponseError as E;
    code == E::IneligibleReplica.code() || code == E::InvalidRequest.code()
}
