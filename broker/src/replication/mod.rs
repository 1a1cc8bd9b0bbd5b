//! Partition replication between brokers: the leader side answers followers' fetches
//! ([`service`]), the follower side fetches from leaders ([`fetcher`]), and leaders keep
//! their ISR current ([`isr`]). Batches travel as the leader stored them.

pub mod fetcher;
pub mod isr;
pub mod service;
pub mod throttle;
