//! openraft's network over the `Quorum` gRPC service: each Raft message is JSON in an
//! [`Envelope`] stamped with our cluster id.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ClusterId, TypeConfig};
use crate::rpc::{Envelope, Peers};

/// Creates connections to quorum peers.
pub struct Network {
    pub(super) peers: Arc<Peers>,
    pub(super) cluster_id: ClusterId,
}

/// A connection to one peer.
pub struct PeerConn {
    target: u64,
    addr: String,
    peers: Arc<Peers>,
    cluster_id: ClusterId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        PeerConn {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            cluster_id: self.cluster_id.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerConn {
    async fn call<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &self,
        method: Method,
        req: &Req,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>> {
        let payload = serde_json::to_vec(req).map_err(|e| NetworkError::new(&e))?;
        let env = Envelope {
            cluster_id: self.cluster_id.get(),
            payload: payload.into(),
        };
        let mut client = self
            .peers
            .quorum(&self.addr)
            .map_err(|e| Unreachable::new(&e))?;
        let reply = match method {
            Method::Vote => client.vote(env).await,
            Method::Append => client.append_entries(env).await,
            Method::Snapshot => client.install_snapshot(env).await,
        }
        .map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                RPCError::Unreachable(Unreachable::new(&Msg(s.message().to_string())))
            } else {
                RPCError::Network(NetworkError::new(&Msg(format!(
                    "{}: {}",
                    s.code(),
                    s.message()
                ))))
            }
        })?;
        let out: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&reply.into_inner().payload)
                .map_err(|e| NetworkError::new(&e))?;
        out.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Which Raft RPC a call is.
#[derive(Clone, Copy)]
pub(super) enum Method {
    Vote,
    Append,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Method::Append, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Method::Snapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Method::Vote, &rpc).await
    }
}
