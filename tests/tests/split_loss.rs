//! A lost later part of a split partition is reported, once (real
//! processes: a master and three `terrace worker`s with a 1 MiB split
//! size). The master agent placed only each partition's first part; the
//! masters learn the later parts from the producers' allocations and the
//! workers' heartbeats, and when a worker is lost the agent asks them which
//! of its partitions had a part there.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use terrace_master_agent::MasterAgent;
use terrace_tests::{RecordingWriter, ServiceProcess, logs, payload, producer, read_partition};
use terrace_tier_api::{AgentConfig, Buffer, ErrorKind, TierMasterAgent, TierShuffleHandler};

fn start_master(dir: &Path) -> ServiceProcess {
    let config = dir.join("master.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nworker_timeout = \"3s\"\n",
    )
    .expect("write master config");
    ServiceProcess::start(&["master", "--config", config.to_str().expect("utf-8 path")])
}

fn start_worker(dir: &Path, index: usize, master: &str) -> ServiceProcess {
    let path = dir.join(format!("worker-{index}.toml"));
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nworker_id = \"w{index}\"\nmaster_addresses = [\"{master}\"]\n\
             heartbeat_interval = \"200ms\"\nmemory_budget = \"64MiB\"\nmax_frame_size = \"4MiB\"\n\
             split_size = \"1MiB\"\ndata_dirs = [\"{}\"]\n",
            dir.join(format!("d{index}")).display()
        ),
    )
    .expect("write worker config");
    ServiceProcess::start(&["worker", "--config", path.to_str().expect("utf-8 path")])
}

#[test]
fn a_lost_later_part_of_a_split_partition_is_reported_once() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = start_master(root);
    let m = master.address.clone();
    let mut workers: Vec<Option<ServiceProcess>> =
        (0..3).map(|i| Some(start_worker(root, i, &m))).collect();
    terrace_tests::wait_for(Duration::from_secs(20), "three workers registered", || {
        terrace_tests::list_workers(&m)
            .ok()
            .filter(|l| l.workers.len() == 3)
    });
    let config = AgentConfig {
        master_addresses: vec![m.clone()],
        ..terrace_tests::small_agent_config()
    };
    let agent = MasterAgent::with_poll_interval(config.clone(), Duration::from_millis(200))
        .expect("master agent");
    const JOB: u8 = 8;
    const SUBS: u32 = 2;
    let job = terrace_tests::key(JOB, 0).job;
    let lost = Arc::new(terrace_tests::LostPartitions::default());
    agent
        .register_job(&job, Arc::clone(&lost) as Arc<dyn TierShuffleHandler>)
        .expect("register");

    // Partition 1: 3 MiB through a 1 MiB split size, a chain of parts.
    let chained = agent
        .add_partition_and_get_shuffle_descriptor(&job, &terrace_tests::key(JOB, 1).partition, SUBS)
        .expect("place");
    let mut writer = RecordingWriter::new(producer(&config, chained.clone(), SUBS, false));
    for i in 0..48 {
        for sub in 0..SUBS {
            writer
                .write(sub, Buffer::data(payload(1, sub, i, 32 * 1024)))
                .expect("write");
        }
    }
    writer.end_and_close(SUBS);
    let parts = writer.agent.parts().to_vec();
    assert!(parts.len() >= 2, "the partition split: {parts:?}");
    assert_eq!(parts[0], chained.worker_id);
    // The worker of the second part: lost below. Its first part's worker
    // stays, so only the later part tells the agent.
    let victim = parts[1].clone();
    // Partition 2: small, on a worker that stays.
    let whole = (2..10)
        .map(|n| {
            agent
                .add_partition_and_get_shuffle_descriptor(
                    &job,
                    &terrace_tests::key(JOB, n).partition,
                    SUBS,
                )
                .expect("place")
        })
        .find(|d| d.worker_id != victim)
        .expect("placement spreads a job's partitions");
    terrace_tests::write_partition(&config, whole.clone(), 2, SUBS, 4, 1024);
    // Every master knows the part from the producer's allocation already;
    // a heartbeat of the victim confirms it.
    terrace_tests::hold(Duration::from_millis(500));

    let index: usize = victim[1..].parse().expect("worker ids are w0..w2");
    workers[index].take().expect("running").kill();
    let key = chained.key().expect("key");
    terrace_tests::wait_for(
        Duration::from_secs(20),
        "the split partition reported lost",
        || (!lost.reported().is_empty()).then_some(()),
    );
    // A few more polls: reported once, and nothing else.
    terrace_tests::hold(Duration::from_secs(1));
    assert_eq!(
        lost.reported(),
        vec![key.partition.clone()],
        "the partition whose later part was lost, once"
    );
    // Its readers would have failed at that part: the report is right.
    let read = read_partition(&config, chained, SUBS, Duration::from_secs(30))
        .expect_err("a part is gone");
    assert_eq!(read.kind(), ErrorKind::PartitionNotFound, "{read}");
    // The other partition reads back whole.
    let got = read_partition(&config, whole, SUBS, Duration::from_secs(30)).expect("read");
    assert_eq!(got.len(), SUBS as usize);
    agent.close();
}
