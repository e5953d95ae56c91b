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

use anyhow::Context;
use terrace_rpc::clock;
use terrace_tier_api::ByteSize;

/// The benchmark's working directory: `dir` when given (created if
/// missing), else a temp dir, removed when the returned guard is dropped.
pub fn work_dir(dir: Option<&Path>) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let temp = tempfile::tempdir().context("create a temp dir")?;
    let dir = dir.map_or_else(|| temp.path().to_path_buf(), Path::to_path_buf);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok((temp, dir))
}

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
    /// `write_on_push` is the worker's setting of that name; `extra` is more
    /// of its config (TOML tables), appended.
    pub fn start(
        dir: &Path,
        master: &str,
        memory_budget: ByteSize,
        write_on_push: bool,
        extra: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("worker.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nmaster_addresses = [\"{master}\"]\n\
                 data_dirs = [{:?}]\nmemory_budget = \"{}\"\nheartbeat_interval = \"200ms\"\n\
                 dir_reserve = \"64MiB\"\nwrite_on_push = {}\n{extra}",
                dir.join("data"),
                memory_budget,
                write_on_push
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
    /// The part of `cpu_seconds` spent until the file was written and fsynced.
    pub cpu_seconds_write: f64,
}

/// How the yardstick writes its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// `write(2)` of each received chunk through the page cache.
    Buffered,
    /// As `buffered`, but over the file the previous run of this variant
    /// left (its pages still cached), without truncating it: no page cache
    /// allocated afresh, as a worker that recycles its data files would.
    Recycled,
    /// Each received chunk kept in a 256 MiB ring and written when the ring
    /// comes round to it again, as a store with a memory tier writes data
    /// received long before (out of the CPU's caches).
    Delayed,
    /// Each received chunk copied into a 4 KiB-aligned buffer (the worker
    /// cannot receive into aligned places: its data follows frame headers)
    /// and written with `O_DIRECT`, bypassing the page cache.
    Direct,
}

/// How the yardstick sends its file back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// `read(2)` into a buffer, `write(2)` to the socket.
    Copy,
    /// `sendfile(2)` from the file to the socket: no copy through user memory.
    Sendfile,
    /// `O_DIRECT` reads into an aligned buffer, `write(2)` to the socket.
    Direct,
}

impl WriteMode {
    fn arg(self) -> &'static str {
        match self {
            WriteMode::Buffered => "buffered",
            WriteMode::Delayed => "delayed",
            WriteMode::Recycled => "recycled",
            WriteMode::Direct => "direct",
        }
    }
}

impl ReadMode {
    fn arg(self) -> &'static str {
        match self {
            ReadMode::Copy => "copy",
            ReadMode::Sendfile => "sendfile",
            ReadMode::Direct => "direct",
        }
    }
}

/// Runs `bytes` through a `terrace bench-pipe` child in `chunk`-sized
/// writes and reads them back, buffered writes and copied reads.
pub fn pipeline_yardstick(dir: &Path, bytes: u64, chunk: usize) -> anyhow::Result<Pipeline> {
    pipeline_with(dir, bytes, chunk, WriteMode::Buffered, ReadMode::Copy)
}

/// [`pipeline_yardstick`] with the file written and read as chosen.
pub fn pipeline_with(
    dir: &Path,
    bytes: u64,
    chunk: usize,
    write: WriteMode,
    read: ReadMode,
) -> anyhow::Result<Pipeline> {
    let dir_arg = dir.to_str().context("a UTF-8 temp path")?.to_string();
    let chunk_arg = chunk.to_string();
    let (mut child, address, mut lines) = spawn_listening(
        &[
            "bench-pipe",
            "--dir",
            &dir_arg,
            "--chunk",
            &chunk_arg,
            "--write",
            write.arg(),
            "--read",
            read.arg(),
        ],
        "the pipeline yardstick",
    )?;
    let start = clock::now();
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
    let seconds = clock::elapsed(start).as_secs_f64();
    anyhow::ensure!(
        received == bytes,
        "sent {bytes} bytes through the pipeline, got {received} back"
    );
    let mut next_figure = |name: &str| -> anyhow::Result<f64> {
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(v) = line.strip_prefix(name) {
                        return v
                            .trim()
                            .parse::<f64>()
                            .with_context(|| format!("parse the pipeline's {name}"));
                    }
                }
                _ => anyhow::bail!("the pipeline exited without its {name}"),
            }
        }
    };
    let cpu_seconds_write = next_figure("cpu_seconds_write ")?;
    let cpu_seconds = next_figure("cpu_seconds ")?;
    let status = child.wait().context("wait for the pipeline")?;
    anyhow::ensure!(status.success(), "the pipeline failed: {status}");
    Ok(Pipeline {
        bytes,
        seconds,
        cpu_seconds,
        cpu_seconds_write,
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
    #[arg(long, value_enum, default_value = "buffered")]
    write: WriteMode,
    #[arg(long, value_enum, default_value = "copy")]
    read: ReadMode,
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
    let path = args.dir.join(match args.write {
        WriteMode::Recycled => "bench-pipe.recycled.data",
        _ => "bench-pipe.data",
    });
    let (mut from, _) = listener.accept().context("accept the writer")?;
    let mut length = None;
    match args.write {
        WriteMode::Buffered => receive_buffered(&mut from, &path, args.chunk)?,
        WriteMode::Recycled => length = Some(receive_recycled(&mut from, &path, args.chunk)?),
        WriteMode::Direct => receive_direct(&mut from, &path, args.chunk)?,
        WriteMode::Delayed => receive_delayed(&mut from, &path, args.chunk)?,
    }
    println!("cpu_seconds_write {}", cpu_seconds(std::process::id())?);
    std::io::stdout().flush()?;
    let (mut to, _) = listener.accept().context("accept the reader")?;
    match args.read {
        ReadMode::Copy => {
            let file = std::fs::File::open(&path).context("open the file")?;
            let length = match length {
                Some(length) => length,
                None => file.metadata()?.len(),
            };
            let mut file = file.take(length);
            let mut buffer = vec![0u8; args.chunk];
            loop {
                let n = read_full(&mut file, &mut buffer)?;
                if n == 0 {
                    break;
                }
                to.write_all(&buffer[..n]).context("send")?;
            }
        }
        ReadMode::Sendfile => send_file(&to, &path, args.chunk)?,
        ReadMode::Direct => send_direct(&mut to, &path, args.chunk)?,
    }
    drop(to);
    if args.write != WriteMode::Recycled {
        std::fs::remove_file(&path).context("remove the file")?;
    }
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

fn receive_buffered(from: &mut TcpStream, path: &Path, chunk: usize) -> anyhow::Result<()> {
    let mut buffer = vec![0u8; chunk];
    let mut file =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    loop {
        let n = read_full(from, &mut buffer)?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).context("write the file")?;
    }
    file.sync_all().context("fsync the file")
}

/// Writes over the file at `path` from its start (creating it if missing,
/// never truncating it); returns the bytes written.
fn receive_recycled(from: &mut TcpStream, path: &Path, chunk: usize) -> anyhow::Result<u64> {
    let mut buffer = vec![0u8; chunk];
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut length = 0u64;
    loop {
        let n = read_full(from, &mut buffer)?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).context("write the file")?;
        length += n as u64;
    }
    file.sync_all().context("fsync the file")?;
    Ok(length)
}

/// The bytes a delayed write keeps in memory before writing them.
const DELAY_RING: usize = 256 << 20;

fn receive_delayed(from: &mut TcpStream, path: &Path, chunk: usize) -> anyhow::Result<()> {
    let slots = (DELAY_RING / chunk).max(2);
    let mut ring: Vec<(Vec<u8>, usize)> = (0..slots).map(|_| (vec![0u8; chunk], 0)).collect();
    let mut file =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut next = 0;
    loop {
        let (buffer, len) = &mut ring[next];
        if *len > 0 {
            file.write_all(&buffer[..*len]).context("write the file")?;
        }
        *len = read_full(from, buffer)?;
        if *len == 0 {
            break;
        }
        next = (next + 1) % slots;
    }
    // The rest of the ring, oldest first.
    for i in 1..=slots {
        let (buffer, len) = &mut ring[(next + i) % slots];
        if *len > 0 {
            file.write_all(&buffer[..*len]).context("write the file")?;
            *len = 0;
        }
    }
    file.sync_all().context("fsync the file")
}

/// The block size `O_DIRECT` transfers are aligned to (offsets, lengths and
/// buffer addresses).
const DIRECT_ALIGN: usize = 4096;

/// A zeroed buffer with `len` bytes starting at a [`DIRECT_ALIGN`]ed address.
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> anyhow::Result<Self> {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        anyhow::ensure!(start < DIRECT_ALIGN, "cannot align a buffer");
        Ok(Aligned {
            storage,
            start,
            len,
        })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

fn open_direct(path: &Path, write: bool) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    if write {
        options.write(true).create(true).truncate(true);
    } else {
        options.read(true);
    }
    options
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} with O_DIRECT", path.display()))
}

fn receive_direct(from: &mut TcpStream, path: &Path, chunk: usize) -> anyhow::Result<()> {
    let chunk = chunk.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut received = vec![0u8; chunk];
    let mut aligned = Aligned::new(chunk)?;
    let mut file = open_direct(path, true)?;
    let mut length = 0u64;
    loop {
        let n = read_full(from, &mut received)?;
        if n == 0 {
            break;
        }
        // The copy a worker would make: its received data is not aligned.
        let out = aligned.as_mut();
        out[..n].copy_from_slice(&received[..n]);
        let padded = n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        out[n..padded].fill(0);
        file.write_all(&out[..padded]).context("O_DIRECT write")?;
        length += n as u64;
        if n < chunk {
            break;
        }
    }
    file.set_len(length).context("trim the padding")?;
    file.sync_all().context("fsync the file")
}

fn send_direct(to: &mut TcpStream, path: &Path, chunk: usize) -> anyhow::Result<()> {
    let chunk = chunk.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut aligned = Aligned::new(chunk)?;
    let mut file = open_direct(path, false)?;
    loop {
        let n = read_full(&mut file, aligned.as_mut())?;
        if n == 0 {
            break;
        }
        to.write_all(&aligned.as_mut()[..n]).context("send")?;
    }
    Ok(())
}

fn send_file(to: &TcpStream, path: &Path, chunk: usize) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).context("open the file")?;
    let length = file.metadata()?.len();
    let mut offset: libc::off_t = 0;
    while (offset as u64) < length {
        let want = chunk.min((length - offset as u64) as usize);
        let sent =
            nix::sys::sendfile::sendfile(to, &file, Some(&mut offset), want).context("sendfile")?;
        anyhow::ensure!(sent > 0, "sendfile sent nothing at offset {offset}");
    }
    Ok(())
}
