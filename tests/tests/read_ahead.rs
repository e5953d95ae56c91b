//! Reading ahead from the object store: a migrated partition read with
//! `read_ahead` on comes back exactly in far fewer (larger) GETs than with it
//! off, across segment boundaries, and the read budget returns when the
//! stream ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use terrace_tests::logs;

use terrace_tests::{assert_buffers_eq, key, read_partition, small_agent_config, write_partition};
use terrace_tier_api::{ByteSize, ShuffleDescriptor};
use terrace_worker::{ObjectStoreConfig, StoreHooks, WorkerConfig};

/// Reads a migrated partition (2 subpartitions of 64 KiB segments, 4 MiB
/// each) from a worker whose `read_ahead` is `read_ahead`; returns the GETs
/// the read made.
fn gets_of_a_migrated_read(read_ahead: ByteSize) -> u64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = WorkerConfig {
        listen: "127.0.0.1:0".into(),
        data_dirs: vec![dir.path().join("data")],
        dir_capacity: Some(ByteSize::gib(1)),
        dir_reserve: ByteSize::kib(0),
        memory_budget: ByteSize::mib(64),
        object_store: Some(ObjectStoreConfig {
            url: "memory://".into(),
            // Nothing moves on its own: the test migrates explicitly.
            cold_after: Duration::from_secs(3600),
            local_high_watermark: 1.0,
            local_low_watermark: 1.0,
            read_ahead,
            ..ObjectStoreConfig::default()
        }),
        ..WorkerConfig::default()
    };
    let worker = runtime
        .block_on(terrace_worker::start_with_hooks(
            config,
            StoreHooks::default(),
        ))
        .expect("worker starts");
    let store = Arc::clone(&worker.store);
    let agent = small_agent_config();
    let k = key(40, 1);
    let descriptor = ShuffleDescriptor::new(&k, "worker", worker.address.to_string());
    const SUBS: u32 = 2;
    let expected = write_partition(&agent, descriptor.clone(), 1, SUBS, 256, 16 * 1024);

    for partition in store.partitions() {
        let moved = runtime
            .block_on(store.migrate(&partition))
            .expect("migrate");
        assert!(moved > 0, "the partition moved to the object store");
    }
    let tiers = store.tier_bytes();
    assert!(tiers.local == 0 && tiers.object > 0, "{tiers:?}");

    let object = store.tiers().object().expect("object tier");
    let before = object.counters.gets.load(Ordering::Relaxed);
    let got = read_partition(&agent, descriptor, SUBS, Duration::from_secs(60))
        .expect("read from the object store");
    for sub in 0..SUBS {
        assert_buffers_eq(
            got.get(&sub).map(Vec::as_slice).unwrap_or_default(),
            &expected[&sub],
            &format!("subpartition {sub}"),
        );
    }
    let gets = object.counters.gets.load(Ordering::Relaxed) - before;

    // Once the reader is gone, every body and window is dropped: the whole
    // read-ahead half of the budget (default 64 MiB) can be taken again.
    terrace_tests::wait_until(
        Duration::from_secs(10),
        "the read budget is free after the read",
        || store.tiers().try_reserve_ahead(32 << 20).is_some(),
    );
    assert!(
        store.tiers().try_reserve_ahead((32 << 20) + 1).is_none(),
        "reads ahead never take more than half the budget"
    );
    runtime.block_on(worker.stop()).expect("stops");
    gets
}

#[test]
fn reading_ahead_fetches_a_migrated_partition_in_few_large_gets() {
    let _logs = logs::capture();
    let without = gets_of_a_migrated_read(ByteSize::kib(0));
    let with = gets_of_a_migrated_read(ByteSize::mib(4));
    eprintln!("read_ahead: {without} GETs without, {with} with");
    // 8 MiB in 64 KiB segments: one GET per segment or batch without, about
    // one per 4 MiB window (plus the windows opened at segment ends) with.
    assert!(without >= 100, "{without} GETs without reading ahead");
    assert!(
        with * 8 <= without,
        "{with} GETs with reading ahead against {without} without"
    );
}
