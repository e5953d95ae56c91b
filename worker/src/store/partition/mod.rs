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
//! - **Compaction**: a sealed partition's object extents written by
//!   overflow flushes (subpartitions interleaved) are rewritten the same
//!   way as one object laid out segment by segment.
//!
//! Every change bumps a version on a watch channel, which parked readers wait on.

mod append;
mod compact;
mod durable;
mod flush;
mod migrate;
mod persist;
mod read;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use std::time::Instant;
use terrace_rpc::clock;
use terrace_tier_api::{ErrorKind, PartitionKey, TierError};
use tokio::sync::watch;

use super::budget::Reservation;
use super::handles::DataFile;
use super::index::{Blob, ExtentRef, Forward, Growth, PartitionIndex, PersistedIndex};
use super::metadata::{Charge, cost};
use super::tiers::Tiers;

pub use read::ReadStep;

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
    /// The index generation last written to the object store beside the
    /// data (durability = "object-store"); `None`: not written, or the
    /// index changed since.
    durable_generation: Option<u64>,
    /// A copy of the local extents in the object store, laid out in index
    /// order (durability = "object-store"): the durable index locates them
    /// there, reads stay local, and a migration swaps it in. Not persisted
    /// locally: after a restart the part is made durable again.
    durable_copy: Option<Blob>,
    migration_failures: u32,
    /// What the partition's state and index take of the metadata budget
    /// (`None`: not charged, a partition made outside a store).
    charge: Option<Charge>,
}

impl State {
    /// Marks the index sealed and, every extent being flushed by then,
    /// moves it to its compact form, giving back the metadata charge the
    /// tree form needed beyond it.
    fn seal_index(&mut self) {
        self.index.sealed = true;
        let before = index_memory_cost(&self.index);
        if self.index.freeze_if_settled() {
            let after = index_memory_cost(&self.index);
            if let Some(charge) = &mut self.charge {
                charge.shrink(before.saturating_sub(after));
            }
        }
    }

    /// A migration or compaction ended (`ok` or not): the partition may
    /// move again, at once after a success, after a doubling back-off
    /// (2 s up to 64 s) after failures.
    fn finish_move(&mut self, ok: bool) {
        self.migrating = false;
        if ok {
            self.migration_failures = 0;
            self.migrate_after = None;
        } else {
            self.migration_failures = self.migration_failures.saturating_add(1);
            let backoff = std::time::Duration::from_secs(1 << self.migration_failures.min(6));
            self.migrate_after = Some(clock::now() + backoff);
        }
    }
}

/// Deletes a partition's local files that a move replaced; open handles
/// held by readers stay valid after the unlink.
async fn delete_moved_files(tiers: &Tiers, files: Vec<LocalFile>) {
    let doomed: Vec<(usize, Arc<DataFile>, u64)> =
        files.into_iter().map(|f| (f.dir, f.file, f.len)).collect();
    delete_files(tiers, doomed).await;
}

/// What a released partition leaves to delete: its files (directory, file,
/// length), its index directory, its object prefix and its objects' bytes.
pub type Leftovers = (
    Vec<(usize, Arc<DataFile>, u64)>,
    Option<usize>,
    Option<String>,
    u64,
);

/// Where a partition is in its life, as metrics and the admin API show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Taking pushes (or being sealed).
    Open,
    Sealed,
    /// Its data could not be stored; every request gets that error.
    Failed,
    /// Released, its storage being deleted.
    Released,
}

impl PartitionState {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionState::Open => "open",
            PartitionState::Sealed => "sealed",
            PartitionState::Failed => "failed",
            PartitionState::Released => "released",
        }
    }
}

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
    /// When this process created (or recovered) it.
    created: Instant,
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
                durable_generation: None,
                durable_copy: None,
                migration_failures: 0,
                charge: None,
            }),
            meta,
            version: watch::channel(0).0,
            flush_lock: tokio::sync::Mutex::new(()),
            created: clock::now(),
        }
    }

    /// When this process created (or recovered) the partition.
    pub fn created(&self) -> Instant {
        self.created
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
            // Charged after this (metadata_cost), in the compact form.
            state.index.freeze_if_settled();
            state.index_dir = Some(index_dir);
            if state.index.sealed {
                state.phase = Phase::Sealed;
                state.sealed_at = Some(clock::now());
            }
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

    /// Records that the masters locate this partition here rather than on
    /// its descriptor's worker; persisted with its index, so a restarted
    /// worker names it in its heartbeats again.
    pub fn mark_relocated(&self) {
        self.lock().index.relocated = true;
    }

    /// Whether [`Partition::mark_relocated`] was called (or the recovered
    /// index says so).
    pub fn is_relocated(&self) -> bool {
        self.lock().index.relocated
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

    /// Where the partition is in its life (a seal in progress is open).
    pub fn state(&self) -> PartitionState {
        match self.lock().phase {
            Phase::Open | Phase::Sealing => PartitionState::Open,
            Phase::Sealed => PartitionState::Sealed,
            Phase::Failed(_) => PartitionState::Failed,
            Phase::Released => PartitionState::Released,
        }
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
        base_cost(&self.meta.key) + index_memory_cost(&state.index)
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
            state
                .objects
                .iter()
                .chain(state.durable_copy.as_ref())
                .map(|o| o.id)
                .collect(),
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
        let held = || state.objects.iter().chain(state.durable_copy.as_ref());
        (held().count() as u64, held().map(|o| o.len).sum())
    }

    pub fn is_migrating(&self) -> bool {
        self.lock().migrating
    }

    /// Where the partition goes on, once it was split.
    pub fn forward(&self) -> Option<Forward> {
        let state = self.lock();
        state.index.forward.clone().filter(|_| state.index.sealed)
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

/// The metadata `index` costs in the form it is in.
pub fn index_memory_cost(index: &PartitionIndex) -> u64 {
    let g = index.size();
    if index.is_frozen() {
        g.subpartitions * cost::FROZEN_SUBPARTITION
            + (g.segments + 1) * cost::FROZEN_SEGMENT
            + g.extents * cost::FROZEN_EXTENT
    } else {
        index_cost(g)
    }
}

/// `{dir}/{job}/{partition}.data` for file 0 (the name version 1 used),
/// `{dir}/{job}/{partition}.{id}.data` for the others.
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
