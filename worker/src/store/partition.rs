//! One partition on a worker: its index (a pure state machine, see
//! [`super::index`]) and the I/O that moves its extents between tiers.
//!
//! - **Append**: a push is split into runs of one (subpartition, segment),
//!   appended to the index as memory extents.
//! - **Flush**: all pending memory extents go to the partition's local data
//!   file in the healthy directory chosen by [`super::LocalDirs`]; if that
//!   write fails the directory is marked unhealthy and the write moves to
//!   another one; with no local room it goes to the object store as objects
//!   of at most `object_part_size`, readable as soon as their PUT returns. If
//!   nothing can take the data the partition fails with a clear error, and
//!   its memory is returned either way.
//! - **Seal**: flush, fsync, persist the index. Success only once data and
//!   index are durable; a failed persist leaves the partition open so the
//!   seal can be retried.
//! - **Migration**: a sealed partition's local extents are uploaded as one
//!   object laid out segment by segment; then the index is persisted
//!   pointing at it, swapped in, and only then are the local files deleted.
//!
//! Every change bumps a version on a watch channel, which parked readers wait on.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use std::time::Instant;
use terrace_rpc::clock;
use terrace_tier_api::{BatchReader, DataType, ErrorKind, PartitionKey, TierError, TierResult};
use tokio::sync::watch;

use super::budget::Reservation;
use super::handles::{DataFile, is_out_of_descriptors};
use super::index::{
    Blob, Extent, ExtentRef, Forward, Growth, Location, NextRead, PartitionIndex, PersistedIndex,
    Run,
};
use super::metadata::{Charge, cost};
use super::object::ObjectTier;
use super::tiers::{Source, Tiers};

/// Immutable facts about a partition.
#[derive(Debug, Clone)]
pub struct PartitionMeta {
    pub key: PartitionKey,
    pub num_subpartitions: u32,
    pub broadcast_only: bool,
    /// A later part of a split partition (see [`PartitionIndex::continuation`]).
    pub continuation: bool,
}

/// A local data file of the partition.
#[derive(Debug)]
struct LocalFile {
    id: u32,
    dir: usize,
    file: Arc<DataFile>,
    len: u64,
    /// Bytes known durable (fsynced).
    synced: u64,
    /// New data may be appended (false after a failed write).
    writable: bool,
}

#[derive(Debug, Clone)]
enum Phase {
    Open,
    /// A seal is running: no more pushes.
    Sealing,
    Sealed,
    /// Its data could not be stored: every later request gets this error.
    Failed(TierError),
    Released,
}

#[derive(Debug)]
struct State {
    index: PartitionIndex,
    phase: Phase,
    pending: Vec<(ExtentRef, Bytes)>,
    pending_bytes: u64,
    /// Memory reservations of the pushes whose extents are pending.
    reservations: Vec<Reservation>,
    files: Vec<LocalFile>,
    objects: Vec<Blob>,
    /// Key prefix of this partition's objects, fixed at the first object.
    object_prefix: Option<String>,
    /// Ids for new files and objects (one sequence, so ids are unique).
    next_blob: u32,
    generation: u64,
    /// The directory holding the persisted index.
    index_dir: Option<usize>,
    last_access: Instant,
    sealed_at: Option<Instant>,
    migrating: bool,
    /// A failed migration is not tried again before this.
    migrate_after: Option<Instant>,
    migration_failures: u32,
    /// What the partition's state and index take of the metadata budget
    /// (`None`: not charged, a partition made outside a store).
    charge: Option<Charge>,
}

/// What a reader of a segment gets next, with the bytes' sources resolved.
#[derive(Debug)]
pub enum ReadStep {
    Batch {
        extents: Vec<Extent>,
        sources: Vec<Source>,
    },
    SegmentDone,
    End,
    Wait,
    /// The segment is on the next part of the split partition.
    Redirect(Forward),
    Failed(TierError),
}

/// What a released partition leaves to delete: its files (directory, file,
/// length), its index directory, its object prefix and its objects' bytes.
pub type Leftovers = (
    Vec<(usize, Arc<DataFile>, u64)>,
    Option<usize>,
    Option<String>,
    u64,
);

/// Bytes of a partition per tier.
#[derive(Debug, Default, Clone, Copy)]
pub struct TierBytes {
    pub memory: u64,
    pub local: u64,
    pub object: u64,
}

#[derive(Debug)]
pub struct Partition {
    meta: PartitionMeta,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Serializes flushes, seals and migration commits of this partition; a
    /// release waits for it before deleting anything.
    flush_lock: tokio::sync::Mutex<()>,
}

impl Partition {
    pub fn new(meta: PartitionMeta) -> Self {
        let mut index = PartitionIndex::new(meta.num_subpartitions, meta.broadcast_only);
        index.continuation = meta.continuation;
        Partition {
            state: Mutex::new(State {
                index,
                phase: Phase::Open,
                pending: Vec::new(),
                pending_bytes: 0,
                reservations: Vec::new(),
                files: Vec::new(),
                objects: Vec::new(),
                object_prefix: None,
                next_blob: 0,
                generation: 0,
                index_dir: None,
                last_access: clock::now(),
                sealed_at: None,
                migrating: false,
                migrate_after: None,
                migration_failures: 0,
                charge: None,
            }),
            meta,
            version: watch::channel(0).0,
            flush_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// A sealed partition recovered from its persisted index; `files` are its
    /// data files with the directory each was found in.
    pub fn recovered(
        persisted: PersistedIndex,
        files: Vec<(Blob, usize, Arc<DataFile>)>,
        index_dir: usize,
    ) -> Self {
        let partition = Partition::new(PartitionMeta {
            key: persisted.key.clone(),
            num_subpartitions: persisted.index.num_subpartitions,
            broadcast_only: persisted.index.broadcast_only,
            continuation: persisted.index.continuation,
        });
        {
            let mut state = partition.lock();
            let max_id = files
                .iter()
                .map(|f| f.0.id)
                .chain(persisted.objects.iter().map(|o| o.id))
                .max();
            state.next_blob = max_id.map_or(0, |m| m.saturating_add(1));
            state.files = files
                .into_iter()
                .map(|(blob, dir, file)| LocalFile {
                    id: blob.id,
                    dir,
                    file,
                    len: blob.len,
                    synced: blob.len,
                    writable: false,
                })
                .collect();
            state.objects = persisted.objects;
            state.object_prefix = Some(persisted.object_prefix).filter(|p: &String| !p.is_empty());
            state.generation = persisted.generation;
            state.index = persisted.index;
            state.index_dir = Some(index_dir);
            state.phase = Phase::Sealed;
            state.sealed_at = Some(clock::now());
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
        matches!(self.lock().phase, Phase::Sealed)
    }

    pub fn pending_bytes(&self) -> u64 {
        self.lock().pending_bytes
    }

    pub fn stored_bytes(&self) -> u64 {
        self.lock().index.stored_bytes()
    }

    /// Hands the partition the metadata charge that pays for it; its index
    /// grows it from then on, and it is given back with the index.
    pub fn set_charge(&self, charge: Charge) {
        self.lock().charge = Some(charge);
    }

    /// What the partition's state and index cost the metadata budget.
    pub fn metadata_cost(&self) -> u64 {
        let state = self.lock();
        base_cost(&self.meta.key) + index_cost(state.index.size())
    }

    /// Whether this part is sealed, its stored bytes per subpartition, and
    /// where the partition goes on when it was split.
    pub fn metrics(&self) -> (bool, Vec<u64>, Option<Forward>) {
        let state = self.lock();
        (
            matches!(state.phase, Phase::Sealed),
            state.index.subpartition_bytes(),
            state.index.forward.clone(),
        )
    }

    /// Bytes of this partition in each tier.
    pub fn tier_bytes(&self) -> TierBytes {
        let totals = self.lock().index.totals();
        TierBytes {
            memory: totals.memory,
            local: totals.local,
            object: totals.object,
        }
    }

    /// The object ids and key prefix of the partition, for orphan cleanup.
    pub fn object_keys(&self) -> (Option<String>, Vec<u32>) {
        let state = self.lock();
        (
            state.object_prefix.clone(),
            state.objects.iter().map(|o| o.id).collect(),
        )
    }

    fn phase_error(&self, phase: &Phase) -> Option<TierError> {
        match phase {
            Phase::Released => Some(TierError::not_found(format!(
                "{} was released",
                self.meta.key
            ))),
            Phase::Failed(e) => Some(e.clone()),
            Phase::Sealing | Phase::Sealed => Some(TierError::new(
                ErrorKind::PartitionSealed,
                format!("{} is sealed; no more pushes", self.meta.key),
            )),
            Phase::Open => None,
        }
    }

    /// Appends a decoded push batch of at most `max_buffers` buffers.
    /// `reservation` holds the batch's memory until it is flushed. With
    /// `expected_crc32c`, the batch is checked against it first, from the
    /// runs' own checksums (one pass over the bytes).
    pub fn append(
        &self,
        batch: Bytes,
        reservation: Reservation,
        expected_crc32c: Option<u32>,
        max_buffers: u32,
    ) -> TierResult<()> {
        let runs = split_runs(
            &batch,
            self.meta.num_subpartitions,
            self.meta.broadcast_only,
            max_buffers,
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
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(e) = self.phase_error(&state.phase) {
            return Err(e);
        }
        let charge = &mut state.charge;
        let refs = state
            .index
            .append_admitted(&runs, |growth| match charge {
                Some(charge) => charge.grow(index_cost(growth), "this push's index entries"),
                None => Ok(()),
            })
            .map_err(|e| e.context(&self.meta.key))?;
        for (at, run) in refs.into_iter().zip(runs) {
            state.pending_bytes += run.bytes.len() as u64;
            state.pending.push((at, run.bytes));
        }
        state.reservations.push(reservation);
        drop(guard);
        self.bump();
        Ok(())
    }

    /// Writes every pending memory extent to a lower tier.
    pub async fn flush(self: &Arc<Self>, tiers: &Tiers) -> TierResult<()> {
        let _guard = self.flush_lock.lock().await;
        self.flush_locked(tiers).await
    }

    /// Writes what pushes left in memory out at once, on the calling thread
    /// (`write_on_push`): the bytes just received are still in this core's
    /// caches, and copying them into the page cache then costs a fraction of
    /// what it costs once they have gone cold. Skipped while another flush,
    /// seal or migration of the partition runs (that one takes the data).
    pub async fn write_pushed(self: &Arc<Self>, tiers: &Tiers) -> TierResult<()> {
        let Ok(_guard) = self.flush_lock.try_lock() else {
            return Ok(());
        };
        // Only to a local directory: with none, the data waits for the
        // flusher, which sends it to the object store in large parts.
        let current = {
            let state = self.lock();
            state.files.last().filter(|f| f.writable).map(|f| f.dir)
        };
        if tiers.dirs.choose(self.pending_bytes(), current).is_none() {
            return Ok(());
        }
        match self.flush_with(tiers, Writer::Inline).await {
            // Out of file descriptors: the data stayed in memory for the
            // flusher (or the seal), and the push is stored.
            Err(_) if !matches!(self.lock().phase, Phase::Failed(_)) => Ok(()),
            other => other,
        }
    }

    /// Waits until no flush, seal or migration commit of this partition is running.
    pub async fn wait_idle(&self) {
        drop(self.flush_lock.lock().await);
    }

    /// The body of [`Partition::flush`]; the caller holds `flush_lock`.
    async fn flush_locked(self: &Arc<Self>, tiers: &Tiers) -> TierResult<()> {
        self.flush_with(tiers, Writer::Pool).await
    }

    /// [`Partition::flush_locked`] with local writes made by `writer`.
    async fn flush_with(self: &Arc<Self>, tiers: &Tiers, writer: Writer) -> TierResult<()> {
        let (pending, reservations, total) = {
            let mut state = self.lock();
            if state.pending.is_empty() {
                return Ok(());
            }
            if matches!(state.phase, Phase::Released | Phase::Failed(_)) {
                return Ok(());
            }
            let total = std::mem::take(&mut state.pending_bytes);
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.reservations),
                total,
            )
        };
        let result = self.write_out(tiers, &pending, total, writer).await;
        match result {
            Ok(()) => Ok(()),
            Err(Unstored::OutOfDescriptors(e)) => {
                // Neither the disk's fault nor the data's: it stays pending
                // (before what was pushed meanwhile), and a later flush or
                // the seal tries again.
                tracing::warn!(partition = %self.meta.key, error = %e, "data stays in memory for now");
                let mut state = self.lock();
                if !matches!(state.phase, Phase::Released | Phase::Failed(_)) {
                    let newer = std::mem::replace(&mut state.pending, pending);
                    state.pending.extend(newer);
                    let newer = std::mem::replace(&mut state.reservations, reservations);
                    state.reservations.extend(newer);
                    state.pending_bytes += total;
                }
                Err(e)
            }
            Err(Unstored::Failed(e)) => {
                // The memory is returned: the partition failed.
                drop(reservations);
                let e = e.context(format!("store data of {}", self.meta.key));
                tracing::error!(partition = %self.meta.key, error = %e, "partition failed: its data could not be stored");
                let freed = {
                    let mut state = self.lock();
                    if !matches!(state.phase, Phase::Released) {
                        state.phase = Phase::Failed(e.clone());
                    }
                    self.free_memory(&mut state)
                };
                drop(pending);
                drop(freed);
                self.bump();
                Err(e)
            }
        }
    }

    /// Moves `pending` (`total` bytes) to a local directory, or, when none
    /// can take it, to the object store. Points the index at the new place.
    async fn write_out(
        self: &Arc<Self>,
        tiers: &Tiers,
        pending: &[(ExtentRef, Bytes)],
        total: u64,
        writer: Writer,
    ) -> Result<(), Unstored> {
        let slices: Vec<Bytes> = pending.iter().map(|(_, b)| b.clone()).collect();
        let mut last_error = None;
        // Each failed directory is skipped from then on, so this ends.
        for _ in 0..=tiers.dirs.len() {
            let current = {
                let state = self.lock();
                state.files.last().filter(|f| f.writable).map(|f| f.dir)
            };
            // The room is taken now, not after the write: pushes written
            // side by side must not all fit into the same last room.
            let Some(dir) = tiers.dirs.claim(total, current) else {
                break;
            };
            match self
                .append_local(tiers, dir, current == Some(dir), &slices, writer)
                .await
            {
                Ok((file, offset)) => {
                    let mut state = self.lock();
                    if !matches!(state.phase, Phase::Released) {
                        let mut at = offset;
                        for (extent, bytes) in pending {
                            state
                                .index
                                .relocate(*extent, Location::Local { file, offset: at });
                            at += bytes.len() as u64;
                        }
                    }
                    return Ok(());
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    // Not the disk's fault: the directory stays healthy.
                    tiers.dirs.get(dir).remove(total);
                    return Err(Unstored::OutOfDescriptors(TierError::unavailable(format!(
                        "write to {}: {e} (raise the open-file limit, or lower limits.max_open_data_files)",
                        tiers.dirs.get(dir).path.display()
                    ))));
                }
                Err(e) => {
                    tiers.dirs.get(dir).remove(total);
                    tiers.dirs.get(dir).mark_unhealthy(&e);
                    last_error = Some(format!("{}: {e}", tiers.dirs.get(dir).path.display()));
                }
            }
        }
        let Some(object) = tiers.object.as_ref() else {
            return Err(Unstored::Failed(TierError::unavailable(format!(
                "storage full: no local directory can take {total} bytes{} and no object store is configured",
                last_error
                    .map(|e| format!(" (last write error: {e})"))
                    .unwrap_or_default()
            ))));
        };
        self.overflow(tiers, object, pending)
            .await
            .map_err(Unstored::Failed)
    }

    /// Appends `slices` to the partition's file in `dir` (a new file unless
    /// `reuse`). Returns the file id and the offset written at.
    async fn append_local(
        self: &Arc<Self>,
        tiers: &Tiers,
        dir: usize,
        reuse: bool,
        slices: &[Bytes],
        writer: Writer,
    ) -> std::io::Result<(u32, u64)> {
        let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
        let dir_path = tiers.dirs.get(dir).path.clone();
        let (id, file, offset) = if reuse {
            let state = self.lock();
            let f = state.files.last().expect("reuse means a current file");
            (f.id, Arc::clone(&f.file), f.len)
        } else {
            let id = {
                let mut state = self.lock();
                if let Some(f) = state.files.last_mut() {
                    f.writable = false;
                }
                state.next_blob += 1;
                state.next_blob - 1
            };
            let path = data_path(&dir_path, &self.meta.key, id);
            let layer = Arc::clone(&tiers.files);
            let (d, p) = (dir_path.clone(), path.clone());
            let file = tokio::task::spawn_blocking(move || layer.create(&d, &p))
                .await
                .map_err(std::io::Error::other)??;
            let file = DataFile::created(&tiers.handles, path, file);
            self.lock().files.push(LocalFile {
                id,
                dir,
                file: Arc::clone(&file),
                len: 0,
                synced: 0,
                writable: true,
            });
            (id, file, 0)
        };
        let layer = Arc::clone(&tiers.files);
        let owned: Vec<Bytes> = slices.to_vec();
        let handle = Arc::clone(&file);
        let append = move || layer.append(&dir_path, &*handle.handle()?, offset, &owned);
        let written = match writer {
            Writer::Inline
                if tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(append)
            }
            _ => tokio::task::spawn_blocking(append)
                .await
                .map_err(std::io::Error::other)?,
        };
        let mut state = self.lock();
        let entry = state.files.iter_mut().find(|f| f.id == id);
        match written {
            Ok(()) => {
                if let Some(f) = entry {
                    f.len = offset + total;
                }
                Ok((id, offset))
            }
            Err(e) => {
                if let Some(f) = entry {
                    f.writable = false;
                }
                Err(e)
            }
        }
    }

    /// Writes `pending` to the object store as objects of at most
    /// `object_part_size`, each readable as soon as its PUT returns.
    async fn overflow(
        self: &Arc<Self>,
        tiers: &Tiers,
        object: &ObjectTier,
        pending: &[(ExtentRef, Bytes)],
    ) -> TierResult<()> {
        let prefix = self.object_prefix(object);
        let mut start = 0;
        while start < pending.len() {
            let mut end = start;
            let mut len = 0u64;
            while end < pending.len()
                && (end == start || len + pending[end].1.len() as u64 <= tiers.object_part_size)
            {
                len += pending[end].1.len() as u64;
                end += 1;
            }
            let chunk = &pending[start..end];
            let id = {
                let mut state = self.lock();
                state.next_blob += 1;
                state.next_blob - 1
            };
            let key = ObjectTier::object_key(&prefix, id);
            let slices: Vec<Bytes> = chunk.iter().map(|(_, b)| b.clone()).collect();
            object.put(&key, &slices).await?;
            object.counters.bytes.fetch_add(len, Ordering::Relaxed);
            object.counters.objects.fetch_add(1, Ordering::Relaxed);
            object
                .counters
                .bytes_overflowed
                .fetch_add(len, Ordering::Relaxed);
            let mut state = self.lock();
            state.objects.push(Blob { id, len });
            if !matches!(state.phase, Phase::Released) {
                let mut at = 0u64;
                for (extent, bytes) in chunk {
                    state.index.relocate(
                        *extent,
                        Location::Object {
                            object: id,
                            offset: at,
                        },
                    );
                    at += bytes.len() as u64;
                }
            }
            drop(state);
            start = end;
        }
        Ok(())
    }

    fn object_prefix(&self, object: &ObjectTier) -> String {
        let mut state = self.lock();
        state
            .object_prefix
            .get_or_insert_with(|| object.partition_prefix(&self.meta.key))
            .clone()
    }

    /// Seals the partition: flush, fsync its files, persist the index. The
    /// whole seal runs under the flush lock, which a release waits for before
    /// deleting files, so a release can never leave an index behind.
    pub async fn seal(self: &Arc<Self>, tiers: &Tiers) -> TierResult<()> {
        let _guard = self.flush_lock.lock().await;
        {
            let mut state = self.lock();
            match &state.phase {
                Phase::Sealed => return Ok(()),
                Phase::Open | Phase::Sealing => state.phase = Phase::Sealing,
                other => {
                    let other = other.clone();
                    return Err(self.phase_error(&other).expect("not open"));
                }
            }
        }
        self.flush_locked(tiers).await?;
        match self.persist(tiers, true).await {
            Ok(()) => {
                let mut state = self.lock();
                if matches!(state.phase, Phase::Sealing) {
                    state.phase = Phase::Sealed;
                    state.index.sealed = true;
                    state.sealed_at = Some(clock::now());
                    state.last_access = clock::now();
                }
            }
            Err(e) => {
                // Nothing is lost: the data is where the index says. A retried seal persists again.
                let mut state = self.lock();
                if matches!(state.phase, Phase::Sealing) {
                    state.phase = Phase::Open;
                }
                return Err(e);
            }
        }
        self.bump();
        Ok(())
    }

    /// Ends this part of the partition: like a seal, with a forward pointer
    /// to `next` persisted in the index. Every segment must be closed. Once
    /// it returns, readers of later segments are redirected to `next`; a
    /// split that fails leaves the partition open, and can be retried.
    pub async fn split(self: &Arc<Self>, tiers: &Tiers, next: Forward) -> TierResult<()> {
        let _guard = self.flush_lock.lock().await;
        {
            let mut state = self.lock();
            if let Some(done) = &state.index.forward {
                if matches!(state.phase, Phase::Sealed) && *done == next {
                    return Ok(());
                }
            }
            if let Some(e) = self.phase_error(&state.phase) {
                return Err(e);
            }
            state.index.split(next)?;
            state.phase = Phase::Sealing;
        }
        let stored = match self.flush_locked(tiers).await {
            Ok(()) => self.persist(tiers, true).await,
            Err(e) => Err(e),
        };
        let mut state = self.lock();
        match stored {
            Ok(()) if matches!(state.phase, Phase::Sealing) => {
                state.phase = Phase::Sealed;
                state.index.sealed = true;
                state.sealed_at = Some(clock::now());
                state.last_access = clock::now();
            }
            Ok(()) => {}
            Err(e) => {
                if matches!(state.phase, Phase::Sealing) {
                    state.phase = Phase::Open;
                    state.index.forward = None;
                }
                return Err(e);
            }
        }
        drop(state);
        self.bump();
        Ok(())
    }

    /// Syncs the partition's local files and writes its index (the next
    /// generation) to a healthy directory, the current one first. A failed
    /// directory is marked unhealthy and the next one tried. The caller holds
    /// `flush_lock`.
    async fn persist(self: &Arc<Self>, tiers: &Tiers, sync_files: bool) -> TierResult<()> {
        if sync_files {
            self.sync_files(tiers).await?;
        }
        let (encoded, preferred) = {
            let state = self.lock();
            if matches!(state.phase, Phase::Released) {
                return Err(TierError::not_found(format!(
                    "{} was released",
                    self.meta.key
                )));
            }
            let persisted = self.persisted(&state);
            let preferred = state
                .index_dir
                .or_else(|| state.files.first().map(|f| f.dir));
            (persisted.encode()?, preferred)
        };
        let mut errors = Vec::new();
        for dir in tiers.dirs.any_healthy(preferred) {
            let dir_path = tiers.dirs.get(dir).path.clone();
            let path = index_path(&dir_path, &self.meta.key);
            let layer = Arc::clone(&tiers.files);
            let bytes = encoded.clone();
            let d = dir_path.clone();
            let written =
                tokio::task::spawn_blocking(move || layer.write_atomic(&d, &path, &bytes))
                    .await
                    .map_err(|e| TierError::internal(format!("persist task failed: {e}")))?;
            match written {
                Ok(()) => {
                    let old = {
                        let mut state = self.lock();
                        state.generation += 1;
                        state.index_dir.replace(dir)
                    };
                    if let Some(old) = old.filter(|&o| o != dir) {
                        // The newer generation wins at recovery; this is tidiness.
                        let stale = index_path(&tiers.dirs.get(old).path, &self.meta.key);
                        let _ =
                            tokio::task::spawn_blocking(move || std::fs::remove_file(stale)).await;
                    }
                    return Ok(());
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    return Err(TierError::unavailable(format!(
                        "persist index of {} in {}: {e} (raise the open-file limit, or lower limits.max_open_data_files)",
                        self.meta.key,
                        dir_path.display()
                    )));
                }
                Err(e) => {
                    tiers.dirs.get(dir).mark_unhealthy(&e);
                    errors.push(format!("{}: {e}", dir_path.display()));
                }
            }
        }
        Err(TierError::unavailable(format!(
            "persist index of {}: no healthy data directory took it ({})",
            self.meta.key,
            if errors.is_empty() {
                "all are unhealthy".to_string()
            } else {
                errors.join("; ")
            }
        )))
    }

    /// What [`Partition::persist`] writes: the next generation of the index.
    fn persisted(&self, state: &State) -> PersistedIndex {
        let mut index = state.index.clone();
        index.sealed = true;
        PersistedIndex {
            key: self.meta.key.clone(),
            generation: state.generation + 1,
            files: state
                .files
                .iter()
                .map(|f| Blob {
                    id: f.id,
                    len: f.len,
                })
                .collect(),
            object_prefix: state.object_prefix.clone().unwrap_or_default(),
            objects: state.objects.clone(),
            index,
        }
    }

    /// The persisted index for another worker to adopt the partition: it
    /// must be sealed with every byte in the object store (migrated).
    pub fn handoff_index(&self) -> TierResult<Bytes> {
        let state = self.lock();
        let key = &self.meta.key;
        if !matches!(state.phase, Phase::Sealed) || state.migrating {
            return Err(TierError::unavailable(format!(
                "{key} is not sealed and at rest; it cannot be handed over yet"
            )));
        }
        let persisted = self.persisted(&state);
        if !persisted.wholly_in_object_store() {
            return Err(TierError::unavailable(format!(
                "{key} still has data outside the object store; migrate it first"
            )));
        }
        persisted.encode()
    }

    /// Writes the index again now (an adopted partition's first index).
    pub async fn persist_now(self: &Arc<Self>, tiers: &Tiers) -> TierResult<()> {
        let _guard = self.flush_lock.lock().await;
        self.persist(tiers, false).await
    }

    /// The next part of this split partition moved from worker `from` to
    /// `next` (handed over by a decommissioning worker): points the forward
    /// pointer there, persisted. False when the pointer does not name `from`.
    pub async fn move_forward(
        self: &Arc<Self>,
        tiers: &Tiers,
        from: &str,
        next: Forward,
    ) -> TierResult<bool> {
        let _guard = self.flush_lock.lock().await;
        let old = {
            let mut state = self.lock();
            let names_from = state
                .index
                .forward
                .as_ref()
                .is_some_and(|f| f.worker_id == from);
            if !names_from || !matches!(state.phase, Phase::Sealed) {
                return Ok(false);
            }
            state.index.forward.replace(next)
        };
        if let Err(e) = self.persist(tiers, false).await {
            self.lock().index.forward = old;
            return Err(e);
        }
        self.bump();
        Ok(true)
    }

    /// Makes every local file's data durable. A file whose fsync fails has
    /// its extents written again elsewhere (another directory or the store),
    /// and is dropped. The caller holds `flush_lock`.
    async fn sync_files(self: &Arc<Self>, tiers: &Tiers) -> TierResult<()> {
        // Evacuated data lands in new files, which need syncing in turn;
        // every failure takes a directory out, so this ends.
        for _ in 0..=tiers.dirs.len() {
            let to_sync: Vec<(u32, usize, Arc<DataFile>, u64)> = {
                let state = self.lock();
                state
                    .files
                    .iter()
                    .filter(|f| f.synced < f.len)
                    .map(|f| (f.id, f.dir, Arc::clone(&f.file), f.len))
                    .collect()
            };
            if to_sync.is_empty() {
                return Ok(());
            }
            for (id, dir, file, len) in to_sync {
                let layer = Arc::clone(&tiers.files);
                let path = tiers.dirs.get(dir).path.clone();
                let synced =
                    tokio::task::spawn_blocking(move || layer.sync(&path, &*file.handle()?))
                        .await
                        .map_err(|e| TierError::internal(format!("sync task failed: {e}")))?;
                match &synced {
                    Err(e) if is_out_of_descriptors(e) => {
                        return Err(TierError::unavailable(format!(
                            "sync data file of {}: {e} (raise the open-file limit, or lower limits.max_open_data_files)",
                            self.meta.key
                        )));
                    }
                    _ => {}
                }
                if let Err(e) = synced {
                    // Its data cannot be trusted to be on disk: write it elsewhere.
                    tiers.dirs.get(dir).mark_unhealthy(&e);
                    self.evacuate(tiers, id).await.map_err(|moved| {
                        moved.context(format!(
                            "sync data file of {} in {} failed ({e}); moving its data",
                            self.meta.key,
                            tiers.dirs.get(dir).path.display()
                        ))
                    })?;
                    continue;
                }
                if let Some(f) = self.lock().files.iter_mut().find(|f| f.id == id) {
                    f.synced = f.synced.max(len);
                }
            }
        }
        Err(TierError::unavailable(format!(
            "sync data files of {}: every data directory failed",
            self.meta.key
        )))
    }

    /// Rewrites the extents held by local file `id` elsewhere and drops the file.
    async fn evacuate(self: &Arc<Self>, tiers: &Tiers, id: u32) -> TierResult<()> {
        let (moves, file) = {
            let state = self.lock();
            let Some(f) = state.files.iter().find(|f| f.id == id) else {
                return Ok(());
            };
            let moves: Vec<(ExtentRef, u64, u32)> = state
                .index
                .extents()
                .filter_map(|(at, e)| match e.location {
                    Location::Local { file, offset } if file == id => Some((at, offset, e.len)),
                    _ => None,
                })
                .collect();
            (moves, Arc::clone(&f.file))
        };
        let chunk: Vec<(Arc<DataFile>, u64, u32)> = moves
            .iter()
            .map(|(_, offset, len)| (Arc::clone(&file), *offset, *len))
            .collect();
        let bytes = tokio::task::spawn_blocking(move || read_chunk(&chunk))
            .await
            .map_err(|e| TierError::internal(format!("read task failed: {e}")))?
            .map_err(|e| TierError::internal(format!("read back data of a failed file: {e}")))?;
        let mut pending = Vec::with_capacity(moves.len());
        let mut at = 0usize;
        for (extent, _, len) in &moves {
            pending.push((*extent, bytes.slice(at..at + *len as usize)));
            at += *len as usize;
        }
        self.write_out(tiers, &pending, at as u64, Writer::Pool)
            .await
            .map_err(Unstored::into_error)?;
        let gone = {
            let mut state = self.lock();
            let position = state.files.iter().position(|f| f.id == id);
            position.map(|p| state.files.remove(p))
        };
        if let Some(f) = gone {
            delete_files(tiers, vec![(f.dir, f.file, f.len)]).await;
        }
        Ok(())
    }

    /// Marks the partition released (readers and writers get not-found) and
    /// frees its memory.
    pub fn mark_released(&self) {
        let freed = {
            let mut state = self.lock();
            state.phase = Phase::Released;
            self.free_memory(&mut state)
        };
        drop(freed);
        self.bump();
    }

    /// Drops what a released or failed partition no longer needs in memory:
    /// data waiting for a flush and its budget, and the index (with the
    /// data it still held in memory) and its metadata charge. What is
    /// returned is freed when dropped, after the state's lock.
    fn free_memory(&self, state: &mut State) -> Freed {
        let pending = std::mem::take(&mut state.pending);
        let reservations = std::mem::take(&mut state.reservations);
        state.pending_bytes = 0;
        let index = std::mem::replace(
            &mut state.index,
            PartitionIndex::new(self.meta.num_subpartitions, self.meta.broadcast_only),
        );
        if let Some(charge) = &mut state.charge {
            let keep = base_cost(&self.meta.key);
            charge.shrink(charge.bytes().saturating_sub(keep));
        }
        (pending, reservations, index)
    }

    /// What a released partition leaves to delete, once no flush runs: its
    /// files (directory, path, length), its index directory, its object
    /// prefix and the bytes its objects held.
    pub fn take_storage(&self) -> Leftovers {
        let mut state = self.lock();
        let files = state
            .files
            .drain(..)
            .map(|f| (f.dir, f.file, f.len))
            .collect();
        let object_bytes = state.objects.drain(..).map(|o| o.len).sum();
        (
            files,
            state.index_dir,
            state.object_prefix.clone(),
            object_bytes,
        )
    }

    /// Objects of the partition and their bytes.
    pub fn object_totals(&self) -> (u64, u64) {
        let state = self.lock();
        (
            state.objects.len() as u64,
            state.objects.iter().map(|o| o.len).sum(),
        )
    }

    pub fn is_migrating(&self) -> bool {
        self.lock().migrating
    }

    /// What a reader of `subpartition` at extent `position` of `segment`
    /// gets next, about `max_bytes` at most, with where the bytes are.
    /// The object range a reader at (`subpartition`, `segment`, `position`)
    /// reads next and the back-to-back object extents after it, up to about
    /// `max_bytes` (see [`PartitionIndex::object_run`]); `None` when that
    /// next extent is not in the object store.
    pub fn object_run(
        &self,
        subpartition: u32,
        segment: u32,
        position: usize,
        max_bytes: u64,
    ) -> Option<(object_store::path::Path, std::ops::Range<u64>)> {
        let state = self.lock();
        if matches!(state.phase, Phase::Released | Phase::Failed(_)) {
            return None;
        }
        let (object, range) = state
            .index
            .object_run(subpartition, segment, position, max_bytes)?;
        let prefix = state.object_prefix.as_ref()?;
        Some((ObjectTier::object_key(prefix, object), range))
    }

    pub fn next_read(
        &self,
        subpartition: u32,
        segment: u32,
        position: usize,
        max_bytes: usize,
    ) -> ReadStep {
        let mut state = self.lock();
        match &state.phase {
            Phase::Released => {
                return ReadStep::Failed(TierError::not_found(format!(
                    "{} was released",
                    self.meta.key
                )));
            }
            Phase::Failed(e) => return ReadStep::Failed(e.clone()),
            _ => {}
        }
        match state
            .index
            .next_read(subpartition, segment, position, max_bytes)
        {
            NextRead::Extents(extents) => {
                let mut sources = Vec::with_capacity(extents.len());
                for extent in &extents {
                    let source = match &extent.location {
                        Location::Memory(bytes) => Source::Memory(bytes.clone()),
                        Location::Local { file, offset } => {
                            match state.files.iter().find(|f| f.id == *file) {
                                Some(f) => Source::File {
                                    file: Arc::clone(&f.file),
                                    offset: *offset,
                                    len: extent.len,
                                },
                                None => {
                                    return ReadStep::Failed(TierError::internal(format!(
                                        "{}: index names local file {file}, which the partition lacks",
                                        self.meta.key
                                    )));
                                }
                            }
                        }
                        Location::Object { object, offset } => match &state.object_prefix {
                            Some(prefix) => Source::Object {
                                key: ObjectTier::object_key(prefix, *object),
                                offset: *offset,
                                len: extent.len,
                            },
                            None => {
                                return ReadStep::Failed(TierError::internal(format!(
                                    "{}: index names object {object} without an object prefix",
                                    self.meta.key
                                )));
                            }
                        },
                    };
                    sources.push(source);
                }
                state.last_access = clock::now();
                ReadStep::Batch { extents, sources }
            }
            NextRead::SegmentDone => ReadStep::SegmentDone,
            NextRead::End => ReadStep::End,
            NextRead::Wait => ReadStep::Wait,
            NextRead::Redirect(next) => ReadStep::Redirect(next),
        }
    }

    /// Where the partition goes on, once it was split.
    pub fn forward(&self) -> Option<Forward> {
        let state = self.lock();
        state.index.forward.clone().filter(|_| state.index.sealed)
    }

    /// Whether the partition should migrate now: sealed, with local bytes,
    /// not migrating, not backing off after a failure; and cold (not read
    /// for `cold_after`) unless `any_age`. Returns when it was sealed.
    pub fn migration_candidate(
        &self,
        cold_after: std::time::Duration,
        any_age: bool,
    ) -> Option<Instant> {
        let state = self.lock();
        let now = clock::now();
        let eligible = matches!(state.phase, Phase::Sealed)
            && !state.migrating
            && state.migrate_after.is_none_or(|t| now >= t)
            && !state.files.is_empty()
            && (any_age || now.duration_since(state.last_access) >= cold_after);
        if eligible { state.sealed_at } else { None }
    }

    /// Moves the partition's local extents to one new object, laid out
    /// segment by segment. Commit order: upload, persist the index pointing
    /// at the object, swap it in, delete the local files. On failure the
    /// local copy stays and the migration backs off.
    pub async fn migrate(self: &Arc<Self>, tiers: &Tiers) -> TierResult<u64> {
        let object = tiers.object()?;
        // 1. Snapshot what to move. Sealed extents never change but by migration.
        let (moves, prefix, id) = {
            let mut state = self.lock();
            if !matches!(state.phase, Phase::Sealed) || state.migrating {
                return Ok(0);
            }
            let mut moves: Vec<(ExtentRef, Arc<DataFile>, u64, u32)> = Vec::new();
            for (at, extent) in state.index.extents() {
                if let Location::Local { file, offset } = extent.location {
                    let Some(f) = state.files.iter().find(|f| f.id == file) else {
                        return Err(TierError::internal(format!(
                            "{}: index names local file {file}, which the partition lacks",
                            self.meta.key
                        )));
                    };
                    moves.push((at, Arc::clone(&f.file), offset, extent.len));
                }
            }
            if moves.is_empty() && state.files.is_empty() {
                return Ok(0);
            }
            state.migrating = true;
            state.next_blob += 1;
            let id = state.next_blob - 1;
            drop(state);
            (moves, self.object_prefix(object), id)
        };
        let result = self.migrate_moves(tiers, object, &moves, &prefix, id).await;
        let mut state = self.lock();
        state.migrating = false;
        match &result {
            Ok(_) => {
                state.migration_failures = 0;
                state.migrate_after = None;
            }
            Err(_) => {
                state.migration_failures = state.migration_failures.saturating_add(1);
                let backoff = std::time::Duration::from_secs(1 << state.migration_failures.min(6));
                state.migrate_after = Some(clock::now() + backoff);
            }
        }
        result
    }

    async fn migrate_moves(
        self: &Arc<Self>,
        tiers: &Tiers,
        object: &ObjectTier,
        moves: &[(ExtentRef, Arc<DataFile>, u64, u32)],
        prefix: &str,
        id: u32,
    ) -> TierResult<u64> {
        let key = ObjectTier::object_key(prefix, id);
        let total: u64 = moves.iter().map(|m| u64::from(m.3)).sum();
        // 2. Upload, part by part: each part is read from the local files in
        // index order. Every part but the last is exactly `part_size` bytes
        // (S3 refuses a completion whose non-last parts are under 5 MiB), so
        // a part may start or end inside an extent.
        let part_size = tiers.object_part_size.max(5 << 20);
        let num_parts = usize::try_from(total.div_ceil(part_size).max(1)).unwrap_or(usize::MAX);
        let sources: Vec<(Arc<DataFile>, u64, u32)> = moves
            .iter()
            .map(|(_, f, o, l)| (Arc::clone(f), *o, *l))
            .collect();
        let key_text = key.to_string();
        object
            .put_parts(&key, num_parts, |i| {
                let chunk = part_slices(&sources, part_size, i);
                let what = key_text.clone();
                async move {
                    tokio::task::spawn_blocking(move || read_chunk(&chunk))
                        .await
                        .map_err(|e| TierError::internal(format!("read task failed: {e}")))?
                        .map_err(|e| {
                            TierError::internal(format!("read local data for {what}: {e}"))
                        })
                }
            })
            .await?;
        // 3. Commit under the flush lock: a release waits, or has already happened.
        let _guard = self.flush_lock.lock().await;
        let released = matches!(self.lock().phase, Phase::Released);
        if released {
            let _ = object.delete(&key).await;
            return Ok(0);
        }
        let (old_index, old_files, old_objects) = {
            let mut state = self.lock();
            let old = (
                state.index.clone(),
                std::mem::take(&mut state.files),
                state.objects.clone(),
            );
            let mut at = 0u64;
            for (extent, _, _, len) in moves {
                state.index.relocate(
                    *extent,
                    Location::Object {
                        object: id,
                        offset: at,
                    },
                );
                at += u64::from(*len);
            }
            state.objects.push(Blob { id, len: total });
            // Counted with the swap, so figures and index never disagree.
            object.counters.bytes.fetch_add(total, Ordering::Relaxed);
            object.counters.objects.fetch_add(1, Ordering::Relaxed);
            old
        };
        if let Err(e) = self.persist(tiers, false).await {
            // Roll back to the local copy; the uploaded object is removed.
            {
                let mut state = self.lock();
                state.index = old_index;
                state.files = old_files;
                state.objects = old_objects;
                object.counters.bytes.fetch_sub(total, Ordering::Relaxed);
                object.counters.objects.fetch_sub(1, Ordering::Relaxed);
            }
            let _ = object.delete(&key).await;
            return Err(e.context(format!("migrate {}", self.meta.key)));
        }
        object
            .counters
            .bytes_migrated
            .fetch_add(total, Ordering::Relaxed);
        object
            .counters
            .partitions_migrated
            .fetch_add(1, Ordering::Relaxed);
        self.bump();
        // 4. The index points at the object: the local copy can go. Open
        // handles held by readers stay valid after the unlink.
        let doomed: Vec<(usize, Arc<DataFile>, u64)> = old_files
            .into_iter()
            .map(|f| (f.dir, f.file, f.len))
            .collect();
        delete_files(tiers, doomed).await;
        Ok(total)
    }
}

/// Deletes data files and takes their bytes off their directories' use.
/// Holders of a deleted file (readers) keep reading it ([`DataFile::retire`]).
pub async fn delete_files(tiers: &Tiers, files: Vec<(usize, Arc<DataFile>, u64)>) {
    for (dir, file, len) in files {
        let path = file.path().to_path_buf();
        let deleted = tokio::task::spawn_blocking(move || {
            if let Err(e) = file.retire() {
                tracing::warn!(file = %file.path().display(), error = %e, "cannot keep a deleted data file open for its readers; they will fail");
            }
            std::fs::remove_file(file.path())
        });
        match deleted.await {
            Ok(Ok(())) => tiers.dirs.get(dir).remove(len),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                tiers.dirs.get(dir).remove(len)
            }
            Ok(Err(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete data file")
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "delete task failed"),
        }
    }
}

/// Why pending data was not stored.
#[derive(Debug)]
enum Unstored {
    /// The process ran out of file descriptors: the data may wait in memory.
    OutOfDescriptors(TierError),
    /// Nothing could take it.
    Failed(TierError),
}

impl Unstored {
    fn into_error(self) -> TierError {
        match self {
            Unstored::OutOfDescriptors(e) | Unstored::Failed(e) => e,
        }
    }
}

/// Memory let go of by [`Partition::free_memory`], freed on drop.
type Freed = (Vec<(ExtentRef, Bytes)>, Vec<Reservation>, PartitionIndex);

/// The metadata a partition costs besides its index: its state, and its key.
pub fn base_cost(key: &PartitionKey) -> u64 {
    cost::PARTITION + (key.job.as_bytes().len() + key.partition.as_bytes().len()) as u64
}

/// The metadata an index of this size (or an append of this growth) costs.
pub fn index_cost(g: Growth) -> u64 {
    g.subpartitions * cost::SUBPARTITION + g.segments * cost::SEGMENT + g.extents * cost::EXTENT
}

/// Which thread appends to a local data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// The blocking pool (flusher, seal, evacuation): data that waited in
    /// memory, and callers that must not hold a runtime thread.
    Pool,
    /// The calling runtime thread, handing its other tasks to the rest of
    /// the runtime meanwhile (`block_in_place`); the blocking pool on a
    /// single-threaded runtime, where that is not possible.
    Inline,
}

/// Reads the extents of one migration part into one buffer. Blocking.
fn read_chunk(chunk: &[(Arc<DataFile>, u64, u32)]) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let total: usize = chunk.iter().map(|c| c.2 as usize).sum();
    let mut out = vec![0u8; total];
    let mut at = 0;
    for (file, offset, len) in chunk {
        file.handle()?
            .read_exact_at(&mut out[at..at + *len as usize], *offset)?;
        at += *len as usize;
    }
    Ok(Bytes::from(out))
}

/// `{dir}/{job}/{partition}.data` for file 0 (the name version 1 used),
/// `{dir}/{job}/{partition}.{id}.data` for the others.
/// The pieces of `sources` (each `(source, offset, len)`, laid end to end)
/// that make up bytes `part * part_size ..` of at most `part_size` bytes.
fn part_slices<T: Clone>(
    sources: &[(T, u64, u32)],
    part_size: u64,
    part: usize,
) -> Vec<(T, u64, u32)> {
    let lo = part as u64 * part_size;
    let hi = lo + part_size;
    let mut out = Vec::new();
    let mut at = 0u64;
    for (source, offset, len) in sources {
        let (start, end) = (at, at + u64::from(*len));
        at = end;
        if end <= lo {
            continue;
        }
        if start >= hi {
            break;
        }
        let (from, to) = (lo.max(start), hi.min(end));
        out.push((source.clone(), offset + (from - start), (to - from) as u32));
    }
    out
}

pub fn data_path(dir: &std::path::Path, key: &PartitionKey, id: u32) -> PathBuf {
    let job_dir = dir.join(super::names::job_name(&key.job));
    let name = super::names::partition_name(&key.partition);
    if id == 0 {
        job_dir.join(format!("{name}.data"))
    } else {
        job_dir.join(format!("{name}.{id}.data"))
    }
}

pub fn index_path(dir: &std::path::Path, key: &PartitionKey) -> PathBuf {
    dir.join(super::names::job_name(&key.job)).join(format!(
        "{}.index",
        super::names::partition_name(&key.partition)
    ))
}

/// Splits a decoded batch into runs, checking ids and the END_OF_SEGMENT rule
/// (it may only be the last buffer of a run).
fn split_runs(
    batch: &Bytes,
    num_subpartitions: u32,
    broadcast_only: bool,
    max_buffers: u32,
) -> TierResult<Vec<Run>> {
    let mut reader = BatchReader::new(batch.clone());
    let mut runs: Vec<Run> = Vec::new();
    let mut buffers = 0u32;
    // (subpartition, segment, buffers, ended) of the run being built.
    let mut current: Option<(u32, u32, u32, bool)> = None;
    let mut start = 0usize;
    loop {
        let offset = reader.offset();
        let next = reader.next_buffer()?;
        let boundary = match (&current, &next) {
            (Some(_), None) => true,
            (Some((s, g, _, ended)), Some((header, _))) => {
                *ended || header.subpartition.0 != *s || header.segment.0 != *g
            }
            (None, _) => false,
        };
        if boundary {
            let (s, g, count, ended) = current.take().expect("boundary implies a run");
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
        buffers += 1;
        if buffers > max_buffers {
            return Err(TierError::bad_input(format!(
                "push carries more than {max_buffers} buffers (limits.max_buffers_per_push)"
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::part_slices;
    use proptest::prelude::*;

    proptest! {
        /// Parts cover the extents' bytes exactly once, in order, and every
        /// part but the last is exactly `part_size` bytes (S3's rule for a
        /// multipart upload: non-last parts of at least 5 MiB).
        #[test]
        fn migration_parts_are_full_size_and_cover_every_byte(
            lens in proptest::collection::vec(1u32..5000, 0..60),
            part_size in 1u64..20_000,
        ) {
            let sources: Vec<(usize, u64, u32)> =
                lens.iter().enumerate().map(|(i, l)| (i, 1000 * i as u64, *l)).collect();
            let total: u64 = lens.iter().map(|l| u64::from(*l)).sum();
            let parts = total.div_ceil(part_size).max(1) as usize;
            let mut bytes: Vec<(usize, u64)> = Vec::new();
            for part in 0..parts {
                let slices = part_slices(&sources, part_size, part);
                let len: u64 = slices.iter().map(|s| u64::from(s.2)).sum();
                if part + 1 < parts {
                    prop_assert_eq!(len, part_size);
                } else {
                    prop_assert!(len <= part_size);
                }
                for (source, offset, len) in slices {
                    prop_assert!(len > 0);
                    for b in 0..u64::from(len) {
                        bytes.push((source, offset + b));
                    }
                }
            }
            let want: Vec<(usize, u64)> = sources
                .iter()
                .flat_map(|(s, o, l)| (0..u64::from(*l)).map(move |b| (*s, o + b)))
                .collect();
            prop_assert_eq!(bytes, want);
        }
    }
}
