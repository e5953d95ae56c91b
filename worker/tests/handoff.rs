//! A partition handed from one worker's store to another's through a shared
//! object store (what a decommissioning worker does), and the forward
//! pointer a split part moves when its next part is handed over.

mod common;

use std::sync::Arc;

use common::{data, key, options, read_sub};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use terrace_tier_api::{ErrorKind, PartitionKey};
use terrace_worker::{Forward, Partition, Reservation, Store, StoreHooks};

/// A store on its own directories, sharing `objects` with the others.
fn store(dir: &std::path::Path, objects: &Arc<InMemory>) -> Arc<Store> {
    let hooks = StoreHooks {
        files: None,
        object_store: Some(Arc::clone(objects) as Arc<dyn ObjectStore>),
    };
    Arc::new(Store::open(&options(dir, 1 << 30), hooks).expect("open store"))
}

/// Writes three closed segments per subpartition and seals; returns what each
/// subpartition reads back.
async fn sealed(
    store: &Store,
    key: &PartitionKey,
    seed: u32,
) -> (
    Arc<Partition>,
    std::collections::HashMap<u32, Vec<bytes::Bytes>>,
) {
    let (batches, expected) = data(seed, 3, 4);
    let partition = store.create(key.clone(), 2, false, false).expect("create");
    for batch in batches {
        partition
            .append(batch, Reservation::empty(), None, u32::MAX)
            .expect("append");
        store.flush(&partition).await.expect("flush");
    }
    store.seal(&partition).await.expect("seal");
    (partition, expected)
}

async fn objects_under(objects: &InMemory, root: &str) -> usize {
    use futures::StreamExt;
    objects
        .list(Some(&object_store::path::Path::from(root)))
        .count()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_partition_is_adopted_read_exactly_and_deleted_from_the_old_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let objects = Arc::new(InMemory::new());
    let old = store(&dir.path().join("old"), &objects);
    let new = store(&dir.path().join("new"), &objects);
    let k = key(1, 7);
    let (partition, expected) = sealed(&old, &k, 3).await;

    // Only a partition wholly in the object store can be handed over.
    let refused = partition.handoff_index().expect_err("local data");
    assert_eq!(refused.kind(), ErrorKind::Unavailable, "{refused}");
    old.migrate(&partition).await.expect("migrate");
    let index = partition.handoff_index().expect("index");
    drop(partition);

    // A damaged index, or one of another partition, is refused.
    let mut damaged = index.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert_eq!(
        new.adopt(&k, &damaged).await.expect_err("damaged").kind(),
        ErrorKind::DataCorruption
    );
    assert_eq!(
        new.adopt(&key(1, 8), &index)
            .await
            .expect_err("other key")
            .kind(),
        ErrorKind::BadInput
    );

    let adopted = new.adopt(&k, &index).await.expect("adopt");
    assert!(adopted.is_sealed());
    for (sub, want) in &expected {
        let got = read_sub(&new, &k, *sub)
            .await
            .expect("read the adopted copy");
        assert_eq!(&got, want, "subpartition {sub}");
    }
    // A worker holds one part of a partition: adopting it again is refused.
    assert_eq!(
        new.adopt(&k, &index).await.expect_err("twice").kind(),
        ErrorKind::BadInput
    );

    let old_root = old
        .tiers()
        .object()
        .expect("object tier")
        .root()
        .to_string();
    let new_root = new
        .tiers()
        .object()
        .expect("object tier")
        .root()
        .to_string();
    assert!(objects_under(&objects, &old_root).await > 0);
    let taken = old.take_for_hand_off(&k).expect("take");
    // New readers of the old store are told at once it is not there.
    assert_eq!(
        old.get(&k).expect_err("gone").kind(),
        ErrorKind::PartitionNotFound
    );
    old.finish_hand_off(taken, std::time::Duration::from_secs(5))
        .await
        .expect("finish");
    old.delete_queued_now()
        .await
        .expect("delete queued objects");
    assert_eq!(
        objects_under(&objects, &old_root).await,
        0,
        "old copy deleted"
    );
    assert!(objects_under(&objects, &new_root).await > 0);

    // The adopted partition survives a restart of its new worker.
    drop(adopted);
    drop(new);
    let new = store(&dir.path().join("new"), &objects);
    for (sub, want) in &expected {
        let got = read_sub(&new, &k, *sub).await.expect("read after restart");
        assert_eq!(&got, want, "subpartition {sub} after restart");
    }
    new.release(&k).await.expect("release");
    new.delete_queued_now()
        .await
        .expect("delete queued objects");
    assert_eq!(objects_under(&objects, &new_root).await, 0, "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_pointer_moves_only_from_the_named_worker_and_is_persisted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let objects = Arc::new(InMemory::new());
    let path = dir.path().join("w");
    let s = store(&path, &objects);
    let k = key(2, 1);
    let (batches, _) = data(5, 2, 3);
    let partition = s.create(k.clone(), 2, false, false).expect("create");
    for batch in batches {
        partition
            .append(batch, Reservation::empty(), None, u32::MAX)
            .expect("append");
    }
    let first = Forward {
        worker_id: "w1".into(),
        address: "127.0.0.1:7001".into(),
    };
    let moved = Forward {
        worker_id: "w2".into(),
        address: "127.0.0.1:7002".into(),
    };
    s.split(&partition, first.clone()).await.expect("split");
    assert!(
        !partition
            .move_forward(s.tiers(), "w9", moved.clone())
            .await
            .expect("move")
    );
    assert_eq!(partition.forward(), Some(first));
    assert!(
        partition
            .move_forward(s.tiers(), "w1", moved.clone())
            .await
            .expect("move")
    );
    assert_eq!(partition.forward(), Some(moved.clone()));
    drop(partition);
    drop(s);
    let s = store(&path, &objects);
    assert_eq!(s.get(&k).expect("recovered").forward(), Some(moved));
}
