//! The worker's partition store: the partitions it holds, their memory
//! budget, the tiers their bytes live in (memory → local directories →
//! object store), migration of cold data, and recovery after a restart.
//!
//! Recovery touches only what Terrace wrote: files named like Terrace's
//! (`{job}/{partition}.data`, `.{n}.data`, `.index`, `.index.tmp`, named as
//! in `names.rs`) in
//! marked data directories. Anything else is left where it is.
//!
//! Recovery deletes only what it proves is garbage. It first looks at every
//! file; any error but "this file does not exist" (EMFILE, EACCES, EIO, a
//! Terrace name that is not a regular file) stops the start before anything
//! is deleted. With a data directory missing ([`LocalDirs::incomplete`]) it
//! deletes nothing at all, and partitions with a file it cannot find are
//! held back (not served, kept on disk and in the object store).

mod budget;
pub(crate) mod counters;
mod deletions;
mod dirs;
mod durable;
mod error;
mod faults;
mod files;
mod handles;
mod index;
mod metadata;
mod names;
mod object;
mod partition;
mod tiers;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use terrace_rpc::clock;
use terrace_rpc::{BufferPool, PooledBuf, class_size};
use terrace_tier_api::{ByteSize, ErrorKind, JobId, PartitionKey, TierError, TierResult};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{ObjectStoreConfig, WorkerConfig};

pub use budget::{MemoryBudget, Reservation};
pub use deletions::Deletions;
pub use dirs::{LocalDirs, MARKER};
pub use error::{ObjectStoreState, StoreError};
pub use faults::FaultyStore;
pub use files::{FaultyFiles, FileLayer, RealFiles};
use handles::open_file_limits;
pub use index::{Extent, Forward, PersistedIndex};
pub use metadata::{Charge, MetadataBudget, cost};
pub use object::{ObjectCounters, ObjectOp, ObjectTier, build_store};
pub use partition::{Partition, PartitionMeta, PartitionState, ReadStep, TierBytes};
pub use tiers::{Source, Tiers, single_object_range};

pub use counters::Counters;

/// Keys of partitions released recently, and what they cost the metadata budget.
#[derive(Debug)]
struct Released {
    keys: HashSet<PartitionKey>,
    charge: Charge,
}

/// Seams for tests: the file layer and an already-built object store.
#[derive(Debug, Clone, Default)]
pub struct StoreHooks {
    pub files: Option<Arc<dyn FileLayer>>,
    pub object_store: Option<Arc<dyn object_store::ObjectStore>>,
}

#[derive(Debug)]
pub struct Store {
    tiers: Tiers,
    partitions: DashMap<PartitionKey, Arc<Partition>>,
    /// Keys released recently, so late readers fail fast instead of waiting.
    released: Mutex<Released>,
    created: Notify,
    /// Partitions held per job (for `max_partitions_per_job`). Changed with
    /// `partitions`, under the `releasing` lock.
    job_partitions: Mutex<HashMap<JobId, u64>>,
    /// Partitions taken out of `partitions` whose files and objects are
    /// still being deleted: the same key cannot be created again until
    /// that is done, or the deletion would take the new partition's data.
    releasing: Mutex<HashSet<PartitionKey>>,
    /// Woken when a key leaves `releasing`.
    release_done: Notify,
    metadata: Arc<MetadataBudget>,
    budget: MemoryBudget,
    pool: Arc<BufferPool>,
    /// Bytes of memory use above which the flusher starts, and below which it stops.
    flush_start: u64,
    flush_stop: u64,
    /// The worker's config: its store keys (`data_dirs`, `memory_budget`,
    /// `write_on_push`, ...) and `[limits]` are read from here.
    config: WorkerConfig,
    /// `config.object_store`, or its defaults without one (the part size
    /// also bounds a flush when there is no object store).
    object: ObjectStoreConfig,
    /// What the worker counts as it happens (see `crate::metrics`).
    pub counters: Arc<Counters>,
    /// Sealed partitions found at start with a file missing while a data
    /// directory was missing too: not served, and their keys not reused.
    held_back: HashSet<PartitionKey>,
    /// Objects of released partitions and dropped jobs, deleted in the
    /// background (`deletions.rs`).
    deletions: Deletions,
    /// Partitions being adopted: their objects are copied in before the
    /// partition is held, and no deletion may take them meanwhile.
    adopting: Mutex<HashSet<PartitionKey>>,
    /// Objects replaced by compaction, deleted once past their instant:
    /// reads resolved to them before the swap may still fetch them until
    /// then. A crash meanwhile leaves them to the orphan cleanup at start.
    replaced: Mutex<Vec<(std::time::Instant, object_store::path::Path)>>,
}

impl Store {
    /// Opens the store on its directories (created and marked if needed) and
    /// recovers the sealed partitions found there. Files of partitions that
    /// were never sealed are deleted. Blocking.
    ///
    /// Takes the worker's config as loaded: its store keys, its
    /// `[object_store]` table and its `[limits]` (`hooks` are test seams).
    pub fn open(config: &WorkerConfig, hooks: StoreHooks) -> TierResult<Store> {
        let dirs = LocalDirs::open(
            &config.data_dirs,
            config.dir_capacity.map(ByteSize::as_u64),
            config.dir_reserve.as_u64(),
            config.allow_missing_data_dirs,
        )?;
        let object = match &config.object_store {
            Some(settings) => {
                let (store, base) = build_store(settings)?;
                let store = hooks.object_store.clone().unwrap_or(store);
                Some(ObjectTier::new(
                    store,
                    base,
                    dirs.store_id(),
                    settings.clone(),
                ))
            }
            None => None,
        };
        let files: Arc<dyn FileLayer> = hooks.files.clone().unwrap_or_else(|| Arc::new(RealFiles));
        let max_open_files = config
            .limits
            .max_open_data_files
            .map(u64::from)
            .unwrap_or_else(handles::default_max_open_files)
            .max(1);
        tracing::info!(
            max_open_files,
            open_file_limit = ?open_file_limits().ok(),
            "data files are opened on demand; at most this many stay open"
        );
        let object_config = config.object_store.clone().unwrap_or_default();
        let tiers = Tiers::new(
            dirs,
            files,
            object,
            object_config.part_size.as_u64(),
            object_config.read_budget.as_u64(),
            object_config.read_ahead.as_u64(),
            max_open_files,
        );
        let budget = config.memory_budget.as_u64();
        let metadata = MetadataBudget::new(config.limits.metadata_memory.as_u64());
        let mut store = Store {
            tiers,
            partitions: DashMap::new(),
            released: Mutex::new(Released {
                keys: HashSet::new(),
                charge: metadata.empty(),
            }),
            created: Notify::new(),
            job_partitions: Mutex::new(HashMap::new()),
            releasing: Mutex::new(HashSet::new()),
            release_done: Notify::new(),
            metadata,
            budget: MemoryBudget::new(budget),
            pool: BufferPool::new(usize::try_from(budget).unwrap_or(usize::MAX)),
            flush_start: (budget as f64 * config.flush_high_watermark) as u64,
            flush_stop: (budget as f64 * config.flush_low_watermark) as u64,
            config: config.clone(),
            object: object_config,
            counters: Arc::new(Counters::default()),
            held_back: HashSet::new(),
            deletions: Deletions::default(),
            adopting: Mutex::new(HashSet::new()),
            replaced: Mutex::new(Vec::new()),
        };
        store.held_back = store.recover()?;
        // What recovery brought back is in memory already: it is charged
        // even past the limits, and counted per job.
        {
            let mut jobs = store
                .job_partitions
                .lock()
                .expect("job count lock poisoned");
            for partition in store.partitions() {
                partition.set_charge(store.metadata.force(partition.metadata_cost()));
                *jobs.entry(partition.key().job.clone()).or_default() += 1;
            }
        }
        if store.metadata.used() > store.metadata.limit() {
            tracing::warn!(
                used = store.metadata.used(),
                limit = store.metadata.limit(),
                "the recovered partitions' indexes take more than limits.metadata_memory: new partitions and pushes are refused until enough are released"
            );
        }
        if let Some(object) = &store.tiers.object {
            for partition in store.partitions() {
                let (count, bytes) = partition.object_totals();
                object.counters.objects.fetch_add(count, Ordering::Relaxed);
                object.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        Ok(store)
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// The metadata budget (`limits.metadata_memory`).
    pub fn metadata(&self) -> &Arc<MetadataBudget> {
        &self.metadata
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Whether pushes write their data out at once (`write_on_push`).
    pub fn writes_on_push(&self) -> bool {
        self.config.write_on_push
    }

    /// Receive buffers; every buffer taken is covered by a budget reservation.
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// Reserves budget for, and takes, a pooled buffer of `len` bytes.
    pub async fn reserve_buffer(&self, len: usize) -> Result<(Reservation, PooledBuf), StoreError> {
        let reservation = self.budget.reserve(class_size(len) as u64).await?;
        Ok((reservation, self.pool.take(len)))
    }

    /// A buffer of the pool for a frame whose memory is reserved as it
    /// arrives ([`Store::top_up`] once it has).
    pub fn take_buffer(&self, len: usize) -> PooledBuf {
        self.pool.take(len)
    }

    /// Grows `held` to the size class of a `len`-byte buffer: what the
    /// buffer really occupies.
    pub async fn top_up(
        &self,
        mut held: Reservation,
        len: usize,
    ) -> Result<Reservation, StoreError> {
        let missing = (class_size(len) as u64).saturating_sub(held.bytes());
        held.merge(self.budget.reserve(missing).await?);
        Ok(held)
    }

    /// Whether memory use calls for the flusher; wakes it if so.
    pub fn check_pressure(&self) {
        if self.budget.used() > self.flush_start {
            self.budget.pressure().notify_one();
        }
    }

    /// Refuses new data when it could not be kept: memory is past the flush
    /// watermark, no local directory has room for a flush, and the object
    /// store is absent or failing.
    pub fn check_room(&self) -> TierResult<()> {
        if self.budget.used() <= self.flush_start {
            return Ok(());
        }
        let flush = self.budget.used().saturating_sub(self.flush_stop).max(1);
        if self
            .tiers
            .dirs
            .choose(flush.min(self.object.part_size.as_u64()), None)
            .is_some()
        {
            return Ok(());
        }
        match &self.tiers.object {
            Some(object) if object.is_available() => Ok(()),
            Some(object) => Err(StoreError::StorageFull {
                object_store: Some(ObjectStoreState {
                    url: object.url().to_string(),
                    last_error: object.last_error().unwrap_or_default(),
                }),
            }
            .into()),
            None => Err(StoreError::StorageFull { object_store: None }.into()),
        }
    }

    /// Whether the worker's tiers are close to full: no healthy local
    /// directory has room for another memory budget's worth of data, and no
    /// available object store would take it. Pushes are still accepted while
    /// they fit ([`Store::check_room`]); producers are asked to split.
    pub fn short_of_room(&self) -> bool {
        let want = self.config.memory_budget.as_u64().max(1);
        if self.tiers.dirs.choose(want, None).is_some() {
            return false;
        }
        !self.tiers.object.as_ref().is_some_and(|o| o.is_available())
    }

    /// Creates a partition. Creating the same partition again with the same
    /// shape is accepted (a retried request); another shape is an error.
    /// Files are made at the first flush.
    pub fn create(
        &self,
        key: PartitionKey,
        num_subpartitions: u32,
        broadcast_only: bool,
        continuation: bool,
    ) -> TierResult<Arc<Partition>> {
        if num_subpartitions == 0 {
            return Err(TierError::bad_input(format!(
                "{key}: a partition needs at least one subpartition"
            )));
        }
        if self.held_back.contains(&key) {
            return Err(TierError::unavailable(format!(
                "{key} was sealed here and is held back: a file of it may be on a data directory missing at start"
            )));
        }
        if !self.partitions.contains_key(&key) && self.objects_being_deleted(&key) {
            return Err(TierError::unavailable(format!(
                "{key}: the objects of an earlier partition under this key are still being deleted; retry"
            )));
        }
        if let Some(existing) = self.partitions.get(&key) {
            let meta = existing.meta();
            if meta.num_subpartitions == num_subpartitions
                && meta.broadcast_only == broadcast_only
                && meta.continuation == continuation
            {
                return Ok(Arc::clone(&existing));
            }
            return Err(TierError::bad_input(format!(
                "{key} already exists with {} subpartitions (broadcast only: {})",
                meta.num_subpartitions, meta.broadcast_only
            )));
        }
        let partition = Arc::new(Partition::new(PartitionMeta {
            key: key.clone(),
            num_subpartitions,
            broadcast_only,
            continuation,
        }));
        self.insert(key, partition, None)
    }

    /// [`Store::create`], waiting up to `wait` while an earlier partition
    /// under the same key is still being deleted (a release, a hand-off).
    pub async fn create_after_release(
        &self,
        key: PartitionKey,
        num_subpartitions: u32,
        broadcast_only: bool,
        continuation: bool,
        wait: Duration,
    ) -> TierResult<Arc<Partition>> {
        let deadline = clock::now() + wait;
        loop {
            let done = self.release_done.notified();
            if !self.is_releasing(&key) {
                break;
            }
            if clock::timeout_at(deadline, done).await.is_err() {
                break;
            }
        }
        // The released partition's objects are deleted in the background,
        // under the same names the new one's would take: wait for that too
        // (polled: it may take a store's retries).
        while self.objects_being_deleted(&key) && clock::now() < deadline {
            clock::sleep(Duration::from_millis(20)).await;
        }
        self.create(key, num_subpartitions, broadcast_only, continuation)
    }

    /// Whether objects of a released partition under `key` are queued for
    /// deletion or being deleted. (A dropped job's prefix is not waited
    /// for: a job is not created again under its id once dropped, and its
    /// deletion keeps the objects of partitions held meanwhile.)
    fn objects_being_deleted(&self, key: &PartitionKey) -> bool {
        self.tiers
            .object
            .as_ref()
            .is_some_and(|object| self.deletions.is_pending(&object.partition_prefix(key)))
    }

    fn is_releasing(&self, key: &PartitionKey) -> bool {
        self.releasing
            .lock()
            .expect("releasing lock poisoned")
            .contains(key)
    }

    /// Adds `partition` unless another is there already (a concurrent create
    /// or adoption won): returns the one held, and wakes readers waiting for
    /// it. A new partition must fit the partition quotas and the metadata
    /// budget, and its key must not be still being deleted. `charge`: what
    /// its metadata is already charged (an adopted index), else it is
    /// charged here.
    fn insert(
        &self,
        key: PartitionKey,
        partition: Arc<Partition>,
        charge: Option<Charge>,
    ) -> TierResult<Arc<Partition>> {
        let releasing = self.releasing.lock().expect("releasing lock poisoned");
        if let Some(held) = self.partitions.get(&key) {
            return Ok(Arc::clone(&held));
        }
        if releasing.contains(&key) {
            return Err(TierError::unavailable(format!(
                "{key}: an earlier partition under this key is still being deleted; retry"
            )));
        }
        let limits = &self.config.limits;
        let held = self.partitions.len() as u64;
        if held >= u64::from(limits.max_partitions) {
            return Err(TierError::unavailable(format!(
                "{key}: this worker holds {held} partitions, its limit (limits.max_partitions)"
            )));
        }
        let mut jobs = self.job_partitions.lock().expect("job count lock poisoned");
        let of_job = jobs.get(&key.job).copied().unwrap_or(0);
        if of_job >= u64::from(limits.max_partitions_per_job) {
            return Err(TierError::unavailable(format!(
                "{key}: this worker holds {of_job} partitions of job {}, its limit per job (limits.max_partitions_per_job)",
                key.job
            )));
        }
        let charge = match charge {
            Some(charge) => charge,
            None => self
                .metadata
                .charge(partition.metadata_cost(), &format!("partition {key}"))?,
        };
        partition.set_charge(charge);
        *jobs.entry(key.job.clone()).or_default() += 1;
        drop(jobs);
        self.partitions.insert(key.clone(), Arc::clone(&partition));
        drop(releasing);
        self.forget_released(&key);
        self.created.notify_waiters();
        Ok(partition)
    }

    /// Takes `key`'s partition out of the map; its key stays in `releasing`
    /// until the returned guard is dropped (its deletion is over).
    fn remove(&self, key: &PartitionKey) -> Option<(Arc<Partition>, Releasing<'_>)> {
        let mut releasing = self.releasing.lock().expect("releasing lock poisoned");
        let (_, partition) = self.partitions.remove(key)?;
        releasing.insert(key.clone());
        let mut jobs = self.job_partitions.lock().expect("job count lock poisoned");
        if let Some(count) = jobs.get_mut(&key.job) {
            *count -= 1;
            if *count == 0 {
                jobs.remove(&key.job);
            }
        }
        Some((
            partition,
            Releasing {
                store: self,
                key: key.clone(),
            },
        ))
    }

    pub fn get(&self, key: &PartitionKey) -> TierResult<Arc<Partition>> {
        self.partitions
            .get(key)
            .map(|p| Arc::clone(&p))
            .ok_or_else(|| TierError::not_found(format!("{key} is not on this worker")))
    }

    /// Like [`Store::get`], but waits up to `wait` for a partition that is not
    /// created yet (a consumer may start before its producer). A released
    /// partition fails at once.
    pub async fn get_or_wait(
        &self,
        key: &PartitionKey,
        wait: Duration,
    ) -> TierResult<Arc<Partition>> {
        let deadline = clock::now() + wait;
        loop {
            let created = self.created.notified();
            if let Ok(partition) = self.get(key) {
                return Ok(partition);
            }
            if self
                .released
                .lock()
                .expect("released lock poisoned")
                .keys
                .contains(key)
            {
                return Err(TierError::not_found(format!("{key} was released")));
            }
            if self.held_back.contains(key) {
                return Err(TierError::not_found(format!(
                    "{key} is held back: a file of it may be on a data directory missing at start"
                )));
            }
            if clock::timeout_at(deadline, created).await.is_err() {
                return self.get(key);
            }
        }
    }

    /// Flushes a partition through the tiers.
    pub async fn flush(&self, partition: &Arc<Partition>) -> TierResult<()> {
        partition.flush(&self.tiers).await
    }

    /// Seals a partition: its data and index are durable when this returns
    /// Ok, on the local disks, and with durability = "object-store" in the
    /// object store too (see [`Store::make_durable`]).
    pub async fn seal(&self, partition: &Arc<Partition>) -> TierResult<()> {
        partition.seal(&self.tiers).await?;
        self.make_durable_or_later(partition).await;
        Ok(())
    }

    /// Ends this worker's part of a split partition (see [`Partition::split`]).
    pub async fn split(&self, partition: &Arc<Partition>, next: Forward) -> TierResult<()> {
        partition.split(&self.tiers, next).await?;
        self.make_durable_or_later(partition).await;
        Ok(())
    }

    /// Migrates one partition's local data to the object store now.
    pub async fn migrate(&self, partition: &Arc<Partition>) -> TierResult<u64> {
        partition.migrate(&self.tiers).await
    }

    /// Compacts a sealed partition's object extents now (see
    /// [`Partition::compact`]); returns the new object's length (0: nothing
    /// to do). The objects it replaced are deleted by the migrator once no
    /// read resolved before the swap can still want them.
    pub async fn compact(&self, partition: &Arc<Partition>) -> TierResult<u64> {
        let compacted = partition.compact(&self.tiers).await?;
        if !compacted.replaced.is_empty() {
            let at = clock::now() + self.replaced_grace();
            let mut replaced = self.replaced.lock().expect("replaced lock poisoned");
            replaced.extend(compacted.replaced.into_iter().map(|key| (at, key)));
        }
        Ok(compacted.bytes)
    }

    /// How long a read resolved to an object may still fetch it: every
    /// attempt of its GET, and one more request time.
    fn replaced_grace(&self) -> Duration {
        self.object
            .request_timeout
            .saturating_mul(self.object.retries.saturating_add(2))
    }

    /// Deletes the replaced objects whose grace has passed (all of them
    /// when `all`); returns how many were deleted.
    pub async fn delete_replaced(&self, all: bool) -> usize {
        let Ok(object) = self.tiers.object() else {
            return 0;
        };
        let now = clock::now();
        let due: Vec<object_store::path::Path> = {
            let mut replaced = self.replaced.lock().expect("replaced lock poisoned");
            let (due, later): (Vec<_>, Vec<_>) =
                replaced.drain(..).partition(|(at, _)| all || *at <= now);
            *replaced = later;
            due.into_iter().map(|(_, key)| key).collect()
        };
        let mut deleted = 0;
        for key in due {
            match object.delete(&key).await {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(object = %key, error = %e,
                    "could not delete an object replaced by compaction; the orphan cleanup at the next start deletes it"),
            }
        }
        deleted
    }

    async fn compact_logged(&self, partition: &Arc<Partition>) {
        match self.compact(partition).await {
            Ok(0) => {}
            Ok(bytes) => {
                tracing::debug!(partition = %partition.key(), bytes, "compacted in the object store")
            }
            Err(e) => {
                tracing::warn!(partition = %partition.key(), error = %e, "compaction failed; the partition's objects stay as they are and the compaction is retried later")
            }
        }
    }

    /// Releases a partition and deletes its data in every tier. Not found is an error.
    pub async fn release(&self, key: &PartitionKey) -> TierResult<()> {
        let Some((partition, _deleting)) = self.remove(key) else {
            return Err(TierError::not_found(format!("{key} is not on this worker")));
        };
        // Its index's memory goes first, then its key is remembered in it.
        partition.mark_released();
        self.remember_released(key.clone());
        self.delete_storage(key, partition).await
    }

    /// Takes a partition another worker has adopted (see [`Store::adopt`])
    /// off this one: from now on new readers are told at once that it is
    /// not here. Returns it for [`Store::finish_hand_off`].
    pub fn take_for_hand_off(&self, key: &PartitionKey) -> TierResult<Arc<Partition>> {
        let Some((partition, deleting)) = self.remove(key) else {
            return Err(TierError::not_found(format!("{key} is not on this worker")));
        };
        // The key stays being deleted until `finish_hand_off` is done.
        std::mem::forget(deleting);
        self.remember_released(key.clone());
        Ok(partition)
    }

    /// Lets the readers already streaming a handed-over partition finish
    /// (for up to `readers_wait`; each open read stream holds a reference,
    /// and `partition` must be the caller's only one), then deletes this
    /// worker's copy in every tier.
    pub async fn finish_hand_off(
        &self,
        partition: Arc<Partition>,
        readers_wait: Duration,
    ) -> TierResult<()> {
        let _deleting = Releasing {
            store: self,
            key: partition.key().clone(),
        };
        let deadline = clock::now() + readers_wait;
        while Arc::strong_count(&partition) > 1 && clock::now() < deadline {
            clock::sleep(Duration::from_millis(100)).await;
        }
        let key = partition.key().clone();
        if Arc::strong_count(&partition) > 1 {
            tracing::warn!(partition = %key, "readers still streaming a handed-over partition; deleting this worker's copy anyway");
        }
        self.delete_storage(&key, partition).await
    }

    /// Adopts a sealed partition whose every byte is in the object store,
    /// from the persisted index a decommissioning worker sent: its objects are
    /// copied under this worker's prefix (so each worker deletes only what
    /// is under its own), its index is written here, and it is served from
    /// now on. A worker that already holds a part of the partition refuses.
    pub async fn adopt(
        &self,
        expected: &PartitionKey,
        encoded: &[u8],
    ) -> TierResult<Arc<Partition>> {
        let Some(object) = &self.tiers.object else {
            return Err(TierError::unavailable(
                "this worker has no object store: it cannot adopt partitions",
            ));
        };
        let mut persisted = PersistedIndex::decode(encoded)?;
        let key = persisted.key.clone();
        if &key != expected {
            return Err(TierError::bad_input(format!(
                "the handed-over index is of {key}, not {expected}"
            )));
        }
        if !persisted.wholly_in_object_store() {
            return Err(TierError::bad_input(format!(
                "{key}: a handed-over partition must be wholly in the object store"
            )));
        }
        let from = persisted.object_prefix.clone();
        if !persisted.objects.is_empty() && !object.is_store_prefix(&from) {
            return Err(TierError::bad_input(format!(
                "{key}: object prefix {from:?} is not a partition of store {}",
                object.url()
            )));
        }
        // A worker holds one part of a partition: it may hold another part
        // of this one already (or have adopted it, and the answer was lost).
        // The old worker then tries another; a copy left here goes with the job.
        if self.partitions.contains_key(&key) {
            return Err(TierError::bad_input(format!(
                "{key}: this worker already holds a part of it"
            )));
        }
        let Some(index_dir) = self.tiers.dirs.any_healthy(None).first().copied() else {
            return Err(TierError::unavailable(format!(
                "{key}: no healthy data directory for its index"
            )));
        };
        let to = object.partition_prefix(&key);
        let _adopting = Adopting::new(&self.adopting, &key);
        for blob in &persisted.objects {
            object
                .copy(
                    &ObjectTier::object_key(&from, blob.id),
                    &ObjectTier::object_key(&to, blob.id),
                )
                .await
                .map_err(|e| e.context(format!("adopt {key}")))?;
        }
        persisted.object_prefix = if persisted.objects.is_empty() {
            String::new()
        } else {
            to.clone()
        };
        let (objects, bytes) = (
            persisted.objects.len() as u64,
            persisted.objects.iter().map(|o| o.len).sum::<u64>(),
        );
        // A first part is located through the masters from now on (its
        // descriptor names the old worker).
        persisted.index.relocated = !persisted.index.continuation;
        let partition = Arc::new(Partition::recovered(persisted, Vec::new(), index_dir));
        // Charged before anything is copied; refused past the budget.
        let charge = self.metadata.charge(
            partition.metadata_cost(),
            &format!("adopted partition {key}"),
        )?;
        if let Err(e) = partition.persist_now(&self.tiers).await {
            let _ = object.delete_prefix(&to).await;
            return Err(e.context(format!("adopt {key}")));
        }
        object
            .counters
            .objects
            .fetch_add(objects, Ordering::Relaxed);
        object.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.insert(key, partition, Some(charge))
    }

    /// Deletes a partition taken out of the map, in every tier.
    async fn delete_storage(
        &self,
        key: &PartitionKey,
        partition: Arc<Partition>,
    ) -> TierResult<()> {
        partition.mark_released();
        // Wait for a flush, seal or migration commit in progress so it cannot
        // recreate a file after we delete it; then take what it left.
        partition.wait_idle().await;
        let (object_count, _) = partition.object_totals();
        let (files, index_dir, object_prefix, object_bytes) = partition.take_storage();
        partition::delete_files(&self.tiers, files).await;
        let mut index_dirs: Vec<PathBuf> = index_dir
            .map(|d| self.tiers.dirs.get(d).path.clone())
            .into_iter()
            .collect();
        // An index may have been written to another directory by an earlier seal.
        index_dirs.extend(self.tiers.dirs.iter().map(|(_, d)| d.path.clone()));
        let key_for_paths = key.clone();
        tokio::task::spawn_blocking(move || {
            for dir in index_dirs {
                remove_if_exists(&partition::index_path(&dir, &key_for_paths))?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| TierError::with_source(ErrorKind::Internal, "release task failed", e))?
        .map_err(|e| {
            TierError::with_source(ErrorKind::Internal, format!("delete index of {key}"), e)
        })?;
        // A durable part's copy and index are under its prefix even when its
        // local index names no object (it was recovered after a restart).
        let object_prefix = match (&self.tiers.object, object_prefix) {
            (Some(object), None) if self.durable() => Some(object.partition_prefix(key)),
            (_, prefix) => prefix,
        };
        if let (Some(object), Some(prefix)) = (&self.tiers.object, object_prefix) {
            let _ = object
                .counters
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(object_bytes))
                });
            let _ =
                object
                    .counters
                    .objects
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                        Some(o.saturating_sub(object_count))
                    });
            // In the background: a slow store holds up no release.
            self.deletions.enqueue(prefix);
        }
        Ok(())
    }

    /// Releases every partition of `job`, removes its (empty) directories and
    /// queues the deletion of every object under the job's prefix (done in
    /// the background: see `deletions.rs`).
    pub async fn drop_job(&self, job: &JobId) -> TierResult<usize> {
        let keys: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|e| &e.key().job == job)
            .map(|e| e.key().clone())
            .collect();
        let count = keys.len();
        for key in keys {
            match self.release(&key).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::PartitionNotFound => {}
                Err(e) => return Err(e),
            }
        }
        let dirs: Vec<PathBuf> = self
            .tiers
            .dirs
            .iter()
            .map(|(_, d)| d.path.join(names::job_name(job)))
            .collect();
        tokio::task::spawn_blocking(move || {
            for dir in dirs {
                // Only an empty directory goes: a file Terrace did not write stays.
                let _ = std::fs::remove_dir(&dir);
            }
        })
        .await
        .map_err(|e| TierError::with_source(ErrorKind::Internal, "drop job task failed", e))?;
        if let Some(object) = &self.tiers.object {
            self.deletions.enqueue(object.job_prefix(job));
        }
        Ok(count)
    }

    /// Remembers a released key, so its late readers fail fast. Bounded by
    /// count and by the metadata budget: when either is short the oldest
    /// memories go (all at once), and when the budget is still short the
    /// key is not remembered (its readers then wait for it, then fail).
    fn remember_released(&self, key: PartitionKey) {
        let mut released = self.released.lock().expect("released lock poisoned");
        let cost =
            cost::RELEASED_KEY + (key.job.as_bytes().len() + key.partition.as_bytes().len()) as u64;
        let mut fits = released.keys.len() < MAX_RELEASED_KEYS
            && released.charge.grow(cost, "a released key").is_ok();
        if !fits {
            released.keys = HashSet::new();
            let all = released.charge.bytes();
            released.charge.shrink(all);
            fits = released.charge.grow(cost, "a released key").is_ok();
        }
        if fits && !released.keys.insert(key) {
            released.charge.shrink(cost);
        }
    }

    fn forget_released(&self, key: &PartitionKey) {
        let mut released = self.released.lock().expect("released lock poisoned");
        if released.keys.remove(key) {
            let cost = cost::RELEASED_KEY
                + (key.job.as_bytes().len() + key.partition.as_bytes().len()) as u64;
            released.charge.shrink(cost);
        }
    }

    /// Jobs with partitions held here.
    pub fn job_count(&self) -> usize {
        self.job_partitions
            .lock()
            .expect("job count lock poisoned")
            .len()
    }

    /// Each job with partitions held here, and how many.
    pub fn jobs(&self) -> Vec<(JobId, u64)> {
        let jobs = self.job_partitions.lock().expect("job count lock poisoned");
        jobs.iter().map(|(job, n)| (job.clone(), *n)).collect()
    }

    /// Partitions held (open and sealed).
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Partitions held by state (`[open, sealed, failed]`) and their bytes
    /// summed per tier, in one pass: what `/metrics` and `/api/v1/worker`
    /// report.
    pub fn census(&self) -> ([u64; 3], TierBytes) {
        let mut states = [0u64; 3];
        let mut total = TierBytes::default();
        for entry in self.partitions.iter() {
            let partition = entry.value();
            match partition.state() {
                PartitionState::Open => states[0] += 1,
                PartitionState::Sealed => states[1] += 1,
                PartitionState::Failed => states[2] += 1,
                PartitionState::Released => {}
            }
            let bytes = partition.tier_bytes();
            total.memory += bytes.memory;
            total.local += bytes.local;
            total.object += bytes.object;
        }
        (states, total)
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// Bytes held in each tier, over all partitions.
    pub fn tier_bytes(&self) -> TierBytes {
        self.partitions()
            .iter()
            .fold(TierBytes::default(), |acc, p| {
                let b = p.tier_bytes();
                TierBytes {
                    memory: acc.memory + b.memory,
                    local: acc.local + b.local,
                    object: acc.object + b.object,
                }
            })
    }

    /// Flushes partitions with pending data, largest first, whenever memory
    /// use passes the high watermark (or a reservation had to wait), until it
    /// falls under the low watermark. Runs until `cancel`.
    pub async fn run_flusher(self: Arc<Self>, cancel: CancellationToken) {
        let pressure = Arc::clone(self.budget.pressure());
        loop {
            let woken = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = pressure.notified() => true,
                _ = clock::sleep(Duration::from_millis(100)) => false,
            };
            if !woken && self.budget.used() <= self.flush_start {
                continue;
            }
            let mut candidates: Vec<(u64, Arc<Partition>)> = self
                .partitions
                .iter()
                .map(|e| (e.pending_bytes(), Arc::clone(e.value())))
                .filter(|(pending, _)| *pending > 0)
                .collect();
            candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
            for (_, partition) in candidates {
                // A failure fails that partition only (logged where it happens).
                let _ = partition.flush(&self.tiers).await;
                if self.budget.used() <= self.flush_stop {
                    break;
                }
            }
        }
    }

    /// Deletes objects no partition refers to (left by a crash, a failed
    /// migration, or a request that timed out and landed later), then moves
    /// sealed partitions to the object store when they go cold or local use
    /// passes the high watermark. Runs until `cancel`.
    pub async fn run_migrator(self: Arc<Self>, cancel: CancellationToken) {
        if self.tiers.object.is_none() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = self.drop_adopted_elsewhere() => {}
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = clock::sleep(self.object.migration_interval) => {}
            }
            let store = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || store.tiers.dirs.refresh()).await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.migrate_once() => {}
            }
        }
    }

    /// One pass of the migrator.
    pub async fn migrate_once(&self) {
        self.make_parts_durable().await;
        let cold_after = self.object.cold_after;
        let mut cold: Vec<Arc<Partition>> = self
            .partitions()
            .into_iter()
            .filter(|p| p.migration_candidate(cold_after, false).is_some())
            .collect();
        let (used, capacity) = self.tiers.dirs.usage();
        let high = (capacity as f64 * self.object.local_high_watermark) as u64;
        let low = (capacity as f64 * self.object.local_low_watermark) as u64;
        if used > high {
            let mut oldest: Vec<(std::time::Instant, Arc<Partition>)> = self
                .partitions()
                .into_iter()
                .filter_map(|p| p.migration_candidate(cold_after, true).map(|t| (t, p)))
                .collect();
            oldest.sort_by_key(|(t, _)| *t);
            for (_, p) in oldest {
                if self.tiers.dirs.usage().0 <= low {
                    break;
                }
                self.migrate_logged(&p).await;
                cold.retain(|c| !Arc::ptr_eq(c, &p));
            }
        }
        for p in cold {
            self.migrate_logged(&p).await;
        }
        // Sealed partitions whose object extents overflow flushes wrote,
        // subpartitions interleaved: laid out again segment by segment.
        if !self.durable() {
            let fragmented: Vec<Arc<Partition>> = self
                .partitions()
                .into_iter()
                .filter(|p| p.compaction_candidate())
                .collect();
            for p in fragmented {
                self.compact_logged(&p).await;
            }
        }
        self.delete_replaced(false).await;
    }

    async fn migrate_logged(&self, partition: &Arc<Partition>) {
        match partition.migrate(&self.tiers).await {
            Ok(0) => {}
            Ok(bytes) => {
                tracing::debug!(partition = %partition.key(), bytes, "migrated to the object store")
            }
            Err(e) => {
                tracing::warn!(partition = %partition.key(), error = %e, "migration failed; the local copy stays and the migration is retried later")
            }
        }
    }

    /// Deletes every object under this worker's root that no partition
    /// refers to. Objects of partitions still being written are left alone.
    pub async fn delete_orphan_objects(&self) -> TierResult<usize> {
        let object = self.tiers.object()?;
        if self.tiers.dirs.incomplete() {
            // An object no index here claims may belong to one on the missing directory.
            tracing::info!(
                "a data directory is missing: objects no partition here refers to are kept"
            );
            return Ok(0);
        }
        self.delete_unreferenced(object.root()).await
    }

    /// Deletes every object under `prefix` (inside this worker's root) that
    /// no partition held here refers to: a partition created again under a
    /// released key, or being adopted, keeps its objects.
    pub async fn delete_unreferenced(&self, prefix: &str) -> TierResult<usize> {
        let object = self.tiers.object()?;
        let listed = object.list(prefix).await?;
        let mut deleted = 0;
        for (key, _) in listed {
            if !self.object_in_use(object, key.as_ref()) {
                object.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Whether the object `key` (under this worker's root) belongs to a
    /// partition held, or being adopted, here.
    fn object_in_use(&self, object: &ObjectTier, key: &str) -> bool {
        let rest = key
            .strip_prefix(object.root())
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or_default();
        let mut parts = rest.split('/');
        let (job, partition, id) = (parts.next(), parts.next(), parts.next());
        let (Some(job), Some(partition)) = (job, partition) else {
            return false;
        };

        let named = |k: &PartitionKey| {
            names::job_name(&k.job) == job && names::partition_name(&k.partition) == partition
        };
        if self
            .adopting
            .lock()
            .expect("adopting lock poisoned")
            .iter()
            .any(named)
        {
            return true;
        }
        let owner = self.partitions().into_iter().find(|p| named(p.key()));
        // Replaced by a compaction of a partition still held: kept through
        // its grace (`delete_replaced`), for reads resolved before the swap.
        if owner.is_some()
            && self
                .replaced
                .lock()
                .expect("replaced lock poisoned")
                .iter()
                .any(|(_, k)| k.as_ref() == key)
        {
            return true;
        }
        match owner {
            // Not sealed yet (writes may be in flight) or migrating: its own business.
            Some(p) if !p.is_sealed() => true,
            Some(p) => {
                let (_, ids) = p.object_keys();
                if id == Some(object::INDEX_OBJECT) || id == Some(object::ADOPTED_MARKER) {
                    return true;
                }
                let id: Option<u32> = id.and_then(|i| i.parse().ok());
                p.is_migrating() || id.is_some_and(|i| ids.contains(&i))
            }
            None => false,
        }
    }

    /// Finds the sealed partitions in the data directories and deletes the
    /// files of the others. Only Terrace-named files are touched. Returns
    /// the partitions held back (a file missing while a directory is too).
    ///
    /// Everything is looked at before anything is deleted, and any error but
    /// not-found stops the start then: a file that cannot be read now (too
    /// many open files, permissions, an I/O error) is not garbage.
    fn recover(&self) -> TierResult<HashSet<PartitionKey>> {
        let incomplete = self.tiers.dirs.incomplete();
        // Newest valid index per partition, and every Terrace data file.
        let mut indexes: HashMap<PartitionKey, (PersistedIndex, usize, PathBuf)> = HashMap::new();
        let mut stale_indexes: Vec<PathBuf> = Vec::new();
        let mut data_files: HashMap<(String, String, u32), (usize, PathBuf, u64)> = HashMap::new();
        let mut job_dirs: Vec<PathBuf> = Vec::new();
        for (d, dir) in self.tiers.dirs.iter() {
            if dir.is_missing() {
                continue;
            }
            for (path, name) in list_dir(&dir.path)? {
                let is_dir = match std::fs::metadata(&path) {
                    Ok(meta) => meta.is_dir(),
                    // Gone since the listing, or a dangling link: not Terrace's.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => return Err(recovery_stopped("inspect", &path, &e)),
                };
                if !is_dir || !names::is_name(&name) {
                    if name != MARKER {
                        tracing::info!(file = %path.display(), "leaving a file Terrace did not write");
                    }
                    continue;
                }
                job_dirs.push(path.clone());
                for (file_path, file_name) in list_dir(&path)? {
                    let Some(named) = parse_name(&file_name) else {
                        tracing::info!(file = %file_path.display(), "leaving a file Terrace did not write");
                        continue;
                    };
                    let meta = match std::fs::symlink_metadata(&file_path) {
                        Ok(meta) => meta,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(recovery_stopped("inspect", &file_path, &e)),
                    };
                    if !meta.is_file() {
                        return Err(TierError::internal(format!(
                            "recovery stopped, nothing was deleted: {} has a name Terrace gives its files but is not a regular file; move it away and start again",
                            file_path.display()
                        )));
                    }
                    match named {
                        Named::Index(partition) => {
                            let persisted = match load_index(&file_path, &name, &partition) {
                                Ok(persisted) => persisted,
                                Err(LoadError::Io(e))
                                    if e.kind() == std::io::ErrorKind::NotFound =>
                                {
                                    continue;
                                }
                                Err(LoadError::Io(e)) => {
                                    return Err(recovery_stopped("read", &file_path, &e));
                                }
                                Err(LoadError::Invalid(e)) => {
                                    tracing::warn!(index = %file_path.display(), error = %e, "dropping an unreadable partition index");
                                    stale_indexes.push(file_path);
                                    continue;
                                }
                            };
                            let key = persisted.key.clone();
                            let newer = indexes
                                .get(&key)
                                .is_none_or(|(old, _, _)| persisted.generation > old.generation);
                            if newer {
                                if let Some((_, _, old)) =
                                    indexes.insert(key, (persisted, d, file_path))
                                {
                                    stale_indexes.push(old);
                                }
                            } else {
                                stale_indexes.push(file_path);
                            }
                        }
                        Named::IndexTmp => stale_indexes.push(file_path),
                        Named::Data(partition, id) => {
                            data_files
                                .insert((name.clone(), partition, id), (d, file_path, meta.len()));
                        }
                    }
                }
            }
        }
        let mut held_back = HashSet::new();
        for (key, (persisted, index_dir, index_file)) in indexes {
            let (job, part) = (
                names::job_name(&key.job),
                names::partition_name(&key.partition),
            );
            let mut found = Vec::new();
            let mut missing = None;
            for blob in &persisted.files {
                match data_files.get(&(job.clone(), part.clone(), blob.id)) {
                    Some((d, path, len)) if *len >= blob.len => found.push((
                        *blob,
                        *d,
                        handles::DataFile::existing(&self.tiers.handles, path.clone()),
                    )),
                    Some((_, path, len)) => {
                        missing = Some(format!(
                            "data file {} has {len} bytes, index needs {}",
                            path.display(),
                            blob.len
                        ))
                    }
                    None => missing = Some(format!("data file {} is missing", blob.id)),
                }
            }
            if let Some(problem) = missing {
                if incomplete {
                    // The file may be on the missing directory: keep it all.
                    tracing::warn!(partition = %key, %problem, "not serving a partition whose file may be on a missing data directory; nothing of it is deleted");
                    for blob in &persisted.files {
                        data_files.remove(&(job.clone(), part.clone(), blob.id));
                    }
                    held_back.insert(key);
                    continue;
                }
                tracing::warn!(partition = %key, %problem, "dropping an unrecoverable partition");
                stale_indexes.push(index_file);
                continue;
            }
            for (blob, d, _) in &found {
                data_files.remove(&(job.clone(), part.clone(), blob.id));
                self.tiers.dirs.get(*d).add_existing(blob.len);
            }
            tracing::debug!(partition = %key, "recovered sealed partition");
            self.partitions.insert(
                key,
                Arc::new(Partition::recovered(persisted, found, index_dir)),
            );
        }
        tracing::info!(
            recovered = self.partitions.len(),
            held_back = held_back.len(),
            "recovered sealed partitions"
        );
        if incomplete {
            tracing::warn!(
                unclaimed_data_files = data_files.len(),
                stale_indexes = stale_indexes.len(),
                "a data directory is missing: recovery deletes nothing"
            );
            return Ok(held_back);
        }
        // Whatever no index claims belonged to partitions that were never sealed.
        for (_, (_, path, _)) in data_files {
            tracing::info!(file = %path.display(), "deleting data of a partition that was not sealed");
            if let Err(e) = remove_if_exists(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete");
            }
        }
        for path in stale_indexes {
            if let Err(e) = remove_if_exists(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete");
            }
        }
        for dir in job_dirs {
            // Only empty ones go.
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(held_back)
    }
}

/// The error that stops recovery at a file it cannot look at.
fn recovery_stopped(what: &str, path: &Path, error: &std::io::Error) -> TierError {
    TierError::internal(format!(
        "recovery stopped, nothing was deleted: {what} {}: {error}. Fix the cause and start again",
        path.display()
    ))
}

/// The entries of `dir` (path and name). Any error stops recovery.
fn list_dir(dir: &Path) -> TierResult<Vec<(PathBuf, String)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| recovery_stopped("list", dir, &e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| recovery_stopped("list", dir, &e))?;
        out.push((
            entry.path(),
            entry.file_name().to_string_lossy().into_owned(),
        ));
    }
    Ok(out)
}

/// Most released keys remembered at once.
const MAX_RELEASED_KEYS: usize = 100_000;

/// A key whose partition's storage is being deleted; the key can be created
/// again once this is dropped.
struct Releasing<'a> {
    store: &'a Store,
    key: PartitionKey,
}

impl Drop for Releasing<'_> {
    fn drop(&mut self) {
        self.store
            .releasing
            .lock()
            .expect("releasing lock poisoned")
            .remove(&self.key);
        self.store.release_done.notify_waiters();
    }
}

/// Marks a partition as being adopted while it lives.
struct Adopting<'a> {
    set: &'a Mutex<HashSet<PartitionKey>>,
    key: PartitionKey,
}

impl<'a> Adopting<'a> {
    fn new(set: &'a Mutex<HashSet<PartitionKey>>, key: &PartitionKey) -> Self {
        set.lock()
            .expect("adopting lock poisoned")
            .insert(key.clone());
        Adopting {
            set,
            key: key.clone(),
        }
    }
}

impl Drop for Adopting<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .expect("adopting lock poisoned")
            .remove(&self.key);
    }
}

enum Named {
    Index(String),
    IndexTmp,
    Data(String, u32),
}

/// Recognizes the names Terrace gives files in a job directory.
fn parse_name(name: &str) -> Option<Named> {
    if let Some(stem) = name.strip_suffix(".index.tmp") {
        return names::is_name(stem).then_some(Named::IndexTmp);
    }
    if let Some(stem) = name.strip_suffix(".index") {
        return names::is_name(stem).then(|| Named::Index(stem.to_string()));
    }
    let stem = name.strip_suffix(".data")?;
    match stem.split_once('.') {
        None => names::is_name(stem).then(|| Named::Data(stem.to_string(), 0)),
        Some((partition, id)) => {
            let id: u32 = id.parse().ok().filter(|&i| i > 0)?;
            (names::is_name(partition) && id.to_string() == stem[partition.len() + 1..])
                .then(|| Named::Data(partition.to_string(), id))
        }
    }
}

/// Why an index could not be loaded: reading it failed (not garbage), or
/// what was read is not a valid index of this partition.
enum LoadError {
    Io(std::io::Error),
    Invalid(TierError),
}

fn load_index(
    path: &Path,
    job_name: &str,
    partition_name: &str,
) -> Result<PersistedIndex, LoadError> {
    let bytes = std::fs::read(path).map_err(LoadError::Io)?;
    let persisted = PersistedIndex::decode(&bytes).map_err(LoadError::Invalid)?;
    if names::job_name(&persisted.key.job) != job_name
        || names::partition_name(&persisted.key.partition) != partition_name
    {
        return Err(LoadError::Invalid(
            StoreError::Corrupt {
                what: format!("partition index {}", path.display()),
                detail: "it names another partition than its path".to_string(),
            }
            .into(),
        ));
    }
    Ok(persisted)
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_terrace_names_are_recognized() {
        assert!(matches!(parse_name("0a1b.index"), Some(Named::Index(p)) if p == "0a1b"));
        assert!(matches!(
            parse_name("0a1b.index.tmp"),
            Some(Named::IndexTmp)
        ));
        assert!(matches!(parse_name("0a1b.data"), Some(Named::Data(p, 0)) if p == "0a1b"));
        assert!(matches!(parse_name("0a1b.7.data"), Some(Named::Data(p, 7)) if p == "0a1b"));
        let long = format!("{}-{}", "ab".repeat(16), "cd".repeat(16));
        assert!(
            matches!(parse_name(&format!("{long}.3.data")), Some(Named::Data(p, 3)) if p == long)
        );
        assert!(matches!(parse_name(&format!("{long}.index")), Some(Named::Index(p)) if p == long));
        for foreign in [
            "notes.txt",
            "0a1b.0.data",
            "0a1b.07.data",
            "0A1B.data",
            "0a1b.x.data",
            ".data",
            "0a1b.index.bak",
            "zz.index",
            "abcd-ef.data",
            "abc.data",
        ] {
            assert!(parse_name(foreign).is_none(), "{foreign} is not Terrace's");
        }
    }
}
