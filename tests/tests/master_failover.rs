//! The master holds only soft state and is never on the data path: a master
//! killed with SIGKILL mid-job and restarted on the same address loses
//! nothing, reports no partition as lost while workers re-register, and is
//! whole again after a heartbeat; a worker that really dies is still reported.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_tests::logs;

use terrace_master_agent::MasterAgent;
use terrace_tests::{
    ServiceProcess, assert_buffers_eq, closed_address, key, read_partition, small_agent_config,
    write_partition,
};
use terrace_tier_api::{
    AgentConfig, JobId, PartitionId, ShuffleDescriptor, TierError, TierMasterAgent,
    TierShuffleHandler,
};

#[derive(Debug, Default)]
struct Recorder {
    lost: Mutex<Vec<PartitionId>>,
}

impl Recorder {
    fn lost(&self) -> Vec<PartitionId> {
        let mut lost = self.lost.lock().expect("recorder lock").clone();
        lost.sort();
        lost
    }
}

impl TierShuffleHandler for Recorder {
    fn on_release_partitions(&self, partitions: Vec<PartitionId>) {
        self.lost.lock().expect("recorder lock").extend(partitions);
    }
    fn on_fatal_error(&self, error: TierError) {
        panic!("unexpected fatal error: {error}");
    }
}

fn write_file(path: &std::path::Path, text: &str) -> String {
    std::fs::write(path, text).expect("write config file");
    path.to_str().expect("utf-8 path").to_string()
}

/// Places a partition, retrying until a worker has registered (at most 10 s).
fn place(agent: &MasterAgent, job: &JobId, partition: &PartitionId) -> ShuffleDescriptor {
    terrace_tests::wait_for(Duration::from_secs(10), "a placement", || {
        agent
            .add_partition_and_get_shuffle_descriptor(job, partition, 4)
            .inspect_err(|e| eprintln!("placement not possible yet: {e}"))
            .ok()
    })
    .0
}

#[test]
fn master_killed_and_restarted_loses_nothing_and_reports_no_false_loss() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let master_address = closed_address();
    let master_config = write_file(
        &dir.path().join("master.toml"),
        &format!("listen = \"{master_address}\"\nworker_timeout = \"1s\"\n"),
    );
    let worker_config = write_file(
        &dir.path().join("worker.toml"),
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmaster_addresses = [\"{master_address}\"]\nheartbeat_interval = \"200ms\"\nmemory_budget = \"64MiB\"\nmax_frame_size = \"8MiB\"\n",
            dir.path().join("data").display()
        ),
    );
    let master = ServiceProcess::start(&["master", "--config", &master_config]);
    assert_eq!(master.address, master_address);
    let worker = ServiceProcess::start(&["worker", "--config", &worker_config]);

    let config = AgentConfig {
        master_addresses: vec![master_address.clone()],
        ..small_agent_config()
    };
    let agent = MasterAgent::with_poll_interval(config.clone(), Duration::from_millis(100))
        .expect("master agent");
    let recorder = Arc::new(Recorder::default());
    let job = key(5, 0).job;
    agent
        .register_job(&job, Arc::clone(&recorder) as _)
        .expect("register job");
    let first = place(&agent, &job, &key(5, 1).partition);
    assert_eq!(first.worker_address, worker.address);
    let expected_first = write_partition(&config, first.clone(), 1, 4, 20, 8 * 1024);

    master.kill();

    // The data path does not need the master: write and read on the worker.
    let second_key = key(5, 2);
    let second = ShuffleDescriptor::new(
        &second_key,
        first.worker_id.clone(),
        first.worker_address.clone(),
    );
    let expected_second = write_partition(&config, second.clone(), 2, 4, 20, 8 * 1024);
    for (descriptor, expected) in [(&first, &expected_first), (&second, &expected_second)] {
        let got = read_partition(&config, descriptor.clone(), 4, Duration::from_secs(30))
            .expect("read while the master is down");
        for sub in 0..4 {
            assert_buffers_eq(&got[&sub], &expected[&sub], &format!("subpartition {sub}"));
        }
    }
    // The agent has tried its master and failed (its one warning per run
    // of failures), then three more of its 100 ms polls.
    logs::wait_for_line(Duration::from_secs(10), &["cannot check for lost workers"]);
    terrace_tests::hold(Duration::from_millis(300));
    assert_eq!(
        recorder.lost(),
        Vec::<PartitionId>::new(),
        "nothing is lost while the master is down"
    );

    // Restart on the same address. Until the worker's next heartbeat the new
    // master lists no worker; the agent polls every 100 ms meanwhile and must
    // not take that for a loss.
    let restarted = ServiceProcess::start(&["master", "--config", &master_config]);
    assert_eq!(restarted.address, master_address);
    // The agent's polls work again (the first answer of the new master),
    // the worker registers again (a placement succeeds), then three more of
    // the agent's polls.
    logs::wait_for_line(
        Duration::from_secs(10),
        &["lost-worker detection works again"],
    );
    let third = place(&agent, &job, &key(5, 3).partition);
    assert_eq!(third.worker_id, first.worker_id);
    terrace_tests::hold(Duration::from_millis(300));
    assert_eq!(
        recorder.lost(),
        Vec::<PartitionId>::new(),
        "a restarted master causes no false loss"
    );

    // A worker that really dies is still reported, with exactly the
    // partitions the agent placed on it.
    worker.kill();
    let want = {
        let mut want = vec![key(5, 1).partition, key(5, 3).partition];
        want.sort();
        want
    };
    let reported =
        terrace_tests::wait::poll_until(Duration::from_secs(15), || recorder.lost() == want);
    assert!(
        reported,
        "lost partitions after the worker died: {:?}",
        recorder.lost()
    );
    // Nothing to wait on: no second report may come. Three more polls.
    terrace_tests::hold(Duration::from_millis(300));
    assert_eq!(
        recorder.lost(),
        want,
        "each lost partition is reported once"
    );
    agent.close();
    drop(restarted);
}
