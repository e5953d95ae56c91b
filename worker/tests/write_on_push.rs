//! `write_on_push`: each push's data goes to its local file as soon as it is
//! stored, not when the flusher or the seal gets to it; with no local room it
//! stays in memory for the flusher, which sends it to the object store in
//! large parts rather than one object per push.

mod common;

use std::sync::Arc;

use common::{data, key, options, read_sub};
use terrace_worker::{Partition, Reservation, Store, StoreHooks};

/// Appends `batch` as a push does, then writes it out as `write_on_push` does.
async fn push(store: &Store, partition: &Arc<Partition>, batch: bytes::Bytes) {
    partition
        .append(batch, Reservation::empty(), None, u32::MAX)
        .expect("append");
    partition
        .write_pushed(store.tiers())
        .await
        .expect("write pushed data (nothing to write fails nothing)");
}

fn store(dir: &std::path::Path, dir_capacity: u64) -> Arc<Store> {
    let mut options = options(dir, dir_capacity);
    options.write_on_push = true;
    Arc::new(Store::open(&options, StoreHooks::default()).expect("open store"))
}

/// Pushes three segment rounds, writing each at once; every byte is on disk
/// after each push, and reads back exactly after the seal.
async fn pushes_are_on_disk_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(dir.path(), 1 << 30);
    let k = key(3, 1);
    let partition = store.create(k.clone(), 2, false, false).expect("create");
    let (batches, expected) = data(5, 3, 6);
    for batch in batches {
        push(&store, &partition, batch).await;
        let tiers = partition.tier_bytes();
        assert_eq!(tiers.memory, 0, "{tiers:?}");
        assert_eq!(tiers.local, partition.stored_bytes(), "{tiers:?}");
        assert_eq!(partition.pending_bytes(), 0);
    }
    store.seal(&partition).await.expect("seal");
    for sub in 0..2 {
        assert_eq!(
            read_sub(&store, &k, sub).await.expect("read"),
            expected[&sub]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_written_at_once_on_the_receiving_thread() {
    pushes_are_on_disk_at_once().await;
}

/// A single-threaded runtime cannot lend its thread: the write goes to the
/// blocking pool, with the same result.
#[tokio::test]
async fn pushes_are_written_at_once_on_a_single_threaded_runtime_too() {
    pushes_are_on_disk_at_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_local_room_pushes_wait_for_the_flusher_and_go_out_in_large_parts() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Directories of 1 KiB: no push fits.
    let store = store(dir.path(), 1024);
    let k = key(3, 2);
    let partition = store.create(k.clone(), 2, false, false).expect("create");
    let (batches, expected) = data(6, 4, 6);
    let rounds = batches.len();
    for batch in batches {
        push(&store, &partition, batch).await;
        let tiers = partition.tier_bytes();
        assert_eq!((tiers.local, tiers.object), (0, 0), "{tiers:?}");
        assert_eq!(tiers.memory, partition.stored_bytes(), "{tiers:?}");
    }
    store.flush(&partition).await.expect("flush");
    let (objects, bytes) = partition.object_totals();
    assert_eq!(bytes, partition.stored_bytes());
    // The test stores' parts are 64 KiB: fewer objects than pushes.
    assert!(
        objects < rounds as u64,
        "{objects} objects for {rounds} pushes of {bytes} bytes"
    );
    store.seal(&partition).await.expect("seal");
    for sub in 0..2 {
        assert_eq!(
            read_sub(&store, &k, sub).await.expect("read"),
            expected[&sub]
        );
    }
}

/// Partitions written side by side never take a directory past its
/// capacity: each write takes its room before it starts. What does not fit
/// stays in memory for the flusher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_side_by_side_never_pass_a_directory_capacity() {
    let dir = tempfile::tempdir().expect("temp dir");
    const CAPACITY: u64 = 96 << 10;
    let store = store(dir.path(), CAPACITY);
    let mut tasks = Vec::new();
    for p in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let partition = store.create(key(4, p), 2, false, false).expect("create");
            let (batches, _) = data(p, 4, 3);
            for batch in batches {
                push(&store, &partition, batch).await;
            }
            partition
        }));
    }
    let mut local = 0;
    for task in tasks {
        local += task.await.expect("pusher").tier_bytes().local;
    }
    let dirs = &store.tiers().dirs;
    for i in 0..dirs.len() {
        assert!(
            dirs.get(i).used() <= CAPACITY,
            "directory {i} holds {} of {CAPACITY} bytes",
            dirs.get(i).used()
        );
    }
    assert_eq!(local, dirs.get(0).used() + dirs.get(1).used());
    assert!(local > 0, "some pushes fit");
}
