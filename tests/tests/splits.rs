//! Partition splits on real processes: a master and three workers with a
//! tiny split size. A producer's partition outgrows one worker after another
//! and becomes a chain of three parts; a consumer that reads while it is
//! written follows the redirects and gets every buffer exactly; the worker in
//! the middle of the chain, SIGKILLed and restarted after sealing, serves its
//! part again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use terrace_tests::logs;

use terrace_master_agent::MasterAgent;
use terrace_tests::{
    RecordingWriter, ServiceProcess, assert_buffers_eq, closed_address, payload, producer,
    read_partition, worker_stats,
};
use terrace_tier_api::{AgentConfig, Buffer, ByteSize, ShuffleDescriptor, TierMasterAgent};

const SPLIT_SIZE: &str = "128KiB";

fn worker_config(dir: &Path, index: usize, master: &str, listen: &str) -> String {
    let path = dir.join(format!("worker-{index}.toml"));
    std::fs::write(
        &path,
        format!(
            "listen = \"{listen}\"\nworker_id = \"w{index}\"\ndata_dirs = [\"{}\"]\n\
             master_addresses = [\"{master}\"]\nheartbeat_interval = \"200ms\"\n\
             memory_budget = \"64MiB\"\nmax_frame_size = \"4MiB\"\nsplit_size = \"{SPLIT_SIZE}\"\n",
            dir.join(format!("data-{index}")).display()
        ),
    )
    .expect("write worker config");
    path.to_str().expect("utf-8 path").to_string()
}

fn wait_for_workers(agent_config: &AgentConfig, n: usize) {
    let master = &agent_config.master_addresses[0];
    terrace_tests::wait_until(
        Duration::from_secs(20),
        &format!("{n} workers register"),
        || {
            let listed = terrace_tests::list_workers(master);
            matches!(listed, Ok(list) if list.workers.len() == n)
        },
    );
}

/// Fields drop in order: the agent and workers go before the master and files.
struct Cluster {
    agent: MasterAgent,
    workers: Vec<Option<ServiceProcess>>,
    _master: ServiceProcess,
    _dir: tempfile::TempDir,
    configs: Vec<String>,
    config: AgentConfig,
}

impl Cluster {
    /// A master and three workers with a tiny split size, and a master agent.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let master = ServiceProcess::start(&["master", "--listen", "127.0.0.1:0"]);
        let addresses: Vec<String> = (0..3).map(|_| closed_address()).collect();
        let configs: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| worker_config(dir.path(), i, &master.address, a))
            .collect();
        let workers = configs
            .iter()
            .map(|c| Some(ServiceProcess::start(&["worker", "--config", c])))
            .collect();
        let config = AgentConfig {
            master_addresses: vec![master.address.clone()],
            segment_size: ByteSize::kib(64),
            push_size: ByteSize::kib(32),
            ..terrace_tests::small_agent_config()
        };
        wait_for_workers(&config, 3);
        let agent = MasterAgent::new(config.clone()).expect("master agent");
        Cluster {
            agent,
            workers,
            _master: master,
            _dir: dir,
            configs,
            config,
        }
    }

    fn place(&self, job: u8, subs: u32) -> ShuffleDescriptor {
        let key = terrace_tests::key(job, 1);
        self.agent
            .register_job(&key.job, Arc::new(terrace_tests::Ignore))
            .expect("register job");
        self.agent
            .add_partition_and_get_shuffle_descriptor(&key.job, &key.partition, subs)
            .expect("place the partition")
    }
}

/// Writes `rounds` 4 KiB buffers to each of `subs` (only subpartition 0 when
/// `broadcast`), then the end event, flushing often so the worker's split
/// answers come back while the producer writes. Returns the writer (closed)
/// and the workers its parts went to.
fn write_chain(
    config: &AgentConfig,
    descriptor: &ShuffleDescriptor,
    subs: u32,
    broadcast: bool,
    rounds: u32,
) -> (RecordingWriter, Vec<String>) {
    let mut writer = RecordingWriter::new(producer(config, descriptor.clone(), subs, broadcast));
    let written = if broadcast { 1 } else { subs };
    for i in 0..rounds {
        for sub in 0..written {
            writer
                .write(sub, Buffer::data(payload(1, sub, i, 4096)))
                .expect("write");
        }
        if i % 8 == 0 {
            writer.agent.flush().expect("flush");
            // Paced: lets the flush reach the worker so parts fill one by one.
            terrace_tests::hold(Duration::from_millis(5));
        }
    }
    let parts = writer.end_and_close(written);
    (writer, parts)
}

#[test]
fn a_partition_split_over_three_workers_reads_exactly_during_and_after_a_middle_restart() {
    let _logs = logs::capture();
    let mut cluster = Cluster::start();
    let config = cluster.config.clone();
    const SUBS: u32 = 4;
    let descriptor = cluster.place(7, SUBS);
    // The consumer starts before the producer writes a byte.
    let reader = {
        let (config, descriptor) = (config.clone(), descriptor.clone());
        std::thread::spawn(move || {
            read_partition(&config, descriptor, SUBS, Duration::from_secs(60))
        })
    };
    // 4 subpartitions x 96 buffers x 4 KiB = 1.5 MiB, past two split sizes.
    let (writer, parts) = write_chain(&config, &descriptor, SUBS, false, 96);
    assert_eq!(
        parts.len(),
        3,
        "the partition is a chain over all three workers: {parts:?}"
    );
    assert_eq!(parts[0], descriptor.worker_id);
    let read = terrace_tests::join_within(reader, Duration::from_secs(90), "reader")
        .expect("the concurrent reader follows the chain");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &read[&sub],
            &writer.expected[&sub],
            &format!("subpartition {sub}, read while written"),
        );
    }
    for (i, worker) in cluster.workers.iter().enumerate() {
        let stats = worker_stats(&worker.as_ref().expect("running").address);
        eprintln!(
            "worker w{i}: pushed {} B, read {} B",
            stats.bytes_pushed, stats.bytes_read
        );
        assert_eq!(stats.partitions, 1, "w{i} holds one part");
        assert!(stats.bytes_pushed > 0, "w{i} stored data");
        assert_eq!(
            stats.bytes_read, stats.bytes_pushed,
            "w{i}: every byte read once"
        );
    }

    // The middle part's worker dies and comes back on the same directory and
    // address: it serves its part, redirect included, again.
    let middle: usize = parts[1][1..].parse().expect("worker ids are w0..w2");
    cluster.workers[middle].take().expect("running").kill();
    cluster.workers[middle] = Some(ServiceProcess::start(&[
        "worker",
        "--config",
        &cluster.configs[middle],
    ]));
    let again = read_partition(&config, descriptor.clone(), SUBS, Duration::from_secs(60))
        .expect("the chain reads again after the middle worker's restart");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &again[&sub],
            &writer.expected[&sub],
            &format!("subpartition {sub}, after the restart"),
        );
    }

    // Releasing the partition on its first worker releases every part.
    cluster
        .agent
        .release_partition(&descriptor)
        .expect("release");
    for (i, worker) in cluster.workers.iter().enumerate() {
        let address = &worker.as_ref().expect("running").address;
        terrace_tests::wait_until(
            Duration::from_secs(10),
            &format!("w{i} releases its part"),
            || worker_stats(address).partitions == 0,
        );
    }
    cluster.agent.close();
}

/// A broadcast partition (stored once, read by every subpartition) splits
/// the same way: every reader follows the redirects to the same bytes.
#[test]
fn a_broadcast_partition_splits_and_every_subpartition_reads_it_all() {
    let _logs = logs::capture();
    let cluster = Cluster::start();
    const SUBS: u32 = 3;
    let descriptor = cluster.place(8, SUBS);
    // 1 stored subpartition x 160 buffers x 4 KiB = 640 KiB.
    let (writer, parts) = write_chain(&cluster.config, &descriptor, SUBS, true, 160);
    assert_eq!(parts.len(), 3, "{parts:?}");
    let read = read_partition(&cluster.config, descriptor, SUBS, Duration::from_secs(60))
        .expect("read the broadcast chain");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &read[&sub],
            &writer.expected[&0],
            &format!("broadcast read by subpartition {sub}"),
        );
    }
    cluster.agent.close();
}

/// A worker whose disk cannot take another memory budget's worth of data
/// (and that has no object store) asks producers to split from their first
/// push, however small their partition; one with room does not.
#[test]
fn a_worker_short_of_room_asks_for_a_split_at_once() {
    let _logs = logs::capture();
    use terrace_tests::raw::{Raw, create, push};
    let dir = tempfile::tempdir().expect("temp dir");
    let push_reply = |capacity: ByteSize, job: u8| {
        let worker = terrace_tests::TestWorker::start(terrace_worker::WorkerConfig {
            data_dirs: vec![dir.path().join(format!("data-{job}"))],
            dir_capacity: Some(capacity),
            dir_reserve: ByteSize(0),
            memory_budget: ByteSize::mib(64),
            max_frame_size: ByteSize::mib(4),
            ..terrace_worker::WorkerConfig::default()
        });
        let key = terrace_tests::key(job, 1);
        let mut raw = Raw::handshaken(&worker);
        raw.send(&create(2, &key, 1), &[]);
        raw.expect_ack(2);
        let (header, body) = push(3, &key, &[Buffer::data(payload(1, 0, 0, 1000))]);
        raw.send(&terrace_proto::Message::PushData(header), &body);
        let reply = match raw.read().0 {
            terrace_proto::Message::PushAck(ack) if ack.request_id == 3 => ack.split,
            other => panic!("expected a PushAck, got {other:?}"),
        };
        worker.stop();
        reply
    };
    assert!(
        push_reply(ByteSize::mib(8), 1),
        "8 MiB of disk for a 64 MiB budget"
    );
    assert!(!push_reply(ByteSize::gib(1), 2), "1 GiB of disk has room");
}
