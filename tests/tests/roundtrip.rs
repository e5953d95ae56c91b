//! Segments pushed to a worker over real TCP come back exactly: every buffer's
//! boundaries, data type, compressed flag and bytes, with END_OF_SEGMENT in
//! the right places.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_consumer_agent::ConsumerAgent;
use terrace_tests::{
    END_PAYLOAD, RecordingWriter, TestWorker, drain, key, payload, producer, wakeup,
};
use terrace_tier_api::{
    AgentConfig, Buffer, ByteSize, ConsumerSpec, DataType, InputChannelId, PartitionId,
    TierConsumerAgent, TierProducerAgent,
};
use terrace_worker::WorkerConfig;

const PRODUCERS: u32 = 4;
const SUBPARTITIONS: u32 = 64;
const CONSUMERS: u32 = 4;

fn agent_config(compression: bool) -> AgentConfig {
    AgentConfig {
        segment_size: ByteSize::kib(256),
        push_size: ByteSize::kib(256),
        max_bytes_in_flight: ByteSize::mib(2),
        max_buffer_size: ByteSize::mib(1),
        compression,
        read_credits: 4,
        ..AgentConfig::default()
    }
}

/// The buffers written to one subpartition, in order (before segmenting).
/// Subpartitions with `sub % 8 == 7` get nothing at all, `== 6` only the end
/// event; the rest mix full, zero-length, event, flagged-compressed and (for
/// `sub % 8 == 0`) maximum-size buffers, then the end event.
fn plan(partition: u32, sub: u32, max_buffer: usize) -> Vec<Buffer> {
    let mut out = Vec::new();
    match sub % 8 {
        7 => return out,
        6 => {}
        kind => {
            for i in 0..26u32 {
                let buffer = match i % 9 {
                    3 => Buffer::data(Bytes::new()),
                    5 => Buffer::event(payload(partition, sub, i, 17)),
                    7 => Buffer {
                        data_type: DataType::Data,
                        compressed: true,
                        payload: payload(partition, sub, i, 32 * 1024 - 1),
                    },
                    _ => Buffer::data(payload(partition, sub, i, 32 * 1024)),
                };
                out.push(buffer);
                if kind == 0 && i == 13 {
                    out.push(Buffer::data(payload(partition, sub, 1000 + i, max_buffer)));
                }
            }
        }
    }
    out.push(Buffer::event(Bytes::from_static(END_PAYLOAD)));
    out
}

fn run_roundtrip(compression: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = TestWorker::start(WorkerConfig {
        data_dirs: vec![dir.path().join("a"), dir.path().join("b")],
        memory_budget: ByteSize::mib(64),
        ..WorkerConfig::default()
    });
    roundtrip_on(&worker, compression);
    worker.stop();
}

/// 4 producers x 64 subpartitions through `worker`, consumers reading while
/// producers write; every buffer must come back exactly.
fn roundtrip_on(worker: &TestWorker, compression: bool) {
    let config = agent_config(compression);
    let max_buffer = config.max_buffer_size.as_usize();
    let keys: Vec<_> = (0..PRODUCERS).map(|p| key(1, p)).collect();

    // Consumers start first: they must receive everything once it arrives.
    let wakeups: Vec<_> = (0..CONSUMERS).map(|_| wakeup()).collect();
    let mut consumers = Vec::new();
    for c in 0..CONSUMERS {
        let per = SUBPARTITIONS / CONSUMERS;
        let range = c * per..=c * per + per - 1;
        let specs: Vec<ConsumerSpec> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ConsumerSpec {
                partition: k.partition.clone(),
                input_channel: InputChannelId(i as u32),
                subpartitions: range.clone(),
            })
            .collect();
        let descriptors = keys.iter().map(|k| Some(worker.descriptor(k))).collect();
        let mut consumer =
            ConsumerAgent::new(config.clone(), specs, descriptors).expect("consumer");
        consumer.register_availability_notifier(Arc::clone(&wakeups[c as usize]) as _);
        consumer.start().expect("consumer starts");
        consumers.push((consumer, range));
    }

    let producers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(p, k)| {
            let agent = producer(&config, worker.descriptor(k), SUBPARTITIONS, false);
            thread::spawn(move || {
                let mut writer = RecordingWriter::new(agent);
                let plans: Vec<Vec<Buffer>> = (0..SUBPARTITIONS)
                    .map(|s| plan(p as u32, s, max_buffer))
                    .collect();
                let longest = plans.iter().map(Vec::len).max().unwrap_or(0);
                // Interleave subpartitions like a hash-based writer.
                for i in 0..longest {
                    for (s, buffers) in plans.iter().enumerate() {
                        if let Some(b) = buffers.get(i) {
                            writer.write(s as u32, b.clone()).expect("write");
                        }
                    }
                }
                writer.close().expect("close seals the partition");
                let segments: Vec<u32> =
                    (0..SUBPARTITIONS).map(|s| writer.segments_of(s)).collect();
                (writer.expected, segments)
            })
        })
        .collect();

    let readers: Vec<_> = consumers
        .into_iter()
        .zip(wakeups)
        .map(|((consumer, range), wake)| {
            let targets: Vec<(PartitionId, u32)> = keys
                .iter()
                .flat_map(|k| range.clone().map(move |s| (k.partition.clone(), s)))
                .collect();
            thread::spawn(move || drain(&consumer, &wake, &targets, Duration::from_secs(120)))
        })
        .collect();

    let mut expected: HashMap<(PartitionId, u32), Vec<Buffer>> = HashMap::new();
    for (p, handle) in producers.into_iter().enumerate() {
        let (written, segments) = handle.join().expect("producer thread");
        for s in 0..SUBPARTITIONS {
            if s % 8 < 6 {
                assert!(
                    segments[s as usize] >= 3,
                    "subpartition {s} spans {} segments",
                    segments[s as usize]
                );
            }
            expected.insert(
                (keys[p].partition.clone(), s),
                written.get(&s).cloned().unwrap_or_default(),
            );
        }
    }
    let mut got: HashMap<(PartitionId, u32), Vec<Buffer>> = HashMap::new();
    for handle in readers {
        got.extend(
            handle
                .join()
                .expect("reader thread")
                .expect("reads complete"),
        );
    }
    let mut checked_buffers = 0usize;
    for ((partition, sub), want) in &expected {
        let have = got
            .get(&(partition.clone(), *sub))
            .cloned()
            .unwrap_or_default();
        assert_eq!(have.len(), want.len(), "buffer count of {partition}/{sub}");
        for (i, (h, w)) in have.iter().zip(want).enumerate() {
            assert_eq!(
                h.data_type, w.data_type,
                "type of buffer {i} of {partition}/{sub}"
            );
            assert_eq!(
                h.compressed, w.compressed,
                "compressed flag of buffer {i} of {partition}/{sub}"
            );
            assert_eq!(
                h.payload, w.payload,
                "bytes of buffer {i} of {partition}/{sub}"
            );
        }
        checked_buffers += want.len();
        if sub % 8 == 7 {
            assert!(have.is_empty());
        }
    }
    assert_eq!(expected.len(), (PRODUCERS * SUBPARTITIONS) as usize);
    assert!(
        checked_buffers > 5_000,
        "only {checked_buffers} buffers checked"
    );
}

/// The same shuffle with segments in all three tiers, forced by tiny
/// thresholds: a 16 MiB memory budget, 8 MiB of local disk (the rest
/// overflows to a real S3-compatible server), and partitions migrating to
/// the store as soon as they are sealed, while readers still read them.
#[test]
fn four_producers_64_subpartitions_roundtrip_exactly_across_memory_disk_and_object_store() {
    let _logs = logs::capture();
    use std::sync::atomic::Ordering;
    let s3 = terrace_tests::s3::S3Server::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let options = [
        ("aws_endpoint", s3.endpoint()),
        (
            "aws_access_key_id",
            terrace_tests::s3::ACCESS_KEY.to_string(),
        ),
        (
            "aws_secret_access_key",
            terrace_tests::s3::SECRET_KEY.to_string(),
        ),
        ("aws_region", terrace_tests::s3::REGION.to_string()),
        ("aws_allow_http", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let worker = TestWorker::start(WorkerConfig {
        data_dirs: vec![dir.path().join("a"), dir.path().join("b")],
        memory_budget: ByteSize::mib(16),
        max_frame_size: ByteSize::mib(4),
        dir_capacity: Some(ByteSize::mib(4)),
        dir_reserve: ByteSize::kib(0),
        object_store: Some(terrace_worker::ObjectStoreConfig {
            url: s3.url("mixed"),
            options,
            part_size: ByteSize::mib(5),
            cold_after: Duration::ZERO,
            migration_interval: Duration::from_millis(50),
            ..Default::default()
        }),
        ..WorkerConfig::default()
    });
    roundtrip_on(&worker, false);
    let store = &worker.handle.as_ref().expect("running").store;
    let object = store.tiers().object.as_ref().expect("object tier");
    let overflowed = object.counters.bytes_overflowed.load(Ordering::Relaxed);
    // Migration starts at seal, but a loaded machine can finish the reads
    // before the first upload completes; the sealed partitions stay, so the
    // migrator gets there within a few ticks.
    terrace_tests::wait::poll_until(Duration::from_secs(10), || {
        object.counters.bytes_migrated.load(Ordering::Relaxed) > 0
    });
    let migrated = object.counters.bytes_migrated.load(Ordering::Relaxed);
    assert!(overflowed > 0, "no flush overflowed to the store");
    assert!(migrated > 0, "no partition migrated to the store");
    assert!(store.budget().peak() > 0, "pushes went through memory");
    assert_eq!(
        object.counters.failures.load(Ordering::Relaxed),
        0,
        "object store requests failed; the last: {:?}",
        object.last_error()
    );
    eprintln!(
        "mixed tiers: {} MiB overflowed, {} MiB migrated, {} objects in the bucket",
        overflowed >> 20,
        migrated >> 20,
        s3.objects("mixed").len()
    );
    worker.stop();
}

#[test]
fn four_producers_64_subpartitions_roundtrip_exactly_uncompressed() {
    let _logs = logs::capture();
    run_roundtrip(false);
}

#[test]
fn four_producers_64_subpartitions_roundtrip_exactly_lz4() {
    let _logs = logs::capture();
    run_roundtrip(true);
}

/// A broadcast-only partition is stored once (written to subpartition 0) and
/// every subpartition's reader gets exactly that data.
#[test]
fn broadcast_only_partition_is_stored_once_and_read_by_every_subpartition() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = TestWorker::start(WorkerConfig {
        data_dirs: vec![dir.path().to_path_buf()],
        memory_budget: ByteSize::mib(64),
        ..WorkerConfig::default()
    });
    let config = agent_config(true);
    const SUBS: u32 = 8;
    let k = key(3, 1);
    let mut writer = RecordingWriter::new(producer(&config, worker.descriptor(&k), SUBS, true));
    for i in 0..30u32 {
        writer
            .write(0, Buffer::data(payload(9, 0, i, 20 * 1024)))
            .expect("write subpartition 0");
    }
    writer
        .write(0, Buffer::event(Bytes::from_static(END_PAYLOAD)))
        .expect("write end");
    let refused = writer
        .agent
        .try_start_new_segment(
            terrace_tier_api::SubpartitionId(3),
            terrace_tier_api::SegmentId(0),
            1,
        )
        .expect_err("broadcast-only partitions take subpartition 0 only");
    assert_eq!(refused.kind(), terrace_tier_api::ErrorKind::BadInput);
    writer.close().expect("seal");
    assert!(writer.segments_of(0) >= 3);
    let want = writer.expected[&0].clone();

    let stored = worker.handle.as_ref().expect("running").store.partitions()[0].stored_bytes();
    let written: u64 = want
        .iter()
        .map(|b| (b.len() + terrace_tier_api::BUFFER_HEADER_LEN) as u64)
        .sum();
    assert_eq!(stored, written, "stored once, not once per subpartition");

    let spec = ConsumerSpec {
        partition: k.partition.clone(),
        input_channel: InputChannelId(0),
        subpartitions: 0..=SUBS - 1,
    };
    let mut consumer = ConsumerAgent::new(config, vec![spec], vec![Some(worker.descriptor(&k))])
        .expect("consumer");
    let wake = wakeup();
    consumer.register_availability_notifier(Arc::clone(&wake) as _);
    consumer.start().expect("start");
    let targets: Vec<_> = (0..SUBS).map(|s| (k.partition.clone(), s)).collect();
    let got = drain(&consumer, &wake, &targets, Duration::from_secs(60)).expect("read all");
    for s in 0..SUBS {
        assert_eq!(
            got[&(k.partition.clone(), s)],
            want,
            "subpartition {s} reads the broadcast data"
        );
    }
    worker.stop();
}
