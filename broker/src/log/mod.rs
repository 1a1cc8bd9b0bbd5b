//! Partition logs: offsets, segments, producer state and topic configuration.

pub mod compaction;
pub mod partition;
pub mod producer;
pub mod topic_config;
pub mod txn;

pub use partition::{
    now_ms, AppendOutcome, Appended, FollowerCheck, IsrChange, LogError, Offsets, Partition,
    ReplicaView, Role,
};
pub use topic_config::TopicConfig;
