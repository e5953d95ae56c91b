//! A worker that hangs instead of dying (SIGSTOP: its kernel still accepts
//! connections and keeps them open, nothing answers), on real processes: a
//! master and two `terrace worker`s, agents with a 1.5 s liveness deadline.
//! - the producer pushing to it and the consumer streaming from it fail
//!   within the deadline (not at the 20 s request timeout, not never);
//! - the master places nothing there once its heartbeats stall, before it
//!   is taken for lost;
//! - once it is lost, the master agent reports each of its partitions to
//!   the engine exactly once;
//! - when it resumes, it is told it was taken for lost, drops every
//!   partition it held (a reader of one gets partition-not-found, never the
//!   stale data), and takes partitions again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use terrace_master_agent::MasterAgent;
use terrace_rpc::clock;
use terrace_tests::{
    RecordingWriter, ServiceProcess, logs, payload, producer, read_partition, write_partition,
};
use terrace_tier_api::protocol::AllocatePartition;
use terrace_tier_api::{
    AgentConfig, Buffer, ErrorKind, PartitionId, ShuffleDescriptor, TierError, TierMasterAgent,
    TierShuffleHandler, WorkerId,
};

const LIVENESS: Duration = Duration::from_millis(1500);
const WORKER_TIMEOUT: Duration = Duration::from_secs(3);

fn start_master(dir: &Path) -> ServiceProcess {
    let config = dir.join("master.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nworker_timeout = \"{}ms\"\n",
            WORKER_TIMEOUT.as_millis()
        ),
    )
    .expect("write master config");
    ServiceProcess::start(&["master", "--config", config.to_str().expect("utf-8 path")])
}

fn start_worker(dir: &Path, index: usize, master: &str) -> ServiceProcess {
    let path = dir.join(format!("worker-{index}.toml"));
    let data = dir.join(format!("d{index}"));
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nworker_id = \"w{index}\"\nmaster_addresses = [\"{master}\"]\n\
             heartbeat_interval = \"200ms\"\nmemory_budget = \"64MiB\"\nmax_frame_size = \"4MiB\"\n\
             data_dirs = [\"{}\"]\n",
            data.display()
        ),
    )
    .expect("write worker config");
    ServiceProcess::start(&["worker", "--config", path.to_str().expect("utf-8 path")])
}

/// Kills the stopped worker if the test fails before it continues it.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Where the master places partition `n` of a probe job, away from `exclude`.
fn allocate(master: &str, n: u32, exclude: &[&str]) -> Result<String, TierError> {
    let placed = terrace_tests::call(
        master,
        AllocatePartition {
            key: terrace_tests::key(99, n),
            num_subpartitions: 1,
            exclude: exclude
                .iter()
                .map(|s| WorkerId::new(*s).expect("worker id"))
                .collect(),
            relocated_from: None,
        },
    )?;
    Ok(placed.worker.id.into_string())
}

#[test]
fn a_hung_worker_is_taken_for_lost_within_seconds_and_serves_nothing_stale_when_it_resumes() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = start_master(root);
    let m = master.address.clone();
    let workers: Vec<ServiceProcess> = (0..2).map(|i| start_worker(root, i, &m)).collect();
    terrace_tests::wait_for(Duration::from_secs(20), "two workers registered", || {
        terrace_tests::list_workers(&m)
            .ok()
            .filter(|l| l.workers.len() == 2)
    });
    let config = AgentConfig {
        master_addresses: vec![m.clone()],
        liveness_timeout: LIVENESS,
        ..terrace_tests::small_agent_config()
    };
    let agent = MasterAgent::with_poll_interval(config.clone(), Duration::from_millis(200))
        .expect("master agent");
    const JOB: u8 = 7;
    const SUBS: u32 = 2;
    let job = terrace_tests::key(JOB, 0).job;
    let lost = Arc::new(terrace_tests::LostPartitions::default());
    agent
        .register_job(&job, Arc::clone(&lost) as Arc<dyn TierShuffleHandler>)
        .expect("register");
    // Six partitions spread over both workers; the hung one is w0.
    let mut placed: BTreeMap<String, Vec<ShuffleDescriptor>> = BTreeMap::new();
    for p in 1..=6 {
        let descriptor = agent
            .add_partition_and_get_shuffle_descriptor(
                &job,
                &terrace_tests::key(JOB, p).partition,
                SUBS,
            )
            .expect("place");
        placed
            .entry(descriptor.worker_id.clone())
            .or_default()
            .push(descriptor);
    }
    let on_hung = placed.get("w0").cloned().expect("some partitions on w0");
    assert!(on_hung.len() >= 2, "placement spreads a job: {placed:?}");
    let hung = &workers[0];

    // One sealed partition, one still being written and read.
    let sealed = on_hung[0].clone();
    write_partition(&config, sealed.clone(), 1, SUBS, 16, 4096);
    let open = on_hung[1].clone();
    let mut writer = RecordingWriter::new(producer(&config, open.clone(), SUBS, false));
    for i in 0..8 {
        for sub in 0..SUBS {
            writer
                .write(sub, Buffer::data(payload(2, sub, i, 4096)))
                .expect("write");
        }
    }
    writer
        .agent
        .flush_and_wait()
        .expect("pushed before the hang");
    let reader = {
        let (config, open) = (config.clone(), open.clone());
        std::thread::spawn(move || {
            let started = clock::now();
            let read = read_partition(&config, open, SUBS, Duration::from_secs(60));
            (read, clock::elapsed(started))
        })
    };
    // The reader has read what was pushed and waits for more.
    terrace_tests::hold(Duration::from_millis(500));

    let stopped = Stopped(hung.pid());
    terrace_tests::stop_process(hung.pid());
    let hung_at = clock::now();

    // The producer's next pushes fail within the deadline.
    for sub in 0..SUBS {
        let _ = writer.write(sub, Buffer::data(payload(2, sub, 8, 4096)));
    }
    let err = writer
        .agent
        .flush_and_wait()
        .expect_err("a push to a hung worker fails");
    let failed_after = clock::elapsed(hung_at);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("taken for hung"), "{err}");
    assert!(
        failed_after < LIVENESS * 2 + Duration::from_secs(1),
        "the push failed {failed_after:?} after the hang (deadline {LIVENESS:?})"
    );
    // So does the reader waiting for more of it.
    let (read, _) = terrace_tests::join_within(reader, Duration::from_secs(30), "reader");
    let read_err = read.expect_err("a read from a hung worker fails");
    let read_failed_after = clock::elapsed(hung_at);
    assert_eq!(read_err.kind(), ErrorKind::PartitionNotFound, "{read_err}");
    assert!(read_err.message().contains("taken for hung"), "{read_err}");
    assert!(
        read_failed_after < LIVENESS * 2 + Duration::from_secs(2),
        "the read failed {read_failed_after:?} after the hang"
    );
    eprintln!(
        "hung_worker: push failed {failed_after:.1?}, read {read_failed_after:.1?} after SIGSTOP"
    );

    // Heartbeats stalled: still listed, no longer placed on.
    let listed = terrace_tests::list_workers(&m).expect("list");
    if clock::elapsed(hung_at) < WORKER_TIMEOUT {
        assert_eq!(listed.workers.len(), 2, "within the worker timeout");
    }
    for n in 0..4 {
        assert_eq!(allocate(&m, n, &[]).expect("placed"), "w1");
    }

    // Lost: every partition placed on it reported, each once.
    let mut want: Vec<PartitionId> = on_hung
        .iter()
        .map(|d| d.key().expect("key").partition)
        .collect();
    want.sort();
    terrace_tests::wait_for(
        Duration::from_secs(20),
        "the hung worker's partitions reported lost",
        || (lost.reported().len() >= want.len()).then_some(()),
    );
    // A few more master-agent polls: nothing is reported twice.
    terrace_tests::hold(Duration::from_secs(1));
    let mut reported = lost.reported();
    reported.sort();
    assert_eq!(reported, want, "each partition of the hung worker, once");
    let lost_after = clock::elapsed(hung_at);
    eprintln!("hung_worker: partitions reported lost {lost_after:.1?} after SIGSTOP");

    // Resumed: told it was lost, it drops what it held and serves none of it.
    drop(stopped);
    terrace_tests::wait_for(
        Duration::from_secs(20),
        "the resumed worker drops its stale partitions",
        || (terrace_tests::worker_stats(&hung.address).partitions == 0).then_some(()),
    );
    let stale = read_partition(&config, sealed.clone(), SUBS, Duration::from_secs(30))
        .expect_err("a stale partition is not served");
    assert_eq!(stale.kind(), ErrorKind::PartitionNotFound, "{stale}");
    // And it is placed on again.
    terrace_tests::wait_for(
        Duration::from_secs(20),
        "the resumed worker is placed on again",
        || (allocate(&m, 10, &["w1"]).ok()? == "w0").then_some(()),
    );
    drop(writer);
    agent.close();
}
