//! Background retention: deletes whole expired segments and advances log start offsets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::handlers::Broker;

/// How often the (dynamic) check interval is re-read, so a shorter one applies soon.
const INTERVAL_RECHECK: Duration = Duration::from_secs(1);

/// Runs retention every `log.retention.check.interval.ms` until shutdown. Topics without
/// `delete` in `cleanup.policy` are skipped.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut last = tokio::time::Instant::now();
    loop {
        let every = broker
            .catalog
            .broker_configs()
            .get_i64("log.retention.check.interval.ms", 300_000)
            .max(10) as u64;
        let every = Duration::from_millis(every);
        tokio::select! {
            _ = tokio::time::sleep(every.min(INTERVAL_RECHECK)) => {}
            _ = shutdown.changed() => return,
        }
        if last.elapsed() < every {
            continue;
        }
        last = tokio::time::Instant::now();
        for topic in broker.catalog.all() {
            let cfg = topic.config();
            if !cfg.retention_deletes {
                continue;
            }
            for p in topic.partitions() {
                match p.apply_retention(&cfg).await {
                    Ok(Some(start)) => {
                        tracing::info!(topic = %topic.name, partition = p.index, log_start_offset = start, "retention deleted segments");
                        let (store, uid) = (broker.store.clone(), p.uid);
                        let compacted = tokio::task::spawn_blocking(move || {
                            store.compact_log_below(uid, start)
                        });
                        if let Err(e) = compacted.await {
                            tracing::error!(error = %e, "compaction after retention failed");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(topic = %topic.name, partition = p.index, error = %e, "retention failed")
                    }
                }
            }
        }
    }
}
