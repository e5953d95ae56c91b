//! Control never waits on data, on real processes: an object store that
//! accepts connections and never answers while jobs are dropped loses no
//! worker (and the deletions happen once it answers again); a master
//! SIGSTOPped for longer than the job lease makes no job expire, neither on
//! the healthy master nor on the stopped one once it resumes; and a worker
//! holding more jobs than one heartbeat carries still lease-checks them all.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use terrace_tests::logs;
use terrace_tests::wait::throughout;
use terrace_tests::wait_until;

use terrace_master_agent::MasterAgent;
use terrace_rpc::clock;
use terrace_tests::s3::S3Server;
use terrace_tests::{
    Ignore, ServiceProcess, assert_buffers_eq, closed_address, join_within, key, read_partition,
    small_agent_config, worker_stats, write_partition,
};
use terrace_tier_api::protocol::{CreatePartition, RegisterJob, WorkerList};
use terrace_tier_api::{AgentConfig, JobId, PartitionKey, TierMasterAgent};

const WORKER_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(200);

/// A TCP relay to `target` that can be switched to a black hole: it keeps
/// accepting connections but forwards nothing (bytes already read wait)
/// until switched back.
struct Relay {
    address: String,
    blackhole: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let address = listener.local_addr().expect("relay address").to_string();
        let blackhole = Arc::new(AtomicBool::new(false));
        let hole = Arc::clone(&blackhole);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), upstream.try_clone()),
                    (upstream.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let hole = Arc::clone(&hole);
                    std::thread::spawn(move || pump(from, to, &hole));
                }
            }
        });
        Relay { address, blackhole }
    }

    fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, blackhole: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        while blackhole.load(Ordering::SeqCst) {
            // The relay thread holds the bytes for as long as the test black-holes them.
            terrace_tests::wait::poll_pause(Duration::from_millis(20));
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn start_master(dir: &Path, name: &str, address: &str, lease: Duration) -> ServiceProcess {
    let config = dir.join(format!("master-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"{address}\"\nworker_timeout = \"{}ms\"\njob_lease = \"{}ms\"\n",
            WORKER_TIMEOUT.as_millis(),
            lease.as_millis()
        ),
    )
    .expect("write master config");
    ServiceProcess::start(&["master", "--config", config.to_str().expect("utf-8 path")])
}

fn start_worker(dir: &Path, masters: &[String], extra: &str) -> ServiceProcess {
    let config = dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [\"{}\"]\nmaster_addresses = {masters:?}\n\
             heartbeat_interval = \"{}ms\"\nmemory_budget = \"64MiB\"\nmax_frame_size = \"4MiB\"\n{extra}",
            dir.join("data").display(),
            HEARTBEAT.as_millis()
        ),
    )
    .expect("write worker config");
    let worker =
        ServiceProcess::start(&["worker", "--config", config.to_str().expect("utf-8 path")]);
    for master in masters {
        wait_until(Duration::from_secs(20), "the worker registers", || {
            listing(master).is_some_and(|l| l.workers.len() == 1)
        });
    }
    worker
}

/// What master `address` knows: its workers and its live jobs.
fn listing(address: &str) -> Option<WorkerList> {
    terrace_tests::list_workers(address).ok()
}

fn knows_job(list: &WorkerList, job: &JobId) -> bool {
    list.jobs.contains(job)
}

fn agent_config(masters: Vec<String>, renew: Duration) -> AgentConfig {
    AgentConfig {
        master_addresses: masters,
        job_renew_interval: renew,
        ..small_agent_config()
    }
}

/// The object keys of `job` stored in `s3`.
fn objects_of(s3: &S3Server, job: &JobId) -> usize {
    let marker = format!("/{}/", job.to_hex());
    s3.objects("control")
        .iter()
        .filter(|k| k.contains(&marker))
        .count()
}

#[test]
fn a_store_that_never_answers_while_jobs_are_dropped_loses_no_worker() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let s3 = S3Server::start();
    let relay = Relay::start(format!("127.0.0.1:{}", s3.port()));
    let master_address = closed_address();
    let _master = start_master(dir.path(), "m", &master_address, Duration::from_secs(60));
    // Each store request waits 3 s, three times: a deletion that stalls
    // holds its caller for over 9 s, several worker timeouts.
    let store = format!(
        "[object_store]\nurl = \"{url}\"\nrequest_timeout = \"3s\"\nretries = 2\nbackoff = \"100ms\"\n\
         cold_after = \"300ms\"\nmigration_interval = \"100ms\"\n\
         [object_store.options]\naws_endpoint = \"http://{relay}\"\naws_access_key_id = \"{ak}\"\n\
         aws_secret_access_key = \"{sk}\"\naws_region = \"{region}\"\naws_allow_http = \"true\"\n",
        url = s3.url("control"),
        relay = relay.address,
        ak = terrace_tests::s3::ACCESS_KEY,
        sk = terrace_tests::s3::SECRET_KEY,
        region = terrace_tests::s3::REGION,
    );
    let worker = start_worker(dir.path(), std::slice::from_ref(&master_address), &store);
    let config = agent_config(vec![master_address.clone()], Duration::from_millis(500));
    let agent = MasterAgent::new(config.clone()).expect("master agent");
    let keys: Vec<PartitionKey> = (1..=3).map(|j| key(j, 0)).collect();
    let mut written = Vec::new();
    for k in &keys {
        agent
            .register_job(&k.job, Arc::new(Ignore))
            .expect("register the job");
        let descriptor = agent
            .add_partition_and_get_shuffle_descriptor(&k.job, &k.partition, 2)
            .expect("place the partition");
        written.push(write_partition(&config, descriptor, 0, 2, 20, 2000));
    }
    // Cold partitions move to the store: every byte ends up in objects.
    wait_until(
        Duration::from_secs(30),
        "the three partitions migrate to the store",
        || {
            let tiers = worker_stats(&worker.address)
                .load
                .tiers
                .expect("tier stats");
            tiers.memory_bytes == 0 && tiers.local_bytes == 0 && tiers.object_bytes > 0
        },
    );
    let before: Vec<usize> = keys.iter().map(|k| objects_of(&s3, &k.job)).collect();
    assert!(before.iter().all(|&n| n > 0), "objects per job: {before:?}");

    relay.set_blackhole(true);
    // Jobs 1 and 2 end: the agent drops them on the worker, the master lists
    // them as released in its heartbeat replies.
    let dropping = clock::now();
    let unregister = {
        let agent = Arc::new(agent);
        let a = Arc::clone(&agent);
        let jobs = [keys[0].job.clone(), keys[1].job.clone()];
        (
            agent,
            std::thread::spawn(move || {
                for job in &jobs {
                    a.unregister_job(job).expect("unregister the job");
                }
            }),
        )
    };
    let (agent, handle) = unregister;
    join_within(handle, Duration::from_secs(30), "unregistering two jobs");
    let took = clock::elapsed(dropping);
    eprintln!("control: two jobs unregistered in {took:?} with the store black-holed");
    assert!(
        took < Duration::from_secs(3),
        "dropping jobs waited on the store: {took:?}"
    );
    assert_eq!(worker_stats(&worker.address).partitions, 1);

    // Several worker timeouts: the worker is never silent for a timeout.
    let window = WORKER_TIMEOUT * 4;
    let started = clock::now();
    let mut longest = 0;
    let polls = throughout(window, Duration::from_millis(100), || {
        let list = listing(&master_address).expect("the master answers");
        assert_eq!(
            list.workers.len(),
            1,
            "the worker was declared lost {:?} after the drops",
            clock::elapsed(started)
        );
        longest = longest.max(list.workers[0].since_heartbeat.as_millis() as u64);
        assert!(
            list.workers[0].since_heartbeat < WORKER_TIMEOUT / 2,
            "the worker was silent for {:?}",
            list.workers[0].since_heartbeat
        );
    });
    eprintln!(
        "control: {polls} polls over {window:?}, longest silence {longest} ms (timeout {WORKER_TIMEOUT:?})"
    );
    // Nothing could be deleted meanwhile; the kept job is whole.
    let during: Vec<usize> = keys.iter().map(|k| objects_of(&s3, &k.job)).collect();
    assert_eq!(during, before, "no object deleted while the store hangs");

    relay.set_blackhole(false);
    let took = wait_until(
        Duration::from_secs(90),
        "the dropped jobs' objects are deleted once the store answers",
        || objects_of(&s3, &keys[0].job) == 0 && objects_of(&s3, &keys[1].job) == 0,
    );
    eprintln!(
        "control: the dropped jobs' objects were deleted {took:?} after the store answered again"
    );
    assert_eq!(objects_of(&s3, &keys[2].job), before[2]);
    let read = read_partition(
        &config,
        terrace_tier_api::ShuffleDescriptor::new(&keys[2], "worker", worker.address.clone()),
        2,
        Duration::from_secs(30),
    )
    .expect("read the kept job back");
    for sub in 0..2 {
        assert_buffers_eq(
            &read[&sub],
            &written[2][&sub],
            &format!("job 3 subpartition {sub}"),
        );
    }
    drop(agent);
}

/// Sends SIGCONT to a stopped process when dropped, so a failing test never
/// leaves it stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal(pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// Every master of `masters` still knows `job`, and the worker at
/// `worker` still holds its one partition (`when` and `since` for the
/// failure message).
fn assert_job_kept(masters: &[String], job: &JobId, worker: &str, when: &str, since: Instant) {
    for address in masters {
        let list = listing(address).expect("the master answers");
        assert!(
            knows_job(&list, job),
            "master {address} expired the job {:?} {when}",
            clock::elapsed(since)
        );
    }
    assert_eq!(
        worker_stats(worker).partitions,
        1,
        "the worker dropped the job's data {:?} {when}",
        clock::elapsed(since)
    );
}

#[test]
fn a_master_stopped_for_longer_than_the_lease_expires_no_job() {
    let _logs = logs::capture();
    const LEASE: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let addresses = vec![closed_address(), closed_address()];
    let stopped_master = start_master(dir.path(), "a", &addresses[0], LEASE);
    let _healthy = start_master(dir.path(), "b", &addresses[1], LEASE);
    let worker = start_worker(dir.path(), &addresses, "");
    let config = agent_config(addresses.clone(), Duration::from_millis(300));
    let agent = MasterAgent::new(config.clone()).expect("master agent");
    let k = key(7, 0);
    agent
        .register_job(&k.job, Arc::new(Ignore))
        .expect("register the job");
    let descriptor = agent
        .add_partition_and_get_shuffle_descriptor(&k.job, &k.partition, 2)
        .expect("place the partition");
    let written = write_partition(&config, descriptor.clone(), 0, 2, 50, 1000);
    assert_eq!(worker_stats(&worker.address).partitions, 1);

    // The first master (the agent's placement master) stops for 2.5 leases.
    let pause = LEASE * 5 / 2;
    let guard = Stopped::stop(stopped_master.pid());
    let started = clock::now();
    throughout(pause, Duration::from_millis(200), || {
        assert_job_kept(
            &addresses[1..],
            &k.job,
            &worker.address,
            "into the stop",
            started,
        )
    });
    drop(guard);
    // Resumed, the stopped master does not take the time it missed for a
    // lapsed lease (nor a silent worker): for two more leases both masters
    // know the job and the worker keeps it.
    let resumed = clock::now();
    throughout(LEASE * 2, Duration::from_millis(200), || {
        assert_job_kept(
            &addresses,
            &k.job,
            &worker.address,
            "after the resume",
            resumed,
        )
    });
    let stopped_list = listing(&addresses[0]).expect("the resumed master answers");
    assert_eq!(
        stopped_list.workers.len(),
        1,
        "the resumed master knows the worker"
    );
    let read = read_partition(&config, descriptor, 2, Duration::from_secs(30)).expect("read back");
    for sub in 0..2 {
        assert_buffers_eq(&read[&sub], &written[&sub], &format!("subpartition {sub}"));
    }
}

#[test]
fn a_worker_holding_more_jobs_than_a_heartbeat_carries_still_drops_an_unknown_one() {
    let _logs = logs::capture();
    const LEASE: Duration = Duration::from_secs(3);
    // 16-byte ids take 19 bytes in a heartbeat, which carries 24 KiB of
    // them: 1293 per heartbeat, so 2100 jobs take two.
    const JOBS: u32 = 2100;
    let dir = tempfile::tempdir().expect("temp dir");
    let master_address = closed_address();
    let _master = start_master(dir.path(), "m", &master_address, LEASE);
    let worker = start_worker(dir.path(), std::slice::from_ref(&master_address), "");
    let job = |n: u32| {
        let mut id = vec![0u8; 12];
        id.extend_from_slice(&n.to_be_bytes());
        JobId::new(id).expect("job id")
    };
    // The worker may ask about the last job as soon as it exists.
    let created = clock::now();
    let options = terrace_tests::admin_options();
    let runtime = terrace_rpc::io_runtime();
    runtime.block_on(async {
        let client = terrace_rpc::Client::connect(&worker.address, &options)
            .await
            .expect("connect to the worker");
        for n in 0..JOBS {
            let key = PartitionKey {
                job: job(n),
                partition: terrace_tier_api::PartitionId::new(&b"p"[..]).expect("partition id"),
            };
            client
                .call(CreatePartition {
                    key,
                    num_subpartitions: 1,
                    broadcast_only: false,
                    continuation: false,
                    relocated: false,
                })
                .await
                .expect("create a partition");
        }
        client.close();
    });
    assert_eq!(worker_stats(&worker.address).partitions, JOBS);
    // The master knows every job but the last (which sorts last: beyond the
    // first heartbeat's page), renewed every 500 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let stop = Arc::clone(&stop);
        let master = master_address.clone();
        std::thread::spawn(move || {
            terrace_rpc::io_runtime().block_on(async {
                let client = terrace_rpc::Client::connect(&master, &terrace_tests::admin_options())
                    .await
                    .expect("connect to the master");
                while !stop.load(Ordering::SeqCst) {
                    for n in 0..JOBS - 1 {
                        client
                            .call(RegisterJob { job: job(n) })
                            .await
                            .expect("renew a job");
                    }
                    // Paced: a renewal round every 500 ms, well inside the lease.
                    clock::sleep(Duration::from_millis(500)).await;
                }
                client.close();
            })
        })
    };
    let took = wait_until(LEASE * 4, "the job no master knows is dropped", || {
        worker_stats(&worker.address).partitions == JOBS - 1
    });
    eprintln!(
        "control: the unknown job of {JOBS} was dropped {took:?} after the master knew the others"
    );
    assert!(
        clock::elapsed(created) >= LEASE,
        "dropped {:?} after it was created, before a lease",
        clock::elapsed(created)
    );
    // The others stay: they are known (for a whole lease more).
    throughout(LEASE, Duration::from_millis(200), || {
        assert_eq!(worker_stats(&worker.address).partitions, JOBS - 1)
    });
    stop.store(true, Ordering::SeqCst);
    join_within(renewer, Duration::from_secs(30), "the renewer");
}
