//! Topic, broker and group configs with Kafka's names, types, validation and defaults.

pub mod broker;
pub mod group;
pub mod topic;
pub mod value;

pub use broker::BrokerConfigs;

/// Where a described config value comes from (Kafka's DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Set on the topic.
    Topic = 1,
    /// Set dynamically for this broker.
    DynamicBroker = 2,
    /// Set dynamically as the cluster-wide default.
    DynamicDefaultBroker = 3,
    /// Set in the broker's file, environment or flags.
    StaticBroker = 4,
    /// Nothing sets it.
    Default = 5,
    /// Set on the group.
    Group = 8,
}
