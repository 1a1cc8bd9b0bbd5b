//! The `Quorum` gRPC service: Raft messages into openraft, controller requests into
//! the controller. Malformed payloads and foreign cluster ids are refused and logged.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::{Cluster, ControlReply, ControlRequest};
use crate::rpc::{Envelope, Quorum};

/// Serves the quorum and controller RPCs of one broker.
pub struct QuorumService {
    /// The broker's cluster handle.
    pub cluster: Arc<Cluster>,
}

impl QuorumService {
    fn open<T: DeserializeOwned>(&self, req: Request<Envelope>, what: &str) -> Result<T, Status> {
        let env = req.into_inner();
        self.cluster.cluster_id.check(&env.cluster_id)?;
        serde_json::from_slice(&env.payload).map_err(|e| {
            tracing::warn!(what, error = %e, "refused malformed quorum message");
            Status::invalid_argument(format!("malformed {what}: {e}"))
        })
    }

    fn seal<T: Serialize>(&self, v: &T) -> Result<Response<Envelope>, Status> {
        let payload = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Envelope {
            cluster_id: self.cluster.cluster_id.get(),
            payload: payload.into(),
        }))
    }
}

#[tonic::async_trait]
impl Quorum for QuorumService {
    async fn vote(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc = self.open(req, "vote")?;
        let r = self.cluster.raft.vote(rpc).await;
        self.seal(&r)
    }

    async fn append_entries(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc = self.open(req, "append-entries")?;
        let r = self.cluster.raft.append_entries(rpc).await;
        self.seal(&r)
    }

    async fn install_snapshot(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc = self.open(req, "install-snapshot")?;
        let r = self.cluster.raft.install_snapshot(rpc).await;
        self.seal(&r)
    }

    async fn control(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc: ControlRequest = self.open(req, "controller request")?;
        let reply = self.cluster.controller.handle(rpc).await;
        if let ControlReply::Error { code, message } = &reply {
            tracing::debug!(code, message, "controller refused a request");
        }
        self.seal(&reply)
    }
}
