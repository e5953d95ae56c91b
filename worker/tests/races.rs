//! Races between create, push, flush, seal, release, job drop and migration,
//! run concurrently many times on one store with three tiers (memory, a tiny
//! local directory, an in-memory object store), and the real case they
//! reproduce: a job's last partition released while a new partition of the
//! same job is created but not yet flushed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use common::{data, key, options, read_sub};
use terrace_tier_api::{ErrorKind, PartitionKey, TierResult};
use terrace_worker::{Reservation, Store, StoreHooks};

/// What one writer task did with its partition.
enum Outcome {
    Kept(PartitionKey, HashMap<u32, Vec<Bytes>>),
    Gone,
}

/// An error is fine only if it says the partition was released (a job drop
/// raced with it); anything else (a missing file, a poisoned partition) is a bug.
fn expect_released(result: TierResult<()>, what: &str) -> bool {
    match result {
        Ok(()) => false,
        Err(e) if e.kind() == ErrorKind::PartitionNotFound => true,
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn writer(store: Arc<Store>, key: PartitionKey, seed: u32) -> Outcome {
    let (batches, expected) = data(seed, 1 + seed % 3, 1 + seed % 5);
    let Ok(partition) = store.create(key.clone(), 2, false, false) else {
        panic!("create {key}");
    };
    for (i, batch) in batches.into_iter().enumerate() {
        if expect_released(
            partition
                .append(batch, Reservation::empty(), None, u32::MAX)
                .map(|_buffers| ()),
            "append",
        ) {
            return Outcome::Gone;
        }
        if (seed + i as u32) % 2 == 0 && expect_released(store.flush(&partition).await, "flush") {
            return Outcome::Gone;
        }
        tokio::task::yield_now().await;
    }
    if expect_released(store.seal(&partition).await, "seal") {
        return Outcome::Gone;
    }
    match seed % 4 {
        0 => {
            expect_released(store.release(&key).await, "release");
            Outcome::Gone
        }
        1 => match store.migrate(&partition).await {
            Ok(_) => Outcome::Kept(key, expected),
            Err(e) if e.kind() == ErrorKind::PartitionNotFound => Outcome::Gone,
            Err(e) => panic!("migrate {key}: {e}"),
        },
        _ => Outcome::Kept(key, expected),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_flush_seal_release_drop_and_migration_lose_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        Store::open(&options(dir.path(), 256 << 10), StoreHooks::default()).expect("open"),
    );
    let mut kept: Vec<(PartitionKey, HashMap<u32, Vec<Bytes>>)> = Vec::new();
    for round in 0..40u32 {
        let mut tasks = Vec::new();
        for k in 0..8u32 {
            let store = Arc::clone(&store);
            // Jobs 0..3 rotate, so partitions of a job come and go while others are written.
            let key = key((round % 3) as u8, round * 100 + k);
            tasks.push(tokio::spawn(writer(store, key, round * 8 + k)));
        }
        let migrator = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.migrate_once().await })
        };
        // Every fifth round a job is dropped while its partitions are written.
        if round % 5 == 4 {
            let job = key(((round + 1) % 3) as u8, 0).job;
            store.drop_job(&job).await.expect("drop job");
            kept.retain(|(k, _)| k.job != job);
        }
        for task in tasks {
            if let Outcome::Kept(key, expected) = task.await.expect("writer task") {
                kept.push((key, expected));
            }
        }
        migrator.await.expect("migrator task");
    }
    // Partitions of a job dropped in a later round are gone; the others read back exactly.
    let mut checked = 0;
    for (key, expected) in &kept {
        if store.get(key).is_err() {
            continue;
        }
        for (sub, want) in expected {
            let got = read_sub(&store, key, *sub).await.expect("read back");
            assert_eq!(&got, want, "{key} subpartition {sub}");
        }
        checked += 1;
    }
    assert!(
        checked > 20,
        "only {checked} partitions survived to be checked"
    );
    let bytes = store.tier_bytes();
    assert!(
        bytes.object > 0 && bytes.local + bytes.object > 0,
        "{bytes:?}"
    );
    // Dropping every job leaves nothing: no memory, no Terrace file, no object.
    for job in 0..3u8 {
        store.drop_job(&key(job, 0).job).await.expect("drop job");
    }
    assert_eq!(store.budget().used(), 0);
    assert_eq!(store.partitions().len(), 0);
    for d in ["a", "b"] {
        let left: Vec<String> = std::fs::read_dir(dir.path().join(d))
            .expect("list dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![terrace_worker::MARKER.to_string()], "dir {d}");
    }
    // Objects go in the background; this test runs no background task.
    store
        .delete_queued_now()
        .await
        .expect("delete queued objects");
    let object = store.tiers().object().expect("object tier");
    assert!(object.list(object.root()).await.expect("list").is_empty());
}

/// The case users hit: a job's last partition file is released (which used
/// to remove the job directory) while a new partition of the same job is
/// created but not yet flushed; its flush and seal must still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_partition_survives_the_release_of_its_jobs_last_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = options(dir.path(), 1 << 30);
    opts.object_store = None;
    let store = Arc::new(Store::open(&opts, StoreHooks::default()).expect("open"));
    for round in 0..50u32 {
        let first = key(9, round * 2);
        let second = key(9, round * 2 + 1);
        let (batches, _) = data(round, 1, 2);
        let p1 = store
            .create(first.clone(), 2, false, false)
            .expect("create");
        p1.append(batches[0].clone(), Reservation::empty(), None, u32::MAX)
            .expect("append");
        store.seal(&p1).await.expect("seal first");
        let p2 = store
            .create(second.clone(), 2, false, false)
            .expect("create second");
        p2.append(batches[0].clone(), Reservation::empty(), None, u32::MAX)
            .expect("append");
        let (release, seal) = tokio::join!(store.release(&first), store.seal(&p2));
        release.expect("release first");
        seal.expect("seal second after its job's other partition was released");
        store.drop_job(&first.job).await.expect("drop job");
    }
}
