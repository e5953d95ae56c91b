//! Releasing a partition deletes its files and makes readers fail with
//! PartitionNotFound; dropping a job deletes everything of the job on every
//! data directory, and nothing of other jobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use terrace_tests::logs;

use terrace_consumer_agent::ConsumerAgent;
use terrace_rpc::clock;
use terrace_tests::{
    TestWorker, assert_buffers_eq, key, payload, read_partition, small_agent_config,
    wait_for_error, wakeup, write_partition,
};
use terrace_tier_api::protocol::{
    Ack, CreatePartition, DropJob, PushData, ReleasePartition, SealPartition,
};
use terrace_tier_api::{
    AgentConfig, BatchBuilder, Buffer, ByteSize, ConsumerSpec, ErrorKind, InputChannelId, JobId,
    PartitionKey, SegmentId, SubpartitionId, TierConsumerAgent,
};
use terrace_worker::WorkerConfig;

const SUBS: u32 = 3;
const BUFFERS_PER_SUB: u32 = 20;
const BUFFER_LEN: usize = 8 * 1024;
/// How long the worker lets a reader wait for a partition to be created.
const CREATION_WAIT: Duration = Duration::from_secs(5);

fn start_worker(dirs: &[PathBuf]) -> TestWorker {
    TestWorker::start(WorkerConfig {
        data_dirs: dirs.to_vec(),
        memory_budget: ByteSize::mib(64),
        flush_high_watermark: 0.0,
        flush_low_watermark: 0.0,
        partition_wait_timeout: CREATION_WAIT,
        ..WorkerConfig::default()
    })
}

fn data_dirs(root: &Path) -> Vec<PathBuf> {
    vec![root.join("a"), root.join("b")]
}

/// `(data file, index file)` of `key` under `dir`.
fn files_in(dir: &Path, key: &PartitionKey) -> (PathBuf, PathBuf) {
    let job_dir = dir.join(key.job.to_hex());
    let name = key.partition.to_hex();
    (
        job_dir.join(format!("{name}.data")),
        job_dir.join(format!("{name}.index")),
    )
}

/// The one data directory that holds both files of `key`; fails if none or several do.
fn files_of(dirs: &[PathBuf], key: &PartitionKey) -> (PathBuf, PathBuf) {
    let holding: Vec<(PathBuf, PathBuf)> = dirs
        .iter()
        .map(|d| files_in(d, key))
        .filter(|(data, index)| data.is_file() && index.is_file())
        .collect();
    assert_eq!(
        holding.len(),
        1,
        "{key} must live in exactly one data directory: {holding:?}"
    );
    holding.into_iter().next().expect("one")
}

fn assert_no_files_of(dirs: &[PathBuf], key: &PartitionKey) {
    for dir in dirs {
        let (data, index) = files_in(dir, key);
        assert!(!data.exists(), "{} still exists", data.display());
        assert!(!index.exists(), "{} still exists", index.display());
    }
}

fn release(worker: &TestWorker, key: &PartitionKey) -> Result<Ack, terrace_tier_api::TierError> {
    terrace_tests::call(&worker.address, ReleasePartition { key: key.clone() })
}

fn drop_job(worker: &TestWorker, job: &JobId) -> Result<Ack, terrace_tier_api::TierError> {
    terrace_tests::call(&worker.address, DropJob { job: job.clone() })
}

fn assert_ack(reply: Result<Ack, terrace_tier_api::TierError>, what: &str) {
    if let Err(e) = reply {
        panic!("{what}: expected Ack, got {e}");
    }
}

/// Opens a consumer on `key` and waits for its error; checks it is
/// PartitionNotFound, arrives within 5 s, hands out nothing and wakes the engine.
fn assert_reader_gets_not_found(
    config: &AgentConfig,
    worker: &TestWorker,
    key: &PartitionKey,
) -> String {
    let wake = wakeup();
    let spec = ConsumerSpec {
        partition: key.partition.clone(),
        input_channel: InputChannelId(0),
        subpartitions: 0..=SUBS - 1,
    };
    let started = clock::now();
    let mut consumer = ConsumerAgent::new(
        config.clone(),
        vec![spec],
        vec![Some(worker.descriptor(key))],
    )
    .expect("consumer");
    consumer.register_availability_notifier(Arc::clone(&wake) as _);
    consumer.start().expect("consumer starts");
    let (error, delivered) = wait_for_error(&consumer, &key.partition, 0, Duration::from_secs(10));
    let elapsed = clock::elapsed(started);
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    assert!(
        delivered.is_empty(),
        "a reader of {key} got {} buffers",
        delivered.len()
    );
    // A release is known to the worker: no waiting for the partition to appear.
    assert!(
        elapsed < CREATION_WAIT / 2,
        "a released partition must fail at once, not after the {CREATION_WAIT:?} creation wait (took {elapsed:?})"
    );
    assert!(
        wake.current() >= 1,
        "the consumer did not wake the engine on the error"
    );
    let peeked = consumer
        .peek_next_buffer_subpartition_id(&key.partition, &(0..=SUBS - 1))
        .expect_err("peek reports the failure too");
    assert_eq!(peeked.kind(), ErrorKind::PartitionNotFound);
    error.message().to_string()
}

#[test]
fn release_deletes_a_partitions_files_and_drop_job_deletes_the_job() {
    let _logs = logs::capture();
    let root = tempfile::tempdir().expect("temp dir");
    let dirs = data_dirs(root.path());
    let worker = start_worker(&dirs);
    let config = small_agent_config();
    let first = key(3, 0);
    let second = key(3, 1);
    let expected_first = write_partition(
        &config,
        worker.descriptor(&first),
        0,
        SUBS,
        BUFFERS_PER_SUB,
        BUFFER_LEN,
    );
    let expected_second = write_partition(
        &config,
        worker.descriptor(&second),
        1,
        SUBS,
        BUFFERS_PER_SUB,
        BUFFER_LEN,
    );
    assert_eq!(expected_first.len(), SUBS as usize);
    assert_eq!(expected_second.len(), SUBS as usize);

    // Sealed: both files of each partition are on disk, with all the payload.
    let payload_bytes = u64::from(SUBS * BUFFERS_PER_SUB) * BUFFER_LEN as u64;
    let (first_data, first_index) = files_of(&dirs, &first);
    let (second_data, second_index) = files_of(&dirs, &second);
    for data in [&first_data, &second_data] {
        let len = std::fs::metadata(data).expect("data file").len();
        assert!(
            len >= payload_bytes,
            "{} has {len} bytes, less than the {payload_bytes} written",
            data.display()
        );
    }
    // Two data directories, two partitions: one each.
    assert_ne!(
        first_data.parent().and_then(Path::parent),
        second_data.parent().and_then(Path::parent),
        "partitions are spread over the data directories"
    );

    assert_ack(release(&worker, &first), "release the first partition");
    assert!(
        !first_data.exists(),
        "{} survived the release",
        first_data.display()
    );
    assert!(
        !first_index.exists(),
        "{} survived the release",
        first_index.display()
    );
    assert_no_files_of(&dirs, &first);
    assert!(
        second_data.is_file() && second_index.is_file(),
        "the other partition's files must stay"
    );

    let message = assert_reader_gets_not_found(&config, &worker, &first);
    // Released, not just missing: only the text tells (both PartitionNotFound).
    assert!(message.contains(&first.partition.to_hex()), "{message}");
    assert!(message.contains("released"), "{message}");

    // The other partition is untouched and still reads back exactly.
    let got = read_partition(
        &config,
        worker.descriptor(&second),
        SUBS,
        Duration::from_secs(30),
    )
    .expect("read second");
    for sub in 0..SUBS {
        assert_buffers_eq(
            got.get(&sub).map(Vec::as_slice).unwrap_or_default(),
            &expected_second[&sub],
            &format!("second partition subpartition {sub}"),
        );
    }

    assert_ack(drop_job(&worker, &first.job), "drop the job");
    let job_hex = first.job.to_hex();
    for dir in &dirs {
        assert!(
            dir.is_dir(),
            "the data directory {} itself stays",
            dir.display()
        );
        let left: Vec<PathBuf> = terrace_tests::entries_under(dir);
        assert!(
            left.iter().all(|p| !p.to_string_lossy().contains(&job_hex)),
            "files of job {job_hex} left in {}: {left:?}",
            dir.display()
        );
        assert!(
            left.is_empty(),
            "{} must be empty after the job's drop: {left:?}",
            dir.display()
        );
    }
    let message = assert_reader_gets_not_found(&config, &worker, &second);
    assert!(message.contains(&second.partition.to_hex()), "{message}");

    // Releasing a partition of the dropped job again: not found.
    let again = release(&worker, &second).expect_err("the dropped job's partition is gone");
    assert_eq!(again.kind(), ErrorKind::PartitionNotFound, "{again}");
    worker.stop();
}

#[test]
fn drop_job_leaves_other_jobs_intact() {
    let _logs = logs::capture();
    let root = tempfile::tempdir().expect("temp dir");
    let dirs = data_dirs(root.path());
    let worker = start_worker(&dirs);
    let config = small_agent_config();
    let dropped = [key(4, 0), key(4, 1)];
    let kept = [key(5, 0), key(5, 1)];
    for (i, k) in dropped.iter().enumerate() {
        write_partition(&config, worker.descriptor(k), i as u32, SUBS, 4, BUFFER_LEN);
    }
    let expected: Vec<_> = kept
        .iter()
        .enumerate()
        .map(|(i, k)| {
            write_partition(
                &config,
                worker.descriptor(k),
                10 + i as u32,
                SUBS,
                4,
                BUFFER_LEN,
            )
        })
        .collect();

    assert_ack(drop_job(&worker, &dropped[0].job), "drop job 4");
    for k in &dropped {
        assert_no_files_of(&dirs, k);
    }
    for dir in &dirs {
        assert!(
            !dir.join(dropped[0].job.to_hex()).exists(),
            "job directory left in {}",
            dir.display()
        );
    }
    for (k, want) in kept.iter().zip(&expected) {
        let (data, index) = files_of(&dirs, k);
        assert!(data.is_file() && index.is_file());
        let got = read_partition(&config, worker.descriptor(k), SUBS, Duration::from_secs(30))
            .expect("read kept job");
        for sub in 0..SUBS {
            assert_buffers_eq(
                got.get(&sub).map(Vec::as_slice).unwrap_or_default(),
                &want[&sub],
                &format!("{k} subpartition {sub}"),
            );
        }
    }
    worker.stop();
}

#[test]
fn releasing_an_unknown_partition_is_partition_not_found() {
    let _logs = logs::capture();
    let root = tempfile::tempdir().expect("temp dir");
    let dirs = data_dirs(root.path());
    let worker = start_worker(&dirs);
    let unknown = key(6, 9);
    let started = clock::now();
    let error = release(&worker, &unknown).expect_err("nothing to release");
    assert!(
        clock::elapsed(started) < Duration::from_secs(5),
        "took {:?}",
        clock::elapsed(started)
    );
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    assert_eq!(
        error.code(),
        terrace_proto::pb::ErrorCode::PartitionNotFound
    );
    // The kind and code say not found; the text names the partition.
    assert!(
        error.message().contains(&unknown.partition.to_hex()),
        "{error}"
    );

    // Released twice: the second release is not found either.
    let config = small_agent_config();
    let known = key(6, 1);
    write_partition(&config, worker.descriptor(&known), 1, 1, 2, 100);
    assert_ack(release(&worker, &known), "first release");
    let error = release(&worker, &known).expect_err("already released");
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    worker.stop();
}

/// A release that races the partition's seal must still delete everything:
/// after both replies, no file of the partition may remain.
#[test]
fn release_racing_a_seal_leaves_no_files() {
    let _logs = logs::capture();
    use terrace_rpc::{Client, ClientOptions, io_runtime};
    let root = tempfile::tempdir().expect("temp dir");
    let dirs = vec![root.path().join("a")];
    let worker = start_worker(&dirs);
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let (producer, admin) = io_runtime().block_on(async {
        (
            Client::connect(&worker.address, &options)
                .await
                .expect("producer connects"),
            Client::connect(&worker.address, &options)
                .await
                .expect("admin connects"),
        )
    });
    let mut leftovers = Vec::new();
    for i in 0..40u32 {
        let k = key(7, i);
        let mut builder = BatchBuilder::default();
        for j in 0..64u32 {
            builder.push(
                SubpartitionId(0),
                SegmentId(0),
                &Buffer::data(payload(i, 0, j, 8192)),
            );
        }
        let batch = builder.finish();
        let (sealed, released) = io_runtime().block_on(async {
            producer
                .call(CreatePartition {
                    key: k.clone(),
                    num_subpartitions: 1,
                    broadcast_only: false,
                    continuation: false,
                    relocated: false,
                })
                .await
                .expect("create");
            let push = producer
                .start_call(PushData {
                    key: k.clone(),
                    crc32c: crc32c::crc32c(&batch.bytes),
                    num_buffers: batch.num_buffers,
                    body: batch.bytes.clone().into(),
                })
                .expect("push sent");
            push.wait().await.expect("push acknowledged");
            let seal = producer
                .start_call(SealPartition { key: k.clone() })
                .expect("seal sent");
            // Vary the overlap between the seal and the release.
            clock::sleep(Duration::from_micros(150 * u64::from(i % 8))).await;
            let release = admin
                .start_call(ReleasePartition { key: k.clone() })
                .expect("release sent");
            (seal.wait().await, release.wait().await)
        });
        assert!(
            released.is_ok(),
            "release {i}: {released:?} (seal: {sealed:?})"
        );
        let (data, index) = files_in(&dirs[0], &k);
        if data.exists() || index.exists() {
            leftovers.push(format!(
                "partition {i}: data {} index {} (seal: {:?})",
                data.exists(),
                index.exists(),
                sealed
            ));
        }
    }
    producer.close();
    admin.close();
    assert!(
        leftovers.is_empty(),
        "files left after an acknowledged release: {leftovers:#?}"
    );
    worker.stop();
}
