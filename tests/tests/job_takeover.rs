//! A job taken over by a new coordinator (an engine's JobManager failing
//! over): the old master agent detaches the job instead of dropping it, the
//! data stays on the workers, and a new agent finds which partitions are
//! finished and what each holds per subpartition.

use std::sync::Arc;
use std::time::Duration;
use terrace_tests::logs;

use terrace_master_agent::MasterAgent;
use terrace_tests::{
    Ignore, RecordingWriter, ServiceProcess, assert_buffers_eq, payload, producer, read_partition,
    write_partition,
};
use terrace_tier_api::{AgentConfig, Buffer, PartitionId, TierMasterAgent};

const SUBS: u32 = 4;

fn wait_for_one_worker(master: &str) {
    terrace_tests::wait_until(Duration::from_secs(20), "a worker registers", || {
        let listed = terrace_tests::list_workers(master);
        matches!(listed, Ok(ref l) if l.workers.len() == 1)
    });
}

#[test]
fn a_detached_job_keeps_its_data_and_a_new_agent_gets_each_finished_partitions_bytes() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let master = ServiceProcess::start(&["master", "--listen", "127.0.0.1:0"]);
    let data = dir.path().join("data");
    let _worker = ServiceProcess::start(&[
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--master",
        &master.address,
    ]);
    wait_for_one_worker(&master.address);
    let config = AgentConfig {
        master_addresses: vec![master.address.clone()],
        ..terrace_tests::small_agent_config()
    };
    let old = MasterAgent::new(config.clone()).expect("master agent");
    let job = terrace_tests::key(21, 0).job;
    old.register_job(&job, Arc::new(Ignore)).expect("register");
    let place = |agent: &MasterAgent, n: u32| {
        let partition = terrace_tests::key(21, n).partition;
        agent
            .add_partition_and_get_shuffle_descriptor(&job, &partition, SUBS)
            .expect("place")
    };
    // Finished: written and sealed, subpartition 3 twice as much as the others.
    let finished = place(&old, 1);
    let mut expected = write_partition(&config, finished.clone(), 1, SUBS, 6, 1000);
    // Written but never sealed (its producer is still running).
    let open = place(&old, 2);
    let mut writer = RecordingWriter::new(producer(&config, open.clone(), SUBS, false));
    for i in 0..40 {
        writer
            .write(i % SUBS, Buffer::data(payload(2, i % SUBS, i, 2000)))
            .expect("write");
    }
    // Placed but never written to.
    let empty = place(&old, 3);

    // The old coordinator loses its leadership: the job stays on the cluster.
    old.detach_job(&job).expect("detach");
    old.close();
    let still = read_partition(&config, finished.clone(), SUBS, Duration::from_secs(20))
        .expect("a detached job's data is still served");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &still[&sub],
            &expected.remove(&sub).expect("sub"),
            "detached",
        );
    }

    // The new coordinator takes the job over.
    let new = MasterAgent::new(config.clone()).expect("master agent");
    new.register_job(&job, Arc::new(Ignore))
        .expect("register again");
    let ids: Vec<PartitionId> = [&finished, &open, &empty]
        .iter()
        .map(|d| d.key().expect("key").partition)
        .chain([terrace_tests::key(21, 9).partition])
        .collect();
    // Nothing is known of partitions the new agent was not given.
    let unknown = new
        .partition_metrics(&job, &ids, Duration::from_secs(20))
        .expect("metrics");
    assert!(unknown.is_empty(), "{unknown:?}");
    // The old agent's placements, as an engine's snapshot hands them over.
    new.restore_partitions(
        &job,
        [&finished, &open, &empty]
            .iter()
            .map(|d| (d.key().expect("key").partition, d.worker_id.clone()))
            .collect(),
    )
    .expect("restore");
    let metrics = new
        .partition_metrics(&job, &ids, Duration::from_secs(20))
        .expect("metrics");
    assert_eq!(
        metrics.keys().cloned().collect::<Vec<_>>(),
        vec![ids[0].clone()],
        "only the sealed partition is finished: {metrics:?}"
    );
    let bytes = &metrics[&ids[0]];
    assert_eq!(bytes.len(), SUBS as usize, "one entry per subpartition");
    // Six 1000-byte buffers and the END event per subpartition, with their
    // batch headers: every subpartition holds the same, a little more than
    // its payload.
    for (sub, &b) in bytes.iter().enumerate() {
        assert!(
            (6000..6000 + 512).contains(&b),
            "subpartition {sub} holds {b} bytes: {bytes:?}"
        );
        assert_eq!(b, bytes[0], "{bytes:?}");
    }
    // Sealing the open partition finishes it.
    writer.close().expect("seal");
    let metrics = new
        .partition_metrics(&job, &ids[1..2], Duration::from_secs(20))
        .expect("metrics");
    let open_bytes: u64 = metrics[&ids[1]].iter().sum();
    assert!(open_bytes > 40 * 2000, "{metrics:?}");
    new.unregister_job(&job).expect("unregister");
    new.close();
}
