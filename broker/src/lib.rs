//! Riffle broker: a Kafka-compatible event-streaming broker on RocksDB.
//!
//! Data path: [`server`] (TCP framing) → [`handlers`] (one module per API family) →
//! [`log`] (partition offsets, producer state, replica state) → [`storage`] (RocksDB).
//!
//! Around it: [`cluster`] (metadata quorum, controller), [`replication`] (followers fetch
//! from leaders) and [`rpc`] (the gRPC both use).

pub mod acl;
pub mod cleaner;
pub mod cluster;
pub mod config;
pub mod configs;
pub mod group;
pub mod handlers;
pub mod http;
pub mod log;
pub mod metadata;
pub mod metrics;
pub mod quota;
pub use riffle_protocol as protocol;
pub mod replication;
pub mod retention;
pub mod rpc;
pub mod scram;
pub mod server;
pub mod storage;
pub mod txn;
