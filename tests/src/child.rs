//! Child processes of end-to-end tests (a Flink or Spark job, a build):
//! each in its own process group, its output in files, waited for under a
//! deadline and killed, whole group, when it passes it, so that a test fails
//! instead of hanging.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use terrace_rpc::clock;

/// A child process that finished (or was killed at its deadline).
#[derive(Debug)]
pub struct Finished {
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last lines of the output, without those containing `noise`, for
    /// assertion messages.
    pub fn tail_skipping(&self, noise: &str) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .chain(self.stdout.lines())
            .filter(|line| noise.is_empty() || !line.contains(noise))
            .collect();
        let from = lines.len().saturating_sub(60);
        lines[from..].join("\n")
    }
}

/// A child process in its own process group, with its output in files.
#[derive(Debug)]
pub struct Child {
    pub child: std::process::Child,
    pub started: Instant,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Child {
    pub fn spawn(mut command: Command, logs: &Path, name: &str) -> Child {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let child = command
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("create stdout file"))
            .stderr(fs::File::create(&stderr).expect("create stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Child {
            child,
            started: clock::now(),
            stdout,
            stderr,
        }
    }

    /// Kills the whole process group (the script and the JVM or cargo under it).
    pub fn kill_group(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child; at `deadline` kills it and returns with `status: None`.
    pub fn wait(mut self, deadline: Duration) -> Finished {
        let child = &mut self.child;
        let mut status = None;
        let mut failed = false;
        crate::wait::poll_until(
            deadline.saturating_sub(clock::elapsed(self.started)),
            || {
                match child.try_wait() {
                    Ok(Some(exited)) => status = Some(exited),
                    Ok(None) => {}
                    Err(_) => failed = true,
                }
                status.is_some() || failed
            },
        );
        if status.is_none() {
            self.kill_group();
        }
        let elapsed = clock::elapsed(self.started);
        Finished {
            status,
            elapsed,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}
