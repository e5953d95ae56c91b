//! Malformed and hostile input to a worker over raw TCP: each case gets an
//! `ErrorReply` with the right code and a message naming the problem.
//! Frame-level errors close the connection; request-level errors keep it
//! usable. In every case a well-behaved producer and consumer on another
//! partition, running across the attack, read back exactly what they wrote.

use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_proto::{Message, MessageType, PROTOCOL_VERSION, encode_frame, pb};
use terrace_tests::raw::{GoodClient, Raw, create, handshake, open_stream, push, seal};
use terrace_tests::{
    TestWorker, assert_buffers_eq, key, payload, read_partition, small_agent_config,
};
use terrace_tier_api::{BatchBuilder, Buffer, ByteSize, SegmentId, SubpartitionId};
use terrace_worker::{WorkerConfig, WorkerLimits};

/// The worker's largest accepted frame in these tests.
const MAX_FRAME: u64 = 1024 * 1024;
/// Job of the attacks (the good client uses `GOOD_JOB`).
const ATTACK_JOB: u8 = 8;

fn start_worker_with(dir: &tempfile::TempDir, limits: WorkerLimits) -> TestWorker {
    TestWorker::start(WorkerConfig {
        data_dirs: vec![dir.path().join("data")],
        memory_budget: ByteSize::mib(64),
        flush_high_watermark: 0.0,
        flush_low_watermark: 0.0,
        max_frame_size: ByteSize(MAX_FRAME),
        limits,
        ..WorkerConfig::default()
    })
}

fn attack_buffers(partition: u32, from: u32, count: u32) -> Vec<Buffer> {
    (from..from + count)
        .map(|i| Buffer::data(payload(partition, 0, i, 1000 + i as usize)))
        .collect()
}

/// Runs `attack` against a fresh worker while a good client is mid-way.
fn with_good_client(attack: impl FnOnce(&TestWorker)) {
    with_good_client_on(WorkerLimits::default(), attack)
}

/// Like [`with_good_client`], on a worker with `limits`.
fn with_good_client_on(limits: WorkerLimits, attack: impl FnOnce(&TestWorker)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = start_worker_with(&dir, limits);
    let good = GoodClient::start(&worker);
    attack(&worker);
    good.finish();
    worker.stop();
}

// --- Frame-level errors: PROTOCOL, then the connection is closed. ---
//
// Every frame-level error has the one code PROTOCOL (checked by
// `expect_error`); these tests check the text too because it is the point:
// it names the limit or the offending frame a peer must fix.

const HTTP_GARBAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: terrace\r\n\r\n";

#[test]
fn garbage_before_handshake_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::connect(worker);
        raw.send_bytes(HTTP_GARBAGE);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        // "GET " read as a length is 0x47455420 bytes.
        assert!(message.contains("bad handshake frame"), "{message}");
        assert!(
            message.contains(&format!(
                "frame of {} bytes exceeds the maximum of {MAX_FRAME} bytes",
                0x4745_5420u32
            )),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn garbage_after_handshake_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        raw.send_bytes(HTTP_GARBAGE);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains(&format!(
                "frame of {} bytes exceeds the maximum of {MAX_FRAME} bytes",
                0x4745_5420u32
            )),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn frame_shorter_than_its_prefix_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        // Length 3 cannot even hold the type byte and header length.
        raw.send_bytes(&[0, 0, 0, 3, 21, 0, 0, 0, 0]);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains("frame length shorter than its prefix"),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn oversized_length_prefix_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        let len = u32::try_from(MAX_FRAME + 1).expect("fits");
        let mut prefix = len.to_be_bytes().to_vec();
        prefix.push(MessageType::PushData as u8);
        prefix.extend_from_slice(&0u32.to_be_bytes());
        // Only the prefix: the worker must refuse before reading (or reserving) the body.
        raw.send_bytes(&prefix);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains(&format!(
                "frame of {len} bytes exceeds the maximum of {MAX_FRAME} bytes"
            )),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn unknown_message_type_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        raw.send_bytes(&[0, 0, 0, 5, 200, 0, 0, 0, 0]);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(message.contains("unknown message type 200"), "{message}");
        raw.expect_eof();
    });
}

#[test]
fn undecodable_header_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        // A SealPartition whose header is a length-delimited field 2 claiming
        // 100 bytes, followed by 2: not a protobuf message.
        let header = [0x12u8, 100, 1, 2];
        let mut frame = (5 + header.len() as u32).to_be_bytes().to_vec();
        frame.push(MessageType::SealPartition as u8);
        frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
        frame.extend_from_slice(&header);
        raw.send_bytes(&frame);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains("header of SealPartition does not decode"),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn handshake_with_wrong_protocol_version_is_refused_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::connect(worker);
        raw.send(&handshake(41, PROTOCOL_VERSION + 1), &[]);
        let message = raw.expect_error(41, pb::ErrorCode::VersionMismatch);
        assert!(
            message.contains(&format!(
                "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
                PROTOCOL_VERSION + 1
            )),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn request_before_handshake_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::connect(worker);
        raw.send(&create(5, &key(ATTACK_JOB, 1), 1), &[]);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains("expected a handshake first, got CreatePartition"),
            "{message}"
        );
        raw.expect_eof();
    });
}

// --- Request-level errors: the connection stays usable. ---

#[test]
fn push_to_a_partition_never_created_is_not_found_and_the_connection_stays_usable() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let attacked = key(ATTACK_JOB, 1);
        let mut raw = Raw::handshaken(worker);
        let (header, body) = push(2, &attacked, &attack_buffers(1, 0, 3));
        raw.send(&Message::PushData(header), &body);
        let message = raw.expect_error(2, pb::ErrorCode::PartitionNotFound);
        // The code says not found; the text names the partition.
        assert!(message.contains(&attacked.partition.to_hex()), "{message}");

        // The same connection goes on: create the partition, push, seal.
        let good_buffers = attack_buffers(1, 10, 3);
        raw.send(&create(3, &attacked, 1), &[]);
        raw.expect_ack(3);
        let (header, body) = push(4, &attacked, &good_buffers);
        raw.send(&Message::PushData(header), &body);
        raw.expect_ack(4);
        raw.send(&seal(5, &attacked), &[]);
        raw.expect_ack(5);
        let got = read_partition(
            &small_agent_config(),
            worker.descriptor(&attacked),
            1,
            Duration::from_secs(20),
        )
        .expect("read the partition created after the error");
        assert_buffers_eq(
            got.get(&0).map(Vec::as_slice).unwrap_or_default(),
            &good_buffers,
            "attacked partition",
        );
    });
}

#[test]
fn push_after_seal_is_refused_and_the_connection_stays_usable() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let attacked = key(ATTACK_JOB, 2);
        let stored = attack_buffers(2, 0, 4);
        let mut raw = Raw::handshaken(worker);
        raw.send(&create(2, &attacked, 1), &[]);
        raw.expect_ack(2);
        let (header, body) = push(3, &attacked, &stored);
        raw.send(&Message::PushData(header), &body);
        raw.expect_ack(3);
        raw.send(&seal(4, &attacked), &[]);
        raw.expect_ack(4);

        let (header, body) = push(5, &attacked, &attack_buffers(2, 100, 2));
        raw.send(&Message::PushData(header), &body);
        let (code, message) = match raw.read() {
            (Message::ErrorReply(e), _) => {
                assert_eq!(e.request_id, 5);
                (e.code, e.message)
            }
            (other, _) => panic!("expected an error reply to a push after seal, got {other:?}"),
        };
        assert_eq!(
            code,
            pb::ErrorCode::PartitionSealed as i32,
            "code {:?}: {message}",
            pb::ErrorCode::try_from(code)
        );
        // The code says sealed; the text names the partition.
        assert!(message.contains(&attacked.partition.to_hex()), "{message}");

        // Still usable: a repeated seal is acknowledged, and another partition takes pushes.
        raw.send(&seal(6, &attacked), &[]);
        raw.expect_ack(6);
        let other = key(ATTACK_JOB, 3);
        raw.send(&create(7, &other, 1), &[]);
        raw.expect_ack(7);
        let (header, body) = push(8, &other, &attack_buffers(3, 0, 1));
        raw.send(&Message::PushData(header), &body);
        raw.expect_ack(8);

        // The refused push stored nothing.
        let got = read_partition(
            &small_agent_config(),
            worker.descriptor(&attacked),
            1,
            Duration::from_secs(20),
        )
        .expect("read the sealed partition");
        assert_buffers_eq(
            got.get(&0).map(Vec::as_slice).unwrap_or_default(),
            &stored,
            "sealed partition",
        );
    });
}

#[test]
fn push_with_wrong_crc32c_is_corruption_and_the_connection_stays_usable() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let attacked = key(ATTACK_JOB, 4);
        let buffers = attack_buffers(4, 0, 5);
        let mut raw = Raw::handshaken(worker);
        raw.send(&create(2, &attacked, 1), &[]);
        raw.expect_ack(2);

        let (mut header, body) = push(3, &attacked, &buffers);
        let right = header.crc32c;
        header.crc32c ^= 0x0000_0100;
        raw.send(&Message::PushData(header.clone()), &body);
        let message = raw.expect_error(3, pb::ErrorCode::DataCorruption);
        // The code says corruption; the text names the expected checksum and the partition.
        assert!(message.contains(&format!("{right:#010x}")), "{message}");
        assert!(message.contains(&attacked.partition.to_hex()), "{message}");

        // The same push with the right checksum is taken on the same connection.
        header.request_id = 4;
        header.crc32c = right;
        raw.send(&Message::PushData(header), &body);
        raw.expect_ack(4);
        raw.send(&seal(5, &attacked), &[]);
        raw.expect_ack(5);

        // Exactly one copy: the corrupt push stored nothing.
        let got = read_partition(
            &small_agent_config(),
            worker.descriptor(&attacked),
            1,
            Duration::from_secs(20),
        )
        .expect("read the partition");
        assert_buffers_eq(
            got.get(&0).map(Vec::as_slice).unwrap_or_default(),
            &buffers,
            "attacked partition",
        );
    });
}

#[test]
fn body_on_a_bodiless_message_type_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        // An Ack (no body allowed) with 3 body bytes.
        raw.send_bytes(&[0, 0, 0, 8, MessageType::Ack as u8, 0, 0, 0, 0, 1, 2, 3]);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains("message type carries no body"),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn malformed_push_bodies_are_bad_requests_that_store_nothing() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let attacked = key(ATTACK_JOB, 5);
        let mut raw = Raw::handshaken(worker);
        raw.send(&create(2, &attacked, 2), &[]);
        raw.expect_ack(2);
        let mut request_id = 2;
        let mut refuse = |raw: &mut Raw, header: pb::PushData, body: &[u8], names: &str| {
            request_id += 1;
            let header = pb::PushData {
                request_id,
                ..header
            };
            raw.send(&Message::PushData(header), body);
            let message = raw.expect_error(request_id, pb::ErrorCode::BadRequest);
            // One code for every malformed body; the text names what is wrong.
            assert!(message.contains(names), "{message}");
        };

        // A checksummed body that is not a batch: it ends inside a buffer header.
        let junk = b"not a batch".to_vec();
        let (mut header, _) = push(0, &attacked, &[]);
        header.crc32c = crc32c::crc32c(&junk);
        header.num_buffers = 1;
        refuse(&mut raw, header, &junk, "batch ends inside a buffer header");

        // A valid buffer, then one for a subpartition the partition does not have:
        // the whole push is refused, the valid buffer included.
        let mut builder = BatchBuilder::default();
        builder.push(
            SubpartitionId(0),
            SegmentId(0),
            &Buffer::data(payload(5, 0, 0, 100)),
        );
        builder.push(
            SubpartitionId(2),
            SegmentId(0),
            &Buffer::data(payload(5, 2, 0, 100)),
        );
        let batch = builder.finish();
        let (mut header, _) = push(0, &attacked, &[]);
        header.crc32c = crc32c::crc32c(&batch.bytes);
        header.num_buffers = batch.num_buffers;
        refuse(
            &mut raw,
            header,
            &batch.bytes,
            "subpartition 2 out of range (partition has 2)",
        );

        // Segment 1 before segment 0.
        let mut builder = BatchBuilder::default();
        builder.push(
            SubpartitionId(1),
            SegmentId(1),
            &Buffer::data(payload(5, 1, 0, 100)),
        );
        let batch = builder.finish();
        let (mut header, _) = push(0, &attacked, &[]);
        header.crc32c = crc32c::crc32c(&batch.bytes);
        header.num_buffers = batch.num_buffers;
        refuse(&mut raw, header, &batch.bytes, "breaks the segment order");

        // A buffer flag no producer sets.
        let mut builder = BatchBuilder::default();
        builder.push(
            SubpartitionId(0),
            SegmentId(0),
            &Buffer::data(payload(5, 0, 0, 100)),
        );
        let mut flagged = builder.finish().bytes.to_vec();
        flagged[9] = 0x80;
        let (mut header, _) = push(0, &attacked, &[]);
        header.crc32c = crc32c::crc32c(&flagged);
        header.num_buffers = 1;
        refuse(&mut raw, header, &flagged, "unknown buffer flags");

        // Still usable; and only the one valid push is stored.
        let stored = attack_buffers(5, 20, 2);
        let (header, body) = push(20, &attacked, &stored);
        raw.send(&Message::PushData(header), &body);
        raw.expect_ack(20);
        raw.send(&seal(21, &attacked), &[]);
        raw.expect_ack(21);
        let got = read_partition(
            &small_agent_config(),
            worker.descriptor(&attacked),
            2,
            Duration::from_secs(20),
        )
        .expect("read the partition");
        assert_buffers_eq(
            got.get(&0).map(Vec::as_slice).unwrap_or_default(),
            &stored,
            "subpartition 0",
        );
        assert!(
            got.get(&1).is_none_or(Vec::is_empty),
            "subpartition 1 got {:?}",
            got.get(&1)
        );
    });
}

// --- Values past the limits: refused naming the field and the limit, before
// they size anything; the connection stays usable and the worker serves.
// The text is checked because naming the limit is the point. ---

#[test]
fn extreme_counts_ranges_and_credits_are_refused_naming_the_limit() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        let k = key(ATTACK_JOB, 40);
        // A partition declaring u32::MAX subpartitions (once: 96 GiB of index).
        raw.send(&create(2, &k, u32::MAX), &[]);
        let message = raw.expect_error(2, pb::ErrorCode::BadRequest);
        assert!(
            message.contains(
                "num_subpartitions 4294967295 is more than 32768 (limits.max_subpartitions)"
            ),
            "{message}"
        );
        // The largest allowed one costs nothing until data arrives.
        raw.send(&create(3, &k, 32_768), &[]);
        raw.expect_ack(3);
        // A stream over every u32 subpartition (once: 68 GiB of stream state).
        raw.send(&open_stream(4, 1, &k, 0, u32::MAX, 1), &[]);
        let message = raw.expect_error(4, pb::ErrorCode::BadRequest);
        assert!(
            message.contains(
                "has 4294967296 subpartitions, more than 32768 (limits.max_subpartitions)"
            ),
            "{message}"
        );
        // Credits past the limit, at open and later.
        raw.send(&open_stream(5, 2, &k, 0, 0, u32::MAX), &[]);
        let message = raw.expect_error(5, pb::ErrorCode::BadRequest);
        assert!(
            message.contains(
                "initial_credit 4294967295 is more than 1024 (limits.max_stream_credits)"
            ),
            "{message}"
        );
        raw.send(&open_stream(6, 3, &k, 0, 0, 1), &[]);
        raw.expect_stream_opened(3);
        raw.send(
            &Message::AddCredit(pb::AddCredit {
                stream_id: 3,
                credit: u32::MAX,
            }),
            &[],
        );
        match raw.read() {
            (Message::StreamError(e), _) => {
                assert_eq!(e.stream_id, 3);
                assert_eq!(e.code, pb::ErrorCode::BadRequest as i32);
                assert!(
                    e.message
                        .contains("more than 1024 (limits.max_stream_credits)"),
                    "{}",
                    e.message
                );
            }
            (other, _) => panic!("expected StreamError, got {other:?}"),
        }
        // Still usable.
        raw.send(&seal(7, &k), &[]);
        raw.expect_ack(7);
    });
}

#[test]
fn streams_per_connection_and_buffers_per_push_are_capped() {
    let _logs = logs::capture();
    let limits = WorkerLimits {
        max_streams_per_connection: 4,
        // The good producer's pushes carry at most a dozen buffers.
        max_buffers_per_push: 64,
        ..WorkerLimits::default()
    };
    with_good_client_on(limits, |worker| {
        let mut raw = Raw::handshaken(worker);
        let k = key(ATTACK_JOB, 41);
        raw.send(&create(2, &k, 1), &[]);
        raw.expect_ack(2);
        for stream in 0..4 {
            raw.send(&open_stream(10 + stream, stream, &k, 0, 0, 1), &[]);
            raw.expect_stream_opened(stream);
        }
        raw.send(&open_stream(20, 4, &k, 0, 0, 1), &[]);
        let message = raw.expect_error(20, pb::ErrorCode::BadRequest);
        assert!(
            message.contains("4 streams open, the limit (limits.max_streams_per_connection)"),
            "{message}"
        );
        // A closed stream frees its place.
        raw.send(&Message::CloseStream(pb::CloseStream { stream_id: 0 }), &[]);
        raw.send(&open_stream(21, 5, &k, 0, 0, 1), &[]);
        raw.expect_stream_opened(5);

        let tiny = |n: usize| vec![Buffer::data(Bytes::from_static(b"x")); n];
        let (header, body) = push(30, &k, &tiny(65));
        raw.send(&Message::PushData(header), &body);
        let message = raw.expect_error(30, pb::ErrorCode::BadRequest);
        assert!(
            message.contains("more than 64 buffers (limits.max_buffers_per_push)"),
            "{message}"
        );
        let (header, body) = push(31, &k, &tiny(64));
        raw.send(&Message::PushData(header), &body);
        raw.expect_ack(31);
    });
}

#[test]
fn oversized_handshakes_are_refused_before_they_are_read() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        // A handshake frame past 4 KiB is refused from its prefix alone.
        let mut raw = Raw::connect(worker);
        let mut big = pb::Handshake {
            request_id: 1,
            protocol_version: PROTOCOL_VERSION,
            client_name: "x".repeat(100_000),
        };
        raw.send(&Message::Handshake(big.clone()), &[]);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains("exceeds the maximum of 4096 bytes"),
            "{message}"
        );
        raw.expect_eof();
        // A client name past 256 bytes in a small frame.
        let mut raw = Raw::connect(worker);
        big.client_name = "y".repeat(300);
        raw.send(&Message::Handshake(big), &[]);
        let message = raw.expect_error(1, pb::ErrorCode::BadRequest);
        assert!(
            message.contains("client_name of 300 bytes exceeds the maximum of 256 bytes"),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn a_request_header_past_16_kib_is_a_protocol_error_and_closes() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        // A SealPartition frame announcing a 100 KiB header (never sent).
        let header_len: u32 = 100 * 1024;
        let mut frame = (5 + header_len).to_be_bytes().to_vec();
        frame.push(MessageType::SealPartition as u8);
        frame.extend_from_slice(&header_len.to_be_bytes());
        raw.send_bytes(&frame);
        let message = raw.expect_error(0, pb::ErrorCode::Protocol);
        assert!(
            message.contains("request header longer than 16 KiB"),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn a_reader_that_floods_commands_loses_its_stream_not_the_worker() {
    let _logs = logs::capture();
    with_good_client(|worker| {
        let mut raw = Raw::handshaken(worker);
        // The stream waits for a partition that does not exist yet, so none
        // of its commands is taken; one subpartition: 1 + 1024 + 64 may wait.
        let k = key(ATTACK_JOB, 42);
        raw.send(&open_stream(2, 9, &k, 0, 0, 1), &[]);
        let mut frames = Vec::new();
        for _ in 0..1200 {
            let credit = Message::AddCredit(pb::AddCredit {
                stream_id: 9,
                credit: 0,
            });
            frames.extend_from_slice(&encode_frame(&credit, 0));
        }
        raw.send_bytes(&frames);
        match raw.read() {
            (Message::StreamError(e), _) => {
                assert_eq!(e.stream_id, 9);
                assert_eq!(e.code, pb::ErrorCode::BadRequest as i32);
                // The text names the limit.
                assert!(
                    e.message.contains("has 1089 commands waiting, its limit"),
                    "{}",
                    e.message
                );
            }
            (other, _) => panic!("expected StreamError, got {other:?}"),
        }
        // The rest of the flood is for a stream that is gone.
        for _ in 0..(1200 - 1090) {
            match raw.read() {
                (Message::StreamError(e), _) => {
                    assert_eq!(e.code, pb::ErrorCode::BadRequest as i32, "{}", e.message);
                    // Bad request, and the text says why: the stream is gone.
                    assert!(e.message.contains("is not open"), "{}", e.message)
                }
                (other, _) => panic!("expected StreamError, got {other:?}"),
            }
        }
        // The connection still serves.
        raw.send(&create(3, &k, 1), &[]);
        raw.expect_ack(3);
    });
}
