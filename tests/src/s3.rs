//! A real S3-compatible server on loopback for tests: `s3s-fs` 0.14.1 as a
//! child process, installed outside the repository by `scripts/s3-server.sh`
//! (which `scripts/test.sh` runs, exporting `TERRACE_S3S_FS`).
//!
//! How s3s-fs stores things (read from its source, checked by hand):
//! - a bucket is the directory `<root>/<bucket>` (CreateBucket is a `mkdir`,
//!   HeadBucket an existence check), so [`S3Server`] makes the bucket's
//!   directory before starting the server;
//! - an object is the plain file `<root>/<bucket>/<key>`, each `/` of the key
//!   a subdirectory. Writes go to a temporary at the top of the root and are
//!   renamed into place, so an object is seen whole or not at all;
//! - everything internal lives at the top of the root, never inside a bucket
//!   directory: per-object sidecars `.bucket-<b64>.object-<b64>.metadata.json`
//!   and `.internal.json` (ETag, checksums; DeleteObject leaves them behind),
//!   write temporaries `.tmp.<n>.internal.part` (removed at the next start if
//!   a kill left them), and multipart state `.upload-<id>.json`,
//!   `.upload_id-<id>.part-<n>` and `.bucket-…upload-<id>.metadata.json`.
//!   [`S3Server::objects`] therefore lists the bucket directory only, and
//!   [`S3Server::internal_files`] / [`S3Server::open_uploads`] report the rest;
//! - DeleteObject leaves empty parent directories (not objects); keys `a` and
//!   `a/b` cannot both exist (the second PUT is a 500); keys are normalized
//!   like paths (`a//b` is `a/b`).
//!
//! The server runs with fixed credentials ([`ACCESS_KEY`], [`SECRET_KEY`]):
//! every request must then be signed (SigV4 or V2; the region is not
//! checked), anonymous requests get 403 AccessDenied. Without credentials
//! s3s-fs would answer every *signed* request with 501 NotImplemented, so
//! they are always on. Only path-style URLs are served (no `--domain`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use terrace_rpc::clock;

/// The access key of every test server.
pub const ACCESS_KEY: &str = "terrace-test-access-key";
/// The secret key of every test server.
pub const SECRET_KEY: &str = "terrace-test-secret-key";
/// The region handed to clients (s3s-fs does not check it).
pub const REGION: &str = "us-east-1";
/// The bucket every test server has from the start.
pub const BUCKET: &str = "terrace-test";
/// The pinned s3s-fs version (see `scripts/s3-server.sh`).
pub const S3S_FS_VERSION: &str = "0.14.1";

/// How long a start or restart may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// s3s-fs logs this (at INFO) once it has bound its port.
const READY_LINE: &str = "server is running at http://";

/// The s3s-fs binary: `$TERRACE_S3S_FS`, else
/// `$HOME/.cache/terrace/s3s-fs-0.14.1/bin/s3s-fs`. Panics, telling to run
/// `scripts/s3-server.sh`, when neither exists.
pub fn s3s_fs_binary() -> PathBuf {
    let from_env = std::env::var_os("TERRACE_S3S_FS").map(PathBuf::from);
    let cached = std::env::var_os("HOME").map(|home| {
        PathBuf::from(home)
            .join(".cache/terrace")
            .join(format!("s3s-fs-{S3S_FS_VERSION}"))
            .join("bin/s3s-fs")
    });
    if let Some(bin) = [&from_env, &cached]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
    {
        return bin.clone();
    }
    panic!(
        "the s3s-fs test server is not installed (TERRACE_S3S_FS={}, cache {}): \
         run `scripts/s3-server.sh` (installs s3s-fs {S3S_FS_VERSION} into \
         ~/.cache/terrace, a few minutes once), or run the tests with `scripts/test.sh`",
        from_env
            .as_deref()
            .map_or("unset".into(), |p| p.display().to_string()),
        cached
            .as_deref()
            .map_or("unknown ($HOME unset)".into(), |p| p.display().to_string()),
    );
}

/// An s3s-fs server on `127.0.0.1:<free port>` with bucket [`BUCKET`], killed
/// when dropped. Its root is a temporary directory it owns, or a directory
/// given to [`S3Server::start_on`] (then left in place, so a later server can
/// serve the same data).
#[derive(Debug)]
pub struct S3Server {
    binary: PathBuf,
    root: PathBuf,
    /// Owns `root` when the server made it; removed (after the process is
    /// killed by `Drop`) when the fields drop.
    _owned_root: Option<tempfile::TempDir>,
    /// The server's stdout and stderr, kept out of the root.
    log_dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    stopped: bool,
}

/// Why one attempt to start the process failed.
enum StartError {
    PortTaken,
    Failed(String),
}

impl S3Server {
    /// Starts a server on a fresh temporary root.
    pub fn start() -> S3Server {
        let root_dir = tempfile::Builder::new()
            .prefix("terrace-s3-root-")
            .tempdir()
            .expect("create the s3s-fs root directory");
        let root = root_dir.path().to_path_buf();
        S3Server::launch(root, Some(root_dir))
    }

    /// Starts a server on `root` (created if missing, kept when the server is
    /// dropped), e.g. the root of a server that was dropped before.
    pub fn start_on(root: impl AsRef<Path>) -> S3Server {
        let root = root.as_ref();
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .expect("current directory")
                .join(root)
        };
        fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("create s3s-fs root {}: {e}", root.display()));
        S3Server::launch(root, None)
    }

    fn launch(root: PathBuf, owned_root: Option<tempfile::TempDir>) -> S3Server {
        let bucket_dir = root.join(BUCKET);
        fs::create_dir_all(&bucket_dir)
            .unwrap_or_else(|e| panic!("create bucket directory {}: {e}", bucket_dir.display()));
        let log_dir = tempfile::Builder::new()
            .prefix("terrace-s3-log-")
            .tempdir()
            .expect("create the s3s-fs log directory");
        let mut server = S3Server {
            binary: s3s_fs_binary(),
            root,
            _owned_root: owned_root,
            log_dir,
            port: 0,
            child: None,
            stopped: false,
        };
        let deadline = clock::now() + START_TIMEOUT;
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait(deadline) {
                Ok(()) => return server,
                Err(StartError::PortTaken) if attempt < PORT_ATTEMPTS => continue,
                Err(StartError::PortTaken) => panic!(
                    "s3s-fs: {PORT_ATTEMPTS} free ports were taken before it bound them; log:\n{}",
                    server.log()
                ),
                Err(StartError::Failed(why)) => {
                    panic!("s3s-fs did not start: {why}; log:\n{}", server.log())
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Spawns the process on `self.port` and waits until it has bound the
    /// port and accepts TCP connections.
    fn spawn_and_wait(&mut self, deadline: Instant) -> Result<(), StartError> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| StartError::Failed(format!("open {}: {e}", log_path.display())))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| StartError::Failed(format!("clone log file handle: {e}")))?;
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            // Errors (one per S3 error reply) plus the INFO line that says
            // the port is bound, which readiness waits for.
            .env("RUST_LOG", "error,s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| StartError::Failed(format!("spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        self.stopped = false;

        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let ready_line = format!("{READY_LINE}{address}");
        loop {
            let child = self.child.as_mut().expect("spawned above");
            if let Some(status) = child
                .try_wait()
                .map_err(|e| StartError::Failed(e.to_string()))?
            {
                self.child = None;
                let output = read_from(&log_path, log_start);
                return Err(if output.contains("Address already in use") {
                    StartError::PortTaken
                } else {
                    StartError::Failed(format!("s3s-fs exited with {status}"))
                });
            }
            // The log line proves *our* process bound the port (not another
            // one that grabbed it); the connect proves it accepts.
            if read_from(&log_path, log_start)
                .lines()
                .any(|line| line.trim_end().ends_with(&ready_line))
                && TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if clock::now() >= deadline {
                self.kill();
                return Err(StartError::Failed(format!(
                    "not accepting connections on {address} within {START_TIMEOUT:?}"
                )));
            }
            crate::wait::poll_pause(Duration::from_millis(10));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket made before the server started ([`BUCKET`]).
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The server's root directory (the bucket is `root/<bucket>`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", BUCKET, prefix.trim_start_matches('/'))
    }

    /// The environment a client (`object_store`'s `AmazonS3Builder::from_env`,
    /// or a child process) needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server with SIGSTOP: the kernel still completes TCP
    /// connects (the listen backlog) but no request is answered, like a hung
    /// server. [`S3Server::cont`] resumes it.
    pub fn stop(&mut self) {
        self.signal(libc::SIGSTOP, "SIGSTOP");
        self.stopped = true;
    }

    /// Resumes a server frozen by [`S3Server::stop`] (SIGCONT).
    pub fn cont(&mut self) {
        self.signal(libc::SIGCONT, "SIGCONT");
        self.stopped = false;
    }

    /// Kills the server with SIGKILL and reaps it; the root stays as it is
    /// (a write in flight may leave a `.tmp.*` file at its top level).
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.stopped {
                let _ = send_signal(child.id(), libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// Starts the server again on the same root and port, after
    /// [`S3Server::kill`] (a server still running is killed first), and waits
    /// until it accepts connections. Panics if the port stays taken by
    /// another process for the whole start timeout.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = clock::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait(deadline) {
                Ok(()) => return,
                Err(StartError::PortTaken) if clock::now() < deadline => {
                    crate::wait::poll_pause(Duration::from_millis(100));
                }
                Err(StartError::PortTaken) => panic!(
                    "s3s-fs restart: port {} stayed taken by another process; log:\n{}",
                    self.port,
                    self.log()
                ),
                Err(StartError::Failed(why)) => {
                    panic!("s3s-fs did not restart: {why}; log:\n{}", self.log())
                }
            }
        }
    }

    /// The keys of the objects stored in the bucket that start with `prefix`,
    /// sorted, read from disk (the files under `root/<bucket>`; directories,
    /// such as those a delete leaves behind, are not objects). Internal files
    /// never appear here: s3s-fs keeps them at the top of the root.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut dirs = vec![(self.root.join(BUCKET), String::new())];
        while let Some((dir, dir_key)) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed while walking (a delete, or the bucket itself).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => panic!("list {}: {e}", dir.display()),
            };
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("list {}: {e}", dir.display()),
                };
                // s3s-fs skips names that are not UTF-8 too.
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let key = format!("{dir_key}{name}");
                let file_type = match entry.file_type() {
                    Ok(file_type) => file_type,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("stat {}: {e}", entry.path().display()),
                };
                if file_type.is_dir() {
                    let sub = format!("{key}/");
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        dirs.push((entry.path(), sub));
                    }
                } else if file_type.is_file() && key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        keys
    }

    /// The names of s3s-fs's internal files (everything but the bucket
    /// directories at the top of the root): metadata sidecars, write
    /// temporaries `.tmp.<n>.internal.part`, multipart state. Sorted.
    pub fn internal_files(&self) -> Vec<String> {
        let entries = fs::read_dir(&self.root)
            .unwrap_or_else(|e| panic!("list {}: {e}", self.root.display()));
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The ids of multipart uploads with state on disk (created and neither
    /// completed nor aborted, or parts left behind by a failed completion),
    /// sorted. Server-wide: s3s-fs does not record the bucket in part names.
    pub fn open_uploads(&self) -> Vec<String> {
        let mut ids = BTreeSet::new();
        for name in self.internal_files() {
            let id = if let Some(rest) = name.strip_prefix(".upload_id-") {
                // .upload_id-<id>.part-<n>
                rest.split(".part-").next()
            } else if let Some(rest) = name.strip_prefix(".upload-") {
                // .upload-<id>.json
                rest.strip_suffix(".json")
            } else if name.starts_with(".bucket-") {
                // .bucket-<b64>.object-<b64>.upload-<id>.metadata.json
                name.split_once(".upload-")
                    .and_then(|(_, rest)| rest.strip_suffix(".metadata.json"))
            } else {
                None
            };
            if let Some(id) = id {
                ids.insert(id.to_string());
            }
        }
        ids.into_iter().collect()
    }

    /// What the server printed (all its runs), for failure messages.
    pub fn log(&self) -> String {
        read_from(&self.log_path(), 0)
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("s3s-fs.log")
    }

    fn signal(&self, signal: libc::c_int, name: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{name}: the s3s-fs server is not running"));
        send_signal(pid, signal).unwrap_or_else(|e| panic!("{name} to s3s-fs (pid {pid}): {e}"));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // SIGCONT first if stopped, then SIGKILL and reap; the owned root is
        // removed after this, when the fields drop.
        self.kill();
    }
}

/// Sends `signal` to the process `pid` (a child of the caller, not yet reaped).
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // `pid` is our own child, not yet reaped, so the id cannot be reused.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A loopback port free right now (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a free loopback port")
}

/// The text of `path` from byte `offset` on ("" if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}
