//! Integration tests against real `riffle` processes: durability across kill -9,
//! pipelining, idempotence across restarts, retention, long-poll, clean shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use riffle_client::testkit::TestBroker;
use riffle_client::{decode_records, encode_batch, Connection, NewRecord, ProducerFields};

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn records(values: &[String], ts: i64) -> Vec<NewRecord> {
    values
        .iter()
        .map(|v| NewRecord {
            key: Some(Bytes::from(format!("k-{v}"))),
            value: Some(Bytes::from(v.clone())),
            timestamp: ts,
        })
        .collect()
}

fn produce_request(topic: &str, partition: i32, batch: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])])
}

/// Produces one batch and returns (error code, base offset).
async fn produce(c: &mut Connection, topic: &str, batch: Bytes, acks: i16) -> (i16, i64) {
    let resp = c
        .call(9, &produce_request(topic, 0, batch, acks))
        .await
        .expect("produce");
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(10 << 20)
                .with_current_leader_epoch(-1)
                .with_log_start_offset(-1)])])
}

/// Reads partition 0 from `offset` to the end: (offset → value).
async fn read_all(c: &mut Connection, topic: &str, mut offset: i64) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    loop {
        let resp = c
            .call(12, &fetch_request(topic, offset, 0))
            .await
            .expect("fetch");
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch error");
        let recs = decode_records(p.records.clone().unwrap_or_default()).expect("decode");
        if recs.is_empty() {
            return out;
        }
        for (o, _k, v, _ts) in recs {
            if o >= offset {
                out.insert(
                    o,
                    String::from_utf8_lossy(&v.unwrap_or_default()).into_owned(),
                );
            }
            offset = offset.max(o + 1);
        }
    }
}

async fn list_offset(c: &mut Connection, topic: &str, ts: i64) -> (i16, i64) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(ts)
                .with_current_leader_epoch(-1)])]);
    let resp = c.call(7, &req).await.expect("list offsets");
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// Guarantee under test: every write acknowledged to the client (acks=all with the default
/// policy, acks=1 with `never`) is present after kill -9 and restart, at the offset that was
/// acknowledged, with the same contents; offsets continue without gaps or reuse.
async fn acked_writes_survive_kill9(policy: &str, acks: i16) {
    let mut broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &["--fsync-policy", policy]);
    broker.create_topic("durable", 1, &[]).await;
    let acked: Arc<Mutex<BTreeMap<i64, Vec<String>>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let addr = broker.kafka.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Connection::connect(&addr).await.expect("connect");
            for n in 0.. {
                let values: Vec<String> = (0..10).map(|i| format!("w{w}-b{n}-r{i}")).collect();
                let batch = encode_batch(&records(&values, now_ms()), Compression::None, None)
                    .expect("batch");
                let Ok(resp) = c.call(9, &produce_request("durable", 0, batch, acks)).await else {
                    return;
                };
                let p = &resp.responses[0].partition_responses[0];
                if p.error_code == 0 {
                    acked.lock().expect("lock").insert(p.base_offset, values);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 20,
        "too few acknowledged batches: {}",
        acked.len()
    );
    broker.restart();
    let mut c = broker.connect().await;
    let stored = read_all(&mut c, "durable", 0).await;
    for (base, values) in &acked {
        for (i, v) in values.iter().enumerate() {
            assert_eq!(
                stored.get(&(base + i as i64)),
                Some(v),
                "acknowledged record lost at offset {}",
                base + i as i64
            );
        }
    }
    // Offsets are dense from 0 and new writes continue after the recovered end.
    let end = stored.keys().next_back().copied().unwrap_or(-1) + 1;
    assert_eq!(stored.len() as i64, end);
    let batch = encode_batch(
        &records(&["after".into()], now_ms()),
        Compression::None,
        None,
    )
    .expect("batch");
    assert_eq!(produce(&mut c, "durable", batch, -1).await, (0, end));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_writes_survive_kill9_with_default_policy() {
    acked_writes_survive_kill9("acks-all", -1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_writes_survive_kill9_even_without_fsync() {
    acked_writes_survive_kill9("never", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produces_are_answered_in_order() {
    let broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker.create_topic("pipe", 1, &[]).await;
    let mut c = broker.connect().await;
    let mut sent = Vec::new();
    let mut frames = Vec::new();
    for n in 0..40 {
        let values: Vec<String> = (0..(1 + n % 3)).map(|i| format!("{n}-{i}")).collect();
        let batch =
            encode_batch(&records(&values, now_ms()), Compression::Lz4, None).expect("batch");
        let (frame, corr) = c
            .encode(9, &produce_request("pipe", 0, batch, -1))
            .expect("encode");
        frames.extend_from_slice(&frame);
        sent.push((corr, values.len() as i64));
    }
    c.send_raw(&frames).await.expect("send");
    let mut expected = 0;
    for (corr, count) in sent {
        let resp = c
            .receive::<ProduceRequest>(9, corr)
            .await
            .expect("in-order response");
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, expected));
        expected += count;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_dedups_fences_and_survives_restart() {
    let mut broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker.create_topic("idem", 1, &[]).await;
    let mut c = broker.connect().await;
    let init = c
        .call(
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await
        .expect("init");
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let batch = |seq: i32, epoch: i16, n: usize| {
        let values: Vec<String> = (0..n).map(|i| format!("s{}", seq + i as i32)).collect();
        encode_batch(
            &records(&values, now_ms()),
            Compression::None,
            Some(ProducerFields {
                id: pid,
                epoch,
                base_sequence: seq,
            }),
        )
        .expect("batch")
    };
    assert_eq!(produce(&mut c, "idem", batch(0, 0, 5), -1).await, (0, 0));
    assert_eq!(produce(&mut c, "idem", batch(5, 0, 5), -1).await, (0, 5));
    // A retry of an earlier batch gets its original offset and is not written again.
    assert_eq!(produce(&mut c, "idem", batch(0, 0, 5), -1).await, (0, 0));
    // A gap is refused.
    assert_eq!(produce(&mut c, "idem", batch(12, 0, 1), -1).await.0, 45);

    // Producer state is rebuilt on restart: the retry is still recognised.
    broker.restart();
    let mut c = broker.connect().await;
    assert_eq!(produce(&mut c, "idem", batch(5, 0, 5), -1).await, (0, 5));
    assert_eq!(produce(&mut c, "idem", batch(10, 0, 1), -1).await, (0, 10));

    // An epoch bump (KIP-360) fences the old epoch.
    let bumped = c
        .call(
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(0),
        )
        .await
        .expect("bump");
    assert_eq!(
        (
            bumped.error_code,
            bumped.producer_id.0,
            bumped.producer_epoch
        ),
        (0, pid, 1)
    );
    assert_eq!(produce(&mut c, "idem", batch(0, 1, 1), -1).await, (0, 11));
    assert_eq!(produce(&mut c, "idem", batch(11, 0, 1), -1).await.0, 47);
    assert_eq!(read_all(&mut c, "idem", 0).await.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_time_and_size_advances_log_start() {
    let broker = TestBroker::start(
        env!("CARGO_BIN_EXE_riffle"),
        &["--log-retention-check-interval-ms", "100"],
    );
    broker
        .create_topic("old", 1, &[("retention.ms", "60000")])
        .await;
    broker
        .create_topic(
            "big",
            1,
            &[("retention.bytes", "3000"), ("segment.bytes", "1000")],
        )
        .await;
    let mut c = broker.connect().await;
    let hour_ago = now_ms() - 3_600_000;
    for i in 0..5 {
        let b = encode_batch(
            &records(&[format!("old-{i}")], hour_ago),
            Compression::None,
            None,
        )
        .expect("batch");
        assert_eq!(produce(&mut c, "old", b, 1).await.0, 0);
    }
    let payload = "x".repeat(400);
    for _ in 0..20 {
        let b = encode_batch(
            &records(std::slice::from_ref(&payload), now_ms()),
            Compression::None,
            None,
        )
        .expect("batch");
        assert_eq!(produce(&mut c, "big", b, 1).await.0, 0);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, old_start) = list_offset(&mut c, "old", -2).await;
        let (_, big_start) = list_offset(&mut c, "big", -2).await;
        if old_start == 5 && big_start >= 14 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not run: old={old_start} big={big_start}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading below the log start is out of range; the newest data is still there.
    let resp = c
        .call(12, &fetch_request("old", 0, 0))
        .await
        .expect("fetch");
    assert_eq!(resp.responses[0].partitions[0].error_code, 1);
    let (_, big_start) = list_offset(&mut c, "big", -2).await;
    let kept = read_all(&mut c, "big", big_start).await;
    assert_eq!(kept.keys().next_back(), Some(&19));
    assert!(
        kept.len() <= 8,
        "retention.bytes kept {} records",
        kept.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_poll_wakes_on_new_data() {
    let broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker.create_topic("poll", 1, &[]).await;
    let mut consumer = broker.connect().await;
    let mut producer = broker.connect().await;
    let started = Instant::now();
    let waiter =
        tokio::spawn(async move { consumer.call(12, &fetch_request("poll", 0, 10_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = encode_batch(
        &records(&["wake".into()], now_ms()),
        Compression::None,
        None,
    )
    .expect("batch");
    assert_eq!(produce(&mut producer, "poll", b, 1).await.0, 0);
    let resp = waiter.await.expect("join").expect("fetch");
    let elapsed = started.elapsed();
    let recs = decode_records(
        resp.responses[0].partitions[0]
            .records
            .clone()
            .unwrap_or_default(),
    )
    .expect("decode");
    assert_eq!(recs.len(), 1);
    assert!(
        elapsed < Duration::from_secs(5),
        "long-poll did not wake: {elapsed:?}"
    );
    // With nothing new it waits the full max_wait and returns an empty, non-null record set.
    let mut c = broker.connect().await;
    let t = Instant::now();
    let resp = c
        .call(12, &fetch_request("poll", 1, 500))
        .await
        .expect("fetch");
    assert!(t.elapsed() >= Duration::from_millis(450));
    assert_eq!(
        resp.responses[0].partitions[0].records.as_deref(),
        Some(&[][..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_data() {
    let mut broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker
        .create_topic("term", 3, &[("retention.ms", "-1")])
        .await;
    let mut c = broker.connect().await;
    for i in 0..10 {
        let b = encode_batch(
            &records(&[format!("v{i}")], now_ms()),
            Compression::Gzip,
            None,
        )
        .expect("batch");
        assert_eq!(produce(&mut c, "term", b, 1).await, (0, i));
    }
    let status = broker.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", broker.log());
    broker.restart();
    let mut c = broker.connect().await;
    assert_eq!(read_all(&mut c, "term", 0).await.len(), 10);
    let md = c
        .call(12, &MetadataRequest::default().with_topics(None))
        .await
        .expect("metadata");
    let t = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some("term"))
        .expect("topic kept");
    assert_eq!(t.partitions.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let broker = TestBroker::start(env!("CARGO_BIN_EXE_riffle"), &[]);
    broker.create_topic("safe", 1, &[]).await;
    let mut c = broker.connect().await;
    let b = encode_batch(
        &records(&["keep".into()], now_ms()),
        Compression::None,
        None,
    )
    .expect("batch");
    assert_eq!(produce(&mut c, "safe", b, -1).await.0, 0);
    let hostile: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 3, 1, 2, 3],    // shorter than a header
        vec![0x7f, 0xff, 0xff, 0xff], // size over the limit
        vec![0xff, 0xff, 0xff, 0xf0], // negative size
        [
            &[0, 0, 0, 12][..],
            &[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        ]
        .concat(), // unknown API key
        [
            &[0, 0, 0, 14][..],
            &[0, 3, 0, 1, 0, 0, 0, 1, 0, 0],
            &0x7fff_ffffi32.to_be_bytes(),
        ]
        .concat(), // huge array count
    ];
    for frame in hostile {
        let mut bad = broker.connect().await;
        bad.send_raw(&frame).await.expect("send");
        assert!(
            bad.read_frame().await.is_err(),
            "connection should be closed for {frame:?}"
        );
    }
    // Everyone else is still served and nothing was lost.
    let mut c = broker.connect().await;
    assert_eq!(
        read_all(&mut c, "safe", 0)
            .await
            .get(&0)
            .map(String::as_str),
        Some("keep")
    );
}
