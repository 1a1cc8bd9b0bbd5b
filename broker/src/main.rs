//! The `riffle` broker binary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use riffle_broker::config::{Cli, Config};
use riffle_broker::handlers::Broker;
use riffle_broker::{group, http, retention, server};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[global_allocator]
static ALLOC: riffle_protocol::alloc::GuardedAlloc = riffle_protocol::alloc::GuardedAlloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIFFLE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = Config::load(&cli)?;
    tracing::info!(?config, "starting riffle");

    let broker = Broker::open(config.clone())
        .await
        .context("opening data dir")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding Kafka listener {}", config.listen))?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", config.http_listen))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let http_state = http::HttpState {
        broker: broker.clone(),
        ready: ready.clone(),
    };
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http_listener, http::router(http_state))
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
    });
    let retention_task = tokio::spawn(retention::run(broker.clone(), stop_rx.clone()));
    let group_task = tokio::spawn(group::run_timers(broker.groups.clone(), stop_rx.clone()));
    let kafka_task = tokio::spawn(server::serve(listener, broker.clone(), stop_rx));
    ready.store(true, Ordering::Release);
    tracing::info!(listen = %config.listen, http = %config.http_listen, advertised = %config.advertised_listener, "riffle is serving");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    ready.store(false, Ordering::Release);
    broker.begin_shutdown();
    let _ = stop_tx.send(true);
    // Stop accepting, let connections finish what they read, then flush storage.
    kafka_task.await.context("kafka listener task")?;
    retention_task.await.context("retention task")?;
    group_task.await.context("group timer task")?;
    let _ = http_task.await;
    broker.store.flush().context("flushing storage")?;
    if let Ok(broker) = Arc::try_unwrap(broker) {
        // Closes RocksDB (and joins the writer thread) before the process exits.
        drop(broker);
    }
    tracing::info!("shutdown complete");
    Ok(())
}
