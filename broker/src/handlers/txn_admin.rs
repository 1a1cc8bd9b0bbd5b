//! Transaction tooling (`kafka-transactions`): DescribeTransactions and ListTransactions
//! at the coordinators, DescribeProducers at the partition leaders.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState as DescribedProducer, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedTxn,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTxn;
use kafka_protocol::messages::*;

use super::{str_bytes, Broker};
use crate::acl::{op, resource, Session};
use crate::log::now_ms;
use crate::txn::TxnMeta;

/// Whether a transaction passes ListTransactions' filters (KIP-664, KIP-994).
fn listed(m: &TxnMeta, states: &[&str], producers: &[i64], min_duration_ms: i64, now: i64) -> bool {
    (states.is_empty() || states.contains(&m.phase.name()))
        && (producers.is_empty() || producers.contains(&m.producer_id))
        && (min_duration_ms < 0 || (m.started_ms >= 0 && now - m.started_ms >= min_duration_ms))
}

impl Broker {
    /// DescribeTransactions: each id's state, as its coordinator (this broker) has it
    /// (DESCRIBE on the transactional id).
    pub(super) fn describe_transactions(
        &self,
        req: DescribeTransactionsRequest,
        who: &Session,
    ) -> DescribeTransactionsResponse {
        let states = req
            .transactional_ids
            .into_iter()
            .map(|id| {
                let allowed =
                    self.authorize(who, op::DESCRIBE, resource::TRANSACTIONAL_ID, id.0.as_str());
                let found = match self.groups.txn_get(id.0.as_str()) {
                    _ if !allowed => Err(E::TransactionalIdAuthorizationFailed.code()),
                    Ok((Some(m), _)) => Ok(m),
                    Ok((None, _)) => Err(E::TransactionalIdNotFound.code()),
                    Err(code) => Err(code),
                };
                let described = DescribedTxn::default().with_transactional_id(id);
                match found {
                    Err(code) => {
                        self.count_error(ApiKey::DescribeTransactions, code);
                        described
                            .with_error_code(code)
                            .with_producer_id((-1).into())
                    }
                    Ok(m) => {
                        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                        for (t, p) in &m.partitions {
                            topics.entry(t).or_default().push(*p);
                        }
                        described
                            .with_transaction_state(str_bytes(m.phase.name()))
                            .with_transaction_timeout_ms(m.timeout_ms)
                            .with_transaction_start_time_ms(m.started_ms)
                            .with_producer_id(m.producer_id.into())
                            .with_producer_epoch(m.epoch)
                            .with_topics(
                                topics
                                    .into_iter()
                                    .map(|(t, partitions)| {
                                        TopicData::default()
                                            .with_topic(TopicName(str_bytes(t)))
                                            .with_partitions(partitions)
                                    })
                                    .collect(),
                            )
                    }
                }
            })
            .collect();
        DescribeTransactionsResponse::default().with_transaction_states(states)
    }

    /// ListTransactions: the transactional ids this broker coordinates and the client may
    /// describe, filtered.
    pub(super) fn list_transactions(
        &self,
        req: ListTransactionsRequest,
        who: &Session,
    ) -> ListTransactionsResponse {
        let known = [
            "Empty",
            "Ongoing",
            "PrepareCommit",
            "PrepareAbort",
            "CompleteCommit",
            "CompleteAbort",
        ];
        let (states, unknown): (Vec<&str>, Vec<&str>) = req
            .state_filters
            .iter()
            .map(|s| s.as_str())
            .partition(|s| known.contains(s));
        let producers: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
        let now = now_ms();
        let mut txns: Vec<(String, TxnMeta)> = self
            .groups
            .txn_list()
            .into_iter()
            .filter(|(_, m)| listed(m, &states, &producers, req.duration_filter, now))
            .filter(|(id, _)| self.authorize(who, op::DESCRIBE, resource::TRANSACTIONAL_ID, id))
            .collect();
        txns.sort_by(|a, b| a.0.cmp(&b.0));
        ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown.into_iter().map(str_bytes).collect())
            .with_transaction_states(
                txns.into_iter()
                    .map(|(id, m)| {
                        ListedTxn::default()
                            .with_transactional_id(TransactionalId(str_bytes(&id)))
                            .with_producer_id(m.producer_id.into())
                            .with_transaction_state(str_bytes(m.phase.name()))
                    })
                    .collect(),
            )
    }

    /// DescribeProducers: the producers each partition led here knows, with their open
    /// transaction (READ on the topic).
    pub(super) fn describe_producers(
        &self,
        req: DescribeProducersRequest,
        who: &Session,
    ) -> DescribeProducersResponse {
        let topics = req
            .topics
            .into_iter()
            .map(|t| {
                let topic = self.catalog.get(t.name.0.as_str());
                let allowed = self.authorize(who, op::READ, resource::TOPIC, t.name.0.as_str());
                let partitions = t
                    .partition_indexes
                    .iter()
                    .map(|&p| {
                        let out = PartitionResponse::default().with_partition_index(p);
                        if !allowed {
                            let code = E::TopicAuthorizationFailed.code();
                            self.count_error(ApiKey::DescribeProducers, code);
                            return out.with_error_code(code);
                        }
                        let Some(part) = topic.as_ref().and_then(|topic| topic.partition(p)) else {
                            self.count_error(
                                ApiKey::DescribeProducers,
                                E::UnknownTopicOrPartition.code(),
                            );
                            return out.with_error_code(E::UnknownTopicOrPartition.code());
                        };
                        if !self.leads(&part) {
                            self.count_error(
                                ApiKey::DescribeProducers,
                                E::NotLeaderOrFollower.code(),
                            );
                            return out.with_error_code(E::NotLeaderOrFollower.code());
                        }
                        let producers = part
                            .producers()
                            .into_iter()
                            .map(|(id, ps, open)| {
                                DescribedProducer::default()
                                    .with_producer_id(id.into())
                                    .with_producer_epoch(i32::from(ps.epoch))
                                    .with_last_sequence(
                                        ps.batches.back().map_or(-1, |b| b.last_seq),
                                    )
                                    .with_last_timestamp(ps.last_update_ms)
                                    .with_coordinator_epoch(ps.coordinator_epoch)
                                    .with_current_txn_start_offset(open.unwrap_or(-1))
                            })
                            .collect();
                        out.with_active_producers(producers)
                    })
                    .collect();
                TopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        DescribeProducersResponse::default().with_topics(topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::Phase;

    #[test]
    fn list_filters_by_state_producer_and_duration() {
        let m = TxnMeta {
            producer_id: 7,
            epoch: 0,
            timeout_ms: 60_000,
            phase: Phase::Ongoing,
            partitions: Default::default(),
            started_ms: 1_000,
            updated_ms: 1_000,
        };
        assert!(listed(&m, &[], &[], -1, 2_000));
        assert!(listed(&m, &["Ongoing"], &[7], 1_000, 2_000));
        assert!(!listed(&m, &["Empty"], &[], -1, 2_000));
        assert!(!listed(&m, &[], &[8], -1, 2_000));
        assert!(!listed(&m, &[], &[], 1_001, 2_000), "running 1000 ms only");
        let empty = TxnMeta {
            phase: Phase::Empty,
            started_ms: -1,
            ..m
        };
        assert!(!listed(&empty, &[], &[], 0, 2_000), "not running");
    }
}
