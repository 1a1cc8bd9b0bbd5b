//! Cluster reconciliation.

pub mod build;
