//! Flink 1.20.3 and 2.2.1 batch jobs with Terrace as the external remote tier
//! of hybrid shuffle, end to end: real `terrace master` and `terrace worker`
//! processes, the adapter jar of the job's Flink line built by
//! `scripts/build-flink-jar.sh` (which fetches that Flink and builds the JNI
//! library), and the jobs of `flink-plugin/e2e` in a local MiniCluster,
//! started through `scripts/run-flink-job.sh`.
//!
//! Each job's result file must be byte-identical to the same job on Flink's
//! default hybrid shuffle (memory and disk tiers); the worker's own counters
//! (a `WorkerStats` request) must show the job's bytes went through Terrace,
//! and nothing may be left on the worker afterwards. A SIGKILLed worker must
//! end the job (rerun on a new worker, or a failure naming the lost
//! partition) within a bounded time.
//!
//! Every child process runs under a deadline and is killed (its whole process
//! group) when it passes it, so a test fails instead of hanging. Flink jobs run
//! one at a time (the machine has two cores).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use terrace_tests::logs;

use terrace_rpc::clock;
use terrace_tests::child::{Child, Finished};
use terrace_tests::pki::TestPki;
use terrace_tests::{ServiceProcess, worker_stats};
use terrace_tier_api::protocol::{ListWorkers, WorkerStatsReply};

/// Flink's own class for the external remote tier key.
const TERRACE_FACTORY: &str = "dev.terrace.flink.TerraceTierFactory";

/// A Flink release the tests run (`scripts/fetch-flink.sh` pins each), and
/// through it the adapter line whose jar they use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Line(&'static str);

impl Line {
    /// The 1.20 line's release of the suite.
    const V1_20: Line = Line("1.20.3");
    /// The 2.x line's release of the suite.
    const V2: Line = Line("2.2.1");
    /// The other 2.x releases the 2.x jar is run on.
    const OTHER_2: [Line; 3] = [Line("2.0.1"), Line("2.1.3"), Line("2.3.0")];

    fn version(self) -> &'static str {
        self.0
    }
}

/// A job and its size: what a result depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Work {
    line: Line,
    /// The job's main class in `flink-plugin/e2e`.
    class: &'static str,
    records: u64,
    /// Payload bytes per record (`KEYED`) or record bytes (`SHUFFLE_HEAVY`).
    payload: u64,
}

/// Keyed aggregation over records with random payloads, verified by the consumer.
const KEYED: &str = "dev.terrace.e2e.KeyedAggregationJob";
/// byte[] records, half of each incompressible, summed per subtask.
const SHUFFLE_HEAVY: &str = "dev.terrace.e2e.ShuffleHeavyJob";
/// The keyed aggregation whose JobManager fails over once every shuffle-1
/// producer finished (Flink 2.x).
const JM_FAILOVER: &str = "dev.terrace.e2e.JobManagerFailoverJob";

/// The keyed-aggregation job at about 40 MB through shuffle 1.
const fn keyed(line: Line) -> Work {
    Work {
        line,
        class: KEYED,
        records: 400_000,
        payload: 100,
    }
}

/// The ≥ 1 GiB keyed-aggregation job (1.10 GiB through shuffle 1).
const fn big(line: Line) -> Work {
    Work {
        line,
        class: KEYED,
        records: 4_000_000,
        payload: 256,
    }
}

/// Building the jar on a fresh machine downloads Flink (~232 MB) and compiles
/// the JNI crate in release mode.
const BUILD_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// One Flink job, JVM start to exit.
const JOB_DEADLINE: Duration = Duration::from_secs(240);
/// From the SIGKILL of the worker to the end of the job.
const KILLED_JOB_BOUND: Duration = Duration::from_secs(150);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

/// One Flink job at a time: they each use both cores.
fn flink_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Scratch space shared by the tests of this process (default-shuffle
/// results, build logs): `<repo>/target/flink/e2e-scratch`, emptied on first use.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("target/flink/e2e-scratch");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

/// Flink's local spill directory (`io.tmp.dirs`) for every job of this
/// process.
///
/// Flink 1.20's disk tier refuses to start a segment when its directory's file
/// system has less than 5% of its total size free (a constant in
/// `DiskTierFactory`, no configuration key), and the default hybrid shuffle
/// then fails with "Failed to choose a storage tier to start a new segment".
/// A CI machine's disk was once that full (≈ 12 GiB free of 252 GiB), which
/// failed every reference run though nothing was wrong with the job. So the
/// jobs spill under [`scratch`] while its file system has room, and
/// otherwise under `/dev/shm` when that has room.
fn flink_tmp_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match roomy_or_shm(scratch()) {
            Some(shm) => shm.join(format!("terrace-flink-e2e-{}", std::process::id())),
            None => scratch().join("flink-tmp"),
        };
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create Flink's spill directory");
        eprintln!(
            "flink_e2e: Flink spills under {} (free bytes, fraction of its file system: {:?})",
            dir.display(),
            free_fraction(&dir)
        );
        dir
    })
}

/// Where the Terrace clusters of this process keep their files: the system
/// temporary directory while its file system has room, otherwise `/dev/shm`.
///
/// A worker reports itself full, and the master places nothing on it, when no
/// data directory has room for its memory budget (1 GiB) above its reserve
/// (1 GiB). A CI machine's disk, after a cold build of the workspace, once
/// had less than that free, and every job on Terrace failed with "no live
/// worker can take a partition (3 live: 3 full)".
fn cluster_base() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        let dir = roomy_or_shm(&tmp).map_or(tmp, Path::to_path_buf);
        eprintln!(
            "flink_e2e: Terrace clusters keep their files under {} (free bytes, fraction: {:?})",
            dir.display(),
            free_fraction(&dir)
        );
        dir
    })
}

/// `/dev/shm` when `dir`'s file system lacks room (8 GiB and 10% of it free)
/// and `/dev/shm` has it; `None` to stay on `dir`.
fn roomy_or_shm(dir: &Path) -> Option<&'static Path> {
    let roomy = |dir: &Path| {
        free_fraction(dir).is_some_and(|(free, fraction)| free >= 8 << 30 && fraction >= 0.10)
    };
    let shm = Path::new("/dev/shm");
    (!roomy(dir) && roomy(shm)).then_some(shm)
}

/// Bytes available to an unprivileged writer on `dir`'s file system, and that
/// as a fraction of its size (what Flink's `File.getUsableSpace` /
/// `getTotalSpace` compare).
fn free_fraction(dir: &Path) -> Option<(u64, f64)> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    let (available, blocks) = (stat.blocks_available(), stat.blocks());
    (blocks > 0).then(|| {
        (
            available.saturating_mul(stat.fragment_size()),
            available as f64 / blocks as f64,
        )
    })
}

/// What Flink logs (at INFO, `flink-plugin/e2e/log4j2-e2e.properties`) when a
/// task attempt changes state: `<task> (<i>/<n>) (<attempt id>) switched from
/// A to B`, where the attempt id is `<graph>_<vertex>_<subtask>_<attempt>`.
const TASK_STATE_LOG: &str = ") switched from ";
/// The name of shuffle 1's producer tasks in that log.
const SHUFFLE_1_PRODUCER: &str = "Source: generate -> make-records (";
/// The adapter's warning when a worker's partitions are lost; it ends with
/// the producers' attempt ids, `[id, id, ...]`.
const LOST_PARTITIONS_LOG: &str = "asking Flink to re-run their producers: [";

/// Which of shuffle 1's producer subtasks (0-based) ran
/// more than once in a job, and which had a partition Terrace reported lost,
/// read from the job's log.
#[derive(Debug, Default)]
struct Reruns {
    subtasks: usize,
    rerun: BTreeSet<u32>,
    lost: BTreeSet<u32>,
}

impl Reruns {
    fn from_log(log: &str) -> Reruns {
        // attempt id -> subtask, and the attempts each subtask ran
        let mut subtask_of: BTreeMap<&str, u32> = BTreeMap::new();
        let mut attempts: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let mut lost_ids: Vec<&str> = Vec::new();
        for line in log.lines() {
            if let Some(at) = line.find(LOST_PARTITIONS_LOG) {
                let list = &line[at + LOST_PARTITIONS_LOG.len()..];
                let list = list.split(']').next().unwrap_or_default();
                lost_ids.extend(list.split(", ").filter(|id| !id.is_empty()));
            }
            let (Some(name), Some(end)) =
                (line.find(SHUFFLE_1_PRODUCER), line.find(TASK_STATE_LOG))
            else {
                continue;
            };
            // "2/4) (<graph>_<vertex>_<subtask>_<attempt>"
            let rest = &line[name + SHUFFLE_1_PRODUCER.len()..end];
            let parsed = rest.rsplit_once(" (").and_then(|(_, id)| {
                let mut fields = id.rsplit('_');
                let attempt = fields.next()?.parse::<u32>().ok()?;
                let subtask = fields.next()?.parse::<u32>().ok()?;
                Some((subtask, attempt, id))
            });
            let Some((subtask, attempt, id)) = parsed else {
                panic!("cannot parse Flink's task state line: {line}");
            };
            subtask_of.insert(id, subtask);
            attempts.entry(subtask).or_default().insert(attempt);
        }
        Reruns {
            subtasks: attempts.len(),
            rerun: attempts
                .iter()
                .filter(|(_, attempts)| attempts.iter().any(|&a| a > 0))
                .map(|(&subtask, _)| subtask)
                .collect(),
            lost: lost_ids
                .iter()
                .filter_map(|id| subtask_of.get(id).copied())
                .collect(),
        }
    }
}

/// [`Finished::tail`] without Flink's task-state lines, which crowd out the cause of a failure.
trait FlinkTail {
    fn tail(&self) -> String;
}

impl FlinkTail for Finished {
    fn tail(&self) -> String {
        self.tail_skipping(TASK_STATE_LOG)
    }
}

/// The adapter jar of `line` (`target/flink/terrace-flink-1.20.jar` or
/// `terrace-flink-2.x.jar`), built once per line and test process by the
/// build script (idempotent: a no-op when nothing changed).
fn terrace_jar(line: Line) -> PathBuf {
    static JARS: Mutex<Vec<(Line, PathBuf)>> = Mutex::new(Vec::new());
    let mut jars = JARS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, jar)) = jars.iter().find(|(l, _)| *l == line) {
        return jar.clone();
    }
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("scripts/build-flink-jar.sh"))
        .arg(line.version())
        .current_dir(repo_root());
    if let Ok(cargo) = std::env::var("CARGO") {
        command.env("CARGO", cargo);
    }
    let done = Child::spawn(command, scratch(), "build-flink-jar").wait(BUILD_DEADLINE);
    assert!(
        done.succeeded(),
        "scripts/build-flink-jar.sh {} failed or passed {BUILD_DEADLINE:?} ({:?}):\n{}",
        line.version(),
        done.status,
        done.tail()
    );
    let jar = PathBuf::from(
        done.stdout
            .lines()
            .last()
            .expect("the script prints the jar path")
            .trim(),
    );
    assert!(jar.is_file(), "{} does not exist", jar.display());
    eprintln!(
        "flink_e2e: jar ready in {:.1?}: {}",
        done.elapsed,
        jar.display()
    );
    jars.push((line, jar.clone()));
    jar
}

/// What a job needs to run.
struct Job<'a> {
    name: &'a str,
    parallelism: u32,
    work: Work,
    /// Flink configuration, `key=value`.
    flink: Vec<String>,
}

impl Job<'_> {
    fn command(&self, output: &Path) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(repo_root().join("scripts/run-flink-job.sh"))
            .arg(self.parallelism.to_string())
            .arg(self.work.records.to_string())
            .arg(self.work.payload.to_string())
            .arg(output)
            .arg(format!("io.tmp.dirs={}", flink_tmp_dir().display()))
            .args(&self.flink)
            .current_dir(repo_root())
            .env("FLINK_VERSION", self.work.line.version())
            .env("JOB_CLASS", self.work.class)
            .env("TERRACE_JAR", terrace_jar(self.work.line))
            .env("JAVA_HEAP", "3g")
            .env("E2E_LOG_LEVEL", "WARN");
        command
    }

    fn spawn(&self, output: &Path, logs: &Path) -> Child {
        Child::spawn(self.command(output), logs, self.name)
    }
}

/// The job's result on Flink's default hybrid shuffle (memory and disk tiers)
/// of the same Flink. Results do not depend on the parallelism, so one run
/// per work is kept for the whole test process.
fn default_result(work: Work) -> PathBuf {
    static RESULTS: Mutex<Vec<(Work, PathBuf)>> = Mutex::new(Vec::new());
    let mut results = RESULTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, path)) = results.iter().find(|(w, _)| *w == work) {
        return path.clone();
    }
    let Work {
        line,
        class,
        records,
        payload,
    } = work;
    let class_name = class.rsplit('.').next().unwrap_or(class);
    let output = scratch().join(format!(
        "default-{}-{class_name}-{records}x{payload}.txt",
        line.version()
    ));
    let job = Job {
        name: "default-hybrid",
        parallelism: 4,
        work,
        flink: vec!["execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL".into()],
    };
    let done = job.spawn(&output, scratch()).wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "the job on Flink {}'s default hybrid shuffle failed ({:?}):\n{}",
        line.version(),
        done.status,
        done.tail()
    );
    eprintln!(
        "flink_e2e: Flink {} default hybrid shuffle, {class_name} {records} x {payload} B: {:.1?}",
        line.version(),
        done.elapsed
    );
    results.push((work, output.clone()));
    output
}

/// Flink's keys for a restart strategy of `attempts` restarts 1 s apart.
fn restart_strategy(attempts: u32) -> [String; 3] {
    [
        "restart-strategy.type=fixed-delay".to_string(),
        format!("restart-strategy.fixed-delay.attempts={attempts}"),
        "restart-strategy.fixed-delay.delay=1s".to_string(),
    ]
}

/// A master and workers as processes, each worker with its own data
/// directory. Fields drop in order: workers, then the master, then the files.
struct Cluster {
    workers: Vec<(ServiceProcess, PathBuf)>,
    master: ServiceProcess,
    dir: tempfile::TempDir,
    /// Extra `terrace worker` flags and environment.
    worker_args: Vec<String>,
    worker_env: Vec<(String, String)>,
    /// Set: the cluster has a secret and serves TLS with these files.
    pki: Option<TestPki>,
}

impl Cluster {
    /// A master that declares a worker lost after `worker_timeout`, and one worker.
    fn start(worker_timeout: &str) -> Cluster {
        Cluster::start_with(worker_timeout, Vec::new(), Vec::new())
    }

    fn start_with(
        worker_timeout: &str,
        worker_args: Vec<String>,
        worker_env: Vec<(String, String)>,
    ) -> Cluster {
        Cluster::start_full(worker_timeout, worker_args, worker_env, false)
    }

    /// [`Cluster::start`] with a cluster secret and TLS on every connection.
    fn start_secured(worker_timeout: &str) -> Cluster {
        Cluster::start_full(worker_timeout, Vec::new(), Vec::new(), true)
    }

    fn start_full(
        worker_timeout: &str,
        mut worker_args: Vec<String>,
        worker_env: Vec<(String, String)>,
        secured: bool,
    ) -> Cluster {
        let dir = tempfile::tempdir_in(cluster_base()).expect("cluster directory");
        let pki = secured.then(|| TestPki::generate(dir.path()));
        let security = pki
            .as_ref()
            .map_or(String::new(), |p| p.security_toml(true));
        if pki.is_some() {
            let worker_config = dir.path().join("worker.toml");
            fs::write(&worker_config, &security).expect("write worker config");
            worker_args.push("--config".into());
            worker_args.push(worker_config.to_str().expect("utf-8 path").into());
        }
        let config = dir.path().join("master.toml");
        fs::write(
            &config,
            format!("worker_timeout = \"{worker_timeout}\"\n{security}"),
        )
        .expect("write master config");
        let config = config.to_str().expect("utf-8 path").to_string();
        let master =
            ServiceProcess::start(&["master", "--config", &config, "--listen", "127.0.0.1:0"]);
        let mut cluster = Cluster {
            workers: Vec::new(),
            master,
            dir,
            worker_args,
            worker_env,
            pki,
        };
        cluster.add_worker();
        cluster
    }

    fn add_worker(&mut self) -> &ServiceProcess {
        let data = self
            .dir
            .path()
            .join(format!("worker-{}", self.workers.len()));
        fs::create_dir_all(&data).expect("worker data directory");
        let mut args = vec![
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--master",
            &self.master.address,
        ];
        args.extend(self.worker_args.iter().map(String::as_str));
        let worker = ServiceProcess::start_with_env(&args, &self.worker_env);
        self.workers.push((worker, data));
        &self.workers.last().expect("just pushed").0
    }

    fn worker(&self, i: usize) -> &ServiceProcess {
        &self.workers[i].0
    }

    /// [`Cluster::flink_config`] for jobs that lose a worker: quick loss
    /// detection and short timeouts, and a restart strategy of `attempts`
    /// restarts 1 s apart.
    fn flink_config_with_restarts(&self, attempts: u32) -> Vec<String> {
        let mut flink = self.flink_config();
        flink.extend([
            "terrace.master.poll-interval=500ms".to_string(),
            "terrace.connect-timeout=2s".to_string(),
            "terrace.request-timeout=30s".to_string(),
        ]);
        flink.extend(restart_strategy(attempts));
        flink
    }

    /// Waits (up to 20 s) until the master lists `n` workers.
    fn wait_registered(&self, n: usize) {
        terrace_tests::wait_until(
            Duration::from_secs(20),
            &format!("{n} workers register"),
            || {
                let listed =
                    terrace_tests::call_with(&self.master.address, &self.options(), ListWorkers);
                matches!(listed, Ok(list) if list.workers.len() == n)
            },
        );
    }

    /// Options of a one-off request: the cluster's secret and TLS when it has them.
    fn options(&self) -> terrace_rpc::ClientOptions {
        let mut options = terrace_tests::admin_options();
        if let Some(pki) = &self.pki {
            options.credential = terrace_rpc::Credential::Cluster(
                terrace_rpc::ClusterSecret::load(&pki.secret_file).expect("test secret"),
            );
            options.tls = Some(terrace_rpc::TlsClient::load(&pki.ca_file).expect("test CA"));
        }
        options
    }

    /// Worker `i`'s counters, asked with the cluster's secret and TLS when it has them.
    fn stats(&self, i: usize) -> WorkerStatsReply {
        terrace_tests::worker_stats_with(&self.worker(i).address, &self.options())
    }

    /// Flink configuration that makes Terrace the (only) tier of hybrid shuffle.
    fn flink_config(&self) -> Vec<String> {
        let mut config = vec![
            "execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL".into(),
            format!(
                "taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class={TERRACE_FACTORY}"
            ),
            format!("terrace.master.address={}", self.master.address),
        ];
        if let Some(pki) = &self.pki {
            config.push(format!("terrace.secret-file={}", pki.secret_file.display()));
            config.push(format!("terrace.tls.ca-file={}", pki.ca_file.display()));
        }
        config
    }

    /// Waits (up to 20 s) until worker `i` holds no partition and its data
    /// directory no file: releases run when Flink releases partitions and jobs.
    fn assert_worker_empty(&self, i: usize) {
        let (worker, data) = &self.workers[i];
        let held = || {
            let stats = self.stats(i);
            let files: Vec<PathBuf> = terrace_tests::entries_under(data)
                .into_iter()
                .filter(|p| !p.is_dir())
                .collect();
            (stats.partitions, files)
        };
        let empty = terrace_tests::wait::poll_until(Duration::from_secs(20), || {
            let (partitions, files) = held();
            partitions == 0 && files.is_empty()
        });
        let (partitions, files) = held();
        assert!(
            empty,
            "worker {} still holds {} partition(s) and {} file(s) after the job: {:?}",
            worker.address,
            partitions,
            files.len(),
            files.iter().take(5).collect::<Vec<_>>()
        );
    }
}

/// Regular files below `dir`, recursively.
fn assert_same_result(terrace: &Path, default: &Path, what: &str) {
    let have = fs::read(terrace).unwrap_or_else(|e| panic!("read {}: {e}", terrace.display()));
    let want = fs::read(default).unwrap_or_else(|e| panic!("read {}: {e}", default.display()));
    assert!(
        !want.is_empty(),
        "the default-shuffle result of {what} is empty"
    );
    assert!(
        have == want,
        "{what}: the result on Terrace ({} bytes) differs from the result on Flink's default hybrid shuffle ({} bytes)",
        have.len(),
        want.len()
    );
}

/// Runs `work` on a fresh one-worker cluster, checks its result against the
/// default shuffle, the worker's counters, and that the worker is empty afterwards.
fn run_on_terrace(name: &str, parallelism: u32, work: Work) {
    run_on(Cluster::start, name, parallelism, work, &[]);
}

/// Runs `work` on the cluster `cluster` starts, with Terrace's Flink
/// configuration plus `extra`; checks as [`run_on_terrace`].
fn run_on(
    cluster: impl FnOnce(&str) -> Cluster,
    name: &str,
    parallelism: u32,
    work: Work,
    extra: &[&str],
) -> Vec<WorkerStatsReply> {
    let _flink = flink_lock();
    let default = default_result(work);
    let cluster = cluster("10s");
    let output = cluster.dir.path().join(format!("{name}.txt"));
    let mut flink = cluster.flink_config();
    flink.extend(extra.iter().map(|s| s.to_string()));
    let job = Job {
        name,
        parallelism,
        work,
        flink,
    };
    let done = job.spawn(&output, cluster.dir.path()).wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "{name} on Terrace (Flink {}) failed or passed {JOB_DEADLINE:?} ({:?}):\n{}",
        work.line.version(),
        done.status,
        done.tail()
    );
    eprintln!(
        "flink_e2e: {name} on Terrace (Flink {}): {:.1?}",
        work.line.version(),
        done.elapsed
    );
    assert_same_result(&output, &default, name);

    // Every record's payload crossed shuffle 1: unless compressed, at least
    // records x payload bytes were pushed to the workers. Every pushed byte
    // was read back once.
    let stats: Vec<WorkerStatsReply> = (0..cluster.workers.len())
        .map(|i| cluster.stats(i))
        .collect();
    let payload_bytes = work.records * work.payload;
    for (i, s) in stats.iter().enumerate() {
        eprintln!(
            "flink_e2e: {name}: worker {i} pushed {} B, read {} B (payload bytes {payload_bytes})",
            s.bytes_pushed, s.bytes_read
        );
    }
    let pushed: u64 = stats.iter().map(|s| s.bytes_pushed).sum();
    let read: u64 = stats.iter().map(|s| s.bytes_read).sum();
    if work.class == KEYED {
        // Random payloads: no compression shrinks them.
        assert!(
            pushed >= payload_bytes,
            "{name}: the workers saw {pushed} bytes pushed, fewer than the {payload_bytes} payload bytes of shuffle 1"
        );
    }
    assert_eq!(
        read, pushed,
        "{name}: consumers must read back exactly what producers pushed"
    );
    for i in 0..cluster.workers.len() {
        cluster.assert_worker_empty(i);
    }
    stats
}

/// Three workers and a 1 MiB split size under a job shuffling about 40 MB:
/// every partition outgrows its worker and goes on on the others, consumers
/// follow the redirects, and the result is identical to Flink's own shuffle.
#[test]
fn keyed_aggregation_on_three_workers_with_a_small_split_size_matches_default_shuffle() {
    let _logs = logs::capture();
    let stats = run_on(
        |timeout| {
            let mut cluster = Cluster::start_with(
                timeout,
                vec!["--split-size".to_string(), "1MiB".to_string()],
                Vec::new(),
            );
            cluster.add_worker();
            cluster.add_worker();
            cluster.wait_registered(3);
            cluster
        },
        "terrace-splits",
        4,
        keyed(Line::V1_20),
        &[],
    );
    for (i, s) in stats.iter().enumerate() {
        assert!(
            s.bytes_pushed > 0,
            "worker {i} got no data: splits spread the partitions over all three"
        );
    }
}

/// A worker with 4 MiB of local disk and a 32 MiB memory budget under a job
/// shuffling about 40 MB: flushes overflow to a real S3-compatible server,
/// sealed partitions are compacted there, and the job's result is still
/// identical to Flink's own shuffle.
///
/// Parts of 64 MiB keep every compacted object to one PUT: s3s-fs names a
/// multipart upload's state file after the base64 of the object's key, and
/// Flink's 80-byte partition ids make that name pass the file system's
/// 255-byte limit (S3 itself takes keys of 1024 bytes).
#[test]
fn keyed_aggregation_through_a_tiny_disk_and_an_object_store_matches_default_shuffle() {
    let _logs = logs::capture();
    let s3 = terrace_tests::s3::S3Server::start();
    let args = vec![
        "--dir-capacity".to_string(),
        "4MiB".to_string(),
        "--memory-budget".to_string(),
        "32MiB".to_string(),
        "--object-store".to_string(),
        s3.url("flink"),
        "--set".to_string(),
        "object_store.part_size=64MiB".to_string(),
    ];
    let env = s3.env();
    let stats = run_on(
        move |timeout| Cluster::start_with(timeout, args, env),
        "terrace-object-store",
        4,
        keyed(Line::V1_20),
        &[],
    );
    let objects = stats[0]
        .load
        .tiers
        .clone()
        .and_then(|t| t.object_store)
        .expect("the worker reports its object store");
    eprintln!("flink_e2e: object store: {objects:?}");
    assert!(
        objects.bytes_overflowed > 0,
        "data overflowed to the object store: {objects:?}"
    );
    assert_eq!(objects.failures, 0, "{objects:?}");
    // Workers delete a dropped job's objects in the background.
    let deleted =
        terrace_tests::wait::poll_until(Duration::from_secs(30), || s3.objects("flink").is_empty());
    assert!(
        deleted,
        "the job's objects are deleted: {:?}",
        s3.objects("flink")
    );
}

/// On a cluster with a secret and TLS: the JobManager's agent gets the job's
/// token from the master, every producer and consumer presents it to the
/// worker, and every connection is TLS.
#[test]
fn keyed_aggregation_at_parallelism_4_with_a_secret_and_tls_matches_default_shuffle() {
    let _logs = logs::capture();
    run_on(
        Cluster::start_secured,
        "terrace-p4-tls",
        4,
        keyed(Line::V1_20),
        &[],
    );
}

#[test]
fn keyed_aggregation_shuffling_a_gib_at_parallelism_8_matches_default_shuffle() {
    let _logs = logs::capture();
    run_on_terrace("terrace-p8-1gib", 8, big(Line::V1_20));
}

/// Flips one stored byte of shuffle 1 after its producers finished and
/// before any consumer read it (the job's `job.gate` holds the consumers):
/// the consumer's checksum check fails, Flink gets PartitionNotFoundException
/// and reruns the producer, and the job's result is still exact.
#[test]
fn corrupted_stored_byte_reruns_the_producer_and_the_result_is_exact() {
    let _logs = logs::capture();
    let work = keyed(Line::V1_20);
    let _flink = flink_lock();
    let default = default_result(work);
    let cluster = Cluster::start_with(
        "10s",
        vec!["--memory-budget".into(), "32MiB".into()],
        Vec::new(),
    );
    let output = cluster.dir.path().join("corrupted.txt");
    let gate = cluster.dir.path().join("gate");
    let mut flink = cluster.flink_config();
    flink.extend([
        format!("job.gate={}", gate.display()),
        "restart-strategy.type=fixed-delay".into(),
        "restart-strategy.fixed-delay.attempts=5".into(),
        "restart-strategy.fixed-delay.delay=1s".into(),
    ]);
    let job = Job {
        name: "terrace-corrupted",
        parallelism: 4,
        work,
        flink,
    };
    let running = job.spawn(&output, cluster.dir.path());

    // Shuffle 1 is complete when its pushes stop (its consumers wait at the gate).
    let address = cluster.worker(0).address.clone();
    let until = clock::now() + Duration::from_secs(120);
    let mut last = 0;
    loop {
        // Pushes have stopped when two samples 2 s apart agree: a quiet
        // period, which no other sign shows.
        terrace_tests::hold(Duration::from_secs(2));
        let pushed = worker_stats(&address).bytes_pushed;
        if pushed >= work.records * work.payload && pushed == last {
            break;
        }
        assert!(
            clock::now() < until,
            "shuffle 1 did not finish within 120 s ({pushed} bytes pushed)"
        );
        last = pushed;
    }
    // Its largest data file: flip a byte in the middle.
    let (_, data) = &cluster.workers[0];
    terrace_tests::corrupt_largest_file(data);
    fs::write(&gate, b"open").expect("open the gate");

    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "the job with a corrupted byte failed ({:?}):\n{}",
        done.status,
        done.tail()
    );
    assert_same_result(&output, &default, "the job rerun after a corrupted byte");
    assert!(
        done.stderr.contains("checksum mismatch"),
        "the consumer never read the corrupted byte:\n{}",
        done.tail()
    );
    assert!(
        done.stderr.contains("PartitionNotFoundException"),
        "the corruption did not reach Flink as PartitionNotFoundException:\n{}",
        done.tail()
    );
    let stats = worker_stats(&address);
    assert!(
        stats.bytes_pushed > last,
        "no producer ran again: {} bytes pushed before and after",
        stats.bytes_pushed
    );
    cluster.assert_worker_empty(0);
}

/// SIGKILLs the only worker mid-shuffle and starts another: the job must end
/// within [`KILLED_JOB_BOUND`] — rerun on the new worker with the right
/// result, or failed with an error naming the lost partition — never hang.
#[test]
fn killed_worker_mid_shuffle_ends_the_job_in_bounded_time() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let work = big(Line::V1_20);
    let default = default_result(work);
    let mut cluster = Cluster::start("3s");
    let output = cluster.dir.path().join("killed.txt");
    let flink = cluster.flink_config_with_restarts(20);
    let job = Job {
        name: "terrace-killed-worker",
        parallelism: 4,
        work,
        flink,
    };
    let running = job.spawn(&output, cluster.dir.path());

    // Mid-shuffle: once 200 MB of the ~1.2 GB have been pushed.
    let threshold = 200 << 20;
    let (pushed, _) = terrace_tests::wait_for(
        Duration::from_secs(90),
        "the job pushes 200 MB (the kill point)",
        || {
            let pushed = worker_stats(&cluster.worker(0).address).bytes_pushed;
            (pushed >= threshold).then_some(pushed)
        },
    );
    eprintln!("flink_e2e: killing the worker after {pushed} bytes pushed");
    let (first, _) = cluster.workers.remove(0);
    let killed_at = clock::now();
    first.kill();
    let replacement = cluster.add_worker().address.clone();

    let remaining = JOB_DEADLINE
        .saturating_sub(clock::elapsed(running.started))
        .max(KILLED_JOB_BOUND);
    let done = running.wait(remaining);
    let after_kill = clock::elapsed(killed_at);
    eprintln!(
        "flink_e2e: job with a killed worker ended {after_kill:.1?} after the kill ({:?})",
        done.status
    );
    assert!(
        done.status.is_some(),
        "the job hung after its worker was killed:\n{}",
        done.tail()
    );
    assert!(
        after_kill < KILLED_JOB_BOUND,
        "the job took {after_kill:?} after the kill, more than {KILLED_JOB_BOUND:?}"
    );
    if done.succeeded() {
        // Rerun: the lost producers ran again on the new worker.
        assert_same_result(
            &output,
            &default,
            "the job rerun after its worker was killed",
        );
        let stats = worker_stats(&replacement);
        assert!(
            stats.bytes_pushed > 0,
            "the job succeeded but pushed nothing to the replacement worker"
        );
        // Lost partitions reported by the master agent show up in the log.
        let names_loss =
            done.stderr.contains("worker lost") || done.stderr.contains("Terrace lost");
        let failed_tasks = done.stderr.contains("switched from RUNNING to FAILED");
        assert!(
            names_loss || failed_tasks,
            "no sign in the log that Flink noticed the lost worker:\n{}",
            done.tail()
        );
        let index = cluster.workers.len() - 1;
        cluster.assert_worker_empty(index);
    } else {
        let names_partition = done.stderr.contains("PartitionNotFoundException")
            || done.stderr.contains("Terrace lost")
            || done.stderr.contains("partition");
        assert!(
            names_partition,
            "the job failed without naming the lost partition:\n{}",
            done.tail()
        );
    }
}

/// What befalls the worker that first takes 100 MB of the big job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL: its connections reset at once.
    Kill,
    /// SIGSTOP, continued only after the job ended: a hang (its kernel
    /// keeps the connections open and accepts new ones, nothing answers).
    Hang,
    /// SIGSTOP, then SIGCONT this much later: a pause, not a failure.
    Pause(Duration),
}

/// How a job with a faulty worker went.
struct Faulted {
    reruns: Reruns,
    elapsed: Duration,
}

/// Continues a stopped worker when dropped (a failed assertion included),
/// so the cluster's teardown can kill it.
struct ContinueOnDrop(u32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Runs the big job on `cluster` (all its workers registered) with a
/// restart strategy of 5 attempts 1 s apart, lets `fault` befall the first
/// worker that has taken 100 MB (with splits, where the long last parts of
/// the chains land depends on timing), and checks the job still ends with
/// Flink's default result and every worker (a hung one continued after the
/// job) ends empty.
fn fault_a_worker_mid_shuffle(
    line: Line,
    mut cluster: Cluster,
    name: &str,
    fault: Fault,
) -> Faulted {
    let work = big(line);
    let default = default_result(work);
    let output = cluster.dir.path().join(format!("{name}.txt"));
    let flink = cluster.flink_config_with_restarts(5);
    let job = Job {
        name,
        parallelism: 4,
        work,
        flink,
    };
    // Counters add up over a cluster's jobs: this job's are the growth.
    let before: Vec<u64> = (0..cluster.workers.len())
        .map(|i| cluster.stats(i).bytes_pushed)
        .collect();
    let running = job.spawn(&output, cluster.dir.path());
    // Mid-shuffle: once a worker has taken 100 MB of this job.
    let threshold = 100 << 20;
    let ((victim, pushed), _) = terrace_tests::wait_for(
        Duration::from_secs(90),
        "a worker takes 100 MB (the fault point)",
        || {
            let pushed: Vec<u64> = (0..cluster.workers.len())
                .map(|i| cluster.stats(i).bytes_pushed - before[i])
                .collect();
            let i = pushed.iter().position(|&p| p >= threshold)?;
            Some((i, pushed))
        },
    );
    eprintln!("flink_e2e: {name}: {fault:?} worker {victim} of {pushed:?} bytes pushed");
    let mut stopped = None;
    match fault {
        Fault::Kill => {
            let (killed, _) = cluster.workers.remove(victim);
            killed.kill();
        }
        Fault::Hang => {
            let pid = cluster.worker(victim).pid();
            stopped = Some(ContinueOnDrop(pid));
            terrace_tests::stop_process(pid);
        }
        Fault::Pause(pause) => {
            let pid = cluster.worker(victim).pid();
            let paused = ContinueOnDrop(pid);
            terrace_tests::stop_process(pid);
            terrace_tests::hold(pause);
            drop(paused);
        }
    }
    let remaining = JOB_DEADLINE
        .saturating_sub(clock::elapsed(running.started))
        .max(KILLED_JOB_BOUND);
    let done = running.wait(remaining);
    assert!(
        done.succeeded(),
        "{name}: the job failed after worker {victim} met {fault:?} ({:?}):\n{}",
        done.status,
        done.tail()
    );
    eprintln!("flink_e2e: {name}: {:.1?}", done.elapsed);
    assert_same_result(&output, &default, name);
    // A hung worker resumes after the job and ends empty like the others:
    // it was taken for lost (told so, it drops what it held) and its job
    // was released meanwhile. tests/tests/hung_worker.rs checks the first
    // alone, with the job still running.
    drop(stopped);
    for i in 0..cluster.workers.len() {
        cluster.assert_worker_empty(i);
    }
    let reruns = Reruns::from_log(&done.stderr);
    eprintln!("flink_e2e: {name}: shuffle-1 producers {reruns:?}");
    Faulted {
        reruns,
        elapsed: done.elapsed,
    }
}

/// [`fault_a_worker_mid_shuffle`] with a SIGKILL: some producer runs again.
fn kill_a_worker_mid_shuffle(line: Line, cluster: Cluster, name: &str) -> Reruns {
    let reruns = fault_a_worker_mid_shuffle(line, cluster, name, Fault::Kill).reruns;
    assert!(
        !reruns.rerun.is_empty(),
        "{name}: the worker that had taken 100 MB died and no producer ran again: {reruns:?}"
    );
    reruns
}

/// Without splits, the partitions Terrace reports lost are exactly those with
/// data on the dead worker. Every shuffle-1 producer that ran again must be
/// one of them, and some producers must have had nothing there (else "only"
/// would be vacuous).
fn assert_only_lost_producers_reran(reruns: &Reruns) {
    assert!(
        reruns.rerun.is_subset(&reruns.lost),
        "producers whose data was not on the killed worker ran again: {reruns:?}"
    );
    assert!(
        reruns.lost.len() < reruns.subtasks,
        "placement put every producer on the killed worker: {reruns:?}"
    );
}

/// Two workers, a restart strategy of 5 attempts 1 s apart, and one worker
/// SIGKILLed mid-shuffle: the producers whose data was on it run again on
/// the other worker (a producer that finds its worker dead reports it and
/// moves its partition, so it is not placed there again) and the result is
/// exact.
#[test]
fn one_of_two_workers_killed_mid_shuffle_and_five_restarts_give_the_exact_result() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let mut cluster = Cluster::start("3s");
    cluster.add_worker();
    cluster.wait_registered(2);
    let reruns = kill_a_worker_mid_shuffle(Line::V1_20, cluster, "terrace-two-workers-killed");
    assert_only_lost_producers_reran(&reruns);
}

/// Three workers (no splits), a restart strategy, and one worker SIGKILLed
/// mid-shuffle: only the producers whose partitions were on it run again
/// (the others' partitions are still served), and the result is exact.
#[test]
fn one_of_three_workers_killed_mid_shuffle_reruns_only_the_producers_whose_data_was_on_it() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let mut cluster = Cluster::start("3s");
    cluster.add_worker();
    cluster.add_worker();
    cluster.wait_registered(3);
    let reruns = kill_a_worker_mid_shuffle(Line::V1_20, cluster, "terrace-three-workers-killed");
    assert_only_lost_producers_reran(&reruns);
}

/// Two workers, a restart strategy of 5 attempts 1 s apart, the default
/// liveness deadline (10 s), and one worker SIGSTOPped mid-shuffle and not
/// continued until the job ended: its connections stay open and nothing
/// answers. The producers and consumers waiting on it give up within the
/// deadline, the master stops placing there and reports its partitions
/// lost, so only producers whose data was on it run again; the job takes
/// at most 30 s more than the same job undisturbed on the same cluster.
/// Continued after the job, the worker drops everything it held.
#[test]
fn one_of_two_workers_hung_mid_shuffle_costs_seconds_and_serves_nothing_stale_after() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let mut cluster = Cluster::start("3s");
    cluster.add_worker();
    cluster.wait_registered(2);
    // The same job, undisturbed, on the same cluster.
    let work = big(Line::V1_20);
    let default = default_result(work);
    let output = cluster.dir.path().join("undisturbed.txt");
    let undisturbed = Job {
        name: "terrace-two-workers-undisturbed",
        parallelism: 4,
        work,
        flink: cluster.flink_config_with_restarts(5),
    }
    .spawn(&output, cluster.dir.path())
    .wait(JOB_DEADLINE);
    assert!(
        undisturbed.succeeded(),
        "the undisturbed job failed ({:?}):\n{}",
        undisturbed.status,
        undisturbed.tail()
    );
    assert_same_result(&output, &default, "the undisturbed job");
    let hung = fault_a_worker_mid_shuffle(
        Line::V1_20,
        cluster,
        "terrace-two-workers-hung",
        Fault::Hang,
    );
    eprintln!(
        "flink_e2e: a hung worker cost {:.1?} ({:.1?} undisturbed, {:.1?} with the hang)",
        hung.elapsed.saturating_sub(undisturbed.elapsed),
        undisturbed.elapsed,
        hung.elapsed
    );
    assert!(
        hung.elapsed <= undisturbed.elapsed + Duration::from_secs(30),
        "the job took {:?} with a hung worker, {:?} undisturbed: more than 30 s more",
        hung.elapsed,
        undisturbed.elapsed
    );
    assert!(
        !hung.reruns.rerun.is_empty(),
        "the hung worker had taken 100 MB and no producer ran again: {:?}",
        hung.reruns
    );
    assert_only_lost_producers_reran(&hung.reruns);
}

/// Three workers (worker timeout 10 s, the default liveness deadline), and
/// one SIGSTOPped mid-shuffle for 5 s, then continued: a pause, not a
/// failure. Nothing is taken for lost and no producer runs again.
#[test]
fn one_of_three_workers_paused_for_5s_mid_shuffle_reruns_nothing() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let mut cluster = Cluster::start("10s");
    cluster.add_worker();
    cluster.add_worker();
    cluster.wait_registered(3);
    let paused = fault_a_worker_mid_shuffle(
        Line::V1_20,
        cluster,
        "terrace-three-workers-paused",
        Fault::Pause(Duration::from_secs(5)),
    );
    assert!(
        paused.reruns.subtasks > 0,
        "no shuffle-1 producer found in Flink's log"
    );
    assert!(
        paused.reruns.rerun.is_empty() && paused.reruns.lost.is_empty(),
        "a 5 s pause cost re-runs: {:?}",
        paused.reruns
    );
}

/// Three workers with a 1 MiB split size (every partition is a chain over
/// several workers), a restart strategy, and one worker SIGKILLed
/// mid-shuffle: readers that reach a part on the dead worker fail, Flink
/// reruns those producers, and the result is exact. (The master agent knows
/// only each partition's first worker, so a part further down a chain is
/// found lost by its readers, not reported; the test does not compare the
/// reruns with the reported partitions.)
#[test]
fn one_of_three_workers_with_splits_killed_mid_shuffle_gives_the_exact_result() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let mut cluster = Cluster::start_with(
        "3s",
        vec!["--split-size".to_string(), "1MiB".to_string()],
        Vec::new(),
    );
    cluster.add_worker();
    cluster.add_worker();
    cluster.wait_registered(3);
    kill_a_worker_mid_shuffle(Line::V1_20, cluster, "terrace-three-workers-split-killed");
}

/// The build script makes one jar per Flink line and is idempotent: a
/// second run changes nothing.
#[test]
fn jar_build_is_idempotent_and_bundles_the_native_library() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    for line in [Line::V1_20, Line::V2] {
        let jar = terrace_jar(line);
        let before = fs::metadata(&jar)
            .and_then(|m| m.modified())
            .expect("jar mtime");
        let mut command = Command::new("bash");
        command
            .arg(repo_root().join("scripts/build-flink-jar.sh"))
            .arg(line.version())
            .current_dir(repo_root());
        let dir = tempfile::tempdir().expect("log directory");
        let again = Child::spawn(command, dir.path(), "rebuild").wait(Duration::from_secs(600));
        assert!(again.succeeded(), "second build failed:\n{}", again.tail());
        let after = fs::metadata(&jar)
            .and_then(|m| m.modified())
            .expect("jar mtime");
        assert_eq!(before, after, "an unchanged tree must not rewrite the jar");
        let listing = Command::new("jar")
            .args(["--list", "--file"])
            .arg(&jar)
            .output()
            .expect("run jar --list");
        let listing = String::from_utf8_lossy(&listing.stdout);
        for entry in [
            "native/linux-x86_64/libterrace_jni.so",
            "dev/terrace/flink/TerraceTierFactory.class",
            "dev/terrace/flink/TerraceTierFactoryBase.class",
            "dev/terrace/flink/TerraceShuffleDescriptor.class",
        ] {
            assert!(
                listing.lines().any(|l| l.trim() == entry),
                "{} lacks {entry}:\n{listing}",
                jar.display()
            );
        }
    }
    let name = |line: Line| {
        terrace_jar(line)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    assert_eq!(name(Line::V1_20).as_deref(), Some("terrace-flink-1.20.jar"));
    assert_eq!(name(Line::V2).as_deref(), Some("terrace-flink-2.x.jar"));
}

/// Flink 2.2: the keyed-aggregation job at parallelism 4 on one worker.
#[test]
fn flink_2_keyed_aggregation_at_parallelism_4_matches_default_shuffle() {
    let _logs = logs::capture();
    run_on_terrace("terrace-2-p4", 4, keyed(Line::V2));
}

/// The 2.x jar (compiled against 2.2.1) on Flink 2.0, 2.1 and 2.3: the
/// keyed-aggregation job at parallelism 4 on one worker, each identical to
/// that release's default shuffle.
#[test]
fn flink_2_jar_on_2_0_2_1_and_2_3_matches_default_shuffle() {
    let _logs = logs::capture();
    for line in Line::OTHER_2 {
        run_on_terrace(&format!("terrace-{}-p4", line.version()), 4, keyed(line));
    }
}

/// Flink 2.2: the ≥ 1 GiB job at parallelism 8.
#[test]
fn flink_2_keyed_aggregation_shuffling_a_gib_at_parallelism_8_matches_default_shuffle() {
    let _logs = logs::capture();
    run_on_terrace("terrace-2-p8-1gib", 8, big(Line::V2));
}

/// Flink 2.2 hands the tier its compressor (compression is on by default):
/// with Terrace's own lz4 off, the half-compressible records of the
/// shuffle-heavy job still reach the worker smaller than they are, so Flink's
/// compressor compressed them, and the readers' input gates decompressed
/// them (the result is Flink's own). Small segments make many writes find
/// their segment full, after which Flink hands the same buffer over again:
/// it must not have been compressed in place the first time.
#[test]
fn flink_2_compresses_with_the_compressor_flink_hands_the_tier() {
    let _logs = logs::capture();
    let work = Work {
        line: Line::V2,
        class: SHUFFLE_HEAVY,
        records: 200_000,
        payload: 512,
    };
    let stats = run_on(
        Cluster::start,
        "terrace-2-flink-compression",
        4,
        work,
        &["terrace.compression=false", "terrace.segment-size=256KiB"],
    );
    let pushed: u64 = stats.iter().map(|s| s.bytes_pushed).sum();
    let raw = work.records * work.payload;
    eprintln!("flink_e2e: Flink-compressed shuffle: {pushed} bytes pushed for {raw} record bytes");
    assert!(
        pushed < raw * 3 / 4,
        "Flink's compressor was not used: {pushed} bytes pushed for {raw} bytes of half-compressible records"
    );
}

/// Flink 2.2: three workers, a restart strategy, and one worker SIGKILLed
/// mid-shuffle: only the producers whose partitions were on it run again,
/// and the result is exact.
#[test]
fn flink_2_one_of_three_workers_killed_mid_shuffle_reruns_only_the_producers_whose_data_was_on_it()
{
    let _logs = logs::capture();
    let _flink = flink_lock();
    let mut cluster = Cluster::start("3s");
    cluster.add_worker();
    cluster.add_worker();
    cluster.wait_registered(3);
    let reruns = kill_a_worker_mid_shuffle(Line::V2, cluster, "terrace-2-three-workers-killed");
    assert_only_lost_producers_reran(&reruns);
}

/// How many times each shuffle-1 producer subtask started running, from
/// Flink's task state log (a JobMaster that takes a job over starts a new
/// execution graph, so attempt numbers alone do not show reruns).
fn producer_starts(log: &str) -> BTreeMap<String, usize> {
    let mut starts = BTreeMap::new();
    for line in log.lines() {
        let Some(at) = line.find(SHUFFLE_1_PRODUCER) else {
            continue;
        };
        if !line.contains("ExecutionGraph")
            || !line.contains("switched from INITIALIZING to RUNNING")
        {
            continue;
        }
        // "<i>/<n>) (..."
        let subtask = line[at + SHUFFLE_1_PRODUCER.len()..]
            .split(')')
            .next()
            .unwrap_or_default()
            .to_string();
        *starts.entry(subtask).or_default() += 1;
    }
    starts
}

/// The lines of a Flink log that tell how a new JobMaster recovered a job
/// (replayed events, partitions found or missed, a recovery that failed),
/// at most 60 of them, for assertion messages.
/// The lines of a job's log that say why tasks failed (for the message of
/// a failed assertion on re-runs).
fn failure_lines(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("to FAILED") || l.contains("Caused by") || l.contains("Exception:"))
        .take(40)
        .collect();
    lines.join("\n")
}

fn recovery_lines(log: &str) -> String {
    const SIGNS: [&str; 8] = [
        "recover",
        "Recover",
        "Replay",
        "job event",
        "Job events",
        "Partitions to be released",
        "Terrace:",
        "failover:",
    ];
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| SIGNS.iter().any(|sign| line.contains(sign)))
        .collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Runs [`JM_FAILOVER`] on a fresh one-worker cluster with `extra` Flink
/// configuration; returns its log. The result must be Flink's own.
fn fail_the_job_manager_over(name: &str, extra: &[&str]) -> Finished {
    let _flink = flink_lock();
    let work = Work {
        class: JM_FAILOVER,
        ..keyed(Line::V2)
    };
    let default = default_result(keyed(Line::V2));
    let cluster = Cluster::start("10s");
    let output = cluster.dir.path().join(format!("{name}.txt"));
    let mut flink = cluster.flink_config();
    flink.extend([
        format!(
            "high-availability.storageDir=file://{}",
            cluster.dir.path().join("ha").display()
        ),
        format!("job.gate={}", cluster.dir.path().join("gate").display()),
    ]);
    flink.extend(extra.iter().map(|s| s.to_string()));
    let job = Job {
        name,
        parallelism: 4,
        work,
        flink,
    };
    let done = job.spawn(&output, cluster.dir.path()).wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "{name} failed or passed {JOB_DEADLINE:?} ({:?}):\n{}",
        done.status,
        done.tail()
    );
    assert!(
        done.stdout.contains("failover: granting it again"),
        "{name}: the JobManager did not fail over:\n{}",
        done.tail()
    );
    assert_same_result(&output, &default, name);
    done
}

/// Flink 2.2 with `execution.batch.job-recovery.enabled`: the JobManager
/// fails over once every shuffle-1 producer has finished and Flink has
/// stored their finished events (their consumers are held at a gate), and the new JobMaster finds the finished partitions
/// on Terrace (restored placements, per-subpartition bytes from the worker)
/// instead of running their producers again. Without job recovery, the same
/// failover runs every producer twice: the count below can see a rerun.
#[test]
fn flink_2_job_manager_failover_reuses_finished_partitions_instead_of_rerunning_producers() {
    let _logs = logs::capture();
    let recovered = fail_the_job_manager_over(
        "terrace-2-jm-failover",
        &["execution.batch.job-recovery.enabled=true"],
    );
    assert!(
        recovered
            .stdout
            .contains("failover: 4 producer-finished events stored"),
        "the failover came before Flink stored the producers' finished events:\n{}",
        recovered.tail()
    );
    let starts = producer_starts(&recovered.stderr);
    eprintln!("flink_e2e: producer starts with job recovery: {starts:?}");
    assert_eq!(starts.len(), 4, "four producers: {starts:?}");
    assert!(
        starts.values().all(|&n| n == 1),
        "with job recovery, a finished producer ran again after the failover: {starts:?}; \
         Flink's recovery lines:\n{}",
        recovery_lines(&recovered.stderr)
    );
    assert!(
        recovered
            .stderr
            .contains("Terrace: 4 of 4 expected partition(s)"),
        "the new JobMaster did not ask Terrace for its partitions:\n{}",
        recovered.tail()
    );

    let rerun = fail_the_job_manager_over("terrace-2-jm-failover-no-recovery", &[]);
    let starts = producer_starts(&rerun.stderr);
    eprintln!("flink_e2e: producer starts without job recovery: {starts:?}");
    assert!(
        starts.len() == 4 && starts.values().all(|&n| n == 2),
        "without job recovery every producer runs again after the failover: {starts:?}"
    );
}

/// The image and the compose cluster of `deploy/compose` running a job.
#[path = "flink_e2e/compose.rs"]
mod compose;
#[path = "flink_e2e/durability.rs"]
mod durability;
#[path = "flink_e2e/rolling.rs"]
mod rolling;
#[path = "flink_e2e/spark.rs"]
mod spark;
