//! Clients for the hostile-input tests: a raw client that writes and reads
//! frames by hand (every read bounded), request builders, and a
//! well-behaved producer and consumer that run across an attack and check
//! they read back exactly what they wrote.

use std::collections::HashMap;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::Bytes;
use terrace_consumer_agent::ConsumerAgent;
use terrace_proto::{FRAME_PREFIX_LEN, FramePrefix, Message, PROTOCOL_VERSION, encode_frame, pb};
use terrace_tier_api::{
    BatchBuilder, Buffer, ConsumerSpec, InputChannelId, PartitionId, PartitionKey, SegmentId,
    SubpartitionId, TierConsumerAgent, TierError,
};

use crate::{
    END_PAYLOAD, RecordingWriter, TestWorker, assert_buffers_eq, drain, join_within, key, payload,
    producer, small_agent_config, wakeup,
};

/// Socket reads and writes of the raw client give up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Job of the well-behaved client.
pub const GOOD_JOB: u8 = 7;
const GOOD_SUBS: u32 = 4;
const GOOD_BUFFERS_PER_HALF: u32 = 24;

// --- A raw client: frames written and read by hand, every read bounded. ---

#[derive(Debug)]
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(worker: &TestWorker) -> Raw {
        Raw::connect_to(&worker.address)
    }

    pub fn connect_to(address: &str) -> Raw {
        let stream = TcpStream::connect(address).expect("connect to the worker");
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
    pub fn handshaken(worker: &TestWorker) -> Raw {
        Raw::handshaken_to(&worker.address)
    }

    /// [`Raw::handshaken`] to a worker at `address`.
    pub fn handshaken_to(address: &str) -> Raw {
        let mut raw = Raw::connect_to(address);
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

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the worker");
        self.stream.flush().expect("flush");
    }

    pub fn send(&mut self, message: &Message, body: &[u8]) {
        let mut frame = encode_frame(message, body.len()).to_vec();
        frame.extend_from_slice(body);
        self.send_bytes(&frame);
    }

    /// Reads one whole frame (fails the test on EOF, timeout or a bad frame).
    pub fn read(&mut self) -> (Message, Bytes) {
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
    pub fn expect_error(&mut self, request_id: u64, code: pb::ErrorCode) -> String {
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

    /// Expects the success reply of request `request_id`: an `Ack`, or for a
    /// push a `PushAck` (with or without a split request).
    pub fn expect_ack(&mut self, request_id: u64) {
        match self.read() {
            (Message::Ack(pb::Ack { request_id: id }), body)
            | (Message::PushAck(pb::PushAck { request_id: id, .. }), body) => {
                assert_eq!(id, request_id);
                assert!(body.is_empty());
            }
            (other, _) => panic!("expected Ack {request_id}, got {other:?}"),
        }
    }

    pub fn expect_stream_opened(&mut self, stream_id: u64) {
        match self.read() {
            (Message::StreamOpened(o), _) => assert_eq!(o.stream_id, stream_id),
            (other, _) => panic!("expected StreamOpened {stream_id}, got {other:?}"),
        }
    }

    /// The worker closed the connection: a read returns end of stream.
    pub fn expect_eof(&mut self) {
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

pub fn handshake(request_id: u64, protocol_version: u32) -> Message {
    Message::Handshake(pb::Handshake {
        request_id,
        protocol_version,
        client_name: "bad-input-test".into(),
    })
}

pub fn pb_key(key: &PartitionKey) -> Option<pb::PartitionKey> {
    Some(pb::PartitionKey::from(key))
}

pub fn create(request_id: u64, key: &PartitionKey, subs: u32) -> Message {
    Message::CreatePartition(pb::CreatePartition {
        request_id,
        key: pb_key(key),
        num_subpartitions: subs,
        broadcast_only: false,
        continuation: false,
        ..Default::default()
    })
}

pub fn seal(request_id: u64, key: &PartitionKey) -> Message {
    Message::SealPartition(pb::SealPartition {
        request_id,
        key: pb_key(key),
    })
}

/// An uncompressed push of `buffers` to subpartition 0, segment 0; returns the
/// header (with the right CRC32C) and the body.
pub fn push(request_id: u64, key: &PartitionKey, buffers: &[Buffer]) -> (pb::PushData, Vec<u8>) {
    let mut builder = BatchBuilder::default();
    for buffer in buffers {
        builder.push(SubpartitionId(0), SegmentId(0), buffer);
    }
    let batch = builder.finish();
    let header = pb::PushData {
        request_id,
        key: pb_key(key),
        crc32c: crc32c::crc32c(&batch.bytes),
        num_buffers: batch.num_buffers,
    };
    (header, batch.bytes.to_vec())
}

// --- A well-behaved producer and consumer running across the attack. ---

/// What `drain` read, per (partition, subpartition).
pub type ReadBack = HashMap<(PartitionId, u32), Vec<Buffer>>;

/// A producer that has pushed half its data and waits for `finish` to write
/// the rest, and a consumer reading the partition all along.
#[derive(Debug)]
pub struct GoodClient {
    partition: PartitionId,
    resume: mpsc::Sender<()>,
    producer: JoinHandle<HashMap<u32, Vec<Buffer>>>,
    reader: JoinHandle<Result<ReadBack, TierError>>,
}

impl GoodClient {
    /// Returns once the producer's first half is pushed.
    pub fn start(worker: &TestWorker) -> GoodClient {
        GoodClient::start_at(&worker.address, &worker.worker_id)
    }

    /// [`GoodClient::start`] on the worker `worker_id` at `address`.
    pub fn start_at(address: &str, worker_id: &str) -> GoodClient {
        let config = small_agent_config();
        let key = key(GOOD_JOB, 1);
        let descriptor = terrace_tier_api::ShuffleDescriptor::new(&key, worker_id, address);
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
    pub fn finish(self) {
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

pub fn open_stream(
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
