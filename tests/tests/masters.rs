//! Several masters on real processes: a worker heartbeats all three, a
//! master agent registers and releases its job on all of them, and one
//! master SIGKILLed mid-job (and another restarted) changes nothing: the data
//! reads back exactly and no partition is reported lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_tests::logs;

use terrace_master_agent::MasterAgent;
use terrace_tests::{
    ServiceProcess, assert_buffers_eq, closed_address, read_partition, write_partition,
};
use terrace_tier_api::{
    AgentConfig, JobId, PartitionId, TierError, TierMasterAgent, TierShuffleHandler,
};

/// Records what the agent reports to the engine.
#[derive(Default)]
struct Recorder {
    lost: Mutex<Vec<PartitionId>>,
    fatal: Mutex<Vec<String>>,
}

impl TierShuffleHandler for Recorder {
    fn on_release_partitions(&self, partitions: Vec<PartitionId>) {
        self.lost.lock().expect("lock").extend(partitions);
    }
    fn on_fatal_error(&self, error: TierError) {
        self.fatal.lock().expect("lock").push(error.to_string());
    }
}

fn start_master(dir: &std::path::Path, address: &str) -> ServiceProcess {
    let config = dir.join(format!("master-{}.toml", address.replace(':', "-")));
    std::fs::write(
        &config,
        format!("listen = \"{address}\"\nworker_timeout = \"2s\"\n"),
    )
    .expect("write master config");
    ServiceProcess::start(&["master", "--config", config.to_str().expect("utf-8 path")])
}

/// What master `address` knows: its workers and its live jobs.
fn listing(address: &str) -> Option<terrace_tier_api::protocol::WorkerList> {
    terrace_tests::list_workers(address).ok()
}

fn knows_job(address: &str, job: &JobId) -> bool {
    listing(address).is_some_and(|l| l.jobs.contains(job))
}

#[test]
fn one_of_three_masters_killed_and_another_restarted_mid_job_changes_nothing() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let addresses: Vec<String> = (0..3).map(|_| closed_address()).collect();
    let mut masters: Vec<Option<ServiceProcess>> = addresses
        .iter()
        .map(|a| Some(start_master(dir.path(), a)))
        .collect();
    let worker_config = dir.path().join("worker.toml");
    std::fs::write(
        &worker_config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmaster_addresses = {:?}\nheartbeat_interval = \"200ms\"\nmemory_budget = \"64MiB\"\nmax_frame_size = \"4MiB\"\n",
            dir.path().join("data").display(),
            addresses
        ),
    )
    .expect("write worker config");
    let _worker = ServiceProcess::start(&[
        "worker",
        "--config",
        worker_config.to_str().expect("utf-8 path"),
    ]);
    // The worker heartbeats every master.
    terrace_tests::wait_until(
        Duration::from_secs(20),
        "the worker reaches every master",
        || {
            addresses
                .iter()
                .all(|a| listing(a).is_some_and(|l| l.workers.len() == 1))
        },
    );

    let config = AgentConfig {
        master_addresses: addresses.clone(),
        ..terrace_tests::small_agent_config()
    };
    let agent = MasterAgent::with_poll_interval(config.clone(), Duration::from_millis(200))
        .expect("master agent");
    let recorder = Arc::new(Recorder::default());
    let key = terrace_tests::key(9, 1);
    agent
        .register_job(&key.job, Arc::clone(&recorder) as _)
        .expect("register job");
    for a in &addresses {
        assert!(knows_job(a, &key.job), "master {a} knows the job at once");
    }

    // Mid-job: the first master dies, partitions are still placed and
    // written; then the second restarts.
    masters[0].take().expect("running").kill();
    let descriptors: Vec<_> = (1..=3)
        .map(|p| {
            let k = terrace_tests::key(9, p);
            agent
                .add_partition_and_get_shuffle_descriptor(&k.job, &k.partition, 2)
                .expect("placed through another master")
        })
        .collect();
    let written: Vec<_> = descriptors
        .iter()
        .enumerate()
        .map(|(p, d)| write_partition(&config, d.clone(), p as u32, 2, 30, 2000))
        .collect();
    masters[1].take().expect("running").kill();
    masters[1] = Some(start_master(dir.path(), &addresses[1]));
    for (d, expected) in descriptors.iter().zip(&written) {
        let read =
            read_partition(&config, d.clone(), 2, Duration::from_secs(30)).expect("read back");
        for sub in 0..2 {
            assert_buffers_eq(
                &read[&sub],
                &expected[&sub],
                &format!("{} sub {sub}", d.partition),
            );
        }
    }
    // Within its settling time (a worker timeout from its start) the
    // restarted master may miss the worker, which must not count as lost:
    // wait until it says it has settled, then two more of the agent's
    // 200 ms polls.
    terrace_tests::wait_until(
        Duration::from_secs(10),
        "the restarted master settles",
        || listing(&addresses[1]).is_some_and(|l| l.settled),
    );
    terrace_tests::hold(Duration::from_millis(400));
    assert!(
        recorder.lost.lock().expect("lock").is_empty(),
        "no partition may be reported lost: {:?}",
        recorder.lost.lock().expect("lock")
    );
    assert!(recorder.fatal.lock().expect("lock").is_empty());

    // Released through the agent: every live master forgets the job.
    agent.unregister_job(&key.job).expect("unregister");
    for a in &addresses[1..] {
        assert!(!knows_job(a, &key.job), "master {a} released the job");
    }
    agent.close();
}
