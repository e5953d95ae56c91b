//! Apache Spark jobs shuffling through Terrace, end to end: real `terrace
//! master` and `terrace worker` processes, the plug-in jar of the job's Spark
//! line built by `scripts/build-spark-jar.sh` (which fetches that Spark from
//! PyPI and builds the JNI library), and the jobs of `spark-plugin/e2e` on a
//! `local-cluster` Spark (a driver JVM and executor JVMs, each its own
//! process), started through `scripts/run-spark-job.sh`.
//!
//! Each job's result must equal the same job's on Spark's own sort shuffle.
//! A Terrace worker killed in the reduce stage must cost a re-run of exactly
//! the map tasks whose outputs it held; executors removed after the map stage
//! must cost none.
//!
//! Every child process runs under a deadline and is killed (its whole process
//! group) when it passes it. Spark applications run one at a time (the
//! machine has two cores).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use terrace_tests::ServiceProcess;
use terrace_tests::child::{Child, Finished};
use terrace_tests::pki::TestPki;
use terrace_tier_api::protocol::{ListWorkers, WorkerStatsReply};

/// The Spark releases the suite runs: each line's in full, the other 4.x
/// releases with one RDD and one SQL job.
const SPARK_3_5: &str = "3.5.9";
const SPARK_4_3: &str = "4.3.0";
const OTHER_4: [&str; 3] = ["4.0.5", "4.1.4", "4.2.1"];

/// One Spark application, JVM start to exit (the first one also builds the
/// plug-in jar, which may compile the JNI library in release mode).
const JOB_DEADLINE: Duration = Duration::from_secs(20 * 60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// Spark applications run one at a time.
fn spark_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A master and workers as processes; with a secret and TLS when secured.
struct Cluster {
    master: ServiceProcess,
    workers: Vec<(ServiceProcess, PathBuf)>,
    dir: tempfile::TempDir,
    pki: Option<TestPki>,
}

impl Cluster {
    /// `n` workers, lost to the master after `worker_timeout` of silence.
    fn start(n: usize, worker_timeout: &str, secured: bool) -> Cluster {
        Cluster::start_with(n, worker_timeout, secured, &[])
    }

    /// [`Cluster::start`] with extra `terrace worker` flags.
    fn start_with(n: usize, worker_timeout: &str, secured: bool, worker_args: &[&str]) -> Cluster {
        Cluster::start_full(
            n,
            &format!("worker_timeout = \"{worker_timeout}\"\n"),
            secured,
            worker_args,
        )
    }

    /// `n` workers and a master configured by `master_toml`.
    fn start_full(n: usize, master_toml: &str, secured: bool, worker_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("cluster directory");
        let pki = secured.then(|| TestPki::generate(dir.path()));
        let security = pki
            .as_ref()
            .map_or(String::new(), |p| p.security_toml(true));
        let master_config = dir.path().join("master.toml");
        fs::write(&master_config, format!("{master_toml}{security}")).expect("write master config");
        let worker_config = dir.path().join("worker.toml");
        fs::write(&worker_config, &security).expect("write worker config");
        let master = ServiceProcess::start(&[
            "master",
            "--config",
            master_config.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ]);
        let mut workers = Vec::new();
        for i in 0..n {
            let data = dir.path().join(format!("worker-{i}"));
            fs::create_dir_all(&data).expect("worker data directory");
            let mut args = vec![
                "worker",
                "--config",
                worker_config.to_str().expect("utf-8 path"),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().expect("utf-8 path"),
                "--master",
                &master.address,
            ];
            args.extend_from_slice(worker_args);
            let worker = ServiceProcess::start(&args);
            workers.push((worker, data));
        }
        let cluster = Cluster {
            master,
            workers,
            dir,
            pki,
        };
        terrace_tests::wait_until(Duration::from_secs(20), "workers register", || {
            matches!(
                terrace_tests::call_with(&cluster.master.address, &cluster.options(), ListWorkers),
                Ok(list) if list.workers.len() == n
            )
        });
        cluster
    }

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

    fn stats(&self, i: usize) -> WorkerStatsReply {
        terrace_tests::worker_stats_with(&self.workers[i].0.address, &self.options())
    }

    /// The `spark.terrace.*` settings of an application on this cluster.
    fn spark_conf(&self) -> Vec<String> {
        let mut conf = vec![
            format!("spark.terrace.master.address={}", self.master.address),
            "spark.terrace.connect-timeout=2s".into(),
            "spark.terrace.request-timeout=30s".into(),
        ];
        if let Some(pki) = &self.pki {
            conf.push(format!(
                "spark.terrace.secret-file={}",
                pki.secret_file.display()
            ));
            conf.push(format!(
                "spark.terrace.tls.ca-file={}",
                pki.ca_file.display()
            ));
        }
        conf
    }

    /// Waits (up to 20 s) until no live worker holds a partition or a file.
    fn assert_empty(&self) {
        for (i, (_, data)) in self.workers.iter().enumerate() {
            let held = || {
                let files = terrace_tests::entries_under(data)
                    .into_iter()
                    .filter(|p| !p.is_dir())
                    .count();
                (self.stats(i).partitions, files)
            };
            let empty =
                terrace_tests::wait::poll_until(Duration::from_secs(20), || held() == (0, 0));
            assert!(
                empty,
                "worker {i} still holds (partitions, files) {:?} after the application",
                held()
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shuffle {
    Sort,
    Terrace,
}

/// One Spark application: a job of `ShuffleJobs` on one Spark release.
struct App<'a> {
    version: &'a str,
    shuffle: Shuffle,
    job: &'a str,
    args: Vec<String>,
    conf: Vec<String>,
    /// Where its result, logs and Spark work directories go.
    dir: PathBuf,
    /// Empty: a `local-cluster` Spark; else a standalone Spark cluster with
    /// one worker per loopback address listed (`WORKER_HOSTS`).
    worker_hosts: &'a str,
}

impl App<'_> {
    fn output(&self) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-{:?}.txt",
            self.job, self.version, self.shuffle
        ))
    }

    fn spawn(&self) -> Child {
        let mut command = Command::new("bash");
        command
            .arg(repo_root().join("scripts/run-spark-job.sh"))
            .arg(self.job)
            .arg(self.output())
            .args(&self.args)
            .env("SPARK_VERSION", self.version)
            .env(
                "SHUFFLE",
                match self.shuffle {
                    Shuffle::Sort => "sort",
                    Shuffle::Terrace => "terrace",
                },
            )
            .env("SPARK_CONF", self.conf.join("\n"))
            .env("WORKER_HOSTS", self.worker_hosts)
            .env(
                "WORK_DIR",
                self.dir.join(format!(
                    "work-{}-{}-{:?}",
                    self.job, self.version, self.shuffle
                )),
            );
        let name = format!("{}-{}-{:?}", self.job, self.version, self.shuffle);
        Child::spawn(command, &self.dir, &name)
    }

    /// Runs the application to its end; returns its result and how it went.
    fn run(&self) -> (String, Finished) {
        let done = self.spawn().wait(JOB_DEADLINE);
        assert!(
            done.succeeded(),
            "{} on Spark {} ({:?}) failed or passed {JOB_DEADLINE:?} ({:?}):\n{}",
            self.job,
            self.version,
            self.shuffle,
            done.status,
            done.tail_skipping(" INFO ")
        );
        let result = fs::read_to_string(self.output()).expect("the job's result file");
        eprintln!(
            "spark_e2e: {} on Spark {} ({:?}): {:.1?}",
            self.job, self.version, self.shuffle, done.elapsed
        );
        (result, done)
    }
}

/// The result of `job` on Spark's own sort shuffle on `version`, run once per
/// test process.
fn sort_result(version: &str, job: &str) -> String {
    sort_result_with(version, job, &[])
}

/// [`sort_result`] of a job that takes arguments (a gate is given as a path
/// that exists, so the job never waits).
fn sort_result_with(version: &str, job: &str, args: &[&str]) -> String {
    static RESULTS: OnceLock<Mutex<HashMap<(String, String), String>>> = OnceLock::new();
    let results = RESULTS.get_or_init(Default::default);
    let key = (version.to_string(), job.to_string());
    if let Some(r) = results.lock().expect("results lock").get(&key) {
        return r.clone();
    }
    let dir = tempfile::tempdir().expect("sort-shuffle directory");
    let (result, _) = App {
        worker_hosts: "",
        version,
        shuffle: Shuffle::Sort,
        job,
        args: args.iter().map(|a| a.to_string()).collect(),
        conf: Vec::new(),
        dir: dir.path().to_path_buf(),
    }
    .run();
    assert!(
        !result.trim().is_empty(),
        "{job} on sort shuffle gave nothing"
    );
    results
        .lock()
        .expect("results lock")
        .insert(key, result.clone());
    result
}

/// Task starts per (stage, partition) in a driver log: `Starting task P.A in
/// stage S.T (TID ...)` lines of Spark's TaskSetManager.
fn task_starts(log: &str) -> BTreeMap<(u32, u32), u32> {
    let mut starts = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("Starting task ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(task), Some("in"), Some("stage"), Some(stage)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let partition = task.split('.').next().and_then(|p| p.parse().ok());
        let stage = stage.split('.').next().and_then(|s| s.parse().ok());
        if let (Some(partition), Some(stage)) = (partition, stage) {
            *starts.entry((stage, partition)).or_insert(0) += 1;
        }
    }
    starts
}

/// Runs the RDD and SQL jobs of one release on Terrace (one application,
/// `rdd-sql`), checks their results against the sort shuffle's (`expected`,
/// or this release's own), the plans adaptive execution chose, the workers'
/// counters, and that nothing is left.
fn rdd_and_sql_on(version: &str, expected: Option<&str>) {
    let _spark = spark_lock();
    let want = match expected {
        Some(want) => want.to_string(),
        None => sort_result(version, "rdd-sql"),
    };
    let cluster = Cluster::start(2, "10s", false);
    let app = App {
        worker_hosts: "",
        version,
        shuffle: Shuffle::Terrace,
        job: "rdd-sql",
        args: Vec::new(),
        conf: cluster.spark_conf(),
        dir: cluster.dir.path().to_path_buf(),
    };
    let (have, _) = app.run();
    assert_eq!(
        have, want,
        "rdd-sql on Spark {version}: Terrace's result differs from the sort shuffle's"
    );
    let plan = fs::read_to_string(format!("{}.plan", app.output().display()))
        .expect("the SQL job's plans");
    for wanted in ["coalesced", "skew"] {
        assert!(
            plan.contains(wanted),
            "Spark {version}: adaptive execution shows no {wanted:?} read over Terrace's statistics:\n{plan}"
        );
    }
    let stats: Vec<WorkerStatsReply> = (0..2).map(|i| cluster.stats(i)).collect();
    let pushed: u64 = stats.iter().map(|s| s.bytes_pushed).sum();
    let read: u64 = stats.iter().map(|s| s.bytes_read).sum();
    eprintln!("spark_e2e: Spark {version}: workers pushed {pushed} B, read {read} B");
    assert!(
        pushed > 1 << 20,
        "Spark {version}: the workers saw only {pushed} bytes pushed"
    );
    assert!(
        read >= pushed,
        "Spark {version}: readers read {read} of {pushed} pushed bytes"
    );
    cluster.assert_empty();
}

#[test]
fn spark_3_5_rdd_and_sql_jobs_match_the_sort_shuffle() {
    rdd_and_sql_on(SPARK_3_5, None);
}

#[test]
fn spark_4_3_rdd_and_sql_jobs_match_the_sort_shuffle() {
    rdd_and_sql_on(SPARK_4_3, None);
}

/// The 4.x jar on the other 4.x releases. Their expected results are the
/// sort shuffle's on 3.5.9 and 4.3.0, which must agree: the jobs' results do
/// not depend on the release.
#[test]
fn spark_4_0_to_4_2_rdd_and_sql_jobs_match_the_sort_shuffle() {
    let want = {
        let _spark = spark_lock();
        let want = sort_result(SPARK_3_5, "rdd-sql");
        assert_eq!(
            want,
            sort_result(SPARK_4_3, "rdd-sql"),
            "the sort shuffle's results on 3.5.9 and 4.3.0 disagree"
        );
        want
    };
    for version in OTHER_4 {
        rdd_and_sql_on(version, Some(&want));
    }
}

/// Waits until the running application's driver log (stderr) or stdout has a
/// line containing every one of `parts`.
fn wait_for_driver_line(running: &Child, parts: &[&str], within: Duration) {
    let seen = terrace_tests::wait::poll_until(within, || {
        let log = fs::read_to_string(&running.stderr).unwrap_or_default()
            + &fs::read_to_string(&running.stdout).unwrap_or_default();
        log.lines().any(|l| parts.iter().all(|p| l.contains(p)))
    });
    assert!(
        seen,
        "the driver logged no line with {parts:?} within {within:?}:\n{}",
        fs::read_to_string(&running.stderr).unwrap_or_default()
    );
}

/// How many times each map partition was started, over every shuffle map
/// stage of a finished application's driver log (a job that finds a
/// shuffle's outputs missing runs them in a map stage of its own).
fn map_task_starts(done: &Finished) -> BTreeMap<u32, u32> {
    let map_stages: std::collections::BTreeSet<u32> = done
        .stderr
        .split("ShuffleMapStage ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    let mut starts = BTreeMap::new();
    for ((stage, partition), n) in task_starts(&done.stderr) {
        if map_stages.contains(&stage) {
            *starts.entry(partition).or_insert(0) += n;
        }
    }
    starts
}

/// `reduce-gate` on Spark 3.5 and `cluster`, started and past its map stage:
/// every map output is written and sealed, the reduce tasks wait at the gate.
fn reduce_gate_at_the_gate(cluster: &Cluster, conf: &[&str]) -> (App<'static>, Child) {
    let mut spark_conf = cluster.spark_conf();
    spark_conf.extend(conf.iter().map(|c| c.to_string()));
    let app = App {
        worker_hosts: "",
        version: SPARK_3_5,
        shuffle: Shuffle::Terrace,
        job: "reduce-gate",
        args: vec![cluster.dir.path().join("gate").display().to_string()],
        conf: spark_conf,
        dir: cluster.dir.path().to_path_buf(),
    };
    let running = app.spawn();
    wait_for_driver_line(
        &running,
        &["ShuffleMapStage 0", "finished in"],
        JOB_DEADLINE,
    );
    (app, running)
}

/// Opens `reduce-gate`'s gate, waits for its end and checks its result
/// against the sort shuffle's; `what` names what the test did meanwhile.
fn finish_reduce_gate(app: &App<'_>, running: Child, what: &str) -> Finished {
    fs::write(app.dir.join("gate"), b"").expect("open the gate");
    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "the job failed after {what} ({:?}):\n{}",
        done.status,
        done.tail_skipping(" INFO ")
    );
    let have = fs::read_to_string(app.output()).expect("the job's result");
    let want = sort_result_with(SPARK_3_5, "reduce-gate", &["/"]);
    assert_eq!(
        have, want,
        "the result after {what} differs from the sort shuffle's"
    );
    done
}

/// A SQL job that shuffles over a GiB (a window over rows of incompressible
/// hex) gives the sort shuffle's result; the workers saw every byte of it.
#[test]
fn a_sql_job_shuffling_over_a_gibibyte_matches_the_sort_shuffle() {
    let _spark = spark_lock();
    let want = sort_result_with(SPARK_3_5, "sql-big", &["1100"]);
    let cluster = Cluster::start(2, "10s", false);
    let app = App {
        worker_hosts: "",
        version: SPARK_3_5,
        shuffle: Shuffle::Terrace,
        job: "sql-big",
        args: vec!["1100".into()],
        conf: cluster.spark_conf(),
        dir: cluster.dir.path().to_path_buf(),
    };
    let (have, _) = app.run();
    assert_eq!(
        have, want,
        "sql-big: Terrace's result differs from the sort shuffle's"
    );
    let pushed: u64 = (0..2).map(|i| cluster.stats(i).bytes_pushed).sum();
    eprintln!("spark_e2e: sql-big: the workers took {pushed} bytes");
    assert!(
        pushed >= 1 << 30,
        "sql-big shuffled only {pushed} bytes through Terrace, not a GiB"
    );
    cluster.assert_empty();
}

/// A worker SIGKILLed while the reduce tasks wait at their gate (the map
/// stage is done, its outputs are spread over three workers): the readers
/// fail to fetch the outputs it held, Spark runs again exactly those map
/// tasks (their outputs are registered at the worker's location, which the
/// fetch failure names), and the result is exact.
#[test]
fn a_worker_killed_in_the_reduce_stage_costs_a_rerun_of_exactly_its_map_tasks() {
    let _spark = spark_lock();
    sort_result_with(SPARK_3_5, "reduce-gate", &["/"]);
    let mut cluster = Cluster::start(3, "2s", false);
    let (app, running) = reduce_gate_at_the_gate(&cluster, &[]);
    let held: Vec<u32> = (0..3).map(|i| cluster.stats(i).partitions).collect();
    let victim = (0..3).max_by_key(|&i| held[i]).expect("three workers");
    let lost = held[victim];
    assert_eq!(
        held.iter().sum::<u32>(),
        6,
        "six map outputs, one partition each: {held:?}"
    );
    assert!(lost > 0, "no worker holds a map output: {held:?}");
    let (worker, _) = cluster.workers.remove(victim);
    worker.kill();
    eprintln!(
        "spark_e2e: killed worker {victim}, which held {lost} of the 6 map outputs ({held:?})"
    );
    let done = finish_reduce_gate(&app, running, "a worker was killed");
    let starts = map_task_starts(&done);
    assert_eq!(starts.len(), 6, "six map tasks: {starts:?}");
    let rerun = starts.values().filter(|&&n| n > 1).count() as u32;
    assert_eq!(
        rerun, lost,
        "map tasks run again: {starts:?}; the killed worker held {lost} map outputs"
    );
    assert!(
        done.stderr.contains("FetchFailed"),
        "the loss reached Spark as a fetch failure"
    );
    cluster.assert_empty();
}

/// The pids of the executor JVMs of the application whose work directory
/// is `work` (their working directory is below it).
fn executor_pids(work: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("CoarseGrainedExecutorBackend") {
            continue;
        }
        if fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(work)) {
            pids.push(pid);
        }
    }
    pids
}

/// Runs `two-jobs` (a shuffle counted by one job, then collected by a
/// second that reuses its map outputs) and, between the jobs, SIGKILLs the
/// executors that ran the map stage. Returns the result and the map task
/// starts.
fn executors_killed_between_jobs(
    cluster: Option<&Cluster>,
    dir: &Path,
) -> (String, BTreeMap<u32, u32>) {
    let gate = dir.join("gate");
    let app = App {
        worker_hosts: "",
        version: SPARK_3_5,
        shuffle: if cluster.is_some() {
            Shuffle::Terrace
        } else {
            Shuffle::Sort
        },
        job: "two-jobs",
        args: vec![gate.display().to_string()],
        conf: cluster.map_or_else(Vec::new, Cluster::spark_conf),
        dir: dir.to_path_buf(),
    };
    let work = dir.join(format!("work-two-jobs-{SPARK_3_5}-{:?}", app.shuffle));
    let running = app.spawn();
    wait_for_driver_line(&running, &["TERRACE-E2E first job done"], JOB_DEADLINE);
    let pids = executor_pids(&work);
    assert_eq!(
        pids.len(),
        2,
        "two executor JVMs run under {}",
        work.display()
    );
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    // The driver hears of both losses before the second job starts.
    wait_for_driver_line(&running, &["Executor lost"], Duration::from_secs(120));
    fs::write(&gate, b"").expect("open the gate");
    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "two-jobs ({:?}) failed after its executors were killed ({:?}):\n{}",
        app.shuffle,
        done.status,
        done.tail_skipping(" INFO ")
    );
    let result = fs::read_to_string(app.output()).expect("the job's result");
    (result, map_task_starts(&done))
}

/// The executors that ran a map stage are SIGKILLed before the next job
/// reads its outputs: on Terrace no map task runs again (on Spark's own
/// shuffle, run as the control, the lost outputs are computed again). The
/// cluster has a secret and TLS: executors work with the job's token only.
#[test]
fn executors_killed_after_the_map_stage_cost_no_map_task_on_a_secured_cluster() {
    let _spark = spark_lock();
    let control = tempfile::tempdir().expect("control directory");
    let (want, sort_starts) = executors_killed_between_jobs(None, control.path());
    assert!(
        sort_starts.values().any(|&n| n > 1),
        "control: on the sort shuffle, killing the executors must cost map re-runs: {sort_starts:?}"
    );
    let cluster = Cluster::start(2, "10s", true);
    let (have, starts) = executors_killed_between_jobs(Some(&cluster), cluster.dir.path());
    assert_eq!(
        have, want,
        "two-jobs on Terrace differs from the sort shuffle"
    );
    assert_eq!(
        starts,
        (0..6).map(|p| (p, 1)).collect::<BTreeMap<u32, u32>>(),
        "each of the six map tasks runs exactly once on Terrace"
    );
    cluster.assert_empty();
}

/// Dynamic allocation with no external shuffle service and no shuffle
/// tracking: idle executors are removed between two jobs of one shuffle, and
/// the second job's new executors read the first job's map outputs from
/// Terrace; no map task runs twice.
#[test]
fn dynamic_allocation_removes_idle_executors_without_costing_map_tasks() {
    let _spark = spark_lock();
    let want = sort_result_with(SPARK_3_5, "two-jobs", &["/"]);
    let cluster = Cluster::start(2, "10s", false);
    let gate = cluster.dir.path().join("gate");
    let mut conf = cluster.spark_conf();
    conf.extend(
        [
            "spark.dynamicAllocation.enabled=true",
            "spark.dynamicAllocation.minExecutors=0",
            "spark.dynamicAllocation.initialExecutors=2",
            "spark.dynamicAllocation.maxExecutors=2",
            "spark.dynamicAllocation.executorIdleTimeout=1s",
            "spark.dynamicAllocation.shuffleTracking.enabled=false",
            "spark.shuffle.service.enabled=false",
        ]
        .map(String::from),
    );
    let app = App {
        worker_hosts: "",
        version: SPARK_3_5,
        shuffle: Shuffle::Terrace,
        job: "two-jobs",
        args: vec![gate.display().to_string()],
        conf,
        dir: cluster.dir.path().to_path_buf(),
    };
    let running = app.spawn();
    wait_for_driver_line(&running, &["TERRACE-E2E first job done"], JOB_DEADLINE);
    // Both executors go idle, are removed, and the scheduler takes them for lost.
    wait_for_driver_line(
        &running,
        &["ExecutorAllocationManager", "removed due to idle timeout"],
        Duration::from_secs(120),
    );
    terrace_tests::wait_until(Duration::from_secs(120), "both executors lost", || {
        let log = fs::read_to_string(&running.stderr).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("Executor lost: "))
            .count()
            >= 2
    });
    fs::write(&gate, b"").expect("open the gate");
    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "two-jobs under dynamic allocation failed ({:?}):\n{}",
        done.status,
        done.tail_skipping(" INFO ")
    );
    let have = fs::read_to_string(app.output()).expect("the job's result");
    assert_eq!(
        have, want,
        "two-jobs under dynamic allocation differs from the sort shuffle"
    );
    assert_eq!(
        map_task_starts(&done),
        (0..6).map(|p| (p, 1)).collect::<BTreeMap<u32, u32>>(),
        "each map task runs once"
    );
    cluster.assert_empty();
}

/// Map task 0's first attempt writes and seals its whole output, then
/// fails (a task-completion listener throws); Spark runs it again. Readers
/// must read only the attempt Spark registered: reading the failed one too
/// would count its records twice. The driver releases the failed attempt's
/// partition when the failure reaches it.
#[test]
fn only_the_map_attempt_spark_registered_is_read() {
    let _spark = spark_lock();
    let want = sort_result(SPARK_3_5, "failed-attempt");
    let cluster = Cluster::start(2, "10s", false);
    let app = App {
        worker_hosts: "",
        version: SPARK_3_5,
        shuffle: Shuffle::Terrace,
        job: "failed-attempt",
        args: Vec::new(),
        conf: cluster.spark_conf(),
        dir: cluster.dir.path().to_path_buf(),
    };
    let (have, done) = app.run();
    assert_eq!(have, want, "failed-attempt differs from the sort shuffle");
    assert_eq!(
        map_task_starts(&done).get(&0),
        Some(&2),
        "map task 0 ran twice (its first attempt failed after writing)"
    );
    assert!(
        done.stderr
            .contains("attempt 0 of map 0 fails after writing its output"),
        "the first attempt failed as the job made it"
    );
    assert!(
        done.stderr
            .lines()
            .any(|l| l.contains("map 0 attempt") && l.contains("was released")),
        "the driver released the failed attempt's partition:\n{}",
        done.tail_skipping(" INFO ")
    );
    cluster.assert_empty();
}

/// Speculation, on a standalone Spark cluster whose two executors have
/// hosts of their own (127.0.0.2 and 127.0.0.3: Spark never starts a copy of
/// a task on a host where the task already runs, so `local-cluster`, whose
/// executors share one host, never speculates). Map task 0's first attempt
/// stalls half-way through its output, pushed in small chunks by then, so
/// its partition holds data. Spark starts a copy on the other host, the copy
/// wins, the stalled attempt is killed and the driver releases its
/// partition: while the reduce tasks wait at their gate, the workers hold
/// one partition per map task. The result equals the sort shuffle's.
#[test]
fn a_speculative_copy_wins_and_the_stalled_attempts_partition_is_released() {
    let _spark = spark_lock();
    let want = sort_result_with(SPARK_3_5, "speculation", &["/"]);
    let cluster = Cluster::start(2, "10s", false);
    let gate = cluster.dir.path().join("gate");
    let mut conf = cluster.spark_conf();
    conf.extend(
        [
            "spark.speculation=true",
            "spark.speculation.interval=200ms",
            "spark.speculation.quantile=0.5",
            "spark.speculation.multiplier=2",
            "spark.speculation.minTaskRuntime=1s",
            "spark.speculation.efficiency.enabled=false",
            "spark.terrace.spark.chunk-size=16KiB",
            "spark.terrace.spark.writer-buffer-size=64KiB",
        ]
        .map(String::from),
    );
    let app = App {
        version: SPARK_3_5,
        shuffle: Shuffle::Terrace,
        job: "speculation",
        args: vec![gate.display().to_string()],
        conf,
        dir: cluster.dir.path().to_path_buf(),
        worker_hosts: "127.0.0.2 127.0.0.3",
    };
    let running = app.spawn();
    wait_for_driver_line(
        &running,
        &["ShuffleMapStage 0", "finished in"],
        JOB_DEADLINE,
    );
    let held = || (0..2).map(|i| cluster.stats(i).partitions).sum::<u32>();
    let one_per_map = terrace_tests::wait::poll_until(Duration::from_secs(30), || held() == 4);
    assert!(
        one_per_map,
        "the workers hold {} partitions after the map stage, not one per map task (4):\n{}",
        held(),
        fs::read_to_string(&running.stderr).unwrap_or_default()
    );
    wait_for_driver_line(
        &running,
        &["map 0 attempt", "was released"],
        Duration::from_secs(30),
    );
    fs::write(&gate, b"").expect("open the gate");
    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "the job failed ({:?}):\n{}",
        done.status,
        done.tail_skipping(" INFO ")
    );
    let have = fs::read_to_string(app.output()).expect("the job's result");
    assert_eq!(have, want, "the result differs from the sort shuffle's");
    let starts = map_task_starts(&done);
    assert_eq!(
        starts,
        BTreeMap::from([(0, 2), (1, 1), (2, 1), (3, 1)]),
        "map task 0 ran twice (the stalled attempt and its speculative copy), the others once"
    );
    assert!(
        done.stderr
            .contains("Killing attempt 0 for task 0.0 in stage 0.0"),
        "the stalled attempt was killed because its copy succeeded"
    );
    cluster.assert_empty();
}

/// A stored byte flipped on the worker's disk after the map stage: the
/// reader's CRC check fails, the task ends with a fetch failure naming the
/// map output, Spark runs the map tasks on that worker again, and the result
/// is exact, never silently wrong.
#[test]
fn a_corrupted_stored_byte_costs_a_rerun_of_the_map_tasks_never_a_wrong_result() {
    let _spark = spark_lock();
    sort_result_with(SPARK_3_5, "reduce-gate", &["/"]);
    // A small memory budget, and map outputs Spark does not compress (about
    // 20 MB of Java-serialized records), keep most of them on disk only.
    let cluster = Cluster::start_with(
        1,
        "10s",
        false,
        &["--memory-budget", "8MiB", "--set", "max_frame_size=4MiB"],
    );
    let (app, running) = reduce_gate_at_the_gate(&cluster, &["spark.shuffle.compress=false"]);
    let (_, data) = &cluster.workers[0];
    terrace_tests::corrupt_largest_file(data);
    let done = finish_reduce_gate(&app, running, "a stored byte was corrupted");
    assert!(
        done.stderr.contains("FetchFailed") && done.stderr.contains("lost or corrupt"),
        "the corruption reached Spark as a fetch failure naming the map output"
    );
    let starts = map_task_starts(&done);
    assert!(
        starts.values().any(|&n| n > 1),
        "the map outputs on the worker were computed again: {starts:?}"
    );
    cluster.assert_empty();
}

/// The driver (and its executors) SIGKILLed between two jobs of a shuffle:
/// nobody unregisters the shuffle, so the masters' job lease (5 s here)
/// runs out and every worker drops its data.
#[test]
fn a_dead_drivers_shuffles_are_dropped_when_their_lease_runs_out() {
    let _spark = spark_lock();
    let cluster = Cluster::start_full(
        2,
        "worker_timeout = \"10s\"\njob_lease = \"5s\"\n",
        false,
        &[],
    );
    let mut conf = cluster.spark_conf();
    conf.push("spark.terrace.job-renew-interval=1s".into());
    let app = App {
        worker_hosts: "",
        version: SPARK_3_5,
        shuffle: Shuffle::Terrace,
        job: "two-jobs",
        args: vec![cluster.dir.path().join("gate").display().to_string()],
        conf,
        dir: cluster.dir.path().to_path_buf(),
    };
    let mut running = app.spawn();
    wait_for_driver_line(&running, &["TERRACE-E2E first job done"], JOB_DEADLINE);
    let held: u32 = (0..2).map(|i| cluster.stats(i).partitions).sum();
    assert_eq!(
        held, 6,
        "the first job's six map outputs are on the workers"
    );
    running.kill_group();
    // Within the lease, a sweep, and the workers' next heartbeats.
    let dropped = terrace_tests::wait::poll_until(Duration::from_secs(30), || {
        (0..2).all(|i| cluster.stats(i).partitions == 0)
    });
    assert!(
        dropped,
        "the dead driver's map outputs are still on the workers"
    );
    cluster.assert_empty();
}
