//! The object-store tier against a real S3-compatible server (s3s-fs on
//! loopback, signatures checked) and real `terrace worker` processes:
//! overflow past a tiny local capacity, cold migration, SIGKILL during and
//! after a migration, a stopped and a killed store, foreign files, cleanup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use terrace_tests::logs;

use terrace_tests::s3::S3Server;
use terrace_tests::{
    ServiceProcess, assert_buffers_eq, flink_sized_key, key, read_partition, small_agent_config,
    write_partition,
};
use terrace_tier_api::protocol::{DropJob, ObjectStoreStats, ReleasePartition, TierStats};
use terrace_tier_api::{AgentConfig, Buffer, ByteSize, PartitionKey, ShuffleDescriptor};

const PREFIX: &str = "shuffle";

struct Setup<'a> {
    dir: &'a Path,
    s3: &'a S3Server,
    memory_budget: &'a str,
    dir_capacity: &'a str,
    cold_after: &'a str,
    /// `object_store.read_budget`.
    read_budget: &'a str,
}

/// Writes a worker config using `s3` as its object store and returns its path.
fn worker_config(setup: &Setup<'_>) -> PathBuf {
    let path = setup.dir.join("worker.toml");
    let text = format!(
        r#"listen = "127.0.0.1:0"
data_dirs = ["{data}"]
memory_budget = "{budget}"
max_frame_size = "8MiB"
read_memory = "32MiB"
dir_capacity = "{capacity}"
dir_reserve = "0B"
partition_wait_timeout = "2s"

[object_store]
url = "{url}"
request_timeout = "1s"
retries = 2
backoff = "100ms"
part_size = "8MiB"
read_budget = "{read_budget}"
cold_after = "{cold}"
migration_interval = "100ms"

[object_store.options]
aws_endpoint = "{endpoint}"
aws_access_key_id = "{ak}"
aws_secret_access_key = "{sk}"
aws_region = "{region}"
aws_allow_http = "true"
"#,
        data = setup.dir.join("data").display(),
        budget = setup.memory_budget,
        capacity = setup.dir_capacity,
        url = setup.s3.url(PREFIX),
        cold = setup.cold_after,
        read_budget = setup.read_budget,
        endpoint = setup.s3.endpoint(),
        ak = terrace_tests::s3::ACCESS_KEY,
        sk = terrace_tests::s3::SECRET_KEY,
        region = terrace_tests::s3::REGION,
    );
    std::fs::write(&path, text).expect("write worker config");
    path
}

/// A real S3 server, a temp dir holding a worker config that uses it (as
/// [`worker_config`] writes it), and a worker started on that config.
struct Rig {
    s3: S3Server,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    worker: ServiceProcess,
}

impl Rig {
    fn start(memory_budget: &str, dir_capacity: &str, cold_after: &str) -> Rig {
        Rig::start_reading(memory_budget, dir_capacity, cold_after, "16MiB")
    }

    /// [`Rig::start`] with another object-store `read_budget`.
    fn start_reading(
        memory_budget: &str,
        dir_capacity: &str,
        cold_after: &str,
        read_budget: &str,
    ) -> Rig {
        let s3 = S3Server::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = worker_config(&Setup {
            dir: dir.path(),
            s3: &s3,
            memory_budget,
            dir_capacity,
            cold_after,
            read_budget,
        });
        let worker = start_worker(&config_path);
        Rig {
            s3,
            dir,
            config_path,
            worker,
        }
    }
}

fn start_worker(config: &Path) -> ServiceProcess {
    ServiceProcess::start(&["worker", "--config", config.to_str().expect("utf-8 path")])
}

fn descriptor(worker: &ServiceProcess, key: &PartitionKey) -> ShuffleDescriptor {
    ShuffleDescriptor::new(key, "worker", worker.address.clone())
}

fn agent_config() -> AgentConfig {
    AgentConfig {
        max_frame_size: ByteSize::mib(8),
        request_timeout: Duration::from_secs(30),
        ..small_agent_config()
    }
}

/// The worker's tier figures.
fn tiers(worker: &ServiceProcess) -> TierStats {
    let tiers = terrace_tests::worker_stats(&worker.address).load.tiers;
    *tiers.expect("stats carry tier figures")
}

fn object_stats(t: &TierStats) -> ObjectStoreStats {
    t.object_store
        .clone()
        .expect("the worker has an object store")
}

/// Polls `check` on the worker's tier figures until it holds, within `limit`.
fn wait_for(
    worker: &ServiceProcess,
    limit: Duration,
    what: &str,
    check: impl Fn(&TierStats) -> bool,
) -> TierStats {
    let mut last = None;
    let done = terrace_tests::wait::poll_until(limit, || {
        let t = tiers(worker);
        let ok = check(&t);
        last = Some(t);
        ok
    });
    let t = last.expect("polled at least once");
    assert!(done, "{what} within {limit:?}: {t:?}");
    t
}

fn assert_reads_exactly(
    config: &AgentConfig,
    worker: &ServiceProcess,
    key: &PartitionKey,
    subs: u32,
    expected: &HashMap<u32, Vec<Buffer>>,
) {
    let got = read_partition(
        config,
        descriptor(worker, key),
        subs,
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("read {key}: {e}"));
    for sub in 0..subs {
        assert_buffers_eq(
            got.get(&sub).map(Vec::as_slice).unwrap_or_default(),
            &expected[&sub],
            &format!("{key} subpartition {sub}"),
        );
    }
}

/// Terrace data files (`.data`) left under the worker's data directory.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("data")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("data") {
                out.push(path);
            }
        }
    }
    out
}

fn drop_job(worker: &ServiceProcess, key: &PartitionKey) {
    terrace_tests::call(
        &worker.address,
        DropJob {
            job: key.job.clone(),
        },
    )
    .expect("drop job");
}

/// Waits (at most 20 s) until the bucket holds no object under [`PREFIX`]:
/// a worker deletes a dropped job's objects in the background.
fn wait_objects_gone(s3: &S3Server) {
    let done =
        terrace_tests::wait::poll_until(Duration::from_secs(20), || s3.objects(PREFIX).is_empty());
    assert!(
        done,
        "objects left 20 s after the drop: {:?}",
        s3.objects(PREFIX)
    );
}

/// 1 GiB through a worker whose local directory holds 64 MiB: the rest goes
/// to objects as it is flushed, reads back exactly, and the worker's peak
/// resident memory stays within its push budget (128 MiB) plus its read
/// budgets (`read_memory` 32 MiB, object `read_budget` 16 MiB) plus 64 MiB.
#[test]
fn overflow_takes_a_gib_past_a_64_mib_disk_within_the_memory_bound() {
    let _logs = logs::capture();
    let Rig {
        s3,
        dir,
        config_path: _config_path,
        worker,
    } = Rig::start("128MiB", "64MiB", "1h");
    let config = AgentConfig {
        push_size: ByteSize::kib(512),
        segment_size: ByteSize::mib(2),
        max_buffer_size: ByteSize::kib(64),
        ..agent_config()
    };
    const SUBS: u32 = 16;
    const PARTITIONS: u32 = 4;
    // 4 partitions x 16 subpartitions x 512 buffers x 32 KiB = 1 GiB.
    let writers: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let config = config.clone();
            let d = descriptor(&worker, &key(20, p));
            std::thread::spawn(move || write_partition(&config, d, p, SUBS, 512, 32 * 1024))
        })
        .collect();
    let expected: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"))
        .collect();
    let t = tiers(&worker);
    let o = object_stats(&t);
    let total = t.memory_bytes + t.local_bytes + t.object_bytes;
    assert!(total >= 1 << 30, "{total} bytes stored");
    assert!(t.local_bytes <= 64 << 20, "local {} bytes", t.local_bytes);
    // What the disk could not take went to the store: overflowed at flush,
    // or migrated when local use passed the high watermark.
    assert!(o.bytes_overflowed > 0, "{o:?}");
    assert!(
        o.bytes_overflowed + o.bytes_migrated >= (1 << 30) - (64 << 20),
        "{o:?}"
    );
    assert_eq!(o.failures, 0, "{o:?}");
    // Compactions of sealed partitions, and the deletion of the objects they
    // replaced (after a grace), settle: then the bucket holds what the
    // worker counts.
    terrace_tests::wait_until(
        Duration::from_secs(120),
        "the bucket holds exactly the objects the worker counts",
        || s3.objects(PREFIX).len() as u64 == object_stats(&tiers(&worker)).objects,
    );
    for (p, expected) in expected.iter().enumerate() {
        assert_reads_exactly(&config, &worker, &key(20, p as u32), SUBS, expected);
    }
    let rss = worker.peak_rss();
    eprintln!(
        "overflow of 1 GiB: worker peak RSS {} MiB (push budget 128 MiB, read budgets 48 MiB)",
        rss >> 20
    );
    assert!(rss <= (128 + 48 + 64) << 20, "peak RSS {} MiB", rss >> 20);
    drop_job(&worker, &key(20, 0));
    wait_objects_gone(&s3);
    assert!(data_files(dir.path()).is_empty());
}

/// Cold partitions move to the store: local files gone, objects there, reads
/// exact; a worker SIGKILLed after a migration, and one SIGKILLed during
/// one, serve everything exactly after a restart and leave no orphan object;
/// release and job drop leave nothing. The first partition's id is as long as
/// Flink's (80 bytes), whose hex alone made keys some S3 servers refuse.
#[test]
fn migration_survives_sigkill_during_and_after() {
    let _logs = logs::capture();
    let Rig {
        s3,
        dir,
        config_path,
        worker,
    } = Rig::start("128MiB", "4GiB", "1s");
    let config = agent_config();
    const SUBS: u32 = 8;
    let small = flink_sized_key(21, 1);
    let expected_small = write_partition(&config, descriptor(&worker, &small), 1, SUBS, 64, 8000);
    let t = wait_for(&worker, Duration::from_secs(30), "migration", |t| {
        t.local_bytes == 0 && t.object_bytes > 0
    });
    // The index points at the object before the local file is unlinked.
    terrace_tests::wait_until(Duration::from_secs(10), "local files are gone", || {
        data_files(dir.path()).is_empty()
    });
    assert_eq!(s3.objects(PREFIX).len() as u64, object_stats(&t).objects);
    assert_reads_exactly(&config, &worker, &small, SUBS, &expected_small);

    // SIGKILL after the migration: the restarted worker serves it from the store.
    worker.kill();
    let worker = start_worker(&config_path);
    assert_reads_exactly(&config, &worker, &small, SUBS, &expected_small);

    // SIGKILL during a migration (a multipart upload open in the store).
    let big = key(21, 2);
    let expected_big = write_partition(&config, descriptor(&worker, &big), 2, SUBS, 2500, 12_000);
    terrace_tests::wait_until_every(
        Duration::from_secs(30),
        Duration::from_millis(5),
        "a migration upload begins",
        || !s3.open_uploads().is_empty(),
    );
    worker.kill();
    let worker = start_worker(&config_path);
    assert_reads_exactly(&config, &worker, &big, SUBS, &expected_big);
    let t = wait_for(
        &worker,
        Duration::from_secs(60),
        "migration after restart",
        |t| t.local_bytes == 0,
    );
    assert_eq!(
        s3.objects(PREFIX).len() as u64,
        object_stats(&t).objects,
        "every object in the bucket is one the worker refers to: {:?}",
        s3.objects(PREFIX)
    );
    assert_reads_exactly(&config, &worker, &big, SUBS, &expected_big);
    assert_reads_exactly(&config, &worker, &small, SUBS, &expected_small);

    drop_job(&worker, &small);
    wait_objects_gone(&s3);
    assert!(data_files(dir.path()).is_empty());
}

/// Agent settings of the compaction tests: 32 KiB buffers in 2 MiB segments.
fn compaction_config() -> AgentConfig {
    AgentConfig {
        push_size: ByteSize::kib(512),
        segment_size: ByteSize::mib(2),
        max_buffer_size: ByteSize::kib(64),
        ..agent_config()
    }
}

/// Waits until every one of `partitions` partitions is one object (in the
/// worker's figures and in the bucket: what compaction replaced is gone).
fn wait_compacted(worker: &ServiceProcess, s3: &S3Server, partitions: u64) -> TierStats {
    let t = wait_for(worker, Duration::from_secs(120), "compaction", |t| {
        let o = object_stats(t);
        o.partitions_compacted >= partitions && o.objects == partitions && t.local_bytes == 0
    });
    terrace_tests::wait_until(
        Duration::from_secs(60),
        "the replaced objects are deleted",
        || s3.objects(PREFIX).len() as u64 == partitions,
    );
    t
}

/// A worker whose disk takes 1 MiB overflows every flush to the store,
/// every subpartition's buffers interleaved in each object. Sealed, each
/// partition is compacted into one object laid out segment by segment, the
/// objects it replaced are deleted, and the partitions read back exactly in
/// GETs of at least 1 MiB on average (each segment one range, adjacent
/// segments coalesced by reading ahead), with the default read budget
/// (64 MiB) for the 16 subpartitions read at once.
#[test]
fn overflowed_partitions_are_compacted_and_read_back_in_large_gets() {
    let _logs = logs::capture();
    let Rig {
        s3,
        dir: _dir,
        config_path: _config_path,
        worker,
    } = Rig::start_reading("64MiB", "1MiB", "1h", "64MiB");
    let config = compaction_config();
    const SUBS: u32 = 16;
    // 2 partitions x 16 subpartitions x 128 buffers x 32 KiB = 128 MiB.
    let expected: Vec<_> = (0..2)
        .map(|p| {
            write_partition(
                &config,
                descriptor(&worker, &key(24, p)),
                p,
                SUBS,
                128,
                32 * 1024,
            )
        })
        .collect();
    let overflowed = object_stats(&tiers(&worker)).bytes_overflowed;
    assert!(overflowed >= 120 << 20, "{overflowed} bytes overflowed");
    let t = wait_compacted(&worker, &s3, 2);
    let before = object_stats(&t);
    assert!(before.bytes_compacted >= 128 << 20, "{before:?}");
    assert_eq!(before.failures, 0, "{before:?}");
    for (p, expected) in expected.iter().enumerate() {
        assert_reads_exactly(&config, &worker, &key(24, p as u32), SUBS, expected);
    }
    let after = object_stats(&tiers(&worker));
    let gets = after.gets - before.gets;
    let bytes = after.bytes_read - before.bytes_read;
    let per_get = bytes as f64 / gets.max(1) as f64;
    eprintln!(
        "compacted partitions read back: {bytes} bytes in {gets} GETs, {:.2} MiB per GET, {:.0} GETs per GiB",
        per_get / f64::from(1 << 20),
        gets as f64 / (bytes as f64 / f64::from(1 << 30))
    );
    assert!(bytes >= 128 << 20, "{bytes} bytes read from the store");
    assert!(
        per_get >= f64::from(1 << 20),
        "{per_get:.0} bytes per GET: reads of compacted partitions should be at least 1 MiB each"
    );
    drop_job(&worker, &key(24, 0));
    wait_objects_gone(&s3);
}

/// A worker SIGKILLed while it uploads a compaction's object, and one
/// SIGKILLed right after a compaction swapped its object in (the replaced
/// objects not deleted yet): each restarts serving every byte exactly, and
/// compaction ends with one object per partition and no orphan.
#[test]
fn a_worker_killed_during_or_after_a_compaction_loses_nothing_and_leaves_no_orphan() {
    let _logs = logs::capture();
    let Rig {
        s3,
        dir: _dir,
        config_path,
        worker,
    } = Rig::start("64MiB", "1MiB", "1h");
    let config = compaction_config();
    const SUBS: u32 = 16;
    // 16 subpartitions x 256 buffers x 32 KiB = 128 MiB: 16 parts of 8 MiB.
    let big = key(25, 1);
    let expected = write_partition(&config, descriptor(&worker, &big), 1, SUBS, 256, 32 * 1024);
    terrace_tests::wait_until_every(
        Duration::from_secs(60),
        Duration::from_millis(5),
        "a compaction upload begins",
        || !s3.open_uploads().is_empty(),
    );
    worker.kill();
    let worker = start_worker(&config_path);
    assert_reads_exactly(&config, &worker, &big, SUBS, &expected);
    wait_compacted(&worker, &s3, 1);
    assert_reads_exactly(&config, &worker, &big, SUBS, &expected);

    // Killed within the grace of the replaced objects: they are orphans at
    // the next start, and go.
    let small = key(25, 2);
    let expected_small =
        write_partition(&config, descriptor(&worker, &small), 2, SUBS, 32, 32 * 1024);
    wait_for(
        &worker,
        Duration::from_secs(60),
        "the second compaction",
        |t| object_stats(t).partitions_compacted >= 2,
    );
    let replaced_left = s3.objects(PREFIX).len();
    worker.kill();
    assert!(
        replaced_left > 2,
        "the replaced objects were still there when the worker was killed: {replaced_left}"
    );
    let worker = start_worker(&config_path);
    terrace_tests::wait_until(
        Duration::from_secs(60),
        "orphans deleted at start: one object per partition",
        || s3.objects(PREFIX).len() == 2,
    );
    let t = tiers(&worker);
    assert_eq!(object_stats(&t).objects, 2, "{t:?}");
    assert_reads_exactly(&config, &worker, &big, SUBS, &expected);
    assert_reads_exactly(&config, &worker, &small, SUBS, &expected_small);
    drop_job(&worker, &big);
    wait_objects_gone(&s3);
}

#[derive(Debug, Clone, Copy)]
enum Outage {
    Stopped,
    Killed,
}

fn outage(kind: Outage) {
    let Rig {
        mut s3,
        dir: _dir,
        config_path: _config_path,
        worker,
    } = Rig::start("64MiB", "12MiB", "1s");
    let config = agent_config();
    const SUBS: u32 = 4;
    // Fits the local directory; goes cold while the store is down.
    let local = key(22, 1);
    let expected_local = write_partition(&config, descriptor(&worker, &local), 1, SUBS, 100, 8000);
    match kind {
        Outage::Stopped => s3.stop(),
        Outage::Killed => s3.kill(),
    }
    let t = wait_for(
        &worker,
        Duration::from_secs(30),
        "a failed migration",
        |t| object_stats(t).failures > 0,
    );
    let o = object_stats(&t);
    assert!(!o.available, "{o:?}");
    // The store's last error is text (a stat) that names the store.
    assert!(
        o.last_error.contains(&s3.url(PREFIX)) || o.last_error.contains("s3://"),
        "{o:?}"
    );
    assert!(t.local_bytes > 0, "the local copy stays: {t:?}");
    assert_reads_exactly(&config, &worker, &local, SUBS, &expected_local);

    // Overflow while the store is down: the push fails with a clear error, nothing is kept half.
    let overflow = key(22, 2);
    let result = std::panic::catch_unwind(|| {
        write_partition(&config, descriptor(&worker, &overflow), 2, SUBS, 1000, 8000)
    });
    let Err(panic) = result else {
        panic!("a 32 MiB partition cannot be kept with 12 MiB of disk and no store");
    };
    // The producer's error names the store and what failed on it.
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains(&s3.url(PREFIX))
            && (message.contains("put") || message.contains("storage full")),
        "{message}"
    );
    let t = tiers(&worker);
    assert!(t.local_bytes > 0);
    assert_reads_exactly(&config, &worker, &local, SUBS, &expected_local);
    // The store comes back: the migration completes and reads are exact.
    match kind {
        Outage::Stopped => s3.cont(),
        Outage::Killed => s3.restart(),
    }
    // The engine releases the failed producer's partition (Flink does on
    // failover); what it had written to disk and to the store goes with it.
    let released = terrace_tests::call(
        &worker.address,
        ReleasePartition {
            key: overflow.clone(),
        },
    );
    assert!(released.is_ok(), "{released:?}");

    wait_for(
        &worker,
        Duration::from_secs(60),
        "migration after the outage",
        |t| t.local_bytes == 0 && object_stats(t).available,
    );
    assert_reads_exactly(&config, &worker, &local, SUBS, &expected_local);
    // New data goes through again.
    let after = key(22, 3);
    let expected_after = write_partition(&config, descriptor(&worker, &after), 3, SUBS, 1000, 8000);
    assert_reads_exactly(&config, &worker, &after, SUBS, &expected_after);
    drop_job(&worker, &local);
    wait_objects_gone(&s3);
}

#[test]
fn stopped_store_loses_no_local_data_and_migration_completes_when_it_returns() {
    let _logs = logs::capture();
    outage(Outage::Stopped);
}

#[test]
fn killed_store_loses_no_local_data_and_migration_completes_when_it_returns() {
    let _logs = logs::capture();
    outage(Outage::Killed);
}

/// A restart deletes what Terrace wrote for unsealed partitions and nothing else.
#[test]
fn files_terrace_did_not_write_survive_a_restart() {
    let _logs = logs::capture();
    let Rig {
        s3: _s3,
        dir,
        config_path,
        worker,
    } = Rig::start("64MiB", "1GiB", "1h");
    let config = agent_config();
    let sealed = key(23, 1);
    let expected = write_partition(&config, descriptor(&worker, &sealed), 1, 2, 10, 1000);
    let data = dir.path().join("data");
    let job_dir = data.join(sealed.job.to_hex());
    let foreign = [
        data.join("notes.txt"),
        data.join("not-a-job").join("x.data"),
        job_dir.join("keep.me"),
        job_dir.join("0a.bak"),
    ];
    for path in &foreign {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"operator's file").expect("write foreign file");
    }
    // A Terrace file of a partition that was never sealed goes at restart.
    let unsealed = job_dir.join("0b0b.data");
    std::fs::write(&unsealed, b"half a partition").expect("write");
    worker.kill();
    let worker = start_worker(&config_path);
    // Served again: the restarted worker has finished its recovery.
    assert_reads_exactly(&config, &worker, &sealed, 2, &expected);
    for path in &foreign {
        assert_eq!(
            std::fs::read(path).expect("foreign file survives"),
            b"operator's file",
            "{}",
            path.display()
        );
    }
    assert!(
        !unsealed.exists(),
        "the unsealed partition's file is deleted"
    );
    assert_reads_exactly(&config, &worker, &sealed, 2, &expected);
    drop_job(&worker, &sealed);
    assert!(
        job_dir.join("keep.me").exists(),
        "a job drop keeps foreign files too"
    );
}

/// Compression at the edges, through every tier. A producer agent with lz4
/// on writes compressible buffers, incompressible ones and events; the
/// worker stores the bytes exactly as they came (what it received is what it
/// holds, in memory, on disk and in the object store, and is less than the
/// payloads written); a consumer reads every buffer back byte-identical
/// while the data is in memory, once it is sealed on disk, and once it has
/// migrated to the object store.
#[test]
fn compressed_buffers_pass_every_tier_as_sent_and_read_back_exactly() {
    let _logs = logs::capture();
    let Rig {
        s3: _s3,
        dir: _dir,
        config_path: _config_path,
        worker,
    } = Rig::start("64MiB", "1GiB", "3s");
    let config = AgentConfig {
        compression: true,
        ..agent_config()
    };
    const SUBS: u32 = 2;
    const ROUNDS: u32 = 60;
    const LEN: usize = 8192;
    let key = key(31, 1);
    // A reader that starts first reads while the data is in memory.
    let early = {
        let (config, d) = (config.clone(), descriptor(&worker, &key));
        std::thread::spawn(move || read_partition(&config, d, SUBS, Duration::from_secs(60)))
    };
    let mut writer = terrace_tests::RecordingWriter::new(terrace_tests::producer(
        &config,
        descriptor(&worker, &key),
        SUBS,
        false,
    ));
    let (mut written, mut incompressible) = (0u64, 0u64);
    for i in 0..ROUNDS {
        for sub in 0..SUBS {
            let buffer = match i % 3 {
                0 => Buffer::data(vec![(i % 7) as u8; LEN]),
                1 => {
                    incompressible += LEN as u64;
                    Buffer::data(terrace_tests::payload(31, sub, i, LEN))
                }
                _ => Buffer::event(vec![(i % 5) as u8; 512]),
            };
            written += buffer.payload.len() as u64;
            writer.write(sub, buffer).expect("write");
        }
        if i % 10 == 0 {
            writer.agent.flush_and_wait().expect("flush");
        }
    }
    writer.end_and_close(SUBS);
    let expected = writer.expected.clone();
    let early = terrace_tests::join_within(early, Duration::from_secs(60), "early reader")
        .expect("the early reader reads to the end");
    for sub in 0..SUBS {
        assert_buffers_eq(&early[&sub], &expected[&sub], &format!("early, sub {sub}"));
    }

    // What the worker received is what it stores: compressed, never expanded.
    let received = terrace_tests::worker_stats(&worker.address).bytes_pushed;
    eprintln!(
        "compression: {written} payload bytes written ({incompressible} incompressible), {received} bytes received and stored"
    );
    assert!(
        received < written - incompressible / 2 && received > incompressible,
        "received {received} bytes for {written} written ({incompressible} incompressible)"
    );
    let sealed = wait_for(&worker, Duration::from_secs(10), "sealed on disk", |t| {
        t.local_bytes == received && t.memory_bytes == 0
    });
    assert_eq!(sealed.object_bytes, 0);
    assert_reads_exactly(&config, &worker, &key, SUBS, &expected);

    let migrated = wait_for(&worker, Duration::from_secs(30), "migrated", |t| {
        object_stats(t).partitions_migrated == 1 && t.local_bytes == 0
    });
    assert_eq!(
        migrated.object_bytes, received,
        "the object holds the bytes as sent"
    );
    let before = terrace_tests::worker_stats(&worker.address).bytes_read;
    assert_reads_exactly(&config, &worker, &key, SUBS, &expected);
    let served = terrace_tests::worker_stats(&worker.address).bytes_read - before;
    assert_eq!(
        served, received,
        "one read serves the stored bytes, compressed"
    );
    drop_job(&worker, &key);
}

/// `terrace demo --object-store URL` with a 16 MiB local capacity: data
/// overflows to the store during the shuffle, the rest migrates once cold,
/// everything is read back from the store, and nothing is left in it. With
/// `memory://` (no set-up) and with `s3://` on a real S3-compatible server
/// given by the `AWS_*` variables, whose bucket exists beforehand.
#[test]
fn demo_overflows_migrates_reads_back_and_leaves_the_store_empty() {
    let _logs = logs::capture();
    let s3 = S3Server::start();
    for (url, env) in [
        ("memory://".to_string(), Vec::new()),
        (s3.url("demo"), s3.env()),
    ] {
        let report = terrace_tests::terrace_json(
            &[
                "demo",
                "--json",
                "--object-store",
                &url,
                "--local-capacity",
                "16MiB",
                "--buffers",
                "8",
                "--compression",
                "false",
            ],
            &env,
            Duration::from_secs(300),
        );
        let payload = report["payload_bytes"].as_u64().expect("payload_bytes");
        assert_eq!(payload, 4 * 64 * 8 * 32 * 1024, "{url}: {report}");
        assert_eq!(
            report["verified_bytes"].as_u64(),
            Some(payload),
            "{url}: {report}"
        );
        assert_eq!(
            report["verified_again_bytes"].as_u64(),
            Some(payload),
            "{url}: {report}"
        );
        let during = &report["after_shuffle"];
        assert!(
            during["overflowed_bytes"].as_u64() > Some(0),
            "{url}: {report}"
        );
        let migrated = &report["after_migration"];
        assert_eq!(migrated["local_bytes"].as_u64(), Some(0), "{url}: {report}");
        assert!(
            migrated["migrated_bytes"].as_u64() > Some(0),
            "{url}: {report}"
        );
        assert!(
            migrated["object_bytes"].as_u64() >= Some(payload),
            "{url}: every byte sits in the store before it is read back: {report}"
        );
        assert_eq!(report["objects_left"].as_u64(), Some(0), "{url}: {report}");
    }
    // s3s-fs keeps a metadata file per object written, even once deleted:
    // the s3:// run did store its objects on this server.
    assert!(
        s3.internal_files()
            .iter()
            .any(|f| f.starts_with(".bucket-")),
        "no object was ever written to the S3 server: {:?}",
        s3.internal_files()
    );
    assert_eq!(
        s3.objects("demo"),
        Vec::<String>::new(),
        "the bucket keeps nothing"
    );
    assert_eq!(
        s3.open_uploads(),
        Vec::<String>::new(),
        "no multipart upload left open"
    );
}
