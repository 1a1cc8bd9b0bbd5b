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
            if let Some(found) = partition_on(&b.kafka, topic, p).await {
                return Some(found);
            }
        }
        None
    }

    /// Waits for a leader other than `not` with an ISR of at least `isr` brokers,
    /// as seen by the leader itself too (a broker applies metadata a little after
    /// the quorum commits it, so another broker's view can run ahead of the leader's).
    async fn wait_leader(&mut self, topic: &str, p: i32, not: i32, isr: usize) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((leader, in_sync, _)) = self.partition(topic, p).await {
                if leader >= 0 && leader != not && in_sync.len() >= isr {
                    let own = partition_on(&self.node(leader).kafka.clone(), topic, p).await;
                    if own.is_some_and(|(l, _, _)| l == leader) {
                        return leader;
                    }
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

/// `(leader, isr, leader_epoch)` of a partition as the broker at `addr` sees it.
async fn partition_on(addr: &str, topic: &str, p: i32) -> Option<(i32, Vec<i32>, i32)> {
    let mut c = Connection::connect(addr).await.ok()?;
    let req = MetadataRequest::default().with_topics(Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(name(topic))),
    ]));
    let resp = tokio::time::timeout(Duration::from_secs(2), c.call(9, &req))
        .await
        .ok()?
        .ok()?;
    let part = resp
        .topics
        .first()?
        .partitions
        .iter()
        .find(|x| x.partition_index == p)?
        .clone();
    Some((
        part.leader_id.0,
        part.isr_nodes.iter().map(|b| b.0).collect(),
        part.leader_epoch,
    ))
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
    // The leader reports how long the stopped follower has been behind.
    let metrics = cl.node(1).http_get("/metrics").expect("metrics").1;
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    };
    let lag = "riffle_replica_lag_seconds{partition=\"0\",replica=\"3\",topic=\"isr\"}";
    assert!(
        value(lag) > 0.5,
        "lag of the stopped follower: {}",
        value(lag)
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

/// Two of three voters killed: metadata changes fail with a clear error in bounded
/// time, while the surviving broker keeps serving the partition it leads alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_keep_serving_without_a_metadata_majority() {
    let mut cl = Cluster::start(3, 3, &[]);
    assert_eq!(
        create_topic(&cl.nodes[0], "solo", -1, -1, Some(vec![1]), &[]).await,
        0
    );
    assert_eq!(cl.wait_leader("solo", 0, -1, 1).await, 1);
    cl.node(2).kill9();
    cl.node(3).kill9();
    let started = Instant::now();
    let code = create_topic(&cl.nodes[0], "later", 1, 1, None, &[]).await;
    assert!(
        code == 7 || code == 41,
        "expected REQUEST_TIMED_OUT or NOT_CONTROLLER, got {code}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let addr = cl.node(1).kafka.clone();
    for i in 0..3 {
        let r = produce(&addr, "solo", &[format!("v{i}")], 1).await;
        assert_eq!(r, Ok((0, i)), "leader stopped serving");
    }
    let got = fetch_all(&addr, "solo").await;
    assert_eq!(got.len(), 3);
}

/// Broker-to-broker RPCs refuse a foreign cluster id, malformed payloads, unknown
/// partitions and stale epochs with errors; the log is unchanged and the broker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rpc_input_is_refused() {
    use riffle_broker::rpc::{
        Envelope, FetchPartition as RpcPartition, FetchRequest as RpcFetch, Peers,
    };
    let rpc_port = free_port();
    let rpc = format!("127.0.0.1:{rpc_port}");
    let b = TestBroker::start(broker_binary(), &["--rpc-listen", &rpc]);
    assert_eq!(create_topic(&b, "guarded", 1, 1, None, &[]).await, 0);
    assert_eq!(
        produce(&b.kafka, "guarded", &["keep".into()], -1).await,
        Ok((0, 0))
    );
    let before = b.http_get("/v1/partitions/guarded/0").expect("http").1;

    let peers = Peers::new(Duration::from_secs(2));
    let mut quorum = peers.quorum(&rpc).expect("client");
    let foreign = quorum
        .vote(Envelope {
            cluster_id: "someone-else".into(),
            payload: Bytes::from_static(b"{}"),
        })
        .await
        .expect_err("foreign cluster accepted");
    assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
    let garbage = quorum
        .append_entries(Envelope {
            cluster_id: String::new(),
            payload: Bytes::from_static(b"\x00garbage"),
        })
        .await
        .expect_err("garbage accepted");
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    let control = quorum
        .control(Envelope {
            cluster_id: String::new(),
            payload: Bytes::from_static(b"[1,2,3]"),
        })
        .await
        .expect_err("garbage controller request accepted");
    assert_eq!(control.code(), tonic::Code::InvalidArgument);

    // Follower fetches: a stale leader epoch and an unknown topic id get Kafka error codes.
    let (_, body) = b.http_get("/v1/partitions/guarded/0").expect("http");
    let view: serde_json::Value = serde_json::from_str(&body).expect("json");
    let epoch = view["leader_epoch"].as_i64().expect("epoch") as i32;
    let mut meta = Connection::connect(&b.kafka).await.expect("connect");
    let md = meta
        .call(
            12,
            &MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(name("guarded"))),
            ])),
        )
        .await
        .expect("metadata");
    let topic_id = md.topics[0].topic_id;
    let mut repl = peers.replication(&rpc).expect("client");
    let fetch = |leader_epoch: i32, id: uuid::Uuid| RpcFetch {
        cluster_id: String::new(),
        replica_id: 9,
        max_wait_ms: 0,
        max_bytes: 1 << 20,
        partitions: vec![RpcPartition {
            topic_id: Bytes::copy_from_slice(id.as_bytes()),
            partition: 0,
            leader_epoch,
            fetch_offset: 0,
            last_fetched_epoch: -1,
            ..Default::default()
        }],
        ..Default::default()
    };
    let stale = repl
        .fetch(fetch(epoch - 1, topic_id))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(stale.partitions[0].error_code, 74, "FENCED_LEADER_EPOCH");
    let unknown = repl
        .fetch(fetch(epoch, uuid::Uuid::new_v4()))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(
        unknown.partitions[0].error_code, 3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    let mut wrong = fetch(epoch, topic_id);
    wrong.cluster_id = "someone-else".into();
    assert_eq!(
        repl.fetch(wrong.clone())
            .await
            .expect_err("foreign fetch")
            .code(),
        tonic::Code::PermissionDenied
    );
    // The same on a Replicate stream: a stale epoch is answered with its code, and a
    // foreign cluster id ends the stream with an error.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(fetch(epoch - 1, topic_id)).await.expect("send");
    let mut answers = repl
        .replicate(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let stale = answers.message().await.expect("answer").expect("one");
    assert_eq!(stale.partitions[0].error_code, 74, "FENCED_LEADER_EPOCH");
    tx.send(wrong).await.expect("send");
    assert_eq!(
        answers.message().await.expect_err("foreign stream").code(),
        tonic::Code::PermissionDenied
    );

    // Raw garbage on the RPC port only closes that connection.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&rpc).expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02garbage garbage");
    }
    assert_eq!(
        produce(&b.kafka, "guarded", &["after".into()], -1).await,
        Ok((0, 1))
    );
    let after = b.http_get("/v1/partitions/guarded/0").expect("http").1;
    let batches =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json")["batches"][0].clone();
    assert_eq!(batches(&before), batches(&after), "first batch changed");
}
