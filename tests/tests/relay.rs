//! Credentials go only where they belong, on real processes: a master and a
//! worker that hold a cluster secret (and, in the TLS tests, serve TLS).
//!
//! A holder of one job's token tells the worker that its partition goes on
//! at an address of its choosing (`SplitPartition.next_address`): a relay
//! that forwards to the real master. On the partition's release the worker
//! dials that address; it must not get the relay a connection to the master
//! that holds anything: the relay sees no successful authentication, and a
//! `RegisterJob` for another job on its connection to the master yields no
//! token. The release itself is still acknowledged. A relay that rewrites
//! the master's stated identity, and over TLS one that terminates TLS with a
//! certificate the cluster's CA signed, get a proof the master refuses.
//!
//! The master agent, asked for a partition's metrics, does not follow a
//! forward pointer to a worker the masters do not list at that address.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_master_agent::MasterAgent;
use terrace_proto::{FrameReader, Message, pb, write_frame};
use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions, Credential, ExpectedServer, ServerIdentity, TlsClient};
use terrace_tests::pki::TestPki;
use terrace_tests::raw::{create, pb_key, seal};
use terrace_tests::secure::SecureCluster;
use terrace_tests::{Ignore, key};
use terrace_tier_api::{AgentConfig, JobId, PartitionKey, TierMasterAgent, TierResult};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WORKER_ID: &str = "w1";
/// The id the attacker claims for the relay.
const FAKE_ID: &str = "w-relay";
/// Every wait of the relay and of the tests.
const WAIT: Duration = Duration::from_secs(10);

/// A master and worker `w1` holding a secret (and serving TLS when asked).
struct Cluster(SecureCluster);

impl std::ops::Deref for Cluster {
    type Target = SecureCluster;

    fn deref(&self) -> &SecureCluster {
        &self.0
    }
}

impl Cluster {
    /// Returns once the worker has registered.
    fn start(tls: bool) -> Cluster {
        Cluster(SecureCluster::start(tls, "", &[WORKER_ID], ""))
    }

    /// What a producer of `job` holds: the job's token, nothing else.
    fn job_credential(&self, job: &JobId) -> Credential {
        Credential::Job {
            job: job.as_bytes().clone(),
            token: self.secret().job_token(job.as_bytes()),
        }
    }

    fn options(&self, credential: Credential, server: ServerIdentity) -> ClientOptions {
        ClientOptions {
            name: "relay-test".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: WAIT,
            credential,
            server: ExpectedServer::Is(server),
            tls: self
                .tls
                .then(|| TlsClient::load(&self.pki.ca_file).expect("load the test CA")),
            ..ClientOptions::default()
        }
    }

    /// One request on a fresh connection.
    fn request(
        &self,
        address: &str,
        options: ClientOptions,
        build: impl FnOnce(u64) -> Message,
    ) -> TierResult<Message> {
        terrace_rpc::io_runtime().block_on(async {
            let client = Client::connect(address, &options).await?;
            let reply = client.request(build).await;
            client.close();
            reply.map(|(message, _)| message)
        })
    }

    /// Requests of a producer of `key`'s job to the worker, with the job's token.
    fn as_producer(&self, key: &PartitionKey, build: impl FnOnce(u64) -> Message) -> Message {
        let options = self.options(
            self.job_credential(&key.job),
            ServerIdentity::Worker(WORKER_ID.into()),
        );
        self.request(&self.workers[0].address, options, build)
            .unwrap_or_else(|e| panic!("a request of {key}'s producer failed: {e}"))
    }

    fn register_job(&self, job: &JobId) {
        let options = self.options(self.cluster_credential(), ServerIdentity::Master);
        let reply = self.request(&self.master.address, options, |request_id| {
            Message::RegisterJob(pb::RegisterJob {
                request_id,
                job_id: job.as_bytes().clone(),
            })
        });
        assert!(
            matches!(reply, Ok(Message::JobRegistered(_))),
            "register {job}: {reply:?}"
        );
    }
}

/// What a relay does with the worker's connection.
#[derive(Clone)]
enum Mode {
    /// Forwards frames as they are (parsing them only to see them).
    Forward,
    /// Tells the worker the master is the worker the forward pointer named.
    RewriteIdentity(String),
}

/// What a relay saw.
#[derive(Debug, Default)]
struct RelayLog {
    connections: usize,
    /// Frames the dialling client sent, by type.
    from_client: Vec<String>,
    /// Frames the master sent, by type.
    from_master: Vec<String>,
    /// The job id of the client's `Authenticate`, if it sent one.
    proved_job: Option<Bytes>,
    /// The master's answer to the relay's own `RegisterJob`, by type
    /// ("closed" when the connection was gone).
    register_job: Option<String>,
    done: bool,
}

/// Where the relay's listener should take TLS off and put it back on.
struct RelayTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl RelayTls {
    /// A relay serving the cluster's own certificate (one the CA signed for
    /// 127.0.0.1, as a stolen or misissued one would be) and trusting the CA.
    fn from(pki: &TestPki) -> RelayTls {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_file_iter(&pki.cert_file)
            .expect("read certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse certificate");
        let key = PrivateKeyDer::from_pem_file(&pki.key_file).expect("read key");
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&pki.ca_file).expect("read CA") {
            roots.add(cert.expect("parse CA")).expect("add CA");
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        RelayTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        }
    }
}

/// Starts a relay to `target` on a port of its own; returns its address and
/// what it sees.
fn start_relay(
    target: String,
    mode: Mode,
    tls: Option<RelayTls>,
) -> (String, Arc<Mutex<RelayLog>>) {
    let log = Arc::new(Mutex::new(RelayLog::default()));
    let listener = terrace_rpc::io_runtime()
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind the relay");
    let address = listener.local_addr().expect("relay address").to_string();
    let seen = Arc::clone(&log);
    terrace_rpc::io_runtime().spawn(async move {
        let tls = tls.map(Arc::new);
        while let Ok((client, _)) = listener.accept().await {
            seen.lock().expect("log lock").connections += 1;
            let (target, mode, seen, tls) =
                (target.clone(), mode.clone(), Arc::clone(&seen), tls.clone());
            tokio::spawn(async move {
                let master = TcpStream::connect(&target).await.expect("relay connects");
                match tls {
                    None => relay(client, master, mode, &seen).await,
                    Some(tls) => {
                        let client = tls.acceptor.accept(client).await.expect("relay TLS accept");
                        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
                            .expect("server name");
                        let master = tls
                            .connector
                            .connect(name, master)
                            .await
                            .expect("relay TLS connect");
                        relay(client, master, mode, &seen).await
                    }
                }
                seen.lock().expect("log lock").done = true;
            });
        }
    });
    (address, log)
}

/// Relays one connection's opening, frame by frame, then asks the master
/// for another job's token on the connection it holds.
async fn relay<C, M>(client: C, master: M, mode: Mode, log: &Mutex<RelayLog>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, mut client_write) = tokio::io::split(client);
    let (master_read, mut master_write) = tokio::io::split(master);
    let mut from_client = FrameReader::new(client_read, 1 << 20);
    let mut from_master = FrameReader::new(master_read, 1 << 20);
    let note = |side: &str, message: &Message| {
        let mut log = log.lock().expect("log lock");
        let kind = format!("{:?}", message.message_type());
        match side {
            "client" => log.from_client.push(kind),
            _ => log.from_master.push(kind),
        }
    };
    // The client's handshake, to the master.
    let Ok(Ok(Some((handshake, _)))) = clock::timeout(WAIT, from_client.read_frame()).await else {
        return;
    };
    note("client", &handshake);
    if write_frame(&mut master_write, &handshake, &[])
        .await
        .is_err()
        || master_write.flush().await.is_err()
    {
        return;
    }
    // The master's challenge, to the client (rewritten if asked to).
    let Ok(Ok(Some((challenge, _)))) = clock::timeout(WAIT, from_master.read_frame()).await else {
        return;
    };
    note("master", &challenge);
    let challenge = match (challenge, &mode) {
        (Message::HandshakeOk(mut ok), Mode::RewriteIdentity(identity)) => {
            ok.server_identity = identity.clone();
            Message::HandshakeOk(ok)
        }
        (other, _) => other,
    };
    if write_frame(&mut client_write, &challenge, &[])
        .await
        .is_ok()
    {
        let _ = client_write.flush().await;
    }
    // The client's answer, if it gives one, to the master, and the master's
    // verdict back.
    if let Ok(Ok(Some((answer, _)))) = clock::timeout(WAIT, from_client.read_frame()).await {
        note("client", &answer);
        if let Message::Authenticate(a) = &answer {
            log.lock().expect("log lock").proved_job = Some(a.job_id.clone());
        }
        if write_frame(&mut master_write, &answer, &[]).await.is_ok()
            && master_write.flush().await.is_ok()
        {
            if let Ok(Ok(Some((verdict, _)))) = clock::timeout(WAIT, from_master.read_frame()).await
            {
                note("master", &verdict);
                let _ = write_frame(&mut client_write, &verdict, &[]).await;
                let _ = client_write.flush().await;
            }
        }
    }
    // The attack: another job's token, on the connection the relay holds.
    let register = Message::RegisterJob(pb::RegisterJob {
        request_id: 99,
        job_id: Bytes::from_static(b"victim job"),
    });
    let sent = write_frame(&mut master_write, &register, &[]).await.is_ok()
        && master_write.flush().await.is_ok();
    let reply = if sent {
        match clock::timeout(WAIT, from_master.read_frame()).await {
            Ok(Ok(Some((reply, _)))) => format!("{:?}", reply.message_type()),
            Ok(Ok(None)) | Ok(Err(_)) => "closed".to_string(),
            Err(_) => "no reply".to_string(),
        }
    } else {
        "closed".to_string()
    };
    log.lock().expect("log lock").register_job = Some(reply);
}

/// Creates `key` on the worker as its producer would, points its forward
/// pointer at `next_address` (said to be worker `next_id`), and releases it.
fn split_to_and_release(cluster: &Cluster, key: &PartitionKey, next_id: &str, next_address: &str) {
    assert!(matches!(
        cluster.as_producer(key, |id| create(id, key, 1)),
        Message::Ack(_)
    ));
    let split = cluster.as_producer(key, |request_id| {
        Message::SplitPartition(pb::SplitPartition {
            request_id,
            key: pb_key(key),
            next_worker_id: next_id.into(),
            next_address: next_address.into(),
        })
    });
    assert!(matches!(split, Message::Ack(_)), "split: {split:?}");
    let released = cluster.as_producer(key, |request_id| {
        Message::ReleasePartition(pb::ReleasePartition {
            request_id,
            key: pb_key(key),
        })
    });
    assert!(
        matches!(released, Message::Ack(_)),
        "the release is acknowledged: {released:?}"
    );
}

/// Waits until the relay has handled one connection; returns what it saw.
fn relayed(log: &Mutex<RelayLog>) -> RelayLog {
    terrace_tests::wait_for(
        2 * WAIT + Duration::from_secs(5),
        "the worker dials the relay and the relay finishes",
        || {
            let mut log = log.lock().expect("log lock");
            log.done.then(|| std::mem::take(&mut *log))
        },
    )
    .0
}

/// The checks every relay case ends with: the relay got nothing.
fn assert_relay_got_nothing(seen: &RelayLog, what: &str) {
    assert_eq!(
        seen.connections, 1,
        "{what}: the worker dialled the relay once"
    );
    assert!(
        !seen.from_master.iter().any(|m| m == "Authenticated"),
        "{what}: the master authenticated a connection through the relay: {seen:?}"
    );
    let register = seen.register_job.as_deref();
    assert!(
        matches!(register, Some("ErrorReply") | Some("closed")),
        "{what}: RegisterJob for another job through the relay got {register:?}: {seen:?}"
    );
}

fn check_relays(tls: bool) {
    let cluster = Cluster::start(tls);
    let relay_tls = || tls.then(|| RelayTls::from(&cluster.pki));

    // 1. A relay that forwards the master's challenge as it is: the master
    // says it is "master", the worker meant a worker, and answers nothing.
    let k = key(0x51, 1);
    cluster.register_job(&k.job);
    let (relay, log) = start_relay(cluster.master.address.clone(), Mode::Forward, relay_tls());
    split_to_and_release(&cluster, &k, FAKE_ID, &relay);
    let seen = relayed(&log);
    assert_relay_got_nothing(&seen, "forwarding relay");
    assert_eq!(
        seen.from_client,
        vec!["Handshake".to_string()],
        "the worker does not answer a server that is not the worker it meant: {seen:?}"
    );
    assert_eq!(seen.from_master[0], "HandshakeOk");

    // 2. A relay that tells the worker the master is the worker the pointer
    // named: the worker answers with the job's token (never the cluster
    // secret), and the master refuses a proof made for another server (and,
    // over TLS, for another TLS session).
    let k = key(0x52, 1);
    cluster.register_job(&k.job);
    let (relay, log) = start_relay(
        cluster.master.address.clone(),
        Mode::RewriteIdentity(format!("worker {FAKE_ID}")),
        relay_tls(),
    );
    split_to_and_release(&cluster, &k, FAKE_ID, &relay);
    let seen = relayed(&log);
    assert_relay_got_nothing(&seen, "rewriting relay");
    assert_eq!(
        seen.from_client,
        vec!["Handshake".to_string(), "Authenticate".to_string()],
        "{seen:?}"
    );
    assert_eq!(
        seen.proved_job.as_deref(),
        Some(&k.job.as_bytes()[..]),
        "the worker proves only the job's token to an address a producer gave"
    );
    assert_eq!(
        seen.from_master,
        vec!["HandshakeOk".to_string(), "ErrorReply".to_string()],
        "the master refuses the relayed proof: {seen:?}"
    );

    // The worker still serves its own job after all that.
    let k = key(0x53, 1);
    assert!(matches!(
        cluster.as_producer(&k, |id| create(id, &k, 1)),
        Message::Ack(_)
    ));
    assert!(matches!(
        cluster.as_producer(&k, |id| seal(id, &k)),
        Message::Ack(_)
    ));
}

#[test]
fn a_forward_pointer_to_a_relay_gets_the_relay_nothing() {
    let _logs = logs::capture();
    check_relays(false);
}

#[test]
fn over_tls_a_forward_pointer_to_a_relay_gets_the_relay_nothing() {
    let _logs = logs::capture();
    check_relays(true);
}

/// The master agent follows a partition's chain of parts with the cluster
/// secret: only to workers the masters list, at the address they list.
#[test]
fn partition_metrics_do_not_follow_a_pointer_to_an_unknown_address() {
    let _logs = logs::capture();
    let cluster = Cluster::start(false);
    let agent = MasterAgent::new(AgentConfig {
        master_addresses: vec![cluster.master.address.clone()],
        secret_file: Some(cluster.pki.secret_file.clone()),
        ..terrace_tests::small_agent_config()
    })
    .expect("master agent");
    let sealed = key(0x61, 1);
    let job = sealed.job.clone();
    agent
        .register_job(&job, Arc::new(Ignore))
        .expect("register the job");
    let (relay, log) = start_relay(cluster.master.address.clone(), Mode::Forward, None);
    // Partition 1 is sealed here; 2 and 3 say they go on at the relay, as
    // the worker the masters know (by its id) and as one they do not.
    let parts: Vec<PartitionKey> = (1..=3).map(|p| key(0x61, p)).collect();
    for (k, next_id) in parts.iter().zip([None, Some(WORKER_ID), Some(FAKE_ID)]) {
        let descriptor = agent
            .add_partition_and_get_shuffle_descriptor(&job, &k.partition, 1)
            .expect("place the partition");
        assert_eq!(descriptor.worker_id, WORKER_ID);
        assert!(matches!(
            cluster.as_producer(k, |id| create(id, k, 1)),
            Message::Ack(_)
        ));
        let done = match next_id {
            None => cluster.as_producer(k, |id| seal(id, k)),
            Some(next_id) => cluster.as_producer(k, |request_id| {
                Message::SplitPartition(pb::SplitPartition {
                    request_id,
                    key: pb_key(k),
                    next_worker_id: next_id.into(),
                    next_address: relay.clone(),
                })
            }),
        };
        assert!(matches!(done, Message::Ack(_)), "{k}: {done:?}");
    }
    let partitions: Vec<_> = parts.iter().map(|k| k.partition.clone()).collect();
    let metrics = agent
        .partition_metrics(&job, &partitions, WAIT)
        .expect("partition metrics");
    assert_eq!(
        metrics.keys().cloned().collect::<Vec<_>>(),
        vec![parts[0].partition.clone()],
        "only the sealed partition is finished; the others are not followed"
    );
    assert_eq!(metrics[&parts[0].partition], vec![0]);
    assert_eq!(
        log.lock().expect("log lock").connections,
        0,
        "the agent never dialled the relay"
    );
    agent.close();
}
