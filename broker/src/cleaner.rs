//! Background log cleaner: compacts the partitions of topics whose `cleanup.policy`
//! includes `compact` (decisions in `log::compaction`), one partition at a time on a
//! blocking thread, then waits `log.cleaner.backoff.ms`. Each replica cleans its own
//! copy, as in Kafka. `log.cleaner.io.max.bytes.per.second` throttles it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::handlers::Broker;

/// Runs until shutdown.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let configs = broker.catalog.broker_configs();
        let backoff = configs.get_i64("log.cleaner.backoff.ms", 15_000).max(10) as u64;
        let rate = configs
            .get("log.cleaner.io.max.bytes.per.second")
            .trim()
            .parse::<f64>()
            .unwrap_or(f64::MAX);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
            _ = shutdown.changed() => return,
        }
        for topic in broker.catalog.all() {
            let cfg = topic.config();
            if !cfg.compacts {
                continue;
            }
            for p in topic.partitions() {
                let part = p.clone();
                let cfg = cfg.clone();
                let started = std::time::Instant::now();
                let outcome = tokio::task::spawn_blocking(move || part.compact(&cfg)).await;
                let m = &broker.metrics;
                let name: &str = &topic.name;
                let label = p.index.to_string();
                let read = match outcome {
                    Ok(Ok((dirt, cleaned))) => {
                        m.dirty_ratio
                            .with_label_values(&[name, &label])
                            .set(dirt.ratio());
                        let Some((before, after)) = cleaned else {
                            continue;
                        };
                        m.cleaner_runs.with_label_values(&[name]).inc();
                        m.cleaner_seconds.inc_by(started.elapsed().as_secs_f64());
                        m.cleaner_bytes
                            .with_label_values(&[name, "read"])
                            .inc_by(before);
                        m.cleaner_bytes
                            .with_label_values(&[name, "removed"])
                            .inc_by(before - after);
                        tracing::info!(topic = %topic.name, partition = p.index, before, after, "compacted");
                        before
                    }
                    Ok(Err(e)) => {
                        tracing::error!(topic = %topic.name, partition = p.index, error = %e, "compaction failed");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(topic = %topic.name, partition = p.index, error = %e, "compaction panicked");
                        continue;
                    }
                };
                // The throttle: the time this much I/O should have taken at the rate.
                if rate > 0.0 && rate < f64::MAX {
                    let pause = Duration::from_secs_f64((2 * read) as f64 / rate);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}
