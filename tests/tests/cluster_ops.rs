//! Placement and decommission on real processes (a master and `terrace
//! worker` processes):
//! - workers that are full, have a failed data directory, or are
//!   decommissioning get no new partitions while others can take them, one
//!   job's partitions spread over the rest, and `terrace status` shows why;
//! - a worker decommissioned under a running job: its producers split away,
//!   readers get every buffer exactly, and it exits once the job is released;
//! - with an object store, a decommissioned worker hands its sealed
//!   partitions (first parts and later parts of split chains) to the others
//!   and exits before the job ends; readers of the old descriptors still get
//!   every buffer, nothing is reported lost, and its objects are gone;
//! - a producer whose worker died before its first push goes elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use terrace_tests::logs;

use terrace_consumer_agent::ConsumerAgent;
use terrace_master_agent::MasterAgent;
use terrace_tests::{
    RecordingWriter, ServiceProcess, assert_buffers_eq, payload, producer, read_partition,
    terrace_bin, write_partition,
};
use terrace_tier_api::protocol::{AllocatePartition, ReleasePartition, WorkerList, WorkerLoad};
use terrace_tier_api::{
    AgentConfig, Buffer, ConsumerSpec, ErrorKind, InputChannelId, PartitionId, ShuffleDescriptor,
    TierConsumerAgent, TierError, TierMasterAgent, TierShuffleHandler, WorkerId,
};

/// A master that drops a worker after 4 s without heartbeats.
fn start_master_dropping_workers_after_4s(dir: &Path) -> ServiceProcess {
    let config = dir.join("master.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nworker_timeout = \"4s\"\n",
    )
    .expect("write master config");
    ServiceProcess::start(&["master", "--config", config.to_str().expect("utf-8 path")])
}

/// Starts worker `w{index}` with `extra` config lines (which must include
/// `data_dirs`).
fn start_worker(dir: &Path, index: usize, master: &str, extra: &str) -> ServiceProcess {
    let path = dir.join(format!("worker-{index}.toml"));
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nworker_id = \"w{index}\"\nmaster_addresses = [\"{master}\"]\n\
             heartbeat_interval = \"200ms\"\nmemory_budget = \"64MiB\"\nmax_frame_size = \"4MiB\"\n{extra}"
        ),
    )
    .expect("write worker config");
    ServiceProcess::start(&["worker", "--config", path.to_str().expect("utf-8 path")])
}

fn data_dirs(dirs: &[&Path]) -> String {
    let quoted: Vec<String> = dirs
        .iter()
        .map(|d| format!("\"{}\"", d.display()))
        .collect();
    format!("data_dirs = [{}]\n", quoted.join(", "))
}

fn list_workers(master: &str) -> WorkerList {
    terrace_tests::list_workers(master)
        .unwrap_or_else(|e| panic!("master answered ListWorkers with {e}"))
}

/// Polls the master's worker list until `check` holds (at most 20 s).
fn wait_for_list(master: &str, what: &str, check: impl Fn(&WorkerList) -> bool) {
    let mut last = None;
    let done = terrace_tests::wait::poll_until(Duration::from_secs(20), || {
        let list = list_workers(master);
        let ok = check(&list);
        last = Some(list);
        ok
    });
    assert!(
        done,
        "within 20 s: {what}; the master lists {:#?}",
        last.map(|l| l.workers)
    );
}

fn load_of<'a>(list: &'a WorkerList, id: &str) -> Option<&'a WorkerLoad> {
    list.workers
        .iter()
        .find(|w| w.worker.id.as_str() == id)
        .map(|w| &w.load)
}

/// Runs `terrace <args>` to its end (at most 60 s) and returns its stdout.
fn terrace(args: &[&str]) -> String {
    let out = terrace_tests::run_terrace(args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "terrace {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Waits (at most `limit`) for a service process to exit by itself.
fn wait_for_exit(process: &mut ServiceProcess, limit: Duration) -> std::process::ExitStatus {
    terrace_tests::wait_for(limit, "the process exits", || {
        process.child.try_wait().expect("poll the process")
    })
    .0
}

/// Runs `terrace worker decommission --wait ADDRESS` in the background.
fn start_decommission(address: &str) -> std::process::Child {
    std::process::Command::new(terrace_bin())
        .args(["worker", "decommission", "--wait", address])
        .env("TERRACE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn terrace worker decommission")
}

/// What a `start_decommission` command printed, once it ends (at most 30 s).
fn decommission_output(mut decommission: std::process::Child) -> String {
    terrace_tests::join_within(
        std::thread::spawn(move || {
            decommission.wait().expect("wait");
            let mut out = String::new();
            std::io::Read::read_to_string(decommission.stdout.as_mut().expect("stdout"), &mut out)
                .expect("read stdout");
            out
        }),
        Duration::from_secs(30),
        "terrace worker decommission --wait",
    )
}

fn allocate(master: &str, job: u8, partition: u32, exclude: &[&str]) -> Result<String, TierError> {
    let key = terrace_tests::key(job, partition);
    let allocated = terrace_tests::call(
        master,
        AllocatePartition {
            key,
            num_subpartitions: 1,
            exclude: exclude
                .iter()
                .map(|s| WorkerId::new(*s).expect("worker id"))
                .collect(),
            relocated_from: None,
        },
    )?;
    Ok(allocated.worker.id.into_string())
}

#[test]
fn full_unhealthy_and_decommissioning_workers_get_no_partitions_and_a_job_spreads() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = ServiceProcess::start(&["master", "--listen", "127.0.0.1:0"]);
    let m = master.address.as_str();
    let mut workers = Vec::new();
    for i in 0..2 {
        workers.push(start_worker(
            root,
            i,
            m,
            &data_dirs(&[&root.join(format!("d{i}"))]),
        ));
    }
    // w2: 8 MiB of disk for a 64 MiB memory budget, no object store: full.
    workers.push(start_worker(
        root,
        2,
        m,
        &format!(
            "{}dir_capacity = \"8MiB\"\ndir_reserve = \"0B\"\n",
            data_dirs(&[&root.join("d2")])
        ),
    ));
    // w3: two directories of equal room; the second will fail its writes.
    let (good, bad) = (root.join("d3a"), root.join("d3b"));
    workers.push(start_worker(
        root,
        3,
        m,
        &format!(
            "{}dir_capacity = \"1GiB\"\ndir_reserve = \"0B\"\n",
            data_dirs(&[&good, &bad])
        ),
    ));
    // w4: will be decommissioned while it holds a partition.
    workers.push(start_worker(root, 4, m, &data_dirs(&[&root.join("d4")])));
    wait_for_list(m, "five workers registered", |l| l.workers.len() == 5);

    let config = AgentConfig {
        master_addresses: vec![m.to_string()],
        ..terrace_tests::small_agent_config()
    };
    // The failing directory: a file where the directory was. The next flush
    // on w3 (to the directory with the most room, ties to the last) fails
    // there, moves to the good one, and marks it unhealthy.
    std::fs::remove_dir_all(&bad).expect("remove the directory");
    std::fs::write(&bad, b"not a directory").expect("put a file in its place");
    let on = |w: &ServiceProcess, id: &str, job: u8| {
        ShuffleDescriptor::new(&terrace_tests::key(job, 1), id, w.address.clone())
    };
    let read_back = |w: &ServiceProcess, id: &str, job: u8, written: &HashMap<u32, Vec<Buffer>>| {
        let read = read_partition(&config, on(w, id, job), 1, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{id} serves its partition: {e}"));
        assert_buffers_eq(&read[&0], &written[&0], &format!("{id}'s partition"));
    };
    let written_w3 = write_partition(&config, on(&workers[3], "w3", 30), 1, 1, 8, 4096);
    // w3 serves what it moved to its good directory.
    read_back(&workers[3], "w3", 30, &written_w3);
    // w4 holds a partition, so that decommissioning it does not end at once.
    let written_w4 = write_partition(&config, on(&workers[4], "w4", 40), 1, 1, 8, 4096);
    let out = terrace(&["worker", "decommission", &workers[4].address]);
    assert!(out.contains("is decommissioning"), "{out}");

    wait_for_list(
        m,
        "w2 full, w3 with one unhealthy dir, w4 decommissioning",
        |l| {
            load_of(l, "w2").is_some_and(|l| l.full)
                && load_of(l, "w3").is_some_and(|l| l.unhealthy_dirs == 1 && !l.full)
                && load_of(l, "w4").is_some_and(|l| l.decommissioning)
                && load_of(l, "w0").is_some_and(|l| !l.full && l.unhealthy_dirs == 0)
        },
    );

    // One job's twelve partitions: six on each healthy worker, none elsewhere.
    let agent = MasterAgent::new(config.clone()).expect("master agent");
    let job = terrace_tests::key(9, 0).job;
    agent
        .register_job(&job, Arc::new(terrace_tests::Ignore))
        .expect("register");
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    for p in 0..12 {
        let key = terrace_tests::key(9, p);
        let d = agent
            .add_partition_and_get_shuffle_descriptor(&job, &key.partition, 4)
            .expect("place");
        *placed.entry(d.worker_id).or_default() += 1;
    }
    assert_eq!(
        placed,
        [("w0".to_string(), 6), ("w1".to_string(), 6)].into(),
        "a job's partitions go to the healthy workers, spread evenly"
    );
    // With the healthy ones excluded, the failed-disk worker is the last
    // resort; the full and the decommissioning one never.
    assert_eq!(allocate(m, 10, 1, &["w0", "w1"]).expect("w3"), "w3");
    let err = allocate(m, 10, 2, &["w0", "w1", "w3"]).expect_err("nobody is left");
    assert_eq!(err.kind(), ErrorKind::NoWorkers);
    // The kind (NoWorkers) cannot say why each worker was passed over; the text does.
    assert!(
        err.message().contains("1 decommissioning") && err.message().contains("1 full"),
        "{err}"
    );

    // `terrace status` shows each worker's state and figures.
    let status: serde_json::Value =
        serde_json::from_str(&terrace(&["status", "--master", m, "--json"])).expect("json");
    let by_id: BTreeMap<String, serde_json::Value> = status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| (w["worker_id"].as_str().expect("id").to_string(), w.clone()))
        .collect();
    assert_eq!(by_id["w0"]["load"]["state"], "serving");
    assert_eq!(by_id["w2"]["load"]["state"], "full");
    assert_eq!(by_id["w3"]["load"]["unhealthy_dirs"], 1);
    assert_eq!(by_id["w4"]["load"]["state"], "decommissioning");
    assert!(by_id["w0"]["load"]["memory_free_bytes"].as_u64() > Some(0));
    let table = terrace(&["status", "--master", m]);
    assert!(table.contains("decommission: 1 partition(s)"), "{table}");

    // The decommissioning worker still serves its partition, and exits once
    // it is released.
    read_back(&workers[4], "w4", 40, &written_w4);
    let released = terrace_tests::call(
        &workers[4].address,
        ReleasePartition {
            key: terrace_tests::key(40, 1),
        },
    );
    assert!(released.is_ok(), "{released:?}");
    let status = wait_for_exit(&mut workers[4], Duration::from_secs(20));
    assert!(status.success(), "w4 exits cleanly: {status}");
    agent.close();
}

/// Writes `rounds` 4 KiB buffers to each of `subs` subpartitions, flushing
/// every 4 rounds, waiting at `barrier` twice after round `pause` (while the
/// test decommissions a worker), then waiting for each round's push to be
/// answered, then the end event. Returns the writer
/// (closed) and the workers its parts went to.
fn write_with_a_pause(
    config: &AgentConfig,
    descriptor: ShuffleDescriptor,
    partition: u32,
    subs: u32,
    rounds: u32,
    pause: u32,
    barrier: &Barrier,
) -> (RecordingWriter, Vec<String>) {
    let mut writer = RecordingWriter::new(producer(config, descriptor, subs, false));
    for i in 0..rounds {
        for sub in 0..subs {
            writer
                .write(sub, Buffer::data(payload(partition, sub, i, 4096)))
                .expect("write");
        }
        if i > pause {
            // Each push answered before the next write, so the producer
            // sees a split request at its next write (pipelined pushes could
            // all be sent before the first answer comes back).
            writer.agent.flush_and_wait().expect("flush");
        } else if i % 4 == 0 {
            writer.agent.flush().expect("flush");
        }
        if i == pause {
            writer.agent.flush().expect("flush");
            barrier.wait();
            barrier.wait();
        }
    }
    let parts = writer.end_and_close(subs);
    (writer, parts)
}

#[test]
fn a_worker_decommissioned_under_a_running_job_loses_nothing_and_exits_after_release() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = ServiceProcess::start(&["master", "--listen", "127.0.0.1:0"]);
    let m = master.address.clone();
    let mut workers: Vec<ServiceProcess> = (0..3)
        .map(|i| start_worker(root, i, &m, &data_dirs(&[&root.join(format!("d{i}"))])))
        .collect();
    wait_for_list(&m, "three workers registered", |l| l.workers.len() == 3);
    let config = AgentConfig {
        master_addresses: vec![m.clone()],
        ..terrace_tests::small_agent_config()
    };
    let agent = MasterAgent::new(config.clone()).expect("master agent");
    const JOB: u8 = 5;
    const PARTITIONS: u32 = 6;
    const SUBS: u32 = 3;
    let job = terrace_tests::key(JOB, 0).job;
    agent
        .register_job(&job, Arc::new(terrace_tests::Ignore))
        .expect("register");
    let descriptors: Vec<ShuffleDescriptor> = (0..PARTITIONS)
        .map(|p| {
            agent
                .add_partition_and_get_shuffle_descriptor(
                    &job,
                    &terrace_tests::key(JOB, p).partition,
                    SUBS,
                )
                .expect("place")
        })
        .collect();
    let leaving = descriptors[0].worker_id.clone();
    let leaving_index: usize = leaving[1..].parse().expect("worker ids are w0..w2");
    let on_leaving = descriptors
        .iter()
        .filter(|d| d.worker_id == leaving)
        .count();
    assert_eq!(on_leaving, 2, "six partitions spread two per worker");

    // Readers start before a byte is written and read while it is.
    let readers: Vec<_> = descriptors
        .iter()
        .map(|d| {
            let (config, d) = (config.clone(), d.clone());
            std::thread::spawn(move || read_partition(&config, d, SUBS, Duration::from_secs(90)))
        })
        .collect();
    let barrier = Arc::new(Barrier::new(PARTITIONS as usize + 1));
    let writers: Vec<_> = descriptors
        .iter()
        .enumerate()
        .map(|(p, d)| {
            let (config, d, barrier) = (config.clone(), d.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                write_with_a_pause(&config, d, p as u32, SUBS, 48, 16, &barrier)
            })
        })
        .collect();

    // Every producer has pushed a third of its data: decommission one worker
    // with the real command, which waits for it to exit.
    barrier.wait();
    let decommission = start_decommission(&workers[leaving_index].address);
    wait_for_list(&m, "the master sees the worker decommissioning", |l| {
        load_of(l, &leaving).is_some_and(|l| l.decommissioning)
    });
    barrier.wait();

    // While it leaves, new partitions go elsewhere.
    for p in 100..106 {
        assert_ne!(
            allocate(&m, JOB, p, &[]).expect("placed"),
            leaving,
            "no new partition on a decommissioning worker"
        );
    }
    let mut expected = Vec::new();
    for (p, writer) in writers.into_iter().enumerate() {
        let (writer, parts) = terrace_tests::join_within(writer, Duration::from_secs(90), "writer");
        if descriptors[p].worker_id == leaving {
            assert!(
                parts.len() >= 2 && !parts[1..].contains(&leaving),
                "partition {p} split away from the decommissioning worker: {parts:?}"
            );
        }
        expected.push(writer.expected);
    }
    for (p, reader) in readers.into_iter().enumerate() {
        let read = terrace_tests::join_within(reader, Duration::from_secs(90), "reader")
            .unwrap_or_else(|e| panic!("partition {p} reads to its end: {e}"));
        for sub in 0..SUBS {
            assert_buffers_eq(
                &read[&sub],
                &expected[p][&sub],
                &format!("partition {p} subpartition {sub}"),
            );
        }
    }
    // Sealed data stays served while the job lives: read it all again.
    for (p, d) in descriptors.iter().enumerate() {
        let again = read_partition(&config, d.clone(), SUBS, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("partition {p} reads again: {e}"));
        assert_buffers_eq(
            &again[&0],
            &expected[p][&0],
            &format!("partition {p} again"),
        );
    }
    assert!(
        workers[leaving_index]
            .child
            .try_wait()
            .expect("poll")
            .is_none(),
        "the worker stays while it holds the job's data"
    );

    // The job ends: the worker drops its data and exits, and the command
    // that waited for it says so.
    agent.unregister_job(&job).expect("unregister");
    let status = wait_for_exit(&mut workers[leaving_index], Duration::from_secs(30));
    assert!(
        status.success(),
        "the decommissioned worker exits cleanly: {status}"
    );
    let out = decommission_output(decommission);
    assert!(
        out.contains("is decommissioning") && out.contains("has exited"),
        "{out}"
    );
    agent.close();
}

/// The worker a partition was placed on is SIGKILLed before its producer
/// starts: the producer tells a master, gets another worker and writes the
/// whole partition there; a consumer that started first (from the same
/// descriptor) finds it through the masters and reads every buffer; when
/// the master drops the dead worker, the engine is not told the relocated
/// partition is lost; releasing it through the descriptor reaches the new
/// worker.
#[test]
fn a_producer_whose_worker_died_before_its_first_push_goes_elsewhere_and_loses_nothing() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = start_master_dropping_workers_after_4s(root);
    let m = master.address.clone();
    let mut workers: Vec<Option<ServiceProcess>> = (0..2)
        .map(|i| {
            Some(start_worker(
                root,
                i,
                &m,
                &data_dirs(&[&root.join(format!("d{i}"))]),
            ))
        })
        .collect();
    wait_for_list(&m, "two workers registered", |l| l.workers.len() == 2);
    let config = AgentConfig {
        master_addresses: vec![m.clone()],
        ..terrace_tests::small_agent_config()
    };
    const JOB: u8 = 6;
    const SUBS: u32 = 2;
    let (agent, job, lost) = terrace_tests::agent_with_job(&config, JOB);
    let descriptor = agent
        .add_partition_and_get_shuffle_descriptor(&job, &terrace_tests::key(JOB, 1).partition, SUBS)
        .expect("place");
    let dead: usize = descriptor.worker_id[1..]
        .parse()
        .expect("worker ids are w0, w1");
    workers[dead].take().expect("running").kill();

    // The consumer starts first and waits for the partition to show up.
    let reader = {
        let (config, descriptor) = (config.clone(), descriptor.clone());
        std::thread::spawn(move || {
            read_partition(&config, descriptor, SUBS, Duration::from_secs(30))
        })
    };
    // Lets the reader start asking for the partition before it exists (its
    // wait is the point; it would also pass if the reader started later).
    terrace_tests::hold(Duration::from_millis(300));
    let mut writer = RecordingWriter::new(producer(&config, descriptor.clone(), SUBS, false));
    let alive = format!("w{}", 1 - dead);
    // Reported unreachable (by the consumer and the producer), the dead
    // worker gets no new partitions although the master still lists it.
    let listed = list_workers(&m);
    assert_eq!(listed.workers.len(), 2, "within the worker timeout");
    for p in 10..14 {
        assert_eq!(allocate(&m, JOB, p, &[]).expect("placed"), alive);
    }
    assert_eq!(
        writer.agent.parts(),
        std::slice::from_ref(&alive),
        "created on the live worker"
    );
    for i in 0..32 {
        for sub in 0..SUBS {
            writer
                .write(sub, Buffer::data(payload(1, sub, i, 4096)))
                .expect("write");
        }
    }
    writer.end_and_close(SUBS);
    let read = terrace_tests::join_within(reader, Duration::from_secs(40), "reader")
        .expect("the consumer finds the relocated partition");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &read[&sub],
            &writer.expected[&sub],
            &format!("subpartition {sub}"),
        );
    }

    // The master drops the dead worker (4 s without heartbeats); the agent
    // finds the partition relocated and reports nothing lost.
    wait_for_list(&m, "the dead worker dropped", |l| l.workers.len() == 1);
    // The agent's next poll finds the worker gone and the partition located
    // elsewhere; one more 200 ms poll later a loss report would have come.
    let key = descriptor.key().expect("key");
    logs::wait_for_line(
        Duration::from_secs(10),
        &[&format!("partition={key} "), "not lost"],
    );
    terrace_tests::hold(Duration::from_millis(200));
    assert!(
        lost.reported().is_empty(),
        "a relocated partition is not reported lost"
    );
    let live = &workers[1 - dead].as_ref().expect("running").address;
    assert_eq!(terrace_tests::worker_stats(live).partitions, 1);
    agent
        .release_partition(&descriptor)
        .expect("release reaches the new worker");
    assert_eq!(terrace_tests::worker_stats(live).partitions, 0);
    agent.close();
}

/// The store id a worker keeps in its data directory's marker (its objects
/// are under `<prefix>/<store id>/`).
fn store_id(data_dir: &Path) -> String {
    let marker = std::fs::read_to_string(data_dir.join(".terrace-data-dir")).expect("marker");
    marker
        .lines()
        .find_map(|l| l.strip_prefix("store_id = "))
        .expect("a store_id line")
        .trim()
        .to_string()
}

/// Four workers with an object store and a small split size; six
/// partitions written and sealed as chains over the workers. One worker is
/// decommissioned while the job lives: it migrates its parts to the object
/// store, hands each to another worker, and exits without waiting for the
/// job's end. Readers of the unchanged descriptors then get every buffer
/// (first parts through the masters, later parts through the moved forward
/// pointers), the engine is told of no lost partition, the worker's objects
/// are deleted, and releasing the partitions reaches the adopters.
/// Four workers with an object store (`extra` worker settings beside it)
/// and a 128 KiB split size, and one job of six partitions written and
/// sealed as chains of parts over them.
struct ChainedJob {
    s3: terrace_tests::s3::S3Server,
    root: tempfile::TempDir,
    master: ServiceProcess,
    workers: Vec<ServiceProcess>,
    config: AgentConfig,
    agent: MasterAgent,
    lost: Arc<terrace_tests::LostPartitions>,
    descriptors: Vec<ShuffleDescriptor>,
    /// Each partition's parts, by worker id.
    chains: Vec<Vec<String>>,
    expected: Vec<HashMap<u32, Vec<Buffer>>>,
}

const CHAINED_WORKERS: usize = 4;
const CHAINED_SUBS: u32 = 2;
const CHAINED_PREFIX: &str = "chained";

impl ChainedJob {
    fn write(extra: &str) -> ChainedJob {
        let s3 = terrace_tests::s3::S3Server::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let master = start_master_dropping_workers_after_4s(root);
        let m = master.address.clone();
        let object_store = format!(
            "split_size = \"128KiB\"\n{extra}[object_store]\nurl = \"{url}\"\nrequest_timeout = \"5s\"\n\
             retries = 2\nbackoff = \"100ms\"\ncold_after = \"1h\"\n[object_store.options]\n\
             aws_endpoint = \"{endpoint}\"\naws_access_key_id = \"{ak}\"\n\
             aws_secret_access_key = \"{sk}\"\naws_region = \"{region}\"\naws_allow_http = \"true\"\n",
            url = s3.url(CHAINED_PREFIX),
            endpoint = s3.endpoint(),
            ak = terrace_tests::s3::ACCESS_KEY,
            sk = terrace_tests::s3::SECRET_KEY,
            region = terrace_tests::s3::REGION,
        );
        let workers: Vec<ServiceProcess> = (0..CHAINED_WORKERS)
            .map(|i| {
                let data = root.join(format!("d{i}"));
                start_worker(root, i, &m, &(data_dirs(&[&data]) + &object_store))
            })
            .collect();
        wait_for_list(&m, "four workers registered", |l| {
            l.workers.len() == CHAINED_WORKERS
        });
        let config = AgentConfig {
            master_addresses: vec![m.clone()],
            segment_size: terrace_tier_api::ByteSize::kib(64),
            push_size: terrace_tier_api::ByteSize::kib(32),
            ..terrace_tests::small_agent_config()
        };
        const JOB: u8 = 8;
        const PARTITIONS: u32 = 6;
        let (agent, job, lost) = terrace_tests::agent_with_job(&config, JOB);
        let descriptors: Vec<ShuffleDescriptor> = (0..PARTITIONS)
            .map(|p| {
                agent
                    .add_partition_and_get_shuffle_descriptor(
                        &job,
                        &terrace_tests::key(JOB, p).partition,
                        CHAINED_SUBS,
                    )
                    .expect("place")
            })
            .collect();
        // 2 subpartitions x 32 buffers x 4 KiB = 256 KiB each: chains of two or
        // three parts, so each part has a worker to go to that holds no other
        // part of its partition.
        let mut expected = Vec::new();
        let mut chains = Vec::new();
        for (p, d) in descriptors.iter().enumerate() {
            let mut writer =
                RecordingWriter::new(producer(&config, d.clone(), CHAINED_SUBS, false));
            for i in 0..32 {
                for sub in 0..CHAINED_SUBS {
                    writer
                        .write(sub, Buffer::data(payload(p as u32, sub, i, 4096)))
                        .expect("write");
                }
                if i % 8 == 0 {
                    writer.agent.flush_and_wait().expect("flush");
                }
            }
            chains.push(writer.end_and_close(CHAINED_SUBS));
            expected.push(writer.expected);
        }
        ChainedJob {
            s3,
            root: dir,
            master,
            workers,
            config,
            agent,
            lost,
            descriptors,
            chains,
            expected,
        }
    }

    fn data(&self, i: usize) -> std::path::PathBuf {
        self.root.path().join(format!("d{i}"))
    }

    /// A worker holding a first part and a later part of the chains, none
    /// of whose chains spans every worker (each part has a worker to go to
    /// that holds no other part of its partition).
    fn worker_with_first_and_later_parts(&self) -> usize {
        let chains = &self.chains;
        (0..CHAINED_WORKERS)
            .find(|i| {
                let id = format!("w{i}");
                chains.iter().any(|c| c[0] == id)
                    && chains.iter().any(|c| c[1..].contains(&id))
                    && chains
                        .iter()
                        .all(|c| !c.contains(&id) || c.len() < CHAINED_WORKERS)
            })
            .unwrap_or_else(|| panic!("no worker holds first and later parts: {chains:?}"))
    }

    /// A reader of the first partition whose first part is on worker
    /// `index`, started, with its first buffers arrived.
    fn slow_reader_of_first_part_on(
        &self,
        index: usize,
    ) -> (usize, ConsumerAgent, Arc<terrace_tests::Wakeup>) {
        let slow = self
            .chains
            .iter()
            .position(|c| c[0] == format!("w{index}"))
            .expect("a first part on the worker");
        let partition = self.descriptors[slow].key().expect("key").partition;
        let wake = terrace_tests::wakeup();
        let mut reader = ConsumerAgent::new(
            self.config.clone(),
            vec![ConsumerSpec {
                partition,
                input_channel: InputChannelId(0),
                subpartitions: 0..=CHAINED_SUBS - 1,
            }],
            vec![Some(self.descriptors[slow].clone())],
        )
        .expect("consumer");
        reader.register_availability_notifier(Arc::clone(&wake) as _);
        reader.start().expect("start");
        assert!(
            wake.wait(0, Duration::from_secs(10)) > 0,
            "the slow reader's first buffers arrive"
        );
        (slow, reader, wake)
    }

    /// Reads partition `p` (a reader already started) to its end and
    /// compares every buffer.
    fn drain_and_check(&self, p: usize, reader: &ConsumerAgent, wake: &terrace_tests::Wakeup) {
        let partition = self.descriptors[p].key().expect("key").partition;
        let targets: Vec<(PartitionId, u32)> = (0..CHAINED_SUBS)
            .map(|sub| (partition.clone(), sub))
            .collect();
        let read = terrace_tests::drain(reader, wake, &targets, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the slow reader of partition {p} reads to its end: {e}"));
        for sub in 0..CHAINED_SUBS {
            assert_buffers_eq(
                &read[&(partition.clone(), sub)],
                &self.expected[p][&sub],
                &format!("slow reader, subpartition {sub}"),
            );
        }
    }

    /// Every partition read back through its (unchanged) descriptor.
    fn read_all_back(&self) {
        for (p, d) in self.descriptors.iter().enumerate() {
            let read = read_partition(
                &self.config,
                d.clone(),
                CHAINED_SUBS,
                Duration::from_secs(40),
            )
            .unwrap_or_else(|e| panic!("partition {p} (chain {:?}) reads: {e}", self.chains[p]));
            for sub in 0..CHAINED_SUBS {
                assert_buffers_eq(
                    &read[&sub],
                    &self.expected[p][&sub],
                    &format!("partition {p} subpartition {sub}"),
                );
            }
        }
    }

    /// Parts held by the workers `staying`.
    fn held(&self, staying: &[usize]) -> usize {
        staying
            .iter()
            .map(|&i| terrace_tests::worker_stats(&self.workers[i].address).partitions as usize)
            .sum()
    }

    /// Waits until the agent found worker `index` gone and located each of
    /// its first parts elsewhere, then checks nothing was reported lost.
    fn assert_nothing_reported_lost(&self, index: usize) {
        let id = format!("w{index}");
        for d in self.descriptors.iter().filter(|d| d.worker_id == id) {
            let key = d.key().expect("key");
            logs::wait_for_line(
                Duration::from_secs(10),
                &[&format!("partition={key} "), "not lost"],
            );
        }
        // One more 200 ms poll later a loss report would have come.
        terrace_tests::hold(Duration::from_millis(400));
        assert!(
            self.lost.reported().is_empty(),
            "no partition is reported lost: {:?}",
            self.lost.reported()
        );
    }

    /// Releases every partition through its descriptor and waits until no
    /// part and no object is left.
    fn release_all(&self, staying: &[usize]) {
        for d in &self.descriptors {
            self.agent.release_partition(d).expect("release");
        }
        terrace_tests::wait_until(
            Duration::from_secs(10),
            "no parts left after release",
            || self.held(staying) == 0,
        );
        // Objects are deleted in the background after a release.
        terrace_tests::wait_until(
            Duration::from_secs(10),
            "no objects left after release",
            || self.s3.objects(CHAINED_PREFIX).is_empty(),
        );
    }
}

#[test]
fn a_decommissioned_worker_hands_its_partitions_over_through_the_object_store_and_exits() {
    let _logs = logs::capture();
    let mut job = ChainedJob::write("");
    let leaving_index = job.worker_with_first_and_later_parts();
    let staying: Vec<usize> = (0..CHAINED_WORKERS)
        .filter(|&i| i != leaving_index)
        .collect();
    let leaving_store = store_id(&job.data(leaving_index));
    assert!(
        job.s3.objects(CHAINED_PREFIX).is_empty(),
        "everything is on local disks before the decommission migrates it"
    );

    // A reader of a first part on the leaving worker opens its stream now
    // and takes only its first credits' worth.
    let (slow, mut slow_reader, wake) = job.slow_reader_of_first_part_on(leaving_index);
    let decommission = start_decommission(&job.workers[leaving_index].address);
    // It hands everything over but waits for the reader streaming from it.
    // Nothing to wait on: the worker must NOT exit while the reader streams
    // from it (it has handed over its parts within this time).
    terrace_tests::hold(Duration::from_secs(2));
    assert!(
        job.workers[leaving_index]
            .child
            .try_wait()
            .expect("poll")
            .is_none(),
        "the worker stays while a reader streams from it"
    );
    job.drain_and_check(slow, &slow_reader, &wake);
    slow_reader.close().expect("close");
    // It exits by itself while the job still holds every partition.
    let status = wait_for_exit(&mut job.workers[leaving_index], Duration::from_secs(60));
    assert!(
        status.success(),
        "the decommissioned worker exits cleanly: {status}"
    );
    let out = decommission_output(decommission);
    assert!(out.contains("has exited"), "{out}");
    let left: Vec<String> = job
        .s3
        .objects(CHAINED_PREFIX)
        .into_iter()
        .filter(|k| k.contains(&leaving_store))
        .collect();
    assert!(
        left.is_empty(),
        "the leaving worker's objects are deleted: {left:?}"
    );
    assert!(
        !job.s3.objects(CHAINED_PREFIX).is_empty(),
        "the adopters hold the handed-over parts in the store"
    );
    let parts: usize = job.chains.iter().map(Vec::len).sum();
    assert_eq!(
        job.held(&staying),
        parts,
        "every part is held by the workers left"
    );

    // The old descriptors read every buffer.
    job.read_all_back();
    // The master drops the worker (4 s without heartbeats); the agent finds
    // its first parts adopted and reports nothing lost.
    wait_for_list(
        &job.master.address,
        "the decommissioned worker dropped",
        |l| l.workers.len() == CHAINED_WORKERS - 1,
    );
    job.assert_nothing_reported_lost(leaving_index);
    // Releasing through the descriptors reaches every part where it is now.
    job.release_all(&staying);
    job.agent.close();
}

/// Durability through the object store: four workers with `durability =
/// "object-store"`, one job of six partitions sealed as chains over them
/// (every part's data and index in the store when its seal or split is
/// acknowledged). A worker holding first and later parts is SIGKILLed, for
/// good, while a reader streams one of its first parts. The master keeps it
/// listed while a live worker adopts its parts from the store; the reader
/// resumes at the adopter and gets every buffer once; every partition reads
/// back exactly through its old descriptor; nothing is reported lost; the
/// lost worker's objects are gone; started again on its disks, it drops the
/// parts adopted elsewhere; a release reaches the adopted parts.
#[test]
fn a_lost_durable_workers_sealed_parts_are_adopted_from_the_object_store_and_nothing_is_lost() {
    lose_a_durable_worker(true);
}

/// The same with `durable_before_ack = false`: seals are acknowledged at
/// once and every part reaches the store within a migration interval.
#[test]
fn parts_acknowledged_before_their_upload_reach_the_store_shortly_after_and_survive_a_loss() {
    lose_a_durable_worker(false);
}

fn lose_a_durable_worker(before_ack: bool) {
    let _logs = logs::capture();
    let mut job = ChainedJob::write(&format!(
        "durability = \"object-store\"\ndurable_before_ack = {before_ack}\n"
    ));
    let victim = job.worker_with_first_and_later_parts();
    let staying: Vec<usize> = (0..CHAINED_WORKERS).filter(|&i| i != victim).collect();
    let victim_store = store_id(&job.data(victim));
    // Every part is in the store, data and index, once its seal returned
    // (or, acknowledged before, within the migration interval: 1 s).
    let parts: usize = job.chains.iter().map(Vec::len).sum();
    let indexes = || {
        job.s3
            .objects(CHAINED_PREFIX)
            .into_iter()
            .filter(|k| k.ends_with("/index"))
            .count()
    };
    if before_ack {
        assert_eq!(indexes(), parts, "one index object per sealed part");
    } else {
        terrace_tests::wait_until(
            Duration::from_secs(10),
            "one index object per sealed part",
            || indexes() == parts,
        );
    }
    // Reads stay local: the store holds a copy.
    let stats = terrace_tests::worker_stats(&job.workers[victim].address);
    let tiers = stats.load.tiers.clone().expect("tier figures");
    let in_store = tiers.object_store.map_or(0, |o| o.bytes);
    assert!(
        tiers.local_bytes > 0 && in_store >= tiers.local_bytes,
        "a durable worker keeps its sealed parts on its disks and a copy in the store: {} B local, {in_store} B in the store",
        tiers.local_bytes
    );

    let (slow, mut slow_reader, wake) = job.slow_reader_of_first_part_on(victim);
    // SIGKILL, as a host lost for good.
    let process = &mut job.workers[victim].child;
    process.kill().expect("kill the worker");
    process.wait().expect("reap the worker");
    // The reader resumes where it was, at the worker that adopted the part.
    job.drain_and_check(slow, &slow_reader, &wake);
    slow_reader.close().expect("close");
    logs::wait_for_line(
        Duration::from_secs(30),
        &["worker lost; its part was adopted from the object store; resuming there"],
    );
    // Each adopted part leaves only a marker under the lost worker's prefix.
    let left: Vec<String> = job
        .s3
        .objects(CHAINED_PREFIX)
        .into_iter()
        .filter(|k| k.contains(&victim_store))
        .collect();
    assert!(
        !left.is_empty() && left.iter().all(|k| k.ends_with("/adopted")),
        "the lost worker's objects are deleted once adopted, a marker left: {left:?}"
    );
    assert_eq!(
        job.held(&staying),
        parts,
        "every part is held by the workers left"
    );
    job.read_all_back();
    wait_for_list(&job.master.address, "the lost worker dropped", |l| {
        l.workers.len() == CHAINED_WORKERS - 1
    });
    job.assert_nothing_reported_lost(victim);
    // The lost worker comes back on its directories: the parts it recovers
    // are gone from the store (adopted), so it drops them instead of
    // serving reads that would fail.
    let indexes = |dir: &Path| {
        terrace_tests::entries_under(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "index"))
            .count()
    };
    let victim_dir = job.data(victim);
    let held_before = indexes(&victim_dir);
    assert!(held_before > 0, "the lost worker's disks kept its indexes");
    let config = job.root.path().join(format!("worker-{victim}.toml"));
    job.workers[victim] =
        ServiceProcess::start(&["worker", "--config", config.to_str().expect("utf-8 path")]);
    terrace_tests::wait_until(
        Duration::from_secs(20),
        "the returning worker drops the parts adopted elsewhere",
        || {
            indexes(&victim_dir) == 0
                && terrace_tests::worker_stats(&job.workers[victim].address).partitions == 0
        },
    );
    job.read_all_back();
    job.release_all(&staying);
    job.agent.close();
}

/// A relocated partition is found again after both the worker holding it
/// and the master restart: the worker persisted that the masters locate it
/// there (in its index) and names it in its heartbeats again, so the
/// restarted master, which remembers nothing, learns it from them.
#[test]
fn a_relocated_partition_is_located_after_its_worker_and_the_master_restart() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    // The master restarts at the same address (the agents' configuration).
    let m = terrace_tests::closed_address();
    let master_config = root.join("master.toml");
    std::fs::write(
        &master_config,
        format!("listen = \"{m}\"\nworker_timeout = \"4s\"\n"),
    )
    .expect("write master config");
    let start_master = || {
        ServiceProcess::start(&[
            "master",
            "--config",
            master_config.to_str().expect("utf-8 path"),
        ])
    };
    let master = start_master();
    let worker_dirs: Vec<_> = (0..2).map(|i| root.join(format!("d{i}"))).collect();
    let mut workers: Vec<Option<ServiceProcess>> = (0..2)
        .map(|i| Some(start_worker(root, i, &m, &data_dirs(&[&worker_dirs[i]]))))
        .collect();
    wait_for_list(&m, "two workers registered", |l| l.workers.len() == 2);
    let config = AgentConfig {
        master_addresses: vec![m.clone()],
        ..terrace_tests::small_agent_config()
    };
    let agent = MasterAgent::with_poll_interval(config.clone(), Duration::from_millis(200))
        .expect("master agent");
    const JOB: u8 = 9;
    const SUBS: u32 = 2;
    let job = terrace_tests::key(JOB, 0).job;
    agent
        .register_job(
            &job,
            Arc::new(terrace_tests::LostPartitions::default()) as Arc<dyn TierShuffleHandler>,
        )
        .expect("register");
    let descriptor = agent
        .add_partition_and_get_shuffle_descriptor(&job, &terrace_tests::key(JOB, 1).partition, SUBS)
        .expect("place");
    let dead: usize = descriptor.worker_id[1..]
        .parse()
        .expect("worker ids are w0, w1");
    let alive = 1 - dead;
    workers[dead].take().expect("running").kill();
    // The producer finds its worker dead and relocates the partition.
    let expected = write_partition(&config, descriptor.clone(), 1, SUBS, 16, 4096);

    // The master restarts (forgetting the relocation), and so does the
    // worker holding the partition, on the same data directory.
    drop(master);
    workers[alive].take().expect("running").kill();
    let _master = start_master();
    workers[alive] = Some(start_worker(
        root,
        alive,
        &m,
        &data_dirs(&[&worker_dirs[alive]]),
    ));
    let key = descriptor.key().expect("key");
    terrace_tests::wait_for(
        Duration::from_secs(20),
        "the restarted master locates the partition",
        || {
            terrace_tests::call(
                &m,
                terrace_tier_api::protocol::LocatePartition {
                    key: key.clone(),
                    worker: None,
                },
            )
            .ok()?
            .worker
        },
    );
    let read = read_partition(&config, descriptor, SUBS, Duration::from_secs(30))
        .expect("the consumer finds the relocated partition");
    for sub in 0..SUBS {
        assert_buffers_eq(&read[&sub], &expected[&sub], &format!("subpartition {sub}"));
    }
    agent.close();
}
