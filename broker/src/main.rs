//! The `riffle` broker binary (and `riffle admin …`, its command-line admin client).

mod admin;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use riffle_broker::cluster::image::BrokerState;
use riffle_broker::cluster::QuorumService;
use riffle_broker::config::{Cli, Config};
use riffle_broker::handlers::Broker;
use riffle_broker::replication::{self, service::ReplicationService};
use riffle_broker::{cleaner, group, http, retention, server};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[global_allocator]
static ALLOC: riffle_protocol::alloc::GuardedAlloc = riffle_protocol::alloc::GuardedAlloc;

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// glibc gives each thread that allocates concurrently its own heap (up to 8 per core),
/// and freed memory stays in whichever heap freed it: with the runtime's, RocksDB's and
/// the writer's threads that grew the broker's RSS past 1 GiB under the benchmark,
/// against under 500 MiB with two heaps and no measurable throughput loss. Done before
/// any thread starts; `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts allocator parameters; no thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIFFLE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if std::env::args().nth(1).as_deref() == Some("admin") {
        let cli = admin::AdminCli::parse_from(std::env::args().skip(1));
        return admin::run(cli).await;
    }
    let cli = Cli::parse();
    let mut config = Config::load(&cli)?;
    let rpc_listener = bind_rpc(&config).await?;
    config.resolve_advertised_rpc(rpc_listener.local_addr()?);
    tracing::info!(?config, "starting riffle");

    let broker = Broker::open(config.clone())
        .await
        .context("opening data dir")?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", config.http_listen))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut rpc_stop = stop_rx.clone();
    let rpc_task = tokio::spawn(riffle_broker::rpc::serve(
        rpc_listener,
        QuorumService {
            cluster: broker.cluster.clone(),
        },
        ReplicationService {
            broker: broker.clone(),
        },
        async move {
            let _ = rpc_stop.changed().await;
        },
    ));
    let interval = Duration::from_millis(config.broker_heartbeat_interval_ms);
    let sizes_of = broker.clone();
    let heartbeat_task = tokio::spawn(broker.cluster.clone().heartbeat_loop(
        interval,
        move || sizes_of.replica_sizes(),
        shutdown_rx,
        stop_rx.clone(),
    ));
    let controller_task = tokio::spawn(broker.cluster.controller.clone().run(stop_rx.clone()));
    let fetcher_task = tokio::spawn(replication::fetcher::run(broker.clone(), stop_rx.clone()));
    let isr_task = tokio::spawn(replication::isr::run(broker.clone(), stop_rx.clone()));
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
    let cleaner_task = tokio::spawn(cleaner::run(broker.clone(), stop_rx.clone()));
    let group_task = tokio::spawn(group::run_timers(broker.groups.clone(), stop_rx.clone()));
    let txn_task = {
        let (broker, mut stop) = (broker.clone(), stop_rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(riffle_broker::handlers::txn::TXN_TICK) => broker.txn_tick().await,
                    _ = stop.changed() => return,
                }
            }
        })
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Kafka clients are served once the controller counts this broker as active
    // (registered and unfenced), so nobody talks to it before it knows its partitions.
    let mut state = broker.cluster.state.subscribe();
    tracing::info!(http = %config.http_listen, rpc = %config.advertised_rpc(), "waiting to join the cluster");
    let mut kafka_task = None;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        joined = state.wait_for(|s| *s == BrokerState::Active) => {
            // Release the watch guard: the heartbeat loop writes this state.
            drop(joined);
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding Kafka listener {}", config.listen))?;
            kafka_task = Some(tokio::spawn(server::serve(listener, broker.clone(), stop_rx)));
            ready.store(true, Ordering::Release);
            tracing::info!(listen = %config.listen, http = %config.http_listen, advertised = %config.advertised_listener, "riffle is serving");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
    }
    // Controlled shutdown: keep serving while the controller moves our leaderships away.
    let _ = shutdown_tx.send(true);
    let moved = broker
        .cluster
        .wait_leaderships_moved(
            Duration::from_millis(config.controlled_shutdown_timeout_ms),
            Duration::from_millis(config.broker_session_timeout_ms),
        )
        .await;
    if !moved {
        tracing::warn!("leaderships could not all be moved away in time; shutting down anyway");
    }
    ready.store(false, Ordering::Release);
    broker.begin_shutdown();
    let _ = stop_tx.send(true);
    // Stop accepting, let connections finish what they read, then flush storage.
    if let Some(t) = kafka_task {
        t.await.context("kafka listener task")?;
    }
    retention_task.await.context("retention task")?;
    cleaner_task.await.context("log cleaner task")?;
    group_task.await.context("group timer task")?;
    txn_task.await.context("transaction timer task")?;
    let _ = http_task.await;
    for t in [heartbeat_task, controller_task, fetcher_task, isr_task] {
        // Bounded: a metadata write without a quorum would otherwise hold shutdown.
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let _ = rpc_task.await;
    if let Err(e) = broker.cluster.raft.shutdown().await {
        tracing::warn!(error = %e, "stopping the metadata quorum member");
    }
    broker.store.flush().context("flushing storage")?;
    if let Ok(broker) = Arc::try_unwrap(broker) {
        // Closes RocksDB (and joins the writer thread) before the process exits.
        drop(broker);
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Binds the RPC listener. A single node (no `--voters`) whose default port is taken
/// falls back to an ephemeral loopback port: nobody else needs to reach it.
async fn bind_rpc(config: &Config) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(config.rpc_listen).await {
        Ok(l) => Ok(l),
        Err(e) if config.voters.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::info!(listen = %config.rpc_listen, "RPC port taken; single node uses an ephemeral loopback port");
            Ok(TcpListener::bind(("127.0.0.1", 0)).await?)
        }
        Err(e) => Err(e).with_context(|| format!("binding RPC listener {}", config.rpc_listen)),
    }
}
