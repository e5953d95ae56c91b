//! Authentication and TLS on real processes: a master and a worker that hold
//! a cluster secret (and, in the TLS test, serve TLS). A master agent gets
//! each job's token from the master; producers and consumers present it.
//! A connection without a proof is refused at authentication, before any
//! request; every request kind is refused with another job's token; data
//! written under one job's token stays whole and unreadable to another's.

use std::sync::Arc;
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_master_agent::MasterAgent;
use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions, ClusterSecret, Credential, JobToken, TlsClient};
use terrace_tests::pki::TestPki;
use terrace_tests::secure::SecureCluster;
use terrace_tests::{ServiceProcess, assert_buffers_eq, read_partition, write_partition};
use terrace_tier_api::{
    AgentConfig, ErrorKind, PartitionKey, ShuffleDescriptor, TierMasterAgent, TierResult,
};

/// A master and a worker holding a secret (and serving TLS when asked).
struct Cluster(SecureCluster);

impl std::ops::Deref for Cluster {
    type Target = SecureCluster;

    fn deref(&self) -> &SecureCluster {
        &self.0
    }
}

impl Cluster {
    /// Returns once the worker has registered, which it can only do by
    /// proving the secret.
    fn start(tls: bool) -> Cluster {
        Cluster(SecureCluster::start(tls, "", &[""], ""))
    }

    fn options(&self, credential: Credential) -> ClientOptions {
        ClientOptions {
            name: "auth-test".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            credential,
            tls: self
                .tls
                .then(|| TlsClient::load(&self.pki.ca_file).expect("load the test CA")),
            ..ClientOptions::default()
        }
    }

    fn connect(&self, address: &str, credential: Credential) -> TierResult<Client> {
        terrace_rpc::io_runtime().block_on(Client::connect(address, &self.options(credential)))
    }

    /// One request on a fresh connection presenting `credential`.
    fn request(
        &self,
        address: &str,
        credential: Credential,
        build: impl FnOnce(u64) -> Message,
    ) -> TierResult<Message> {
        let client = self.connect(address, credential)?;
        let reply = terrace_rpc::io_runtime().block_on(client.request(build));
        client.close();
        reply.map(|(message, _)| message)
    }

    /// What a master agent runs with: the secret, and the CA under TLS.
    fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            master_addresses: vec![self.master.address.clone()],
            secret_file: Some(self.pki.secret_file.clone()),
            tls_ca_file: self.tls.then(|| self.pki.ca_file.clone()),
            ..terrace_tests::small_agent_config()
        }
    }

    /// Producers and consumers: no secret, only the token in the descriptor.
    fn task_config(&self) -> AgentConfig {
        AgentConfig {
            secret_file: None,
            ..self.agent_config()
        }
    }
}

fn job_credential(descriptor: &ShuffleDescriptor) -> Credential {
    let key = descriptor.key().expect("descriptor key");
    Credential::Job {
        job: key.job.as_bytes().clone(),
        token: JobToken::from_hex(&descriptor.token).expect("descriptor token"),
    }
}

fn key_of(descriptor: &ShuffleDescriptor) -> Option<pb::PartitionKey> {
    Some(pb::PartitionKey::from(
        &descriptor.key().expect("descriptor key"),
    ))
}

/// One request of each kind a worker serves on a job's data, for `descriptor`'s partition.
fn worker_requests(descriptor: &ShuffleDescriptor) -> Vec<(&'static str, Message)> {
    let key = key_of(descriptor);
    let job_id = descriptor.key().expect("key").job.as_bytes().clone();
    vec![
        (
            "create",
            Message::CreatePartition(pb::CreatePartition {
                request_id: 0,
                key: key.clone(),
                num_subpartitions: 1,
                broadcast_only: false,
                continuation: false,
                ..Default::default()
            }),
        ),
        (
            "push",
            Message::PushData(pb::PushData {
                request_id: 0,
                key: key.clone(),
                crc32c: 0,
                num_buffers: 0,
            }),
        ),
        (
            "read",
            Message::OpenStream(pb::OpenStream {
                request_id: 0,
                stream_id: 1,
                key: key.clone(),
                first_subpartition: 0,
                last_subpartition: 0,
                initial_credit: 1,
            }),
        ),
        (
            "release",
            Message::ReleasePartition(pb::ReleasePartition {
                request_id: 0,
                key: key.clone(),
            }),
        ),
        (
            "drop job",
            Message::DropJob(pb::DropJob {
                request_id: 0,
                job_id,
            }),
        ),
    ]
}

fn with_request_id(mut message: Message, id: u64) -> Message {
    match &mut message {
        Message::CreatePartition(m) => m.request_id = id,
        Message::PushData(m) => m.request_id = id,
        Message::OpenStream(m) => m.request_id = id,
        Message::ReleasePartition(m) => m.request_id = id,
        Message::DropJob(m) => m.request_id = id,
        Message::RegisterWorker(m) => m.request_id = id,
        Message::ListWorkers(m) => m.request_id = id,
        Message::RegisterJob(m) => m.request_id = id,
        Message::WorkerStats(m) => m.request_id = id,
        Message::Decommission(m) => m.request_id = id,
        Message::AdoptPartition(m) => m.request_id = id,
        Message::MoveForward(m) => m.request_id = id,
        other => panic!("no request id to set on {other:?}"),
    }
    message
}

fn assert_denied(result: TierResult<Message>, what: &str, needle: &str) {
    match result {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            // The text names what the request needed.
            assert!(
                e.message().contains(needle),
                "{what}: error {e} should mention {needle:?}"
            );
        }
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

fn master_requests() -> Vec<(&'static str, Message)> {
    vec![
        (
            "register worker",
            Message::RegisterWorker(pb::RegisterWorker {
                request_id: 0,
                worker_id: "impostor".into(),
                data_address: "127.0.0.1:1".into(),
            }),
        ),
        (
            "list workers",
            Message::ListWorkers(pb::ListWorkers { request_id: 0 }),
        ),
        (
            "register job",
            Message::RegisterJob(pb::RegisterJob {
                request_id: 0,
                job_id: Bytes::from_static(b"intruder"),
            }),
        ),
    ]
}

/// Places one partition of `job` and writes it through a producer that has
/// only the descriptor's token; returns the descriptor and what it holds.
fn placed_and_written(
    cluster: &Cluster,
    agent: &MasterAgent,
    job: u8,
) -> (
    ShuffleDescriptor,
    std::collections::HashMap<u32, Vec<terrace_tier_api::Buffer>>,
) {
    let key: PartitionKey = terrace_tests::key(job, 1);
    agent
        .register_job(&key.job, Arc::new(terrace_tests::Ignore))
        .expect("register the job");
    let descriptor = agent
        .add_partition_and_get_shuffle_descriptor(&key.job, &key.partition, 2)
        .expect("place the partition");
    assert_eq!(
        descriptor.token,
        cluster.secret().job_token(key.job.as_bytes()).to_hex(),
        "the master issues the job's HMAC token"
    );
    let written = write_partition(&cluster.task_config(), descriptor.clone(), 1, 2, 20, 3000);
    (descriptor, written)
}

fn read_back(cluster: &Cluster, descriptor: &ShuffleDescriptor, written: &WrittenBuffers) {
    let read = read_partition(
        &cluster.task_config(),
        descriptor.clone(),
        2,
        Duration::from_secs(20),
    )
    .expect("read the partition back with its token");
    for sub in 0..2 {
        assert_buffers_eq(&read[&sub], &written[&sub], &format!("subpartition {sub}"));
    }
}

type WrittenBuffers = std::collections::HashMap<u32, Vec<terrace_tier_api::Buffer>>;

/// The checks both tests run: a job's data moves with its token only, and
/// every request kind is refused without a proof or with another job's token.
fn check_isolation(cluster: &Cluster) {
    let agent = MasterAgent::new(cluster.agent_config()).expect("master agent");
    let (a, written_a) = placed_and_written(cluster, &agent, 0xa);
    let (b, written_b) = placed_and_written(cluster, &agent, 0xb);
    read_back(cluster, &a, &written_a);
    let worker = cluster.workers[0].address.as_str();
    let master = cluster.master.address.as_str();

    // No proof at all: refused at connect (the authentication), before any
    // request of any kind, on the master and the worker.
    for (what, message) in master_requests() {
        let result = cluster.request(master, Credential::None, |id| with_request_id(message, id));
        assert_denied(result, &format!("unauthenticated {what}"), "cluster secret");
    }
    for (what, message) in worker_requests(&a) {
        let result = cluster.request(worker, Credential::None, |id| with_request_id(message, id));
        assert_denied(
            result,
            &format!("unauthenticated {what}"),
            "did not authenticate",
        );
    }
    let stats = cluster.request(worker, Credential::None, |request_id| {
        Message::WorkerStats(pb::WorkerStats { request_id })
    });
    assert_denied(stats, "unauthenticated worker stats", "cluster secret");
    // Decommissioning, and handing a partition over or moving a forward
    // pointer (what a decommissioning worker asks of others), take the
    // cluster secret; a job's token is not enough, even for its own partition.
    let key = Some(pb::PartitionKey::from(&a.key().expect("key")));
    let admin: [(&str, Message); 3] = [
        (
            "decommission",
            Message::Decommission(pb::Decommission { request_id: 0 }),
        ),
        (
            "adopt partition",
            Message::AdoptPartition(pb::AdoptPartition {
                key: key.clone(),
                from_worker_id: "w9".into(),
                ..Default::default()
            }),
        ),
        (
            "move forward",
            Message::MoveForward(pb::MoveForward {
                key,
                from_worker_id: "w9".into(),
                to_worker_id: "w8".into(),
                to_address: "127.0.0.1:1".into(),
                ..Default::default()
            }),
        ),
    ];
    for (what, message) in &admin {
        for credential in [Credential::None, job_credential(&a)] {
            let result = cluster.request(worker, credential, |id| {
                with_request_id(message.clone(), id)
            });
            assert_denied(
                result,
                &format!("{what} without the secret"),
                "cluster secret",
            );
        }
    }

    // Job B's token: nothing of job A's, and nothing of the cluster's.
    for (what, message) in worker_requests(&a) {
        let result = cluster.request(worker, job_credential(&b), |id| {
            with_request_id(message, id)
        });
        assert_denied(
            result,
            &format!("{what} with job B's token"),
            "another job's token",
        );
    }
    for (what, message) in master_requests() {
        let result = cluster.request(master, job_credential(&b), |id| {
            with_request_id(message, id)
        });
        assert_denied(result, &format!("{what} with a job token"), "job's token");
    }
    // Job A's token cannot read job B's data, through the consumer agent either.
    let stolen = ShuffleDescriptor {
        token: a.token.clone(),
        ..b.clone()
    };
    let err = read_partition(&cluster.task_config(), stolen, 2, Duration::from_secs(10))
        .expect_err("job A's token does not open job B's data");
    assert_eq!(
        err.kind(),
        ErrorKind::PermissionDenied,
        "reading B with A's token: {err}"
    );

    // A wrong secret fails at connect, on both services, and names the cause.
    let wrong = ClusterSecret::from_bytes(b"not the secret of this cluster").expect("long enough");
    for address in [master, worker] {
        let err = cluster
            .connect(address, Credential::Cluster(wrong.clone()))
            .expect_err("a wrong secret is refused");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        // A wrong proof, not a missing one: the text names the cause.
        assert!(err.message().contains("authentication failed"), "{err}");
    }

    // After all that, both jobs' data is whole.
    read_back(cluster, &a, &written_a);
    read_back(cluster, &b, &written_b);
    // The owners release them with their own tokens.
    for d in [&a, &b] {
        let released = cluster.request(worker, job_credential(d), |request_id| {
            Message::ReleasePartition(pb::ReleasePartition {
                request_id,
                key: key_of(d),
            })
        });
        assert!(
            matches!(released, Ok(Message::Ack(_))),
            "release with the job's own token: {released:?}"
        );
    }
    agent.close();
}

#[test]
fn with_a_secret_each_request_kind_needs_the_cluster_secret_or_its_jobs_token() {
    let _logs = logs::capture();
    let cluster = Cluster::start(false);
    check_isolation(&cluster);
    // A client that holds the secret refuses a server that does not.
    let open_master = ServiceProcess::start(&["master", "--listen", "127.0.0.1:0"]);
    let err = cluster
        .connect(&open_master.address, cluster.cluster_credential())
        .expect_err("a client with a secret refuses a server without one");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // The text tells the operator the fix (the same secret everywhere).
    assert!(err.message().contains("no cluster secret"), "{err}");
}

#[test]
fn over_tls_the_same_round_trip_works_and_a_plaintext_client_gets_a_clear_error() {
    let _logs = logs::capture();
    let cluster = Cluster::start(true);
    check_isolation(&cluster);
    for address in [&cluster.master.address, &cluster.workers[0].address] {
        // A plaintext client is told, in its own protocol, what is wrong.
        let plaintext = ClientOptions {
            name: "plaintext".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            credential: cluster.cluster_credential(),
            ..ClientOptions::default()
        };
        let err = terrace_rpc::io_runtime()
            .block_on(Client::connect(address, &plaintext))
            .expect_err("plaintext to a TLS server fails");
        // A clear error is the point: the text tells the client to use TLS.
        assert!(
            err.message().contains("accepts only TLS connections"),
            "plaintext client to {address}: {err}"
        );
        // A TLS client that does not trust the server's CA fails the TLS handshake.
        let other_dir = tempfile::tempdir().expect("temp dir");
        let other = TestPki::generate(other_dir.path());
        let untrusting = ClientOptions {
            tls: Some(TlsClient::load(&other.ca_file).expect("other CA")),
            ..plaintext
        };
        let err = terrace_rpc::io_runtime()
            .block_on(Client::connect(address, &untrusting))
            .expect_err("an untrusted certificate fails");
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        // Unavailable has several causes; the source says it is the TLS handshake.
        assert!(
            matches!(
                std::error::Error::source(&err)
                    .and_then(|s| s.downcast_ref::<terrace_rpc::ConnectError>()),
                Some(terrace_rpc::ConnectError::Tls { .. })
            ),
            "{err}"
        );
    }
    // The operator's view works over TLS with the secret.
    let status = std::process::Command::new(terrace_tests::terrace_bin())
        .args(["status", "--json", "--master", &cluster.master.address])
        .arg("--secret-file")
        .arg(&cluster.pki.secret_file)
        .arg("--tls-ca-file")
        .arg(&cluster.pki.ca_file)
        .output()
        .expect("run terrace status");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "terrace status over TLS: {stdout} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        stdout.contains(&cluster.workers[0].address) && stdout.contains("\"bytes_pushed\""),
        "status lists the worker with its own counters: {stdout}"
    );
}
