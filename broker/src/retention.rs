//! Background retention: deletes whole expired segments and advances log start offsets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::handlers::Broker;

/// Runs retention every `log_retention_check_interval_ms` until shutdown.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(broker.config.log_retention_check_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        for topic in broker.catalog.all() {
            let cfg = topic.config();
            for p in topic.partitions() {
                match p.apply_retention(&cfg).await {
                    Ok(Some(start)) => {
                        tracing::info!(topic = %topic.name, partition = p.index, log_start_offset = start, "retention deleted segments")
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
