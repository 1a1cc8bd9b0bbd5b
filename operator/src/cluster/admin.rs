//! The brokers' admin HTTP API (`docs/admin-api.yaml`), as the Cluster controller uses
//! it: read the cluster's state, start or stop decommission and maintenance, and trigger
//! preferred-leader elections.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::plan::{Broker, View};

/// An admin API failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection, or no answer in time.
    #[error("{0}: {1}")]
    Unreachable(String, String),
    /// The broker answered with an error.
    #[error("{0}: HTTP {1}: {2}")]
    Refused(String, u16, String),
    /// No broker answered.
    #[error("no broker answers the admin API")]
    NoBroker,
    /// The answer was not what the API specifies.
    #[error("{0}: unexpected answer: {1}")]
    Invalid(String, String),
}

/// A client of one broker's admin API.
pub struct Admin {
    base: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ClusterJson {
    controller: Option<i32>,
    brokers: Vec<BrokerJson>,
    partitions: PartitionsJson,
    max_replication_factor: usize,
    reassignments: usize,
}

#[derive(Deserialize)]
struct BrokerJson {
    id: i32,
    replicas: usize,
    leaders: usize,
    decommissioning: bool,
    maintenance: bool,
}

#[derive(Deserialize)]
struct PartitionsJson {
    offline: usize,
    under_replicated: usize,
    non_preferred_leaders: usize,
}

#[derive(Deserialize)]
struct ElectedJson {
    elected: usize,
}

impl Admin {
    /// A client of the broker at `host:port` (its HTTP listener).
    pub fn new(addr: &str, timeout: Duration) -> Admin {
        Admin {
            base: format!("http://{addr}"),
            http: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
        }
    }

    async fn call(&self, method: Method, path: &str) -> Result<Bytes, Error> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .body(Empty::new())
            .map_err(|e| Error::Invalid(url.clone(), e.to_string()))?;
        let answer = async {
            let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| Error::Unreachable(url.clone(), "timed out".into()))?
            .map_err(|e| Error::Unreachable(url.clone(), e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body).into_owned();
            return Err(Error::Refused(url, status.as_u16(), text));
        }
        Ok(body)
    }

    /// The cluster as this broker's metadata has it.
    pub async fn cluster(&self) -> Result<View, Error> {
        let body = self.call(Method::GET, "/v1/cluster").await?;
        let c: ClusterJson = serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("{}/v1/cluster", self.base), e.to_string()))?;
        Ok(View {
            brokers: c
                .brokers
                .into_iter()
                .map(|b| {
                    (
                        b.id,
                        Broker {
                            replicas: b.replicas,
                            leaders: b.leaders,
                            decommissioning: b.decommissioning,
                            maintenance: b.maintenance,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            controller: c.controller,
            under_replicated: c.partitions.under_replicated + c.partitions.offline,
            max_replication_factor: c.max_replication_factor,
            non_preferred_leaders: c.partitions.non_preferred_leaders,
            reassignments: c.reassignments,
        })
    }

    /// The broker's Prometheus text exposition.
    pub async fn metrics(&self) -> Result<String, Error> {
        let body = self.call(Method::GET, "/metrics").await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Moves leaderships back to preferred replicas; answers how many moved.
    pub async fn elect_preferred(&self) -> Result<usize, Error> {
        let path = "/v1/leaders/preferred";
        let body = self.call(Method::POST, path).await?;
        let e: ElectedJson = serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("{}{path}", self.base), e.to_string()))?;
        Ok(e.elected)
    }

    /// Starts (`on`) or cancels decommissioning broker `id`.
    pub async fn decommission(&self, id: i32, on: bool) -> Result<(), Error> {
        self.switch(id, "decommission", on).await
    }

    /// Puts broker `id` into maintenance (`on`) or takes it out.
    pub async fn maintenance(&self, id: i32, on: bool) -> Result<(), Error> {
        self.switch(id, "maintenance", on).await
    }

    /// PUT (on) or DELETE (off) of a broker operation.
    async fn switch(&self, id: i32, operation: &str, on: bool) -> Result<(), Error> {
        let method = if on { Method::PUT } else { Method::DELETE };
        self.call(method, &format!("/v1/brokers/{id}/{operation}"))
            .await
            .map(drop)
    }
}
