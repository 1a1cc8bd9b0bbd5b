//! `riffle admin …`: the broker's admin API from the command line, for whoever is on call.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Command line of `riffle admin`.
#[derive(Debug, Parser)]
#[command(
    name = "riffle admin",
    about = "Riffle cluster administration over a broker's HTTP port"
)]
pub struct AdminCli {
    /// HTTP address of any broker.
    #[arg(long, env = "RIFFLE_ADMIN_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Cluster health: controller, brokers, partitions, reassignments.
    Health,
    /// Decommission a broker (its replicas move to the others), or show its progress.
    Decommission {
        /// Broker id.
        id: i32,
        /// Only show progress.
        #[arg(long)]
        status: bool,
        /// Recommission: cancel the decommission and the moves in flight.
        #[arg(long, conflicts_with = "status")]
        cancel: bool,
        /// Wait until the broker holds no replica.
        #[arg(long, conflicts_with_all = ["status", "cancel"])]
        wait: bool,
    },
    /// Balancer status, or switch it on/off cluster-wide.
    Balancer {
        /// Switch on.
        #[arg(long)]
        on: bool,
        /// Switch off.
        #[arg(long, conflicts_with = "on")]
        off: bool,
    },
    /// Put a broker in maintenance (it leads nothing), or end it.
    Maintenance {
        /// Broker id (default: this Pod's broker).
        #[arg(env = "RIFFLE_NODE_ID")]
        id: i32,
        /// End maintenance.
        #[arg(long)]
        off: bool,
        /// Only show the state.
        #[arg(long, conflicts_with = "off")]
        status: bool,
        /// End maintenance by itself when the broker registers anew (a restart).
        #[arg(long, conflicts_with_all = ["off", "status"])]
        until_restart: bool,
        /// Wait up to this many seconds until every leadership another replica can take
        /// has moved; fail if it has not.
        #[arg(long, value_name = "SECONDS", conflicts_with_all = ["off", "status"])]
        wait: Option<u64>,
    },
    /// Move leadership back to preferred replicas (the first of each partition's
    /// replicas) wherever they are in sync.
    ElectPreferred,
    /// Reassignments in flight.
    Reassignments,
    /// Move a partition to other brokers (the replication factor may change), cancel its
    /// reassignment, or show it.
    Reassign {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Target replicas, comma-separated (the first is the preferred leader).
        #[arg(long, value_name = "IDS", required_unless_present_any = ["cancel", "status"])]
        replicas: Option<String>,
        /// Cancel the reassignment in flight (the original replicas stay).
        #[arg(long, conflicts_with_all = ["replicas", "status"])]
        cancel: bool,
        /// Only show the partition's replicas and reassignment.
        #[arg(long, conflicts_with = "replicas")]
        status: bool,
    },
}

/// Runs an admin command; prints the broker's JSON answers.
pub async fn run(cli: AdminCli) -> anyhow::Result<()> {
    let (method, path) = match &cli.command {
        AdminCommand::Health => ("GET", "/v1/cluster".to_string()),
        AdminCommand::Decommission {
            id, status, cancel, ..
        } => (
            if *status {
                "GET"
            } else if *cancel {
                "DELETE"
            } else {
                "PUT"
            },
            format!("/v1/brokers/{id}/decommission"),
        ),
        AdminCommand::Balancer { on, off } => (
            if *on {
                "PUT"
            } else if *off {
                "DELETE"
            } else {
                "GET"
            },
            "/v1/balancer".to_string(),
        ),
        AdminCommand::Maintenance {
            id,
            off,
            status,
            until_restart,
            ..
        } => (
            if *status {
                "GET"
            } else if *off {
                "DELETE"
            } else {
                "PUT"
            },
            format!(
                "/v1/brokers/{id}/maintenance{}",
                if *until_restart { "?until=restart" } else { "" }
            ),
        ),
        AdminCommand::ElectPreferred => ("POST", "/v1/leaders/preferred".to_string()),
        AdminCommand::Reassignments => ("GET", "/v1/reassignments".to_string()),
        AdminCommand::Reassign {
            topic,
            partition,
            replicas,
            cancel,
            ..
        } => {
            let path = format!("/v1/reassignments/{topic}/{partition}");
            match (replicas, cancel) {
                (Some(r), _) => ("PUT", format!("{path}?replicas={r}")),
                (None, true) => ("DELETE", path),
                (None, false) => ("GET", path),
            }
        }
    };
    let mut body = match call(&cli.http, method, &path).await {
        // A Pod stopping after its broker left the cluster (a scale-down): nothing to hand over.
        Err(e)
            if matches!(
                cli.command,
                AdminCommand::Maintenance {
                    until_restart: true,
                    ..
                }
            ) && e.downcast_ref::<Refused>().is_some_and(|r| r.status == 404) =>
        {
            println!("{e}: it leads nothing");
            return Ok(());
        }
        r => r?,
    };
    println!("{}", serde_json::to_string_pretty(&body)?);
    if let AdminCommand::Decommission { wait: true, .. } = cli.command {
        while body["drained"] != serde_json::Value::Bool(true) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            body = call(&cli.http, "GET", &path).await?;
            eprintln!(
                "partitions left: {}, moves in flight: {}",
                body["partitions_left"], body["moves_in_flight"]
            );
        }
        println!("drained");
    }
    if let AdminCommand::Maintenance {
        id,
        wait: Some(secs),
        ..
    } = cli.command
    {
        let path = format!("/v1/brokers/{id}/maintenance");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let movable = |b: &serde_json::Value| {
            let leaders = b["leaders"].as_u64().unwrap_or(u64::MAX);
            leaders.saturating_sub(b["sole_replica_leaders"].as_u64().unwrap_or(0))
        };
        while movable(&body) > 0 {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "broker {id} still leads {} partitions another replica could lead after {secs} s",
                    movable(&body)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            body = call(&cli.http, "GET", &path).await?;
        }
        println!("no leadership left to move");
    }
    Ok(())
}

/// One HTTP/1.1 request; the JSON body of a 2xx answer, the broker's reason otherwise.
async fn call(addr: &str, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .context("no answer within 30 s")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    // The broker answers JSON with a Content-Length and closes the connection.
    let value: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("HTTP {status}: {body}"))?;
    if !(200..300).contains(&status) {
        let message = value["error"].as_str().unwrap_or(body).to_string();
        return Err(Refused { status, message }.into());
    }
    Ok(value)
}

/// A broker's refusal: a non-2xx answer and its reason.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {message}")]
struct Refused {
    status: u16,
    message: String,
}
