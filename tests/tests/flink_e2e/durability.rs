//! Durability through the object store under a real Flink job: three
//! workers with an S3-compatible object store, the keyed aggregation with
//! shuffle 1's consumers held at a gate until every producer has finished
//! (the map stage is over), then the worker that took the most of it
//! SIGKILLed for good and the gate opened.
//! - With `durability = "object-store"` its sealed partitions are adopted
//!   from the store by the others: exact result, no producer runs twice.
//! - Without it (the same object store, for overflow and migration only),
//!   exactly the producers whose partitions it held run again.

use super::*;

/// What the job cost, and its producers' attempts.
struct AfterMapStage {
    reruns: Reruns,
    /// From the gate opened to the job's end.
    after_kill: Duration,
    /// Bytes pushed to the workers for shuffle 1, and bytes the workers put
    /// in the object store (objects and durable indexes) meanwhile.
    pushed: u64,
    uploaded: u64,
    /// Why tasks failed, from Flink's log.
    failures: String,
}

fn kill_a_worker_after_the_map_stage(name: &str, durable: bool) -> AfterMapStage {
    let work = keyed(Line::V1_20);
    let _flink = flink_lock();
    let default = default_result(work);
    let s3 = terrace_tests::s3::S3Server::start();
    // Parts up to 256 MiB go up in one PUT: the test server (s3s-fs) names
    // a multipart upload's metadata file after the whole key, which with
    // Flink's partition ids passes the file system's 255-byte limit (real
    // S3 has no such limit; tests/tests/object_store.rs covers multipart
    // uploads with shorter keys).
    let mut args = vec![
        "--object-store".to_string(),
        s3.url(name),
        "--set".to_string(),
        "object_store.part_size=256MiB".to_string(),
    ];
    if durable {
        args.extend(["--set".to_string(), "durability=object-store".to_string()]);
    }
    let mut cluster = Cluster::start_with("3s", args, s3.env());
    cluster.add_worker();
    cluster.add_worker();
    cluster.wait_registered(3);
    let output = cluster.dir.path().join(format!("{name}.txt"));
    let gate = cluster.dir.path().join("gate");
    let mut flink = cluster.flink_config_with_restarts(5);
    flink.push(format!("job.gate={}", gate.display()));
    let job = Job {
        name,
        parallelism: 4,
        work,
        flink,
    };
    let running = job.spawn(&output, cluster.dir.path());

    // The map stage is over (the consumers wait at the gate) once Flink
    // logs every shuffle-1 producer finished: each sealed its partition.
    let log = cluster.dir.path().join(format!("{name}.err"));
    terrace_tests::wait_until(
        Duration::from_secs(120),
        "every shuffle-1 producer finished",
        || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            // Subtasks ("i/n"), each once however many loggers say it.
            let finished: BTreeSet<&str> = text
                .lines()
                .filter(|l| l.contains(") switched from RUNNING to FINISHED"))
                .filter_map(|l| {
                    let at = l.find(SHUFFLE_1_PRODUCER)? + SHUFFLE_1_PRODUCER.len();
                    l[at..].split(')').next()
                })
                .collect();
            finished.len() as u32 >= job.parallelism
        },
    );
    let stats: Vec<WorkerStatsReply> = (0..cluster.workers.len())
        .map(|i| cluster.stats(i))
        .collect();
    let pushed: Vec<u64> = stats.iter().map(|s| s.bytes_pushed).collect();
    let sealed: u32 = stats.iter().map(|s| s.load.sealed_partitions).sum();
    // What is in the store now: copies, indexes, anything overflowed.
    let uploaded = stored_object_bytes(&s3.root().join(terrace_tests::s3::BUCKET));
    let victim = (0..pushed.len())
        .max_by_key(|&i| pushed[i])
        .expect("three workers");
    eprintln!(
        "flink_e2e: {name}: map stage over, {sealed} partitions sealed, {pushed:?} bytes pushed, {uploaded} bytes uploaded; SIGKILL worker {victim}"
    );
    let (killed, _) = cluster.workers.remove(victim);
    killed.kill();
    let opened = clock::now();
    fs::write(&gate, b"open").expect("open the gate");
    let done = running.wait(JOB_DEADLINE);
    assert!(
        done.succeeded(),
        "{name}: the job failed after worker {victim} was killed ({:?}):\n{}",
        done.status,
        done.tail()
    );
    let after_kill = clock::elapsed(opened);
    assert_same_result(&output, &default, name);
    for i in 0..cluster.workers.len() {
        cluster.assert_worker_empty(i);
    }
    let reruns = Reruns::from_log(&done.stderr);
    eprintln!(
        "flink_e2e: {name}: job {:.1?}, {after_kill:.1?} after the kill; shuffle-1 producers {reruns:?}",
        done.elapsed
    );
    assert!(reruns.subtasks > 0, "no shuffle-1 producer in Flink's log");
    AfterMapStage {
        reruns,
        after_kill,
        pushed: pushed.iter().sum(),
        uploaded,
        failures: failure_lines(&done.stderr),
    }
}

/// Bytes of the objects in the S3 server's bucket directory (it keeps each
/// object as a file there, its metadata elsewhere).
fn stored_object_bytes(bucket: &Path) -> u64 {
    terrace_tests::entries_under(bucket)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| fs::metadata(&p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn with_object_store_durability_a_worker_killed_after_the_map_stage_reruns_nothing() {
    let _logs = logs::capture();
    let run = kill_a_worker_after_the_map_stage("terrace-durable-killed", true);
    assert!(
        run.reruns.rerun.is_empty() && run.reruns.lost.is_empty(),
        "a worker lost after the map stage cost re-runs with durability: {:?}; failures in Flink's log:\n{}",
        run.reruns,
        run.failures
    );
    assert!(
        run.uploaded >= run.pushed / 2,
        "the sealed partitions went to the object store: {} of {} bytes",
        run.uploaded,
        run.pushed
    );
    eprintln!(
        "flink_e2e: durability: {:.3} bytes uploaded per byte pushed; {:.1?} from the kill to the job's end",
        run.uploaded as f64 / run.pushed.max(1) as f64,
        run.after_kill
    );
}

#[test]
fn without_durability_a_worker_killed_after_the_map_stage_reruns_exactly_its_producers() {
    let _logs = logs::capture();
    let run = kill_a_worker_after_the_map_stage("terrace-local-killed", false);
    assert!(
        !run.reruns.lost.is_empty(),
        "the killed worker held no partition: {:?}",
        run.reruns
    );
    assert_eq!(
        run.reruns.rerun, run.reruns.lost,
        "exactly the producers whose partitions were lost run again"
    );
    assert!(
        run.reruns.lost.len() < run.reruns.subtasks,
        "placement put every producer on the killed worker: {:?}",
        run.reruns
    );
}
