//! Process-level tests: real `terrace worker` processes, killed with SIGKILL
//! and restarted, and measured for peak resident memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_consumer_agent::ConsumerAgent;
use terrace_proto::{Message, pb};
use terrace_rpc::clock;
use terrace_tests::{
    RecordingWriter, ServiceProcess, drain, flink_sized_key, key, payload, producer, wakeup,
    worker_stats,
};
use terrace_tier_api::{
    AgentConfig, Buffer, ByteSize, ConsumerSpec, ErrorKind, InputChannelId, MAX_ID_BYTES,
    PartitionId, PartitionKey, SegmentId, ShuffleDescriptor, SubpartitionId, TierConsumerAgent,
    TierProducerAgent, WriteOutcome,
};

fn agent_config() -> AgentConfig {
    AgentConfig {
        segment_size: ByteSize::kib(256),
        push_size: ByteSize::kib(512),
        compression: false,
        ..AgentConfig::default()
    }
}

fn worker_config_file(dir: &std::path::Path, memory_budget: &str) -> std::path::PathBuf {
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmemory_budget = \"{memory_budget}\"\nmax_frame_size = \"8MiB\"\npartition_wait_timeout = \"1s\"\n",
            dir.join("data").display()
        ),
    )
    .expect("write worker config");
    path
}

fn start_worker(config: &std::path::Path) -> ServiceProcess {
    ServiceProcess::start(&["worker", "--config", config.to_str().expect("utf-8 path")])
}

fn descriptor(worker: &ServiceProcess, key: &PartitionKey) -> ShuffleDescriptor {
    ShuffleDescriptor::new(key, "worker", worker.address.clone())
}

fn read_partition(
    worker: &ServiceProcess,
    key: &PartitionKey,
    subs: u32,
) -> Result<HashMap<(PartitionId, u32), Vec<Buffer>>, terrace_tier_api::TierError> {
    let config = agent_config();
    let spec = ConsumerSpec {
        partition: key.partition.clone(),
        input_channel: InputChannelId(0),
        subpartitions: 0..=subs - 1,
    };
    let mut consumer = ConsumerAgent::new(config, vec![spec], vec![Some(descriptor(worker, key))])?;
    let wake = wakeup();
    consumer.register_availability_notifier(Arc::clone(&wake) as _);
    consumer.start()?;
    let targets: Vec<_> = (0..subs).map(|s| (key.partition.clone(), s)).collect();
    drain(&consumer, &wake, &targets, Duration::from_secs(60))
}

#[test]
fn sigkilled_worker_restarted_on_same_dirs_serves_sealed_partition_exactly() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = worker_config_file(dir.path(), "256MiB");
    let worker = start_worker(&config_path);
    let config = agent_config();
    const SUBS: u32 = 8;

    // A sealed partition (with an id as long as Flink's)...
    let sealed = flink_sized_key(7, 1);
    let mut writer =
        RecordingWriter::new(producer(&config, descriptor(&worker, &sealed), SUBS, false));
    for i in 0..40u32 {
        for s in 0..SUBS {
            let len = if i % 10 == 3 {
                0
            } else {
                16 * 1024 + (i as usize * 31) % 4000
            };
            writer
                .write(s, Buffer::data(payload(1, s, i, len)))
                .expect("write");
        }
    }
    writer.end_and_close(SUBS);
    assert!(
        writer.segments_of(0) >= 3,
        "the partition spans several segments"
    );
    let expected = writer.expected.clone();

    // ...and one still being written when the worker dies (with the longest id).
    let unsealed = PartitionKey {
        job: sealed.job.clone(),
        partition: PartitionId::new(vec![0xfe; MAX_ID_BYTES]).expect("id"),
    };
    let mut open = producer(&config, descriptor(&worker, &unsealed), 1, false);
    assert!(
        open.try_start_new_segment(SubpartitionId(0), SegmentId(0), 1)
            .expect("start")
    );
    assert_eq!(
        open.try_write(SubpartitionId(0), Buffer::data(payload(2, 0, 0, 1000)), 0)
            .expect("write"),
        WriteOutcome::Written
    );
    open.flush().expect("push what is batched");

    worker.kill();
    let restarted = start_worker(&config_path);

    let got = read_partition(&restarted, &sealed, SUBS)
        .expect("sealed partition is served after restart");
    for s in 0..SUBS {
        let have = &got[&(sealed.partition.clone(), s)];
        let want = &expected[&s];
        assert_eq!(have.len(), want.len(), "buffers of subpartition {s}");
        for (i, (h, w)) in have.iter().zip(want).enumerate() {
            assert_eq!(h, w, "buffer {i} of subpartition {s}");
        }
    }

    // The unsealed partition did not survive: its reader gets not-found, promptly.
    let started = clock::now();
    let err = read_partition(&restarted, &unsealed, 1).expect_err("unsealed data is gone");
    assert_eq!(err.kind(), ErrorKind::PartitionNotFound, "{err}");
    assert!(clock::elapsed(started) < Duration::from_secs(15));
    drop(open);
}

#[test]
fn two_gib_through_a_64_mib_budget_stays_under_budget_plus_64_mib() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = worker_config_file(dir.path(), "64MiB");
    let worker = start_worker(&config_path);
    let baseline = worker.peak_rss();
    let config = AgentConfig {
        segment_size: ByteSize::mib(8),
        push_size: ByteSize::kib(512),
        max_bytes_in_flight: ByteSize::mib(16),
        compression: false,
        ..AgentConfig::default()
    };
    const SUBS: u32 = 16;
    const TOTAL: u64 = 2 << 30;
    let buffer = Bytes::from(vec![0x3cu8; 32 * 1024]);
    let k = key(9, 1);
    let mut agent = producer(&config, descriptor(&worker, &k), SUBS, false);
    let (written, i, segments) = push_round_robin(&mut agent, SUBS, TOTAL, &buffer);
    agent.close().expect("seal after 2 GiB");

    let stats = worker_stats(&worker.address);
    let peak_rss = worker.peak_rss();
    let budget = 64u64 << 20;
    eprintln!(
        "worker baseline rss {} MiB, peak rss {} MiB, budget peak {} MiB, pushed {} MiB",
        baseline >> 20,
        peak_rss >> 20,
        stats.memory_peak_bytes >> 20,
        stats.bytes_pushed >> 20
    );
    // Every buffer and every END_OF_SEGMENT marker, each with its 14-byte batch header, reached the worker.
    let markers = u64::from(segments.iter().sum::<u32>());
    let header = terrace_tier_api::BUFFER_HEADER_LEN as u64;
    assert_eq!(
        stats.bytes_pushed,
        written
            + u64::from(i) * header
            + markers * (header + terrace_tests::EOS_PAYLOAD.len() as u64)
    );
    assert!(
        stats.memory_peak_bytes <= budget,
        "budget accounting peaked at {}",
        stats.memory_peak_bytes
    );
    assert!(
        peak_rss < budget + (64 << 20),
        "worker peak RSS {} MiB exceeds budget + 64 MiB",
        peak_rss >> 20
    );
    worker.kill();
}

/// Writes copies of `buffer` round-robin over `subs` subpartitions until
/// `total` bytes are written, starting a new segment whenever one is full.
/// Returns the bytes and buffers written and the segments started per
/// subpartition after the first.
fn push_round_robin(
    agent: &mut impl TierProducerAgent,
    subs: u32,
    total: u64,
    buffer: &Bytes,
) -> (u64, u32, Vec<u32>) {
    let mut segments = vec![0u32; subs as usize];
    for s in 0..subs {
        assert!(
            agent
                .try_start_new_segment(SubpartitionId(s), SegmentId(0), 1)
                .expect("start")
        );
    }
    let mut written = 0u64;
    let mut i = 0u32;
    while written < total {
        let s = i % subs;
        i += 1;
        let mut b = Buffer::data(buffer.clone());
        loop {
            match agent.try_write(SubpartitionId(s), b, 0).expect("write") {
                WriteOutcome::Written => break,
                WriteOutcome::SegmentFull(back) => {
                    segments[s as usize] += 1;
                    assert!(
                        agent
                            .try_start_new_segment(
                                SubpartitionId(s),
                                SegmentId(segments[s as usize]),
                                1
                            )
                            .expect("start")
                    );
                    b = back;
                }
            }
        }
        written += buffer.len() as u64;
    }
    (written, i, segments)
}

#[test]
fn readers_and_clients_that_stop_reading_stay_under_both_budgets_plus_64_mib() {
    let _logs = logs::capture();
    use std::io::Write;
    use terrace_tests::raw::{Raw, open_stream};

    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("worker.toml");
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmemory_budget = \"64MiB\"\n\
             read_memory = \"48MiB\"\nmax_frame_size = \"8MiB\"\n[server]\nframe_timeout = \"5s\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write worker config");
    let worker = start_worker(&config_path);
    const SUBS: u32 = 8;
    const TOTAL: u64 = 384 << 20;
    let config = AgentConfig {
        segment_size: ByteSize::mib(64),
        push_size: ByteSize::kib(512),
        max_bytes_in_flight: ByteSize::mib(16),
        compression: false,
        ..AgentConfig::default()
    };
    let buffer = Bytes::from(vec![0x5au8; 64 * 1024]);
    let k = key(10, 1);
    let mut agent = producer(&config, descriptor(&worker, &k), SUBS, false);
    let (written, buffers, segments) = push_round_robin(&mut agent, SUBS, TOTAL, &buffer);
    assert_eq!(
        segments,
        vec![0; SUBS as usize],
        "one segment per subpartition"
    );
    agent.close().expect("seal");

    // Two connections with 16 streams each, every stream asking for all
    // 384 MiB with the most credit allowed, and never reading a byte.
    let mut non_readers: Vec<Raw> = (0..2)
        .map(|c| {
            let mut raw = Raw::handshaken_to(&worker.address);
            for s in 0..16u64 {
                let stream_id = c * 100 + s + 1;
                raw.send(
                    &open_stream(stream_id, stream_id, &k, 0, SUBS - 1, 1024),
                    &[],
                );
                for sub in 0..SUBS {
                    raw.send(
                        &Message::RequireSegment(pb::RequireSegment {
                            stream_id,
                            subpartition: sub,
                            segment_id: 0,
                        }),
                        &[],
                    );
                }
            }
            raw
        })
        .collect();
    // A client that sends requests and never reads the replies.
    let flood = {
        let mut raw = Raw::handshaken_to(&worker.address);
        std::thread::spawn(move || {
            let request = terrace_proto::encode_frame(
                &Message::WorkerStats(pb::WorkerStats { request_id: 3 }),
                0,
            )
            .to_vec();
            let batch = request.repeat(4096 / request.len());
            let started = clock::now();
            while clock::elapsed(started) < Duration::from_secs(30) {
                if raw.stream.write_all(&batch).is_err() {
                    return true;
                }
            }
            false
        })
    };
    // Meanwhile a good reader reads everything exactly.
    let got = read_partition(&worker, &k, SUBS).expect("the good reader reads the partition");
    let mut read = 0u64;
    for sub in 0..SUBS {
        let buffers = &got[&(k.partition.clone(), sub)];
        for b in buffers
            .iter()
            .filter(|b| b.data_type == terrace_tier_api::DataType::Data)
        {
            assert_eq!(b.payload, buffer, "a data buffer of subpartition {sub}");
            read += b.payload.len() as u64;
        }
    }
    assert_eq!(
        read, written,
        "the good reader got every byte ({buffers} buffers)"
    );
    assert!(
        flood.join().expect("flood thread"),
        "the worker never closed the client that does not read its replies"
    );
    let peak_rss = worker.peak_rss();
    let bound = (64u64 << 20) + (48 << 20) + (64 << 20);
    eprintln!(
        "worker peak rss {} MiB with readers that stop reading (bound {} MiB)",
        peak_rss >> 20,
        bound >> 20
    );
    assert!(
        peak_rss <= bound,
        "worker peak RSS {} MiB exceeds push budget + read budget + 64 MiB",
        peak_rss >> 20
    );
    non_readers.clear();
    worker.kill();
}

/// `terrace bench` runs its worker as a `terrace worker` process and the raw
/// pipeline yardstick as a `terrace bench-pipe` process, and reports both
/// processes' CPU time per GiB and the worker's peak memory. A small run
/// checks the plumbing and that the figures are real measurements (no
/// speed is asserted: benchmarks are not timed tests).
/// Runs `terrace <args>` (within 180 s), which must succeed, and parses its
/// stdout as JSON.
fn json_report(args: &[&str]) -> serde_json::Value {
    terrace_tests::terrace_json(args, &[], Duration::from_secs(180))
}

/// The README's first command: `terrace demo` on its embedded one-process
/// cluster verifies every byte of its sample shuffle (here a smaller one).
#[test]
fn demo_runs_the_sample_shuffle_and_verifies_every_byte() {
    let _logs = logs::capture();
    let report = json_report(&[
        "demo",
        "--json",
        "--buffers",
        "16",
        "--segment-size",
        "128KiB",
    ]);
    let payload = report["payload_bytes"].as_u64().expect("payload_bytes");
    // 4 producers x 64 subpartitions x 16 buffers of 32 KiB.
    assert_eq!(payload, 4 * 64 * 16 * 32 * 1024, "{report}");
    assert_eq!(report["verified_bytes"].as_u64(), Some(payload), "{report}");
    // 512 KiB per subpartition in 128 KiB segments: several each.
    let segments = report["segments"].as_u64().expect("segments");
    assert!(segments >= 4 * 64 * 4, "{report}");
}

#[test]
fn bench_measures_the_worker_process_and_the_raw_pipeline() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path().to_str().expect("a UTF-8 temp path");
    let report = json_report(&[
        "bench",
        "--bytes",
        "64MiB",
        "--cpu-runs",
        "2",
        "--object-store",
        "none",
        "--json",
        "--dir",
        dir,
    ]);
    let number = |field: &str| {
        report[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} in {report}"))
    };
    // 64 MiB moved through each: both processes did measurable work.
    assert!(number("worker_cpu_seconds_per_gib") > 0.0, "{report}");
    assert!(number("pipeline_cpu_seconds_per_gib") > 0.0, "{report}");
    assert_eq!(
        report["pipeline"]["bytes"], report["payload_bytes"],
        "{report}"
    );
    let rss = number("worker_peak_rss_bytes");
    assert!(
        rss > 1e6 && rss < number("memory_budget_bytes") + 64.0 * 1024.0 * 1024.0,
        "{report}"
    );
    assert!(number("end_to_end_vs_raw_tcp") > 0.0, "{report}");
    assert!(number("pipeline_vs_raw_tcp") > 0.0, "{report}");
    // Two pairs, and the reported ratio is the median of theirs (with two,
    // the larger).
    let pairs = report["cpu_runs"].as_array().expect("cpu_runs");
    assert_eq!(pairs.len(), 2, "{report}");
    let ratios: Vec<f64> = pairs
        .iter()
        .map(|p| p["ratio"].as_f64().expect("a ratio"))
        .collect();
    assert_eq!(
        number("worker_cpu_vs_pipeline"),
        ratios[0].max(ratios[1]),
        "{report}"
    );
    // Each figure splits at the point the data was stored: the write share
    // is part of the whole.
    for pair in pairs {
        for who in ["worker", "pipeline"] {
            let whole = pair[format!("{who}_cpu_seconds_per_gib")].as_f64();
            let write = pair[format!("{who}_write_cpu_seconds_per_gib")].as_f64();
            assert!(
                matches!((whole, write), (Some(whole), Some(write)) if write > 0.0 && write <= whole),
                "{who} in {pair}"
            );
        }
    }
}

/// `terrace bench --scale` at a small size: every step's data is read back
/// (the command verifies every byte and exits 3 otherwise), and each figure
/// it reports is there and consistent with the step's shape.
#[test]
fn bench_scale_mode_reports_what_each_partition_subpartition_and_buffer_costs() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path().to_str().expect("a UTF-8 temp path");
    let report = json_report(&[
        "bench",
        "--scale",
        "--scale-steps",
        "4x4,24x32",
        "--scale-slots",
        "4",
        "--scale-buffer",
        "2KiB",
        "--memory-budget",
        "64MiB",
        "--json",
        "--dir",
        dir,
    ]);
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report}");
    for (step, (p, s)) in steps.iter().zip([(4u64, 4u64), (24, 32)]) {
        let number = |field: &str| {
            step[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} in {step}"))
        };
        assert_eq!(step["buffers"].as_u64(), Some(p * s), "{step}");
        assert_eq!(step["payload_bytes"].as_u64(), Some(p * s * 2048), "{step}");
        assert!(number("placements_per_second") > 0.0, "{step}");
        assert!(number("micros_per_buffer") > 0.0, "{step}");
        // Budget + 64 MiB + 64 bytes per pair, and the peak is a real reading.
        assert_eq!(
            step["worker_rss_limit_bytes"].as_u64(),
            Some((64 << 20) + (64 << 20) + 64 * p * s),
            "{step}"
        );
        assert!(number("worker_rss_peak_bytes") > 1e6, "{step}");
        assert!(number("concurrent_placements_per_second") > 0.0, "{step}");
        // Four tasks at a time, each agent with a connection of its own
        // today: a few at once (a closed agent's connection may linger until
        // its close completes), and at least one and at most one per task
        // opened (counted exactly by the rpc layer).
        let at_once = number("connections_at_once_write").max(number("connections_at_once_read"));
        assert!((1.0..=8.0).contains(&at_once), "{step}");
        let opened_write = number("connections_opened_write");
        let opened_read = number("connections_opened_read");
        assert!((1.0..=p as f64).contains(&opened_write), "{step}");
        assert!((1.0..=s as f64).contains(&opened_read), "{step}");
        // Every consumer task got data, after it started.
        assert!(number("consumer_first_buffer_ms_max") > 0.0, "{step}");
        assert!(
            number("consumer_first_buffer_ms_median") <= number("consumer_first_buffer_ms_max"),
            "{step}"
        );
        assert!(number("producer_setup_ms_max") > 0.0, "{step}");
    }
    assert!(
        report["time_per_buffer_largest_vs_smallest"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{report}"
    );
}

#[test]
fn bench_io_runs_every_kernel_path_and_gets_every_byte_back() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path().to_str().expect("a UTF-8 temp path");
    let report = json_report(&[
        "bench-io", "--bytes", "16MiB", "--runs", "1", "--json", "--dir", dir,
    ]);
    let variants = report.as_array().expect("a list of variants");
    let names: Vec<String> = variants
        .iter()
        .map(|v| format!("{}/{}", v["write"], v["read"]).replace('"', ""))
        .collect();
    for want in [
        "buffered/copy",
        "delayed/copy",
        "buffered/sendfile",
        "buffered/direct",
        "direct/copy",
        "direct/sendfile",
        "direct/direct",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {report}");
    }
    for v in variants {
        // Every run sent 16 MiB in and checked it got as many back.
        let runs = v["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1, "{report}");
        assert_eq!(runs[0]["bytes"], 16 * 1024 * 1024, "{report}");
        assert!(v["mib_s"].as_f64().expect("mib_s") > 0.0, "{report}");
    }
}
