//! What peers make the store hold is bounded: the metadata budget refuses a
//! push whose index entries it cannot take (and nothing of it is kept), the
//! per-job partition quota refuses one job's partition past it while other
//! jobs go on, a failed partition gives back all the memory its buffers
//! held, and a partition created again under a key whose release is still
//! deleting waits for that deletion instead of losing its data to it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{data, key, options, read_sub};
use terrace_rpc::clock;
use terrace_tier_api::ByteSize;
use terrace_tier_api::{BatchBuilder, Buffer, ErrorKind, SegmentId, SubpartitionId};
use terrace_worker::{
    FaultyStore, Reservation, Store, StoreHooks, WorkerConfig, WorkerLimits, cost,
};

/// `n` zero-length END_OF_SEGMENT buffers of subpartition 0, segments
/// `first..first + n`: each one a segment of its own.
fn markers(first: u32, n: u32) -> Bytes {
    let mut batch = BatchBuilder::default();
    for g in first..first + n {
        batch.push(
            SubpartitionId(0),
            SegmentId(g),
            &Buffer::end_of_segment(Bytes::new()),
        );
    }
    batch.finish().bytes
}

fn limited(dir: &std::path::Path, limits: WorkerLimits) -> Store {
    Store::open(
        &WorkerConfig {
            limits,
            ..options(dir, 64 << 20)
        },
        StoreHooks::default(),
    )
    .expect("open")
}

#[tokio::test]
async fn a_push_past_the_metadata_budget_is_refused_whole_and_naming_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let k = key(1, 1);
    let base = cost::PARTITION + 8 + 4;
    let per_marker = cost::SEGMENT + cost::EXTENT;
    // Room for the partition and exactly 1000 markers (plus its subpartition).
    let limit = base + cost::SUBPARTITION + 1000 * per_marker;
    let store = limited(
        dir.path(),
        WorkerLimits {
            metadata_memory: ByteSize(limit),
            ..common::unlimited()
        },
    );
    let partition = store.create(k.clone(), 1, false, false).expect("create");
    assert_eq!(store.metadata().used(), base);
    partition
        .append(markers(0, 600), Reservation::empty(), None, u32::MAX)
        .expect("600 markers fit");
    assert_eq!(
        store.metadata().used(),
        base + cost::SUBPARTITION + 600 * per_marker
    );
    let refused = partition
        .append(markers(600, 401), Reservation::empty(), None, u32::MAX)
        .expect_err("401 more do not");
    assert_eq!(refused.kind(), ErrorKind::Unavailable);
    // The text names the limit; the kind is checked above.
    assert!(
        refused.message().contains("limits.metadata_memory"),
        "{refused}"
    );
    assert_eq!(
        store.metadata().used(),
        base + cost::SUBPARTITION + 600 * per_marker,
        "a refused push charges nothing"
    );
    assert_eq!(partition.stored_bytes(), 600 * 14, "and adds nothing");
    partition
        .append(markers(600, 400), Reservation::empty(), None, u32::MAX)
        .expect("400 more fit exactly");
    assert_eq!(store.metadata().used(), limit);
    // Another partition does not fit now; a release gives everything back.
    let other = store
        .create(key(1, 2), 1, false, false)
        .expect_err("no room for another partition");
    assert_eq!(other.kind(), ErrorKind::Unavailable);
    // The text names the limit; the kind is checked above.
    assert!(
        other.message().contains("limits.metadata_memory"),
        "{other}"
    );
    store.release(&k).await.expect("release");
    drop(partition);
    // The released key is remembered (charged) so its late readers fail fast.
    assert_eq!(
        store.metadata().used(),
        cost::RELEASED_KEY + 8 + 4,
        "only the released key's memory is left"
    );
}

#[tokio::test]
async fn one_job_cannot_take_more_than_its_partition_quota() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = limited(
        dir.path(),
        WorkerLimits {
            max_partitions: 5,
            max_partitions_per_job: 3,
            ..common::unlimited()
        },
    );
    for p in 0..3 {
        store.create(key(1, p), 1, false, false).expect("job 1");
    }
    // A retried create of a partition held is still answered.
    store.create(key(1, 0), 1, false, false).expect("retried");
    let refused = store
        .create(key(1, 3), 1, false, false)
        .expect_err("job 1's fourth");
    assert_eq!(refused.kind(), ErrorKind::Unavailable);
    // The text names the limit and the job.
    assert!(
        refused
            .message()
            .contains("holds 3 partitions of job 0101010101010101, its limit per job (limits.max_partitions_per_job)"),
        "{refused}"
    );
    store.create(key(2, 0), 1, false, false).expect("job 2");
    store.create(key(2, 1), 1, false, false).expect("job 2");
    let full = store
        .create(key(3, 0), 1, false, false)
        .expect_err("the worker's limit");
    assert_eq!(full.kind(), ErrorKind::Unavailable);
    // The text names the limit.
    assert!(
        full.message()
            .contains("holds 5 partitions, its limit (limits.max_partitions)"),
        "{full}"
    );
    // A release makes room for the job again.
    store.release(&key(1, 1)).await.expect("release");
    store
        .create(key(1, 3), 1, false, false)
        .expect("job 1 again");
    assert_eq!(store.partition_count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_partition_gives_back_all_the_memory_its_buffers_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 4 KiB of local room and no object store: a flush of more fails.
    let store = Store::open(
        &WorkerConfig {
            object_store: None,
            ..options(dir.path(), 4 << 10)
        },
        StoreHooks::default(),
    )
    .expect("open");
    let budget_before = store.budget().used();
    let pool_before = store.pool().in_use();
    let partition = store.create(key(1, 1), 2, false, false).expect("create");
    let metadata_created = store.metadata().used();
    let (batches, _) = data(3, 3, 20);
    for batch in batches {
        // As a push does: the body in a pooled buffer covered by the budget.
        let (reservation, mut buffer) = store.reserve_buffer(batch.len()).await.expect("budget");
        buffer.as_mut().copy_from_slice(&batch);
        partition
            .append(buffer.freeze(), reservation, None, u32::MAX)
            .expect("append to memory");
    }
    assert!(store.budget().used() > budget_before);
    assert!(store.pool().in_use() > pool_before);
    assert!(store.metadata().used() > metadata_created);
    let failed = store.flush(&partition).await.expect_err("no room anywhere");
    assert_eq!(failed.kind(), ErrorKind::StorageFull, "{failed}");
    assert_eq!(store.budget().used(), budget_before, "memory budget");
    assert_eq!(
        store.pool().in_use(),
        pool_before,
        "the buffers themselves are given back, not just their budget"
    );
    assert_eq!(
        store.metadata().used(),
        metadata_created,
        "the index's metadata is given back; the partition's own stays until its release"
    );
    let later = partition
        .append(
            data(4, 1, 1).0.remove(0),
            Reservation::empty(),
            None,
            u32::MAX,
        )
        .expect_err("a failed partition takes nothing more");
    assert_eq!(later.kind(), ErrorKind::StorageFull, "{later}");
    assert_eq!(partition.stored_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_created_again_while_its_release_deletes_keeps_its_new_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store = Arc::new(
        Store::open(
            &options(dir.path(), 64 << 20),
            StoreHooks {
                files: None,
                object_store: Some(faulty.clone()),
            },
        )
        .expect("open"),
    );
    let k = key(5, 1);
    // The first partition under the key, sealed and moved to the object store.
    let first = store.create(k.clone(), 2, false, false).expect("create");
    for batch in data(1, 2, 4).0 {
        first
            .append(batch, Reservation::empty(), None, u32::MAX)
            .expect("append");
    }
    store.seal(&first).await.expect("seal");
    assert!(store.migrate(&first).await.expect("migrate") > 0);
    drop(first);

    // Its release deletes the local files at once and queues the objects;
    // their deletion hangs in the object store.
    faulty.set_hanging(true);
    let lists = faulty.lists.load(std::sync::atomic::Ordering::SeqCst);
    clock::timeout(Duration::from_secs(10), store.release(&k))
        .await
        .expect("a release does not wait for the object store")
        .expect("release");
    let deleting = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.delete_queued_now().await })
    };
    let deadline = clock::now() + Duration::from_secs(10);
    while faulty.lists.load(std::sync::atomic::Ordering::SeqCst) == lists {
        assert!(
            clock::now() < deadline,
            "the deletion reaches the object store"
        );
        clock::sleep(Duration::from_millis(10)).await;
    }
    // A create that cannot wait long enough is told to retry; one that can
    // waits for the deletion to end: the old objects have the names the
    // new partition's would take.
    let hurried = store
        .create_after_release(k.clone(), 2, false, false, Duration::from_millis(50))
        .await
        .expect_err("still being deleted");
    assert_eq!(hurried.kind(), ErrorKind::Unavailable);
    // Unavailable has several causes; the text says it is the deletion.
    assert!(
        hurried.message().contains("still being deleted"),
        "{hurried}"
    );
    let create = {
        let (store, k) = (Arc::clone(&store), k.clone());
        tokio::spawn(async move {
            store
                .create_after_release(k, 2, false, false, Duration::from_secs(30))
                .await
        })
    };
    // Nothing to wait on: the create must NOT finish while the deletion hangs.
    clock::sleep(Duration::from_millis(300)).await;
    assert!(
        !create.is_finished(),
        "the new partition is not created while the old one's objects are being deleted"
    );
    faulty.set_hanging(false);
    clock::timeout(Duration::from_secs(30), deleting)
        .await
        .expect("the deletion ends once the store answers")
        .expect("join")
        .expect("delete");
    let second = create
        .await
        .expect("join")
        .expect("created after the deletion");

    // The new partition's data is all there, through a seal and a migration.
    let (batches, expected) = data(2, 3, 5);
    for batch in batches {
        second
            .append(batch, Reservation::empty(), None, u32::MAX)
            .expect("append");
    }
    store.seal(&second).await.expect("seal");
    assert!(store.migrate(&second).await.expect("migrate") > 0);
    for sub in 0..2 {
        assert_eq!(
            read_sub(&store, &k, sub).await.expect("read"),
            expected[&sub],
            "subpartition {sub}"
        );
    }
}
