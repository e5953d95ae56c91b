//! The file layer: every write the worker makes to a local data directory goes
//! through [`FileLayer`], so tests can wrap it to fail writes in one
//! directory ([`FaultyFiles`]) the way a dying disk or a full filesystem does.
//! Reads use the open file handles directly (a read error fails the read, it
//! does not need a seam to be tested).
//!
//! Why buffered, vectored writes and plain reads, measured with `terrace
//! bench-io` (the raw pipeline, no Terrace code, CPU seconds per GiB of the
//! pipeline process, medians of 5 runs of 1 GiB on the 2-core development
//! machine, 2026-11-22; buffered write + read/write copy = 1.00):
//! - `sendfile` to the socket: 1.18 (two sessions: 1.18, 1.31). Loopback TCP
//!   takes page references instead of a copy, and pays more for them.
//! - `O_DIRECT` writes: the data must first be copied to an aligned buffer
//!   (a worker's data follows frame headers), which costs what the page
//!   cache copy does, and every later read then comes from the device:
//!   1.38 with copied reads, 0.85 with `sendfile`, 0.65 with `O_DIRECT`
//!   reads, but at 0.4-0.7x the wall-clock rate (618 against 907 MiB/s), and
//!   consumers read soon after producers write, from the page cache.
//! - `O_DIRECT` reads after buffered writes: 0.80 CPU at 0.55x the rate.
//! - 4 MiB instead of 1 MiB chunks (a quarter of the system calls, more than
//!   io_uring's batching could save): 1.04 to 1.8, never less; the cost is
//!   memory traffic, not system calls, so io_uring is not used.
//! - What does cost: writing data received long before. The same pipeline
//!   holding 256 MiB before it writes (as a memory tier does) is 1.78; the
//!   copy into the page cache of bytes the CPU's caches no longer hold is
//!   the largest part of a worker's CPU. Hence `write_on_push`
//!   ([`super::Partition::write_pushed`]): each push is appended on the
//!   thread that received it. From the blocking pool instead, the same
//!   write-through cut nothing in trials.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

/// Writes to local data directories. Called on the blocking pool.
pub trait FileLayer: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a new data file at `path` (its parent is created if missing)
    /// and opens it for appending.
    fn create(&self, dir: &Path, path: &Path) -> std::io::Result<File>;
    /// Appends `slices` to `file`, whose length must be `offset`.
    fn append(&self, dir: &Path, file: &File, offset: u64, slices: &[Bytes])
    -> std::io::Result<()>;
    /// Makes `file`'s data durable.
    fn sync(&self, dir: &Path, file: &File) -> std::io::Result<()>;
    /// Writes `bytes` to `path` atomically and durably (temp file, fsync,
    /// rename, fsync of the directory).
    fn write_atomic(&self, dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default)]
pub struct RealFiles;

impl FileLayer for RealFiles {
    fn create(&self, _dir: &Path, path: &Path) -> std::io::Result<File> {
        if let Some(parent) = path.parent() {
            // The job directory may have been removed by a job drop that
            // raced with this partition's creation: make it again.
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        // A left-over file of an earlier partition with this key starts over.
        file.set_len(0)?;
        Ok(file)
    }

    fn append(
        &self,
        _dir: &Path,
        file: &File,
        offset: u64,
        slices: &[Bytes],
    ) -> std::io::Result<()> {
        append_vectored(file, offset, slices)
    }

    fn sync(&self, _dir: &Path, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }

    fn write_atomic(&self, _dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let parent = path
            .parent()
            .ok_or_else(|| std::io::Error::other("index path has no directory"))?;
        std::fs::create_dir_all(parent)?;
        let tmp = path.with_extension("index.tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        File::open(parent)?.sync_all()
    }
}

/// Appends `slices` to `file` (opened for appending) with vectored writes,
/// after checking that the file ends at `offset`. A file whose write failed
/// is never appended to again, so a partial write cannot shift later data.
fn append_vectored(file: &File, offset: u64, slices: &[Bytes]) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len != offset {
        return Err(std::io::Error::other(format!(
            "data file has {len} bytes, the index expects {offset}"
        )));
    }
    let mut writer = file;
    let mut index = 0;
    let mut skip = 0usize;
    while index < slices.len() {
        let batch: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&slices[index][skip..]))
            .chain(
                slices[index + 1..]
                    .iter()
                    .take(1023)
                    .map(|b| IoSlice::new(b)),
            )
            .collect();
        let mut written = writer.write_vectored(&batch)?;
        if written == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "wrote zero bytes",
            ));
        }
        while index < slices.len() && written > 0 {
            let left = slices[index].len() - skip;
            if written >= left {
                written -= left;
                index += 1;
                skip = 0;
            } else {
                skip += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// A [`FileLayer`] that fails every write under chosen directories with a
/// chosen OS error (EIO, ENOSPC, ...), for tests.
#[derive(Debug, Default)]
pub struct FaultyFiles {
    inner: RealFiles,
    failing: Mutex<Vec<(PathBuf, i32)>>,
}

impl FaultyFiles {
    pub fn new() -> Self {
        FaultyFiles::default()
    }

    /// Every later write under `dir` fails with OS error `errno`.
    pub fn fail_writes_under(&self, dir: &Path, errno: i32) {
        let mut failing = self.failing.lock().expect("faults lock poisoned");
        failing.retain(|(d, _)| d != dir);
        failing.push((dir.to_path_buf(), errno));
    }

    /// Writes under `dir` work again.
    pub fn heal(&self, dir: &Path) {
        self.failing
            .lock()
            .expect("faults lock poisoned")
            .retain(|(d, _)| d != dir);
    }

    fn check(&self, dir: &Path) -> std::io::Result<()> {
        let failing = self.failing.lock().expect("faults lock poisoned");
        match failing.iter().find(|(d, _)| dir.starts_with(d)) {
            Some((_, errno)) => Err(std::io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }
}

impl FileLayer for FaultyFiles {
    fn create(&self, dir: &Path, path: &Path) -> std::io::Result<File> {
        self.check(dir)?;
        self.inner.create(dir, path)
    }

    fn append(
        &self,
        dir: &Path,
        file: &File,
        offset: u64,
        slices: &[Bytes],
    ) -> std::io::Result<()> {
        self.check(dir)?;
        self.inner.append(dir, file, offset, slices)
    }

    fn sync(&self, dir: &Path, file: &File) -> std::io::Result<()> {
        self.check(dir)?;
        self.inner.sync(dir, file)
    }

    fn write_atomic(&self, dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        self.check(dir)?;
        self.inner.write_atomic(dir, path, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_land_at_their_offsets_whatever_the_slice_sizes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j/p.data");
        let files = RealFiles;
        let file = files.create(dir.path(), &path).expect("create");
        let slices: Vec<Bytes> = (0..50u32)
            .map(|i| Bytes::from(vec![i as u8; (i as usize * 7919) % 300_000]))
            .collect();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        files.append(dir.path(), &file, 0, &slices).expect("append");
        files
            .append(
                dir.path(),
                &file,
                total as u64,
                &[Bytes::from_static(b"tail")],
            )
            .expect("append");
        let want: Vec<u8> = slices
            .iter()
            .flat_map(|s| s.iter().copied())
            .chain(*b"tail")
            .collect();
        assert_eq!(std::fs::read(&path).expect("read"), want);
    }

    #[test]
    fn faulty_files_fail_only_their_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let files = FaultyFiles::new();
        files.fail_writes_under(&a, libc::ENOSPC);
        let err = files.create(&a, &a.join("x.data")).expect_err("fails");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        files
            .create(&b, &b.join("x.data"))
            .expect("other dir works");
        files.heal(&a);
        files.create(&a, &a.join("x.data")).expect("healed");
    }
}
