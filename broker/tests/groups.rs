//! Group coordinator against a real broker process: committed offsets survive kill -9,
//! bad commits get Kafka's error codes and do not disturb the group.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use riffle_client::testkit::TestBroker;
use riffle_client::Connection;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

async fn commit(
    c: &mut Connection,
    group: &str,
    (generation, member): (i32, &str),
    topic: &str,
    partition: i32,
    offset: i64,
    metadata: &str,
) -> i16 {
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(s(metadata)))])]);
    let resp = c.call(8, &req).await.expect("commit");
    resp.topics[0].partitions[0].error_code
}

async fn fetch_committed(
    c: &mut Connection,
    group: &str,
    topic: &str,
    partition: i32,
) -> (i64, String) {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partition_indexes(vec![partition])]));
    // After a restart the coordinator answers COORDINATOR_LOAD_IN_PROGRESS until it has
    // replayed its offsets partition; clients retry, and so does this helper.
    let load_in_progress = ResponseError::CoordinatorLoadInProgress.code();
    let mut resp = c.call(7, &req).await.expect("offset fetch");
    for _ in 0..100 {
        if resp.error_code != load_in_progress
            && resp.topics[0].partitions[0].error_code != load_in_progress
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        resp = c.call(7, &req).await.expect("offset fetch");
    }
    let p = &resp.topics[0].partitions[0];
    assert_eq!(
        (resp.error_code, p.error_code),
        (0, 0),
        "offset fetch failed"
    );
    (
        p.committed_offset,
        p.metadata
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_kill9() {
    let mut broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker.create_topic("orders", 3, &[]).await;
    let mut c = broker.connect().await;
    for p in 0..3 {
        assert_eq!(
            commit(
                &mut c,
                "billing",
                (-1, ""),
                "orders",
                p,
                100 + i64::from(p),
                "m"
            )
            .await,
            0
        );
    }
    assert_eq!(
        commit(&mut c, "billing", (-1, ""), "orders", 1, 250, "later").await,
        0
    );
    broker.kill9();
    broker.restart();
    let mut c = broker.connect().await;
    assert_eq!(
        fetch_committed(&mut c, "billing", "orders", 0).await,
        (100, "m".to_string())
    );
    assert_eq!(
        fetch_committed(&mut c, "billing", "orders", 1).await,
        (250, "later".to_string())
    );
    assert_eq!(
        fetch_committed(&mut c, "billing", "orders", 2).await,
        (102, "m".to_string())
    );
    assert_eq!(fetch_committed(&mut c, "nobody", "orders", 0).await.0, -1);
    let listed = c
        .call(4, &ListGroupsRequest::default())
        .await
        .expect("list groups");
    assert!(listed
        .groups
        .iter()
        .any(|g| g.group_id.0.as_str() == "billing" && g.group_state.as_str() == "Empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commits_get_kafka_errors() {
    let broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker.create_topic("orders", 1, &[]).await;
    let mut c = broker.connect().await;
    assert_eq!(commit(&mut c, "g", (-1, ""), "missing", 0, 1, "").await, 3);
    assert_eq!(commit(&mut c, "g", (-1, ""), "orders", 9, 1, "").await, 3);
    assert_eq!(
        commit(&mut c, "g", (-1, ""), "orders", 0, 1, &"x".repeat(5000)).await,
        12
    );
    assert_eq!(
        commit(&mut c, "g", (3, "ghost"), "orders", 0, 1, "").await,
        25
    );
    assert_eq!(commit(&mut c, "", (-1, ""), "orders", 0, 1, "").await, 24);
    // The group still works after all of that.
    assert_eq!(commit(&mut c, "g", (-1, ""), "orders", 0, 7, "").await, 0);
    assert_eq!(fetch_committed(&mut c, "g", "orders", 0).await.0, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_empty_groups_expire_after_retention() {
    let mut broker = TestBroker::start(
        env!("CARGO_BIN_EXE_riffle"),
        &["--offsets-retention-minutes", "0"],
    );
    broker.create_topic("orders", 1, &[]).await;
    let mut c = broker.connect().await;
    assert_eq!(
        commit(&mut c, "idle", (-1, ""), "orders", 0, 42, "").await,
        0
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fetch_committed(&mut c, "idle", "orders", 0).await.0 != -1 {
        assert!(
            std::time::Instant::now() < deadline,
            "committed offset never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let listed = c
        .call(4, &ListGroupsRequest::default())
        .await
        .expect("list groups");
    assert!(
        listed
            .groups
            .iter()
            .all(|g| g.group_id.0.as_str() != "idle"),
        "expired group still listed"
    );
    // The expiry is durable.
    broker.kill9();
    broker.restart();
    let mut c = broker.connect().await;
    assert_eq!(fetch_committed(&mut c, "idle", "orders", 0).await.0, -1);
}

/// A data directory from before the offsets topic kept commits in the `meta` column
/// family: they move into `__consumer_offsets` when their partition is loaded, and the
/// old keys are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_stored_before_the_offsets_topic_are_moved_into_it() {
    use riffle_broker::group::offsets;
    use riffle_broker::group::Committed;
    use riffle_broker::storage::{Mutation, Store, CF_META};

    let mut broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker.create_topic("orders", 2, &[]).await;
    assert!(broker.terminate().success());
    {
        let store = Store::open(&broker.data_dir()).expect("open data dir");
        let old = |offset, metadata: &str| Committed {
            offset,
            leader_epoch: -1,
            metadata: metadata.into(),
            commit_ms: riffle_broker::log::now_ms(),
        };
        store
            .write(
                vec![
                    Mutation::Put {
                        cf: CF_META,
                        key: offsets::key("legacy", "orders", 0),
                        value: old(17, "before").encode(),
                    },
                    Mutation::Put {
                        cf: CF_META,
                        key: offsets::key("legacy", "orders", 1),
                        value: old(23, "").encode(),
                    },
                ],
                true,
            )
            .await
            .expect("write old commits");
    }
    broker.restart();
    let mut c = broker.connect().await;
    // The partition loads in the background: COORDINATOR_LOAD_IN_PROGRESS until then.
    let mut got = (-1, String::new());
    for _ in 0..100 {
        got = fetch_committed(&mut c, "legacy", "orders", 0).await;
        if got.0 != -1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(got, (17, "before".to_string()));
    assert_eq!(fetch_committed(&mut c, "legacy", "orders", 1).await.0, 23);
    // Newer commits win over the moved ones, also after another restart.
    assert_eq!(
        commit(&mut c, "legacy", (-1, ""), "orders", 1, 40, "new").await,
        0
    );
    assert!(broker.terminate().success());
    {
        let store = Store::open(&broker.data_dir()).expect("open data dir");
        let left = store.scan_prefix(CF_META, b"o/").expect("scan");
        assert!(
            left.is_empty(),
            "old commit keys left behind: {}",
            left.len()
        );
    }
    broker.restart();
    let mut c = broker.connect().await;
    let mut got = (-1, String::new());
    for _ in 0..100 {
        got = fetch_committed(&mut c, "legacy", "orders", 1).await;
        if got.0 != -1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(got, (40, "new".to_string()));
    assert_eq!(
        fetch_committed(&mut c, "legacy", "orders", 0).await,
        (17, "before".to_string())
    );
}
