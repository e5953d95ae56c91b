//! The hostile-value suite: property-generated, well-formed frames of every
//! message type, whose fields carry extreme values (0, 1, limits and one past
//! them, the type's maximum, long ids and names), sent over real TCP to a
//! worker process and a master process. Neither may crash or grow past its
//! memory bound, and a well-behaved producer and consumer running on the
//! worker across the whole run read back exactly what they wrote.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use terrace_proto::{Message, PROTOCOL_VERSION, encode_frame, pb};
use terrace_tests::ServiceProcess;
use terrace_tests::raw::{GOOD_JOB, GoodClient, handshake};

fn u32s() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(1024),
        Just(1025),
        Just(32_768),
        Just(32_769),
        Just(65_536),
        Just(65_537),
        Just(u32::MAX - 1),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn u64s() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::from(u32::MAX) + 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// Ids: empty, short, at the 256-byte limit, one past it, far past it. Never
/// the good client's job (nothing authenticates requests yet).
fn ids() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(32),
        Just(33),
        Just(256),
        Just(257),
        Just(40_000),
    ]
    .prop_flat_map(|len| (Just(len), any::<u8>()))
    .prop_map(|(len, fill)| {
        let fill = if fill == GOOD_JOB { fill + 1 } else { fill };
        Bytes::from(vec![fill; len])
    })
}

fn strings() -> impl Strategy<Value = String> {
    prop_oneof![Just(0usize), Just(10), Just(257), Just(5000), Just(40_000)]
        .prop_map(|len| "w".repeat(len))
}

fn keys() -> impl Strategy<Value = Option<pb::PartitionKey>> {
    prop_oneof![
        Just(None),
        (ids(), ids()).prop_map(|(job_id, partition_id)| Some(pb::PartitionKey {
            job_id,
            partition_id
        })),
    ]
}

fn loads() -> impl Strategy<Value = Option<pb::WorkerLoad>> {
    prop_oneof![
        Just(None),
        (u64s(), u64s(), u32s(), u32s(), 0usize..80, strings()).prop_map(
            |(stored, memory, open, sealed, dirs, text)| Some(pb::WorkerLoad {
                stored_bytes: stored,
                memory_used_bytes: memory,
                open_partitions: open,
                sealed_partitions: sealed,
                tiers: Some(Box::new(pb::TierStats {
                    memory_bytes: stored,
                    local_bytes: memory,
                    object_bytes: stored,
                    dirs: (0..dirs)
                        .map(|_| pb::DirStats {
                            path: text.clone(),
                            used_bytes: stored,
                            capacity_bytes: memory,
                            healthy: false,
                            error: text.clone(),
                            write_failures: memory,
                        })
                        .collect(),
                    object_store: None,
                })),
                memory_budget_bytes: stored,
                local_free_bytes: memory,
                unhealthy_dirs: open,
                full: open % 2 == 0,
                decommissioning: sealed % 2 == 0,
                restarting: sealed % 3 == 0,
                durable_store: text.clone(),
                read_streams: sealed,
                push_bytes_per_sec: memory,
                read_bytes_per_sec: stored,
            })
        ),
    ]
}

/// Job lists: none, up to 5000 short ids (past the master's 4096), a few long ones.
fn job_lists() -> impl Strategy<Value = Vec<Bytes>> {
    prop_oneof![
        Just(Vec::new()),
        (0usize..5000).prop_map(|n| vec![Bytes::from_static(b"j"); n]),
        prop::collection::vec(ids(), 1..4),
    ]
}

/// One frame: a message of any type and, for the types that carry one, a body.
fn frames() -> impl Strategy<Value = (Message, Vec<u8>)> {
    let body = prop_oneof![Just(0usize), Just(1), Just(14), Just(70_000)]
        .prop_map(|len| vec![0xa5u8; len]);
    prop_oneof![
        (u64s(), u32s(), strings()).prop_map(|(request_id, protocol_version, client_name)| {
            Message::Handshake(pb::Handshake {
                request_id,
                protocol_version,
                client_name,
            })
        }),
        (u64s(), u32s(), strings(), ids()).prop_map(
            |(request_id, protocol_version, server_name, auth_challenge)| {
                Message::HandshakeOk(pb::HandshakeOk {
                    request_id,
                    protocol_version,
                    server_name,
                    auth_challenge,
                    server_identity: "master".into(),
                })
            }
        ),
        (u64s(), ids(), ids(), ids()).prop_map(|(request_id, job_id, client_nonce, proof)| {
            Message::Authenticate(pb::Authenticate {
                request_id,
                job_id,
                client_nonce,
                proof,
            })
        }),
        (u64s(), ids()).prop_map(|(request_id, proof)| {
            Message::Authenticated(pb::Authenticated { request_id, proof })
        }),
        (u64s(), ids()).prop_map(|(request_id, job_token)| {
            Message::JobRegistered(pb::JobRegistered {
                request_id,
                job_token,
                job_lease_ms: 0,
            })
        }),
        (u64s(), any::<i32>(), any::<i32>(), strings()).prop_map(
            |(request_id, code, detail, message)| {
                Message::ErrorReply(pb::ErrorReply {
                    request_id,
                    code,
                    message,
                    detail,
                })
            }
        ),
        u64s().prop_map(Message::ack),
        (u64s(), strings(), strings()).prop_map(|(request_id, worker_id, data_address)| {
            Message::RegisterWorker(pb::RegisterWorker {
                request_id,
                worker_id,
                data_address,
            })
        }),
        (u64s(), strings(), strings(), loads(), job_lists()).prop_map(
            |(request_id, worker_id, data_address, load, jobs)| {
                Message::WorkerHeartbeat(pb::WorkerHeartbeat {
                    request_id,
                    worker_id,
                    data_address,
                    load,
                    relocated: jobs
                        .iter()
                        .map(|id| pb::PartitionKey {
                            job_id: id.clone(),
                            partition_id: id.clone(),
                        })
                        .collect(),
                    parts: jobs
                        .iter()
                        .rev()
                        .map(|id| pb::PartitionKey {
                            job_id: id.clone(),
                            partition_id: id.clone(),
                        })
                        .collect(),
                    adopted: jobs
                        .iter()
                        .map(|id| pb::AdoptedPart {
                            key: Some(pb::PartitionKey {
                                job_id: id.clone(),
                                partition_id: id.clone(),
                            }),
                            from_worker_id: String::from_utf8_lossy(id).into_owned(),
                        })
                        .collect(),
                    jobs,
                })
            }
        ),
        (u64s(), job_lists(), u64s()).prop_map(|(request_id, released_jobs, job_lease_ms)| {
            Message::HeartbeatReply(pb::HeartbeatReply {
                request_id,
                released_jobs: released_jobs.clone(),
                unknown_jobs: released_jobs,
                job_lease_ms,
                worker_timeout_ms: job_lease_ms,
                declared_lost: job_lease_ms % 2 == 0,
            })
        }),
        (u64s(), ids()).prop_map(
            |(request_id, job_id)| Message::RegisterJob(pb::RegisterJob { request_id, job_id })
        ),
        (u64s(), ids()).prop_map(|(request_id, job_id)| Message::UnregisterJob(
            pb::UnregisterJob { request_id, job_id }
        )),
        (u64s(), keys(), u32s(), job_lists()).prop_map(
            |(request_id, key, num_subpartitions, excluded)| {
                Message::AllocatePartition(pb::AllocatePartition {
                    request_id,
                    key,
                    num_subpartitions,
                    exclude_workers: excluded
                        .iter()
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .collect(),
                    relocated_from: excluded
                        .first()
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .unwrap_or_default(),
                })
            }
        ),
        (u64s(), keys(), strings()).prop_map(|(request_id, key, worker_id)| {
            Message::PartitionAllocated(pb::PartitionAllocated {
                request_id,
                key,
                worker_address: worker_id.clone(),
                worker_id,
            })
        }),
        u64s().prop_map(|request_id| Message::ListWorkers(pb::ListWorkers { request_id })),
        (u64s(), keys(), strings()).prop_map(|(request_id, key, worker_id)| {
            Message::LocatePartition(pb::LocatePartition {
                request_id,
                key,
                worker_id,
            })
        }),
        (u64s(), strings(), job_lists()).prop_map(|(request_id, worker_id, jobs)| {
            Message::ListParts(pb::ListParts {
                request_id,
                job_id: jobs.first().cloned().unwrap_or_default(),
                worker_id,
            })
        }),
        (u64s(), job_lists(), u64s()).prop_map(|(request_id, partition_ids, n)| {
            Message::PartsListed(pb::PartsListed {
                request_id,
                partition_ids,
                truncated: n % 2 == 0,
            })
        }),
        (u64s(), strings()).prop_map(|(request_id, worker_id)| {
            Message::PartitionLocated(pb::PartitionLocated {
                request_id,
                worker_address: worker_id.clone(),
                worker_restarting: request_id % 2 == 0,
                worker_recovering: request_id % 3 == 0,
                adopted_by_id: worker_id.clone(),
                adopted_by_address: worker_id.clone(),
                worker_id,
            })
        }),
        (u64s(), strings(), strings()).prop_map(|(request_id, worker_id, error)| {
            Message::WorkerUnreachable(pb::WorkerUnreachable {
                request_id,
                worker_id: worker_id.clone(),
                error,
                job_id: worker_id.into_bytes().into(),
            })
        }),
        (u64s(), ids()).prop_map(|(request_id, job)| Message::WorkerList(pb::WorkerList {
            request_id,
            workers: Vec::new(),
            jobs: vec![job; 100],
            settled: true,
        })),
        (u64s(), keys(), u32s(), any::<bool>(), any::<bool>()).prop_map(
            |(request_id, key, num_subpartitions, broadcast_only, continuation)| {
                Message::CreatePartition(pb::CreatePartition {
                    request_id,
                    key,
                    num_subpartitions,
                    broadcast_only,
                    continuation,
                    relocated: broadcast_only,
                })
            }
        ),
        (u64s(), keys()).prop_map(
            |(request_id, key)| Message::SealPartition(pb::SealPartition { request_id, key })
        ),
        (u64s(), any::<bool>()).prop_map(|(request_id, split)| {
            Message::PushAck(pb::PushAck { request_id, split })
        }),
        (u64s(), keys(), strings(), strings()).prop_map(
            |(request_id, key, next_worker_id, next_address)| {
                Message::SplitPartition(pb::SplitPartition {
                    request_id,
                    key,
                    next_worker_id,
                    next_address,
                })
            }
        ),
        (u64s(), keys()).prop_map(|(request_id, key)| Message::ReleasePartition(
            pb::ReleasePartition { request_id, key }
        )),
        (u64s(), ids())
            .prop_map(|(request_id, job_id)| Message::DropJob(pb::DropJob { request_id, job_id })),
        u64s().prop_map(|request_id| Message::WorkerStats(pb::WorkerStats { request_id })),
        (u64s(), keys(), strings(), strings()).prop_map(|(request_id, key, from, to)| {
            Message::MoveForward(pb::MoveForward {
                request_id,
                key,
                from_worker_id: from,
                to_worker_id: to.clone(),
                to_address: to,
            })
        }),
        (u64s(), u64s(), u32s()).prop_map(|(request_id, bytes, partitions)| {
            Message::WorkerStatsReply(pb::WorkerStatsReply {
                request_id,
                load: None,
                bytes_pushed: bytes,
                bytes_read: bytes,
                memory_budget_bytes: bytes,
                memory_peak_bytes: bytes,
                partitions,
                metadata_bytes: bytes,
                metadata_peak_bytes: bytes,
                metadata_limit_bytes: bytes,
            })
        }),
        (u64s(), u64s(), keys(), u32s(), u32s(), u32s()).prop_map(
            |(request_id, stream_id, key, first, last, credit)| {
                Message::OpenStream(pb::OpenStream {
                    request_id,
                    stream_id,
                    key,
                    first_subpartition: first,
                    last_subpartition: last,
                    initial_credit: credit,
                })
            }
        ),
        (u64s(), u64s(), u32s()).prop_map(|(request_id, stream_id, n)| {
            Message::StreamOpened(pb::StreamOpened {
                request_id,
                stream_id,
                num_subpartitions: n,
            })
        }),
        (u64s(), u32s(), u32s()).prop_map(|(stream_id, subpartition, segment_id)| {
            Message::RequireSegment(pb::RequireSegment {
                stream_id,
                subpartition,
                segment_id,
            })
        }),
        (u64s(), u32s()).prop_map(|(stream_id, credit)| Message::AddCredit(pb::AddCredit {
            stream_id,
            credit
        })),
        u64s().prop_map(|stream_id| Message::CloseStream(pb::CloseStream { stream_id })),
        (u64s(), u32s(), u32s()).prop_map(|(stream_id, subpartition, segment_id)| {
            Message::SubpartitionEnd(pb::SubpartitionEnd {
                stream_id,
                subpartition,
                segment_id,
            })
        }),
        (u64s(), u32s(), u32s(), strings()).prop_map(
            |(stream_id, subpartition, segment_id, address)| {
                Message::SubpartitionRedirect(pb::SubpartitionRedirect {
                    stream_id,
                    subpartition,
                    segment_id,
                    worker_id: address.clone(),
                    address,
                })
            }
        ),
        (u64s(), any::<i32>(), any::<i32>(), strings()).prop_map(
            |(stream_id, code, detail, message)| {
                Message::StreamError(pb::StreamError {
                    stream_id,
                    code,
                    message,
                    detail,
                })
            }
        ),
    ]
    .prop_map(|m| (m, Vec::new()))
    .boxed()
    .prop_union(
        (u64s(), keys(), u32s(), u32s(), body.clone())
            .prop_map(|(request_id, key, crc32c, n, body)| {
                (
                    Message::PushData(pb::PushData {
                        request_id,
                        key,
                        crc32c,
                        num_buffers: n,
                    }),
                    body,
                )
            })
            .boxed(),
    )
    .or((u64s(), keys(), strings(), body.clone())
        .prop_map(|(request_id, key, from_worker_id, index)| {
            (
                Message::AdoptPartition(pb::AdoptPartition {
                    request_id,
                    key,
                    from_worker_id,
                }),
                index,
            )
        })
        .boxed())
    .or((u64s(), u32s(), u32s(), body)
        .prop_map(|(stream_id, subpartition, len, body)| {
            (
                Message::ReadData(pb::ReadData {
                    stream_id,
                    subpartition,
                    segment_id: subpartition,
                    extent_lengths: vec![len; 3],
                    extent_crc32cs: vec![len; 2],
                    num_buffers: len,
                    stored_subpartition: subpartition,
                }),
                body,
            )
        })
        .boxed())
}

/// Sends `frame` after a handshake and reads whatever comes back for a
/// moment (a reply, an error, data, or the end of the connection).
fn poke(address: &str, frame: &(Message, Vec<u8>)) {
    let Ok(mut stream) = TcpStream::connect(address) else {
        panic!("{address} refused a connection");
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(150)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let mut bytes = encode_frame(&handshake(1, PROTOCOL_VERSION), 0).to_vec();
    bytes.extend_from_slice(&encode_frame(&frame.0, frame.1.len()));
    bytes.extend_from_slice(&frame.1);
    // The server may close the connection before taking it all.
    let _ = stream.write_all(&bytes);
    let mut sink = [0u8; 64 * 1024];
    let mut total = 0usize;
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 || total > 8 << 20 {
            break;
        }
        total += n;
    }
}

fn assert_alive(service: &mut ServiceProcess, what: &str) {
    if let Some(status) = service.child.try_wait().expect("poll the process") {
        panic!("the {what} exited under hostile frames: {status}");
    }
}

#[test]
fn extreme_values_in_every_message_type_crash_nothing_and_good_clients_finish() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut master = ServiceProcess::start(&["master", "--listen", "127.0.0.1:0"]);
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmemory_budget = \"64MiB\"\nmax_frame_size = \"1MiB\"\nmaster_addresses = [\"{}\"]\nheartbeat_interval = \"200ms\"\n",
            dir.path().join("data").display(),
            master.address
        ),
    )
    .expect("write worker config");
    let mut worker =
        ServiceProcess::start(&["worker", "--config", config.to_str().expect("utf-8 path")]);
    let good = GoodClient::start_at(&worker.address, "worker");

    let mut runner = TestRunner::new(Config {
        cases: 160,
        failure_persistence: None,
        ..Config::default()
    });
    let (worker_address, master_address) = (worker.address.clone(), master.address.clone());
    runner
        .run(&frames(), |frame| {
            poke(&worker_address, &frame);
            poke(&master_address, &frame);
            Ok(())
        })
        .expect("every hostile frame is survived");
    assert_alive(&mut worker, "worker");
    assert_alive(&mut master, "master");

    good.finish();
    let rss = worker.peak_rss();
    eprintln!("hostile: worker peak RSS {} MiB", rss >> 20);
    // Push budget 64 MiB, read memory 256 MiB (default), plus 64 MiB.
    assert!(
        rss <= (64 + 256 + 64) << 20,
        "worker peak RSS {} MiB past its bound",
        rss >> 20
    );
    // Both still serve.
    poke(
        &master_address,
        &(
            Message::ListWorkers(pb::ListWorkers { request_id: 1 }),
            Vec::new(),
        ),
    );
    assert_alive(&mut worker, "worker");
    assert_alive(&mut master, "master");
}
