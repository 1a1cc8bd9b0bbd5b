//! Partition replication between brokers: the leader side answers followers' fetches
//! ([`service`]), the follower side fetches from leaders ([`fetcher`]), and leaders keep
//! their ISR current ([`isr`]); leaders a follower lost are hidden from clients for a
//! moment ([`lost`]). Batches travel as the leader stored them.

pub mod fetcher;
pub mod isr;
pub mod lost;
pub mod service;
pub mod throttle;
