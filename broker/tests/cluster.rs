//! Cluster tests with real broker processes on loopback: formation, replication,
//! failover after kill -9 without losing an acknowledged write, ISR shrink/expand with
//! SIGSTOP/SIGCONT, and replica logs compared batch by batch afterwards.
//!
//! Guarantee under test: with replication factor 3 and `min.insync.replicas=2`, every
//! batch acknowledged with acks=all is present at its acknowledged offset on every
//! in-sync replica, across leader crashes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use riffle_client::testkit::{broker_binary, TestBroker};
use riffle_client::{decode_records, encode_batch, Connection, NewRecord};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Brokers 1..=n; the first `voters` of them form the metadata quorum.
struct Cluster {
    nodes: Vec<TestBroker>,
}

impl Cluster {
    fn start(n: usize, voters: usize, extra: &[&str]) -> Cluster {
        let rpc: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let voter_arg = (0..voters)
            .map(|i| format!("{}@{}", i + 1, rpc[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<TestBroker> = (0..n)
            .map(|i| {
                let id = (i + 1).to_string();
                let mut args = vec![
                    "--node-id",
                    &id,
                    "--rpc-listen",
                    &rpc[i],
                    "--voters",
                    &voter_arg,
                    "--broker-heartbeat-interval-ms",
                    "200",
                    "--broker-session-timeout-ms",
                    "1500",
                ];
                args.extend_from_slice(extra);
                TestBroker::launch(broker_binary(), &args)
            })
            .collect();
        for b in &mut nodes {
            b.wait_serving();
        }
        Cluster { nodes }
    }

    fn node(&mut self, id: i32) -> &mut TestBroker {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Metadata of `topic` from the first running broker that answers.
    async fn partition(&mut self, topic: &str, p: i32) -> Option<(i32, Vec<i32>, i32)> {
        for b in &mut self.nodes {
            if !b.is_running() {
                continue;
            }
            let Ok(mut c) = Connection::connect(&b.kafka).await else {
                continue;
            };
            let req = MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(name(topic))),
            ]));
            let Ok(resp) = tokio::time::timeout(Duration::from_secs(2), c.call(9, &req)).await
            else {
                continue;
            };
            let Ok(resp) = resp else { continue };
            let part = resp
                .topics
                .first()?
                .partitions
                .iter()
                .find(|x| x.partition_index == p)?
                .clone();
            return Some((
                part.leader_id.0,
                part.isr_nodes.iter().map(|b| b.0).collect(),
                part.leader_epoch,
            ));
        }
        None
    }

    /// Waits for a leader other than `not` with an ISR of at least `isr` brokers.
    async fn wait_leader(&mut self, topic: &str, p: i32, not: i32, isr: usize) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((leader, in_sync, _)) = self.partition(topic, p).await {
                if leader >= 0 && leader != not && in_sync.len() >= isr {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "no leader for {topic}-{p}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every running replica's `(log_end, batches)` for a partition.
    fn replica_logs(&self, topic: &str, p: i32) -> Vec<(i64, i64, serde_json::Value)> {
        self.nodes
            .iter()
            .filter_map(|b| {
                let (status, body) = b.http_get(&format!("/v1/partitions/{topic}/{p}")).ok()?;
                if status != 200 {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                Some((
                    v["log_end"].as_i64()?,
                    v["high_watermark"].as_i64()?,
                    v["batches"].clone(),
                ))
            })
            .collect()
    }
}

async fn create_topic(
    b: &TestBroker,
    topic: &str,
    partitions: i32,
    rf: i16,
    assignment: Option<Vec<i32>>,
    configs: &[(&str, &str)],
) -> i16 {
    let mut c = Connection::connect(&b.kafka).await.expect("connect");
    let mut t = CreatableTopic::default()
        .with_name(name(topic))
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(Some(StrBytes::from_string(v.to_string())))
                })
                .collect(),
        );
    t = match assignment {
        Some(a) => t
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(vec![CreatableReplicaAssignment::default()
                .with_partition_index(0)
                .with_broker_ids(a.into_iter().map(BrokerId).collect())]),
        None => t
            .with_num_partitions(partitions)
            .with_replication_factor(rf),
    };
    let resp = c
        .call(
            7,
            &CreateTopicsRequest::default()
                .with_topics(vec![t])
                .with_timeout_ms(10_000),
        )
        .await
        .expect("create topics");
    resp.topics[0].error_code
}

fn batch(values: &[String]) -> Bytes {
    let recs: Vec<NewRecord> = values
        .iter()
        .map(|v| NewRecord {
            key: None,
            value: Some(Bytes::from(v.clone())),
            timestamp: 1,
        })
        .collect();
    encode_batch(&recs, Compression::None, None).expect("encode")
}

async fn produce(
    addr: &str,
    topic: &str,
    values: &[String],
    acks: i16,
) -> Result<(i16, i64), String> {
    let mut c = Connection::connect(addr).await.map_err(|e| e.to_string())?;
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch(values)))])]);
    let resp = tokio::time::timeout(Duration::from_secs(10), c.call(9, &req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let p = &resp.responses[0].partition_responses[0];
    Ok((p.error_code, p.base_offset))
}

async fn fetch_all(addr: &str, topic: &str) -> Vec<(i64, String)> {
    let mut c = Connection::connect(addr).await.expect("connect");
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let req = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]);
        let resp = c.call(7, &req).await.expect("fetch");
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch error");
        let recs = decode_records(p.records.clone().unwrap_or_default()).expect("decode");
        let before = out.len();
        for r in recs {
            let (at, _key, value, _ts) = r;
            if at >= offset {
                out.push((
                    at,
                    String::from_utf8_lossy(&value.unwrap_or_default()).into_owned(),
                ));
            }
        }
        if out.len() == before {
            return out;
        }
        offset = out.last().map(|x| x.0 + 1).unwrap_or(offset);
    }
}

/// RF3, min.insync.replicas=2: the leader is killed with SIGKILL three times under
/// acks=all load and restarted. Every acknowledged batch is afterwards at its
/// acknowledged offset, no record appears twice, and all three replica logs are equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_kills() {
    let mut cl = Cluster::start(3, 3, &["--replica-lag-time-max-ms", "3000"]);
    let code = create_topic(
        &cl.nodes[0],
        "orders",
        1,
        3,
        None,
        &[("min.insync.replicas", "2")],
    )
    .await;
    assert_eq!(code, 0);
    let mut leader = cl.wait_leader("orders", 0, -1, 3).await;
    let mut acked: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut failovers = Vec::new();
    for round in 0..3 {
        for i in 0..40 {
            let values: Vec<String> = (0..5).map(|j| format!("r{round}-b{i}-{j}")).collect();
            let addr = cl.node(leader).kafka.clone();
            if let Ok((0, base)) = produce(&addr, "orders", &values, -1).await {
                acked.insert(base, values);
            }
        }
        let killed = Instant::now();
        cl.node(leader).kill9();
        let old = leader;
        // Failover time: kill until the next acknowledged write.
        let probe = vec![format!("probe-{round}")];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            leader = cl.wait_leader("orders", 0, old, 2).await;
            let addr = cl.node(leader).kafka.clone();
            if let Ok((0, base)) = produce(&addr, "orders", &probe, -1).await {
                acked.insert(base, probe.clone());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no write accepted after killing {old}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failovers.push(killed.elapsed());
        cl.node(old).restart();
    }
    eprintln!("failover times (kill -9 to next acknowledged write): {failovers:?}");

    // All three back in sync, logs equal batch by batch.
    cl.wait_leader("orders", 0, -1, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = cl.replica_logs("orders", 0);
        let ends: Vec<i64> = logs.iter().map(|l| l.0).collect();
        if logs.len() == 3 && ends.iter().all(|e| *e == ends[0]) && logs.iter().all(|l| l.1 == l.0)
        {
            break logs;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(logs[0].2, logs[1].2, "replica logs differ");
    assert_eq!(logs[0].2, logs[2].2, "replica logs differ");

    let records = fetch_all(&cl.node(leader).kafka.clone(), "orders").await;
    let by_offset: BTreeMap<i64, String> = records.iter().cloned().collect();
    for (base, values) in &acked {
        for (k, v) in values.iter().enumerate() {
            assert_eq!(
                by_offset.get(&(base + k as i64)),
                Some(v),
                "acknowledged record lost or moved"
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (_, v) in &records {
        assert!(seen.insert(v.clone()), "record {v} stored twice");
    }
    let worst = failovers.iter().max().copied().unwrap_or_default();
    assert!(worst < Duration::from_secs(10), "failover took {worst:?}");
}

/// One voter, topic on brokers 1,2,3 led by 1: freezing one follower shrinks the ISR and
/// acks=all continues; freezing both fails acks=all with NOT_ENOUGH_REPLICAS; thawing
/// them brings them back into the ISR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isr_follows_stopped_followers() {
    let mut cl = Cluster::start(3, 1, &["--replica-lag-time-max-ms", "1000"]);
    let code = create_topic(
        &cl.nodes[0],
        "isr",
        -1,
        -1,
        Some(vec![1, 2, 3]),
        &[("min.insync.replicas", "2")],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(cl.wait_leader("isr", 0, -1, 3).await, 1);
    let leader = cl.node(1).kafka.clone();
    assert_eq!(produce(&leader, "isr", &["a".into()], -1).await, Ok((0, 0)));

    cl.node(3).signal(libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, isr, _) = cl.partition("isr", 0).await.expect("metadata");
        if isr.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "ISR did not shrink: {isr:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        produce(&leader, "isr", &["b".into()], -1)
            .await
            .map(|r| r.0),
        Ok(0)
    );

    cl.node(2).signal(libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = produce(&leader, "isr", &["c".into()], -1).await;
        if r.as_ref().map(|x| x.0) == Ok(19) {
            break;
        }
        assert!(Instant::now() < deadline, "acks=all never refused: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // acks=1 still works on the leader.
    assert_eq!(
        produce(&leader, "isr", &["d".into()], 1).await.map(|r| r.0),
        Ok(0)
    );

    cl.node(2).signal(libc::SIGCONT);
    cl.node(3).signal(libc::SIGCONT);
    cl.wait_leader("isr", 0, -1, 3).await;
    assert_eq!(
        produce(&leader, "isr", &["e".into()], -1)
            .await
            .map(|r| r.0),
        Ok(0)
    );
}

/// A broker that is not a voter joins as a learner, registers and hosts replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_voter_joins_and_hosts_replicas() {
    let mut cl = Cluster::start(4, 3, &[]);
    let code = create_topic(&cl.nodes[0], "four", -1, -1, Some(vec![4, 1]), &[]).await;
    assert_eq!(code, 0);
    assert_eq!(cl.wait_leader("four", 0, -1, 2).await, 4);
    let addr = cl.node(4).kafka.clone();
    assert_eq!(produce(&addr, "four", &["x".into()], -1).await, Ok((0, 0)));
    // Asking for more replicas than live brokers is refused.
    assert_eq!(
        create_topic(&cl.nodes[0], "too-many", 1, 5, None, &[]).await,
        38
    );
}
