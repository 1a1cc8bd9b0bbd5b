//! Partition logs: offsets, segments, producer state and topic configuration.

pub mod partition;
pub mod producer;
pub mod topic_config;

pub use partition::{now_ms, AppendOutcome, Appended, LogError, Offsets, Partition};
pub use topic_config::TopicConfig;
