//! Cluster metadata: topics, their partitions and configs, producer ids and the cluster id.
//!
//! On a single node this is kept in the local store's `meta` column family, written with a
//! WAL sync before any change is acknowledged.

mod catalog;
pub mod names;

pub use catalog::{Catalog, CatalogError, Topic};
