//! The worker's local data directories: capacity, health and placement.
//!
//! Each directory has a capacity: the configured `dir_capacity`, or else the
//! filesystem's free space minus `dir_reserve` (and never more than that even
//! with a configured capacity). A new data file goes to the healthy directory
//! with the most room. A directory whose write fails is marked unhealthy and
//! skipped until the worker restarts.
//!
//! Every directory carries a marker file naming it a Terrace data directory
//! and holding the worker's store id, which keeps this worker's objects apart
//! from other workers' in a shared bucket and survives restarts. The marker
//! also lists all of the worker's data directories, so a directory that was
//! in use but is missing or unmarked at start (an unmounted disk) is noticed:
//! the worker refuses to start, or, when allowed, runs without it and deletes
//! nothing it cannot prove is garbage ([`LocalDirs::incomplete`]).

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StoreError;
use terrace_rpc::clock;
use terrace_tier_api::{ErrorKind, TierError, TierResult};

/// Name of the marker file in every data directory.
pub const MARKER: &str = ".terrace-data-dir";

#[derive(Debug)]
pub struct LocalDir {
    pub path: PathBuf,
    /// Configured capacity, if any.
    capacity: Option<u64>,
    reserve: u64,
    /// Bytes of this worker's data files in the directory.
    used: AtomicU64,
    /// Free bytes of the filesystem at the last look, less what was written since.
    fs_free: AtomicU64,
    healthy: AtomicBool,
    /// Missing (or unmarked) at start though another marker lists it: not used.
    missing: bool,
    error: Mutex<Option<String>>,
    write_failures: AtomicU64,
}

/// What `terrace status` and heartbeats show of a directory.
#[derive(Debug, Clone, PartialEq)]
pub struct DirStatus {
    pub path: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub healthy: bool,
    pub error: Option<String>,
    pub write_failures: u64,
}

impl LocalDir {
    /// Bytes a new write may take here (0 when unhealthy).
    pub fn room(&self) -> u64 {
        if !self.healthy.load(Ordering::Relaxed) {
            return 0;
        }
        self.capacity()
            .saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// Used bytes plus what the filesystem and the configured limit allow.
    pub fn capacity(&self) -> u64 {
        let used = self.used.load(Ordering::Relaxed);
        let by_fs = used
            + self
                .fs_free
                .load(Ordering::Relaxed)
                .saturating_sub(self.reserve);
        match self.capacity {
            Some(limit) => limit.min(by_fs),
            None => by_fs,
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Missing at start (see [`LocalDirs::incomplete`]): nothing is read or
    /// written there until a restart finds it again.
    pub fn is_missing(&self) -> bool {
        self.missing
    }

    /// `bytes` of data files were written here.
    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        let _ = self
            .fs_free
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some(f.saturating_sub(bytes))
            });
    }

    /// `bytes` of data files already on disk were found here (recovery).
    pub fn add_existing(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` of data files were deleted here.
    pub fn remove(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
        self.fs_free.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A write here failed: skip this directory from now on. Running out of
    /// file descriptors is not the directory's fault and is only logged.
    pub fn mark_unhealthy(&self, error: &std::io::Error) {
        if super::handles::is_out_of_descriptors(error) {
            tracing::warn!(dir = %self.path.display(), %error, "out of file descriptors; the directory stays healthy");
            return;
        }
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        let was = self.healthy.swap(false, Ordering::Relaxed);
        *self.error.lock().expect("dir error lock poisoned") = Some(error.to_string());
        if was {
            tracing::error!(dir = %self.path.display(), %error, "data directory failed a write; marked unhealthy, no new data goes there");
        }
    }

    /// Reads the filesystem's free space again. Blocking.
    pub fn refresh(&self) {
        if self.missing {
            return;
        }
        if let Ok(free) = free_space(&self.path) {
            self.fs_free.store(free, Ordering::Relaxed);
        }
    }

    pub fn status(&self) -> DirStatus {
        DirStatus {
            path: self.path.display().to_string(),
            used_bytes: self.used(),
            capacity_bytes: self.capacity(),
            healthy: self.is_healthy(),
            error: self.error.lock().expect("dir error lock poisoned").clone(),
            write_failures: self.write_failures.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
pub struct LocalDirs {
    dirs: Vec<LocalDir>,
    store_id: String,
    /// Serializes [`LocalDirs::claim`]s.
    claims: std::sync::Mutex<()>,
}

impl LocalDirs {
    /// Creates (if missing) and marks each directory. Blocking.
    ///
    /// A directory listed in another directory's marker (it was in use) but
    /// missing, or present without a marker (an unmounted disk's mount
    /// point), stops the start with an error naming it, unless
    /// `allow_missing`: then it is left alone, reported unhealthy, and
    /// [`LocalDirs::incomplete`] is true.
    pub fn open(
        paths: &[PathBuf],
        capacity: Option<u64>,
        reserve: u64,
        allow_missing: bool,
    ) -> TierResult<LocalDirs> {
        if paths.is_empty() {
            return Err(TierError::bad_input(
                "a worker needs at least one data directory",
            ));
        }
        let paths: Vec<PathBuf> = paths
            .iter()
            .map(|p| {
                std::path::absolute(p).map_err(|e| {
                    TierError::with_source(
                        ErrorKind::BadInput,
                        format!("data directory {}", p.display()),
                        e,
                    )
                })
            })
            .collect::<TierResult<_>>()?;
        // What each directory's marker says, if it has one.
        let mut markers = Vec::with_capacity(paths.len());
        for path in &paths {
            let marker = match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => read_marker(path)?,
                Ok(_) => {
                    return Err(TierError::bad_input(format!(
                        "data directory {} is not a directory",
                        path.display()
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(TierError::with_source(
                        ErrorKind::BadInput,
                        format!("inspect data directory {}", path.display()),
                        e,
                    ));
                }
            };
            markers.push(marker);
        }
        // A directory another marker lists, without a marker of its own, was
        // in use and is gone: its files are elsewhere (an unmounted disk).
        let mut lost = Vec::new();
        for (path, marker) in paths.iter().zip(&markers) {
            if marker.is_some() {
                continue;
            }
            let listed_by = paths.iter().zip(&markers).find_map(|(other, m)| {
                m.as_ref()
                    .filter(|m| m.dirs.contains(path))
                    .map(|_| other.clone())
            });
            if let Some(other) = listed_by {
                let state = if path.exists() {
                    "has no marker (an empty mount point?)"
                } else {
                    "is missing"
                };
                lost.push((path.clone(), format!("{} {state}, but the marker in {} lists it as a data directory of this worker", path.display(), other.display())));
            }
        }
        if !lost.is_empty() && !allow_missing {
            let what: Vec<&str> = lost.iter().map(|(_, why)| why.as_str()).collect();
            return Err(TierError::bad_input(format!(
                "refusing to start, nothing was deleted: data directory {}. Mount it again (or put its files back) and restart; or start with allow_missing_data_dirs = true (--allow-missing-data-dirs) to serve what the other directories hold, deleting nothing",
                what.join("; data directory ")
            )));
        }
        for (_, why) in &lost {
            tracing::error!(
                "data directory {why}; running without it (allow_missing_data_dirs): partitions with a file there are not served, and nothing whose owner is unknown is deleted"
            );
        }
        let is_lost = |p: &PathBuf| lost.iter().any(|(l, _)| l == p);
        let store_id = markers
            .iter()
            .flatten()
            .map(|m| m.store_id.clone())
            .next()
            .unwrap_or_else(new_store_id);
        let mut dirs = Vec::new();
        for (path, marker) in paths.iter().zip(&markers) {
            let missing = is_lost(path);
            if !missing {
                std::fs::create_dir_all(path).map_err(|e| {
                    TierError::from_cause(
                        ErrorKind::BadInput,
                        StoreError::Disk {
                            op: "create data directory",
                            path: path.clone(),
                            source: e,
                        },
                    )
                })?;
                let up_to_date = marker
                    .as_ref()
                    .is_some_and(|m| m.store_id == store_id && m.dirs == paths);
                if !up_to_date {
                    // A marker of another store id stays theirs: only ours is rewritten.
                    let id = marker.as_ref().map_or(store_id.as_str(), |m| &m.store_id);
                    write_marker(path, id, &paths)?;
                }
            }
            let dir = LocalDir {
                path: path.clone(),
                capacity,
                reserve,
                used: AtomicU64::new(0),
                fs_free: AtomicU64::new(0),
                healthy: AtomicBool::new(!missing),
                missing,
                error: Mutex::new(missing.then(|| "missing at start".to_string())),
                write_failures: AtomicU64::new(0),
            };
            dir.refresh();
            dirs.push(dir);
        }
        Ok(LocalDirs {
            dirs,
            store_id,
            claims: std::sync::Mutex::new(()),
        })
    }

    /// Whether a data directory in use was missing at start: then the files
    /// and objects no index found here claims may belong to partitions whose
    /// index is on the missing one, and nothing of the kind is deleted.
    pub fn incomplete(&self) -> bool {
        self.dirs.iter().any(|d| d.missing)
    }

    /// This worker's id in the object store, kept in the directory markers.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    pub fn get(&self, index: usize) -> &LocalDir {
        &self.dirs[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &LocalDir)> {
        self.dirs.iter().enumerate()
    }

    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// Where `bytes` more of a partition go: its current directory `current`
    /// while that is healthy and has room, else the healthy directory with
    /// the most room that can take them. `None`: no directory can.
    pub fn choose(&self, bytes: u64, current: Option<usize>) -> Option<usize> {
        if let Some(i) = current {
            if self.dirs.get(i).is_some_and(|d| d.room() >= bytes) {
                return Some(i);
            }
        }
        self.dirs
            .iter()
            .enumerate()
            .map(|(i, d)| (i, d.room()))
            .filter(|(_, room)| *room >= bytes)
            .max_by_key(|(_, room)| *room)
            .map(|(i, _)| i)
    }

    /// [`LocalDirs::choose`], and the room taken at once (counted as used),
    /// so that writers side by side cannot all fit into the same last room.
    /// A writer whose write then fails gives the bytes back with `remove`.
    pub fn claim(&self, bytes: u64, current: Option<usize>) -> Option<usize> {
        let _claiming = self.claims.lock().expect("dir claims lock poisoned");
        let i = self.choose(bytes, current)?;
        self.dirs[i].add(bytes);
        Some(i)
    }

    /// A healthy directory for a small file (an index), preferring `preferred`.
    pub fn any_healthy(&self, preferred: Option<usize>) -> Vec<usize> {
        let mut out: Vec<usize> = preferred
            .into_iter()
            .filter(|&i| self.dirs.get(i).is_some_and(LocalDir::is_healthy))
            .collect();
        out.extend(
            self.dirs
                .iter()
                .enumerate()
                .filter(|(i, d)| d.is_healthy() && Some(*i) != preferred)
                .map(|(i, _)| i),
        );
        out
    }

    /// Used and total capacity over all healthy directories.
    pub fn usage(&self) -> (u64, u64) {
        self.dirs
            .iter()
            .filter(|d| d.is_healthy())
            .fold((0, 0), |(u, c), d| (u + d.used(), c + d.capacity()))
    }

    /// Reads every directory's free space again. Blocking.
    pub fn refresh(&self) {
        for dir in &self.dirs {
            dir.refresh();
        }
    }

    pub fn status(&self) -> Vec<DirStatus> {
        self.dirs.iter().map(LocalDir::status).collect()
    }
}

/// What a marker file says.
#[derive(Debug, Clone, PartialEq)]
struct Marker {
    store_id: String,
    /// Every data directory of the worker when the marker was written
    /// (absolute paths; none in markers of older versions).
    dirs: Vec<PathBuf>,
}

fn read_marker(dir: &Path) -> TierResult<Option<Marker>> {
    let path = dir.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("store_id = "))
                .map(str::trim)
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
                .ok_or_else(|| {
                    // BadInput, as before: the directory is misconfigured,
                    // no partition's data is lost.
                    TierError::from_cause(
                        ErrorKind::BadInput,
                        StoreError::Corrupt {
                            what: format!("Terrace data directory marker {}", path.display()),
                            detail: "no valid store_id line".to_string(),
                        },
                    )
                })?;
            let dirs = text
                .lines()
                .filter_map(|l| l.strip_prefix("data_dir = "))
                .map(PathBuf::from)
                .collect();
            Ok(Some(Marker {
                store_id: id.to_string(),
                dirs,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TierError::from_cause(
            ErrorKind::BadInput,
            StoreError::Disk {
                op: "read",
                path,
                source: e,
            },
        )),
    }
}

/// Writes the marker (atomically: a temporary file renamed over it).
fn write_marker(dir: &Path, store_id: &str, dirs: &[PathBuf]) -> TierResult<()> {
    let path = dir.join(MARKER);
    let mut text = format!(
        "# Terrace data directory. Terrace deletes only files it wrote here.\nstore_id = {store_id}\n# This worker's data directories; one of them missing at start stops it.\n"
    );
    for d in dirs {
        // A path with a line break cannot be listed; it is then not checked.
        if let Some(d) = d.to_str().filter(|d| !d.contains(['\n', '\r'])) {
            text.push_str(&format!("data_dir = {d}\n"));
        }
    }
    let tmp = dir.join(format!("{MARKER}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            TierError::from_cause(
                ErrorKind::BadInput,
                StoreError::Disk {
                    op: "write",
                    path,
                    source: e,
                },
            )
        })
}

/// 64 random bits from the OS-seeded hasher keys, as 16 hex digits.
fn new_store_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        clock::wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", hasher.finish())
}

/// Free bytes available to unprivileged users on the filesystem holding `path`.
fn free_space(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_go_to_the_healthy_directory_with_the_most_room() {
        let root = tempfile::tempdir().expect("temp dir");
        let paths = vec![root.path().join("a"), root.path().join("b")];
        let dirs = LocalDirs::open(&paths, Some(1000), 0, false).expect("open");
        dirs.get(0).add(100);
        assert_eq!(dirs.choose(10, None), Some(1), "b has more room");
        assert_eq!(dirs.choose(10, Some(0)), Some(0), "a partition stays put");
        assert_eq!(dirs.choose(950, Some(0)), Some(1), "a has no room for 950");
        assert_eq!(dirs.choose(1001, None), None);
        // A claim takes the room it was given: the next one sees less.
        let before = (dirs.get(0).used(), dirs.get(1).used());
        assert_eq!(dirs.claim(600, None), Some(1));
        assert_eq!(dirs.get(1).used(), before.1 + 600);
        assert_eq!(dirs.claim(500, Some(1)), Some(0), "b has 400 left");
        assert_eq!(dirs.claim(500, None), None, "neither has 500 left");
        dirs.get(1).remove(600);
        dirs.get(0).remove(500);
        assert_eq!((dirs.get(0).used(), dirs.get(1).used()), before);
        // Out of descriptors is not the disk's fault.
        for errno in [libc::EMFILE, libc::ENFILE] {
            dirs.get(1)
                .mark_unhealthy(&std::io::Error::from_raw_os_error(errno));
        }
        assert!(dirs.get(1).is_healthy());
        assert_eq!(dirs.status()[1].write_failures, 0);
        dirs.get(1)
            .mark_unhealthy(&std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(dirs.choose(10, None), Some(0));
        assert_eq!(dirs.get(1).room(), 0);
        let status = dirs.status();
        assert!(!status[1].healthy);
        assert_eq!(status[1].write_failures, 1);
        assert!(
            status[1]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("error"))
        );
        assert_eq!(dirs.usage(), (100, 1000));
    }

    #[test]
    fn markers_keep_the_store_id_across_opens() {
        let root = tempfile::tempdir().expect("temp dir");
        let a = root.path().join("a");
        let first = LocalDirs::open(std::slice::from_ref(&a), None, 0, false).expect("open");
        let id = first.store_id().to_string();
        assert_eq!(id.len(), 16);
        let b = root.path().join("b");
        let again = LocalDirs::open(&[a.clone(), b.clone()], None, 0, false).expect("reopen");
        assert_eq!(again.store_id(), id);
        assert_eq!(
            read_marker(&b).expect("read"),
            Some(Marker {
                store_id: id,
                dirs: vec![a.clone(), b.clone()]
            })
        );
        std::fs::write(a.join(MARKER), "garbage").expect("write");
        assert!(
            LocalDirs::open(&[a], None, 0, false).is_err(),
            "a damaged marker is refused"
        );
    }

    #[test]
    fn the_default_capacity_is_free_space_minus_the_reserve() {
        let root = tempfile::tempdir().expect("temp dir");
        let dirs = LocalDirs::open(&[root.path().to_path_buf()], None, 0, false).expect("open");
        let free = free_space(root.path()).expect("free space");
        let cap = dirs.get(0).capacity();
        assert!(cap > 0 && cap.abs_diff(free) < 64 << 20, "{cap} vs {free}");
        let reserved =
            LocalDirs::open(&[root.path().to_path_buf()], None, free, false).expect("open");
        assert_eq!(reserved.get(0).capacity(), 0, "the reserve takes it all");
    }

    #[test]
    fn a_listed_directory_missing_or_unmarked_at_start_stops_the_start() {
        let root = tempfile::tempdir().expect("temp dir");
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let both = [a.clone(), b.clone()];
        let id = LocalDirs::open(&both, None, 0, false)
            .expect("first start")
            .store_id()
            .to_string();
        std::fs::write(b.join("keep"), "data").expect("write");
        std::fs::rename(&b, root.path().join("b.away")).expect("unmount b");
        let err = LocalDirs::open(&both, None, 0, false).expect_err("b is missing");
        assert_eq!(err.kind(), ErrorKind::BadInput, "{err}");
        // The message is the point: it names the directory and the setting.
        let text = err.to_string();
        assert!(
            text.contains(&format!("{} is missing", b.display())),
            "{text}"
        );
        assert!(text.contains("allow_missing_data_dirs"), "{text}");
        assert!(!b.exists(), "a missing directory is not re-created");
        // An empty mount point is the same.
        std::fs::create_dir(&b).expect("mount point");
        let err = LocalDirs::open(&both, None, 0, false).expect_err("b has no marker");
        assert_eq!(err.kind(), ErrorKind::BadInput, "{err}");
        assert!(err.to_string().contains("has no marker"), "{err}");
        assert!(!b.join(MARKER).exists(), "no marker is written there");
        // Allowed: b is left alone and reported, the store is incomplete.
        let dirs = LocalDirs::open(&both, None, 0, true).expect("allowed");
        assert!(dirs.incomplete());
        assert!(dirs.get(1).is_missing() && !dirs.get(1).is_healthy());
        assert_eq!(dirs.get(1).room(), 0);
        assert_eq!(dirs.choose(1, None), Some(0));
        assert!(!b.join(MARKER).exists(), "no marker is written there");
        assert_eq!(dirs.store_id(), id);
        // Back in place: a normal start.
        std::fs::remove_dir(&b).expect("unmount");
        std::fs::rename(root.path().join("b.away"), &b).expect("mount b again");
        let dirs = LocalDirs::open(&both, None, 0, false).expect("b is back");
        assert!(!dirs.incomplete());
        assert_eq!(
            std::fs::read_to_string(b.join("keep")).expect("read"),
            "data"
        );
        // A new directory that no marker lists is simply added.
        let c = root.path().join("c");
        let three = [a.clone(), b.clone(), c.clone()];
        let dirs = LocalDirs::open(&three, None, 0, false).expect("c is new");
        assert!(!dirs.incomplete());
        assert_eq!(
            read_marker(&a).expect("read").map(|m| m.dirs),
            Some(three.to_vec())
        );
    }
}
