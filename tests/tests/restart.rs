//! A worker restarted on purpose (SIGTERM, then started again on the same
//! directories and address) costs nothing, on real processes: a master and
//! three `terrace worker`s.
//! - the producer writing a partition there goes on on another worker at
//!   its next push (a split), so the worker drains in well under its grace;
//! - the masters place nothing there while it restarts and take nothing
//!   for lost: no partition is reported;
//! - a reader stopped in the middle of a segment of a sealed partition there
//!   resumes where it was once the worker is back, and one reading the
//!   partition being written follows it across the restart and the split;
//! - partitions created there and idle during the restart (not pushed to
//!   yet, or pushed to and paused) are kept open across it: their
//!   producers push on after it, and their readers, waiting since before,
//!   read them whole;
//! - every buffer arrives exactly once, in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use terrace_consumer_agent::ConsumerAgent;
use terrace_rpc::clock;
use terrace_tests::{
    RecordingWriter, ServiceProcess, assert_buffers_eq, logs, payload, producer, read_partition,
    write_partition,
};
use terrace_tier_api::{
    AgentConfig, Buffer, ConsumerSpec, InputChannelId, PartitionId, SegmentId, ShuffleDescriptor,
    SubpartitionId, TierConsumerAgent, TierMasterAgent,
};

fn write_config(path: &Path, text: String) -> PathBuf {
    std::fs::write(path, text).expect("write config");
    path.to_path_buf()
}

/// A master that takes a worker for lost after 3 s without heartbeats, its
/// config in `{dir}/{name}.toml`.
fn start_master(dir: &Path, name: &str) -> ServiceProcess {
    let config = write_config(
        &dir.join(format!("{name}.toml")),
        "listen = \"127.0.0.1:0\"\nworker_timeout = \"3s\"\n".to_string(),
    );
    ServiceProcess::start(&["master", "--config", config.to_str().expect("utf-8 path")])
}

/// Worker `w{index}` at a fixed address, so a restart comes back there.
struct Worker {
    config: PathBuf,
    address: String,
    process: Option<ServiceProcess>,
}

impl Worker {
    fn new(dir: &Path, index: usize, master: &str) -> Worker {
        Worker::with_masters(dir, index, &[master])
    }

    fn with_masters(dir: &Path, index: usize, masters: &[&str]) -> Worker {
        let address = terrace_tests::closed_address();
        let masters: Vec<String> = masters.iter().map(|m| format!("\"{m}\"")).collect();
        let masters = masters.join(", ");
        let config = write_config(
            &dir.join(format!("worker-{index}.toml")),
            format!(
                "listen = \"{address}\"\nworker_id = \"w{index}\"\nmaster_addresses = [{masters}]\n\
                 heartbeat_interval = \"200ms\"\nmemory_budget = \"64MiB\"\nmax_frame_size = \"4MiB\"\n\
                 data_dirs = [\"{}\"]\n",
                dir.join(format!("d{index}")).display()
            ),
        );
        let mut worker = Worker {
            config,
            address,
            process: None,
        };
        worker.start();
        worker
    }

    fn start(&mut self) {
        let process = ServiceProcess::start(&[
            "worker",
            "--config",
            self.config.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(process.address, self.address);
        self.process = Some(process);
    }

    /// SIGTERM, and the time until the process exited (successfully).
    fn stop_gracefully(&mut self) -> Duration {
        let mut process = self.process.take().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &process.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let sent = clock::now();
        let (exit, _) =
            terrace_tests::wait_for(Duration::from_secs(30), "the worker exits", || {
                process.child.try_wait().expect("poll the worker")
            });
        assert!(
            exit.success(),
            "the worker exits cleanly on SIGTERM: {exit}"
        );
        clock::elapsed(sent)
    }
}

#[test]
fn a_worker_restarted_under_a_writer_and_readers_loses_nothing() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = start_master(root, "master");
    let m = master.address.clone();
    let mut workers: Vec<Worker> = (0..3).map(|i| Worker::new(root, i, &m)).collect();
    terrace_tests::wait_for(Duration::from_secs(20), "three workers registered", || {
        terrace_tests::list_workers(&m)
            .ok()
            .filter(|l| l.workers.len() == 3)
    });
    let config = AgentConfig {
        master_addresses: vec![m.clone()],
        ..terrace_tests::small_agent_config()
    };
    const JOB: u8 = 10;
    const SUBS: u32 = 2;
    let (agent, job, lost) = terrace_tests::agent_with_job(&config, JOB);
    // Two partitions on w0: one sealed, one being written across the restart.
    let on_w0: Vec<_> = (1..=16)
        .map(|p| {
            agent
                .add_partition_and_get_shuffle_descriptor(
                    &job,
                    &terrace_tests::key(JOB, p).partition,
                    SUBS,
                )
                .expect("place")
        })
        .filter(|d| d.worker_id == "w0")
        .collect();
    assert!(on_w0.len() >= 4, "placement spreads a job: {on_w0:?}");
    let (sealed, open, idle, paused) = (
        on_w0[0].clone(),
        on_w0[1].clone(),
        on_w0[2].clone(),
        on_w0[3].clone(),
    );
    let expected_sealed = write_partition(&config, sealed.clone(), 1, SUBS, 64, 4096);

    // A reader of the sealed partition takes 3 buffers of subpartition 0
    // and stops (its credits run out: the worker waits in mid-segment).
    let partition = sealed.key().expect("key").partition;
    let wake = terrace_tests::wakeup();
    let mut reader = ConsumerAgent::new(
        config.clone(),
        vec![ConsumerSpec {
            partition: partition.clone(),
            input_channel: InputChannelId(0),
            subpartitions: 0..=SUBS - 1,
        }],
        vec![Some(sealed.clone())],
    )
    .expect("consumer");
    reader.register_availability_notifier(Arc::clone(&wake) as _);
    reader.start().expect("start");
    let mut first = Vec::new();
    while first.len() < 3 {
        let seen = wake.current();
        match reader
            .get_next_buffer(&partition, SubpartitionId(0), SegmentId(0))
            .expect("read")
        {
            Some(buffer) => first.push(buffer),
            None => {
                wake.wait(seen, Duration::from_millis(100));
            }
        }
    }

    // The writer of the other partition pushes on, with pauses, while a
    // reader follows it.
    let writer = {
        let (config, open) = (config.clone(), open.clone());
        std::thread::spawn(move || {
            let mut writer = RecordingWriter::new(producer(&config, open, SUBS, false));
            for i in 0..400 {
                for sub in 0..SUBS {
                    writer
                        .write(sub, Buffer::data(payload(2, sub, i, 4096)))
                        .expect("write across the restart");
                }
                if i % 20 == 0 {
                    terrace_tests::hold(Duration::from_millis(20));
                }
            }
            writer.end_and_close(SUBS);
            (writer.expected, writer.agent.parts().to_vec())
        })
    };
    let follower = {
        let (config, open) = (config.clone(), open.clone());
        std::thread::spawn(move || read_partition(&config, open, SUBS, Duration::from_secs(90)))
    };
    // Created, not pushed to before the restart; read from before it.
    let mut idle_writer = RecordingWriter::new(producer(&config, idle.clone(), SUBS, false));
    let idle_reader = {
        let (config, idle) = (config.clone(), idle.clone());
        std::thread::spawn(move || read_partition(&config, idle, SUBS, Duration::from_secs(90)))
    };
    // Pushed to, then paused across the restart; read from before it.
    let mut paused_writer = RecordingWriter::new(producer(&config, paused.clone(), SUBS, false));
    for i in 0..24 {
        for sub in 0..SUBS {
            paused_writer
                .write(sub, Buffer::data(payload(4, sub, i, 4096)))
                .expect("write before the restart");
        }
    }
    paused_writer.agent.flush_and_wait().expect("acknowledged");
    let paused_reader = {
        let (config, paused) = (config.clone(), paused.clone());
        std::thread::spawn(move || read_partition(&config, paused, SUBS, Duration::from_secs(90)))
    };
    terrace_tests::hold(Duration::from_millis(150));

    // The restart.
    let drained = workers[0].stop_gracefully();
    eprintln!("restart: w0 drained and exited {drained:.1?} after SIGTERM");
    assert!(
        drained < Duration::from_secs(5),
        "the drain took {drained:?}, past the default shutdown_grace"
    );
    // While it is down the masters still list it (restarting) and place
    // nothing there.
    let listed = terrace_tests::list_workers(&m).expect("list");
    let w0 = listed
        .workers
        .iter()
        .find(|w| w.worker.id.as_str() == "w0")
        .expect("w0 still listed");
    assert!(w0.load.restarting, "listed as restarting");
    terrace_tests::hold(Duration::from_millis(500));
    workers[0].start();
    for i in 0..32 {
        for sub in 0..SUBS {
            idle_writer
                .write(sub, Buffer::data(payload(3, sub, i, 4096)))
                .expect("the first push, after the restart");
        }
    }
    idle_writer.end_and_close(SUBS);
    assert_eq!(
        idle_writer.agent.parts(),
        ["w0".to_string()],
        "written where it was placed"
    );
    for i in 24..48 {
        for sub in 0..SUBS {
            paused_writer
                .write(sub, Buffer::data(payload(4, sub, i, 4096)))
                .expect("pushes on after the restart");
        }
    }
    paused_writer.end_and_close(SUBS);
    assert_eq!(
        paused_writer.agent.parts(),
        ["w0".to_string()],
        "written on where it was"
    );
    let paused_read =
        terrace_tests::join_within(paused_reader, Duration::from_secs(90), "paused reader")
            .expect("the reader waits across the restart");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &paused_read[&sub],
            &paused_writer.expected[&sub],
            &format!("partition paused across the restart, subpartition {sub}"),
        );
    }
    let idle_read = terrace_tests::join_within(idle_reader, Duration::from_secs(90), "idle reader")
        .expect("the reader waits across the restart");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &idle_read[&sub],
            &idle_writer.expected[&sub],
            &format!("partition first pushed after the restart, subpartition {sub}"),
        );
    }

    let (expected_open, parts) =
        terrace_tests::join_within(writer, Duration::from_secs(60), "writer");
    assert_eq!(parts[0], "w0");
    assert!(parts.len() >= 2, "the writer went on elsewhere: {parts:?}");
    let followed = terrace_tests::join_within(follower, Duration::from_secs(90), "follower")
        .expect("the follower reads across the restart");
    for sub in 0..SUBS {
        assert_buffers_eq(
            &followed[&sub],
            &expected_open[&sub],
            &format!("partition written across the restart, subpartition {sub}"),
        );
    }
    // The stopped reader resumes where it was.
    let targets: Vec<(PartitionId, u32)> = (0..SUBS).map(|s| (partition.clone(), s)).collect();
    let rest: HashMap<(PartitionId, u32), Vec<Buffer>> =
        terrace_tests::drain(&reader, &wake, &targets, Duration::from_secs(60))
            .expect("the reader resumes after the restart");
    let mut sub0 = first;
    sub0.extend(rest[&(partition.clone(), 0)].iter().cloned());
    assert_buffers_eq(
        &sub0,
        &expected_sealed[&0],
        "sealed partition, subpartition 0",
    );
    assert_buffers_eq(
        &rest[&(partition.clone(), 1)],
        &expected_sealed[&1],
        "sealed partition, subpartition 1",
    );
    terrace_tests::hold(Duration::from_secs(1));
    assert!(
        lost.reported().is_empty(),
        "nothing is reported lost for a restart"
    );
    reader.close().expect("close");
    agent.close();
}

/// `terrace worker restart ADDR` stops the worker as SIGTERM does: it
/// drains and exits 0, and started again it serves what it held.
#[test]
fn terrace_worker_restart_drains_the_worker_and_it_serves_its_partitions_after() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = start_master(root, "master");
    let mut worker = Worker::new(root, 0, &master.address);
    let config = AgentConfig {
        master_addresses: vec![master.address.clone()],
        ..terrace_tests::small_agent_config()
    };
    let descriptor = ShuffleDescriptor::new(
        &terrace_tests::key(11, 1),
        "w0".to_string(),
        worker.address.clone(),
    );
    let expected = write_partition(&config, descriptor.clone(), 1, 2, 16, 4096);
    let out = terrace_tests::run_terrace(
        &["worker", "restart", &worker.address],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "terrace worker restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is stopping for a restart"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut process = worker.process.take().expect("running");
    let (exit, _) = terrace_tests::wait_for(Duration::from_secs(30), "the worker exits", || {
        process.child.try_wait().expect("poll the worker")
    });
    assert!(exit.success(), "the worker exits cleanly: {exit}");
    worker.start();
    let read = read_partition(&config, descriptor, 2, Duration::from_secs(30)).expect("read");
    for sub in 0..2 {
        assert_buffers_eq(&read[&sub], &expected[&sub], &format!("subpartition {sub}"));
    }
}

/// Two workers restarted one after the other under a producer writing
/// continuously: at the first restart it splits to the other worker; at
/// the second no worker is left that holds no part of it, so it stops
/// pushing, waits for the worker to come back (which keeps the partition
/// open) and pushes on there. Every buffer arrives exactly once.
#[test]
fn a_producer_that_cannot_split_away_waits_for_its_restarting_worker() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let master = start_master(root, "master");
    let m = master.address.clone();
    let mut workers: Vec<Worker> = (0..2).map(|i| Worker::new(root, i, &m)).collect();
    let all_live = || {
        terrace_tests::list_workers(&m)
            .is_ok_and(|l| l.workers.len() == 2 && l.workers.iter().all(|w| !w.load.restarting))
    };
    terrace_tests::wait_until(Duration::from_secs(20), "two workers registered", all_live);
    let config = AgentConfig {
        master_addresses: vec![m.clone()],
        ..terrace_tests::small_agent_config()
    };
    const SUBS: u32 = 2;
    let (agent, job, lost) = terrace_tests::agent_with_job(&config, 12);
    let descriptor = agent
        .add_partition_and_get_shuffle_descriptor(&job, &terrace_tests::key(12, 1).partition, SUBS)
        .expect("place");
    let first: usize = descriptor.worker_id[1..].parse().expect("w0 or w1");
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (config, descriptor, writing) = (config.clone(), descriptor.clone(), writing.clone());
        std::thread::spawn(move || {
            let mut writer = RecordingWriter::new(producer(&config, descriptor, SUBS, false));
            let mut i = 0;
            while writing.load(std::sync::atomic::Ordering::Acquire) {
                for sub in 0..SUBS {
                    writer
                        .write(sub, Buffer::data(payload(5, sub, i, 4096)))
                        .expect("write across both restarts");
                }
                i += 1;
                if i % 8 == 0 {
                    terrace_tests::hold(Duration::from_millis(5));
                }
            }
            writer.end_and_close(SUBS);
            (writer.expected, writer.agent.parts().to_vec())
        })
    };
    let reader = {
        let (config, descriptor) = (config.clone(), descriptor.clone());
        std::thread::spawn(move || {
            read_partition(&config, descriptor, SUBS, Duration::from_secs(120))
        })
    };
    terrace_tests::hold(Duration::from_millis(300));
    for i in [first, 1 - first] {
        let drained = workers[i].stop_gracefully();
        eprintln!("restart: w{i} drained and exited {drained:.1?} after SIGTERM");
        workers[i].start();
        terrace_tests::wait_until(Duration::from_secs(20), "both workers live", all_live);
        terrace_tests::hold(Duration::from_millis(300));
    }
    writing.store(false, std::sync::atomic::Ordering::Release);
    let (expected, parts) = terrace_tests::join_within(writer, Duration::from_secs(60), "writer");
    assert_eq!(
        parts,
        [format!("w{first}"), format!("w{}", 1 - first)],
        "split once, then waited where it was"
    );
    let read = terrace_tests::join_within(reader, Duration::from_secs(120), "reader")
        .expect("the reader follows the partition across both restarts");
    for sub in 0..SUBS {
        assert_buffers_eq(&read[&sub], &expected[&sub], &format!("subpartition {sub}"));
    }
    assert!(lost.reported().is_empty(), "nothing is reported lost");
    agent.close();
}

/// A push that reaches a worker as it stops (refused once it no longer
/// takes pushes) is not lost and fails nothing: its producer keeps every
/// push until acknowledged, waits for the worker to stop and come back
/// holding what it acknowledged, and sends the rest again. One worker, so
/// the producer cannot split away; its partition is idle when SIGTERM comes,
/// so the worker stops taking pushes 500 ms later. Of its two masters one is
/// stopped (SIGSTOP): the worker waits up to 2 s for it to hear that it is
/// restarting, refusing pushes meanwhile, which is when the push comes.
#[test]
fn a_push_refused_as_its_worker_stops_is_sent_again_after_the_restart() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let masters: Vec<ServiceProcess> = (0..2)
        .map(|i| start_master(root, &format!("master-{i}")))
        .collect();
    let addresses: Vec<String> = masters.iter().map(|m| m.address.clone()).collect();
    let mut worker = Worker::with_masters(root, 0, &[&addresses[0], &addresses[1]]);
    let live = |m: &str| {
        terrace_tests::list_workers(m)
            .is_ok_and(|l| l.workers.len() == 1 && l.workers.iter().all(|w| !w.load.restarting))
    };
    terrace_tests::wait_until(Duration::from_secs(20), "the worker registered", || {
        live(&addresses[0]) && live(&addresses[1])
    });
    let config = AgentConfig {
        master_addresses: addresses.clone(),
        ..terrace_tests::small_agent_config()
    };
    const SUBS: u32 = 2;
    let (agent, job, lost) = terrace_tests::agent_with_job(&config, 13);
    let descriptor = agent
        .add_partition_and_get_shuffle_descriptor(&job, &terrace_tests::key(13, 1).partition, SUBS)
        .expect("place");
    let mut writer = RecordingWriter::new(producer(&config, descriptor.clone(), SUBS, false));
    let write_some = |writer: &mut RecordingWriter, from: u32, n: u32| {
        for i in from..from + n {
            for sub in 0..SUBS {
                writer
                    .write(sub, Buffer::data(payload(6, sub, i, 4096)))
                    .expect("write");
            }
        }
    };
    write_some(&mut writer, 0, 16);
    writer.agent.flush_and_wait().expect("acknowledged");
    let stopped_master = ContinueOnDrop(masters[1].pid());
    terrace_tests::stop_process(masters[1].pid());
    let process = worker.process.as_ref().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // Past 500 ms the worker refuses pushes; it exits about 2 s after SIGTERM.
    terrace_tests::hold(Duration::from_millis(1000));
    assert!(
        worker
            .process
            .as_mut()
            .expect("running")
            .child
            .try_wait()
            .expect("poll")
            .is_none(),
        "the worker waits for its stopped master"
    );
    let writing = std::thread::spawn(move || {
        write_some(&mut writer, 16, 8);
        writer.agent.flush().expect("sent");
        write_some(&mut writer, 24, 8);
        writer.end_and_close(SUBS);
        writer.expected
    });
    let mut process = worker.process.take().expect("running");
    let (exit, _) = terrace_tests::wait_for(Duration::from_secs(30), "the worker exits", || {
        process.child.try_wait().expect("poll the worker")
    });
    assert!(exit.success(), "the worker exits cleanly: {exit}");
    drop(stopped_master);
    worker.start();
    terrace_tests::wait_until(Duration::from_secs(20), "the worker back", || {
        live(&addresses[0])
    });
    let expected = terrace_tests::join_within(writing, Duration::from_secs(60), "writer");
    // This test's job (other tests of the binary log the same line).
    let back = logs::wait_for_line(
        Duration::from_secs(5),
        &[
            "holding every acknowledged push; pushing on",
            "job 0d0d0d0d0d0d0d0d",
        ],
    );
    assert!(
        !back.text.contains("resent=0"),
        "the refused push was sent again: {}",
        back.text
    );
    let read = read_partition(&config, descriptor, SUBS, Duration::from_secs(30))
        .expect("read after the restart");
    for sub in 0..SUBS {
        assert_buffers_eq(&read[&sub], &expected[&sub], &format!("subpartition {sub}"));
    }
    assert!(lost.reported().is_empty(), "nothing reported lost");
    agent.close();
}

/// Continues a stopped process when dropped (a failed assertion included).
struct ContinueOnDrop(u32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}
