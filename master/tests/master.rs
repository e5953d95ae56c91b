//! The master over real TCP on 127.0.0.1: registration, heartbeats,
//! placement, expiry of silent workers, released jobs, bad requests and
//! protocol errors.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use terrace_master::{Clock, ManualClock, MasterConfig, SystemClock, run_with_clock};
use terrace_proto::{FrameReader, Message, PROTOCOL_VERSION, pb, write_frame};
use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions};
use terrace_tier_api::protocol::{
    Ack, AllocatePartition, JobRegistered, ListWorkers, PartitionAllocated, RegisterJob,
    RegisterWorker, UnregisterJob, WorkerHeartbeat, WorkerList, WorkerLoad,
};
use terrace_tier_api::{ByteSize, ErrorKind, JobId, PartitionId, PartitionKey, WorkerId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(5);

struct Master {
    addr: String,
    shutdown: CancellationToken,
    task: JoinHandle<terrace_tier_api::TierResult<()>>,
}

async fn start(config: MasterConfig, clock: Arc<dyn Clock>) -> Master {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address").to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_with_clock(config, listener, shutdown.clone(), clock));
    Master {
        addr,
        shutdown,
        task,
    }
}

async fn connect(addr: &str) -> Client {
    let options = ClientOptions {
        name: "master test".into(),
        request_timeout: WAIT,
        ..ClientOptions::default()
    };
    Client::connect(addr, &options)
        .await
        .expect("connect to the master")
}

async fn register_worker(client: &Client, id: &str, address: &str) {
    let Ack = client
        .call(RegisterWorker {
            worker: worker_id(id),
            data_address: address.into(),
        })
        .await
        .expect("register worker");
}

fn worker_id(id: &str) -> WorkerId {
    WorkerId::new(id).expect("valid worker id")
}

fn job(id: &'static [u8]) -> JobId {
    JobId::new(Bytes::from_static(id)).expect("valid job id")
}

fn load(stored_bytes: u64) -> WorkerLoad {
    WorkerLoad {
        stored_bytes,
        memory_used_bytes: 7,
        open_partitions: 2,
        sealed_partitions: 3,
        tiers: None,
        ..WorkerLoad::default()
    }
}

/// Sends a heartbeat and returns the released jobs of the reply.
async fn heartbeat(client: &Client, id: &str, address: &str, stored_bytes: u64) -> Vec<Bytes> {
    let reply = client
        .call(WorkerHeartbeat {
            worker: worker_id(id),
            data_address: address.into(),
            load: load(stored_bytes),
            jobs: Vec::new(),
            relocated: Vec::new(),
            parts: Vec::new(),
            adopted: Vec::new(),
        })
        .await
        .expect("heartbeat");
    job_bytes(reply.released_jobs)
}

fn job_bytes(jobs: Vec<JobId>) -> Vec<Bytes> {
    jobs.into_iter().map(|j| j.as_bytes().clone()).collect()
}

async fn register_job(
    client: &Client,
    id: &'static [u8],
) -> terrace_tier_api::TierResult<JobRegistered> {
    client.call(RegisterJob { job: job(id) }).await
}

async fn unregister_job(client: &Client, id: &'static [u8]) -> terrace_tier_api::TierResult<Ack> {
    client.call(UnregisterJob { job: job(id) }).await
}

fn key(job_id: &'static [u8], partition: u32) -> PartitionKey {
    PartitionKey {
        job: job(job_id),
        partition: PartitionId::new(partition.to_be_bytes().to_vec()).expect("valid partition id"),
    }
}

/// A partition key as raw frames carry it (for the invalid requests).
fn raw_key(job: &'static [u8], partition: u32) -> pb::PartitionKey {
    key(job, partition).into()
}

async fn allocate(
    client: &Client,
    job: &'static [u8],
    partition: u32,
) -> terrace_tier_api::TierResult<PartitionAllocated> {
    let a = client
        .call(AllocatePartition {
            key: key(job, partition),
            num_subpartitions: 4,
            exclude: Vec::new(),
            relocated_from: None,
        })
        .await?;
    assert_eq!(a.key, key(job, partition), "the reply echoes the key");
    Ok(a)
}

async fn list_workers(client: &Client) -> WorkerList {
    client.call(ListWorkers).await.expect("list workers")
}

/// The registered jobs.
async fn jobs(client: &Client) -> Vec<Bytes> {
    job_bytes(list_workers(client).await.jobs)
}

fn worker_ids(list: &WorkerList) -> Vec<&str> {
    list.workers.iter().map(|w| w.worker.id.as_str()).collect()
}

async fn stop(master: Master) {
    master.shutdown.cancel();
    let result = clock::timeout(WAIT, master.task)
        .await
        .expect("master stops within the grace period")
        .expect("master task does not panic");
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn placement_spreads_a_job_over_three_workers_least_loaded_first() {
    let master = start(MasterConfig::default(), Arc::new(SystemClock)).await;
    let client = connect(&master.addr).await;
    for (id, address, stored) in [
        ("wa", "10.0.0.1:7000", 300 * MIB),
        ("wb", "10.0.0.2:7000", 100 * MIB),
        ("wc", "10.0.0.3:7000", 200 * MIB),
    ] {
        register_worker(&client, id, address).await;
        assert_eq!(
            heartbeat(&client, id, address, stored).await,
            Vec::<Bytes>::new()
        );
    }
    assert!(matches!(
        register_job(&client, b"job-1").await,
        Ok(JobRegistered { token: None, .. })
    ));

    // One job's partitions spread over the workers; within each round the
    // least loaded comes first (every worker reports the same streams, so
    // stored bytes decide: wb 100, wc 200, wa 300 MiB).
    let mut placed = Vec::new();
    for p in 0..7 {
        let a = allocate(&client, b"job-1", p).await.expect("allocate");
        placed.push(format!("{}@{}", a.worker.id, a.worker.address));
    }
    assert_eq!(
        placed,
        [
            "wb@10.0.0.2:7000",
            "wc@10.0.0.3:7000",
            "wa@10.0.0.1:7000",
            "wb@10.0.0.2:7000",
            "wc@10.0.0.3:7000",
            "wa@10.0.0.1:7000",
            "wb@10.0.0.2:7000"
        ]
    );

    let list = list_workers(&client).await;
    assert_eq!(worker_ids(&list), ["wa", "wb", "wc"]);
    assert_eq!(list.workers[1].load, load(100 * MIB));
    assert!(
        list.workers
            .iter()
            .all(|w| w.since_heartbeat < Duration::from_secs(5)),
        "{list:?}"
    );
    assert_eq!(list.jobs, [job(b"job-1")]);
    stop(master).await;
}

#[tokio::test]
async fn an_empty_cluster_spreads_consecutive_partitions_round_robin() {
    let config = MasterConfig {
        partition_size_estimate: ByteSize(0),
        ..MasterConfig::default()
    };
    let master = start(config, Arc::new(SystemClock)).await;
    let client = connect(&master.addr).await;
    for (id, address) in [("w1", "h1:1"), ("w2", "h2:2"), ("w3", "h3:3")] {
        register_worker(&client, id, address).await;
    }
    let mut placed = Vec::new();
    for p in 0..6 {
        let a = allocate(&client, b"job", p).await.expect("allocate");
        placed.push(format!("{}@{}", a.worker.id, a.worker.address));
    }
    assert_eq!(
        placed,
        [
            "w1@h1:1", "w2@h2:2", "w3@h3:3", "w1@h1:1", "w2@h2:2", "w3@h3:3"
        ]
    );
    // Allocation registered the job it had not heard of.
    assert_eq!(jobs(&client).await, [Bytes::from_static(b"job")]);
    stop(master).await;
}

#[tokio::test]
async fn allocation_without_workers_fails_with_no_workers() {
    let master = start(MasterConfig::default(), Arc::new(SystemClock)).await;
    let client = connect(&master.addr).await;
    let err = allocate(&client, b"job", 0)
        .await
        .expect_err("no worker is registered");
    assert_eq!(err.kind(), ErrorKind::NoWorkers);
    assert_eq!(err.message(), "no live worker");
    stop(master).await;
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_disappears_after_the_timeout() {
    let clock = Arc::new(ManualClock::new());
    let config = MasterConfig {
        worker_timeout: Duration::from_millis(300),
        ..MasterConfig::default()
    };
    let master = start(config, clock.clone()).await;
    let client = connect(&master.addr).await;
    register_worker(&client, "w1", "h:1").await;
    heartbeat(&client, "w2", "h:2", 0).await; // an unknown worker's heartbeat registers it
    clock.advance(Duration::from_millis(200));
    heartbeat(&client, "w2", "h:2", 0).await;
    clock.advance(Duration::from_millis(100));
    assert_eq!(
        worker_ids(&list_workers(&client).await),
        ["w1", "w2"],
        "300ms is not yet too old"
    );

    clock.advance(Duration::from_millis(1));
    let list = list_workers(&client).await;
    assert_eq!(worker_ids(&list), ["w2"]);
    assert_eq!(list.workers[0].since_heartbeat, Duration::from_millis(101));
    for p in 0..3 {
        assert_eq!(
            allocate(&client, b"job", p)
                .await
                .expect("w2 is live")
                .worker
                .id
                .into_string(),
            "w2"
        );
    }

    clock.advance(Duration::from_millis(200));
    assert_eq!(worker_ids(&list_workers(&client).await), Vec::<&str>::new());
    let err = allocate(&client, b"job", 9)
        .await
        .expect_err("every worker is lost");
    assert_eq!(err.kind(), ErrorKind::NoWorkers);

    // A lost worker that heartbeats again is back.
    heartbeat(&client, "w1", "h:1", 5).await;
    assert_eq!(worker_ids(&list_workers(&client).await), ["w1"]);
    stop(master).await;
}

#[tokio::test]
async fn heartbeat_replies_list_released_jobs_for_their_memory() {
    let clock = Arc::new(ManualClock::new());
    let config = MasterConfig {
        worker_timeout: Duration::from_secs(60),
        released_job_memory: Duration::from_secs(10),
        ..MasterConfig::default()
    };
    let master = start(config, clock.clone()).await;
    let client = connect(&master.addr).await;
    assert!(matches!(
        register_job(&client, b"j1").await,
        Ok(JobRegistered { .. })
    ));
    assert!(matches!(
        register_job(&client, b"j2").await,
        Ok(JobRegistered { .. })
    ));
    assert_eq!(heartbeat(&client, "w", "h:1", 0).await, Vec::<Bytes>::new());
    assert!(matches!(unregister_job(&client, b"j1").await, Ok(Ack)));
    // Unregistering a job this master never saw is remembered too (soft state).
    assert!(matches!(unregister_job(&client, b"j9").await, Ok(Ack)));
    assert_eq!(
        heartbeat(&client, "w", "h:1", 0).await,
        [Bytes::from_static(b"j1"), Bytes::from_static(b"j9")]
    );
    assert_eq!(jobs(&client).await, [Bytes::from_static(b"j2")]);
    let err = allocate(&client, b"j1", 0).await.expect_err("released job");
    assert_eq!(err.kind(), ErrorKind::BadInput);
    assert_eq!(
        err.message(),
        "job 6a31 is unregistered; it gets no new partitions"
    );

    clock.advance(Duration::from_millis(10_001));
    assert_eq!(heartbeat(&client, "w", "h:1", 0).await, Vec::<Bytes>::new());
    stop(master).await;
}

#[tokio::test]
async fn invalid_and_unserved_requests_get_bad_request_and_the_connection_stays_open() {
    let master = start(MasterConfig::default(), Arc::new(SystemClock)).await;
    let client = connect(&master.addr).await;
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::RegisterJob(pb::RegisterJob {
                request_id: 0,
                job_id: Bytes::new(),
            }),
            "job id is empty",
        ),
        (
            Message::RegisterWorker(pb::RegisterWorker {
                request_id: 0,
                worker_id: "w".into(),
                data_address: "nowhere".into(),
            }),
            "worker data address \"nowhere\" is not host:port",
        ),
        (
            Message::WorkerHeartbeat(pb::WorkerHeartbeat {
                jobs: Vec::new(),
                request_id: 0,
                worker_id: String::new(),
                data_address: "h:1".into(),
                load: None,
                ..Default::default()
            }),
            "worker id is empty",
        ),
        (
            Message::AllocatePartition(pb::AllocatePartition {
                request_id: 0,
                key: None,
                num_subpartitions: 1,
                exclude_workers: Vec::new(),
                ..Default::default()
            }),
            "partition key missing",
        ),
        (
            Message::AllocatePartition(pb::AllocatePartition {
                request_id: 0,
                key: Some(raw_key(b"j", 1)),
                num_subpartitions: 0,
                exclude_workers: Vec::new(),
                ..Default::default()
            }),
            "a partition needs at least one subpartition",
        ),
        (
            Message::SealPartition(pb::SealPartition {
                request_id: 0,
                key: Some(raw_key(b"j", 1)),
            }),
            "the master does not serve SealPartition requests",
        ),
        (
            heartbeat_with_tiers(pb::TierStats {
                dirs: vec![pb::DirStats::default(); 65],
                ..pb::TierStats::default()
            }),
            "load.tiers.dirs has 65 entries, more than 64",
        ),
        (
            heartbeat_with_tiers(pb::TierStats {
                dirs: vec![pb::DirStats {
                    path: "p".repeat(1025),
                    ..pb::DirStats::default()
                }],
                ..pb::TierStats::default()
            }),
            "load.tiers.dirs.path has 1025 bytes, more than 1024",
        ),
        (
            heartbeat_with_tiers(pb::TierStats {
                object_store: Some(Box::new(pb::ObjectStoreStats {
                    last_error: "e".repeat(5000),
                    ..pb::ObjectStoreStats::default()
                })),
                ..pb::TierStats::default()
            }),
            "load.tiers.object_store.last_error has 5000 bytes, more than 4096",
        ),
    ];
    for (message, expected) in cases {
        let err = client
            .request(move |request_id| with_request_id(message, request_id))
            .await
            .expect_err("invalid request");
        assert_eq!((err.kind(), err.message()), (ErrorKind::BadInput, expected));
    }
    assert_eq!(list_workers(&client).await.workers, []);
    stop(master).await;
}

/// A heartbeat of a new worker whose load carries `tiers`.
fn heartbeat_with_tiers(tiers: pb::TierStats) -> Message {
    Message::WorkerHeartbeat(pb::WorkerHeartbeat {
        jobs: Vec::new(),
        request_id: 0,
        worker_id: "w-big".into(),
        data_address: "h:1".into(),
        load: Some(pb::WorkerLoad {
            tiers: Some(Box::new(tiers)),
            ..pb::WorkerLoad::from(load(0))
        }),
        ..Default::default()
    })
}

fn with_request_id(mut message: Message, id: u64) -> Message {
    match &mut message {
        Message::RegisterJob(m) => m.request_id = id,
        Message::RegisterWorker(m) => m.request_id = id,
        Message::WorkerHeartbeat(m) => m.request_id = id,
        Message::AllocatePartition(m) => m.request_id = id,
        Message::SealPartition(m) => m.request_id = id,
        other => panic!("unexpected test message {other:?}"),
    }
    message
}

/// A raw connection that has completed the handshake (when `handshake`).
async fn raw_connection(
    addr: &str,
    handshake: bool,
) -> (
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read, 1 << 20);
    if handshake {
        let hello = Message::Handshake(pb::Handshake {
            request_id: 1,
            protocol_version: PROTOCOL_VERSION,
            client_name: "raw test".into(),
        });
        write_frame(&mut write, &hello, &[])
            .await
            .expect("send handshake");
        write.flush().await.expect("flush");
        let (reply, _) = reader.read_frame().await.expect("read").expect("a reply");
        assert!(
            matches!(reply, Message::HandshakeOk(ref ok) if ok.server_name == "terrace-master"),
            "{reply:?}"
        );
    }
    (reader, write)
}

/// Sends `bytes` and expects a PROTOCOL error with request id 0 whose
/// message contains `expected`, then the end of the connection.
async fn expect_protocol_error(addr: &str, handshake: bool, bytes: &[u8], expected: &str) {
    let (mut reader, mut write) = raw_connection(addr, handshake).await;
    write.write_all(bytes).await.expect("send bytes");
    write.flush().await.expect("flush");
    let (reply, _) = clock::timeout(WAIT, reader.read_frame())
        .await
        .expect("a reply in time")
        .expect("a readable reply")
        .expect("a reply before the end");
    match reply {
        Message::ErrorReply(e) => {
            assert_eq!((e.request_id, e.code), (0, pb::ErrorCode::Protocol as i32));
            // All protocol errors share one code; the text names the offending frame.
            assert!(
                e.message.contains(expected),
                "{:?} does not contain {expected:?}",
                e.message
            );
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    let end = clock::timeout(WAIT, reader.read_frame())
        .await
        .expect("closed in time");
    assert!(
        matches!(end, Ok(None)),
        "the master closes the connection, got {end:?}"
    );
}

#[tokio::test]
async fn protocol_errors_close_only_the_offending_connection() {
    let master = start(MasterConfig::default(), Arc::new(SystemClock)).await;
    let bystander = connect(&master.addr).await;
    register_worker(&bystander, "w1", "h:1").await;

    // 2MiB announced against a 1MiB limit.
    let oversized = [0x00, 0x20, 0x00, 0x00, 13, 0, 0, 0, 0];
    expect_protocol_error(
        &master.addr,
        true,
        &oversized,
        "frame of 2097152 bytes exceeds the maximum of 1048576 bytes",
    )
    .await;
    let unknown_type = [0, 0, 0, 5, 200, 0, 0, 0, 0];
    expect_protocol_error(
        &master.addr,
        true,
        &unknown_type,
        "unknown message type 200",
    )
    .await;
    // A RegisterJob whose 3 header bytes are not protobuf.
    let bad_header = [0, 0, 0, 8, 13, 0, 0, 0, 3, 0xff, 0xff, 0xff];
    expect_protocol_error(
        &master.addr,
        true,
        &bad_header,
        "header of RegisterJob does not decode",
    )
    .await;
    // Text instead of a handshake: "hell" read as a length.
    expect_protocol_error(
        &master.addr,
        false,
        b"hello master\r\n",
        "bad handshake frame: frame of 1751477356 bytes exceeds the maximum of 1048576 bytes",
    )
    .await;

    // The bystander's connection still works.
    assert_eq!(worker_ids(&list_workers(&bystander).await), ["w1"]);
    assert!(!bystander.is_closed());
    stop(master).await;
}

/// The master runs the same server skeleton as workers: a frame whose body
/// stalls is closed at `server.frame_timeout`, and connections past
/// `server.max_connections` are refused with a reason.
#[tokio::test]
async fn stalled_frames_and_surplus_connections_are_closed_with_a_reason() {
    let config = MasterConfig {
        server: terrace_rpc::ServerOptions {
            max_connections: 2,
            frame_timeout: Duration::from_secs(1),
            ..terrace_rpc::ServerOptions::default()
        },
        ..MasterConfig::default()
    };
    let master = start(config, Arc::new(SystemClock)).await;
    // A RegisterJob announcing a 100 KiB header that never comes.
    let stalled = [0x00, 0x01, 0x90, 0x05, 13, 0x00, 0x01, 0x90, 0x00];
    let started = clock::now();
    expect_protocol_error(
        &master.addr,
        true,
        &stalled,
        "did not arrive within 1s of its start (server.frame_timeout)",
    )
    .await;
    assert!(clock::elapsed(started) >= Duration::from_secs(1));

    let first = connect(&master.addr).await;
    let second = connect(&master.addr).await;
    let third = Client::connect(&master.addr, &ClientOptions::default())
        .await
        .expect_err("a third connection is refused");
    // The text names the limit.
    assert!(
        third
            .message()
            .contains("has 2 connections open, its limit (server.max_connections)"),
        "{third}"
    );
    // The two open ones are served.
    register_worker(&first, "w1", "h:1").await;
    assert_eq!(worker_ids(&list_workers(&second).await), ["w1"]);
    stop(master).await;
}

#[tokio::test]
async fn shutdown_closes_open_connections_and_returns() {
    let master = start(MasterConfig::default(), Arc::new(SystemClock)).await;
    let (mut reader, _write) = raw_connection(&master.addr, true).await;
    let addr = master.addr.clone();
    stop(master).await;
    let end = clock::timeout(WAIT, reader.read_frame())
        .await
        .expect("closed in time");
    assert!(
        matches!(end, Ok(None)),
        "expected the end of the connection, got {end:?}"
    );
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "the listener is closed"
    );
}

// On paused time (tokio's `test-util`): the master's clock is the one clock,
// so leases and worker timeouts move only when the test advances time, and
// land on the exact millisecond, with no waiting.

#[tokio::test(start_paused = true)]
async fn on_paused_time_a_job_lease_expires_exactly_after_a_lease_without_renewal() {
    let lease = Duration::from_secs(60);
    let config = MasterConfig {
        job_lease: lease,
        worker_timeout: Duration::from_secs(3600),
        ..MasterConfig::default()
    };
    let master = start(config, Arc::new(SystemClock)).await;
    let client = connect(&master.addr).await;
    assert!(matches!(
        register_job(&client, b"j1").await,
        Ok(JobRegistered { .. })
    ));
    assert!(matches!(
        register_job(&client, b"j2").await,
        Ok(JobRegistered { .. })
    ));
    assert_eq!(heartbeat(&client, "w", "h:1", 0).await, Vec::<Bytes>::new());

    // j2 is renewed half-way; j1 never is.
    tokio::time::advance(lease / 2).await;
    assert!(matches!(
        register_job(&client, b"j2").await,
        Ok(JobRegistered { .. })
    ));
    tokio::time::advance(lease / 2).await;
    assert_eq!(
        jobs(&client).await,
        [Bytes::from_static(b"j1"), Bytes::from_static(b"j2")],
        "exactly a lease without renewal: not yet expired"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        heartbeat(&client, "w", "h:1", 0).await,
        [Bytes::from_static(b"j1")],
        "a lease and a millisecond: released, and workers are told"
    );
    assert_eq!(jobs(&client).await, [Bytes::from_static(b"j2")]);
    let err = allocate(&client, b"j1", 0).await.expect_err("released job");
    assert_eq!(err.kind(), ErrorKind::BadInput);

    // The renewed one lapses a lease after its renewal.
    tokio::time::advance(lease / 2).await;
    assert_eq!(jobs(&client).await, Vec::<Bytes>::new());
    stop(master).await;
}

#[tokio::test(start_paused = true)]
async fn on_paused_time_a_worker_is_lost_exactly_a_worker_timeout_after_its_last_heartbeat() {
    let timeout = Duration::from_secs(10);
    let config = MasterConfig {
        worker_timeout: timeout,
        ..MasterConfig::default()
    };
    let master = start(config, Arc::new(SystemClock)).await;
    let client = connect(&master.addr).await;
    heartbeat(&client, "w1", "h:1", 0).await;
    heartbeat(&client, "w2", "h:2", 0).await;
    // w2 keeps heartbeating every 3 s; w1 stops.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(3)).await;
        heartbeat(&client, "w2", "h:2", 0).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let list = list_workers(&client).await;
    assert_eq!(worker_ids(&list), ["w1", "w2"], "10 s is not yet too old");
    assert_eq!(
        list.workers[0].since_heartbeat,
        Duration::from_millis(10_000)
    );
    assert_eq!(
        list.workers[1].since_heartbeat,
        Duration::from_millis(1_000)
    );

    tokio::time::advance(Duration::from_millis(1)).await;
    let list = list_workers(&client).await;
    assert_eq!(worker_ids(&list), ["w2"], "lost after 10 s and 1 ms");
    assert_eq!(
        allocate(&client, b"job", 0)
            .await
            .expect("w2 is live")
            .worker
            .id
            .into_string(),
        "w2"
    );
    stop(master).await;
}
