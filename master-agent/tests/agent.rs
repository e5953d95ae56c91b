//! The master agent against a real master (in process, over TCP) and fake
//! workers: small servers that heartbeat to the master, ack `ReleasePartition`
//! and `DropJob`, and record what they were asked.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use terrace_master::MasterConfig;
use terrace_master_agent::MasterAgent;
use terrace_proto::{FrameReader, Message, pb};
use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions, accept_handshake, spawn_writer};
use terrace_tier_api::protocol::{ListWorkers, RegisterWorker, WorkerHeartbeat, WorkerLoad};
use terrace_tier_api::{
    AgentConfig, ErrorKind, JobId, PartitionId, ShuffleDescriptor, TierError, TierMasterAgent,
    TierShuffleHandler, WorkerId,
};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const HEARTBEAT: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(5);

/// A master and workers on their own runtime, as if in other processes.
struct Cluster {
    rt: Runtime,
    master_addr: String,
    shutdown: CancellationToken,
}

impl Cluster {
    fn start(worker_timeout: Duration) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test runtime");
        let shutdown = CancellationToken::new();
        let master_addr = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind master");
            let addr = listener.local_addr().expect("master address").to_string();
            let config = MasterConfig {
                worker_timeout,
                ..MasterConfig::default()
            };
            tokio::spawn(terrace_master::run(config, listener, shutdown.clone()));
            addr
        });
        Cluster {
            rt,
            master_addr,
            shutdown,
        }
    }

    fn agent(&self, poll_interval: Duration) -> MasterAgent {
        let config = AgentConfig {
            master_addresses: vec![self.master_addr.clone()],
            ..AgentConfig::default()
        };
        MasterAgent::with_poll_interval(config, poll_interval).expect("agent")
    }

    /// Waits until the master lists exactly `ids`.
    fn wait_for_workers(&self, ids: &[&str]) {
        let addr = self.master_addr.clone();
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.rt.block_on(async move {
            let client = Client::connect(&addr, &ClientOptions::default())
                .await
                .expect("connect");
            let deadline = clock::now() + WAIT;
            loop {
                let list = client.call(ListWorkers).await.expect("list workers");
                let got: Vec<String> = list
                    .workers
                    .into_iter()
                    .map(|w| w.worker.id.into_string())
                    .collect();
                if got == want {
                    return;
                }
                assert!(
                    clock::now() < deadline,
                    "workers {got:?}, expected {want:?}"
                );
                clock::sleep(Duration::from_millis(20)).await;
            }
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a fake worker was asked to do.
#[derive(Default)]
struct Requests {
    /// (job, partition) of each ReleasePartition.
    released: Vec<(Bytes, Bytes)>,
    dropped: Vec<Bytes>,
}

struct FakeWorker {
    id: String,
    address: String,
    requests: Arc<Mutex<Requests>>,
    heartbeats: CancellationToken,
    serving: CancellationToken,
}

impl FakeWorker {
    fn start(cluster: &Cluster, id: &str) -> FakeWorker {
        let requests = Arc::new(Mutex::new(Requests::default()));
        let (heartbeats, serving) = (CancellationToken::new(), CancellationToken::new());
        let address = cluster.rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind worker");
            let address = listener.local_addr().expect("worker address").to_string();
            tokio::spawn(serve(listener, requests.clone(), serving.clone()));
            tokio::spawn(heartbeat(
                cluster.master_addr.clone(),
                id.to_string(),
                address.clone(),
                heartbeats.clone(),
            ));
            address
        });
        FakeWorker {
            id: id.to_string(),
            address,
            requests,
            heartbeats,
            serving,
        }
    }

    fn released(&self) -> Vec<(Bytes, Bytes)> {
        self.requests
            .lock()
            .expect("requests lock")
            .released
            .clone()
    }

    fn dropped(&self) -> Vec<Bytes> {
        self.requests.lock().expect("requests lock").dropped.clone()
    }
}

async fn heartbeat(master: String, id: String, address: String, stop: CancellationToken) {
    let client = Client::connect(&master, &ClientOptions::default())
        .await
        .expect("worker connects to the master");
    let worker = WorkerId::new(id).expect("worker id");
    client
        .call(RegisterWorker {
            worker: worker.clone(),
            data_address: address.clone(),
        })
        .await
        .expect("register worker");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clock::sleep(HEARTBEAT) => {}
        }
        let sent = client
            .call(WorkerHeartbeat {
                worker: worker.clone(),
                data_address: address.clone(),
                load: WorkerLoad::default(),
                jobs: Vec::new(),
                relocated: Vec::new(),
                parts: Vec::new(),
                adopted: Vec::new(),
            })
            .await;
        if sent.is_err() {
            return; // the master shut down
        }
    }
}

async fn serve(listener: TcpListener, requests: Arc<Mutex<Requests>>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let (requests, stop) = (requests.clone(), stop.clone());
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            let sender = spawn_writer(write, CancellationToken::new());
            let mut reader = FrameReader::new(read, 1 << 20);
            if accept_handshake(&mut reader, &sender, "fake worker", "worker fake", &[])
                .await
                .is_err()
            {
                return;
            }
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => return,
                    frame = reader.read_frame() => frame,
                };
                let Ok(Some((message, _))) = frame else {
                    return;
                };
                let reply = match message {
                    Message::ReleasePartition(r) => {
                        let key = r.key.expect("release carries a key");
                        let mut requests = requests.lock().expect("requests lock");
                        let pair = (key.job_id, key.partition_id);
                        let known = !requests.released.contains(&pair);
                        requests.released.push(pair);
                        if known {
                            Message::ack(r.request_id)
                        } else {
                            Message::error(
                                r.request_id,
                                pb::ErrorCode::PartitionNotFound,
                                "no such partition",
                            )
                        }
                    }
                    Message::DropJob(d) => {
                        requests
                            .lock()
                            .expect("requests lock")
                            .dropped
                            .push(d.job_id);
                        Message::ack(d.request_id)
                    }
                    other => {
                        Message::error(other.request_id(), pb::ErrorCode::BadRequest, "unexpected")
                    }
                };
                sender.send(reply, Bytes::new());
            }
        });
    }
}

/// Records `on_release_partitions` calls.
struct Handler {
    calls: Mutex<Sender<Vec<PartitionId>>>,
}

impl Handler {
    fn new() -> (Arc<Handler>, Receiver<Vec<PartitionId>>) {
        let (tx, rx) = mpsc::channel();
        (
            Arc::new(Handler {
                calls: Mutex::new(tx),
            }),
            rx,
        )
    }
}

impl TierShuffleHandler for Handler {
    fn on_release_partitions(&self, partitions: Vec<PartitionId>) {
        let _ = self.calls.lock().expect("handler lock").send(partitions);
    }

    fn on_fatal_error(&self, error: TierError) {
        panic!("unexpected fatal error: {error}");
    }
}

fn job(name: &str) -> JobId {
    JobId::new(name.as_bytes().to_vec()).expect("valid job id")
}

fn pid(n: u8) -> PartitionId {
    PartitionId::new(vec![0xa0, n]).expect("valid partition id")
}

#[test]
fn descriptors_releases_and_unregister_reach_the_right_workers() {
    let cluster = Cluster::start(Duration::from_secs(10));
    let workers: Vec<FakeWorker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| FakeWorker::start(&cluster, id))
        .collect();
    cluster.wait_for_workers(&["w1", "w2", "w3"]);
    let agent = cluster.agent(Duration::from_millis(20));
    let (handler, calls) = Handler::new();
    let j = job("job-1");

    let err = agent
        .add_partition_and_get_shuffle_descriptor(&j, &pid(0), 4)
        .expect_err("job not registered yet");
    assert_eq!(
        (err.kind(), err.message()),
        (ErrorKind::BadInput, "job 6a6f622d31 is not registered")
    );

    agent
        .register_job(&j, handler.clone())
        .expect("register job");
    let descriptors: Vec<ShuffleDescriptor> = (0..3)
        .map(|p| {
            agent
                .add_partition_and_get_shuffle_descriptor(&j, &pid(p), 4)
                .expect("place partition")
        })
        .collect();
    // Equal loads: placements rotate over the workers in id order.
    for (p, (descriptor, worker)) in descriptors.iter().zip(&workers).enumerate() {
        assert_eq!(
            *descriptor,
            ShuffleDescriptor {
                job: "6a6f622d31".into(),
                partition: format!("a0{p:02x}"),
                worker_id: worker.id.clone(),
                worker_address: worker.address.clone(),
                token: String::new(),
            }
        );
    }

    agent.release_partition(&descriptors[1]).expect("release");
    let released_key = (Bytes::from_static(b"job-1"), Bytes::from_static(&[0xa0, 1]));
    assert_eq!(workers[1].released(), vec![released_key.clone()]);
    // Released again: the worker says not found, which counts as done.
    agent
        .release_partition(&descriptors[1])
        .expect("second release is fine");
    assert_eq!(workers[1].released(), [released_key.clone(), released_key]);
    assert_eq!(workers[0].released(), Vec::<(Bytes, Bytes)>::new());
    assert_eq!(workers[2].released(), Vec::<(Bytes, Bytes)>::new());

    // w3 stops serving but still heartbeats: unreachable, yet unregister succeeds.
    workers[2].serving.cancel();
    agent.unregister_job(&j).expect("unregister job");
    assert_eq!(workers[0].dropped(), [Bytes::from_static(b"job-1")]);
    assert_eq!(workers[1].dropped(), [Bytes::from_static(b"job-1")]);
    assert_eq!(workers[2].dropped(), Vec::<Bytes>::new());

    // Nothing was lost, and the job is gone from the agent.
    assert_eq!(
        calls.recv_timeout(Duration::from_millis(200)),
        Err(RecvTimeoutError::Timeout)
    );
    let err = agent
        .add_partition_and_get_shuffle_descriptor(&j, &pid(9), 4)
        .expect_err("job unregistered");
    assert_eq!(err.kind(), ErrorKind::BadInput);

    agent.close();
    let err = agent
        .register_job(&j, Handler::new().0)
        .expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[test]
fn a_worker_that_stops_heartbeating_has_exactly_its_partitions_reported_lost() {
    let cluster = Cluster::start(Duration::from_secs(1));
    let workers: Vec<FakeWorker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| FakeWorker::start(&cluster, id))
        .collect();
    cluster.wait_for_workers(&["w1", "w2", "w3"]);
    let agent = cluster.agent(Duration::from_millis(50));
    let (handler_a, calls_a) = Handler::new();
    let (handler_b, calls_b) = Handler::new();
    let (ja, jb) = (job("job-a"), job("job-b"));
    agent.register_job(&ja, handler_a).expect("register job a");
    agent.register_job(&jb, handler_b).expect("register job b");

    // Round robin over w1, w2, w3: job a gets p0..p5, job b p6, p7.
    let mut on_w2 = Vec::new();
    for p in 0..8 {
        let j = if p < 6 { &ja } else { &jb };
        let d = agent
            .add_partition_and_get_shuffle_descriptor(j, &pid(p), 1)
            .expect("place");
        if d.worker_id == "w2" {
            on_w2.push(p);
        }
    }
    assert_eq!(on_w2, [1, 4, 7]);

    workers[1].heartbeats.cancel();
    let lost_a = calls_a
        .recv_timeout(WAIT)
        .expect("job a hears of its lost partitions");
    assert_eq!(lost_a, [pid(1), pid(4)]);
    let lost_b = calls_b
        .recv_timeout(WAIT)
        .expect("job b hears of its lost partition");
    assert_eq!(lost_b, [pid(7)]);
    // Reported once, and nothing on the live workers.
    assert_eq!(
        calls_a.recv_timeout(Duration::from_millis(500)),
        Err(RecvTimeoutError::Timeout)
    );
    assert_eq!(calls_b.try_recv(), Err(mpsc::TryRecvError::Empty));

    // Only live workers are asked to drop the job.
    cluster.wait_for_workers(&["w1", "w3"]);
    agent.unregister_job(&ja).expect("unregister job a");
    let dropped: HashSet<&str> = workers
        .iter()
        .filter(|w| w.dropped() == [Bytes::from_static(b"job-a")])
        .map(|w| w.id.as_str())
        .collect();
    assert_eq!(dropped, HashSet::from(["w1", "w3"]));
    assert_eq!(workers[1].dropped(), Vec::<Bytes>::new());
    agent.close();
}

#[test]
fn an_unreachable_master_is_skipped_for_the_next() {
    let cluster = Cluster::start(Duration::from_secs(10));
    let worker = FakeWorker::start(&cluster, "w1");
    cluster.wait_for_workers(&["w1"]);
    // A port that refuses connections: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("address").to_string();
    drop(dead);
    let config = AgentConfig {
        master_addresses: vec![dead_addr, cluster.master_addr.clone()],
        ..AgentConfig::default()
    };
    let agent = MasterAgent::new(config).expect("agent");
    let j = job("job-f");
    agent
        .register_job(&j, Handler::new().0)
        .expect("second master answers");
    let d = agent
        .add_partition_and_get_shuffle_descriptor(&j, &pid(0), 1)
        .expect("place");
    assert_eq!(
        (d.worker_id.as_str(), d.worker_address.as_str()),
        ("w1", worker.address.as_str())
    );

    let err = MasterAgent::new(AgentConfig {
        master_addresses: vec![],
        ..AgentConfig::default()
    })
    .expect_err("no masters");
    assert_eq!(
        (err.kind(), err.message()),
        (ErrorKind::BadInput, "master_addresses is empty")
    );
    agent.close();
}
