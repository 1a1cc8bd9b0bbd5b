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
        /// Broker id.
        id: i32,
        /// End maintenance.
        #[arg(long)]
        off: bool,
        /// Only show the state.
        #[arg(long, conflicts_with = "off")]
        status: bool,
    },
    /// Move leadership back to preferred replicas (the first of each partition's
    /// replicas) wherever they are in sync.
    ElectPreferred,
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
        AdminCommand::Maintenance { id, off, status } => (
            if *status {
                "GET"
            } else if *off {
                "DELETE"
            } else {
                "PUT"
            },
            format!("/v1/brokers/{id}/maintenance"),
        ),
        AdminCommand::ElectPreferred => ("POST", "/v1/leaders/preferred".to_string()),
    };
    let mut body = call(&cli.http, method, &path).await?;
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
        bail!("HTTP {status}: {}", value["error"].as_str().unwrap_or(body));
    }
    Ok(value)
}
