//! Injected write errors (EIO, then ENOSPC) on one of two data directories
//! of a worker: pushes go on on the other directory, a partition whose file
//! sat on the failed one moves to the other, the memory budget returns to
//! zero, the directory is reported unhealthy, and a restart serves it all.

use std::sync::Arc;
use std::time::Duration;
use terrace_tests::logs;

use terrace_tests::{assert_buffers_eq, key, read_partition, small_agent_config, write_partition};
use terrace_tier_api::{ByteSize, PartitionKey, ShuffleDescriptor};
use terrace_worker::{FaultyFiles, StoreHooks, WorkerConfig};

struct Worker {
    runtime: tokio::runtime::Runtime,
    handle: Option<terrace_worker::WorkerHandle>,
    address: String,
}

impl Worker {
    fn start(dirs: &[std::path::PathBuf], files: Arc<FaultyFiles>) -> Worker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = WorkerConfig {
            listen: "127.0.0.1:0".into(),
            data_dirs: dirs.to_vec(),
            dir_capacity: Some(ByteSize::gib(1)),
            dir_reserve: ByteSize::kib(0),
            memory_budget: ByteSize::mib(16),
            max_frame_size: ByteSize::mib(1),
            partition_wait_timeout: Duration::from_secs(2),
            ..WorkerConfig::default()
        };
        let hooks = StoreHooks {
            files: Some(files),
            object_store: None,
        };
        let handle = runtime
            .block_on(terrace_worker::start_with_hooks(config, hooks))
            .expect("worker starts");
        Worker {
            address: handle.address.to_string(),
            handle: Some(handle),
            runtime,
        }
    }

    fn descriptor(&self, key: &PartitionKey) -> ShuffleDescriptor {
        ShuffleDescriptor::new(key, "worker", self.address.clone())
    }

    fn store(&self) -> &Arc<terrace_worker::Store> {
        &self.handle.as_ref().expect("running").store
    }

    fn dirs(&self) -> Vec<terrace_tier_api::protocol::DirStats> {
        terrace_tests::worker_stats(&self.address)
            .load
            .tiers
            .expect("tiers")
            .dirs
    }

    fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.stop()).expect("stops");
        }
    }
}

fn data_files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
                .filter(|f| f.path().extension().and_then(|x| x.to_str()) == Some("data"))
                .count()
        })
        .unwrap_or(0)
}

fn fault_on_one_of_two_dirs(errno: i32, expected_text: &str) {
    let root = tempfile::tempdir().expect("temp dir");
    let dirs = vec![root.path().join("d0"), root.path().join("d1")];
    let files = Arc::new(FaultyFiles::new());
    let worker = Worker::start(&dirs, Arc::clone(&files));
    let config = small_agent_config();
    const SUBS: u32 = 4;

    // A partition written while both directories are healthy, but not sealed.
    let moved = key(30, 1);
    let store = Arc::clone(worker.store());
    let first_half = {
        let mut writer = terrace_tests::RecordingWriter::new(terrace_tests::producer(
            &config,
            worker.descriptor(&moved),
            SUBS,
            false,
        ));
        for i in 0..20 {
            for sub in 0..SUBS {
                writer
                    .write(
                        sub,
                        terrace_tier_api::Buffer::data(terrace_tests::payload(1, sub, i, 3000)),
                    )
                    .expect("write");
            }
        }
        writer.agent.flush_and_wait().expect("push what is batched");
        writer
    };
    // Wait until every push is stored, then flush it to a file.
    let partition = store.get(&moved).expect("partition exists");
    terrace_tests::wait_until(Duration::from_secs(10), "every push arrives", || {
        partition.stored_bytes() >= 20 * 4 * 3000
    });
    worker
        .runtime
        .block_on(store.flush(&partition))
        .expect("flush");
    let first_dir = (0..2)
        .find(|&d| data_files_under(&dirs[d]) == 1)
        .expect("the partition has a file in one directory");

    // That directory now fails every write.
    files.fail_writes_under(&dirs[first_dir], errno);
    let mut writer = first_half;
    for i in 20..40 {
        for sub in 0..SUBS {
            writer
                .write(
                    sub,
                    terrace_tier_api::Buffer::data(terrace_tests::payload(1, sub, i, 3000)),
                )
                .expect("write");
        }
    }
    for sub in 0..SUBS {
        writer
            .write(
                sub,
                terrace_tier_api::Buffer::event(bytes::Bytes::from_static(
                    terrace_tests::END_PAYLOAD,
                )),
            )
            .expect("write end");
    }
    writer
        .close()
        .expect("seal succeeds on the healthy directory");
    let expected_moved = writer.expected.clone();

    // New partitions go on on the other directory.
    let others: Vec<_> = (2..6)
        .map(|p| {
            let k = key(30, p);
            (
                k.clone(),
                write_partition(&config, worker.descriptor(&k), p, SUBS, 30, 5000),
            )
        })
        .collect();

    let stats = worker.dirs();
    assert!(!stats[first_dir].healthy, "{stats:?}");
    assert!(stats[first_dir].write_failures >= 1, "{stats:?}");
    // The directory error names its cause (a stat, not an error kind).
    assert!(
        stats[first_dir].error.contains(expected_text),
        "the error names the cause: {stats:?}"
    );
    assert!(stats[1 - first_dir].healthy, "{stats:?}");
    assert!(
        data_files_under(&dirs[1 - first_dir]) >= 5,
        "new data went to the healthy directory"
    );
    // Every push was flushed or released: the memory budget is back to zero.
    terrace_tests::wait_until(
        Duration::from_secs(10),
        "the memory budget is back to zero",
        || store.budget().used() == 0,
    );
    let read =
        |worker: &Worker,
         k: &PartitionKey,
         want: &std::collections::HashMap<u32, Vec<terrace_tier_api::Buffer>>| {
            let got = read_partition(&config, worker.descriptor(k), SUBS, Duration::from_secs(30))
                .expect("read");
            for sub in 0..SUBS {
                assert_buffers_eq(
                    got.get(&sub).map(Vec::as_slice).unwrap_or_default(),
                    &want[&sub],
                    &format!("{k} subpartition {sub}"),
                );
            }
        };
    read(&worker, &moved, &expected_moved);
    for (k, want) in &others {
        read(&worker, k, want);
    }
    worker.stop();

    // Restarted with the disk repaired: everything is served, both files of the moved partition included.
    files.heal(&dirs[first_dir]);
    let worker = Worker::start(&dirs, Arc::clone(&files));
    read(&worker, &moved, &expected_moved);
    for (k, want) in &others {
        read(&worker, k, want);
    }
    assert!(worker.dirs().iter().all(|d| d.healthy));
    worker.stop();
}

#[test]
fn eio_on_one_directory_moves_writes_to_the_other() {
    let _logs = logs::capture();
    _logs.expect_error("data directory failed a write");
    fault_on_one_of_two_dirs(libc::EIO, "Input/output error");
}

#[test]
fn enospc_on_one_directory_moves_writes_to_the_other() {
    let _logs = logs::capture();
    _logs.expect_error("data directory failed a write");
    fault_on_one_of_two_dirs(libc::ENOSPC, "No space left on device");
}
