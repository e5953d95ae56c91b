//! The worker's partition store: the partitions it holds, their memory
//! budget, their files, and recovery of sealed partitions after a restart.

mod budget;
mod index;
mod partition;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use terrace_rpc::{BufferPool, PooledBuf, class_size};
use terrace_tier_api::{JobId, PartitionKey, TierError, TierResult};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use budget::{MemoryBudget, Reservation};
pub use index::{Extent, Location, PersistedIndex};
pub use partition::{NextRead, Partition, PartitionMeta, read_extents};

/// Counters reported by `WorkerStats` and heartbeats.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_pushed: AtomicU64,
    pub bytes_read: AtomicU64,
}

#[derive(Debug)]
pub struct Store {
    dirs: Vec<PathBuf>,
    next_dir: AtomicUsize,
    partitions: DashMap<PartitionKey, Arc<Partition>>,
    /// Keys released recently, so late readers fail fast instead of waiting.
    released: Mutex<HashSet<PartitionKey>>,
    created: Notify,
    budget: MemoryBudget,
    pool: Arc<BufferPool>,
    /// Bytes of memory use above which the flusher starts, and below which it stops.
    flush_start: u64,
    flush_stop: u64,
    pub counters: Counters,
}

impl Store {
    /// Opens the store on `dirs` (created if missing) and recovers the sealed
    /// partitions found there. Files of partitions that were never sealed are deleted.
    pub fn open(
        dirs: Vec<PathBuf>,
        memory_budget: u64,
        high_watermark: f64,
        low_watermark: f64,
    ) -> TierResult<Store> {
        if dirs.is_empty() {
            return Err(TierError::bad_input(
                "a worker needs at least one data directory",
            ));
        }
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|e| {
                TierError::bad_input(format!("create data directory {}: {e}", dir.display()))
            })?;
        }
        let store = Store {
            dirs,
            next_dir: AtomicUsize::new(0),
            partitions: DashMap::new(),
            released: Mutex::new(HashSet::new()),
            created: Notify::new(),
            budget: MemoryBudget::new(memory_budget),
            pool: BufferPool::new(usize::try_from(memory_budget).unwrap_or(usize::MAX)),
            flush_start: (memory_budget as f64 * high_watermark) as u64,
            flush_stop: (memory_budget as f64 * low_watermark) as u64,
            counters: Counters::default(),
        };
        store.recover()?;
        Ok(store)
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Receive buffers; every buffer taken is covered by a budget reservation.
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// Reserves budget for, and takes, a pooled buffer of `len` bytes.
    pub async fn reserve_buffer(&self, len: usize) -> Result<(Reservation, PooledBuf), String> {
        let reservation = self.budget.reserve(class_size(len) as u64).await?;
        Ok((reservation, self.pool.take(len)))
    }

    /// Whether memory use calls for the flusher; wakes it if so.
    pub fn check_pressure(&self) {
        if self.budget.used() > self.flush_start {
            self.budget.pressure().notify_one();
        }
    }

    fn job_dir(dir: &Path, job: &JobId) -> PathBuf {
        dir.join(job.to_hex())
    }

    fn paths(dir: &Path, key: &PartitionKey) -> (PathBuf, PathBuf) {
        let job_dir = Self::job_dir(dir, &key.job);
        let name = key.partition.to_hex();
        (
            job_dir.join(format!("{name}.data")),
            job_dir.join(format!("{name}.index")),
        )
    }

    /// Creates a partition. Creating the same partition again with the same
    /// shape is accepted (a retried request); another shape is an error.
    pub fn create(
        &self,
        key: PartitionKey,
        num_subpartitions: u32,
        broadcast_only: bool,
    ) -> TierResult<Arc<Partition>> {
        if num_subpartitions == 0 {
            return Err(TierError::bad_input(format!(
                "{key}: a partition needs at least one subpartition"
            )));
        }
        if let Some(existing) = self.partitions.get(&key) {
            let meta = existing.meta();
            if meta.num_subpartitions == num_subpartitions && meta.broadcast_only == broadcast_only
            {
                return Ok(Arc::clone(&existing));
            }
            return Err(TierError::bad_input(format!(
                "{key} already exists with {} subpartitions (broadcast only: {})",
                meta.num_subpartitions, meta.broadcast_only
            )));
        }
        let dir = &self.dirs[self.next_dir.fetch_add(1, Ordering::Relaxed) % self.dirs.len()];
        let job_dir = Self::job_dir(dir, &key.job);
        std::fs::create_dir_all(&job_dir)
            .map_err(|e| TierError::internal(format!("create {}: {e}", job_dir.display())))?;
        let (data_path, index_path) = Self::paths(dir, &key);
        let partition = Arc::new(Partition::new(PartitionMeta {
            key: key.clone(),
            num_subpartitions,
            broadcast_only,
            data_path,
            index_path,
        }));
        let entry = self
            .partitions
            .entry(key.clone())
            .or_insert_with(|| Arc::clone(&partition));
        let partition = Arc::clone(&entry);
        drop(entry);
        self.released
            .lock()
            .expect("released lock poisoned")
            .remove(&key);
        self.created.notify_waiters();
        Ok(partition)
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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let created = self.created.notified();
            if let Ok(partition) = self.get(key) {
                return Ok(partition);
            }
            if self
                .released
                .lock()
                .expect("released lock poisoned")
                .contains(key)
            {
                return Err(TierError::not_found(format!("{key} was released")));
            }
            if tokio::time::timeout_at(deadline, created).await.is_err() {
                return self.get(key);
            }
        }
    }

    /// Releases a partition and deletes its files. Not found is an error.
    pub async fn release(&self, key: &PartitionKey) -> TierResult<()> {
        let Some((_, partition)) = self.partitions.remove(key) else {
            return Err(TierError::not_found(format!("{key} is not on this worker")));
        };
        self.remember_released(key.clone());
        partition.release();
        let meta = partition.meta().clone();
        // Wait for a flush or seal in progress so it cannot recreate a file after we delete it.
        partition.wait_idle().await;
        tokio::task::spawn_blocking(move || {
            for path in [&meta.data_path, &meta.index_path] {
                remove_if_exists(path)?;
            }
            if let Some(dir) = meta.data_path.parent() {
                // Removes the job directory once its last partition is gone.
                let _ = std::fs::remove_dir(dir);
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| TierError::internal(format!("release task failed: {e}")))?
        .map_err(|e| TierError::internal(format!("delete files of {key}: {e}")))
    }

    /// Releases every partition of `job` and removes its directories.
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
                Err(e) if e.kind() == terrace_tier_api::ErrorKind::PartitionNotFound => {}
                Err(e) => return Err(e),
            }
        }
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|d| Self::job_dir(d, job)).collect();
        tokio::task::spawn_blocking(move || {
            for dir in dirs {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| TierError::internal(format!("drop job task failed: {e}")))?
        .map_err(|e| TierError::internal(format!("delete directories of job {job}: {e}")))?;
        Ok(count)
    }

    fn remember_released(&self, key: PartitionKey) {
        let mut released = self.released.lock().expect("released lock poisoned");
        if released.len() >= 100_000 {
            released.clear();
        }
        released.insert(key);
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
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
                _ = tokio::time::sleep(Duration::from_millis(100)) => false,
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
                if let Err(e) = partition.flush().await {
                    tracing::error!(partition = %partition.key(), error = %e, "flush under memory pressure failed");
                }
                if self.budget.used() <= self.flush_stop {
                    break;
                }
            }
        }
    }

    fn recover(&self) -> TierResult<()> {
        for dir in &self.dirs {
            let jobs = std::fs::read_dir(dir)
                .map_err(|e| TierError::internal(format!("list {}: {e}", dir.display())))?;
            for job_entry in jobs.flatten() {
                let job_dir = job_entry.path();
                if !job_dir.is_dir() {
                    continue;
                }
                let Ok(files) = std::fs::read_dir(&job_dir) else {
                    continue;
                };
                for file in files.flatten() {
                    let path = file.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("index") {
                        continue;
                    }
                    match self.recover_one(&path) {
                        Ok(key) => tracing::info!(partition = %key, "recovered sealed partition"),
                        Err(e) => {
                            tracing::warn!(index = %path.display(), error = %e, "dropping unrecoverable partition");
                            let _ = remove_if_exists(&path);
                            let _ = remove_if_exists(&path.with_extension("data"));
                        }
                    }
                }
                // Whatever has no index was never sealed: its data is incomplete.
                if let Ok(files) = std::fs::read_dir(&job_dir) {
                    for file in files.flatten() {
                        let path = file.path();
                        let has_index = path.with_extension("index").exists();
                        if !has_index {
                            tracing::info!(file = %path.display(), "deleting data of a partition that was not sealed");
                            let _ = remove_if_exists(&path);
                        }
                    }
                }
                let _ = std::fs::remove_dir(&job_dir);
            }
        }
        Ok(())
    }

    fn recover_one(&self, index_path: &Path) -> TierResult<PartitionKey> {
        let bytes = std::fs::read(index_path)
            .map_err(|e| TierError::internal(format!("read {}: {e}", index_path.display())))?;
        let index = PersistedIndex::decode(&bytes)?;
        let data_path = index_path.with_extension("data");
        let data_len = std::fs::metadata(&data_path)
            .map_err(|e| TierError::corruption(format!("data file {}: {e}", data_path.display())))?
            .len();
        if data_len < index.data_len {
            return Err(TierError::corruption(format!(
                "data file {} has {data_len} bytes, index needs {}",
                data_path.display(),
                index.data_len
            )));
        }
        let expected_name = index.key.partition.to_hex();
        if index_path.file_stem().and_then(|s| s.to_str()) != Some(expected_name.as_str()) {
            return Err(TierError::corruption(
                "index names another partition than its file name",
            ));
        }
        let key = index.key.clone();
        let meta = PartitionMeta {
            key: key.clone(),
            num_subpartitions: index.num_subpartitions,
            broadcast_only: index.broadcast_only,
            data_path,
            index_path: index_path.to_path_buf(),
        };
        self.partitions
            .insert(key.clone(), Arc::new(Partition::recovered(meta, index)));
        Ok(key)
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
