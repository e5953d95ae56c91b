//! The README's example of a non-Flink engine using Terrace as a segment
//! store (`agents/examples/segment_store.rs`) runs against a real master and
//! worker: it registers a job, writes partitions as segments, has another
//! process read every buffer back and check it, and releases everything.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use terrace_tests::ServiceProcess;
use terrace_tests::deploy::run;

/// The example's binary. `cargo test --workspace` builds examples beside the
/// tests (the README's test command does); a run of this test alone builds it.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .join("examples/segment_store");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agents/examples/segment_store.rs");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&bin).is_none() || modified(&bin) < modified(&source) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "terrace-agents",
                "--example",
                "segment_store",
            ])
            .status()
            .expect("run cargo build");
        assert!(built.success(), "cargo build of the example failed");
    }
    bin
}

#[test]
fn the_segment_store_example_writes_reads_back_from_another_process_and_releases() {
    let dir = tempfile::tempdir().expect("data directory");
    let master = ServiceProcess::start(&["master", "--listen", "127.0.0.1:0"]);
    let worker = ServiceProcess::start(&[
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().expect("utf-8 path"),
        "--master",
        &master.address,
    ]);
    terrace_tests::wait_until(Duration::from_secs(20), "the worker registers", || {
        terrace_tests::worker_stats(&worker.address).partitions == 0
            && matches!(
                terrace_tests::call_with(
                    &master.address,
                    &terrace_tests::admin_options(),
                    terrace_tier_api::protocol::ListWorkers
                ),
                Ok(list) if list.workers.len() == 1
            )
    });
    let mut command = Command::new(example_bin());
    command.arg(&master.address);
    let ran = run(
        command,
        Duration::from_secs(120),
        "the segment_store example",
    );
    assert!(ran.success(), "{}", ran.report());
    let out = ran.stdout();
    assert!(
        out.contains("wrote 3 partitions x 4 subpartitions x 50 buffers"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "another process read back {} bytes, every buffer as written",
            3 * 4 * 50 * 16 * 1024
        )),
        "{out}"
    );
    assert!(out.contains("released the partitions and the job"), "{out}");
    assert_eq!(
        terrace_tests::worker_stats(&worker.address).partitions,
        0,
        "the example released everything it wrote"
    );
}
