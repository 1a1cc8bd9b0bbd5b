//! Kafka listener: framing, per-connection pipelining with in-order responses.

use std::sync::Arc;

use bytes::BytesMut;
use prometheus::IntGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::task::JoinSet;

use crate::acl::Session;
use crate::handlers::Broker;
use crate::protocol::{EncodeError, Frame};

type Pending = JoinHandle<Result<Option<Frame>, EncodeError>>;

/// A request's share of the budget, returned (and the gauge lowered) when dropped.
struct Reserved {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
    bytes: i64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// Accepts connections until `shutdown` turns true, then waits for open connections to
/// finish the requests they already read.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let budget = Arc::new(Budget::new(
        broker.config.queued_max_request_bytes,
        broker.metrics.request_bytes_held.clone(),
    ));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let b = broker.clone();
                    let sd = shutdown.clone();
                    let budget = budget.clone();
                    conns.spawn(async move {
                        b.metrics.connections.inc();
                        if let Err(e) = connection(stream, b.clone(), sd, budget).await {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        b.metrics.connections.dec();
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// The broker-wide budget of request bytes read and not yet answered.
struct Budget {
    permits: Arc<Semaphore>,
    /// Permits a request may take at most: a request larger than the whole budget takes
    /// all of it and runs alone.
    max: u32,
    /// Bytes reserved now.
    gauge: IntGauge,
}

impl Budget {
    fn new(bytes: u64, gauge: IntGauge) -> Budget {
        let max = bytes.clamp(1, u32::MAX as u64) as u32;
        Budget {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            gauge,
        }
    }

    /// Waits until `size` bytes fit in the budget.
    async fn reserve(&self, size: usize) -> Option<Reserved> {
        let n = (size.min(self.max as usize) as u32).max(1);
        let permit = self.permits.clone().acquire_many_owned(n).await.ok()?;
        self.gauge.add(n.into());
        Some(Reserved {
            _permit: permit,
            gauge: self.gauge.clone(),
            bytes: n.into(),
        })
    }
}

async fn connection(
    stream: TcpStream,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    budget: Arc<Budget>,
) -> std::io::Result<()> {
    let peer = stream.peer_addr().ok();
    // No authentication yet: every connection is the anonymous user at its address.
    let who = Arc::new(Session {
        principal: crate::acl::ANONYMOUS.to_string(),
        host: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        ..Session::default()
    });
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Pending>(broker.config.max_in_flight_per_connection);
    // Writer: resolves replies in request order.
    let writer = tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            match pending.await {
                // Vectored: a fetch's record sets go out from where they were read.
                Ok(Ok(Some(mut frame))) => wr.write_all_buf(&mut frame).await?,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "closing connection: response could not be encoded");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "closing connection: request handler failed");
                    break;
                }
            }
        }
        wr.shutdown().await
    });
    let max = broker.config.socket_request_max_bytes;
    loop {
        // A client over its quota waits before its next request is read (its socket
        // buffer fills and it backs off, as with Kafka's muted channel).
        if let Some(until) = who.take_throttle() {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = shutdown.changed() => break,
            }
        }
        let mut size_buf = [0u8; 4];
        let read = tokio::select! {
            r = rd.read_exact(&mut size_buf) => r,
            _ = shutdown.changed() => break,
        };
        if read.is_err() {
            break;
        }
        let size = i32::from_be_bytes(size_buf);
        if size < 0 || size > max {
            broker.metrics.bad_frames.with_label_values(&["size"]).inc();
            tracing::warn!(
                ?peer,
                size,
                max,
                "closing connection: request size out of bounds"
            );
            break;
        }
        // Nothing is allocated for a request before it fits in the budget.
        let reserved = tokio::select! {
            r = budget.reserve(size as usize) => r,
            _ = shutdown.changed() => break,
        };
        let Some(reserved) = reserved else { break };
        let mut frame = BytesMut::zeroed(size as usize);
        if rd.read_exact(&mut frame).await.is_err() {
            broker
                .metrics
                .bad_frames
                .with_label_values(&["truncated"])
                .inc();
            break;
        }
        match broker.dispatch(frame.freeze(), &who).await {
            Ok(reply) => {
                // The request's bytes count until it is answered.
                let reply = async move {
                    let out = reply.await;
                    drop(reserved);
                    out
                };
                if tx.send(tokio::spawn(reply)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                broker
                    .metrics
                    .bad_frames
                    .with_label_values(&[e.label()])
                    .inc();
                tracing::warn!(?peer, reason = %e, "closing connection");
                break;
            }
        }
    }
    // Replies already queued are still sent before the socket closes.
    drop(tx);
    writer.await.unwrap_or(Ok(()))
}
