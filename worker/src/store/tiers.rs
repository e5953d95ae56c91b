//! The storage seam: memory, local directories and the object store behind
//! one type. Partitions write through it (flush, seal, migration) and read
//! through it, so a reader never knows which tier served it. Tests wrap the
//! file layer ([`super::FaultyFiles`]) and the object store
//! ([`super::FaultyStore`]) to inject faults.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use terrace_tier_api::{ErrorKind, TierError, TierResult};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::StoreError;
use super::dirs::LocalDirs;
use super::files::FileLayer;
use super::handles::{DataFile, FileCache};
use super::object::ObjectTier;

#[derive(Debug)]
pub struct Tiers {
    pub dirs: LocalDirs,
    pub files: Arc<dyn FileLayer>,
    /// Open data-file handles, at most `max_open_data_files`.
    pub handles: Arc<FileCache>,
    pub object: Option<ObjectTier>,
    /// Largest overflow object, and the part size of migration uploads.
    pub object_part_size: u64,
    /// Bytes of object-store reads in flight or waiting to be sent.
    read_budget: Arc<Semaphore>,
    read_budget_total: u32,
    /// Reads ahead take their bytes from `read_budget` too, but only without
    /// waiting and only up to half of it (this second semaphore), so reads a
    /// reader asked for always find room once earlier ones are sent.
    ahead_budget: Arc<Semaphore>,
    /// Largest GET a read stream makes ahead (0: none).
    pub read_ahead: u64,
}

/// Read budget held by a read ahead (see [`Tiers::try_reserve_ahead`]).
#[derive(Debug)]
pub struct AheadPermit(Vec<OwnedSemaphorePermit>);

/// Where a reader's extent bytes are, resolved under the partition lock so a
/// migration that swaps locations afterwards cannot pull the file away (a
/// data file deleted while held keeps a handle for its holders, see
/// [`DataFile::retire`]).
#[derive(Debug, Clone)]
pub enum Source {
    Memory(Bytes),
    File {
        file: Arc<DataFile>,
        offset: u64,
        len: u32,
    },
    Object {
        key: ObjectPath,
        offset: u64,
        len: u32,
    },
}

impl Tiers {
    pub fn new(
        dirs: LocalDirs,
        files: Arc<dyn FileLayer>,
        object: Option<ObjectTier>,
        object_part_size: u64,
        read_budget: u64,
        read_ahead: u64,
        max_open_files: u64,
    ) -> Tiers {
        let total = u32::try_from(read_budget).unwrap_or(u32::MAX).max(1);
        Tiers {
            dirs,
            files,
            handles: FileCache::new(max_open_files),
            object,
            object_part_size,
            read_budget: Arc::new(Semaphore::new(total as usize)),
            read_budget_total: total,
            ahead_budget: Arc::new(Semaphore::new(total as usize / 2)),
            read_ahead,
        }
    }

    pub fn object(&self) -> TierResult<&ObjectTier> {
        self.object
            .as_ref()
            .ok_or_else(|| TierError::internal("no object store is configured"))
    }

    /// Reads `sources` into the chunks of one body, in order, for a
    /// vectored send: memory extents are handed out as they are (never
    /// copied), back-to-back file extents are read into one buffer of the
    /// shared pool. Object reads coalesce adjacent ranges of one object into
    /// one ranged GET, and hold read budget until the body is dropped (sent).
    pub async fn read(&self, sources: Vec<Source>) -> TierResult<Vec<Bytes>> {
        if sources.iter().all(|s| matches!(s, Source::Memory(_))) {
            return Ok(sources
                .into_iter()
                .filter_map(|s| match s {
                    Source::Memory(bytes) => Some(bytes),
                    _ => None,
                })
                .collect());
        }
        let total: usize = sources.iter().map(Source::len).sum();
        let has_objects = sources.iter().any(|s| matches!(s, Source::Object { .. }));
        let permit = if has_objects {
            vec![self.reserve_read(total).await?]
        } else {
            Vec::new()
        };
        // One contiguous object range: the GET's own buffer is the body.
        if let Some((key, range)) = single_object_range(&sources) {
            let mut got = self.object()?.get_ranges(&key, &[range]).await?;
            let body = got.pop().unwrap_or_default();
            return Ok(vec![hold(body, permit)]);
        }
        let mut fetched: Vec<Option<Bytes>> = vec![None; sources.len()];
        if has_objects {
            let object = self.object()?;
            let mut requests = Vec::new();
            for (key, range, members) in coalesce(&sources) {
                requests.push(async move {
                    object
                        .get_ranges(&key, std::slice::from_ref(&range))
                        .await
                        .map(|mut v| (range.start, v.pop().unwrap_or_default(), members))
                });
            }
            for (start, body, members) in futures::future::try_join_all(requests).await? {
                for i in members {
                    if let Source::Object { offset, len, .. } = &sources[i] {
                        let from = (offset - start) as usize;
                        let to = from + *len as usize;
                        if to > body.len() {
                            return Err(StoreError::Corrupt {
                                what: "object read".to_string(),
                                detail: format!(
                                    "returned {} bytes, expected at least {to}",
                                    body.len()
                                ),
                            }
                            .into());
                        }
                        fetched[i] = Some(body.slice(from..to));
                    }
                }
            }
        }
        let mut chunks = if sources.iter().any(|s| matches!(s, Source::File { .. })) {
            tokio::task::spawn_blocking(move || read_chunks(&sources, fetched))
                .await
                .map_err(|e| TierError::with_source(ErrorKind::Internal, "read task failed", e))?
                .map_err(|e| {
                    TierError::with_source(ErrorKind::Internal, "read local data file", e)
                })?
        } else {
            read_chunks(&sources, fetched).map_err(|e| {
                TierError::with_source(ErrorKind::Internal, "read the object store", e)
            })?
        };
        if let Some(last) = chunks.pop() {
            chunks.push(hold(last, permit));
        }
        Ok(chunks)
    }

    /// Read-ahead budget free now, in bytes.
    pub fn ahead_free(&self) -> u64 {
        self.ahead_budget.available_permits() as u64
    }

    /// Read budget for `bytes` read ahead, if it is free now: reads ahead
    /// never wait, and hold at most half of the budget.
    pub fn try_reserve_ahead(&self, bytes: u64) -> Option<AheadPermit> {
        let n = u32::try_from(bytes).ok()?;
        let ahead = Arc::clone(&self.ahead_budget)
            .try_acquire_many_owned(n)
            .ok()?;
        let read = Arc::clone(&self.read_budget)
            .try_acquire_many_owned(n)
            .ok()?;
        Some(AheadPermit(vec![ahead, read]))
    }

    /// One ranged GET under budget reserved ahead; the body holds it.
    pub async fn read_ahead(
        &self,
        key: &ObjectPath,
        range: std::ops::Range<u64>,
        permit: AheadPermit,
    ) -> TierResult<Bytes> {
        let want = range.end - range.start;
        let body = self
            .object()?
            .get_ranges(key, std::slice::from_ref(&range))
            .await?
            .pop()
            .unwrap_or_default();
        if body.len() as u64 != want {
            return Err(StoreError::Corrupt {
                what: format!("object {key} range {range:?}"),
                detail: format!("returned {} bytes, expected {want}", body.len()),
            }
            .into());
        }
        Ok(hold(body, permit.0))
    }

    async fn reserve_read(&self, bytes: usize) -> TierResult<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .min(self.read_budget_total);
        Arc::clone(&self.read_budget)
            .acquire_many_owned(n)
            .await
            .map_err(|_| TierError::unavailable("worker is shutting down"))
    }
}

impl Source {
    pub fn len(&self) -> usize {
        match self {
            Source::Memory(b) => b.len(),
            Source::File { len, .. } | Source::Object { len, .. } => *len as usize,
        }
    }
}

/// Keeps read-budget permits alive as long as the body.
struct Held {
    body: Bytes,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

fn hold(body: Bytes, permits: Vec<OwnedSemaphorePermit>) -> Bytes {
    if permits.is_empty() {
        return body;
    }
    Bytes::from_owner(Held {
        body,
        _permits: permits,
    })
}

/// If `sources` are all back to back in one object, that object and range.
pub fn single_object_range(sources: &[Source]) -> Option<(ObjectPath, std::ops::Range<u64>)> {
    let Some(Source::Object { key, offset, .. }) = sources.first() else {
        return None;
    };
    let mut end = *offset;
    for source in sources {
        match source {
            Source::Object {
                key: k,
                offset: o,
                len,
            } if k == key && *o == end => end += u64::from(*len),
            _ => return None,
        }
    }
    Some((key.clone(), *offset..end))
}

/// Groups the object sources into ranges: adjacent extents of one object
/// (in read order) share a GET.
fn coalesce(sources: &[Source]) -> Vec<(ObjectPath, std::ops::Range<u64>, Vec<usize>)> {
    let mut out: Vec<(ObjectPath, std::ops::Range<u64>, Vec<usize>)> = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let Source::Object { key, offset, len } = source else {
            continue;
        };
        let end = offset + u64::from(*len);
        match out.last_mut() {
            Some((k, range, members)) if k == key && range.end == *offset => {
                range.end = end;
                members.push(i);
            }
            _ => out.push((key.clone(), *offset..end, vec![i])),
        }
    }
    out
}

/// The chunks of a body read from `sources`: memory extents and fetched
/// object ranges as they are, each run of back-to-back file extents read
/// into one pooled buffer. Blocking when there are file extents.
fn read_chunks(sources: &[Source], mut fetched: Vec<Option<Bytes>>) -> std::io::Result<Vec<Bytes>> {
    use std::os::unix::fs::FileExt;
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < sources.len() {
        match &sources[i] {
            Source::Memory(bytes) => {
                chunks.push(bytes.clone());
                i += 1;
            }
            Source::Object { .. } => {
                let got = fetched[i]
                    .take()
                    .ok_or_else(|| std::io::Error::other("object range was not fetched"))?;
                chunks.push(got);
                i += 1;
            }
            Source::File { .. } => {
                let run = sources[i..]
                    .iter()
                    .take_while(|s| matches!(s, Source::File { .. }))
                    .count();
                let files = &sources[i..i + run];
                let total: usize = files.iter().map(Source::len).sum();
                let mut out = terrace_rpc::shared_pool().take(total);
                let mut at = 0;
                for source in files {
                    if let Source::File { file, offset, len } = source {
                        let len = *len as usize;
                        file.handle()?
                            .read_exact_at(&mut out.as_mut()[at..at + len], *offset)
                            .map_err(|e| {
                                // The io::Error's kind stays; its text and
                                // cause come from the Disk error inside.
                                std::io::Error::new(
                                    e.kind(),
                                    StoreError::Disk {
                                        op: "read",
                                        path: file.path().to_path_buf(),
                                        source: e,
                                    },
                                )
                            })?;
                        at += len;
                    }
                }
                chunks.push(out.freeze());
                i += run;
            }
        }
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str, offset: u64, len: u32) -> Source {
        Source::Object {
            key: ObjectPath::from(key),
            offset,
            len,
        }
    }

    #[test]
    fn memory_extents_are_sent_as_they_are_and_file_runs_read_into_one_chunk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f.data");
        std::fs::write(&path, b"0123456789").expect("write");
        let cache = FileCache::new(1);
        let file = DataFile::existing(&cache, path);
        let at = |offset, len| Source::File {
            file: Arc::clone(&file),
            offset,
            len,
        };
        let memory = Bytes::from(b"in memory".to_vec());
        let sources = vec![
            Source::Memory(memory.clone()),
            at(2, 3),
            at(7, 2),
            Source::Memory(Bytes::from_static(b"!")),
            at(0, 1),
        ];
        let chunks = read_chunks(&sources, vec![None; sources.len()]).expect("read");
        assert_eq!(
            chunks,
            vec![
                Bytes::from_static(b"in memory"),
                Bytes::from_static(b"23478"),
                Bytes::from_static(b"!"),
                Bytes::from_static(b"0"),
            ]
        );
        assert_eq!(chunks[0].as_ptr(), memory.as_ptr(), "memory is not copied");
        // An object range that was not fetched is an error, not a gap.
        let missing = read_chunks(&[object("a", 0, 4)], vec![None]);
        assert!(missing.is_err());
    }

    #[test]
    fn adjacent_ranges_of_one_object_share_a_get() {
        let sources = vec![
            object("a", 0, 10),
            object("a", 10, 5),
            Source::Memory(Bytes::from_static(b"xy")),
            object("a", 40, 1),
            object("b", 41, 1),
            object("b", 42, 3),
        ];
        let groups: Vec<(String, std::ops::Range<u64>, Vec<usize>)> = coalesce(&sources)
            .into_iter()
            .map(|(k, r, m)| (k.to_string(), r, m))
            .collect();
        assert_eq!(
            groups,
            vec![
                ("a".to_string(), 0..15, vec![0, 1]),
                ("a".to_string(), 40..41, vec![3]),
                ("b".to_string(), 41..45, vec![4, 5]),
            ]
        );
        assert_eq!(
            single_object_range(&[object("a", 3, 2), object("a", 5, 1)]),
            Some((ObjectPath::from("a"), 3..6))
        );
        assert_eq!(single_object_range(&sources), None);
    }
}
