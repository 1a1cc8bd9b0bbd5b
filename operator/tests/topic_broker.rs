//! Topic reconciliation against a real `riffle` broker process.

use std::collections::BTreeMap;

use riffle_client::testkit::{broker_binary, TestBroker};
use riffle_operator::crd::{ClusterRef, DeletionPolicy, TopicSpec};
use riffle_operator::topic::{cleanup, reconcile, PlanError, Reconciled};

fn spec(partitions: i32, config: &[(&str, Option<&str>)], policy: DeletionPolicy) -> TopicSpec {
    TopicSpec {
        cluster_ref: ClusterRef { name: "c".into() },
        topic_name: None,
        partitions,
        replication_factor: 1,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(String::from)))
            .collect(),
        deletion_policy: policy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_reaches_the_broker() {
    let broker = TestBroker::start(broker_binary(), &["--auto-create-topics-enable", "false"]);
    let mut c = broker.connect().await;

    // Create with configs.
    let s = spec(
        3,
        &[("retention.ms", Some("3600000")), ("segment.ms", None)],
        DeletionPolicy::Delete,
    );
    let Reconciled::Ready(d) = reconcile(&mut c, "orders", &s).await.expect("create") else {
        panic!("not ready")
    };
    assert_eq!((d.partitions, d.replication_factor), (3, 1));
    assert_eq!(
        c.topic_overrides("orders")
            .await
            .expect("configs")
            .get("retention.ms")
            .map(String::as_str),
        Some("3600000")
    );

    // Grow partitions and change config.
    let s = spec(
        5,
        &[("retention.ms", Some("7200000")), ("segment.ms", None)],
        DeletionPolicy::Delete,
    );
    let Reconciled::Ready(d) = reconcile(&mut c, "orders", &s).await.expect("grow") else {
        panic!("not ready")
    };
    assert_eq!(d.partitions, 5);

    // Drift made behind the operator's back is reverted; the null-valued key is left alone.
    let mut drift = BTreeMap::new();
    drift.insert("retention.ms".to_string(), Some("1".to_string()));
    drift.insert("max.message.bytes".to_string(), Some("2048".to_string()));
    drift.insert("segment.ms".to_string(), Some("60000".to_string()));
    c.alter_topic_configs("orders", &drift)
        .await
        .expect("drift");
    reconcile(&mut c, "orders", &s).await.expect("revert");
    let o = c.topic_overrides("orders").await.expect("configs");
    assert_eq!(o.get("retention.ms").map(String::as_str), Some("7200000"));
    assert_eq!(o.get("max.message.bytes"), None);
    assert_eq!(o.get("segment.ms").map(String::as_str), Some("60000"));

    // A shrink is refused and changes nothing.
    let s2 = spec(2, &[], DeletionPolicy::Delete);
    match reconcile(&mut c, "orders", &s2).await.expect("shrink") {
        Reconciled::Invalid(PlanError::PartitionDecreaseNotSupported {
            current: 5,
            wanted: 2,
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        c.describe_topic("orders")
            .await
            .expect("describe")
            .map(|d| d.partitions),
        Some(5)
    );

    // Retain keeps the topic; Delete removes it (and tolerates it being gone already).
    cleanup(&mut c, "orders", DeletionPolicy::Retain)
        .await
        .expect("retain");
    assert!(c
        .describe_topic("orders")
        .await
        .expect("describe")
        .is_some());
    cleanup(&mut c, "orders", DeletionPolicy::Delete)
        .await
        .expect("delete");
    assert!(c
        .describe_topic("orders")
        .await
        .expect("describe")
        .is_none());
    cleanup(&mut c, "orders", DeletionPolicy::Delete)
        .await
        .expect("already gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_reported_not_applied() {
    let broker = TestBroker::start(broker_binary(), &[]);
    let mut c = broker.connect().await;
    let s = spec(1, &[("retention.ms", Some("soon"))], DeletionPolicy::Delete);
    let err = reconcile(&mut c, "bad", &s)
        .await
        .expect_err("invalid config refused");
    assert!(
        err.to_string().contains("40"),
        "INVALID_CONFIG expected, got {err}"
    );
    assert!(c.describe_topic("bad").await.expect("describe").is_none());
}
