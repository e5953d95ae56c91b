//! A worker's admin HTTP port, over loopback:
//! - `/metrics` counts exactly what a job moved through the real agents
//!   (pushed and read bytes and buffers), partitions by state return to zero
//!   once released, errors are counted by kind, and the JSON API shows the
//!   worker and its partitions;
//! - `/readyz` is 503 until the worker registered with a master and while it
//!   is draining (decommissioning); `/healthz` stays 200;
//! - with a cluster secret or an admin token, everything but `/healthz` and
//!   `/readyz` needs it (401 without);
//! - every metric docs/operations.md lists under "Worker metrics" is
//!   exported, and every exported one is listed, with its type;
//! - the real `terrace worker --admin-listen` prints and serves its admin
//!   address and stops it last on SIGTERM.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use terrace_admin::catalog;
use terrace_admin::client::{self, Reply};
use terrace_tests::{
    TestWorker, assert_buffers_eq, call, key, logs, read_partition, small_agent_config, wait_until,
    worker_stats, write_partition,
};
use terrace_tier_api::protocol::{
    CreatePartition, Decommission, ReleasePartition, SplitPartition, WorkerAt,
};
use terrace_tier_api::{BUFFER_HEADER_LEN, Buffer, ByteSize, ErrorKind, WorkerId};
use terrace_worker::{AdminConfig, WorkerConfig};

/// One `GET path` of the admin server at `address` (10 s at most), with
/// `Authorization: Bearer <bearer>` when given.
fn get(address: &str, path: &str, bearer: Option<&str>) -> Reply {
    terrace_rpc::io_runtime()
        .block_on(client::get(address, path, bearer, Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The samples of a Prometheus text exposition: `name{labels}` (as
/// printed) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a sample value"))
        })
        .collect()
}

fn scrape(admin: &str, bearer: Option<&str>) -> (BTreeMap<String, f64>, String) {
    let answer = get(admin, "/metrics", bearer);
    assert_eq!(answer.status, 200, "/metrics: {}", answer.body);
    (samples(&answer.body), answer.body)
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> u64 {
    let value = samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} is not exported; got {samples:#?}"));
    *value as u64
}

fn json(admin: &str, path: &str) -> serde_json::Value {
    let answer = get(admin, path, None);
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    serde_json::from_str(&answer.body).expect("a JSON answer")
}

/// A master of its own runtime on loopback; stopped when dropped.
struct Master {
    runtime: tokio::runtime::Runtime,
    address: String,
    stop: tokio_util::sync::CancellationToken,
}

impl Master {
    fn start() -> Master {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("master runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the master");
        let address = listener.local_addr().expect("master address").to_string();
        let stop = tokio_util::sync::CancellationToken::new();
        runtime.spawn(terrace_master::run(
            terrace_master::MasterConfig::default(),
            listener,
            stop.clone(),
        ));
        Master {
            runtime,
            address,
            stop,
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = &self.runtime;
    }
}

fn admin_on() -> AdminConfig {
    AdminConfig {
        listen: Some("127.0.0.1:0".into()),
        ..AdminConfig::default()
    }
}

fn worker_config(dir: &Path) -> WorkerConfig {
    WorkerConfig {
        data_dirs: vec![dir.join("data")],
        memory_budget: ByteSize::mib(64),
        max_frame_size: ByteSize::mib(4),
        heartbeat_interval: Duration::from_millis(100),
        admin: admin_on(),
        ..WorkerConfig::default()
    }
}

fn admin_address(worker: &TestWorker) -> String {
    worker
        .handle
        .as_ref()
        .and_then(|h| h.admin_address)
        .expect("the worker serves admin HTTP")
        .to_string()
}

/// Bytes a push body takes for `buffers`: each buffer's header and payload
/// (compression is off in the tests' agent config).
fn framed_bytes<'a>(buffers: impl IntoIterator<Item = &'a Buffer>) -> (u64, u64) {
    buffers.into_iter().fold((0, 0), |(bytes, count), b| {
        (
            bytes + (BUFFER_HEADER_LEN + b.payload.len()) as u64,
            count + 1,
        )
    })
}

#[test]
fn metrics_count_exactly_what_a_job_moved_and_partitions_return_to_zero() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let master = Master::start();
    let worker = TestWorker::start(WorkerConfig {
        master_addresses: vec![master.address.clone()],
        ..worker_config(dir.path())
    });
    let admin = admin_address(&worker);
    wait_until(Duration::from_secs(20), "the worker is ready", || {
        get(&admin, "/readyz", None).status == 200
    });
    assert_eq!(get(&admin, "/healthz", None).status, 200);

    let (before, _) = scrape(&admin, None);
    assert_eq!(sample(&before, "terrace_worker_pushed_bytes_total"), 0);

    let config = small_agent_config();
    let keys = [key(7, 1), key(7, 2)];
    let subs = 3;
    let mut expected_bytes = 0;
    let mut expected_buffers = 0;
    for (i, key) in keys.iter().enumerate() {
        let written = write_partition(&config, worker.descriptor(key), i as u32, subs, 25, 3000);
        let (bytes, buffers) = framed_bytes(written.values().flatten());
        expected_bytes += bytes;
        expected_buffers += buffers;
        let read = read_partition(
            &config,
            worker.descriptor(key),
            subs,
            Duration::from_secs(30),
        )
        .expect("read the partition");
        for sub in 0..subs {
            assert_buffers_eq(&read[&sub], &written[&sub], &format!("{key}/{sub}"));
        }
    }

    let (after, _) = scrape(&admin, None);
    assert_eq!(
        sample(&after, "terrace_worker_pushed_bytes_total"),
        expected_bytes
    );
    assert_eq!(
        sample(&after, "terrace_worker_pushed_buffers_total"),
        expected_buffers
    );
    assert_eq!(
        sample(&after, "terrace_worker_read_bytes_total"),
        expected_bytes
    );
    assert_eq!(
        sample(&after, "terrace_worker_read_buffers_total"),
        expected_buffers
    );
    // The RPC counters are the same counters.
    let stats = worker_stats(&worker.address);
    assert_eq!(stats.bytes_pushed, expected_bytes);
    assert_eq!(stats.bytes_read, expected_bytes);
    assert_eq!(
        sample(&after, "terrace_worker_partitions{state=\"sealed\"}"),
        2
    );
    assert_eq!(
        sample(&after, "terrace_worker_partitions{state=\"open\"}"),
        0
    );
    assert_eq!(sample(&after, "terrace_worker_jobs"), 1);
    // Sealed with write_on_push: every byte is in the data directory's files.
    let data_dir = dir.path().join("data").display().to_string();
    assert_eq!(
        sample(
            &after,
            &format!("terrace_worker_stored_bytes{{tier=\"disk\",dir=\"{data_dir}\"}}")
        ),
        expected_bytes
    );
    assert_eq!(
        sample(
            &after,
            "terrace_worker_stored_bytes{tier=\"memory\",dir=\"\"}"
        ),
        0
    );
    assert_eq!(
        sample(
            &after,
            &format!("terrace_worker_disk_healthy{{dir=\"{data_dir}\"}}")
        ),
        1
    );
    assert!(sample(&after, "terrace_worker_push_duration_seconds_count") > 0);
    assert!(sample(&after, "terrace_worker_read_duration_seconds_count") > 0);
    assert_eq!(
        sample(&after, "terrace_worker_push_duration_seconds_count"),
        sample(
            &after,
            "terrace_worker_push_duration_seconds_bucket{le=\"+Inf\"}"
        )
    );
    assert_eq!(sample(&after, "terrace_worker_draining"), 0);

    // The JSON API says the same.
    let state = json(&admin, "/api/v1/worker");
    assert_eq!(state["worker_id"], worker.worker_id.as_str());
    assert_eq!(state["partitions"]["sealed"], 2);
    assert_eq!(state["draining"], false);
    assert_eq!(state["masters"][0]["registered"], true);
    assert_eq!(state["jobs"][0]["job"], keys[0].job.to_hex());
    let listed = json(
        &admin,
        &format!("/api/v1/partitions?job={}", keys[0].job.to_hex()),
    );
    assert_eq!(listed["total"], 2);
    let stored: u64 = listed["partitions"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            assert_eq!(p["state"], "sealed");
            p["stored_bytes"].as_u64().expect("bytes")
        })
        .sum();
    assert_eq!(stored, expected_bytes);
    let other = json(
        &admin,
        &format!("/api/v1/partitions?job={}", "ab".repeat(16)),
    );
    assert_eq!(other["total"], 0);
    assert_eq!(json(&admin, "/api/v1/partitions")["total"], 2);
    assert_eq!(
        get(&admin, "/api/v1/partitions?job=not-hex", None).status,
        400
    );

    // A bad request is counted by its kind.
    let bad = call(
        &worker.address,
        CreatePartition {
            key: key(7, 3),
            num_subpartitions: 0,
            broadcast_only: false,
            continuation: false,
            relocated: false,
        },
    )
    .expect_err("no subpartitions is refused");
    assert_eq!(bad.kind(), ErrorKind::BadInput);
    let (errors, _) = scrape(&admin, None);
    assert_eq!(
        sample(&errors, "terrace_worker_errors_total{kind=\"bad_input\"}"),
        sample(&after, "terrace_worker_errors_total{kind=\"bad_input\"}") + 1
    );

    for key in &keys {
        call(&worker.address, ReleasePartition { key: key.clone() }).expect("release");
    }
    wait_until(Duration::from_secs(20), "partitions return to zero", || {
        let (now, _) = scrape(&admin, None);
        ["open", "sealed", "failed"].iter().all(|state| {
            sample(
                &now,
                &format!("terrace_worker_partitions{{state=\"{state}\"}}"),
            ) == 0
        }) && sample(&now, "terrace_worker_jobs") == 0
            && sample(&now, "terrace_worker_streams_open") == 0
    });
    let (released, _) = scrape(&admin, None);
    assert_eq!(
        sample(
            &released,
            &format!("terrace_worker_stored_bytes{{tier=\"disk\",dir=\"{data_dir}\"}}")
        ),
        0
    );
    // Counters never go back.
    assert_eq!(
        sample(&released, "terrace_worker_pushed_bytes_total"),
        expected_bytes
    );
    worker.stop();
}

#[test]
fn readyz_is_503_while_draining_and_healthz_stays_200() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    // Standalone: ready as soon as it serves.
    let worker = TestWorker::start(worker_config(dir.path()));
    let admin = admin_address(&worker);
    assert_eq!(get(&admin, "/readyz", None).status, 200);
    // A partition held keeps the decommissioning worker up.
    call(
        &worker.address,
        CreatePartition {
            key: key(9, 1),
            num_subpartitions: 1,
            broadcast_only: false,
            continuation: false,
            relocated: false,
        },
    )
    .expect("create");
    // A split ends the part here and is counted.
    call(
        &worker.address,
        SplitPartition {
            key: key(9, 1),
            next: WorkerAt::new(WorkerId::new("next").expect("id"), "127.0.0.1:1"),
        },
    )
    .expect("split");
    let (split, _) = scrape(&admin, None);
    assert_eq!(sample(&split, "terrace_worker_splits_total"), 1);
    assert_eq!(
        sample(&split, "terrace_worker_partitions{state=\"sealed\"}"),
        1
    );
    call(&worker.address, Decommission).expect("decommission");
    let ready = get(&admin, "/readyz", None);
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("decommissioning"), "{}", ready.body);
    assert_eq!(get(&admin, "/healthz", None).status, 200);
    let (now, _) = scrape(&admin, None);
    assert_eq!(sample(&now, "terrace_worker_draining"), 1);
    assert_eq!(json(&admin, "/api/v1/worker")["draining"], true);
    worker.stop();
}

#[test]
fn a_worker_registering_with_no_master_is_not_ready() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = TestWorker::start(WorkerConfig {
        master_addresses: vec![terrace_tests::closed_address()],
        ..worker_config(dir.path())
    });
    let admin = admin_address(&worker);
    let ready = get(&admin, "/readyz", None);
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("not registered"), "{}", ready.body);
    assert_eq!(get(&admin, "/healthz", None).status, 200);
    assert_eq!(
        json(&admin, "/api/v1/worker")["masters"][0]["registered"],
        false
    );
    worker.stop();
}

/// Writes `text` to a file only its owner may read.
fn private_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

#[test]
fn admin_endpoints_need_the_credential_when_one_is_set() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "a-cluster-secret-of-enough-bytes";
    let token = "an-admin-token-of-enough-bytes";
    let mut config = worker_config(dir.path());
    config.security.secret_file = Some(private_file(dir.path(), "secret", secret));

    // The cluster secret is the credential when no admin token is set.
    let worker = TestWorker::start(config.clone());
    let admin = admin_address(&worker);
    for path in ["/metrics", "/api/v1/worker", "/api/v1/partitions"] {
        assert_eq!(get(&admin, path, None).status, 401, "{path} without");
        assert_eq!(get(&admin, path, Some("wrong")).status, 401, "{path} wrong");
        assert_eq!(get(&admin, path, Some(secret)).status, 200, "{path} with");
    }
    assert_eq!(get(&admin, "/healthz", None).status, 200);
    assert_eq!(get(&admin, "/readyz", None).status, 200);
    worker.stop();

    // An admin token replaces it.
    config.admin.token_file = Some(private_file(dir.path(), "token", token));
    let worker = TestWorker::start(config);
    let admin = admin_address(&worker);
    assert_eq!(get(&admin, "/metrics", None).status, 401);
    assert_eq!(get(&admin, "/metrics", Some(secret)).status, 401);
    let (metrics, _) = scrape(&admin, Some(token));
    assert_eq!(sample(&metrics, "terrace_worker_pushed_bytes_total"), 0);
    assert_eq!(get(&admin, "/healthz", None).status, 200);
    worker.stop();
}

#[test]
fn every_worker_metric_is_documented_and_every_documented_one_exported() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = worker_config(dir.path());
    config.object_store = Some(terrace_worker::ObjectStoreConfig {
        url: "memory://".into(),
        ..Default::default()
    });
    let worker = TestWorker::start(config);
    let admin = admin_address(&worker);
    let (_, text) = scrape(&admin, None);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("read docs/operations.md");
    let documented = catalog::documented(&doc, "### Worker metrics")
        .unwrap_or_else(|e| panic!("docs/operations.md: {e}"));
    let exported = catalog::exported(&text);
    let differences = catalog::differences(&documented, &exported);
    assert!(
        differences.is_empty(),
        "docs/operations.md \"### Worker metrics\" and the exported metrics differ:\n{}",
        differences.join("\n")
    );
    // The names alert rules and dashboards rely on are among them.
    for name in [
        "terrace_worker_pushed_bytes_total",
        "terrace_worker_pushed_buffers_total",
        "terrace_worker_read_bytes_total",
        "terrace_worker_read_buffers_total",
        "terrace_worker_stored_bytes",
        "terrace_worker_migrated_bytes_total",
        "terrace_worker_overflowed_bytes_total",
        "terrace_worker_pushes_in_flight",
        "terrace_worker_reads_in_flight",
        "terrace_worker_memory_budget_bytes",
        "terrace_worker_memory_used_bytes",
        "terrace_worker_memory_peak_bytes",
        "terrace_worker_read_budget_used_bytes",
        "terrace_worker_partitions",
        "terrace_worker_jobs",
        "terrace_worker_streams_open",
        "terrace_worker_connections_open",
        "terrace_worker_errors_total",
        "terrace_worker_push_duration_seconds",
        "terrace_worker_read_duration_seconds",
        "terrace_worker_disk_healthy",
        "terrace_worker_object_store_failures_total",
        "terrace_worker_splits_total",
        "terrace_worker_adoptions_total",
        "terrace_worker_draining",
    ] {
        assert!(exported.contains_key(name), "{name} is not exported");
    }
    assert_eq!(
        get(&admin, "/metrics", None).header("content-type"),
        Some(terrace_admin::METRICS_CONTENT_TYPE)
    );
    assert!(exported.keys().all(|n| n.starts_with("terrace_worker_")));
    worker.stop();
}

/// `terrace worker --admin-listen`: the real binary prints the admin
/// address after its data address, serves it, and stops it last on SIGTERM.
#[test]
fn terrace_worker_serves_admin_http_on_the_address_of_admin_listen() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let wait = Duration::from_secs(30);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut child = Command::new(terrace_tests::terrace_bin())
        .args([
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("TERRACE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn terrace worker");
    let stdout = child.stdout.take().expect("piped stdout");
    // Killed on drop, whatever happens below.
    let mut worker = terrace_tests::ServiceProcess {
        child,
        address: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = || rx.recv_timeout(wait).expect("a line on stdout");
    let data_line = line();
    assert!(
        data_line.starts_with("terrace worker listening on 127.0.0.1:"),
        "{data_line}"
    );
    let admin_line = line();
    let admin = admin_line
        .strip_prefix("terrace worker admin listening on ")
        .unwrap_or_else(|| panic!("not the admin line: {admin_line}"))
        .to_string();
    assert_eq!(get(&admin, "/healthz", None).status, 200);
    // Standalone (no masters): ready as soon as it serves.
    assert_eq!(get(&admin, "/readyz", None).status, 200);
    let metrics = get(&admin, "/metrics", None);
    assert!(
        metrics
            .body
            .contains("\nterrace_worker_pushed_bytes_total 0\n"),
        "{}",
        metrics.body
    );

    let pid = worker.pid().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let (exit, _) = terrace_tests::wait_for(wait, "the worker exits after SIGTERM", || {
        worker.child.try_wait().expect("wait")
    });
    assert!(exit.success(), "{exit:?}");
    assert!(
        terrace_rpc::io_runtime()
            .block_on(client::get(&admin, "/healthz", None, wait))
            .is_err(),
        "the admin server stopped with the worker"
    );
}
