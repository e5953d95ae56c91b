//! Open data-file handles, bounded. A worker may hold far more data files
//! (100,000 sealed partitions) than it may have descriptors open, so a data
//! file is a path ([`DataFile`]) opened on demand, and the open handles live in
//! a least-recently-used cache of at most `max_open_data_files`
//! ([`FileCache`]). Reads and writes take a handle from the cache (opening
//! the file if it was closed) on the blocking pool, and hold it only while
//! they use it.
//!
//! A file deleted while readers still hold its [`DataFile`] (a migration or
//! release that resolved their extents before the swap) keeps an open handle
//! for them: [`DataFile::retire`] opens it before the unlink, and it closes
//! when the last holder is done, as a plain open file would.
//!
//! Closing and reopening a file that has unsynced data loses nothing: the
//! data is in the page cache, and an fsync through any descriptor makes it
//! durable (Linux reports a write-back error not yet seen to the next fsync
//! through any descriptor).
//!
//! Running out of descriptors (EMFILE, ENFILE) is not a disk fault: a handle
//! that cannot be opened for it closes half the cache and tries once more;
//! such errors never mark a directory unhealthy ([`is_out_of_descriptors`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Whether `error` says the process or system ran out of file descriptors.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The soft and hard open-file limits of this process (`RLIMIT_NOFILE`).
pub fn open_file_limits() -> std::io::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(std::io::Error::from)
}

/// The default cap on open data files: half the soft open-file limit (the
/// rest is for connections, indexes and the runtime), at least 16.
pub fn default_max_open_files() -> u64 {
    let soft = open_file_limits().map_or(1024, |(soft, _)| soft);
    (soft / 2).max(16)
}

/// The open handles of data files, least recently used closed first.
#[derive(Debug)]
pub struct FileCache {
    cap: usize,
    state: Mutex<CacheState>,
    next_id: AtomicU64,
    opens: AtomicU64,
}

#[derive(Debug, Default)]
struct CacheState {
    tick: u64,
    /// File id → its handle and when it was last used.
    open: HashMap<u64, (Arc<File>, u64)>,
    /// Last use → file id, oldest first.
    order: BTreeMap<u64, u64>,
}

impl CacheState {
    fn touch(&mut self, id: u64) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, used) = self.open.get_mut(&id)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, id);
        Some(Arc::clone(file))
    }

    fn remove(&mut self, id: u64) {
        if let Some((_, used)) = self.open.remove(&id) {
            self.order.remove(&used);
        }
    }

    /// Closes the least recently used handles until `keep` are open.
    fn shrink_to(&mut self, keep: usize) {
        while self.open.len() > keep {
            let Some((_, id)) = self.order.pop_first() else {
                return;
            };
            self.open.remove(&id);
        }
    }
}

impl FileCache {
    /// A cache holding at most `cap` handles (at least 1).
    pub fn new(cap: u64) -> Arc<FileCache> {
        Arc::new(FileCache {
            cap: usize::try_from(cap).unwrap_or(usize::MAX).max(1),
            state: Mutex::new(CacheState::default()),
            next_id: AtomicU64::new(0),
            opens: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().expect("file cache lock poisoned")
    }

    /// Most handles held open.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Handles open now.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Files opened (or reopened) since start.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    fn insert(&self, id: u64, file: Arc<File>) {
        let mut state = self.lock();
        state.remove(id);
        let cap = self.cap;
        state.shrink_to(cap - 1);
        state.tick += 1;
        let tick = state.tick;
        state.open.insert(id, (file, tick));
        state.order.insert(tick, id);
    }
}

/// A local data file: its path, and a handle in the [`FileCache`] while open.
#[derive(Debug)]
pub struct DataFile {
    id: u64,
    path: PathBuf,
    /// Open for appending too (a file this worker writes), not read-only.
    append: bool,
    cache: Arc<FileCache>,
    /// The handle of a file deleted while others still held this.
    pinned: Mutex<Option<Arc<File>>>,
}

impl DataFile {
    /// A file at `path` that this worker may append to, already open as `file`.
    pub fn created(cache: &Arc<FileCache>, path: PathBuf, file: File) -> Arc<DataFile> {
        let data = DataFile::new(cache, path, true);
        cache.insert(data.id, Arc::new(file));
        data
    }

    /// A file at `path` that is only read (a recovered partition's), not opened yet.
    pub fn existing(cache: &Arc<FileCache>, path: PathBuf) -> Arc<DataFile> {
        DataFile::new(cache, path, false)
    }

    fn new(cache: &Arc<FileCache>, path: PathBuf, append: bool) -> Arc<DataFile> {
        Arc::new(DataFile {
            id: cache.next_id.fetch_add(1, Ordering::Relaxed),
            path,
            append,
            cache: Arc::clone(cache),
            pinned: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An open handle to the file: the cached one, or the file opened now.
    /// Blocking. Hold it only while using it.
    pub fn handle(&self) -> std::io::Result<Arc<File>> {
        if let Some(file) = self.pinned.lock().expect("pin lock poisoned").clone() {
            return Ok(file);
        }
        if let Some(file) = self.cache.lock().touch(self.id) {
            return Ok(file);
        }
        let file = match self.open() {
            Err(e) if is_out_of_descriptors(&e) => {
                // Other handles of ours may be what holds the descriptors.
                let half = self.cache.cap / 2;
                self.cache.lock().shrink_to(half);
                self.open()?
            }
            other => other?,
        };
        let file = Arc::new(file);
        self.cache.insert(self.id, Arc::clone(&file));
        Ok(file)
    }

    fn open(&self) -> std::io::Result<File> {
        self.cache.opens.fetch_add(1, Ordering::Relaxed);
        std::fs::OpenOptions::new()
            .read(true)
            .append(self.append)
            .open(&self.path)
    }

    /// Call before deleting the file: if anyone else holds this `DataFile`
    /// (a reader that resolved its extents earlier), keeps a handle open for
    /// them, outside the cache, until the last holder drops it. Blocking.
    pub fn retire(self: &Arc<Self>) -> std::io::Result<()> {
        if Arc::strong_count(self) > 1 {
            let file = self.handle()?;
            *self.pinned.lock().expect("pin lock poisoned") = Some(file);
        }
        self.cache.lock().remove(self.id);
        Ok(())
    }
}

impl Drop for DataFile {
    fn drop(&mut self) {
        self.cache.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn files(dir: &Path, cache: &Arc<FileCache>, n: usize) -> Vec<Arc<DataFile>> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.data"));
                std::fs::write(&path, format!("file {i:04}")).expect("write");
                DataFile::existing(cache, path)
            })
            .collect()
    }

    fn read(file: &DataFile) -> String {
        let mut buf = [0u8; 9];
        file.handle()
            .expect("handle")
            .read_exact_at(&mut buf, 0)
            .expect("read");
        String::from_utf8(buf.to_vec()).expect("utf-8")
    }

    #[test]
    fn at_most_cap_handles_stay_open_and_the_least_recently_used_goes_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = FileCache::new(4);
        let all = files(dir.path(), &cache, 10);
        for (i, f) in all.iter().enumerate() {
            assert_eq!(read(f), format!("file {i:04}"));
            assert!(cache.open_count() <= 4);
        }
        assert_eq!(cache.open_count(), 4);
        assert_eq!(cache.opens(), 10);
        // 6..10 are open; using 6 makes 7 the oldest, so opening 0 closes 7.
        read(&all[6]);
        assert_eq!(cache.opens(), 10, "a cached handle is not reopened");
        read(&all[0]);
        assert_eq!(cache.opens(), 11);
        read(&all[6]);
        read(&all[8]);
        read(&all[9]);
        assert_eq!(cache.opens(), 11, "6, 8, 9 stayed open");
        read(&all[7]);
        assert_eq!(cache.opens(), 12, "7 was closed");
        drop(all);
        assert_eq!(cache.open_count(), 0, "a dropped file's handle closes");
    }

    #[test]
    fn a_file_deleted_while_held_stays_readable_for_its_holders() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = FileCache::new(2);
        let all = files(dir.path(), &cache, 4);
        // 0 is opened, then closed by the cache (2 and 3 used after it).
        let reader = Arc::clone(&all[0]);
        read(&all[0]);
        read(&all[2]);
        read(&all[3]);
        all[0].retire().expect("retire");
        std::fs::remove_file(all[0].path()).expect("delete");
        drop(all);
        assert_eq!(read(&reader), "file 0000", "the holder still reads it");
        assert_eq!(
            cache.open_count(),
            0,
            "a pinned handle is outside the cache"
        );
        drop(reader);
        // Not retired: a holder of a deleted file whose handle was closed gets not-found.
        let all = files(dir.path(), &cache, 4);
        read(&all[1]);
        read(&all[2]);
        read(&all[3]);
        std::fs::remove_file(all[1].path()).expect("delete");
        let err = all[1].handle().expect_err("gone");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn out_of_descriptors_is_recognized() {
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::EIO
        )));
        assert!(default_max_open_files() >= 16);
    }
}
