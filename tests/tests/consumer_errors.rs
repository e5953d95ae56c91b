//! A consumer agent surfaces every failure as an error of the right kind,
//! within a bounded time, and wakes the engine for it: never a hang.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use terrace_tests::logs;

use terrace_consumer_agent::ConsumerAgent;
use terrace_rpc::clock;
use terrace_tests::{
    RecordingWriter, TestWorker, Wakeup, assert_buffers_eq, closed_address, key, payload, producer,
    read_partition, small_agent_config, wait_for_error, wakeup, write_partition,
};
use terrace_tier_api::{
    AgentConfig, Buffer, ByteSize, ConsumerSpec, ErrorKind, InputChannelId, PartitionKey,
    SegmentId, ShuffleDescriptor, SubpartitionId, TierConsumerAgent,
};
use terrace_worker::WorkerConfig;

/// Every error must surface within this long.
const ERROR_DEADLINE: Duration = Duration::from_secs(10);

fn worker_config(dir: PathBuf) -> WorkerConfig {
    WorkerConfig {
        data_dirs: vec![dir],
        memory_budget: ByteSize::mib(64),
        flush_high_watermark: 0.0,
        flush_low_watermark: 0.0,
        partition_wait_timeout: Duration::from_millis(300),
        ..WorkerConfig::default()
    }
}

/// A started consumer of subpartition 0 of `descriptor`'s partition.
fn consumer(config: &AgentConfig, descriptor: ShuffleDescriptor) -> (ConsumerAgent, Arc<Wakeup>) {
    let partition = descriptor.key().expect("descriptor key").partition;
    let spec = ConsumerSpec {
        partition,
        input_channel: InputChannelId(0),
        subpartitions: 0..=0,
    };
    let wake = wakeup();
    let mut consumer =
        ConsumerAgent::new(config.clone(), vec![spec], vec![Some(descriptor)]).expect("consumer");
    consumer.register_availability_notifier(Arc::clone(&wake) as _);
    consumer.start().expect("consumer starts");
    (consumer, wake)
}

/// Hands out exactly `count` buffers of segment 0 of subpartition 0 (waiting
/// for them as they arrive), within 10 s.
fn read_n(consumer: &ConsumerAgent, key: &PartitionKey, count: usize) -> Vec<Buffer> {
    let mut out = Vec::new();
    let all = terrace_tests::wait::poll_until(Duration::from_secs(10), || {
        while out.len() < count {
            match consumer
                .get_next_buffer(&key.partition, SubpartitionId(0), SegmentId(0))
                .expect("no error while the partition is healthy")
            {
                Some(buffer) => out.push(buffer),
                None => return false,
            }
        }
        true
    });
    assert!(all, "only {} of {count} buffers arrived", out.len());
    out
}

/// A producer that has pushed `count` buffers to subpartition 0 of an
/// unsealed partition; returns it (still open) and what it wrote.
fn unsealed_partition(
    config: &AgentConfig,
    worker: &TestWorker,
    key: &PartitionKey,
    count: u32,
) -> (RecordingWriter, Vec<Buffer>) {
    let mut writer = RecordingWriter::new(producer(config, worker.descriptor(key), 1, false));
    for i in 0..count {
        writer
            .write(0, Buffer::data(payload(9, 0, i, 2000 + i as usize)))
            .expect("write");
    }
    writer.agent.flush().expect("push what is written");
    let written = writer.expected.get(&0).cloned().expect("written buffers");
    assert_eq!(
        written.len(),
        count as usize,
        "all in segment 0, no END_OF_SEGMENT"
    );
    (writer, written)
}

#[test]
fn unreachable_worker_is_partition_not_found() {
    let _logs = logs::capture();
    let config = small_agent_config();
    let k = key(20, 1);
    let address = closed_address();
    let started = clock::now();
    let (consumer, wake) = consumer(
        &config,
        ShuffleDescriptor::new(&k, "gone-worker", address.clone()),
    );
    let (error, delivered) = wait_for_error(&consumer, &k.partition, 0, ERROR_DEADLINE);
    let elapsed = clock::elapsed(started);
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    assert!(delivered.is_empty());
    // The kind says what to do; the text names the worker and the partition.
    assert!(error.message().contains(&address), "{error}");
    assert!(error.message().contains(&k.partition.to_hex()), "{error}");
    let peeked = consumer
        .peek_next_buffer_subpartition_id(&k.partition, &(0..=0))
        .expect_err("peek reports the failure");
    assert_eq!(peeked.kind(), ErrorKind::PartitionNotFound, "{peeked}");
    assert!(
        wake.current() >= 1,
        "the engine was not woken for the failure"
    );
}

#[test]
fn unknown_partition_on_a_live_worker_is_partition_not_found_after_the_wait() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = TestWorker::start(worker_config(dir.path().join("data")));
    let config = small_agent_config();
    let k = key(21, 1);
    let started = clock::now();
    let (consumer, wake) = consumer(&config, worker.descriptor(&k));
    let (error, delivered) = wait_for_error(&consumer, &k.partition, 0, ERROR_DEADLINE);
    let elapsed = clock::elapsed(started);
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    assert!(delivered.is_empty());
    // The worker waits partition_wait_timeout (300 ms) for a late producer, then gives up.
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up after {elapsed:?}, before the 300 ms wait"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // Never created, released and unreadable are all PartitionNotFound: only
    // the text tells which, and it names the partition.
    assert!(error.message().contains(&k.partition.to_hex()), "{error}");
    assert!(error.message().contains("is not on this worker"), "{error}");
    assert!(
        wake.current() >= 1,
        "the engine was not woken for the failure"
    );
    drop(consumer);
    worker.stop();
}

#[test]
fn partition_released_under_an_open_stream_is_partition_not_found() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = TestWorker::start(worker_config(dir.path().join("data")));
    let config = small_agent_config();
    let k = key(22, 1);
    let (writer, written) = unsealed_partition(&config, &worker, &k, 6);
    let (consumer, wake) = consumer(&config, worker.descriptor(&k));
    let got = read_n(&consumer, &k, written.len());
    assert_buffers_eq(&got, &written, "data before the release");
    // The stream is now parked waiting for more of segment 0.
    let woken_before = wake.current();

    let started = clock::now();
    let reply = terrace_tests::call(
        &worker.address,
        terrace_tier_api::protocol::ReleasePartition { key: k.clone() },
    );
    assert!(reply.is_ok(), "release: {reply:?}");
    let (error, delivered) = wait_for_error(&consumer, &k.partition, 0, ERROR_DEADLINE);
    let elapsed = clock::elapsed(started);
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    assert!(
        delivered.is_empty(),
        "{} buffers after the release",
        delivered.len()
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // Released, not just missing: only the text tells (both PartitionNotFound).
    assert!(error.message().contains(&k.partition.to_hex()), "{error}");
    assert!(error.message().contains("released"), "{error}");
    assert!(
        wake.current() > woken_before,
        "the engine was not woken for the release"
    );
    drop(writer);
    drop(consumer);
    worker.stop();
}

/// A worker on `data_dir` holding partition `k` sealed, one subpartition of
/// 8 buffers pushed at close, so its data file is a single extent; with the
/// agent config used, what a reader gets, and the data file's path.
fn one_extent_partition(
    data_dir: &std::path::Path,
    k: &PartitionKey,
) -> (AgentConfig, TestWorker, HashMap<u32, Vec<Buffer>>, PathBuf) {
    let config = AgentConfig {
        push_size: ByteSize::kib(256),
        segment_size: ByteSize::mib(1),
        ..small_agent_config()
    };
    let worker = TestWorker::start(worker_config(data_dir.to_path_buf()));
    let expected = write_partition(&config, worker.descriptor(k), 1, 1, 8, 4096);
    let data_file = data_dir
        .join(k.job.to_hex())
        .join(format!("{}.data", k.partition.to_hex()));
    (config, worker, expected, data_file)
}

#[test]
fn corrupt_byte_on_disk_is_data_corruption_naming_the_partition() {
    let _logs = logs::capture();
    _logs.expect_error("read data rejected");
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let k = key(23, 1);
    let (config, worker, expected, data_file) = one_extent_partition(&data_dir, &k);
    // Control: before the corruption the partition reads back exactly.
    let got = read_partition(&config, worker.descriptor(&k), 1, Duration::from_secs(20))
        .expect("clean read");
    assert_buffers_eq(&got[&0], &expected[&0], "partition before the corruption");
    worker.stop();

    let mut bytes = std::fs::read(&data_file).expect("read the data file");
    assert!(
        bytes.len() > 8 * 4096,
        "data file has {} bytes",
        bytes.len()
    );
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&data_file, &bytes).expect("write the corrupted data file");

    let worker = TestWorker::start(worker_config(data_dir));
    let started = clock::now();
    let (consumer, wake) = consumer(&config, worker.descriptor(&k));
    let (error, delivered) = wait_for_error(&consumer, &k.partition, 0, ERROR_DEADLINE);
    let elapsed = clock::elapsed(started);
    assert_eq!(error.kind(), ErrorKind::DataCorruption, "{error}");
    assert!(
        delivered.is_empty(),
        "{} buffers of a corrupt extent were handed out",
        delivered.len()
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // The kind is DataCorruption (above); the text names the partition.
    assert!(error.message().contains(&k.partition.to_hex()), "{error}");
    assert!(
        wake.current() >= 1,
        "the engine was not woken for the corruption"
    );
    drop(consumer);
    worker.stop();
}

#[test]
fn worker_stopped_under_a_reader_of_an_unsealed_partition_is_partition_not_found() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = TestWorker::start(worker_config(dir.path().join("data")));
    let config = small_agent_config();
    let k = key(24, 1);
    let (writer, written) = unsealed_partition(&config, &worker, &k, 5);
    let (consumer, wake) = consumer(&config, worker.descriptor(&k));
    let got = read_n(&consumer, &k, written.len());
    assert_buffers_eq(&got, &written, "data before the stop");
    let woken_before = wake.current();
    assert!(
        consumer
            .get_next_buffer(&k.partition, SubpartitionId(0), SegmentId(0))
            .expect("healthy")
            .is_none(),
        "nothing more was written"
    );

    let started = clock::now();
    worker.stop();
    let (error, delivered) = wait_for_error(&consumer, &k.partition, 0, ERROR_DEADLINE);
    let elapsed = clock::elapsed(started);
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    assert!(delivered.is_empty());
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(error.message().contains(&k.partition.to_hex()), "{error}");
    assert!(
        wake.current() > woken_before,
        "the engine was not woken for the lost worker"
    );
    drop(writer);
}

/// A data file that cannot be read any more (truncated under the running
/// worker, as a failing disk would) is partition-not-found for the reader,
/// so the engine runs the producer again, and names the partition.
#[test]
fn unreadable_data_file_is_partition_not_found() {
    let _logs = logs::capture();
    _logs.expect_error("its data could not be read");
    let dir = tempfile::tempdir().expect("temp dir");
    let k = key(24, 1);
    let (config, worker, _, data_file) = one_extent_partition(&dir.path().join("data"), &k);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data_file)
        .expect("open the data file")
        .set_len(100)
        .expect("truncate the data file");

    let (consumer, _wake) = consumer(&config, worker.descriptor(&k));
    let (error, delivered) = wait_for_error(&consumer, &k.partition, 0, ERROR_DEADLINE);
    assert_eq!(error.kind(), ErrorKind::PartitionNotFound, "{error}");
    assert!(
        delivered.is_empty(),
        "{} buffers handed out",
        delivered.len()
    );
    // Unreadable, not missing: only the text tells (both PartitionNotFound).
    assert!(error.message().contains(&k.partition.to_hex()), "{error}");
    assert!(error.message().contains("could not be read"), "{error}");
    worker.stop();
}
