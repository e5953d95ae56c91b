//! Races between create, push, flush, seal, release, job drop and migration,
//! run concurrently many times on one store with three tiers (memory, a tiny
//! local directory, an in-memory object store), and the real case they
//! reproduce: a job's last partition released while a new partition of the
//! same job is created but not yet flushed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use terrace_tier_api::{
    BatchBuilder, Buffer, ErrorKind, JobId, PartitionId, PartitionKey, SegmentId, SubpartitionId,
    TierResult,
};
use terrace_worker::{ReadStep, Reservation, Store, StoreHooks, StoreOptions};

fn options(dir: &std::path::Path, dir_capacity: u64) -> StoreOptions {
    StoreOptions {
        dirs: vec![dir.join("a"), dir.join("b")],
        dir_capacity: Some(dir_capacity),
        dir_reserve: 0,
        memory_budget: 64 << 20,
        flush_high_watermark: 0.75,
        flush_low_watermark: 0.5,
        object_store: Some(terrace_worker::ObjectStoreSettings {
            url: "memory://".into(),
            options: Default::default(),
            request_timeout: Duration::from_secs(5),
            retries: 1,
            backoff: Duration::from_millis(10),
        }),
        object_part_size: 64 << 10,
        object_read_budget: 16 << 20,
        object_read_ahead: 4 << 20,
        cold_after: Duration::ZERO,
        local_high_watermark: 0.5,
        local_low_watermark: 0.25,
        migration_interval: Duration::from_millis(10),
    }
}

fn key(job: u8, partition: u32) -> PartitionKey {
    PartitionKey {
        job: JobId::new(vec![job; 8]).expect("job id"),
        partition: PartitionId::new(partition.to_be_bytes().to_vec()).expect("partition id"),
    }
}

/// Two subpartitions, each `segments` closed segments of `buffers` buffers.
/// Returns the batches to push (one per segment round) and what each
/// subpartition must read back (payloads, END_OF_SEGMENT included).
fn data(seed: u32, segments: u32, buffers: u32) -> (Vec<Bytes>, HashMap<u32, Vec<Bytes>>) {
    let mut batches = Vec::new();
    let mut expected: HashMap<u32, Vec<Bytes>> = HashMap::new();
    for g in 0..segments {
        let mut batch = BatchBuilder::default();
        for sub in 0..2u32 {
            for i in 0..buffers {
                let len = 100 + ((seed * 7919 + g * 31 + i * 17 + sub) % 3000) as usize;
                let payload = Bytes::from(vec![(seed + g + i + sub) as u8; len]);
                batch.push(
                    SubpartitionId(sub),
                    SegmentId(g),
                    &Buffer::data(payload.clone()),
                );
                expected.entry(sub).or_default().push(payload);
            }
            let eos = Bytes::from_static(b"eos");
            batch.push(
                SubpartitionId(sub),
                SegmentId(g),
                &Buffer::end_of_segment(eos.clone()),
            );
            expected.entry(sub).or_default().push(eos);
        }
        batches.push(batch.finish().bytes);
    }
    (batches, expected)
}

/// Reads every segment of `sub` through the tiers; returns the payloads.
async fn read_sub(store: &Store, key: &PartitionKey, sub: u32) -> TierResult<Vec<Bytes>> {
    let partition = store.get(key)?;
    let mut out = Vec::new();
    let mut segment = 0;
    loop {
        let mut position = 0;
        loop {
            match partition.next_read(sub, segment, position, 64 << 10) {
                ReadStep::Batch { extents, sources } => {
                    position += extents.len();
                    let body = store.tiers().read(sources).await?;
                    let mut reader = terrace_tier_api::BatchReader::new(body);
                    while let Some((_, buffer)) = reader.next_buffer()? {
                        out.push(buffer);
                    }
                }
                ReadStep::SegmentDone => break,
                ReadStep::End => return Ok(out),
                ReadStep::Wait => panic!("a sealed partition never waits"),
                ReadStep::Redirect(next) => panic!("an unsplit partition redirected to {next:?}"),
                ReadStep::Failed(e) => return Err(e),
            }
        }
        segment += 1;
    }
}

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
            partition.append(batch, Reservation::empty(), None, u32::MAX),
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
    let store =
        Arc::new(Store::open(options(dir.path(), 256 << 10), StoreHooks::default()).expect("open"));
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
    let store = Arc::new(Store::open(opts, StoreHooks::default()).expect("open"));
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
