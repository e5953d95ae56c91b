//! Worker timers on paused time (tokio's `test-util`): the object store's
//! request timeout and retry backoff, and the decommission wait, advanced by
//! the test instead of waited for. Every timer reads the one clock
//! (`terrace_rpc::clock`), so the outcomes land on exact virtual times.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions, clock};
use terrace_tier_api::ErrorKind;
use terrace_worker::{FaultyStore, ObjectOp, ObjectStoreConfig, ObjectTier, WorkerConfig};

fn tier(faulty: &Arc<FaultyStore>) -> ObjectTier {
    ObjectTier::new(
        Arc::clone(faulty) as _,
        ObjectPath::from("base"),
        "store-1",
        ObjectStoreConfig {
            url: "memory://".into(),
            request_timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_secs(1),
            ..ObjectStoreConfig::default()
        },
    )
}

#[tokio::test(start_paused = true)]
async fn object_store_retries_back_off_doubling_and_a_hung_request_times_out() {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let tier = tier(&faulty);
    let key = ObjectPath::from("base/store-1/k");
    let body = [Bytes::from_static(b"payload")];

    // Two failures, then success: backoffs of 1 s and 2 s, nothing else.
    faulty.fail_next(2);
    let started = clock::now();
    tier.put(&key, &body)
        .await
        .expect("the third attempt succeeds");
    assert_eq!(clock::elapsed(started), Duration::from_secs(3));
    assert_eq!(faulty.puts.load(Ordering::Relaxed), 3);
    assert!(tier.is_available());

    // Failing for good: 1 + 2 + 4 s of backoff, four attempts, then an
    // Unavailable error naming them.
    faulty.set_failing(true);
    let started = clock::now();
    let err = tier
        .put(&key, &body)
        .await
        .expect_err("every attempt fails");
    assert_eq!(clock::elapsed(started), Duration::from_secs(7));
    assert_eq!(faulty.puts.load(Ordering::Relaxed), 3 + 4);
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.message().contains("failed after 4 attempts"), "{err}");
    assert!(!tier.is_available());
    // Counted once, as a failed put (what `/metrics` exports by `op`).
    assert_eq!(tier.counters.failures_of(ObjectOp::Put), 1);
    faulty.set_failing(false);

    // A store that hangs: each attempt ends at the 30 s request timeout.
    faulty.set_hanging(true);
    let started = clock::now();
    let err = tier
        .put(&key, &body)
        .await
        .expect_err("every attempt hangs");
    assert_eq!(
        clock::elapsed(started),
        Duration::from_secs(4 * 30 + 7),
        "four timeouts and three backoffs"
    );
    assert!(err.message().contains("no answer within 30s"), "{err}");
    assert_eq!(tier.counters.failures_of(ObjectOp::Put), 2);
    assert_eq!(tier.counters.failures_of(ObjectOp::Get), 0);
    assert_eq!(tier.counters.failures.load(Ordering::Relaxed), 2);
    faulty.set_hanging(false);
    tier.put(&key, &body)
        .await
        .expect("the store answers again");
    assert!(tier.is_available());
}

async fn request(client: &Client, build: impl FnOnce(u64) -> Message) -> Message {
    client.request(build).await.expect("a reply").0
}

async fn partitions(address: &str) -> Option<u32> {
    let client = Client::connect(address, &ClientOptions::default())
        .await
        .ok()?;
    let reply = request(&client, |request_id| {
        Message::WorkerStats(pb::WorkerStats { request_id })
    })
    .await;
    client.close();
    match reply {
        Message::WorkerStatsReply(stats) => Some(stats.partitions),
        other => panic!("expected worker stats, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_decommission_waits_for_its_partitions_until_exactly_its_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let timeout = Duration::from_secs(600);
    let worker = terrace_worker::start(WorkerConfig {
        listen: "127.0.0.1:0".into(),
        data_dirs: vec![dir.path().join("data")],
        decommission_timeout: timeout,
        ..WorkerConfig::default()
    })
    .await
    .expect("worker starts");
    let address = worker.address.to_string();
    let client = Client::connect(&address, &ClientOptions::default())
        .await
        .expect("connect");
    let created = request(&client, |request_id| {
        Message::CreatePartition(pb::CreatePartition {
            request_id,
            key: Some(pb::PartitionKey {
                job_id: Bytes::from(vec![7u8; 16]),
                partition_id: Bytes::from_static(b"partition-1"),
            }),
            num_subpartitions: 1,
            ..Default::default()
        })
    })
    .await;
    assert!(matches!(created, Message::Ack(_)), "{created:?}");
    let started = clock::now();
    let reply = request(&client, |request_id| {
        Message::Decommission(pb::Decommission { request_id })
    })
    .await;
    assert!(matches!(reply, Message::Ack(_)), "{reply:?}");
    client.close();

    // Nobody releases the partition: the worker keeps serving it up to the
    // timeout.
    tokio::time::advance(timeout - Duration::from_secs(1)).await;
    assert_eq!(partitions(&address).await, Some(1), "still serving");

    // At the timeout it stops with the partition left (within one 200 ms
    // look at its partitions).
    let mut stopped_after = None;
    for _ in 0..100 {
        clock::sleep(Duration::from_millis(50)).await;
        // When this look began (a look at a stopped worker may take its
        // connect timeout to fail).
        let at = clock::elapsed(started);
        if partitions(&address).await.is_none() {
            stopped_after = Some(at);
            break;
        }
    }
    let stopped_after = stopped_after.expect("the worker stops after its decommission timeout");
    assert!(
        stopped_after >= timeout && stopped_after <= timeout + Duration::from_millis(300),
        "stopped {stopped_after:?} after the decommission began (timeout {timeout:?})"
    );
    worker.stop().await.expect("the worker ran cleanly");
}
