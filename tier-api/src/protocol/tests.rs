//! Every typed message round trips through its encoded header; hostile
//! headers are errors, never panics.

use std::fmt::Debug;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use terrace_proto::{Message, MessageType, pb};

use super::*;
use crate::error::ErrorKind;
use crate::ids::{PartitionId, PartitionKey, SegmentId, SubpartitionId};

fn job(n: u8) -> JobId {
    JobId::new(vec![n; 3]).expect("job id")
}

fn key(n: u8) -> PartitionKey {
    PartitionKey {
        job: job(n),
        partition: PartitionId::new(vec![n, 0xff]).expect("partition id"),
    }
}

fn worker(n: u8) -> WorkerAt {
    WorkerAt::new(
        WorkerId::new(format!("w{n}")).expect("worker id"),
        format!("10.0.0.{n}:700{n}"),
    )
}

/// Encodes `w` as `request_id`, decodes the header as a peer would, and
/// parses it back.
fn through_the_wire<W: Wire + Clone + PartialEq + Debug>(w: &W, request_id: u64) -> W {
    let (message, body) = w.clone().into_frame(request_id);
    assert_eq!(message.message_type(), W::TYPE);
    let mut header = BytesMut::new();
    message.encode_header(&mut header);
    let decoded = Message::decode_header(W::TYPE, header.freeze()).expect("header decodes");
    assert_eq!(decoded.request_id(), message.request_id());
    W::from_frame(decoded, body.into_bytes()).expect("parses back")
}

fn roundtrips<W: Wire + Clone + PartialEq + Debug>(w: W) {
    assert_eq!(through_the_wire(&w, 42), w);
}

fn load() -> WorkerLoad {
    WorkerLoad {
        stored_bytes: 1,
        memory_used_bytes: 2,
        open_partitions: 3,
        sealed_partitions: 4,
        tiers: Some(Box::new(TierStats {
            memory_bytes: 5,
            local_bytes: 6,
            object_bytes: 7,
            dirs: vec![DirStats {
                path: "/data/1".into(),
                used_bytes: 8,
                capacity_bytes: 9,
                healthy: false,
                error: "disk full".into(),
                write_failures: 10,
            }],
            object_store: Some(ObjectStoreStats {
                url: "s3://b/p".into(),
                bytes: 11,
                objects: 12,
                bytes_overflowed: 13,
                bytes_migrated: 14,
                partitions_migrated: 15,
                bytes_read: 16,
                gets: 20,
                bytes_compacted: 21,
                partitions_compacted: 22,
                failures: 17,
                available: true,
                last_error: "slow".into(),
            }),
        })),
        memory_budget_bytes: 18,
        local_free_bytes: 19,
        unhealthy_dirs: 1,
        full: true,
        decommissioning: true,
        restarting: true,
        durable_store: Some("0123456789abcdef".into()),
        read_streams: 20,
        push_bytes_per_sec: 21,
        read_bytes_per_sec: 22,
    }
}

#[test]
fn every_control_message_roundtrips() {
    roundtrips(RegisterWorker {
        worker: worker(1).id,
        data_address: "host:7000".into(),
    });
    roundtrips(WorkerHeartbeat {
        worker: worker(1).id,
        data_address: "[::1]:7000".into(),
        load: load(),
        jobs: vec![job(1), job(2)],
        relocated: vec![key(3)],
        parts: vec![key(4), key(5)],
        adopted: vec![(key(6), worker(7).id)],
    });
    roundtrips(HeartbeatReply {
        released_jobs: vec![job(1)],
        unknown_jobs: vec![job(2), job(3)],
        job_lease: Some(Duration::from_secs(60)),
        worker_timeout: None,
        declared_lost: true,
    });
    roundtrips(RegisterJob { job: job(4) });
    roundtrips(JobRegistered {
        token: Some(Bytes::from(vec![7; JOB_TOKEN_BYTES])),
        job_lease: Some(Duration::from_millis(1500)),
    });
    roundtrips(JobRegistered::default());
    roundtrips(UnregisterJob { job: job(4) });
    roundtrips(AllocatePartition {
        key: key(1),
        num_subpartitions: 8,
        exclude: vec![worker(1).id, worker(2).id],
        relocated_from: Some(worker(3).id),
    });
    roundtrips(AllocatePartition {
        key: key(1),
        num_subpartitions: 1,
        exclude: Vec::new(),
        relocated_from: None,
    });
    roundtrips(PartitionAllocated {
        key: key(2),
        worker: worker(2),
    });
    roundtrips(WorkerUnreachable {
        worker: worker(5).id,
        error: "connection refused".into(),
        job: Some(job(5)),
    });
    roundtrips(WorkerUnreachable {
        worker: worker(5).id,
        error: String::new(),
        job: None,
    });
    roundtrips(LocatePartition {
        key: key(6),
        worker: None,
    });
    roundtrips(LocatePartition {
        key: key(6),
        worker: Some(worker(3).id),
    });
    roundtrips(PartitionLocated {
        worker: Some(worker(6)),
        restarting: false,
        recovering: true,
        adopted_by: Some(worker(7)),
    });
    roundtrips(PartitionLocated {
        worker: None,
        restarting: true,
        recovering: false,
        adopted_by: None,
    });
    roundtrips(ListParts {
        job: job(7),
        worker: worker(2).id,
    });
    roundtrips(PartsListed {
        partitions: vec![key(1).partition, key(2).partition],
        truncated: true,
    });
    roundtrips(ListWorkers);
    roundtrips(WorkerList {
        workers: vec![WorkerInfo {
            worker: worker(7),
            load: load(),
            since_heartbeat: Duration::from_millis(250),
        }],
        jobs: vec![job(7)],
        settled: true,
    });
    roundtrips(Ack);
}

#[test]
fn every_data_message_roundtrips() {
    roundtrips(CreatePartition {
        key: key(1),
        num_subpartitions: 4,
        broadcast_only: true,
        continuation: true,
        relocated: true,
    });
    roundtrips(PushData {
        key: key(1),
        crc32c: 0xdead_beef,
        num_buffers: 3,
        body: Body::from(Bytes::from_static(b"batch bytes")),
    });
    roundtrips(PushAck { split: true });
    roundtrips(SealPartition { key: key(2) });
    roundtrips(SplitPartition {
        key: key(2),
        next: worker(3),
    });
    roundtrips(ReleasePartition { key: key(2) });
    roundtrips(DropJob { job: job(2) });
    roundtrips(WorkerStats);
    roundtrips(WorkerStatsReply {
        load: load(),
        bytes_pushed: 1,
        bytes_read: 2,
        memory_budget_bytes: 3,
        memory_peak_bytes: 4,
        partitions: 5,
        metadata_bytes: 6,
        metadata_peak_bytes: 7,
        metadata_limit_bytes: 8,
    });
    roundtrips(PartitionMetrics { key: key(3) });
    roundtrips(PartitionMetricsReply {
        sealed: true,
        subpartition_bytes: vec![1, 0, 3],
        next: Some(worker(4)),
    });
    roundtrips(PartitionMetricsReply::default());
    roundtrips(Decommission);
    roundtrips(Restart);
    roundtrips(AdoptLost {
        lost: worker(5).id,
        store_id: "0123456789abcdef".into(),
    });
    roundtrips(LostAdopted {
        adopted: 3,
        skipped: 1,
    });
    roundtrips(AdoptPartition {
        key: key(4),
        from: worker(5).id,
        index: Body::from(Bytes::from_static(b"index")),
    });
    roundtrips(MoveForward {
        key: key(4),
        from: worker(5).id,
        to: worker(6),
    });
    roundtrips(OpenStream {
        stream_id: StreamId(9),
        key: key(5),
        first_subpartition: 2,
        last_subpartition: 2,
        initial_credit: 16,
    });
    roundtrips(StreamOpened {
        stream_id: StreamId(9),
        num_subpartitions: 4,
    });
}

#[test]
fn every_stream_frame_roundtrips() {
    roundtrips(RequireSegment {
        stream_id: StreamId(1),
        subpartition: SubpartitionId(2),
        segment: SegmentId(3),
    });
    roundtrips(AddCredit {
        stream_id: StreamId(1),
        credit: 4,
    });
    roundtrips(CloseStream {
        stream_id: StreamId(1),
    });
    let body = Body::from(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")]);
    let read = ReadData {
        stream_id: StreamId(1),
        subpartition: SubpartitionId(2),
        segment: SegmentId(3),
        extents: vec![Extent { len: 3, crc32c: 1 }, Extent { len: 2, crc32c: 2 }],
        num_buffers: 2,
        stored_subpartition: SubpartitionId(0),
        body,
    };
    // A sent body of two chunks comes back as one buffer of the same bytes.
    let back = through_the_wire(&read, 0);
    assert_eq!(back.body.chunks(), &[Bytes::from_static(b"abcde")][..]);
    assert_eq!(back.extents, read.extents);
    roundtrips(SubpartitionEnd {
        stream_id: StreamId(1),
        subpartition: SubpartitionId(2),
        segment: SegmentId(3),
    });
    roundtrips(SubpartitionRedirect {
        stream_id: StreamId(1),
        subpartition: SubpartitionId(2),
        segment: SegmentId(3),
        to: worker(8),
    });
    roundtrips(StreamError {
        stream_id: StreamId(1),
        error: TierError::corruption("checksum mismatch"),
    });
    // Stream frames carry no request id.
    let (message, _) = CloseStream {
        stream_id: StreamId(5),
    }
    .into_frame(77);
    assert_eq!(message.request_id(), 0);
}

#[test]
fn a_received_body_is_the_frame_buffer_itself() {
    let frame = Bytes::from(vec![1u8; 64]);
    let body = frame.slice(16..);
    let push = PushData::from_frame(
        Message::PushData(pb::PushData {
            request_id: 1,
            key: Some(key(1).into()),
            crc32c: 0,
            num_buffers: 1,
        }),
        body.clone(),
    )
    .expect("parses");
    let got = push.body.into_bytes();
    assert_eq!(got.as_ptr(), body.as_ptr(), "the body was copied");
}

#[test]
fn a_reply_of_another_type_is_one_error_naming_both() {
    let e = PushAck::from_frame(Message::ack(3), Bytes::new()).expect_err("not a PushAck");
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert_eq!(e.message(), "expected PushAck, got Ack");
    let e = StreamFrame::from_frame(Message::ack(3), Bytes::new()).expect_err("not a frame");
    assert_eq!(e.message(), "expected a stream frame, got Ack");
}

/// Each hostile header and the error text its receiver gets (the texts the
/// services' handlers gave before the protocol module parsed for them).
#[test]
fn hostile_headers_are_bad_input_naming_what_is_wrong() {
    let no_key = |m: Message| m;
    let cases: Vec<(Message, &str)> = vec![
        (
            no_key(Message::SealPartition(pb::SealPartition {
                request_id: 1,
                key: None,
            })),
            "partition key missing",
        ),
        (
            Message::RegisterJob(pb::RegisterJob {
                request_id: 1,
                job_id: Bytes::new(),
            }),
            "job id is empty",
        ),
        (
            Message::RegisterWorker(pb::RegisterWorker {
                request_id: 1,
                worker_id: "w".into(),
                data_address: "nowhere".into(),
            }),
            "worker data address \"nowhere\" is not host:port",
        ),
        (
            Message::RegisterWorker(pb::RegisterWorker {
                request_id: 1,
                worker_id: String::new(),
                data_address: "h:1".into(),
            }),
            "worker id is empty",
        ),
        (
            Message::AllocatePartition(pb::AllocatePartition {
                request_id: 1,
                key: Some(key(1).into()),
                num_subpartitions: 0,
                exclude_workers: Vec::new(),
                relocated_from: String::new(),
            }),
            "a partition needs at least one subpartition",
        ),
        (
            Message::AllocatePartition(pb::AllocatePartition {
                request_id: 1,
                key: Some(key(1).into()),
                num_subpartitions: 1,
                exclude_workers: vec!["w".into(); MAX_EXCLUDED_WORKERS + 1],
                relocated_from: String::new(),
            }),
            "exclude_workers has 65 ids, more than 64",
        ),
        (
            Message::WorkerHeartbeat(pb::WorkerHeartbeat {
                request_id: 1,
                worker_id: "w".into(),
                data_address: "h:1".into(),
                load: None,
                jobs: vec![Bytes::from_static(b"j"); MAX_HEARTBEAT_JOBS + 1],
                relocated: Vec::new(),
                parts: Vec::new(),
                adopted: Vec::new(),
            }),
            "a heartbeat names 4097 jobs, more than 4096",
        ),
        (
            Message::WorkerHeartbeat(pb::WorkerHeartbeat {
                request_id: 1,
                worker_id: "w".into(),
                data_address: "h:1".into(),
                load: Some(pb::WorkerLoad {
                    tiers: Some(Box::new(pb::TierStats {
                        dirs: vec![pb::DirStats::default(); MAX_DIRS + 1],
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                jobs: Vec::new(),
                relocated: Vec::new(),
                parts: Vec::new(),
                adopted: Vec::new(),
            }),
            "load.tiers.dirs has 65 entries, more than 64",
        ),
        (
            Message::WorkerHeartbeat(pb::WorkerHeartbeat {
                request_id: 1,
                worker_id: "w".into(),
                data_address: "h:1".into(),
                load: Some(pb::WorkerLoad {
                    durable_store: "../other".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "load.durable_store must be 1 to 64 ASCII letters and digits, not \"../other\"",
        ),
        (
            Message::AdoptLost(pb::AdoptLost {
                request_id: 1,
                lost_worker_id: "w".into(),
                store_id: "a".repeat(65),
            }),
            "store_id must be 1 to 64 ASCII letters and digits, not \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
        ),
        (
            Message::SplitPartition(pb::SplitPartition {
                request_id: 1,
                key: Some(key(1).into()),
                next_worker_id: "w".into(),
                next_address: "x".repeat(MAX_ID_BYTES + 1),
            }),
            "next_address must have 1 to 256 bytes, not 257",
        ),
        (
            Message::MoveForward(pb::MoveForward {
                request_id: 1,
                key: Some(key(1).into()),
                from_worker_id: String::new(),
                to_worker_id: "w".into(),
                to_address: "h:1".into(),
            }),
            "from_worker_id must have 1 to 256 bytes, not 0",
        ),
        (
            Message::OpenStream(pb::OpenStream {
                request_id: 1,
                stream_id: 1,
                key: Some(key(1).into()),
                first_subpartition: 3,
                last_subpartition: 2,
                initial_credit: 1,
            }),
            "subpartition range 3..=2 is empty",
        ),
        (
            Message::JobRegistered(pb::JobRegistered {
                request_id: 1,
                job_token: Bytes::from_static(b"short"),
                job_lease_ms: 0,
            }),
            "job token has 5 bytes, not 32",
        ),
        (
            Message::ReadData(pb::ReadData {
                extent_lengths: vec![1, 2],
                extent_crc32cs: vec![1],
                ..Default::default()
            }),
            "read data with mismatched extent lists",
        ),
    ];
    for (message, expected) in cases {
        let ty = message.message_type();
        let e = parse_any(message, Bytes::new()).expect_err("hostile header parsed");
        assert_eq!(e.kind(), ErrorKind::BadInput, "{ty:?}: {e}");
        assert_eq!(e.message(), expected, "{ty:?}");
    }
    // Extents that do not cover the body.
    let e = ReadData::from_frame(
        Message::ReadData(pb::ReadData {
            extent_lengths: vec![u32::MAX, u32::MAX],
            extent_crc32cs: vec![0, 0],
            ..Default::default()
        }),
        Bytes::from_static(b"short"),
    )
    .expect_err("extents past the body");
    assert_eq!(
        e.message(),
        "read data body has 5 bytes, extents say 8589934590"
    );
}

/// Parses a frame of any type with the parser its receiver uses.
fn parse_any(message: Message, body: Bytes) -> TierResult<()> {
    use MessageType as T;
    let ty = message.message_type();
    match ty {
        T::Handshake | T::HandshakeOk | T::Authenticate | T::Authenticated | T::ErrorReply => {
            Ok(())
        }
        T::Ack => Ack::from_frame(message, body).map(drop),
        T::HeartbeatReply => HeartbeatReply::from_frame(message, body).map(drop),
        T::JobRegistered => JobRegistered::from_frame(message, body).map(drop),
        T::PartitionAllocated => PartitionAllocated::from_frame(message, body).map(drop),
        T::PartitionLocated => PartitionLocated::from_frame(message, body).map(drop),
        T::WorkerList => WorkerList::from_frame(message, body).map(drop),
        T::PushAck => PushAck::from_frame(message, body).map(drop),
        T::WorkerStatsReply => WorkerStatsReply::from_frame(message, body).map(drop),
        T::PartitionMetricsReply => PartitionMetricsReply::from_frame(message, body).map(drop),
        T::LostAdopted => LostAdopted::from_frame(message, body).map(drop),
        T::StreamOpened => StreamOpened::from_frame(message, body).map(drop),
        T::ReadData | T::SubpartitionEnd | T::SubpartitionRedirect | T::StreamError => {
            StreamFrame::from_frame(message, body).map(drop)
        }
        T::RegisterWorker
        | T::WorkerHeartbeat
        | T::RegisterJob
        | T::UnregisterJob
        | T::AllocatePartition
        | T::WorkerUnreachable
        | T::LocatePartition
        | T::ListParts
        | T::ListWorkers => MasterRequest::from_frame(message, body).map(drop),
        T::PartsListed => PartsListed::from_frame(message, body).map(drop),
        T::CreatePartition
        | T::PushData
        | T::SealPartition
        | T::SplitPartition
        | T::ReleasePartition
        | T::DropJob
        | T::WorkerStats
        | T::PartitionMetrics
        | T::Decommission
        | T::Restart
        | T::AdoptLost
        | T::AdoptPartition
        | T::MoveForward
        | T::OpenStream
        | T::RequireSegment
        | T::AddCredit
        | T::CloseStream => WorkerRequest::from_frame(message, body).map(drop),
    }
}

#[test]
fn servers_refuse_what_they_do_not_serve_and_authorize_by_request() {
    let e = MasterRequest::from_frame(
        Message::DropJob(pb::DropJob {
            request_id: 42,
            job_id: Bytes::from_static(b"j"),
        }),
        Bytes::new(),
    )
    .expect_err("not a master request");
    assert_eq!(e.message(), "the master does not serve DropJob requests");
    let e = WorkerRequest::from_frame(Message::ack(1), Bytes::new()).expect_err("a reply");
    assert_eq!(e.message(), "a worker does not serve Ack requests");

    let push = WorkerRequest::from_frame(
        Message::PushData(pb::PushData {
            request_id: 1,
            key: Some(key(9).into()),
            crc32c: 0,
            num_buffers: 0,
        }),
        Bytes::new(),
    )
    .expect("push parses");
    assert_eq!(push.access(), Access::Job(&job(9)));
    assert_eq!(push.message_type(), MessageType::PushData);
    let credit = WorkerRequest::from_frame(
        Message::AddCredit(pb::AddCredit {
            stream_id: 1,
            credit: 1,
        }),
        Bytes::new(),
    )
    .expect("credit parses");
    assert_eq!(credit.access(), Access::OwnStream);
    assert_eq!(credit.message_type(), MessageType::AddCredit);
    let drop_job = DropJob { job: job(3) };
    assert_eq!(drop_job.access(), Access::Job(&job(3)));
    assert_eq!(Decommission.access(), Access::Cluster);
    assert_eq!(Restart.access(), Access::Cluster);
    let adopt = AdoptLost {
        lost: worker(1).id,
        store_id: "abc".into(),
    };
    assert_eq!(adopt.access(), Access::Cluster);
    assert_eq!(ListWorkers.access(), Access::Cluster);
    let report = WorkerUnreachable {
        worker: worker(1).id,
        error: String::new(),
        job: Some(job(1)),
    };
    assert_eq!(report.access(), Access::Authenticated);
    let allocate = MasterRequest::from_frame(
        AllocatePartition {
            key: key(4),
            num_subpartitions: 1,
            exclude: Vec::new(),
            relocated_from: None,
        }
        .into_frame(1)
        .0,
        Bytes::new(),
    )
    .expect("allocate parses");
    assert_eq!(allocate.access(), Access::Job(&job(4)));
}

#[test]
fn a_long_unreachable_report_is_cut_at_a_char_boundary() {
    let report = WorkerUnreachable::try_from(pb::WorkerUnreachable {
        request_id: 1,
        worker_id: "w".into(),
        error: "é".repeat(MAX_REPORT_ERROR_BYTES),
        job_id: Bytes::new(),
    })
    .expect("parses");
    assert_eq!(report.error.len(), MAX_REPORT_ERROR_BYTES);
    assert!(report.job.is_none());
}

const ALL_TYPES: std::ops::RangeInclusive<u8> = 1..=42;

proptest! {
    /// Any header bytes of any type: the receiver's parser gives an error
    /// or a value, never a panic.
    #[test]
    fn arbitrary_headers_never_panic(
        ty in ALL_TYPES,
        header in proptest::collection::vec(any::<u8>(), 0..256),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let Some(ty) = MessageType::from_u8(ty) else { return Ok(()); };
        if let Ok(message) = Message::decode_header(ty, Bytes::from(header)) {
            let _ = parse_any(message, Bytes::from(body));
        }
    }

    /// Valid allocations round trip whatever their ids and counts.
    #[test]
    fn allocations_roundtrip(
        job_id in proptest::collection::vec(any::<u8>(), 1..=MAX_ID_BYTES),
        partition_id in proptest::collection::vec(any::<u8>(), 1..=MAX_ID_BYTES),
        num_subpartitions in 1u32..,
        exclude in proptest::collection::vec("[a-z0-9:.]{1,40}", 0..=MAX_EXCLUDED_WORKERS),
        relocated_from in proptest::option::of("[a-z0-9]{1,20}"),
    ) {
        let request = AllocatePartition {
            key: PartitionKey {
                job: JobId::new(job_id).expect("valid"),
                partition: PartitionId::new(partition_id).expect("valid"),
            },
            num_subpartitions,
            exclude: exclude.into_iter().map(|w| WorkerId::new(w).expect("valid")).collect(),
            relocated_from: relocated_from.map(|w| WorkerId::new(w).expect("valid")),
        };
        prop_assert_eq!(through_the_wire(&request, 9), request);
    }

    /// Read data whose extents cover the body round trips; its body is
    /// never copied on receipt.
    #[test]
    fn read_data_roundtrips(
        lens in proptest::collection::vec(0u32..64, 0..8),
        stream_id in any::<u64>(),
        subpartition in any::<u32>(),
        segment in any::<u32>(),
    ) {
        let total: u32 = lens.iter().sum();
        let read = ReadData {
            stream_id: StreamId(stream_id),
            subpartition: SubpartitionId(subpartition),
            segment: SegmentId(segment),
            extents: lens.iter().map(|&len| Extent { len, crc32c: len * 7 }).collect(),
            num_buffers: lens.len() as u32,
            stored_subpartition: SubpartitionId(subpartition),
            body: Body::from(Bytes::from(vec![5u8; total as usize])),
        };
        prop_assert_eq!(through_the_wire(&read, 0), read);
    }
}
