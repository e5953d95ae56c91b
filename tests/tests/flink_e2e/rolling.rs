//! A rolling restart under a running Flink job: two masters and three
//! workers, each at a fixed address, restarted one after another
//! (SIGTERM, wait for the exit, start again on the same directories and
//! address) while the ≥ 1 GiB keyed-aggregation job shuffles. Its result
//! must be exactly Flink's own, and no producer may run twice.

use super::*;

/// A `terrace master` or `terrace worker` at a fixed address, restartable.
struct Member {
    args: Vec<String>,
    address: String,
    process: Option<ServiceProcess>,
}

impl Member {
    fn start(args: Vec<String>) -> Member {
        let address =
            args[args.iter().position(|a| a == "--listen").expect("--listen") + 1].clone();
        let mut member = Member {
            args,
            address,
            process: None,
        };
        member.spawn();
        member
    }

    fn spawn(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let process = ServiceProcess::start(&args);
        assert_eq!(process.address, self.address);
        self.process = Some(process);
    }

    /// SIGTERM, wait for a clean exit, start again; returns how long the
    /// member was down.
    fn restart(&mut self) -> Duration {
        let mut process = self.process.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &process.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let sent = clock::now();
        let (exit, _) = terrace_tests::wait_for(Duration::from_secs(30), "exit on SIGTERM", || {
            process.child.try_wait().expect("poll")
        });
        assert!(
            exit.success(),
            "{:?} exits cleanly on SIGTERM: {exit}",
            self.args
        );
        self.spawn();
        clock::elapsed(sent)
    }
}

#[test]
fn rolling_restart_of_every_worker_and_master_under_a_gib_job_reruns_nothing() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let work = big(Line::V1_20);
    let default = default_result(work);
    let dir = tempfile::tempdir_in(cluster_base()).expect("cluster directory");
    let master_addresses: Vec<String> = (0..2).map(|_| terrace_tests::closed_address()).collect();
    let masters: Vec<Member> = master_addresses
        .iter()
        .map(|address| Member::start(vec!["master".into(), "--listen".into(), address.clone()]))
        .collect();
    let mut workers: Vec<Member> = (0..3)
        .map(|i| {
            let data = dir.path().join(format!("worker-{i}"));
            fs::create_dir_all(&data).expect("data directory");
            let mut args: Vec<String> = vec![
                "worker".into(),
                "--listen".into(),
                terrace_tests::closed_address(),
                "--data-dir".into(),
                data.to_str().expect("utf-8 path").into(),
                "--worker-id".into(),
                format!("w{i}"),
            ];
            for m in &master_addresses {
                args.extend(["--master".to_string(), m.clone()]);
            }
            Member::start(args)
        })
        .collect();
    let list = || {
        master_addresses
            .iter()
            .map(|m| terrace_tests::list_workers(m).map(|l| l.workers))
            .collect::<Vec<_>>()
    };
    let all_live = || {
        list().iter().all(|l| {
            l.as_ref()
                .is_ok_and(|w| w.len() == 3 && w.iter().all(|w| !w.load.restarting))
        })
    };
    terrace_tests::wait_until(
        Duration::from_secs(20),
        "both masters list three workers",
        all_live,
    );
    let mut masters = masters;

    let output = dir.path().join("rolling.txt");
    let mut flink = vec![
        "execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL".to_string(),
        format!(
            "taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class={TERRACE_FACTORY}"
        ),
        format!("terrace.master.address={}", master_addresses.join(",")),
        "terrace.master.poll-interval=500ms".to_string(),
    ];
    // A re-run would show in the log; the restart strategy only keeps a
    // failure from ending the job before it is counted.
    flink.extend(restart_strategy(5));
    let job = Job {
        name: "terrace-rolling-restart",
        parallelism: 4,
        work,
        flink,
    };
    let pushed = |members: &[Member]| -> u64 {
        members
            .iter()
            .filter_map(|w| {
                terrace_tests::call(&w.address, terrace_tier_api::protocol::WorkerStats)
                    .ok()
                    .map(|s| s.bytes_pushed)
            })
            .sum()
    };
    let mut running = job.spawn(&output, dir.path());
    terrace_tests::wait_until(Duration::from_secs(120), "the job pushes 10 MB", || {
        pushed(&workers) >= 10 << 20
    });
    let started = clock::now();
    // Counters start again with each worker process: what the job pushed
    // before the first restart shows the restarts began mid-shuffle.
    let before_first = pushed(&workers);
    let mut downtimes: Vec<(String, Duration, u64)> = Vec::new();
    for i in 0..workers.len() {
        let down = workers[i].restart();
        downtimes.push((format!("w{i}"), down, pushed(&workers) >> 20));
        terrace_tests::wait_until(
            Duration::from_secs(20),
            "the restarted worker is live on both masters",
            all_live,
        );
    }
    // A master is restarted once the one before it knows every worker
    // again (what an operator watches for: its worker list, or /readyz).
    for (i, master) in masters.iter_mut().enumerate() {
        let down = master.restart();
        downtimes.push((format!("master {i}"), down, pushed(&workers) >> 20));
        terrace_tests::wait_until(
            Duration::from_secs(20),
            "the restarted master lists three workers",
            all_live,
        );
    }
    let rolled = clock::elapsed(started);
    let still_running = running.child.try_wait().expect("poll the job").is_none();
    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "the job under a rolling restart failed ({:?}):\n{}",
        done.status,
        done.tail()
    );
    assert_same_result(&output, &default, "the job under a rolling restart");
    let reruns = Reruns::from_log(&done.stderr);
    eprintln!(
        "flink_e2e: rolling restart of 3 workers and 2 masters in {rolled:.1?} ((member, down, MiB on the workers after) {downtimes:?}), begun once {} MiB were pushed; the job took {:.1?}; shuffle-1 producers {reruns:?}",
        before_first >> 20,
        done.elapsed
    );
    assert!(
        before_first < work.records * work.payload / 2,
        "the restarts began after half the shuffle ({before_first} B pushed)"
    );
    assert!(
        still_running,
        "the job ended before the rolling restart did"
    );
    assert!(reruns.subtasks > 0, "no shuffle-1 producer in Flink's log");
    assert!(
        reruns.rerun.is_empty() && reruns.lost.is_empty(),
        "a rolling restart cost re-runs: {reruns:?}; failures in Flink's log:\n{}",
        failure_lines(&done.stderr)
    );
    let attempts = done.stderr.matches(TASK_STATE_LOG).count();
    assert!(
        !done.stderr.contains("switched from RUNNING to FAILED"),
        "a task failed during the rolling restart ({attempts} state changes)"
    );
}
