//! One partition on a worker: its segment index, its data file, and the
//! pushed data still in memory.
//!
//! Writes: a push is split into runs of one (subpartition, segment) each,
//! appended to the index as memory extents. A flush writes all pending memory
//! extents to the end of the data file in one vectored write, then points the
//! index at the file and frees the memory. Sealing flushes, syncs the file and
//! persists the index.
//!
//! Reads: [`Partition::next_read`] says what a reader of one segment gets
//! next. Every change bumps a version on a watch channel, which parked readers
//! wait on.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use terrace_tier_api::{
    BatchReader, DataType, PartitionKey, SegmentId, SubpartitionId, TierError, TierResult,
};
use tokio::sync::watch;

use super::budget::Reservation;
use super::index::{Extent, Location, PersistedIndex, SegmentIndex, SubpartitionIndex};

/// Immutable facts about a partition.
#[derive(Debug, Clone)]
pub struct PartitionMeta {
    pub key: PartitionKey,
    pub num_subpartitions: u32,
    pub broadcast_only: bool,
    pub data_path: PathBuf,
    pub index_path: PathBuf,
}

#[derive(Debug)]
struct PendingExtent {
    sub: usize,
    segment: usize,
    extent: usize,
    bytes: Bytes,
}

#[derive(Debug)]
struct State {
    subs: Vec<SubpartitionIndex>,
    sealed: bool,
    released: bool,
    /// Bytes written to (or reserved in) the data file.
    file_len: u64,
    pending: Vec<PendingExtent>,
    pending_bytes: u64,
    /// Memory reservations of the pushes whose extents are pending.
    reservations: Vec<Reservation>,
    stored_bytes: u64,
}

/// What a reader of a segment gets next.
#[derive(Debug)]
pub enum NextRead {
    /// Up to `max_bytes` of extents of the segment, starting at the reader's position.
    Extents(Vec<Extent>),
    /// Everything of the (closed) segment was read.
    SegmentDone,
    /// The segment does not exist and never will, or it is the unclosed last
    /// segment of a sealed partition and was read to its end.
    End,
    /// Nothing yet: wait for a change.
    Wait,
    /// The partition was released.
    Released,
}

#[derive(Debug)]
pub struct Partition {
    meta: PartitionMeta,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Serializes flushes of this partition.
    flush_lock: tokio::sync::Mutex<()>,
}

impl Partition {
    pub fn new(meta: PartitionMeta) -> Self {
        let stored_subs = if meta.broadcast_only {
            1
        } else {
            meta.num_subpartitions as usize
        };
        Partition {
            state: Mutex::new(State {
                subs: vec![SubpartitionIndex::default(); stored_subs],
                sealed: false,
                released: false,
                file_len: 0,
                pending: Vec::new(),
                pending_bytes: 0,
                reservations: Vec::new(),
                stored_bytes: 0,
            }),
            meta,
            version: watch::channel(0).0,
            flush_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// A sealed partition recovered from its persisted index.
    pub fn recovered(meta: PartitionMeta, index: PersistedIndex) -> Self {
        let partition = Partition::new(meta);
        {
            let mut state = partition.lock();
            state.stored_bytes = index
                .subpartitions
                .iter()
                .flat_map(|s| &s.segments)
                .flat_map(|g| &g.extents)
                .map(|e| u64::from(e.len))
                .sum();
            state.subs = index.subpartitions;
            state.file_len = index.data_len;
            state.sealed = true;
        }
        partition
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("partition state lock poisoned")
    }

    pub fn meta(&self) -> &PartitionMeta {
        &self.meta
    }

    pub fn key(&self) -> &PartitionKey {
        &self.meta.key
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub fn is_sealed(&self) -> bool {
        self.lock().sealed
    }

    pub fn pending_bytes(&self) -> u64 {
        self.lock().pending_bytes
    }

    pub fn stored_bytes(&self) -> u64 {
        self.lock().stored_bytes
    }

    /// Appends a decoded push batch. `reservation` holds the batch's memory
    /// until it is flushed. With `expected_crc32c`, the batch is checked
    /// against it first, from the runs' own checksums (one pass over the bytes).
    pub fn append(
        &self,
        batch: Bytes,
        reservation: Reservation,
        expected_crc32c: Option<u32>,
    ) -> TierResult<()> {
        let runs = split_runs(
            &batch,
            self.meta.num_subpartitions,
            self.meta.broadcast_only,
        )?;
        if let Some(expected) = expected_crc32c {
            let actual = runs.iter().fold(0u32, |crc, run| {
                terrace_tier_api::crc32c_combine(crc, run.crc32c, run.bytes.len())
            });
            if actual != expected {
                return Err(TierError::corruption(format!(
                    "push body checksum mismatch: header says {expected:#010x}, body has {actual:#010x}"
                )));
            }
        }
        let mut state = self.lock();
        if state.released {
            return Err(TierError::not_found(format!(
                "{} was released",
                self.meta.key
            )));
        }
        if state.sealed {
            return Err(TierError::new(
                terrace_tier_api::ErrorKind::PartitionSealed,
                format!("{} is sealed; no more pushes", self.meta.key),
            ));
        }
        // Validate every run against the segment rules before changing anything.
        let mut next_segment: Vec<(usize, usize, bool)> = Vec::new();
        for run in &runs {
            let sub = run.sub;
            let known = next_segment
                .iter()
                .rev()
                .find(|(s, _, _)| *s == sub)
                .map(|(_, g, c)| (*g, *c));
            let (last, last_closed) = known.unwrap_or_else(|| {
                let segments = &state.subs[sub].segments;
                match segments.last() {
                    Some(seg) => (segments.len() - 1, seg.closed),
                    None => (usize::MAX, true),
                }
            });
            let segment = run.segment;
            let ok = if last == usize::MAX {
                segment == 0
            } else if segment == last {
                !last_closed
            } else {
                segment == last + 1 && last_closed
            };
            if !ok {
                return Err(TierError::bad_input(format!(
                    "{}: subpartition {sub} segment {segment} breaks the segment order (last segment {}, {})",
                    self.meta.key,
                    if last == usize::MAX {
                        "none".to_string()
                    } else {
                        last.to_string()
                    },
                    if last_closed { "closed" } else { "open" },
                )));
            }
            next_segment.push((sub, segment, run.ends_segment));
        }
        for run in runs {
            let segments = &mut state.subs[run.sub].segments;
            if run.segment == segments.len() {
                segments.push(SegmentIndex::default());
            }
            let segment = &mut segments[run.segment];
            let len = run.bytes.len() as u32;
            segment.extents.push(Extent {
                location: Location::Memory(run.bytes.clone()),
                len,
                crc32c: run.crc32c,
                num_buffers: run.num_buffers,
            });
            segment.closed = run.ends_segment;
            let extent = segment.extents.len() - 1;
            state.pending_bytes += u64::from(len);
            state.stored_bytes += u64::from(len);
            state.pending.push(PendingExtent {
                sub: run.sub,
                segment: run.segment,
                extent,
                bytes: run.bytes,
            });
        }
        state.reservations.push(reservation);
        drop(state);
        self.bump();
        Ok(())
    }

    /// Writes every pending memory extent to the data file. Blocking file I/O
    /// runs on the blocking pool.
    pub async fn flush(self: &Arc<Self>) -> TierResult<()> {
        let _guard = self.flush_lock.lock().await;
        self.flush_locked().await
    }

    /// Waits until no flush or seal of this partition is running.
    pub async fn wait_idle(&self) {
        drop(self.flush_lock.lock().await);
    }

    /// The body of [`Partition::flush`]; the caller holds `flush_lock`.
    async fn flush_locked(self: &Arc<Self>) -> TierResult<()> {
        let (pending, reservations, offset) = {
            let mut state = self.lock();
            if state.pending.is_empty() || state.released {
                return Ok(());
            }
            let pending = std::mem::take(&mut state.pending);
            let reservations = std::mem::take(&mut state.reservations);
            let offset = state.file_len;
            state.file_len += state.pending_bytes;
            state.pending_bytes = 0;
            (pending, reservations, offset)
        };
        let path = self.meta.data_path.clone();
        let slices: Vec<Bytes> = pending.iter().map(|p| p.bytes.clone()).collect();
        let written = tokio::task::spawn_blocking(move || append_to_file(&path, offset, &slices))
            .await
            .map_err(|e| TierError::internal(format!("flush task failed: {e}")))
            .and_then(|r| {
                r.map_err(|e| {
                    TierError::internal(format!("write {}: {e}", self.meta.data_path.display()))
                })
            });
        if let Err(e) = written {
            // The index still points at the memory extents, so the data stays
            // readable; keep it accounted against the budget.
            self.lock().reservations.extend(reservations);
            return Err(e.context(&self.meta.key));
        }
        {
            let mut state = self.lock();
            if !state.released {
                let mut at = offset;
                for p in &pending {
                    let extent = &mut state.subs[p.sub].segments[p.segment].extents[p.extent];
                    extent.location = Location::LocalFile { offset: at };
                    at += p.bytes.len() as u64;
                }
            }
        }
        // The index no longer points at the memory: let it go.
        drop(pending);
        drop(reservations);
        Ok(())
    }

    /// Seals the partition: flush, sync the data file, persist the index. The
    /// whole seal runs under the flush lock, which a release waits for before
    /// deleting files, so a release can never leave an index behind.
    pub async fn seal(self: &Arc<Self>) -> TierResult<()> {
        let released = || TierError::not_found(format!("{} was released", self.meta.key));
        {
            let mut state = self.lock();
            if state.released {
                return Err(released());
            }
            if state.sealed {
                return Ok(());
            }
            state.sealed = true;
        }
        let guard = self.flush_lock.lock().await;
        self.flush_locked().await?;
        let index = {
            let state = self.lock();
            if state.released {
                return Err(released());
            }
            PersistedIndex {
                key: self.meta.key.clone(),
                num_subpartitions: self.meta.num_subpartitions,
                broadcast_only: self.meta.broadcast_only,
                data_len: state.file_len,
                subpartitions: state.subs.clone(),
            }
            .encode()?
        };
        let data_path = self.meta.data_path.clone();
        let index_path = self.meta.index_path.clone();
        tokio::task::spawn_blocking(move || persist_index(&data_path, &index_path, &index))
            .await
            .map_err(|e| TierError::internal(format!("seal task failed: {e}")))?
            .map_err(|e| TierError::internal(format!("persist index of {}: {e}", self.meta.key)))?;
        drop(guard);
        self.bump();
        Ok(())
    }

    /// Marks the partition released: readers get not-found, memory is freed.
    /// The caller deletes the files.
    pub fn release(&self) {
        {
            let mut state = self.lock();
            state.released = true;
            state.pending.clear();
            state.reservations.clear();
            state.subs.clear();
            state.pending_bytes = 0;
        }
        self.bump();
    }

    /// What a reader positioned at extent `position` of `segment` of
    /// `subpartition` gets next, at most about `max_bytes` of extents.
    pub fn next_read(
        &self,
        subpartition: SubpartitionId,
        segment: SegmentId,
        position: usize,
        max_bytes: usize,
    ) -> NextRead {
        let state = self.lock();
        if state.released {
            return NextRead::Released;
        }
        let sub = if self.meta.broadcast_only {
            0
        } else {
            subpartition.0 as usize
        };
        let Some(seg) = state
            .subs
            .get(sub)
            .and_then(|s| s.segments.get(segment.0 as usize))
        else {
            return if state.sealed {
                NextRead::End
            } else {
                NextRead::Wait
            };
        };
        if position < seg.extents.len() {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for extent in &seg.extents[position..] {
                if !out.is_empty() && bytes + extent.len as usize > max_bytes {
                    break;
                }
                bytes += extent.len as usize;
                out.push(extent.clone());
            }
            return NextRead::Extents(out);
        }
        if seg.closed {
            NextRead::SegmentDone
        } else if state.sealed {
            NextRead::End
        } else {
            NextRead::Wait
        }
    }
}

/// One stored run: consecutive buffers of a push with the same (subpartition, segment).
struct Run {
    sub: usize,
    segment: usize,
    bytes: Bytes,
    crc32c: u32,
    num_buffers: u32,
    ends_segment: bool,
}

/// Splits a decoded batch into runs, checking ids and the END_OF_SEGMENT rule
/// (it may only be the last buffer of a run).
fn split_runs(batch: &Bytes, num_subpartitions: u32, broadcast_only: bool) -> TierResult<Vec<Run>> {
    let mut reader = BatchReader::new(batch.clone());
    let mut runs: Vec<Run> = Vec::new();
    let mut start = 0usize;
    let mut current: Option<(u32, u32, u32, bool)> = None; // sub, segment, count, ended
    loop {
        let offset = reader.offset();
        let next = reader.next_buffer()?;
        let flush_run = match (&current, &next) {
            (Some(_), None) => true,
            (Some((s, g, _, ended)), Some((h, _))) => {
                *ended || h.subpartition.0 != *s || h.segment.0 != *g
            }
            (None, _) => false,
        };
        if flush_run {
            let (s, g, count, ended) = current.take().expect("flush_run implies a current run");
            let bytes = batch.slice(start..offset);
            runs.push(Run {
                sub: s as usize,
                segment: g as usize,
                crc32c: crc32c::crc32c(&bytes),
                bytes,
                num_buffers: count,
                ends_segment: ended,
            });
            start = offset;
        }
        let Some((header, _)) = next else { break };
        let sub = header.subpartition.0;
        if sub >= num_subpartitions {
            return Err(TierError::bad_input(format!(
                "subpartition {sub} out of range (partition has {num_subpartitions})"
            )));
        }
        if broadcast_only && sub != 0 {
            return Err(TierError::bad_input(format!(
                "broadcast-only partition got data for subpartition {sub}; only subpartition 0 is stored"
            )));
        }
        let ended = header.data_type == DataType::EndOfSegment;
        current = Some(match current {
            Some((s, g, count, false)) if s == sub && g == header.segment.0 => {
                (s, g, count + 1, ended)
            }
            _ => (sub, header.segment.0, 1, ended),
        });
    }
    Ok(runs)
}

fn append_to_file(path: &std::path::Path, offset: u64, slices: &[Bytes]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len != offset {
        return Err(std::io::Error::other(format!(
            "data file has {len} bytes, index expected {offset}"
        )));
    }
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
        let mut written = file.write_vectored(&batch)?;
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

fn persist_index(
    data_path: &std::path::Path,
    index_path: &std::path::Path,
    index: &[u8],
) -> std::io::Result<()> {
    // The data file exists even when the partition is empty, so recovery finds both.
    let data = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_path)?;
    data.sync_all()?;
    let tmp = index_path.with_extension("index.tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(index)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, index_path)?;
    if let Some(dir) = index_path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads `extents` (in memory or in the local file) into one body, in a
/// buffer of the shared pool.
pub fn read_extents(data_path: &std::path::Path, extents: &[Extent]) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    if let [
        Extent {
            location: Location::Memory(bytes),
            ..
        },
    ] = extents
    {
        return Ok(bytes.clone());
    }
    let total: usize = extents.iter().map(|e| e.len as usize).sum();
    let mut out = terrace_rpc::shared_pool().take(total);
    let mut file: Option<File> = None;
    let mut at = 0;
    for extent in extents {
        let dst = &mut out.as_mut()[at..at + extent.len as usize];
        match &extent.location {
            Location::Memory(bytes) => dst.copy_from_slice(bytes),
            Location::LocalFile { offset } => {
                if file.is_none() {
                    file = Some(File::open(data_path)?);
                }
                file.as_ref()
                    .expect("opened above")
                    .read_exact_at(dst, *offset)?;
            }
        }
        at += extent.len as usize;
    }
    Ok(out.freeze())
}
