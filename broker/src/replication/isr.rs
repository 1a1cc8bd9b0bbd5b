//! Leader side: keeps each led partition's ISR current. Followers that have not caught
//! up for `replica_lag_time_max_ms` leave it, caught-up ones rejoin; each change is
//! committed by the controller (Kafka's AlterPartition) before it takes effect.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{ControlReply, ControlRequest};
use crate::handlers::Broker;

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
                tokio::spawn(async move {
                    tracing::info!(topic = t, partition = part.index, isr = ?change.isr, "changing ISR");
                    let req = ControlRequest::AlterIsr {
                        topic: t.clone(),
                        partition: part.index,
                        leader: me,
                        leader_epoch: change.leader_epoch,
                        partition_epoch: change.partition_epoch,
                        isr: change.isr.clone(),
                    };
                    let grew = change.isr.len() > part.isr_len();
                    match b.cluster.control(req, Duration::from_secs(5)).await {
                        ControlReply::Done { .. } => {
                            let m = if grew {
                                &b.metrics.isr_expands
                            } else {
                                &b.metrics.isr_shrinks
                            };
                            m.inc();
                        }
                        other => {
                            tracing::info!(topic = t, partition = part.index, reply = ?other, "ISR change not committed");
                            part.isr_change_failed();
                        }
                    }
                });
            }
        }
    }
}
