//! Malformed and hostile input to a worker over raw TCP: each case gets an
//! `ErrorReply` with the right code and a message naming the problem.
//! Frame-level errors close the connection; request-level errors keep it
//! usable. In every case a well-behaved producer and consumer on another
//! partition, running across the attack, read back exactly what they wrote.

use std::collections::HashMap;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::Bytes;
use terrace_consumer_agent::ConsumerAgent;
use terrace_proto::{
    FRAME_PREFIX_LEN, FramePrefix, Message, MessageType, PROTOCOL_VERSION, encode_frame, pb,
};
use terrace_tests::{
    END_PAYLOAD, RecordingWriter, TestWorker, assert_buffers_eq, drain, join_within, key, payload,
    producer, read_partition, small_agent_config, wakeup,
};
use terrace_tier_api::{
    BatchBuilder, Buffer, ByteSize, ConsumerSpec, InputChannelId, PartitionId, PartitionKey,
    SegmentId, SubpartitionId, TierConsumerAgent, TierError,
};
use terrace_worker::{WorkerConfig, WorkerLimits};

/// The worker's largest accepted frame in these tests.
const MAX_FRAME: u64 = 1024 * 1024;
/// Socket reads and writes of the raw client give up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Job of the well-behaved client; attacks use `ATTACK_JOB`.
const GOOD_JOB: u8 = 7;
const ATTACK_JOB: u8 = 8;
const GOOD_SUBS: u32 = 4;
const GOOD_BUFFERS_PER_HALF: u32 = 24;

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

// --- A raw client: frames written and read by hand, every read bounded. ---

#[derive(Debug)]
struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn connect(worker: &TestWorker) -> Raw {
        let stream = TcpStream::connect(&worker.address).expect("connect to the worker");
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream }
    }

    /// Connects and completes the version handshake.
    fn handshaken(worker: &TestWorker) -> Raw {
        let mut raw = Raw::connect(worker);
        raw.send(&handshake(1, PROTOCOL_VERSION), &[]);
        match raw.read() {
            (Message::HandshakeOk(ok), body) => {
                assert_eq!(ok.request_id, 1);
                assert_eq!(ok.protocol_version, PROTOCOL_VERSION);
                assert!(body.is_empty());
            }
            (other, _) => panic!("expected HandshakeOk, got {other:?}"),
        }
        raw
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the worker");
        self.stream.flush().expect("flush");
    }

    fn send(&mut self, message: &Message, body: &[u8]) {
        let mut frame = encode_frame(message, body.len()).to_vec();
        frame.extend_from_slice(body);
        self.send_bytes(&frame);
    }

    /// Reads one whole frame (fails the test on EOF, timeout or a bad frame).
    fn read(&mut self) -> (Message, Bytes) {
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        self.stream
            .read_exact(&mut prefix)
            .expect("a frame from the worker within the read timeout");
        let prefix = FramePrefix::parse(prefix, terrace_proto::DEFAULT_MAX_FRAME_BYTES)
            .expect("valid frame prefix");
        let mut rest = vec![0u8; prefix.remaining()];
        self.stream
            .read_exact(&mut rest)
            .expect("the rest of the frame");
        let mut rest = Bytes::from(rest);
        let header = rest.split_to(prefix.header_len);
        let message = Message::decode_header(prefix.ty, header).expect("header decodes");
        (message, rest)
    }

    /// Reads an `ErrorReply` and checks its request id and code; returns its message.
    fn expect_error(&mut self, request_id: u64, code: pb::ErrorCode) -> String {
        match self.read() {
            (Message::ErrorReply(e), body) => {
                assert!(body.is_empty());
                assert_eq!(
                    e.code,
                    code as i32,
                    "error code: got {:?} ({:?}), want {code:?}",
                    pb::ErrorCode::try_from(e.code),
                    e.message
                );
                assert_eq!(
                    e.request_id, request_id,
                    "request id of the error ({:?})",
                    e.message
                );
                e.message
            }
            (other, _) => panic!("expected ErrorReply {code:?}, got {other:?}"),
        }
    }

    fn expect_ack(&mut self, request_id: u64) {
        match self.read() {
            (Message::Ack(ack), body) => {
                assert_eq!(ack.request_id, request_id);
                assert!(body.is_empty());
            }
            (other, _) => panic!("expected Ack {request_id}, got {other:?}"),
        }
    }

    /// The worker closed the connection: a read returns end of stream.
    fn expect_eof(&mut self) {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the worker to close the connection, got {n} more bytes: {:?}",
                &buf[..n]
            ),
            Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {
                panic!(
                    "the worker kept the connection open for {IO_TIMEOUT:?} after a protocol error"
                )
            }
            Err(e) => panic!("expected a clean end of stream, got {e}"),
        }
    }
}

fn handshake(request_id: u64, protocol_version: u32) -> Message {
    Message::Handshake(pb::Handshake {
        request_id,
        protocol_version,
        client_name: "bad-input-test".into(),
    })
}

fn pb_key(key: &PartitionKey) -> Option<pb::PartitionKey> {
    Some(pb::PartitionKey::from(key))
}

fn create(request_id: u64, key: &PartitionKey, subs: u32) -> Message {
    Message::CreatePartition(pb::CreatePartition {
        request_id,
        key: pb_key(key),
        num_subpartitions: subs,
        broadcast_only: false,
    })
}

fn seal(request_id: u64, key: &PartitionKey) -> Message {
    Message::SealPartition(pb::SealPartition {
        request_id,
        key: pb_key(key),
    })
}

/// An uncompressed push of `buffers` to subpartition 0, segment 0; returns the
/// header (with the right CRC32C) and the body.
fn push(request_id: u64, key: &PartitionKey, buffers: &[Buffer]) -> (pb::PushData, Vec<u8>) {
    let mut builder = BatchBuilder::default();
    for buffer in buffers {
        builder.push(SubpartitionId(0), SegmentId(0), buffer);
    }
    let batch = builder.finish();
    let header = pb::PushData {
        request_id,
        key: pb_key(key),
        crc32c: crc32c::crc32c(&batch.bytes),
        compressed: false,
        uncompressed_length: u32::try_from(batch.bytes.len()).expect("small batch"),
        num_buffers: batch.num_buffers,
    };
    (header, batch.bytes.to_vec())
}

fn attack_buffers(partition: u32, from: u32, count: u32) -> Vec<Buffer> {
    (from..from + count)
        .map(|i| Buffer::data(payload(partition, 0, i, 1000 + i as usize)))
        .collect()
}

// --- A well-behaved producer and consumer running across the attack. ---

/// What `drain` read, per (partition, subpartition).
type ReadBack = HashMap<(PartitionId, u32), Vec<Buffer>>;

/// A producer that has pushed half its data and waits for `finish` to write
/// the rest, and a consumer reading the partition all along.
struct GoodClient {
    partition: PartitionId,
    resume: mpsc::Sender<()>,
    producer: JoinHandle<HashMap<u32, Vec<Buffer>>>,
    reader: JoinHandle<Result<ReadBack, TierError>>,
}

impl GoodClient {
    /// Returns once the producer's first half is pushed.
    fn start(worker: &TestWorker) -> GoodClient {
        let config = small_agent_config();
        let key = key(GOOD_JOB, 1);
        let descriptor = worker.descriptor(&key);
        // Creates the partition, so the consumer opens it at once.
        let agent = producer(&config, descriptor.clone(), GOOD_SUBS, false);
        let wake = wakeup();
        let spec = ConsumerSpec {
            partition: key.partition.clone(),
            input_channel: InputChannelId(0),
            subpartitions: 0..=GOOD_SUBS - 1,
        };
        let mut consumer =
            ConsumerAgent::new(config, vec![spec], vec![Some(descriptor)]).expect("consumer");
        consumer.register_availability_notifier(Arc::clone(&wake) as _);
        consumer.start().expect("consumer starts");
        let targets: Vec<(PartitionId, u32)> =
            (0..GOOD_SUBS).map(|s| (key.partition.clone(), s)).collect();
        let reader =
            thread::spawn(move || drain(&consumer, &wake, &targets, Duration::from_secs(60)));

        let (halfway_tx, halfway_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel::<()>();
        let producer = thread::spawn(move || {
            let mut writer = RecordingWriter::new(agent);
            let write_half = |writer: &mut RecordingWriter, half: u32| {
                for i in half * GOOD_BUFFERS_PER_HALF..(half + 1) * GOOD_BUFFERS_PER_HALF {
                    for sub in 0..GOOD_SUBS {
                        let len = 3000 + (i as usize * 37 + sub as usize * 101) % 5000;
                        writer
                            .write(sub, Buffer::data(payload(1, sub, i, len)))
                            .expect("good write");
                    }
                }
            };
            write_half(&mut writer, 0);
            writer
                .agent
                .flush()
                .expect("good producer pushes its first half");
            halfway_tx
                .send(())
                .expect("test thread waits for the first half");
            resume_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the test resumes the good producer");
            write_half(&mut writer, 1);
            for sub in 0..GOOD_SUBS {
                writer
                    .write(sub, Buffer::event(Bytes::from_static(END_PAYLOAD)))
                    .expect("good end event");
            }
            writer.close().expect("good producer seals");
            writer.expected
        });
        halfway_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the good producer pushes its first half within 30 s");
        GoodClient {
            partition: key.partition,
            resume: resume_tx,
            producer,
            reader,
        }
    }

    /// Lets the producer finish and checks the consumer got exactly its bytes.
    fn finish(self) {
        self.resume.send(()).expect("good producer is waiting");
        let expected = join_within(self.producer, Duration::from_secs(60), "good producer");
        let got = join_within(self.reader, Duration::from_secs(90), "good reader")
            .expect("good reader reads everything");
        let mut buffers = 0;
        for sub in 0..GOOD_SUBS {
            let want = expected
                .get(&sub)
                .expect("every good subpartition was written");
            let have = got
                .get(&(self.partition.clone(), sub))
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert_buffers_eq(have, want, &format!("good partition subpartition {sub}"));
            buffers += want.len();
        }
        // Two halves of data, the END event, and END_OF_SEGMENTs in between.
        assert!(
            buffers > (2 * GOOD_BUFFERS_PER_HALF + 1) as usize * GOOD_SUBS as usize,
            "only {buffers} good buffers checked"
        );
    }
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

const HTTP_GARBAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: terrace\r\n\r\n";

#[test]
fn garbage_before_handshake_is_a_protocol_error_and_closes() {
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
    with_good_client(|worker| {
        let attacked = key(ATTACK_JOB, 1);
        let mut raw = Raw::handshaken(worker);
        let (header, body) = push(2, &attacked, &attack_buffers(1, 0, 3));
        raw.send(&Message::PushData(header), &body);
        let message = raw.expect_error(2, pb::ErrorCode::PartitionNotFound);
        assert!(message.contains(&attacked.partition.to_hex()), "{message}");
        assert!(message.contains("is not on this worker"), "{message}");

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
        // PARTITION_SEALED is the dedicated code; the worker currently answers
        // BAD_REQUEST (a write after seal is bad input). Either names the problem.
        assert!(
            code == pb::ErrorCode::PartitionSealed as i32
                || code == pb::ErrorCode::BadRequest as i32,
            "code {:?}: {message}",
            pb::ErrorCode::try_from(code)
        );
        assert!(message.contains("is sealed"), "{message}");
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
        assert!(message.contains("checksum mismatch"), "{message}");
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
            assert!(message.contains(names), "{message}");
        };

        // A checksummed body that is not a batch: it ends inside a buffer header.
        let junk = b"not a batch".to_vec();
        let (mut header, _) = push(0, &attacked, &[]);
        header.crc32c = crc32c::crc32c(&junk);
        header.uncompressed_length = junk.len() as u32;
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
        header.uncompressed_length = batch.bytes.len() as u32;
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
        header.uncompressed_length = batch.bytes.len() as u32;
        header.num_buffers = batch.num_buffers;
        refuse(&mut raw, header, &batch.bytes, "breaks the segment order");

        // lz4 claimed, with an uncompressed size beyond the largest frame.
        let (mut header, body) = push(0, &attacked, &attack_buffers(5, 0, 1));
        header.compressed = true;
        header.uncompressed_length = u32::try_from(MAX_FRAME + 1).expect("fits");
        refuse(&mut raw, header, &body, "more than the maximum");

        // An uncompressed body whose length disagrees with the header.
        let (mut header, body) = push(0, &attacked, &attack_buffers(5, 0, 1));
        header.uncompressed_length += 1;
        refuse(&mut raw, header, &body, "header said");

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
// they size anything; the connection stays usable and the worker serves. ---

fn open_stream(
    request_id: u64,
    stream_id: u64,
    key: &PartitionKey,
    first: u32,
    last: u32,
    credit: u32,
) -> Message {
    Message::OpenStream(pb::OpenStream {
        request_id,
        stream_id,
        key: pb_key(key),
        first_subpartition: first,
        last_subpartition: last,
        initial_credit: credit,
    })
}

impl Raw {
    fn expect_stream_opened(&mut self, stream_id: u64) {
        match self.read() {
            (Message::StreamOpened(o), _) => assert_eq!(o.stream_id, stream_id),
            (other, _) => panic!("expected StreamOpened {stream_id}, got {other:?}"),
        }
    }
}

#[test]
fn extreme_counts_ranges_and_credits_are_refused_naming_the_limit() {
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
fn a_request_header_past_64_kib_is_a_protocol_error_and_closes() {
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
            message.contains("request header longer than 64 KiB"),
            "{message}"
        );
        raw.expect_eof();
    });
}

#[test]
fn a_reader_that_floods_commands_loses_its_stream_not_the_worker() {
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
