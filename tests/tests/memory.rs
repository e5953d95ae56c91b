//! Every byte a peer can make a worker hold is counted: real `terrace
//! worker` processes under the attacks of issue 18 and their neighbours,
//! resident memory measured (`/proc/<pid>/status`) and held under memory
//! budget + read budget + 64 MiB, and the requests past a limit refused
//! with an error naming it.
//!
//! `TERRACE_MEMORY_TEST_BIN=/path/to/terrace` runs the attacks against
//! another build (one without the limits: the new `[limits]` keys are then
//! left out of its config), to measure what they did before.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_proto::{Message, encode_frame, pb};
use terrace_rpc::clock;
use terrace_tests::raw::{Raw, create, open_stream, pb_key};
use terrace_tests::{ServiceProcess, await_stdout_line, key, terrace_bin, worker_stats};
use terrace_tier_api::{BatchBuilder, Buffer, PartitionKey, SegmentId, SubpartitionId};

const MIB: u64 = 1 << 20;
const MEMORY_BUDGET: u64 = 256 * MIB;
const READ_MEMORY: u64 = 32 * MIB;
/// What resident memory must stay under.
const BOUND: u64 = MEMORY_BUDGET + READ_MEMORY + 64 * MIB;

fn other_build() -> Option<PathBuf> {
    std::env::var_os("TERRACE_MEMORY_TEST_BIN").map(PathBuf::from)
}

/// A worker with a 256 MiB memory budget, 32 MiB of read memory, and
/// `limits` (a `[limits]` table body) unless an older build is measured.
fn start_worker(dir: &Path, limits: &str) -> ServiceProcess {
    let config = dir.join("worker.toml");
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmemory_budget = \"256MiB\"\nread_memory = \"32MiB\"\nmax_frame_size = \"8MiB\"\npartition_wait_timeout = \"1s\"\n",
        dir.join("data").display()
    );
    if other_build().is_none() {
        text.push_str(&format!("[limits]\n{limits}\n"));
    }
    std::fs::write(&config, text).expect("write worker config");
    let bin = other_build().unwrap_or_else(terrace_bin);
    let mut child = std::process::Command::new(bin)
        .args(["worker", "--config", config.to_str().expect("utf-8 path")])
        .env(
            "TERRACE_LOG",
            std::env::var("TERRACE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn terrace worker");
    let address = await_stdout_line(&mut child, "listening on ", Duration::from_secs(30))
        .expect("the worker prints its address within 30 s");
    ServiceProcess { child, address }
}

/// Current and peak resident memory of the process (VmRSS, VmHWM).
fn rss(worker: &ServiceProcess) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", worker.pid()))
        .expect("read /proc status");
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .expect("field in /proc status");
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .expect("a number of KiB")
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn report(what: &str, worker: &ServiceProcess, baseline: u64) -> u64 {
    let (now, peak) = rss(worker);
    eprintln!(
        "{what}: worker resident {} MiB (peak {} MiB, baseline {} MiB; bound {} MiB)",
        now / MIB,
        peak / MIB,
        baseline / MIB,
        BOUND / MIB
    );
    peak
}

fn frames(messages: impl IntoIterator<Item = Message>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend_from_slice(&encode_frame(&m, 0));
    }
    out
}

/// Reads frames until `want` of `count` were seen; every other frame is
/// handed to `other`. Bounded by the raw client's read timeout.
fn read_until(raw: &mut Raw, count: usize, mut on: impl FnMut(&Message) -> bool) {
    let mut seen = 0;
    while seen < count {
        let (message, _) = raw.read();
        if on(&message) {
            seen += 1;
        }
    }
}

/// Attack 1: one connection, a partition of 32768 subpartitions, 1024 read
/// streams over its whole range with no credit and no data. Then its
/// neighbour: the streams ask for every subpartition, until the metadata
/// budget refuses.
#[test]
fn read_streams_over_whole_ranges_hold_only_what_is_charged() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(dir.path(), "metadata_memory = \"32MiB\"");
    let baseline = rss(&worker).0;
    let mut raw = Raw::handshaken_to(&worker.address);
    let k = key(1, 1);
    raw.send(&create(2, &k, 32_768), &[]);
    raw.expect_ack(2);
    const STREAMS: u64 = 1024;
    raw.send_bytes(&frames(
        (0..STREAMS).map(|s| open_stream(100 + s, s, &k, 0, 32_767, 0)),
    ));
    let mut opened = HashSet::new();
    read_until(&mut raw, STREAMS as usize, |m| match m {
        Message::StreamOpened(o) => opened.insert(o.stream_id),
        other => panic!("expected StreamOpened, got {other:?}"),
    });
    assert_eq!(opened.len(), STREAMS as usize);
    let peak = report("1024 streams over 32768 subpartitions", &worker, baseline);
    assert!(peak < BOUND, "peak {} MiB", peak / MIB);
    if other_build().is_some() {
        return;
    }
    let stats = worker_stats(&worker.address);
    assert_eq!(stats.metadata_limit_bytes, 32 * MIB);
    // 1024 streams' fixed part (8 KiB each) and the partition: nothing per
    // subpartition of their ranges.
    assert!(
        stats.metadata_bytes >= STREAMS * 8192 && stats.metadata_bytes < STREAMS * 8192 + MIB,
        "metadata charged: {}",
        stats.metadata_bytes
    );

    // The neighbour: every subpartition of the first 8 streams is asked for
    // (8 x 32768 x 160 bytes of state is past what is left of 32 MiB).
    for stream_id in 0..8u64 {
        raw.send_bytes(&frames((0..32_768).map(|sub| {
            Message::RequireSegment(pb::RequireSegment {
                stream_id,
                subpartition: sub,
                segment_id: 0,
            })
        })));
    }
    let mut refused = None;
    read_until(&mut raw, 1, |m| match m {
        Message::StreamError(e) => {
            refused = Some(e.clone());
            true
        }
        other => panic!("expected StreamError, got {other:?}"),
    });
    let refused = refused.expect("a stream was refused");
    assert_eq!(refused.code, pb::ErrorCode::Unavailable as i32);
    // The text names the limit the refusal hit.
    assert!(
        refused.message.contains("limits.metadata_memory"),
        "{}",
        refused.message
    );
    let stats = worker_stats(&worker.address);
    assert!(
        stats.metadata_peak_bytes <= 32 * MIB,
        "metadata peaked at {}",
        stats.metadata_peak_bytes
    );
    let peak = report(
        "then every subpartition of 8 streams required",
        &worker,
        baseline,
    );
    assert!(peak < BOUND, "peak {} MiB", peak / MIB);

    // Closing the connection gives every stream's memory back.
    drop(raw);
    // The partition (2 KiB and its key) is all that is left.
    let gone = terrace_tests::wait::poll_until(Duration::from_secs(10), || {
        worker_stats(&worker.address).metadata_bytes < 4096
    });
    assert!(
        gone,
        "metadata still charged 10 s after the connection closed: {}",
        worker_stats(&worker.address).metadata_bytes
    );
    worker.kill();
}

/// A push of `n` zero-length END_OF_SEGMENT buffers of subpartition 0,
/// segments `first..first + n`: 14 bytes each on the wire, a segment each.
fn marker_push(request_id: u64, k: &PartitionKey, first: u32, n: u32) -> (Message, Bytes) {
    let mut batch = BatchBuilder::default();
    for g in first..first + n {
        batch.push(
            SubpartitionId(0),
            SegmentId(g),
            &Buffer::end_of_segment(Bytes::new()),
        );
    }
    let batch = batch.finish();
    let header = Message::PushData(pb::PushData {
        request_id,
        key: pb_key(k),
        crc32c: crc32c::crc32c(&batch.bytes),
        num_buffers: batch.num_buffers,
    });
    (header, batch.bytes)
}

/// Sends one push and waits for its answer: `Ok(elapsed)` or the error.
fn push_once(raw: &mut Raw, message: &Message, body: &[u8]) -> Result<Duration, pb::ErrorReply> {
    let started = clock::now();
    raw.send(message, body);
    match raw.read() {
        (Message::PushAck(_), _) => Ok(clock::elapsed(started)),
        (Message::ErrorReply(e), _) => Err(e),
        (other, _) => panic!("expected PushAck or ErrorReply, got {other:?}"),
    }
}

/// Attack 2: 40 pushes of 65536 zero-length END_OF_SEGMENT buffers (about
/// 37 MB on the wire) to one partition.
#[test]
fn pushes_of_empty_segments_are_refused_past_the_metadata_budget() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(dir.path(), "metadata_memory = \"32MiB\"");
    let baseline = rss(&worker).0;
    let mut raw = Raw::handshaken_to(&worker.address);
    let k = key(2, 1);
    raw.send(&create(2, &k, 1), &[]);
    raw.expect_ack(2);
    const N: u32 = 65_536;
    let mut accepted = 0;
    let mut refused = Vec::new();
    let mut next = 0;
    for i in 0..40u32 {
        let (message, body) = marker_push(10 + u64::from(i), &k, next, N);
        match push_once(&mut raw, &message, &body) {
            Ok(_) => {
                accepted += 1;
                next += N;
            }
            Err(e) => refused.push(e),
        }
    }
    let peak = report("40 pushes of 65536 empty segments", &worker, baseline);
    assert!(peak < BOUND, "peak {} MiB", peak / MIB);
    if other_build().is_some() {
        return;
    }
    // 65536 segments of one extent each are charged 65536 x 288 bytes (18
    // MiB): the second push does not fit in 32 MiB, nor does any after it.
    assert_eq!(accepted, 1);
    assert_eq!(refused.len(), 39);
    for e in &refused {
        assert_eq!(e.code, pb::ErrorCode::Unavailable as i32, "{}", e.message);
        // The text names the limit the refusal hit.
        assert!(
            e.message.contains("limits.metadata_memory"),
            "{}",
            e.message
        );
    }
    // Its neighbour: many tiny pushes, one empty segment each, pipelined.
    const TINY: u32 = 10_000;
    let k2 = key(2, 2);
    raw.send(&create(3, &k2, 1), &[]);
    raw.expect_ack(3);
    let mut bytes = Vec::new();
    for g in 0..TINY {
        let (message, body) = marker_push(1000 + u64::from(g), &k2, g, 1);
        bytes.extend_from_slice(&encode_frame(&message, body.len()));
        bytes.extend_from_slice(&body);
    }
    raw.send_bytes(&bytes);
    let mut tiny_accepted = 0;
    let mut tiny_refused = 0;
    for _ in 0..TINY {
        match raw.read() {
            (Message::PushAck(_), _) => tiny_accepted += 1,
            (Message::ErrorReply(e), _) => {
                // The text names the limit the refusal hit.
                assert!(
                    e.message.contains("limits.metadata_memory"),
                    "{}",
                    e.message
                );
                tiny_refused += 1;
            }
            (other, _) => panic!("expected PushAck or ErrorReply, got {other:?}"),
        }
    }
    // 18 MiB are taken by the first partition: 10000 x 288 bytes more fit.
    assert_eq!((tiny_accepted, tiny_refused), (TINY, 0));
    let stats = worker_stats(&worker.address);
    assert!(stats.metadata_peak_bytes <= 32 * MIB);
    let peak = report("then 10000 pushes of one empty segment", &worker, baseline);
    assert!(peak < BOUND, "peak {} MiB", peak / MIB);
    worker.kill();
}

/// A push's cost does not grow with the partition: 16 pushes of 65536
/// empty segments each (a million segments in the end) take about as long
/// at the end as at the start. (Before, a push walked the whole index: the
/// 12th took 2.3 times as long as the first.)
#[test]
fn a_push_costs_the_same_into_a_large_partition_as_into_an_empty_one() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(dir.path(), "metadata_memory = \"512MiB\"");
    let mut raw = Raw::handshaken_to(&worker.address);
    let k = key(3, 1);
    raw.send(&create(2, &k, 1), &[]);
    raw.expect_ack(2);
    const N: u32 = 65_536;
    const PUSHES: u32 = 16;
    let mut times = Vec::new();
    for i in 0..PUSHES {
        let (message, body) = marker_push(10 + u64::from(i), &k, i * N, N);
        let took = push_once(&mut raw, &message, &body).expect("push accepted");
        times.push(took);
    }
    eprintln!("push times: {times:?}");
    // The quickest of the first three and of the last three: noise on a
    // shared machine only makes pushes slower, so the quickest says what a
    // push costs. A walk of the index per push made the last ones several
    // times slower than the first.
    let first = times[..3].iter().min().expect("three");
    let last = times[times.len() - 3..].iter().min().expect("three");
    assert!(
        *last < *first * 3 / 2 + Duration::from_millis(30),
        "a push into 983040 segments took {last:?}, into none {first:?}"
    );
    worker.kill();
}

/// Many partitions of many jobs: one job stops at its quota, and all
/// together stop at the metadata budget, with errors naming the limits.
#[test]
fn many_partitions_and_many_jobs_stop_at_their_limits() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(
        dir.path(),
        "metadata_memory = \"16MiB\"\nmax_partitions_per_job = 1000",
    );
    let baseline = rss(&worker).0;
    if other_build().is_some() {
        return;
    }
    let mut raw = Raw::handshaken_to(&worker.address);
    // One job: 1000 partitions, and no more.
    raw.send_bytes(&frames(
        (0..1001u32).map(|p| create(10 + u64::from(p), &key(4, p), 1)),
    ));
    for p in 0..1000u64 {
        raw.expect_ack(10 + p);
    }
    let message = raw.expect_error(1010, pb::ErrorCode::Unavailable);
    // The text names the limit the refusal hit.
    assert!(
        message.contains("holds 1000 partitions of job")
            && message.contains("(limits.max_partitions_per_job)"),
        "{message}"
    );
    // Many jobs, a partition each, until the metadata budget (16 MiB, about
    // 2 KiB a partition) is taken.
    let mut created = 1000u64;
    let mut refusal = None;
    'jobs: for round in 0..4u32 {
        let batch: Vec<Message> = (0..4000u32)
            .map(|j| {
                let id = round * 4000 + j;
                let k = PartitionKey {
                    job: terrace_tier_api::JobId::new(format!("job-{id:08}").into_bytes())
                        .expect("job id"),
                    partition: terrace_tier_api::PartitionId::new(vec![1]).expect("id"),
                };
                create(100_000 + u64::from(id), &k, 1)
            })
            .collect();
        raw.send_bytes(&frames(batch));
        for _ in 0..4000 {
            match raw.read() {
                (Message::Ack(_), _) => created += 1,
                (Message::ErrorReply(e), _) => {
                    refusal = Some(e);
                    break 'jobs;
                }
                (other, _) => panic!("expected Ack or ErrorReply, got {other:?}"),
            }
        }
    }
    let refusal = refusal.expect("the metadata budget ends it");
    assert_eq!(refusal.code, pb::ErrorCode::Unavailable as i32);
    // The text names the limit the refusal hit.
    assert!(
        refusal.message.contains("limits.metadata_memory"),
        "{}",
        refusal.message
    );
    // 16 MiB at 2048 bytes plus a key of 13 or 18 bytes a partition.
    assert!(
        (7900..8200).contains(&created),
        "{created} partitions created"
    );
    let peak = report(&format!("{created} partitions"), &worker, baseline);
    assert!(peak < BOUND, "peak {} MiB", peak / MIB);
    worker.kill();
}
