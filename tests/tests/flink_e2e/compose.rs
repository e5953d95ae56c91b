//! The container image and the compose cluster of `deploy/compose` (two
//! masters, three workers, Prometheus), built and started here the way an
//! operator would: `deploy/build-image.sh` (the base made from this
//! machine's files, no registry), `docker-compose up`. Every member must
//! become ready (its `/readyz`, and Docker's health check from the compose
//! file agreeing), Prometheus must scrape every member, and a Flink job on
//! the host, given the masters' addresses on the compose network, must give
//! exactly the result of Flink's own shuffle, with Prometheus showing the
//! bytes it moved and its partitions released. A worker killed makes
//! Prometheus fire `TerraceWorkerLost`; a worker cut off the network
//! mid-shuffle (its container running) is taken for hung and the next job
//! still gives the exact result. The cluster (containers,
//! volumes, network) and the images are removed when the test ends, whether
//! it passed or not.

use super::*;
use terrace_tests::deploy::{COMPOSE_MEMBERS, Compose, Images, http_get};

/// From `docker-compose up` to every member ready.
const CLUSTER_READY: Duration = Duration::from_secs(120);
/// Prometheus scrapes every 5 s (deploy/compose/prometheus.yml).
const SCRAPED: Duration = Duration::from_secs(60);

#[test]
fn compose_cluster_runs_a_flink_job_with_the_exact_result() {
    let _logs = logs::capture();
    let _flink = flink_lock();
    let work = keyed(Line::V1_20);
    let default = default_result(work);
    // Built before the cluster starts, so the cluster's deadlines measure it alone.
    terrace_jar(work.line);
    let images = Images::build(&terrace_tests::terrace_bin());
    let cluster = Compose::up(&images);
    let up = clock::now();

    for (service, octet, admin) in COMPOSE_MEMBERS {
        let (port, path) = admin.map_or((9090, "/-/ready"), |port| (port, "/readyz"));
        let address = cluster.address(octet, port);
        let mut last = String::from("nothing yet");
        let ready = terrace_tests::wait::poll_until(
            CLUSTER_READY.saturating_sub(clock::elapsed(up)),
            || match http_get(address, path, Duration::from_secs(2)) {
                Ok(reply) if reply.status == 200 => true,
                Ok(reply) => {
                    last = format!("{} {}", reply.status, reply.body.trim());
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            },
        );
        assert!(
            ready,
            "{service} ({address}{path}) is ready within {CLUSTER_READY:?} of `up`; last answer: {last}"
        );
        if admin.is_some() {
            let health = http_get(address, "/healthz", Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{service} /healthz: {e}"));
            assert_eq!(
                (health.status, health.body.trim()),
                (200, "ok"),
                "{service}"
            );
        }
    }
    eprintln!(
        "flink_e2e: compose: every member ready {:.1?} after up",
        clock::elapsed(up)
    );
    // Docker runs the compose file's health checks inside the containers.
    let mut states = Vec::new();
    let healthy = terrace_tests::wait::poll_until(Duration::from_secs(60), || {
        states = COMPOSE_MEMBERS
            .iter()
            .map(|(service, _, _)| (service.to_string(), cluster.health(service)))
            .collect::<Vec<_>>();
        states.iter().all(|(_, state)| state == "healthy")
    });
    assert!(healthy, "Docker reports every member healthy: {states:?}");

    // Prometheus scrapes every master and worker.
    let want: BTreeSet<String> = COMPOSE_MEMBERS
        .iter()
        .filter_map(|(service, _, admin)| admin.map(|port| format!("{service}:{port}")))
        .collect();
    let mut seen = BTreeSet::new();
    let scraped = terrace_tests::wait::poll_until(SCRAPED, || {
        seen = cluster
            .query(r#"up{job=~"terrace-(master|worker)"} == 1"#)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_string))
            .collect();
        seen == want
    });
    assert!(
        scraped,
        "Prometheus scrapes every member: up in {seen:?}, want {want:?}"
    );
    let workers = cluster
        .query_value(r#"max(terrace_master_workers{state="live"})"#)
        .expect("the masters' live workers");
    assert_eq!(workers, 3.0, "the masters list the three workers as live");

    // A Flink job on the host through the cluster's masters.
    let dir = tempfile::tempdir_in(cluster_base()).expect("job directory");
    let output = dir.path().join("compose.txt");
    let job = Job {
        name: "terrace-compose",
        parallelism: 4,
        work,
        flink: vec![
            "execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL".into(),
            format!(
                "taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class={TERRACE_FACTORY}"
            ),
            format!("terrace.master.address={}", cluster.master_addresses()),
        ],
    };
    let done = job.spawn(&output, dir.path()).wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "the job through the compose cluster failed or passed {JOB_DEADLINE:?} ({:?}):\n{}",
        done.status,
        done.tail()
    );
    eprintln!("flink_e2e: compose: the job took {:.1?}", done.elapsed);
    assert_same_result(&output, &default, "the job through the compose cluster");

    // Prometheus saw the job's bytes (random payloads: at least the payload
    // bytes were pushed, and every pushed byte read back) and its partitions
    // released, within a few scrapes.
    let payload = (work.records * work.payload) as f64;
    // What the workers themselves count (their WorkerStats replies, asked
    // over Terrace's own protocol on the compose network): the job is
    // over, so these are final, and Prometheus must reach exactly them (a
    // worker scraped before the job's last pushes shows less until its
    // next scrape).
    let counted = || -> (u64, u64) {
        COMPOSE_MEMBERS
            .iter()
            .filter(|(service, _, _)| service.starts_with("worker"))
            .map(|(_, octet, _)| worker_stats(&cluster.address(*octet, 9871).to_string()))
            .fold((0, 0), |(p, r), s| (p + s.bytes_pushed, r + s.bytes_read))
    };
    let counted = counted();
    let mut last = (0.0, 0.0, f64::NAN, 0.0);
    let seen_all = terrace_tests::wait::poll_until(SCRAPED, || {
        let value = |q: &str| cluster.query_value(q).unwrap_or(f64::NAN);
        last = (
            value("sum(terrace_worker_pushed_bytes_total)"),
            value("sum(terrace_worker_read_bytes_total)"),
            value("sum(terrace_worker_partitions)"),
            value("count(terrace_worker_pushed_bytes_total > 0)"),
        );
        let (pushed, read, partitions, _) = last;
        pushed >= payload
            && read == pushed
            && partitions == 0.0
            && (pushed as u64, read as u64) == counted
    });
    let (pushed, read, partitions, workers_used) = last;
    assert!(
        seen_all,
        "Prometheus shows the job: pushed {pushed} B (payload {payload} B), read {read} B, \
         {partitions} partition(s) left"
    );
    assert!(
        workers_used >= 2.0,
        "the masters spread the job over the workers: {workers_used} got data"
    );
    assert_eq!(
        (pushed as u64, read as u64),
        counted,
        "Prometheus's pushed and read bytes are the workers' own counts"
    );
    eprintln!(
        "flink_e2e: compose: Prometheus saw {pushed} B pushed and read on {workers_used} workers; \
         images built in {:.1?}; cluster up to job end {:.1?}",
        images.took,
        clock::elapsed(up)
    );

    // A rolling restart of the containers under a 1.1 GiB job:
    // `docker-compose restart` of each worker, then each master, one at a
    // time, each waited for until both masters list every worker live
    // again. The exact result, and no producer runs twice.
    let big_work = big(Line::V1_20);
    let big_default = default_result(big_work);
    let rolled_output = dir.path().join("compose-rolling.txt");
    let mut flink = job.flink.clone();
    flink.push("terrace.master.poll-interval=500ms".to_string());
    flink.extend(restart_strategy(5));
    let rolling = Job {
        name: "terrace-compose-rolling",
        parallelism: 4,
        work: big_work,
        flink,
    };
    let worker_addresses: Vec<String> = COMPOSE_MEMBERS
        .iter()
        .filter(|(service, _, _)| service.starts_with("worker"))
        .map(|(_, octet, _)| cluster.address(*octet, 9871).to_string())
        .collect();
    let masters: Vec<String> = cluster
        .master_addresses()
        .split(',')
        .map(str::to_string)
        .collect();
    let pushed = || -> u64 {
        worker_addresses
            .iter()
            .filter_map(|a| {
                terrace_tests::call(a, terrace_tier_api::protocol::WorkerStats)
                    .ok()
                    .map(|s| s.bytes_pushed)
            })
            .sum()
    };
    let all_live = || {
        masters.iter().all(|m| {
            terrace_tests::list_workers(m)
                .is_ok_and(|l| l.workers.len() == 3 && l.workers.iter().all(|w| !w.load.restarting))
        })
    };
    let before = pushed();
    let mut running = rolling.spawn(&rolled_output, dir.path());
    terrace_tests::wait_until(Duration::from_secs(120), "the job pushes 10 MB", || {
        pushed() >= before + (10 << 20)
    });
    let rolled_at = clock::now();
    for service in ["worker1", "worker2", "worker3", "master1", "master2"] {
        terrace_tests::deploy::run_ok(
            cluster.command(&["restart", "-t", "30", service]),
            Duration::from_secs(60),
            &format!("docker-compose restart {service}"),
        );
        terrace_tests::wait_until(
            Duration::from_secs(60),
            &format!("both masters list every worker live after {service} restarted"),
            all_live,
        );
    }
    let rolled = clock::elapsed(rolled_at);
    let still_running = running.child.try_wait().expect("poll the job").is_none();
    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "the job under a rolling restart of the containers failed ({:?}):\n{}",
        done.status,
        done.tail()
    );
    assert_same_result(
        &rolled_output,
        &big_default,
        "the job under a rolling restart of the containers",
    );
    let reruns = Reruns::from_log(&done.stderr);
    eprintln!(
        "flink_e2e: compose: rolling restart of 3 workers and 2 masters in {rolled:.1?}, the job still running: {still_running}; the job took {:.1?}; shuffle-1 producers {reruns:?}",
        done.elapsed
    );
    assert!(
        still_running,
        "the job ended before the rolling restart did"
    );
    assert!(reruns.subtasks > 0, "no shuffle-1 producer in Flink's log");
    assert!(
        reruns.rerun.is_empty() && reruns.lost.is_empty(),
        "a rolling restart of the containers cost re-runs: {reruns:?}; failures in Flink's log:\n{}",
        failure_lines(&done.stderr)
    );

    // A worker killed (SIGKILL, as a crashed host): the masters count it
    // lost after their worker_timeout (10 s here), and Prometheus, which
    // evaluates deploy/prometheus/alerts.yml itself, fires TerraceWorkerLost.
    terrace_tests::deploy::run_ok(
        cluster.command(&["kill", "-s", "SIGKILL", "worker3"]),
        Duration::from_secs(30),
        "docker-compose kill -s SIGKILL worker3",
    );
    let killed = clock::now();
    let firing = r#"ALERTS{alertname="TerraceWorkerLost",alertstate="firing"}"#;
    let mut last = String::from("nothing yet");
    let fired =
        terrace_tests::wait::poll_until(Duration::from_secs(90), || match cluster.query(firing) {
            Ok(series) if !series.is_empty() => true,
            Ok(_) => {
                last = format!(
                    "not firing; lost workers per master: {:?}",
                    cluster.query(r#"terrace_master_workers{state="lost"}"#)
                );
                false
            }
            Err(e) => {
                last = e;
                false
            }
        });
    assert!(
        fired,
        "Prometheus fires TerraceWorkerLost within 90 s of the SIGKILL; last: {last}"
    );
    // Each master finds the loss on its own clock and Prometheus scrapes
    // them 5 s apart at most: the alert fires on the first, so the last
    // one to count two live workers may follow a scrape later.
    let mut live = Err(String::from("not asked yet"));
    let two_live = terrace_tests::wait::poll_until(SCRAPED, || {
        live = cluster
            .query(r#"terrace_master_workers{state="live"}"#)
            .map(|series| {
                series
                    .iter()
                    .map(|s| s["value"][1].as_str().unwrap_or("?").to_string())
                    .collect::<Vec<_>>()
            });
        live.as_ref()
            .is_ok_and(|v| v.len() == 2 && v.iter().all(|n| n == "2"))
    });
    assert!(
        two_live,
        "both masters count two workers live after the loss; last: {live:?}"
    );
    eprintln!(
        "flink_e2e: compose: TerraceWorkerLost firing {:.1?} after worker3 was killed",
        clock::elapsed(killed)
    );

    // A network cut, not a crash: the worker that first takes 100 MB of a
    // 1.1 GiB job on the two workers left is cut off the network, its
    // container running (its connections stay open on the host's side and
    // go nowhere). The agents take it for hung within their liveness
    // deadline (10 s), the masters for lost, and the job ends with the
    // exact result, its lost producers run again on the other worker.
    let work = big(Line::V1_20);
    let default = default_result(work);
    let output = dir.path().join("compose-cut.txt");
    let mut flink = vec![
        "execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL".to_string(),
        format!(
            "taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class={TERRACE_FACTORY}"
        ),
        format!("terrace.master.address={}", cluster.master_addresses()),
    ];
    flink.push("terrace.master.poll-interval=500ms".to_string());
    flink.extend(restart_strategy(5));
    let job = Job {
        name: "terrace-compose-cut",
        parallelism: 4,
        work,
        flink,
    };
    let left = [("worker1", 21), ("worker2", 22)];
    let pushed = || {
        left.map(|(_, octet)| worker_stats(&cluster.address(octet, 9871).to_string()).bytes_pushed)
    };
    let before = pushed();
    let running = job.spawn(&output, dir.path());
    let (victim, _) = terrace_tests::wait_for(
        Duration::from_secs(120),
        "a worker takes 100 MB (the cut point)",
        || {
            let now = pushed();
            (0..left.len()).find(|&i| now[i] - before[i] >= 100 << 20)
        },
    );
    let (victim, _) = left[victim];
    cluster.disconnect(victim);
    let cut = clock::now();
    let remaining = JOB_DEADLINE
        .saturating_sub(clock::elapsed(running.started))
        .max(KILLED_JOB_BOUND);
    let done = running.wait(remaining);
    assert!(
        done.succeeded(),
        "the job whose {victim} was cut off failed ({:?}):\n{}",
        done.status,
        done.tail()
    );
    assert_same_result(&output, &default, "the job whose worker was cut off");
    let reruns = Reruns::from_log(&done.stderr);
    eprintln!(
        "flink_e2e: compose: the job with {victim} cut off ended {:.1?} after the cut ({:.1?} in all); shuffle-1 producers {reruns:?}",
        clock::elapsed(cut),
        done.elapsed
    );
    assert!(
        !reruns.rerun.is_empty(),
        "{victim} had taken 100 MB and no producer ran again: {reruns:?}"
    );
}
