//! The `terrace` command line as a user meets it: what goes to stdout and
//! to stderr when they are files (`terrace demo > out.log 2> err.log`), the
//! default log levels, the no-secret warning, `--json` and exit codes
//! (docs/configuration.md, "Output, logs and exit codes").

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use terrace_tests::{ServiceProcess, logs, terrace_bin, wait_for, wait_until};

/// A `terrace` child killed (if still running) and reaped when dropped, so a
/// failed assertion leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a finished `terrace` command left behind.
struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// `terrace <args>` as a user runs it: no `TERRACE_LOG` (the command's own
/// default level), no `NO_COLOR`, stdout and stderr each to a file in `dir`,
/// so neither is a terminal.
fn command(dir: &Path, name: &str, args: &[&str]) -> (Command, PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let err = dir.join(format!("{name}.err"));
    let mut command = Command::new(terrace_bin());
    command
        .args(args)
        .env_remove("TERRACE_LOG")
        .env_remove("NO_COLOR")
        .env_remove("TERRACE_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create stdout file"))
        .stderr(std::fs::File::create(&err).expect("create stderr file"));
    (command, out, err)
}

/// Runs `terrace <args>` (see [`command`]) to its end, at most `limit`.
fn run(dir: &Path, name: &str, args: &[&str], limit: Duration) -> Run {
    let (mut command, out, err) = command(dir, name, args);
    let mut child = Child(command.spawn().expect("spawn terrace"));
    let (status, _) = wait_for(limit, &format!("terrace {}", args.join(" ")), || {
        child.0.try_wait().expect("poll terrace")
    });
    Run {
        status,
        stdout: std::fs::read(out).expect("read stdout file"),
        stderr: std::fs::read(err).expect("read stderr file"),
    }
}

const NO_SECRET: &str = "has no cluster secret";

/// Log lines at INFO or below: tracing's plain format puts the level after
/// the timestamp.
fn chatty_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|level| matches!(level, "INFO" | "DEBUG" | "TRACE"))
        })
        .collect()
}

/// Checks what a report command (default level WARN) left on stderr: no
/// escape codes, no INFO line, no no-secret warning.
fn assert_quiet_stderr(run: &Run) {
    let stderr = run.stderr();
    assert!(
        !run.stderr.contains(&0x1b),
        "an escape code on stderr: {stderr:?}"
    );
    assert!(
        chatty_lines(&stderr).is_empty(),
        "INFO lines on stderr: {stderr}"
    );
    assert!(!stderr.contains(NO_SECRET), "{stderr}");
}

/// The check: `terrace demo > out.log 2> err.log` leaves the report
/// alone in out.log and nothing but plain warnings (none, here) in err.log;
/// the embedded loopback cluster does not warn that it has no secret.
#[test]
fn demo_prints_its_report_alone_on_stdout_and_nothing_noisy_on_stderr() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["demo", "--buffers", "8", "--segment-size", "128KiB"];
    let text = run(dir.path(), "demo", &args, Duration::from_secs(180));
    assert!(
        text.status.success(),
        "{:?}: {}",
        text.status,
        text.stderr()
    );
    let stdout = text.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("terrace demo: 4 producers x 64 subpartitions"),
        "{stdout}"
    );
    // 4 x 64 x 8 buffers of 32 KiB.
    assert!(
        lines[1].starts_with(&format!(
            "  every byte verified ({} bytes)",
            4 * 64 * 8 * 32 * 1024
        )),
        "{stdout}"
    );
    assert!(lines[2].contains("end to end"), "{stdout}");
    assert_quiet_stderr(&text);
    // Nothing went wrong, so nothing at all was logged.
    assert_eq!(text.stderr(), "", "stderr of a clean demo");

    // --json: stdout is one JSON document and nothing else.
    let json = run(
        dir.path(),
        "demo-json",
        &[&args[..], &["--json"]].concat(),
        Duration::from_secs(180),
    );
    assert!(
        json.status.success(),
        "{:?}: {}",
        json.status,
        json.stderr()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("demo --json stdout is JSON");
    let payload = report["payload_bytes"].as_u64().expect("payload_bytes");
    assert_eq!(payload, 4 * 64 * 8 * 32 * 1024, "{report}");
    assert_eq!(report["verified_bytes"].as_u64(), Some(payload), "{report}");
    assert_quiet_stderr(&json);
}

/// Exit codes: 0 for success (and `--help`), 1 for a failure with the
/// error on stderr, 2 for usage errors (clap's, and a `--log` filter
/// tracing refuses). Code 3 (data that did not verify) cannot be provoked
/// from outside; cli/src/main.rs tests how it is chosen.
#[test]
fn exit_codes_say_success_failure_and_usage() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let limit = Duration::from_secs(60);
    let code = |run: &Run| run.status.code();

    let help = run(dir.path(), "help", &["--help"], limit);
    assert_eq!(code(&help), Some(0), "{}", help.stderr());
    assert!(help.stdout().contains("Usage:"), "{}", help.stdout());

    let unknown = run(dir.path(), "unknown", &["demo", "--no-such-flag"], limit);
    assert_eq!(code(&unknown), Some(2), "{}", unknown.stderr());
    assert!(
        unknown.stderr().contains("--no-such-flag"),
        "{}",
        unknown.stderr()
    );
    assert!(unknown.stdout.is_empty());

    let no_command = run(dir.path(), "no-command", &[], limit);
    assert_eq!(code(&no_command), Some(2), "{}", no_command.stderr());

    let bad_log = run(
        dir.path(),
        "bad-log",
        &["status", "--log", "x=notalevel"],
        limit,
    );
    assert_eq!(code(&bad_log), Some(2), "{}", bad_log.stderr());

    // Nothing listens there: the command fails, says why on stderr, and
    // prints no report.
    let nobody = terrace_tests::closed_address();
    let failed = run(
        dir.path(),
        "status-closed",
        &["status", "--json", "--master", &nobody],
        limit,
    );
    assert_eq!(code(&failed), Some(1), "{}", failed.stderr());
    let stderr = failed.stderr();
    assert!(
        stderr.starts_with("Error: connect to master ") && stderr.contains(&nobody),
        "{stderr}"
    );
    assert!(failed.stdout.is_empty(), "{}", failed.stdout());
    assert!(!failed.stderr.contains(&0x1b), "{stderr:?}");
}

/// A master started as an operator starts it: INFO by default on a plain
/// stderr, the no-secret warning exactly once; `terrace status --json`
/// against it (and a worker) prints the documented shape; SIGTERM ends the
/// master with exit code 0.
#[test]
fn a_master_logs_info_plainly_and_status_json_has_its_documented_shape() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut command, out, err) =
        command(dir.path(), "master", &["master", "--listen", "127.0.0.1:0"]);
    let mut master = Child(command.spawn().expect("spawn terrace master"));
    let (address, _) = wait_for(
        Duration::from_secs(30),
        "the master prints its address",
        || {
            let stdout = std::fs::read_to_string(&out).ok()?;
            let (_, rest) = stdout.split_once("listening on ")?;
            rest.lines().next().map(|a| a.trim().to_string())
        },
    );

    let worker_dir = dir.path().join("worker");
    std::fs::create_dir_all(&worker_dir).expect("worker dir");
    let config = worker_dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmaster_addresses = [\"{address}\"]\ndata_dirs = [\"{}\"]\nmemory_budget = \"64MiB\"\nheartbeat_interval = \"200ms\"\ndir_reserve = \"64MiB\"\n",
            worker_dir.join("data").display()
        ),
    )
    .expect("write worker config");
    let worker = ServiceProcess::start(&["worker", "--config", config.to_str().expect("UTF-8")]);

    let limit = Duration::from_secs(60);
    let mut status = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the worker is listed", || {
        let asked = run(
            dir.path(),
            "status",
            &["status", "--json", "--master", &address],
            limit,
        );
        assert_eq!(asked.status.code(), Some(0), "{}", asked.stderr());
        assert_quiet_stderr(&asked);
        status = serde_json::from_slice(&asked.stdout).expect("status --json stdout is JSON");
        status["workers"].as_array().is_some_and(|w| w.len() == 1)
    });
    assert_eq!(status["format_version"], 1, "{status}");
    assert_eq!(status["master"], address.as_str(), "{status}");
    assert!(status["jobs"].as_array().is_some(), "{status}");
    let listed = &status["workers"][0];
    assert_eq!(listed["address"], worker.address.as_str(), "{status}");
    assert_eq!(listed["load"]["state"], "serving", "{status}");
    assert_eq!(listed["error"], serde_json::Value::Null, "{status}");
    assert_eq!(listed["tiers_from"], "worker", "{status}");
    assert_eq!(
        listed["memory_budget_bytes"].as_u64(),
        Some(64 << 20),
        "{status}"
    );
    assert_eq!(
        listed["tiers"]["dirs"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    drop(worker);

    // SIGTERM: the master shuts down and exits with 0.
    terrace_tests::s3::send_signal(master.0.id(), libc::SIGTERM).expect("send SIGTERM");
    let (exit, _) = wait_for(Duration::from_secs(30), "the master exits", || {
        master.0.try_wait().expect("poll the master")
    });
    assert_eq!(exit.code(), Some(0), "{exit:?}");

    let stderr_bytes = std::fs::read(&err).expect("read the master's stderr");
    let stderr = String::from_utf8_lossy(&stderr_bytes);
    assert!(!stderr_bytes.contains(&0x1b), "escape codes: {stderr:?}");
    assert!(
        chatty_lines(&stderr)
            .iter()
            .any(|l| l.contains("master listening")),
        "a service logs at INFO by default: {stderr}"
    );
    assert_eq!(
        stderr.matches(NO_SECRET).count(),
        1,
        "the no-secret warning, once: {stderr}"
    );
}
