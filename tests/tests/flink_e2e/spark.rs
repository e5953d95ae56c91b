//! One Terrace cluster serving a Flink job and a Spark application at the
//! same time: both results exact, and `terrace status` lists both engines'
//! jobs while they run.

use super::*;

/// Runs `job` of `spark-plugin/e2e` on a local-cluster Spark 3.5 with
/// `shuffle` (`sort`, or `terrace` with `conf`).
fn spark_app(job: &str, output: &Path, shuffle: &str, conf: &[String], logs: &Path) -> Child {
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("scripts/run-spark-job.sh"))
        .arg(job)
        .arg(output)
        .env("SPARK_VERSION", "3.5.9")
        .env("SHUFFLE", shuffle)
        .env("SPARK_CONF", conf.join("\n"))
        .env("WORK_DIR", logs.join(format!("spark-{shuffle}")));
    Child::spawn(command, logs, &format!("spark-{job}-{shuffle}"))
}

#[test]
fn a_flink_job_and_a_spark_job_at_once_on_one_cluster_both_match_their_own_shuffles() {
    let _flink = flink_lock();
    let work = keyed(Line::V1_20);
    let flink_want = default_result(work);
    let mut cluster = Cluster::start("10s");
    cluster.add_worker();
    cluster.wait_registered(2);
    let dir = cluster.dir.path().to_path_buf();

    let spark_want = dir.join("spark-sort.txt");
    let sort = spark_app("rdd", &spark_want, "sort", &[], &dir).wait(JOB_DEADLINE);
    assert!(
        sort.succeeded(),
        "rdd on Spark's sort shuffle failed:\n{}",
        sort.tail()
    );

    let flink_out = dir.join("flink-terrace.txt");
    let flink = Job {
        name: "flink-beside-spark",
        parallelism: 4,
        work,
        flink: cluster.flink_config(),
    }
    .spawn(&flink_out, &dir);
    let spark_out = dir.join("spark-terrace.txt");
    let spark_conf = vec![format!(
        "spark.terrace.master.address={}",
        cluster.master.address
    )];
    let spark = spark_app("rdd", &spark_out, "terrace", &spark_conf, &dir);

    // While both run, the master knows a job of each engine: Spark's ids are
    // printable (`spark/...`), Flink's are 16 raw bytes.
    let status = terrace_tests::wait::poll_until(JOB_DEADLINE, || {
        let out = terrace_tests::run_terrace(
            &["status", "--master", &cluster.master.address],
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let jobs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("job "))
            .collect();
        jobs.iter().any(|j| j.contains("(spark/")) && jobs.iter().any(|j| j.len() == 32)
    });
    assert!(
        status,
        "terrace status never listed a Spark job and a Flink job at once"
    );

    let flink_done = flink.wait(JOB_DEADLINE);
    let spark_done = spark.wait(JOB_DEADLINE);
    assert!(
        flink_done.succeeded(),
        "the Flink job failed:\n{}",
        flink_done.tail()
    );
    assert!(
        spark_done.succeeded(),
        "the Spark job failed:\n{}",
        spark_done.tail()
    );
    assert_same_result(&flink_out, &flink_want, "the Flink job beside a Spark job");
    assert_eq!(
        fs::read_to_string(&spark_out).expect("Spark's result on Terrace"),
        fs::read_to_string(&spark_want).expect("Spark's result on its sort shuffle"),
        "the Spark job beside a Flink job differs from Spark's sort shuffle"
    );
    for i in 0..2 {
        cluster.assert_worker_empty(i);
    }
}
