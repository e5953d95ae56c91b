//! The limits every worker connection lives under (the `[server]` table):
//! frame deadlines, the connection limit, handshake and idle timeouts, and
//! replies a client never reads. Each case runs against a real worker over
//! loopback TCP, and a well-behaved client is served throughout.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::time::Duration;
use terrace_tests::logs;

use terrace_proto::{Message, PROTOCOL_VERSION, encode_frame, pb};
use terrace_rpc::ServerOptions;
use terrace_rpc::clock;
use terrace_tests::raw::{GoodClient, Raw, create, handshake, open_stream, pb_key, push};
use terrace_tests::{
    TestWorker, assert_buffers_eq, key, read_partition, small_agent_config, write_partition,
};
use terrace_tier_api::{Buffer, ByteSize};
use terrace_worker::WorkerConfig;

const MAX_FRAME: u64 = 16 * 1024 * 1024;
const BUDGET: u64 = 64 * 1024 * 1024;
const STALL_JOB: u8 = 9;

fn start_worker(dir: &tempfile::TempDir, server: ServerOptions) -> TestWorker {
    TestWorker::start(WorkerConfig {
        data_dirs: vec![dir.path().join("data")],
        memory_budget: ByteSize(BUDGET),
        flush_high_watermark: 0.0,
        flush_low_watermark: 0.0,
        max_frame_size: ByteSize(MAX_FRAME),
        server,
        ..WorkerConfig::default()
    })
}

fn budget_used(worker: &TestWorker) -> u64 {
    worker
        .handle
        .as_ref()
        .expect("worker running")
        .store
        .budget()
        .used()
}

/// True while the worker has neither sent anything on `raw` nor closed it.
fn still_waiting(raw: &mut Raw) -> bool {
    raw.stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let waiting =
        matches!(raw.stream.read(&mut byte), Err(e) if e.kind() == IoErrorKind::WouldBlock);
    raw.stream.set_nonblocking(false).expect("blocking");
    waiting
}

/// Sends the prefix and header of a push announcing a `MAX_FRAME` frame,
/// and `sent` bytes of its body; the rest never comes.
fn announce_and_stall(raw: &mut Raw, request_id: u64, partition: u32, sent: usize) {
    let k = key(STALL_JOB, partition);
    raw.send(&create(request_id, &k, 1), &[]);
    raw.expect_ack(request_id);
    let (header, _) = push(request_id + 1, &k, &[Buffer::data(vec![1u8; 100])]);
    let message = Message::PushData(header);
    let body_len = MAX_FRAME as usize - 5 - message.header_len();
    let mut frame = encode_frame(&message, body_len).to_vec();
    frame.extend(std::iter::repeat_n(7u8, sent));
    raw.send_bytes(&frame);
}

#[test]
fn stalled_pushes_hold_almost_nothing_and_are_closed_at_their_deadline() {
    let _logs = logs::capture();
    let frame_timeout = Duration::from_secs(4);
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(
        &dir,
        ServerOptions {
            frame_timeout,
            ..ServerOptions::default()
        },
    );
    let good = GoodClient::start(&worker);
    // 64 connections announce 16 MiB pushes (1 GiB, 16 times the budget)
    // and send 1000 bytes of each.
    let started = clock::now();
    let mut stalled: Vec<Raw> = (0..64)
        .map(|i| {
            let mut raw = Raw::handshaken(&worker);
            announce_and_stall(&mut raw, 10, 100 + i, 1000);
            raw
        })
        .collect();
    // Each holds at most the piece it is reading into (256 KiB), not 16 MiB.
    let held = budget_used(&worker);
    assert!(
        held <= 64 * 256 * 1024 + 8 * 1024 * 1024,
        "stalled pushes hold {held} bytes of the budget"
    );

    // Meanwhile another client creates, pushes, seals, reads and releases.
    let config = small_agent_config();
    let k = key(STALL_JOB, 1);
    let expected = write_partition(&config, worker.descriptor(&k), 1, 2, 40, 20_000);
    let got = read_partition(&config, worker.descriptor(&k), 2, Duration::from_secs(30))
        .expect("the good partition reads back");
    for sub in 0..2 {
        assert_buffers_eq(&got[&sub], &expected[&sub], &format!("subpartition {sub}"));
    }
    let mut release = Raw::handshaken(&worker);
    release.send(
        &Message::ReleasePartition(pb::ReleasePartition {
            request_id: 5,
            key: pb_key(&k),
        }),
        &[],
    );
    release.expect_ack(5);
    assert!(
        clock::elapsed(started) < frame_timeout,
        "the good client took {:?}, past the stalled frames' deadline: this run shows nothing",
        clock::elapsed(started)
    );
    for raw in &mut stalled {
        assert!(
            still_waiting(raw),
            "a stalled connection was answered before its deadline"
        );
    }

    // At the deadline every stalled connection is told why and closed.
    for raw in &mut stalled {
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        // The text names the limit (server.frame_timeout); the code is checked above.
        assert!(
            message.contains("did not arrive within 4s")
                && message.contains("server.frame_timeout"),
            "{message}"
        );
        raw.expect_eof();
    }
    assert!(
        clock::elapsed(started) >= frame_timeout,
        "closed before the deadline"
    );
    good.finish();
    // With the stalled frames gone and the good data flushed, nothing is held.
    terrace_tests::wait_until(
        Duration::from_secs(10),
        "memory budget back to zero",
        || budget_used(&worker) == 0,
    );
    worker.stop();
}

#[test]
fn control_frames_are_served_while_pushes_wait_for_a_full_budget() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing is written out: pushes fill the budget and stay. (With
    // `write_on_push`, each push would go to disk until the directory's
    // capacity, by default the filesystem's free space, ran out.)
    let worker = TestWorker::start(WorkerConfig {
        data_dirs: vec![dir.path().join("data")],
        dir_capacity: Some(ByteSize(4 * BUDGET)),
        memory_budget: ByteSize(BUDGET),
        flush_high_watermark: 1.0,
        flush_low_watermark: 1.0,
        write_on_push: false,
        max_frame_size: ByteSize(MAX_FRAME),
        ..WorkerConfig::default()
    });
    let k = key(STALL_JOB, 2);
    let mut filler = Raw::handshaken(&worker);
    filler.send(&create(1, &k, 1), &[]);
    filler.expect_ack(1);
    let big: Vec<Buffer> = (0..15)
        .map(|i| Buffer::data(vec![i as u8; 1 << 20]))
        .collect();
    let mut id = 2;
    while budget_used(&worker) + MAX_FRAME <= BUDGET {
        assert!(id < 16, "pushes of 15 MiB fill a 64 MiB budget in a few");
        let (header, body) = push(id, &k, &big);
        filler.send(&Message::PushData(header), &body);
        filler.expect_ack(id);
        id += 1;
    }
    // One more push waits for memory that will not come.
    let (header, body) = push(id, &k, &big);
    let mut waiting = Raw::handshaken(&worker);
    let mut first_half = encode_frame(&Message::PushData(header), body.len()).to_vec();
    first_half.extend_from_slice(&body[..body.len() / 2]);
    waiting.send_bytes(&first_half);
    // Control frames on other connections are answered at once.
    let mut control = Raw::handshaken(&worker);
    control.send(&create(50, &key(STALL_JOB, 3), 1), &[]);
    control.expect_ack(50);
    control.send(
        &Message::WorkerStats(pb::WorkerStats { request_id: 51 }),
        &[],
    );
    match control.read() {
        (Message::WorkerStatsReply(r), _) => assert_eq!(r.request_id, 51),
        (other, _) => panic!("expected WorkerStatsReply, got {other:?}"),
    }
    // A release frees the memory, and the waiting push goes through.
    control.send(
        &Message::ReleasePartition(pb::ReleasePartition {
            request_id: 52,
            key: pb_key(&k),
        }),
        &[],
    );
    control.expect_ack(52);
    waiting.send_bytes(&body[body.len() / 2..]);
    let _ = waiting.expect_error(id, pb::ErrorCode::PartitionNotFound);
    worker.stop();
}

#[test]
fn connections_past_the_limit_are_refused_with_a_reason() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(
        &dir,
        ServerOptions {
            max_connections: 3,
            ..ServerOptions::default()
        },
    );
    let mut open: Vec<Raw> = (0..3).map(|_| Raw::handshaken(&worker)).collect();
    let mut extra = Raw::connect(&worker);
    extra.send(&handshake(1, PROTOCOL_VERSION), &[]);
    let message = extra.expect_error(0, pb::ErrorCode::Unavailable);
    // The text names the limit; the code is checked above.
    assert!(
        message.contains("has 3 connections open, its limit (server.max_connections)"),
        "{message}"
    );
    extra.expect_eof();
    // The open ones still work; closing one makes room.
    open[0].send(&create(2, &key(STALL_JOB, 4), 1), &[]);
    open[0].expect_ack(2);
    drop(open.pop());
    terrace_tests::wait_until(
        Duration::from_secs(5),
        "a handshake once a slot is free",
        || {
            let mut again = Raw::connect(&worker);
            again.send(&handshake(1, PROTOCOL_VERSION), &[]);
            match again.read() {
                (Message::HandshakeOk(_), _) => true,
                (Message::ErrorReply(e), _) => {
                    assert_eq!(e.code, pb::ErrorCode::Unavailable as i32);
                    false
                }
                (other, _) => panic!("expected a handshake once a slot is free, got {other:?}"),
            }
        },
    );
    worker.stop();
}

#[test]
fn silent_and_idle_connections_are_closed_but_open_streams_are_not() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(
        &dir,
        ServerOptions {
            handshake_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(1),
            ..ServerOptions::default()
        },
    );
    // No handshake: closed after the handshake timeout.
    let started = clock::now();
    let mut silent = Raw::connect(&worker);
    silent.expect_eof();
    assert!(clock::elapsed(started) >= Duration::from_millis(500));

    // Handshaken and idle: closed after the idle timeout.
    let started = clock::now();
    let mut idle = Raw::handshaken(&worker);
    idle.expect_eof();
    assert!(clock::elapsed(started) >= Duration::from_secs(1));

    // A reader waiting on an open stream is not idle.
    let k = key(STALL_JOB, 5);
    let mut reader = Raw::handshaken(&worker);
    reader.send(&create(2, &k, 1), &[]);
    reader.expect_ack(2);
    reader.send(&open_stream(3, 1, &k, 0, 0, 4), &[]);
    reader.expect_stream_opened(1);
    // Nothing to wait on: the connection must NOT be closed as idle. Two
    // and a half idle timeouts pass.
    terrace_tests::hold(Duration::from_millis(2500));
    assert!(
        still_waiting(&mut reader),
        "a connection with an open stream was closed as idle"
    );
    worker.stop();
}

#[test]
fn a_client_that_never_reads_its_replies_is_not_read_either() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker(
        &dir,
        ServerOptions {
            max_send_queue: ByteSize::kib(64),
            frame_timeout: Duration::from_secs(2),
            ..ServerOptions::default()
        },
    );
    let mut raw = Raw::handshaken(&worker);
    raw.stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let mut request =
        encode_frame(&Message::WorkerStats(pb::WorkerStats { request_id: 9 }), 0).to_vec();
    // Requests in batches of 4 KiB, replies never read.
    let batch: Vec<u8> = request.repeat(4096 / request.len());
    request.clear();
    let started = clock::now();
    let mut sent = 0usize;
    let failure = loop {
        match raw.stream.write_all(&batch) {
            Ok(()) => sent += batch.len(),
            Err(e) => break e,
        }
        assert!(
            clock::elapsed(started) < Duration::from_secs(60),
            "the worker kept reading requests whose replies nobody reads"
        );
    };
    // Once its replies stop draining, the worker stops reading requests (the
    // socket buffers fill and writes block), then closes at the deadline.
    assert!(
        matches!(
            failure.kind(),
            IoErrorKind::BrokenPipe | IoErrorKind::ConnectionReset
        ),
        "write ended with {failure}"
    );
    assert!(
        sent < 64 * 1024 * 1024,
        "the worker took {sent} bytes of requests before stopping"
    );
    let _ = raw.stream.flush();
    // The worker is fine and serves others.
    let mut other = Raw::handshaken(&worker);
    other.send(&create(1, &key(STALL_JOB, 6), 1), &[]);
    other.expect_ack(1);
    worker.stop();
}
