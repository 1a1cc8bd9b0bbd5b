//! Broker-to-broker gRPC: the generated messages and services of `proto/riffle.proto`,
//! a pool of client channels, and the server that hosts the quorum and replication
//! services on the RPC listener.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

#[allow(missing_docs, clippy::all)]
mod pb {
    tonic::include_proto!("riffle.v1");
}

pub use pb::quorum_client::QuorumClient;
pub use pb::quorum_server::{Quorum, QuorumServer};
pub use pb::replication_client::ReplicationClient;
pub use pb::replication_server::{Replication, ReplicationServer};
pub use pb::{Envelope, FetchPartition, FetchRequest, FetchResponse, FetchedPartition};

/// Largest gRPC message accepted (a replica fetch carries up to this many bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Lazily connected channels to other brokers, one per address.
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
}

impl Peers {
    /// A pool whose connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Peers {
        Peers {
            channels: Mutex::default(),
            connect_timeout,
        }
    }

    /// The channel to `addr` (`host:port`); connects on first use and reconnects by itself.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Drops the channel to `addr`, so the next use connects afresh (a channel that keeps
    /// failing or hanging may be wedged on a connection to a process that is gone).
    pub fn forget(&self, addr: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
    }

    /// Quorum client for `addr`.
    pub fn quorum(&self, addr: &str) -> Result<QuorumClient<Channel>, tonic::transport::Error> {
        Ok(QuorumClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Replication client for `addr`.
    pub fn replication(
        &self,
        addr: &str,
    ) -> Result<ReplicationClient<Channel>, tonic::transport::Error> {
        Ok(ReplicationClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// Serves both services on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    quorum: impl Quorum,
    replication: impl Replication,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            QuorumServer::new(quorum)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ReplicationServer::new(replication)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
