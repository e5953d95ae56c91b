//! Unauthenticated connections get a handshake and nothing else, on a real
//! worker process that holds a cluster secret: a peer that proves nothing is
//! refused at authentication and closed, one that never answers the
//! challenge is closed at `server.handshake_timeout`, neither keeps a
//! connection slot past that, and a push sent before proving anything is
//! not read: the worker's memory budget never moves.

use std::io::Write;
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_proto::{Message, encode_frame, pb};
use terrace_rpc::clock;
use terrace_rpc::{
    AUTH_BYTES, Client, ClientOptions, ClusterSecret, Credential, ExpectedServer, ServerIdentity,
};
use terrace_tests::pki::TestPki;
use terrace_tests::raw::{Raw, create, push};
use terrace_tests::{ServiceProcess, closed_address, key, worker_stats_with};
use terrace_tier_api::{Buffer, ErrorKind, TierResult};

const WORKER_ID: &str = "w1";
const MAX_CONNECTIONS: usize = 8;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a slot may stay taken after this side closed its connection.
const SLOT_FREED: Duration = Duration::from_secs(2);
/// What a push announces: most of a frame (16 MiB by default).
const PUSH_BODY: usize = 15 * 1024 * 1024;

struct Worker {
    _dir: tempfile::TempDir,
    pki: TestPki,
    process: ServiceProcess,
}

impl Worker {
    /// A worker with a secret, `MAX_CONNECTIONS` and `HANDSHAKE_TIMEOUT`; no
    /// master answers it (it serves regardless).
    fn start() -> Worker {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::generate(dir.path());
        let config = dir.path().join("worker.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nworker_id = \"{WORKER_ID}\"\ndata_dirs = [\"{}\"]\nmaster_addresses = [\"{}\"]\n\n[server]\nmax_connections = {MAX_CONNECTIONS}\nhandshake_timeout = \"{}s\"\n\n{}",
                dir.path().join("data").display(),
                closed_address(),
                HANDSHAKE_TIMEOUT.as_secs(),
                pki.security_toml(false)
            ),
        )
        .expect("write worker config");
        let process =
            ServiceProcess::start(&["worker", "--config", config.to_str().expect("utf-8 path")]);
        Worker {
            _dir: dir,
            pki,
            process,
        }
    }

    fn secret(&self) -> ClusterSecret {
        ClusterSecret::load(&self.pki.secret_file).expect("load the test secret")
    }

    fn options(&self, credential: Credential) -> ClientOptions {
        ClientOptions {
            name: "anonymous-test".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            credential,
            server: ExpectedServer::Is(ServerIdentity::Worker(WORKER_ID.into())),
            ..ClientOptions::default()
        }
    }

    /// The worker's counters, asked with the cluster secret.
    fn stats(&self) -> terrace_tier_api::protocol::WorkerStatsReply {
        worker_stats_with(
            &self.process.address,
            &self.options(Credential::Cluster(self.secret())),
        )
    }

    /// A connection with the cluster secret, tried until `within` passes.
    fn connect_within(&self, within: Duration) -> TierResult<Client> {
        let options = self.options(Credential::Cluster(self.secret()));
        let mut last = None;
        terrace_tests::wait::poll_until(within, || {
            match terrace_rpc::io_runtime()
                .block_on(Client::connect(&self.process.address, &options))
            {
                Ok(client) => last = Some(Ok(client)),
                Err(e) => last = Some(Err(e)),
            }
            matches!(last, Some(Ok(_)))
        });
        last.expect("tried at least once")
    }

    /// A raw connection past the version handshake; checks the challenge.
    /// A refusal at `server.max_connections` is tried again for up to
    /// [`SLOT_FREED`]: a connection this side closed holds its slot until
    /// the worker has seen the close, which on a loaded machine takes a
    /// moment (this test once failed there).
    fn hello(&self) -> Raw {
        let (mut raw, mut refused) = (None, String::new());
        terrace_tests::wait::poll_until(SLOT_FREED, || {
            let mut attempt = Raw::connect_to(&self.process.address);
            attempt.send(
                &terrace_tests::raw::handshake(1, terrace_proto::PROTOCOL_VERSION),
                &[],
            );
            match attempt.read() {
                (Message::HandshakeOk(ok), _) => {
                    assert_eq!(ok.auth_challenge.len(), AUTH_BYTES, "the worker challenges");
                    assert_eq!(ok.server_identity, format!("worker {WORKER_ID}"));
                    raw = Some(attempt);
                    true
                }
                (Message::ErrorReply(e), _) if e.message.contains("server.max_connections") => {
                    refused = e.message;
                    false
                }
                (other, _) => panic!("expected HandshakeOk, got {other:?}"),
            }
        });
        raw.unwrap_or_else(|| panic!("no free connection slot within {SLOT_FREED:?}: {refused}"))
    }
}

/// An `Authenticate` that proves nothing.
fn no_proof(request_id: u64) -> Message {
    Message::Authenticate(pb::Authenticate {
        request_id,
        job_id: Bytes::new(),
        client_nonce: Bytes::from(vec![7u8; AUTH_BYTES]),
        proof: Bytes::new(),
    })
}

#[test]
fn anonymous_connections_are_closed_by_the_handshake_timeout_and_hold_no_slot() {
    let _logs = logs::capture();
    let worker = Worker::start();

    // As many connections as the limit, each answering the challenge with
    // no proof: each is refused there and closed. Before, each stayed open
    // (until `idle_timeout`, an hour) and filled the limit.
    let mut refused = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut raw = worker.hello();
        raw.send(&no_proof(2), &[]);
        raw.expect_error(2, pb::ErrorCode::PermissionDenied);
        raw.expect_eof();
        refused.push(raw);
    }
    // Still held open on this side; the worker lets go of them anyway.
    let client = worker
        .connect_within(Duration::from_secs(1))
        .expect("a client with the secret connects while the refused ones are still open here");
    client.close();
    drop(refused);

    // As many that say hello and never answer the challenge: they hold
    // every slot until the handshake timeout, then are closed.
    let started = clock::now();
    let mut silent: Vec<Raw> = (0..MAX_CONNECTIONS).map(|_| worker.hello()).collect();
    let all_open = clock::now();
    let options = worker.options(Credential::Cluster(worker.secret()));
    let err = terrace_rpc::io_runtime()
        .block_on(Client::connect(&worker.process.address, &options))
        .expect_err("every slot is taken by a connection still within its handshake time");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    // The text names the limit; the kind is checked above.
    assert!(err.message().contains("max_connections"), "{err}");
    for raw in &mut silent {
        raw.expect_eof();
    }
    // The first opened closes no sooner than the timeout after `started`;
    // the last opened no later than a second past it after `all_open`.
    let (closed_after, since_all_open) = (clock::elapsed(started), clock::elapsed(all_open));
    assert!(
        closed_after >= HANDSHAKE_TIMEOUT - Duration::from_millis(200)
            && since_all_open <= HANDSHAKE_TIMEOUT + Duration::from_secs(1),
        "silent connections closed {closed_after:?} after the first opened and \
         {since_all_open:?} after the last, want about {HANDSHAKE_TIMEOUT:?}"
    );
    let client = worker
        .connect_within(Duration::from_secs(1))
        .expect("a client with the secret connects once the silent ones are closed");
    client.close();
    drop(silent);

    let stats = worker.stats();
    assert_eq!(stats.memory_peak_bytes, 0);
    assert_eq!(stats.partitions, 0);
}

/// Writes a frame announcing `PUSH_BODY` bytes and the body, 64 KiB at a
/// time, until the worker stops taking them; returns the bytes written and
/// whether the write failed.
fn push_until_refused(raw: &mut Raw, before: &[u8]) -> (usize, bool) {
    let k = key(0x71, 1);
    let (header, _) = push(3, &k, &[Buffer::data(vec![1u8; 100])]);
    let mut frame = before.to_vec();
    frame.extend_from_slice(&encode_frame(&Message::PushData(header), PUSH_BODY));
    raw.stream
        .write_all(&frame)
        .expect("write the push's header");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut written = 0;
    while written < PUSH_BODY {
        match raw
            .stream
            .write(&chunk[..chunk.len().min(PUSH_BODY - written)])
        {
            Ok(0) | Err(_) => return (written, true),
            Ok(n) => written += n,
        }
    }
    (written, false)
}

#[test]
fn an_anonymous_push_is_not_read_and_takes_no_budget() {
    let _logs = logs::capture();
    let worker = Worker::start();

    // A push instead of the answer to the challenge: refused for its size
    // as an opening frame, and the connection closed under it.
    let mut raw = worker.hello();
    let (written, failed) = push_until_refused(&mut raw, &[]);
    assert!(
        failed && written < PUSH_BODY,
        "the worker took {written} of {PUSH_BODY} bytes of an unauthenticated push"
    );
    drop(raw);

    // A push right behind an answer with no proof: the answer is refused
    // and the push never read.
    let mut raw = worker.hello();
    let answer = encode_frame(&no_proof(2), 0);
    let (written, failed) = push_until_refused(&mut raw, &answer);
    assert!(
        failed && written < PUSH_BODY,
        "the worker took {written} of {PUSH_BODY} bytes of an unauthenticated push"
    );
    drop(raw);

    let stats = worker.stats();
    assert_eq!(stats.memory_peak_bytes, 0, "no budget was ever taken");
    assert_eq!(stats.load.memory_used_bytes, 0);
    assert_eq!(stats.bytes_pushed, 0);
    assert_eq!(stats.partitions, 0);

    // The same push with the job's token is read and charged: the counters
    // above could have moved.
    let k = key(0x71, 1);
    let token = worker.secret().job_token(k.job.as_bytes());
    let options = worker.options(Credential::Job {
        job: k.job.as_bytes().clone(),
        token,
    });
    let (header, body) = push(0, &k, &[Buffer::data(vec![1u8; 1 << 20])]);
    terrace_rpc::io_runtime().block_on(async {
        let client = Client::connect(&worker.process.address, &options)
            .await
            .expect("connect with the job's token");
        let (created, _) = client
            .request(|id| create(id, &k, 1))
            .await
            .expect("create");
        assert!(matches!(created, Message::Ack(_)));
        let pushed = client
            .start_request(
                |request_id| {
                    Message::PushData(pb::PushData {
                        request_id,
                        ..header.clone()
                    })
                },
                vec![Bytes::from(body.clone())],
            )
            .expect("send the push")
            .wait()
            .await
            .expect("push");
        assert!(matches!(pushed.0, Message::PushAck(_)), "{pushed:?}");
        client.close();
    });
    let stats = worker.stats();
    assert!(
        stats.memory_peak_bytes >= body.len() as u64,
        "an authenticated push takes budget: peak {} < {}",
        stats.memory_peak_bytes,
        body.len()
    );
    assert_eq!(stats.bytes_pushed, body.len() as u64);
}
