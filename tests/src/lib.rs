//! Shared helpers for Terrace's end-to-end tests: an in-process worker on
//! loopback, a Flink-like writer that keeps the segment protocol and records
//! exactly what a reader must see, and a reader that drains a gate with a
//! deadline (a test never hangs).

pub mod child;
pub mod deploy;
pub mod logs;
pub mod pki;
pub mod raw;
pub mod s3;
pub mod secure;
pub mod wait;

pub use wait::{hold, wait_for, wait_until, wait_until_async, wait_until_every};

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use terrace_consumer_agent::ConsumerAgent;
use terrace_producer_agent::{ProducerAgent, ProducerSpec};
use terrace_rpc::clock;
use terrace_tier_api::{
    AgentConfig, AvailabilityNotifier, Buffer, DataType, InputChannelId, JobId, PartitionId,
    PartitionKey, SegmentId, ShuffleDescriptor, SubpartitionId, TierConsumerAgent, TierError,
    TierProducerAgent, WriteOutcome,
};
use terrace_worker::{WorkerConfig, WorkerHandle};

/// The payload of END_OF_SEGMENT buffers in tests.
pub const EOS_PAYLOAD: &[u8] = b"end-of-segment";
/// The payload of the event that ends a subpartition (like Flink's EndOfPartitionEvent).
pub const END_PAYLOAD: &[u8] = b"end-of-partition";

/// A shuffle handler for tests that expect no engine callback.
#[derive(Debug)]
pub struct Ignore;

impl terrace_tier_api::TierShuffleHandler for Ignore {
    fn on_release_partitions(&self, _partitions: Vec<PartitionId>) {}
    fn on_fatal_error(&self, _error: TierError) {}
}

/// An in-process worker with its own runtime.
#[derive(Debug)]
pub struct TestWorker {
    pub runtime: tokio::runtime::Runtime,
    pub handle: Option<WorkerHandle>,
    pub address: String,
    pub worker_id: String,
}

impl TestWorker {
    pub fn start(config: WorkerConfig) -> TestWorker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("worker runtime");
        let handle = runtime
            .block_on(terrace_worker::start(WorkerConfig {
                listen: "127.0.0.1:0".into(),
                ..config
            }))
            .expect("worker starts");
        TestWorker {
            address: handle.address.to_string(),
            worker_id: handle.worker_id.clone(),
            handle: Some(handle),
            runtime,
        }
    }

    pub fn descriptor(&self, key: &PartitionKey) -> ShuffleDescriptor {
        ShuffleDescriptor::new(key, self.worker_id.clone(), self.address.clone())
    }

    pub fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime
                .block_on(handle.stop())
                .expect("worker stops cleanly");
        }
    }
}

pub fn key(job: u8, partition: u32) -> PartitionKey {
    PartitionKey {
        job: JobId::new(vec![job; 16]).expect("job id"),
        partition: PartitionId::new([b"partition-".as_slice(), &partition.to_be_bytes()].concat())
            .expect("partition id"),
    }
}

/// A key whose partition id is as long as Flink's (80 bytes: a
/// `ResultPartitionID`), so longer than the ids a worker names by plain hex.
pub fn flink_sized_key(job: u8, partition: u32) -> PartitionKey {
    let mut id = vec![job; 76];
    id.extend_from_slice(&partition.to_be_bytes());
    PartitionKey {
        job: JobId::new(vec![job; 16]).expect("job id"),
        partition: PartitionId::new(id).expect("partition id"),
    }
}

/// Deterministic payload bytes for (partition, subpartition, index).
pub fn payload(partition: u32, sub: u32, index: u32, len: usize) -> Bytes {
    let mut state = (u64::from(partition) << 40)
        ^ (u64::from(sub) << 20)
        ^ u64::from(index)
        ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Writes like Flink's producer client: starts segment 0 on first use, and on
/// `SegmentFull` starts the next segment and writes the buffer again. Records
/// the exact sequence a reader must see per subpartition (END_OF_SEGMENT included).
#[derive(Debug)]
pub struct RecordingWriter {
    pub agent: ProducerAgent,
    segments: HashMap<u32, u32>,
    pub expected: HashMap<u32, Vec<Buffer>>,
}

impl RecordingWriter {
    pub fn new(agent: ProducerAgent) -> Self {
        RecordingWriter {
            agent,
            segments: HashMap::new(),
            expected: HashMap::new(),
        }
    }

    pub fn write(&mut self, sub: u32, buffer: Buffer) -> Result<(), TierError> {
        let mut buffer = buffer;
        if !self.segments.contains_key(&sub) {
            assert!(
                self.agent
                    .try_start_new_segment(SubpartitionId(sub), SegmentId(0), 1)?
            );
            self.segments.insert(sub, 0);
        }
        loop {
            let copy = buffer.clone();
            match self.agent.try_write(SubpartitionId(sub), buffer, 0)? {
                WriteOutcome::Written => {
                    self.expected.entry(sub).or_default().push(copy);
                    return Ok(());
                }
                WriteOutcome::SegmentFull(back) => {
                    self.expected
                        .entry(sub)
                        .or_default()
                        .push(Buffer::end_of_segment(Bytes::from_static(EOS_PAYLOAD)));
                    let segment = self.segments.get_mut(&sub).expect("segment started above");
                    *segment += 1;
                    assert!(self.agent.try_start_new_segment(
                        SubpartitionId(sub),
                        SegmentId(*segment),
                        1
                    )?);
                    buffer = back;
                }
            }
        }
    }

    pub fn close(&mut self) -> Result<(), TierError> {
        self.agent.close()
    }

    /// Writes the END event to subpartitions `0..subs`, closes the producer
    /// (sealing its last part) and returns the workers its parts went to,
    /// first to last. Panics on a failure.
    pub fn end_and_close(&mut self, subs: u32) -> Vec<String> {
        for sub in 0..subs {
            self.write(sub, Buffer::event(Bytes::from_static(END_PAYLOAD)))
                .expect("write the end event");
        }
        let parts = self.agent.parts().to_vec();
        self.close().expect("close seals the partition");
        parts
    }

    /// Number of segments started for `sub`.
    pub fn segments_of(&self, sub: u32) -> u32 {
        self.segments.get(&sub).map_or(0, |s| s + 1)
    }
}

/// A producer agent for `key` on `worker`.
pub fn producer(
    config: &AgentConfig,
    descriptor: ShuffleDescriptor,
    subs: u32,
    broadcast_only: bool,
) -> ProducerAgent {
    ProducerAgent::new(
        config.clone(),
        ProducerSpec {
            descriptor,
            num_subpartitions: subs,
            broadcast_only,
            end_of_segment_payload: Bytes::from_static(EOS_PAYLOAD),
        },
    )
    .expect("producer agent connects")
}

/// Wakes a reader thread when any channel gets data.
#[derive(Debug, Default)]
pub struct Wakeup {
    count: Mutex<u64>,
    condvar: Condvar,
}

impl Wakeup {
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self.count.lock().expect("wakeup lock");
        let (guard, _) = self
            .condvar
            .wait_timeout_while(guard, timeout, |c| *c == seen)
            .expect("wakeup wait");
        *guard
    }

    pub fn current(&self) -> u64 {
        *self.count.lock().expect("wakeup lock")
    }
}

impl AvailabilityNotifier for Wakeup {
    fn notify_available(&self, _partition: &PartitionId, _channel: InputChannelId) {
        *self.count.lock().expect("wakeup lock") += 1;
        self.condvar.notify_all();
    }
}

/// Reads every (partition, subpartition) of a started consumer until each
/// ends (an END event, or the worker says the subpartition has no more
/// segments), within `deadline`. Returns the buffers per (partition, sub).
pub fn drain(
    consumer: &ConsumerAgent,
    wakeup: &Wakeup,
    targets: &[(PartitionId, u32)],
    deadline: Duration,
) -> Result<HashMap<(PartitionId, u32), Vec<Buffer>>, TierError> {
    let until = clock::now() + deadline;
    let mut out: HashMap<(PartitionId, u32), Vec<Buffer>> = HashMap::new();
    let mut segment: HashMap<(PartitionId, u32), u32> = HashMap::new();
    let mut done: Vec<bool> = vec![false; targets.len()];
    while done.iter().any(|d| !d) {
        if clock::now() > until {
            let left: Vec<_> = targets
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|((p, s), _)| format!("{p}/{s}"))
                .take(8)
                .collect();
            return Err(TierError::unavailable(format!(
                "reader deadline passed; unfinished: {left:?}"
            )));
        }
        let seen = wakeup.current();
        let mut progress = false;
        for (i, (partition, sub)) in targets.iter().enumerate() {
            if done[i] {
                continue;
            }
            let seg = segment.entry((partition.clone(), *sub)).or_insert(0);
            match consumer.get_next_buffer(partition, SubpartitionId(*sub), SegmentId(*seg))? {
                Some(buffer) => {
                    progress = true;
                    if buffer.data_type == DataType::EndOfSegment {
                        *seg += 1;
                    }
                    let end = buffer.data_type == DataType::Event
                        && buffer.payload.as_ref() == END_PAYLOAD;
                    out.entry((partition.clone(), *sub))
                        .or_default()
                        .push(buffer);
                    if end {
                        done[i] = true;
                    }
                }
                None => {
                    if consumer.is_finished(partition, SubpartitionId(*sub)) {
                        done[i] = true;
                        progress = true;
                    }
                }
            }
        }
        if !progress {
            wakeup.wait(seen, Duration::from_millis(50));
        }
    }
    Ok(out)
}

/// Shared handle for a wakeup that can be registered with a consumer.
pub fn wakeup() -> Arc<Wakeup> {
    Arc::new(Wakeup::default())
}

/// The `terrace` binary of this build. The first call in a test process runs
/// an incremental `cargo build` of it, so a test never runs a stale binary.
pub fn terrace_bin() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>/terrace
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("test executable lives in target/<profile>/deps");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut command = std::process::Command::new(cargo);
            // Built as cargo builds it for the workspace's tests (for the
            // test target cli/tests/binary.rs): the same features as every
            // other test target, so after `cargo test --workspace` this
            // compiles nothing (`cargo build -p terrace-cli` would resolve
            // features for that package alone and rebuild ~26 crates).
            command.args([
                "test",
                "--quiet",
                "--workspace",
                "--no-run",
                "--test",
                "binary",
            ]);
            // Cargo gives a test process its package's variables. Some build
            // scripts (ring's) rerun when one of them changes, so passing
            // them on would rebuild half the tree here and again at the next
            // `cargo test`.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_EXE_")
                    || matches!(
                        name.as_ref(),
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "CARGO_RUSTC_CURRENT_DIR"
                    )
                {
                    command.env_remove(name.as_ref());
                }
            }
            if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
                command.arg("--release");
            }
            let status = command
                .status()
                .expect("run cargo to build the terrace binary");
            assert!(status.success(), "building the terrace binary failed");
            let bin = profile_dir.join("terrace");
            assert!(
                bin.exists(),
                "terrace binary not found at {}",
                bin.display()
            );
            bin
        })
        .clone()
}

/// Waits (at most `within`) for a line of the child's piped stdout that
/// contains `marker`, and returns what follows the marker, trimmed. Takes the
/// child's stdout; later lines are read and dropped.
pub fn await_stdout_line(
    child: &mut std::process::Child,
    marker: &'static str,
    within: Duration,
) -> Option<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(rest) = line.split(marker).nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    rx.recv_timeout(within).ok()
}

/// Runs `terrace <args>` to its end (failing the test past `limit`) and
/// returns what it printed and how it exited.
pub fn run_terrace(args: &[&str], limit: Duration) -> std::process::Output {
    run_terrace_with_env(args, &[], limit)
}

/// [`run_terrace`] with extra environment variables.
pub fn run_terrace_with_env(
    args: &[&str],
    env: &[(String, String)],
    limit: Duration,
) -> std::process::Output {
    let child = std::process::Command::new(terrace_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("TERRACE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn terrace");
    join_within(
        std::thread::spawn(move || child.wait_with_output()),
        limit,
        "terrace command",
    )
    .expect("terrace ran")
}

/// Runs `terrace <args>` (with `env`, within `limit`), which must succeed,
/// and parses its stdout as JSON.
pub fn terrace_json(args: &[&str], env: &[(String, String)], limit: Duration) -> serde_json::Value {
    let out = run_terrace_with_env(args, env, limit);
    assert!(
        out.status.success(),
        "terrace {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// A `terrace` service running as a child process; killed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    pub child: std::process::Child,
    pub address: String,
}

impl ServiceProcess {
    /// Starts `terrace <args>` and waits (at most 30 s) for its "listening on" line.
    pub fn start(args: &[&str]) -> ServiceProcess {
        ServiceProcess::start_with_env(args, &[])
    }

    /// [`ServiceProcess::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(String, String)]) -> ServiceProcess {
        let mut child = std::process::Command::new(terrace_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "TERRACE_LOG",
                std::env::var("TERRACE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn terrace");
        let address = await_stdout_line(&mut child, "listening on ", Duration::from_secs(30))
            .expect("terrace prints its listening address within 30 s");
        ServiceProcess { child, address }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Peak resident memory (VmHWM) of the process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line in /proc status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM value");
        kib * 1024
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- Helpers for the error-path tests (bad_input, release, consumer_errors) ---

/// Agent settings for small error-path tests: small pushes and segments, no
/// compression (so stored bytes are the engine's bytes), short timeouts.
///
/// The masters are an address nothing listens on, not the default
/// 127.0.0.1:9870: a consumer whose worker lacks its partition asks the
/// masters for up to 10 s whether it was relocated, so a master left running
/// there (an operator's, another run's) would hold up every such test.
/// Tests with a cluster set their own.
pub fn small_agent_config() -> AgentConfig {
    AgentConfig {
        master_addresses: vec![closed_address()],
        segment_size: terrace_tier_api::ByteSize::kib(64),
        push_size: terrace_tier_api::ByteSize::kib(32),
        max_bytes_in_flight: terrace_tier_api::ByteSize::mib(1),
        max_buffer_size: terrace_tier_api::ByteSize::kib(64),
        compression: false,
        read_credits: 4,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        ..AgentConfig::default()
    }
}

/// Writes `buffers_per_sub` data buffers of `len` bytes, then the END event,
/// to each of `subs` subpartitions of `descriptor`'s partition with a producer
/// agent, and closes it (which seals the partition). Returns what a reader
/// must see per subpartition.
pub fn write_partition(
    config: &AgentConfig,
    descriptor: ShuffleDescriptor,
    partition: u32,
    subs: u32,
    buffers_per_sub: u32,
    len: usize,
) -> HashMap<u32, Vec<Buffer>> {
    let mut writer = RecordingWriter::new(producer(config, descriptor, subs, false));
    for i in 0..buffers_per_sub {
        for sub in 0..subs {
            writer
                .write(sub, Buffer::data(payload(partition, sub, i, len)))
                .expect("write");
        }
    }
    writer.end_and_close(subs);
    writer.expected
}

/// Reads subpartitions `0..subs` of `descriptor`'s partition to their end
/// with a fresh consumer agent, within `deadline`.
pub fn read_partition(
    config: &AgentConfig,
    descriptor: ShuffleDescriptor,
    subs: u32,
    deadline: Duration,
) -> Result<HashMap<u32, Vec<Buffer>>, TierError> {
    let partition = descriptor.key()?.partition;
    let spec = terrace_tier_api::ConsumerSpec {
        partition: partition.clone(),
        input_channel: InputChannelId(0),
        subpartitions: 0..=subs - 1,
    };
    let wake = wakeup();
    let mut consumer = ConsumerAgent::new(config.clone(), vec![spec], vec![Some(descriptor)])?;
    consumer.register_availability_notifier(Arc::clone(&wake) as _);
    consumer.start()?;
    let targets: Vec<(PartitionId, u32)> = (0..subs).map(|s| (partition.clone(), s)).collect();
    let got = drain(&consumer, &wake, &targets, deadline)?;
    Ok(got
        .into_iter()
        .map(|((_, sub), buffers)| (sub, buffers))
        .collect())
}

/// Asserts two buffer sequences are equal buffer by buffer: type, flag, bytes.
pub fn assert_buffers_eq(have: &[Buffer], want: &[Buffer], what: &str) {
    assert_eq!(have.len(), want.len(), "buffer count of {what}");
    for (i, (h, w)) in have.iter().zip(want).enumerate() {
        assert_eq!(h.data_type, w.data_type, "type of buffer {i} of {what}");
        assert_eq!(
            h.compressed, w.compressed,
            "compressed flag of buffer {i} of {what}"
        );
        assert_eq!(h.payload, w.payload, "bytes of buffer {i} of {what}");
    }
}

/// Sends one request to a worker over a fresh `terrace_rpc::Client` and
/// returns its reply (an error reply becomes the error). Bounded by the
/// client's connect and request timeouts (5 s and 10 s). A raw frame, for
/// tests that send what no typed request can; others use [`call`].
pub fn request_worker(
    address: &str,
    build: impl FnOnce(u64) -> terrace_proto::Message,
) -> Result<terrace_proto::Message, TierError> {
    request_worker_with(address, &admin_options(), build)
}

/// Options of the tests' one-off requests: 5 s to connect, 10 s per request.
pub fn admin_options() -> terrace_rpc::ClientOptions {
    terrace_rpc::ClientOptions {
        name: "test-admin".into(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..terrace_rpc::ClientOptions::default()
    }
}

/// [`request_worker`] with other options (a credential, TLS).
pub fn request_worker_with(
    address: &str,
    options: &terrace_rpc::ClientOptions,
    build: impl FnOnce(u64) -> terrace_proto::Message,
) -> Result<terrace_proto::Message, TierError> {
    terrace_rpc::io_runtime().block_on(async {
        let client = terrace_rpc::Client::connect(address, options).await?;
        let reply = client.request(build).await;
        client.close();
        reply.map(|(message, _)| message)
    })
}

/// Sends one typed request to the worker or master at `address` over a
/// fresh connection ([`admin_options`]) and returns its reply.
pub fn call<R: terrace_tier_api::protocol::Request>(
    address: &str,
    request: R,
) -> Result<R::Reply, TierError> {
    call_with(address, &admin_options(), request)
}

/// [`call`] with other options (a credential, TLS).
pub fn call_with<R: terrace_tier_api::protocol::Request>(
    address: &str,
    options: &terrace_rpc::ClientOptions,
    request: R,
) -> Result<R::Reply, TierError> {
    terrace_rpc::io_runtime().block_on(async {
        let client = terrace_rpc::Client::connect(address, options).await?;
        let reply = client.call(request).await;
        client.close();
        reply
    })
}

/// A worker's `WorkerStats` reply (fails the test on any error).
pub fn worker_stats(address: &str) -> terrace_tier_api::protocol::WorkerStatsReply {
    worker_stats_with(address, &admin_options())
}

/// [`worker_stats`] with other options (a credential, TLS).
pub fn worker_stats_with(
    address: &str,
    options: &terrace_rpc::ClientOptions,
) -> terrace_tier_api::protocol::WorkerStatsReply {
    call_with(address, options, terrace_tier_api::protocol::WorkerStats)
        .unwrap_or_else(|e| panic!("worker {address} answered WorkerStats with {e}"))
}

/// The master at `address`'s worker list, or its error.
pub fn list_workers(address: &str) -> Result<terrace_tier_api::protocol::WorkerList, TierError> {
    call(address, terrace_tier_api::protocol::ListWorkers)
}

/// Polls `get_next_buffer` on one subpartition (following its segments)
/// until it returns an error or `deadline` passes. Returns the error and the
/// buffers handed out before it.
pub fn wait_for_error(
    consumer: &ConsumerAgent,
    partition: &PartitionId,
    sub: u32,
    deadline: Duration,
) -> (TierError, Vec<Buffer>) {
    let mut segment = 0u32;
    let mut delivered = Vec::new();
    let what = format!("an error from {partition}/{sub}");
    let (error, _) = wait_for(deadline, &what, || {
        loop {
            match consumer.get_next_buffer(partition, SubpartitionId(sub), SegmentId(segment)) {
                Err(e) => return Some(e),
                Ok(Some(buffer)) => {
                    if buffer.data_type == DataType::EndOfSegment {
                        segment += 1;
                    }
                    delivered.push(buffer);
                }
                Ok(None) => return None,
            }
        }
    });
    (error, delivered)
}

/// Joins `handle`, failing the test if the thread has not finished within `limit`.
pub fn join_within<T>(handle: std::thread::JoinHandle<T>, limit: Duration, what: &str) -> T {
    wait_until(limit, &format!("{what} finishes"), || handle.is_finished());
    handle.join().unwrap_or_else(|_| panic!("{what} panicked"))
}

/// A loopback address nothing listens on (a listener bound, then dropped),
/// for a service that must come back on the same address after a restart.
///
/// The host is a random one in 127.0.0.0/8 rather than 127.0.0.1: the port
/// is free when this returns, but until the service binds it (and again
/// while a killed service is down) any socket may take it, and the client
/// connections of tests running in parallel take their local ports on
/// 127.0.0.1. CI once lost a worker that way ("address in use" at start).
pub fn closed_address() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process and differs per instance.
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        .to_le_bytes();
    let host = std::net::Ipv4Addr::new(127, 1 + bits[0] % 254, bits[1], 1 + bits[2] % 254);
    let listener = std::net::TcpListener::bind((host, 0)).expect("bind a free port");
    let address = listener.local_addr().expect("listener address").to_string();
    drop(listener);
    address
}

/// Flips the middle byte of the largest regular file below `dir` (a
/// worker's data directory): a stored byte corrupted on disk, for a reader's
/// checksum to catch.
pub fn corrupt_largest_file(dir: &std::path::Path) {
    let file = entries_under(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("the worker stores data in files");
    let mut bytes = std::fs::read(&file).expect("read the data file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write the corrupted data file");
    eprintln!(
        "flipped byte {middle} of {} ({} bytes)",
        file.display(),
        bytes.len()
    );
}

/// Every file and directory under `dir`, recursively, but the data
/// directory's marker (which a worker keeps for the life of the directory).
pub fn entries_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            if path.file_name().and_then(|n| n.to_str()) != Some(terrace_worker::MARKER) {
                out.push(path);
            }
        }
    }
    out
}

/// Stops process `pid` (SIGSTOP) and waits (at most 10 s) until the kernel
/// shows it stopped: `kill` returns once the signal is queued, and a busy
/// process may still run for a moment.
pub fn stop_process(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -STOP {pid}");
    let stopped = wait::poll_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // "pid (comm) STATE ...": the state follows the last ')'.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
            })
            .unwrap_or(false)
    });
    assert!(stopped, "process {pid} did not stop within 10 s of SIGSTOP");
}

/// A master agent polling for lost workers every 200 ms, with the job of
/// key byte `job` ([`key`]) registered and its losses recorded.
pub fn agent_with_job(
    config: &AgentConfig,
    job: u8,
) -> (
    terrace_master_agent::MasterAgent,
    terrace_tier_api::JobId,
    Arc<LostPartitions>,
) {
    use terrace_tier_api::TierMasterAgent;
    let agent = terrace_master_agent::MasterAgent::with_poll_interval(
        config.clone(),
        Duration::from_millis(200),
    )
    .expect("master agent");
    let job = key(job, 0).job;
    let lost = Arc::new(LostPartitions::default());
    agent
        .register_job(
            &job,
            std::sync::Arc::clone(&lost)
                as std::sync::Arc<dyn terrace_tier_api::TierShuffleHandler>,
        )
        .expect("register the job");
    (agent, job, lost)
}

/// An engine's shuffle handler that records the partitions it is told are
/// lost (`on_release_partitions`), in the order told.
#[derive(Debug, Default)]
pub struct LostPartitions(Mutex<Vec<PartitionId>>);

impl LostPartitions {
    /// Every partition reported so far.
    pub fn reported(&self) -> Vec<PartitionId> {
        self.0.lock().expect("lost partitions lock").clone()
    }
}

impl terrace_tier_api::TierShuffleHandler for LostPartitions {
    fn on_release_partitions(&self, partitions: Vec<PartitionId>) {
        self.0
            .lock()
            .expect("lost partitions lock")
            .extend(partitions);
    }
    fn on_fatal_error(&self, _error: TierError) {}
}
