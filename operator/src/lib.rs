//! Riffle's Kubernetes operator: custom resources and their reconciliation.

pub mod cluster;
pub mod context;
pub mod crd;
pub mod leader;
pub mod topic;
