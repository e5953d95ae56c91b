//! Local disks full and the object store down: the worker refuses new data
//! with a "storage full" error naming the store, instead of accepting bytes
//! it cannot keep; with room again it takes data again. The same without any
//! object store.

mod common;

use std::sync::Arc;

use common::{data, key, options};
use terrace_tier_api::{ErrorKind, TierError};
use terrace_worker::{FaultyStore, ObjectStoreState, Reservation, Store, StoreError, StoreHooks};

/// The store's own error under a refusal.
fn cause(e: &TierError) -> Option<&StoreError> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<StoreError>())
}

/// Holds 50 MiB of the 64 MiB budget: past the 48 MiB flush watermark.
async fn past_the_flush_watermark(worker: &Store) -> Reservation {
    worker
        .budget()
        .reserve(50 << 20)
        .await
        .expect("reserve memory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disks_and_a_failing_store_refuse_pushes_with_storage_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let hooks = StoreHooks {
        files: None,
        object_store: Some(store.clone()),
    };
    // 4 KiB of local room: every flush overflows to the object store.
    let worker = Store::open(&options(dir.path(), 4 << 10), hooks).expect("open");
    assert!(worker.check_room().is_ok(), "an empty worker takes data");

    // The store fails every request: the overflow of a flush fails after its
    // retries, which fails that partition and marks the store unavailable.
    store.set_failing(true);
    let partition = worker.create(key(1, 1), 2, false, false).expect("create");
    let (batches, _) = data(7, 2, 20);
    for batch in batches {
        partition
            .append(batch, Reservation::empty(), None, u32::MAX)
            .expect("append to memory");
    }
    let flushed = worker.flush(&partition).await;
    let error = flushed.expect_err("a flush with no room anywhere fails");
    // The text is the point here: the operator must learn which store failed.
    assert!(
        error.to_string().contains("memory://"),
        "the error names the store: {error}"
    );
    let object = worker.tiers().object.as_ref().expect("object tier");
    assert!(
        !object.is_available(),
        "a store failing every retry is unavailable"
    );
    assert_eq!(
        worker.budget().used(),
        0,
        "the failed flush gave its memory back"
    );

    // Memory past the flush watermark (48 of 64 MiB), no directory with room,
    // the store down: new data is refused, naming why and the store.
    let held = past_the_flush_watermark(&worker).await;
    let refused = worker.check_room().expect_err("storage full");
    assert_eq!(refused.kind(), ErrorKind::StorageFull, "{refused}");
    match cause(&refused) {
        Some(StoreError::StorageFull {
            object_store: Some(ObjectStoreState { url, .. }),
        }) => assert_eq!(url, "memory://", "{refused}"),
        other => panic!("not storage full with a failing store: {other:?}"),
    }

    // Memory back under the watermark: data is taken again (it goes to
    // memory and waits for a flush).
    drop(held);
    assert!(worker.check_room().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disks_and_no_store_refuse_pushes_with_storage_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = Store::open(
        &terrace_worker::WorkerConfig {
            object_store: None,
            ..options(dir.path(), 4 << 10)
        },
        StoreHooks::default(),
    )
    .expect("open");
    let held = past_the_flush_watermark(&worker).await;
    let refused = worker.check_room().expect_err("storage full");
    assert_eq!(refused.kind(), ErrorKind::StorageFull, "{refused}");
    assert!(
        matches!(
            cause(&refused),
            Some(StoreError::StorageFull { object_store: None })
        ),
        "{refused}"
    );
    drop(held);
    assert!(worker.check_room().is_ok());
}

/// Both disks fail every write (EIO) and there is no object store: the flush
/// is refused as storage full, and the last failed write is underneath with
/// its directory and its `io::Error`, so "disk broken" stays distinguishable
/// from "disk full".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_keeps_its_io_error_under_the_refusal() {
    const EIO: i32 = 5;
    let dir = tempfile::tempdir().expect("temp dir");
    let files = Arc::new(terrace_worker::FaultyFiles::new());
    let config = terrace_worker::WorkerConfig {
        object_store: None,
        ..options(dir.path(), 64 << 20)
    };
    let hooks = StoreHooks {
        files: Some(files.clone()),
        object_store: None,
    };
    let worker = Store::open(&config, hooks).expect("open");
    for d in &config.data_dirs {
        files.fail_writes_under(d, EIO);
    }
    let partition = worker.create(key(1, 1), 2, false, false).expect("create");
    let (batches, _) = data(7, 2, 20);
    for batch in batches {
        partition
            .append(batch, Reservation::empty(), None, u32::MAX)
            .expect("append to memory");
    }
    let error = worker
        .flush(&partition)
        .await
        .expect_err("no directory can take the flush");
    assert_eq!(error.kind(), ErrorKind::StorageFull, "{error}");
    let Some(StoreError::NoDirectoryRoom {
        last_write_error: Some(last),
        ..
    }) = cause(&error)
    else {
        panic!("not a refusal with the last write error under it: {error}");
    };
    let StoreError::Disk { op, path, source } = last.as_ref() else {
        panic!("the last write error is not a disk error: {last:?}");
    };
    assert_eq!(*op, "write to");
    assert!(config.data_dirs.contains(path), "{}", path.display());
    assert_eq!(source.raw_os_error(), Some(EIO));
    // The text a user sees still names the directory and the cause.
    let text = error.full_message();
    assert!(
        text.contains(&path.display().to_string()) && text.contains(&source.to_string()),
        "{text}"
    );
}
