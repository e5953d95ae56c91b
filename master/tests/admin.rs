//! The master's admin server over real TCP on 127.0.0.1: metrics that move
//! as workers heartbeat, jobs register, partitions are placed and leases
//! expire (on paused time, so they move exactly when the test says),
//! readiness, the JSON API, and the admin credential.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use terrace_admin::client::{Reply, get};
use terrace_master::{Listeners, MasterConfig, SystemClock, serve};
use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions, ClusterSecret, Credential, SecurityConfig};
use terrace_tier_api::protocol::{
    AllocatePartition, JobRegistered, PartitionAllocated, RegisterJob, UnregisterJob,
    WorkerHeartbeat, WorkerLoad,
};
use terrace_tier_api::{JobId, PartitionId, PartitionKey, TierResult, WorkerId};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

struct Master {
    addr: String,
    admin: String,
    shutdown: CancellationToken,
    task: JoinHandle<TierResult<()>>,
}

async fn start(config: MasterConfig) -> Master {
    let rpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = rpc.local_addr().expect("bound").to_string();
    let admin_addr = admin.local_addr().expect("bound").to_string();
    let shutdown = CancellationToken::new();
    let listeners = Listeners {
        rpc,
        admin: Some(admin),
    };
    let task = tokio::spawn(serve(
        config,
        listeners,
        shutdown.clone(),
        Arc::new(SystemClock),
    ));
    Master {
        addr,
        admin: admin_addr,
        shutdown,
        task,
    }
}

async fn stop(master: Master) {
    master.shutdown.cancel();
    let result = clock::timeout(WAIT, master.task)
        .await
        .expect("master stops in time")
        .expect("master task does not panic");
    assert_eq!(result, Ok(()));
    assert!(
        get(&master.admin, "/healthz", None, WAIT).await.is_err(),
        "the admin server stopped with the master"
    );
}

async fn connect(addr: &str, credential: Credential) -> Client {
    let options = ClientOptions {
        name: "admin test".into(),
        request_timeout: WAIT,
        credential,
        ..ClientOptions::default()
    };
    Client::connect(addr, &options).await.expect("connect")
}

async fn fetch(master: &Master, path: &str) -> Reply {
    get(&master.admin, path, None, WAIT)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn json(master: &Master, path: &str) -> serde_json::Value {
    let reply = fetch(master, path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json().expect("JSON")
}

/// The master's metrics, each sample line's series (`name{labels}`) to its value.
async fn metrics(master: &Master) -> std::collections::BTreeMap<String, f64> {
    let reply = fetch(master, "/metrics").await;
    assert_eq!(reply.status, 200);
    reply
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The values of `series` in the master's metrics, in order.
async fn values<const N: usize>(master: &Master, series: [&str; N]) -> [f64; N] {
    let all = metrics(master).await;
    series.map(|s| {
        *all.get(s)
            .unwrap_or_else(|| panic!("no series {s} in {all:?}"))
    })
}

fn job(id: &'static [u8]) -> JobId {
    JobId::new(Bytes::from_static(id)).expect("valid job id")
}

fn key(job_id: &'static [u8], partition: u32) -> PartitionKey {
    PartitionKey {
        job: job(job_id),
        partition: PartitionId::new(partition.to_be_bytes().to_vec()).expect("valid"),
    }
}

async fn heartbeat(client: &Client, id: &str, load: WorkerLoad) {
    client
        .call(WorkerHeartbeat {
            worker: WorkerId::new(id).expect("valid"),
            data_address: format!("{id}.example:7000"),
            load,
            jobs: Vec::new(),
            relocated: Vec::new(),
            parts: Vec::new(),
            adopted: Vec::new(),
        })
        .await
        .expect("heartbeat");
}

async fn allocate(
    client: &Client,
    job: &'static [u8],
    partition: u32,
    relocated_from: Option<&str>,
) -> TierResult<PartitionAllocated> {
    client
        .call(AllocatePartition {
            key: key(job, partition),
            num_subpartitions: 2,
            exclude: Vec::new(),
            relocated_from: relocated_from.map(|w| WorkerId::new(w).expect("valid")),
        })
        .await
}

const LIVE: &str = "terrace_master_workers{state=\"live\"}";
const LOST: &str = "terrace_master_workers{state=\"lost\"}";
const DECOMMISSIONING: &str = "terrace_master_workers{state=\"decommissioning\"}";
const UNHEALTHY: &str = "terrace_master_workers{state=\"unhealthy\"}";
const LOST_TOTAL: &str = "terrace_master_workers_lost_total";
const JOBS: &str = "terrace_master_jobs";
const PLACEMENTS: &str = "terrace_master_placements_total";
const REFUSED_RELEASED: &str = "terrace_master_placements_refused_total{reason=\"job_released\"}";
const REFUSED_NO_WORKERS: &str = "terrace_master_placements_refused_total{reason=\"no_workers\"}";
const EXPIRIES: &str = "terrace_master_lease_expiries_total";
const RELOCATIONS: &str = "terrace_master_relocations_total";

#[tokio::test(start_paused = true)]
async fn on_paused_time_metrics_follow_workers_jobs_placements_and_leases() {
    let timeout = Duration::from_secs(10);
    let lease = Duration::from_secs(60);
    let master = start(MasterConfig {
        worker_timeout: timeout,
        job_lease: lease,
        ..MasterConfig::default()
    })
    .await;
    let client = connect(&master.addr, Credential::None).await;

    // A fresh master: alive, not ready until its worker list has settled.
    let health = fetch(&master, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = fetch(&master, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.starts_with("worker list not settled yet"),
        "{}",
        ready.body
    );
    assert_eq!(
        values(
            &master,
            [
                LIVE,
                LOST,
                DECOMMISSIONING,
                UNHEALTHY,
                LOST_TOTAL,
                JOBS,
                PLACEMENTS,
                REFUSED_NO_WORKERS
            ]
        )
        .await,
        [0.0; 8]
    );
    assert_eq!(values(&master, ["terrace_master_settled"]).await, [0.0]);
    // (A job's first allocation registers it, placed or not.)
    let err = allocate(&client, b"j1", 99, None)
        .await
        .expect_err("no workers");
    assert_eq!(err.kind(), terrace_tier_api::ErrorKind::NoWorkers);
    assert_eq!(values(&master, [REFUSED_NO_WORKERS]).await, [1.0]);

    // Four workers: two plain, one leaving, one with a failed directory.
    heartbeat(&client, "w1", WorkerLoad::default()).await;
    heartbeat(&client, "w2", WorkerLoad::default()).await;
    let leaving = WorkerLoad {
        decommissioning: true,
        ..WorkerLoad::default()
    };
    let bad_disk = WorkerLoad {
        unhealthy_dirs: 1,
        ..WorkerLoad::default()
    };
    heartbeat(&client, "w3", leaving.clone()).await;
    heartbeat(&client, "w4", bad_disk.clone()).await;
    assert_eq!(
        values(
            &master,
            [
                LIVE,
                DECOMMISSIONING,
                UNHEALTHY,
                LOST,
                "terrace_master_heartbeats_total"
            ]
        )
        .await,
        [2.0, 1.0, 1.0, 0.0, 4.0]
    );

    // A job and its placements.
    let JobRegistered { .. } = client
        .call(RegisterJob { job: job(b"j1") })
        .await
        .expect("register");
    for p in 0..3 {
        allocate(&client, b"j1", p, None).await.expect("placed");
    }
    assert_eq!(values(&master, [JOBS, PLACEMENTS]).await, [1.0, 3.0]);
    // A relocation (w2 unreachable, as a producer found).
    let moved = allocate(&client, b"j1", 3, Some("w2"))
        .await
        .expect("placed");
    assert_eq!(
        values(
            &master,
            [
                PLACEMENTS,
                RELOCATIONS,
                "terrace_master_relocated_partitions"
            ]
        )
        .await,
        [4.0, 1.0, 1.0]
    );
    // A released job's placement is refused, by reason.
    client
        .call(RegisterJob { job: job(b"gone") })
        .await
        .expect("register");
    client
        .call(UnregisterJob { job: job(b"gone") })
        .await
        .expect("unregister");
    allocate(&client, b"gone", 0, None)
        .await
        .expect_err("released");
    assert_eq!(
        values(
            &master,
            [REFUSED_RELEASED, JOBS, "terrace_master_released_jobs"]
        )
        .await,
        [1.0, 1.0, 1.0]
    );

    // The JSON API.
    let workers = json(&master, "/api/v1/workers").await;
    let states: Vec<(String, String)> = workers["workers"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|w| {
            (
                w["id"].as_str().expect("id").to_string(),
                w["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("w1".to_string(), "live".to_string()),
            ("w2".into(), "live".into()),
            ("w3".into(), "decommissioning".into()),
            ("w4".into(), "unhealthy".into()),
        ]
    );
    assert_eq!(workers["workers"][0]["address"], "w1.example:7000");
    assert_eq!(workers["settled"], false);
    let jobs = json(&master, "/api/v1/jobs").await;
    assert_eq!(jobs["jobs"][0]["job"], job(b"j1").to_hex());
    assert_eq!(jobs["jobs"][0]["partitions_placed"], 4);
    assert_eq!(jobs["jobs"][0]["relocated_partitions"], 1);
    assert_eq!(jobs["released"][0]["job"], job(b"gone").to_hex());
    let partitions = json(
        &master,
        &format!("/api/v1/jobs/{}/partitions", job(b"j1").to_hex()),
    )
    .await;
    assert_eq!(partitions["state"], "registered");
    let placed: u64 = partitions["placements_by_worker"]
        .as_object()
        .expect("a map")
        .values()
        .map(|n| n.as_u64().expect("a count"))
        .sum();
    assert_eq!(placed, 4);
    assert_eq!(
        partitions["relocated"],
        serde_json::json!([{
            "partition": key(b"j1", 3).partition.to_hex(),
            "worker": moved.worker.id.as_str(),
            "address": moved.worker.address,
        }])
    );
    let released = json(
        &master,
        &format!("/api/v1/jobs/{}/partitions", job(b"gone").to_hex()),
    )
    .await;
    assert_eq!(released["state"], "released");
    let unknown = fetch(&master, "/api/v1/jobs/00ff/partitions").await;
    assert_eq!(unknown.status, 404);
    let bad = fetch(&master, "/api/v1/jobs/xyz/partitions").await;
    assert_eq!(bad.status, 400);
    assert_eq!(fetch(&master, "/api/v1/nothing").await.status, 404);

    // Settled after a worker timeout: ready. w1 goes silent; the rest heartbeat.
    for _ in 0..4 {
        clock_advance(Duration::from_secs(3)).await;
        for (id, load) in [
            ("w2", WorkerLoad::default()),
            ("w3", leaving.clone()),
            ("w4", bad_disk.clone()),
        ] {
            heartbeat(&client, id, load).await;
        }
    }
    let ready = fetch(&master, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(values(&master, ["terrace_master_settled"]).await, [1.0]);
    // 12 s after its last heartbeat, w1 is lost (counted at once, swept or not).
    assert_eq!(
        values(&master, [LIVE, LOST, DECOMMISSIONING, UNHEALTHY]).await,
        [1.0, 1.0, 1.0, 1.0]
    );
    // Once swept, it is counted in the total, and listed as lost.
    clock_advance(Duration::from_secs(3)).await;
    assert_eq!(values(&master, [LOST, LOST_TOTAL]).await, [1.0, 1.0]);
    let workers = json(&master, "/api/v1/workers").await;
    assert_eq!(workers["lost"][0]["id"], "w1");
    assert_eq!(workers["lost"][0]["state"], "lost");
    // It comes back: no longer lost; the total stays.
    heartbeat(&client, "w1", WorkerLoad::default()).await;
    for id in ["w2"] {
        heartbeat(&client, id, WorkerLoad::default()).await;
    }
    assert_eq!(
        values(&master, [LIVE, LOST, LOST_TOTAL]).await,
        [2.0, 0.0, 1.0]
    );

    // j1's lease (60 s, never renewed) expires; it is counted and released.
    assert_eq!(values(&master, [EXPIRIES]).await, [0.0]);
    for _ in 0..16 {
        clock_advance(Duration::from_secs(3)).await;
        for (id, load) in [
            ("w1", WorkerLoad::default()),
            ("w2", WorkerLoad::default()),
            ("w3", leaving.clone()),
            ("w4", bad_disk.clone()),
        ] {
            heartbeat(&client, id, load).await;
        }
    }
    assert_eq!(
        values(
            &master,
            [
                EXPIRIES,
                JOBS,
                "terrace_master_relocated_partitions",
                LOST_TOTAL
            ]
        )
        .await,
        [1.0, 0.0, 0.0, 1.0]
    );
    // A decommissioning worker that goes silent has left: not lost.
    for _ in 0..4 {
        clock_advance(Duration::from_secs(3)).await;
        for id in ["w1", "w2"] {
            heartbeat(&client, id, WorkerLoad::default()).await;
        }
    }
    assert_eq!(
        values(
            &master,
            [LIVE, LOST, DECOMMISSIONING, UNHEALTHY, LOST_TOTAL]
        )
        .await,
        [2.0, 1.0, 0.0, 0.0, 2.0],
        "w3 left, w4 (a failed disk, not leaving) is lost"
    );
    stop(master).await;
}

/// Moves paused time forward and lets the master's sweeper run.
async fn clock_advance(by: Duration) {
    tokio::time::advance(by).await;
    tokio::task::yield_now().await;
}

fn private_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "{contents}").expect("write");
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    file
}

#[tokio::test]
async fn metrics_and_api_need_the_admin_token_or_else_the_cluster_secret() {
    let secret_text = "the cluster secret of this test";
    let token_text = "the admin token of this test";
    let secret_file = private_file(secret_text);
    let token_file = private_file(token_text);
    let security = SecurityConfig {
        secret_file: Some(secret_file.path().to_path_buf()),
        ..SecurityConfig::default()
    };
    let with_token = {
        let mut config = MasterConfig {
            security: security.clone(),
            ..MasterConfig::default()
        };
        config.admin.token_file = Some(token_file.path().to_path_buf());
        config
    };
    let with_secret = MasterConfig {
        security,
        ..MasterConfig::default()
    };
    for (config, right, wrong) in [
        (with_token, token_text, secret_text),
        (with_secret, secret_text, token_text),
    ] {
        let master = start(config).await;
        for path in ["/metrics", "/api/v1/workers", "/api/v1/jobs"] {
            for bearer in [None, Some(wrong), Some("x")] {
                let reply = get(&master.admin, path, bearer, WAIT).await.expect("reply");
                assert_eq!(reply.status, 401, "{path} with {bearer:?}");
            }
            let reply = get(&master.admin, path, Some(right), WAIT)
                .await
                .expect("reply");
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        }
        // Health and readiness are open: load balancers and probes hold no secret.
        assert_eq!(fetch(&master, "/healthz").await.status, 200);
        assert_eq!(fetch(&master, "/readyz").await.status, 503);
        // The cluster itself still works with the secret.
        let secret = ClusterSecret::from_bytes(secret_text.as_bytes()).expect("long");
        let client = connect(&master.addr, Credential::Cluster(secret)).await;
        heartbeat(&client, "w1", WorkerLoad::default()).await;
        let reply = get(&master.admin, "/api/v1/workers", Some(right), WAIT)
            .await
            .expect("reply");
        assert_eq!(reply.json().expect("JSON")["workers"][0]["id"], "w1");
        client.close();
        stop(master).await;
    }
}

#[tokio::test]
async fn a_master_binds_admin_listen_itself_and_refuses_a_bad_token_file() {
    // Bound from the config when no listener is given.
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = probe.local_addr().expect("bound").to_string();
    drop(probe);
    let mut config = MasterConfig::default();
    config.admin.listen = Some(address.clone());
    let rpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(terrace_master::run(config, rpc, shutdown.clone()));
    let mut health = None;
    for _ in 0..100 {
        if let Ok(reply) = get(&address, "/healthz", None, WAIT).await {
            health = Some(reply);
            break;
        }
        clock::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health.map(|r| r.status), Some(200));
    shutdown.cancel();
    clock::timeout(WAIT, task)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("ran");

    // A token file others can read stops the master at start.
    let token = private_file("the admin token of this test");
    std::fs::set_permissions(token.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut config = MasterConfig::default();
    config.admin.token_file = Some(token.path().to_path_buf());
    let rpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = terrace_master::run(config, rpc, CancellationToken::new())
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), terrace_tier_api::ErrorKind::BadInput);
    assert!(
        format!("{err:#}").contains(&format!("admin.token_file {}", token.path().display())),
        "{err:#}"
    );
}
