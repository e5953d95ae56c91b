//! Job leases on real processes: a master agent renews its jobs; when its
//! process is SIGKILLed (a dead coordinator) the master releases the job and
//! every worker drops its data within a lease and a heartbeat. A worker
//! restarted with data of a job no master knows keeps it one lease, then
//! drops it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use terrace_tests::logs;
use terrace_tests::wait::throughout;

use terrace_rpc::clock;
use terrace_tests::ServiceProcess;

const LEASE: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_millis(500);

fn start_master(dir: &Path) -> ServiceProcess {
    let config = dir.join("master.toml");
    std::fs::write(
        &config,
        format!("job_lease = \"{}ms\"\n", LEASE.as_millis()),
    )
    .expect("write master config");
    ServiceProcess::start(&[
        "master",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
    ])
}

fn start_worker(dir: &Path, master: &str) -> ServiceProcess {
    let config = dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmaster_addresses = [\"{master}\"]\nheartbeat_interval = \"{}ms\"\n",
            dir.join("data").display(),
            HEARTBEAT.as_millis()
        ),
    )
    .expect("write worker config");
    ServiceProcess::start(&["worker", "--config", config.to_str().expect("utf-8 path")])
}

/// The agent process: returns once it has written and sealed its partition.
fn start_agent(master: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hold_job"))
        .args([master, "300"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn hold_job");
    let address = terrace_tests::await_stdout_line(&mut child, "ready ", Duration::from_secs(60))
        .expect("the agent writes its partition within 60 s");
    (child, address)
}

fn partitions(address: &str) -> u32 {
    terrace_tests::worker_stats(address).partitions
}

fn data_files(dir: &Path) -> Vec<PathBuf> {
    terrace_tests::entries_under(&dir.join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}

/// Waits until the worker holds no partition and no data file; returns how long it took.
fn wait_until_empty(address: &str, dir: &Path, within: Duration) -> Duration {
    let started = clock::now();
    let empty = terrace_tests::wait::poll_until(within, || {
        partitions(address) == 0 && data_files(dir).is_empty()
    });
    assert!(
        empty,
        "the worker still holds {} partition(s) and files {:?} after {within:?}",
        partitions(address),
        data_files(dir)
    );
    clock::elapsed(started)
}

#[test]
fn a_dead_coordinators_job_is_dropped_within_a_lease_and_a_heartbeat() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let master = start_master(dir.path());
    let worker = start_worker(dir.path(), &master.address);
    let (mut agent, address) = start_agent(&master.address);
    assert_eq!(address, worker.address);
    // While the agent lives it renews the lease: the data stays for longer
    // than the bound within which an unrenewed job's data goes (below).
    let bound = LEASE + HEARTBEAT + Duration::from_millis(1500);
    throughout(bound, Duration::from_millis(200), || {
        assert_eq!(
            partitions(&worker.address),
            1,
            "a renewed job keeps its data"
        )
    });

    agent.kill().expect("SIGKILL the agent");
    let _ = agent.wait();
    // The master notices the expiry at the next heartbeat after it; that
    // heartbeat's reply tells the worker, which drops the data.
    let took = wait_until_empty(&worker.address, dir.path(), bound);
    eprintln!(
        "leases: the dead coordinator's data was gone {took:?} after the kill (lease {LEASE:?}, heartbeat {HEARTBEAT:?})"
    );
    assert!(
        took >= LEASE - Duration::from_millis(500),
        "dropped after {took:?}, before the lease of {LEASE:?} could expire"
    );
}

#[test]
fn a_restarted_worker_keeps_data_of_a_job_no_master_knows_for_one_lease() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let first_master = start_master(dir.path());
    let worker = start_worker(dir.path(), &first_master.address);
    let (mut agent, _) = start_agent(&first_master.address);
    // Everything dies; a new master (knowing no job) and the worker restart.
    worker.kill();
    agent.kill().expect("SIGKILL the agent");
    let _ = agent.wait();
    first_master.kill();
    let master = start_master(dir.path());
    let worker = start_worker(dir.path(), &master.address);
    let restarted = clock::now();
    assert_eq!(
        partitions(&worker.address),
        1,
        "the sealed partition is recovered"
    );
    // Kept for a lease: no master knows the job, but one may yet renew it.
    throughout(LEASE / 2, Duration::from_millis(200), || {
        assert_eq!(partitions(&worker.address), 1, "dropped before a lease")
    });
    let took = wait_until_empty(&worker.address, dir.path(), LEASE * 2 + HEARTBEAT * 2);
    let since_restart = clock::elapsed(restarted);
    eprintln!("leases: the unknown job's data was dropped {since_restart:?} after the restart");
    assert!(took > Duration::ZERO);
    assert!(
        since_restart >= LEASE,
        "dropped {since_restart:?} after the restart, before a whole lease"
    );
}
