//! What `terrace bench` measures as processes: the worker it benchmarks runs
//! as `terrace worker` (as deployed), and the raw pipeline yardstick runs as
//! `terrace bench-pipe`, so both are charged the CPU time the kernel counts
//! for them (`/proc/<pid>/stat`) and nothing of the benchmark's own agents.
//!
//! The yardstick moves the same bytes the way a shuffle store must at the
//! least, with no Terrace code: socket receive → file write (then fsync) →
//! file read → socket send, in chunks of the agents' push size.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use terrace_tier_api::ByteSize;

/// CPU time the kernel reports in `/proc/<pid>/stat` is in USER_HZ ticks,
/// 100 per second on every Linux architecture (the value `sysconf(_SC_CLK_TCK)`
/// returns; it is ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds of process `pid` so far (all its threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 (utime) and 15 (stime), counting from 1 at the pid.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SECOND)
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("/proc/{pid}/status has no VmHWM line"))
}

/// Starts `terrace <args>` (this binary) and waits for its "listening on"
/// line; its other output is dropped.
fn spawn_listening(
    args: &[&str],
    what: &str,
) -> anyhow::Result<(
    Child,
    String,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
)> {
    let exe = std::env::current_exe().context("find the terrace binary")?;
    let mut child = Command::new(exe)
        .args(args)
        .env("TERRACE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {what}"))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let address = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some((_, address)) = line.split_once("listening on ") {
                    break address.trim().to_string();
                }
            }
            _ => {
                let _ = child.kill();
                let status = child.wait();
                anyhow::bail!("{what} exited before it listened ({status:?})");
            }
        }
    };
    Ok((child, address, lines))
}

/// A `terrace worker` child process.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// A worker with data under `dir`, registered with `master`.
    pub fn start(dir: &Path, master: &str, memory_budget: ByteSize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("worker.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nmaster_addresses = [\"{master}\"]\n\
                 data_dirs = [{:?}]\nmemory_budget = \"{}\"\nheartbeat_interval = \"200ms\"\n\
                 dir_reserve = \"64MiB\"\n",
                dir.join("data"),
                memory_budget
            ),
        )
        .with_context(|| format!("write {}", config.display()))?;
        let config = config.to_str().context("a UTF-8 temp path")?.to_string();
        // Registered with the master once it listens (the caller waits for that).
        let (child, _, lines) = spawn_listening(&["worker", "--config", &config], "the worker")?;
        // Its log (warnings) goes on to stdout: keep the pipe drained.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(WorkerProcess { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the yardstick took.
#[derive(Debug, serde::Serialize)]
pub struct Pipeline {
    pub bytes: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// Runs `bytes` through a `terrace bench-pipe` child in `chunk`-sized
/// writes and reads them back.
pub fn pipeline_yardstick(dir: &Path, bytes: u64, chunk: usize) -> anyhow::Result<Pipeline> {
    let dir_arg = dir.to_str().context("a UTF-8 temp path")?.to_string();
    let chunk_arg = chunk.to_string();
    let (mut child, address, mut lines) = spawn_listening(
        &["bench-pipe", "--dir", &dir_arg, "--chunk", &chunk_arg],
        "the pipeline yardstick",
    )?;
    let start = Instant::now();
    let data = vec![0x3cu8; chunk];
    let mut sink = TcpStream::connect(&address).context("connect to the pipeline")?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.min((bytes - sent) as usize);
        sink.write_all(&data[..n]).context("send to the pipeline")?;
        sent += n as u64;
    }
    drop(sink);
    let mut source = TcpStream::connect(&address).context("connect to the pipeline again")?;
    let mut buffer = vec![0u8; chunk];
    let mut received = 0u64;
    loop {
        let n = source.read(&mut buffer).context("read from the pipeline")?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == bytes,
        "sent {bytes} bytes through the pipeline, got {received} back"
    );
    let cpu_seconds = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(v) = line.strip_prefix("cpu_seconds ") {
                    break v
                        .trim()
                        .parse::<f64>()
                        .context("parse the pipeline's CPU time")?;
                }
            }
            _ => anyhow::bail!("the pipeline exited without its CPU time"),
        }
    };
    let status = child.wait().context("wait for the pipeline")?;
    anyhow::ensure!(status.success(), "the pipeline failed: {status}");
    Ok(Pipeline {
        bytes,
        seconds,
        cpu_seconds,
    })
}

/// `terrace bench-pipe` (hidden): the yardstick's own process.
#[derive(Debug, clap::Args)]
pub struct PipeArgs {
    /// Directory for the pipeline's file.
    #[arg(long)]
    dir: PathBuf,
    /// Bytes per socket read, file write, file read and socket write.
    #[arg(long)]
    chunk: usize,
}

/// Takes one connection's bytes into a file (fsynced), sends the file to
/// the next connection, prints its own CPU time and exits.
pub fn run_pipe(args: PipeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=64 << 20).contains(&args.chunk),
        "--chunk must be 1 byte to 64 MiB"
    );
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    println!("bench-pipe listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let path = args.dir.join("bench-pipe.data");
    let mut buffer = vec![0u8; args.chunk];
    let (mut from, _) = listener.accept().context("accept the writer")?;
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    loop {
        let n = read_full(&mut from, &mut buffer)?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).context("write the file")?;
    }
    file.sync_all().context("fsync the file")?;
    drop(file);
    let (mut to, _) = listener.accept().context("accept the reader")?;
    let mut file = std::fs::File::open(&path).context("open the file")?;
    loop {
        let n = read_full(&mut file, &mut buffer)?;
        if n == 0 {
            break;
        }
        to.write_all(&buffer[..n]).context("send")?;
    }
    drop(to);
    std::fs::remove_file(&path).context("remove the file")?;
    println!("cpu_seconds {}", cpu_seconds(std::process::id())?);
    Ok(())
}

/// Fills `buffer` unless the source ends first; returns the bytes read.
fn read_full(source: &mut impl Read, buffer: &mut [u8]) -> anyhow::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match source.read(&mut buffer[filled..]).context("read")? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
