//! Recovery deletes only what is proven garbage, on real `terrace worker`
//! processes: a worker under `ulimit -n 1024` holding more sealed partitions
//! than it may open files serves them all after a SIGKILL and a restart; a
//! restart that cannot read a file (EACCES, a Terrace name that is not a
//! regular file, too many open files) refuses to start and deletes nothing;
//! a data directory missing at start (an unmounted disk) stops the start,
//! and with the override the worker serves what it can and deletes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use terrace_tests::logs;

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_rpc::clock;
use terrace_tests::raw::{Raw, create, open_stream, pb_key, seal};
use terrace_tests::{EOS_PAYLOAD, key, payload, terrace_bin};
use terrace_tier_api::{BatchBuilder, Buffer, SegmentId, SubpartitionId};

const JOB: u8 = 42;

// --- A worker process whose stdout and stderr the test reads. ---

/// A `terrace worker` child, started through `wrapper` (`prlimit`,
/// `setpriv`), with its stderr lines kept; killed when dropped.
struct Worker {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    listening: std::sync::mpsc::Receiver<String>,
    address: Option<String>,
    /// Reads stderr into `stderr`; ends when the process's stderr closes.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(wrapper: &[String], config: &Path, extra: &[&str]) -> Worker {
        let bin = terrace_bin();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        command
            .args(["worker", "--config"])
            .arg(config)
            .args(extra)
            .env("TERRACE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn terrace worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { return };
                let mut lines = lines.lock().expect("stderr lock");
                if lines.len() < 20_000 {
                    lines.push(line);
                }
            }
        });
        Worker {
            child,
            stderr,
            listening,
            address: None,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// Waits for a stderr line containing `needle`; false past `within` or
    /// once the process has exited without it.
    fn wait_stderr(&mut self, needle: &str, within: Duration) -> bool {
        let has = |lines: &Mutex<Vec<String>>| {
            lines
                .lock()
                .expect("stderr lock")
                .iter()
                .any(|l| l.contains(needle))
        };
        let lines = Arc::clone(&self.stderr);
        let child = &mut self.child;
        terrace_tests::wait::poll_until(within, || {
            has(&lines) || child.try_wait().ok().flatten().is_some()
        });
        if !has(&self.stderr) && self.child.try_wait().ok().flatten().is_some() {
            // One last look once the reader has read all an exited process wrote.
            self.read_all_stderr();
        }
        has(&self.stderr)
    }

    /// Waits (at most 10 s) until the stderr reader has read everything: the
    /// process has exited and its stderr is closed.
    fn read_all_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            terrace_tests::wait_until(Duration::from_secs(10), "the stderr reader ends", || {
                reader.is_finished()
            });
            let _ = reader.join();
        }
    }

    /// Waits until the worker serves (recovery done): its address.
    fn serving(&mut self, within: Duration) -> String {
        let address = self
            .listening
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no listening line; stderr:\n{}", self.stderr()));
        assert!(
            self.wait_stderr("worker serving", within),
            "the worker did not start serving within {within:?}; stderr:\n{}",
            self.stderr()
        );
        self.address = Some(address.clone());
        address
    }

    /// Waits (at most `within`) for the process to exit by itself.
    fn exit(&mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        let mut status = None;
        terrace_tests::wait::poll_until(within, || {
            status = child.try_wait().expect("wait for the worker");
            status.is_some()
        });
        let Some(status) = status else {
            panic!(
                "the worker did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            )
        };
        self.read_all_stderr();
        status
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the test runs as root (`/proc/self` belongs to the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn ulimit(n: u64) -> Vec<String> {
    vec!["prlimit".into(), format!("--nofile={n}:{n}"), "--".into()]
}

/// As root, the worker runs as `nobody`, so that permissions apply to it.
fn unprivileged() -> Vec<String> {
    if is_root() {
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    }
}

fn give_to_nobody(path: &Path) {
    if !is_root() {
        return;
    }
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).expect("chown");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("list") {
            give_to_nobody(&entry.expect("entry").path());
        }
    }
}

// --- Partitions: many tiny sealed ones, made fast, read back exactly. ---

/// What partition `n` holds: one segment of subpartition 0, a data buffer
/// of `len` bytes and END_OF_SEGMENT, as the push body (which a reader gets
/// back byte for byte).
fn body(n: u32, len: usize) -> Bytes {
    let mut builder = BatchBuilder::default();
    let buffers = [
        Buffer::data(payload(n, 0, 0, len)),
        Buffer::end_of_segment(Bytes::from_static(EOS_PAYLOAD)),
    ];
    for b in &buffers {
        builder.push(SubpartitionId(0), SegmentId(0), b);
    }
    builder.finish().bytes
}

/// Creates, pushes and seals partitions `ns` of job `JOB` on `conns`
/// pipelined connections, `len(n)` payload bytes each.
fn create_sealed(address: &str, ns: std::ops::Range<u32>, conns: u32, len: fn(u32) -> usize) {
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let address = address.to_string();
            let ns = ns.clone();
            std::thread::spawn(move || {
                let mut raw = Raw::handshaken_to(&address);
                let mine: Vec<u32> = ns.filter(|n| n % conns == c).collect();
                for chunk in mine.chunks(256) {
                    let mut frames = Vec::new();
                    for &n in chunk {
                        let k = key(JOB, n);
                        let b = body(n, len(n));
                        let id = u64::from(n) * 4;
                        frames
                            .extend_from_slice(&terrace_proto::encode_frame(&create(id, &k, 1), 0));
                        let push = Message::PushData(pb::PushData {
                            request_id: id + 1,
                            key: pb_key(&k),
                            crc32c: crc32c::crc32c(&b),
                            num_buffers: 2,
                        });
                        frames.extend_from_slice(&terrace_proto::encode_frame(&push, b.len()));
                        frames.extend_from_slice(&b);
                        frames
                            .extend_from_slice(&terrace_proto::encode_frame(&seal(id + 2, &k), 0));
                    }
                    raw.send_bytes(&frames);
                    let mut acked = BTreeSet::new();
                    for _ in 0..chunk.len() * 3 {
                        match raw.read() {
                            (Message::Ack(pb::Ack { request_id }), _)
                            | (Message::PushAck(pb::PushAck { request_id, .. }), _) => {
                                acked.insert(request_id);
                            }
                            (other, _) => panic!("expected an ack, got {other:?}"),
                        }
                    }
                    assert_eq!(acked.len(), chunk.len() * 3, "every request acked once");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("creating thread");
    }
}

/// Reads segment 0 of partition `n` over `raw`; its bytes, or the error
/// code and message the worker answered.
fn read_back(raw: &mut Raw, n: u32, want_len: usize) -> Result<Vec<u8>, (i32, String)> {
    let k = key(JOB, n);
    let stream = u64::from(n) + 1;
    raw.send(&open_stream(stream, stream, &k, 0, 0, 8), &[]);
    match raw.read() {
        (Message::StreamOpened(o), _) => assert_eq!(o.stream_id, stream),
        (Message::ErrorReply(e), _) => {
            assert_eq!(e.request_id, stream);
            return Err((e.code, e.message));
        }
        (other, _) => panic!("expected StreamOpened, got {other:?}"),
    }
    raw.send(
        &Message::RequireSegment(pb::RequireSegment {
            stream_id: stream,
            subpartition: 0,
            segment_id: 0,
        }),
        &[],
    );
    let mut got = Vec::new();
    while got.len() < want_len {
        match raw.read() {
            (Message::ReadData(d), body) => {
                assert_eq!(d.stream_id, stream);
                got.extend_from_slice(&body);
            }
            (Message::StreamError(e), _) => return Err((e.code, e.message)),
            (other, _) => panic!("expected ReadData of partition {n}, got {other:?}"),
        }
    }
    raw.send(
        &Message::CloseStream(pb::CloseStream { stream_id: stream }),
        &[],
    );
    Ok(got)
}

/// Reads partitions `ns` back and checks every byte.
fn check_exact(address: &str, ns: impl IntoIterator<Item = u32>, len: fn(u32) -> usize) -> usize {
    let mut raw = Raw::handshaken_to(address);
    let mut checked = 0;
    for n in ns {
        let want = body(n, len(n));
        let got = read_back(&mut raw, n, want.len())
            .unwrap_or_else(|e| panic!("partition {n} is not served: {e:?}"));
        assert_eq!(got, want.as_ref(), "bytes of partition {n}");
        checked += 1;
    }
    checked
}

/// The worker's partition count, once it answers (within `within`).
fn partitions(address: &str, within: Duration) -> u32 {
    terrace_tests::wait_for(
        within,
        &format!("stats from {address}"),
        || match terrace_tests::call(address, terrace_tier_api::protocol::WorkerStats) {
            Ok(stats) => Some(stats.partitions),
            _ => None,
        },
    )
    .0
}

/// Every file under `dirs` with its length (markers included).
fn snapshot(dirs: &[&Path]) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path, if meta.is_dir() { 0 } else { meta.len() });
        }
    }
    out
}

/// Partition number of a data or index file name of job `JOB`.
fn partition_of(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split('.').next()?;
    let hex = stem.strip_prefix(&hex_of(b"partition-"))?;
    u32::from_str_radix(hex, 16).ok()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn job_dir(data: &Path) -> PathBuf {
    data.join(hex_of(&[JOB; 16]))
}

/// A directory for data: in memory (/dev/shm) when there is one, so that
/// fsyncs are cheap, else the temp directory.
fn data_root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

fn write_config(root: &Path, dirs: &[&Path], extra: &str) -> PathBuf {
    let list: Vec<String> = dirs
        .iter()
        .map(|d| format!("\"{}\"", d.display()))
        .collect();
    let path = root.join("worker.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dirs = [{}]\nmemory_budget = \"64MiB\"\nmax_frame_size = \"8MiB\"\npartition_wait_timeout = \"200ms\"\n{extra}",
            list.join(", ")
        ),
    )
    .expect("write config");
    path
}

// --- (a) more sealed partitions than open files ---

fn tiny(n: u32) -> usize {
    16 + (n % 64) as usize
}

/// Open descriptors of `pid` that point into `dir`.
fn open_files_under(pid: u32, dir: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
                .count()
        })
        .unwrap_or(0)
}

fn many_sealed_partitions_under_ulimit_1024(count: u32) {
    let root = data_root();
    let data = root.path().join("data");
    let config = write_config(root.path(), &[&data], "");
    let mut worker = Worker::spawn(&ulimit(1024), &config, &[]);
    let address = worker.serving(Duration::from_secs(30));
    let started = clock::now();
    create_sealed(&address, 0..count, 2, tiny);
    let created = clock::elapsed(started);
    assert_eq!(partitions(&address, Duration::from_secs(10)), count);
    let held_open = open_files_under(worker.child.id(), &data);
    let rss = rss_of(worker.child.id());
    assert!(
        worker.stderr().contains("max_open_files=512"),
        "half of the 1024 limit; stderr:\n{}",
        worker.stderr()
    );
    assert!(
        held_open <= 512,
        "{held_open} data files open, more than the cap of 512"
    );
    worker.kill();
    let files = snapshot(&[&data]);
    // A data file and an index per partition, the job directory, the marker.
    assert_eq!(files.len(), 2 * count as usize + 2);

    let started = clock::now();
    let mut worker = Worker::spawn(&ulimit(1024), &config, &[]);
    let address = worker.serving(Duration::from_secs(120));
    let recovered_in = clock::elapsed(started);
    assert_eq!(partitions(&address, Duration::from_secs(10)), count);
    // Every one of them, read exactly, on two connections: far more files
    // than may be open, so handles are opened, closed and opened again.
    let started = clock::now();
    let halves: Vec<_> = (0..2u32)
        .map(|half| {
            let address = address.clone();
            std::thread::spawn(move || {
                check_exact(&address, (0..count).filter(|n| n % 2 == half), tiny)
            })
        })
        .collect();
    let checked: usize = halves
        .into_iter()
        .map(|h| h.join().expect("reading thread"))
        .sum();
    let read_in = clock::elapsed(started);
    assert_eq!(checked, count as usize);
    assert!(open_files_under(worker.child.id(), &data) <= 512);
    assert!(
        !worker.stderr().contains("unhealthy") && !worker.stderr().contains("Too many open files"),
        "stderr:\n{}",
        worker.stderr()
    );
    eprintln!(
        "{count} sealed partitions under ulimit -n 1024: created in {created:?}, {held_open} data files open at most 512, worker rss {} MiB; restarted and recovered in {recovered_in:?}; {checked} read exactly in {read_in:?}",
        rss >> 20
    );
    assert_eq!(snapshot(&[&data]), files, "nothing was deleted or added");
    worker.kill();
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

/// The size: 100,000 sealed partitions (about a minute here).
#[test]
fn a_hundred_thousand_sealed_partitions_under_ulimit_1024_are_all_served_after_a_sigkill() {
    let _logs = logs::capture();
    many_sealed_partitions_under_ulimit_1024(100_000);
}

// --- (b) a file recovery cannot read stops the start ---

fn small(n: u32) -> usize {
    200 + (n % 300) as usize
}

#[test]
fn a_restart_that_cannot_read_a_file_refuses_to_start_and_deletes_nothing() {
    let _logs = logs::capture();
    const COUNT: u32 = 300;
    let root = tempfile::tempdir().expect("temp dir");
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    // A capacity per directory, so that the choice of directory follows
    // what each holds, not the free space of the filesystem they share
    // (which other tests' writes move by megabytes between two looks).
    let config = write_config(root.path(), &[&a, &b], "dir_capacity = \"1GiB\"\n");
    give_to_nobody(root.path());
    let mut worker = Worker::spawn(&unprivileged(), &config, &[]);
    let address = worker.serving(Duration::from_secs(30));
    create_sealed(&address, 0..COUNT, 2, small);
    worker.kill();
    let files = snapshot(&[&a, &b]);
    let on = |dir: &Path| files.keys().filter(|p| p.starts_with(dir)).count();
    assert!(on(&a) > 10 && on(&b) > 10, "files on both directories");
    assert_eq!(files.len(), 2 * COUNT as usize + 4);

    // EACCES: a job directory the worker may not list.
    use std::os::unix::fs::PermissionsExt;
    let locked = job_dir(&b);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let mut worker = Worker::spawn(&unprivileged(), &config, &[]);
    assert!(!worker.exit(Duration::from_secs(30)).success());
    let stderr = worker.stderr();
    assert!(
        stderr.contains(&format!(
            "recovery stopped, nothing was deleted: list {}: Permission denied",
            locked.display()
        )),
        "{stderr}"
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(snapshot(&[&a, &b]), files, "nothing was deleted");

    // A Terrace name that is not a regular file (what root cannot be denied).
    let index = files
        .keys()
        .find(|p| p.starts_with(&a) && p.extension().is_some_and(|e| e == "index"))
        .expect("an index on a")
        .clone();
    let aside = root.path().join("aside.index");
    std::fs::rename(&index, &aside).expect("move the index aside");
    std::fs::create_dir(&index).expect("a directory in its place");
    let mut worker = Worker::spawn(&unprivileged(), &config, &[]);
    assert!(!worker.exit(Duration::from_secs(30)).success());
    let stderr = worker.stderr();
    assert!(
        stderr.contains(&format!(
            "recovery stopped, nothing was deleted: {} has a name Terrace gives its files but is not a regular file",
            index.display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir(&index).expect("remove the directory");
    std::fs::rename(&aside, &index).expect("put the index back");
    assert_eq!(snapshot(&[&a, &b]), files, "nothing was deleted");

    // EMFILE: every open-file limit from too few to start at all up to
    // enough. Recovery opens one file at a time (it holds no data file
    // open), so a limit it cannot live with stops the start at the first
    // file it reads, a directory marker; never is anything deleted.
    let mut refused_emfile = Vec::new();
    let mut started = Vec::new();
    for limit in 8..=48u64 {
        let mut wrapper = ulimit(limit);
        wrapper.extend(unprivileged());
        let mut worker = Worker::spawn(&wrapper, &config, &[]);
        if worker.wait_stderr("worker serving", Duration::from_secs(30)) {
            started.push(limit);
            worker.kill();
        } else {
            assert!(!worker.exit(Duration::from_secs(30)).success());
            let stderr = worker.stderr();
            if stderr.contains(&format!(
                "{}: Too many open files",
                a.join(terrace_worker::MARKER).display()
            )) {
                refused_emfile.push(limit);
            }
        }
        assert_eq!(
            snapshot(&[&a, &b]),
            files,
            "nothing was deleted under an open-file limit of {limit}"
        );
    }
    eprintln!(
        "open-file limits refused naming the marker: {refused_emfile:?}; started from {:?}",
        started.first()
    );
    assert!(
        !refused_emfile.is_empty(),
        "no limit was refused with EMFILE"
    );
    assert!(!started.is_empty(), "no limit up to 48 was enough to start");
    assert!(refused_emfile.iter().all(|r| r < &started[0]));
    assert_eq!(started.len() as u64, 48 - started[0] + 1, "{started:?}");

    // Fixed: every partition is there, byte for byte.
    let mut worker = Worker::spawn(&unprivileged(), &config, &[]);
    let address = worker.serving(Duration::from_secs(30));
    assert_eq!(partitions(&address, Duration::from_secs(10)), COUNT);
    assert_eq!(check_exact(&address, 0..COUNT, small), COUNT as usize);
    worker.kill();
    assert_eq!(snapshot(&[&a, &b]), files);
}

// --- (c) an unmounted disk ---

fn medium(n: u32) -> usize {
    3000 + (n % 1000) as usize
}

#[test]
fn a_missing_data_directory_stops_the_start_and_with_the_override_nothing_is_deleted() {
    let _logs = logs::capture();
    const COUNT: u32 = 150;
    let root = tempfile::tempdir().expect("temp dir");
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let objects = root.path().join("objects");
    std::fs::create_dir(&objects).expect("object store directory");
    // Small directories: once both are full, data overflows to the store.
    let config = write_config(
        root.path(),
        &[&a, &b],
        &format!(
            "dir_capacity = \"160KiB\"\ndir_reserve = 0\n[object_store]\nurl = \"file://{}\"\npart_size = \"5MiB\"\ncold_after = \"1h\"\nlocal_high_watermark = 1.0\nlocal_low_watermark = 1.0\n",
            objects.display()
        ),
    );
    let mut worker = Worker::spawn(&[], &config, &[]);
    let address = worker.serving(Duration::from_secs(30));
    create_sealed(&address, 0..COUNT, 2, medium);
    worker.kill();
    let local = snapshot(&[&a, &b]);
    let stored = snapshot(&[&objects]);
    let object_files = stored.values().filter(|len| **len > 0).count();
    let on_b: BTreeSet<u32> = local
        .keys()
        .filter(|p| p.starts_with(&b))
        .filter_map(|p| partition_of(p))
        .collect();
    let elsewhere: Vec<u32> = (0..COUNT).filter(|n| !on_b.contains(n)).collect();
    eprintln!(
        "{} partitions with a file on b, {} without; {object_files} objects",
        on_b.len(),
        elsewhere.len()
    );
    assert!(!on_b.is_empty() && !elsewhere.is_empty() && object_files > 0);
    let everything = || {
        let mut all = snapshot(&[&a, &b]);
        all.extend(snapshot(&[&objects]));
        all
    };
    let before = everything();

    // b is unmounted: the start is refused, naming it.
    let away = root.path().join("b.unmounted");
    std::fs::rename(&b, &away).expect("unmount b");
    let mut worker = Worker::spawn(&[], &config, &[]);
    assert!(!worker.exit(Duration::from_secs(30)).success());
    let stderr = worker.stderr();
    assert!(
        stderr.contains(&format!("data directory {} is missing", b.display()))
            && stderr.contains("allow_missing_data_dirs"),
        "{stderr}"
    );
    assert!(!b.exists(), "the missing directory is not re-created");
    // An empty mount point is refused the same way.
    std::fs::create_dir(&b).expect("mount point");
    let mut worker = Worker::spawn(&[], &config, &[]);
    assert!(!worker.exit(Duration::from_secs(30)).success());
    assert!(
        worker.stderr().contains(&format!(
            "data directory {} has no marker (an empty mount point?)",
            b.display()
        )),
        "{}",
        worker.stderr()
    );
    assert_eq!(
        snapshot(&[&b]).len(),
        0,
        "nothing written to the mount point"
    );
    std::fs::remove_dir(&b).expect("remove the mount point");
    let mut now = everything();
    now.retain(|p, _| !p.starts_with(&away));
    let mut want = before.clone();
    want.retain(|p, _| !p.starts_with(&b));
    assert_eq!(now, want, "nothing on a or in the store was deleted");

    // With the override: what has no file on b is served, the rest is not,
    // and nothing is deleted (the orphan-object sweep is skipped).
    let mut worker = Worker::spawn(&[], &config, &["--allow-missing-data-dirs"]);
    let address = worker.serving(Duration::from_secs(30));
    assert!(
        worker.wait_stderr(
            "objects no partition here refers to are kept",
            Duration::from_secs(30)
        ),
        "{}",
        worker.stderr()
    );
    assert_eq!(
        partitions(&address, Duration::from_secs(10)),
        elsewhere.len() as u32
    );
    assert_eq!(
        check_exact(&address, elsewhere.iter().copied(), medium),
        elsewhere.len()
    );
    let mut raw = Raw::handshaken_to(&address);
    for &n in &on_b {
        let err = read_back(&mut raw, n, medium(n)).expect_err("not served");
        assert_eq!(err.0, pb::ErrorCode::PartitionNotFound as i32, "{err:?}");
    }
    worker.kill();
    let mut now = everything();
    now.retain(|p, _| !p.starts_with(&away));
    assert_eq!(now, want, "the override run deleted nothing");
    assert!(!b.exists());

    // b is back: everything is served, byte for byte.
    std::fs::rename(&away, &b).expect("mount b again");
    let mut worker = Worker::spawn(&[], &config, &[]);
    let address = worker.serving(Duration::from_secs(30));
    assert_eq!(partitions(&address, Duration::from_secs(10)), COUNT);
    assert_eq!(check_exact(&address, 0..COUNT, medium), COUNT as usize);
    worker.kill();
    assert_eq!(everything(), before);
}

// --- (d) out of descriptors at run time is not a disk fault ---

/// The worker's data directories, asked on `raw` (a new connection may not
/// be accepted while the worker is out of descriptors).
fn dirs_of(raw: &mut Raw, request_id: u64) -> Vec<pb::DirStats> {
    raw.send(&Message::WorkerStats(pb::WorkerStats { request_id }), &[]);
    match raw.read() {
        (Message::WorkerStatsReply(stats), _) => {
            assert_eq!(stats.request_id, request_id);
            stats
                .load
                .and_then(|l| l.tiers)
                .map(|t| t.dirs)
                .unwrap_or_default()
        }
        (other, _) => panic!("expected WorkerStatsReply, got {other:?}"),
    }
}

#[test]
fn running_out_of_file_descriptors_marks_no_directory_unhealthy_and_loses_nothing() {
    let _logs = logs::capture();
    use std::io::{Read, Write};
    const COUNT: u32 = 20;
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let config = write_config(root.path(), &[&data], "");
    let mut worker = Worker::spawn(&ulimit(64), &config, &[]);
    let address = worker.serving(Duration::from_secs(30));
    let mut raw = Raw::handshaken_to(&address);
    // Connections until the worker cannot accept another: its descriptors
    // are all taken.
    let hello = terrace_proto::encode_frame(
        &terrace_tests::raw::handshake(1, terrace_proto::PROTOCOL_VERSION),
        0,
    )
    .to_vec();
    let mut hogs = Vec::new();
    let mut waiting = None;
    for _ in 0..200 {
        let mut s = std::net::TcpStream::connect(&address).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.write_all(&hello).expect("handshake");
        let mut byte = [0u8; 1];
        if matches!(s.read(&mut byte), Ok(1)) {
            hogs.push(s);
        } else {
            waiting = Some(s);
            break;
        }
    }
    assert!(
        waiting.is_some(),
        "the worker accepted 200 connections under a limit of 64"
    );
    assert!(
        worker.wait_stderr("Too many open files", Duration::from_secs(10)),
        "{}",
        worker.stderr()
    );
    // Partitions pushed now are kept (in memory); their seals fail for want
    // of descriptors, not for the disk.
    let mut refused = 0;
    for n in 0..COUNT {
        let k = key(JOB, n);
        let b = body(n, small(n));
        let id = u64::from(n) * 4;
        raw.send(&create(id, &k, 1), &[]);
        raw.expect_ack(id);
        let push = Message::PushData(pb::PushData {
            request_id: id + 1,
            key: pb_key(&k),
            crc32c: crc32c::crc32c(&b),
            num_buffers: 2,
        });
        raw.send(&push, &b);
        raw.expect_ack(id + 1);
        raw.send(&seal(id + 2, &k), &[]);
        match raw.read() {
            (Message::Ack(a), _) => assert_eq!(a.request_id, id + 2),
            (Message::ErrorReply(e), _) => {
                assert_eq!(e.request_id, id + 2);
                assert_eq!(e.code, pb::ErrorCode::Unavailable as i32, "{}", e.message);
                // Unavailable has several causes; the text names this one (EMFILE).
                assert!(e.message.contains("Too many open files"), "{}", e.message);
                refused += 1;
            }
            (other, _) => panic!("expected the seal's answer, got {other:?}"),
        }
    }
    assert!(refused > 0, "no seal ran out of descriptors");
    let dirs = dirs_of(&mut raw, 2_000_000);
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].healthy, "{:?}", dirs[0]);
    assert_eq!(dirs[0].write_failures, 0, "{:?}", dirs[0]);
    assert_eq!(dirs[0].error, "");

    // Descriptors back: the refused seals succeed when retried, and every
    // partition reads back exactly.
    drop(hogs);
    drop(waiting);
    let until = clock::now() + Duration::from_secs(30);
    for n in 0..COUNT {
        let id = 1_000_000 + u64::from(n);
        loop {
            raw.send(&seal(id, &key(JOB, n)), &[]);
            match raw.read() {
                (Message::Ack(a), _) => {
                    assert_eq!(a.request_id, id);
                    break;
                }
                (Message::ErrorReply(e), _) => assert!(
                    clock::now() < until,
                    "seal of {n} still failing: {}",
                    e.message
                ),
                (other, _) => panic!("expected the seal's answer, got {other:?}"),
            }
            // A retry with a deadline (above) that also checks each refusal.
            terrace_tests::wait::poll_pause(Duration::from_millis(100));
        }
    }
    assert_eq!(check_exact(&address, 0..COUNT, small), COUNT as usize);
    let dirs = dirs_of(&mut raw, 2_000_001);
    assert!(
        dirs[0].healthy && dirs[0].write_failures == 0,
        "{:?}",
        dirs[0]
    );
    worker.kill();
}
