//! Making a partition durable: seal and split, fsync of its data files
//! (moving a failed file's data elsewhere), and writing its index.

use std::sync::Arc;

use bytes::Bytes;
use terrace_rpc::clock;
use terrace_tier_api::{ErrorKind, TierError, TierResult};

use super::flush::{Unstored, Writer};
use super::migrate::read_chunk;
use super::{Partition, Phase, State, delete_files, index_path};
use crate::store::StoreError;
use crate::store::handles::{DataFile, is_out_of_descriptors};
use crate::store::index::{Blob, ExtentRef, Forward, Location, PersistedIndex};
use crate::store::tiers::Tiers;

impl Partition {
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
                    state.seal_index();
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
                state.seal_index();
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
    pub(super) async fn persist(
        self: &Arc<Self>,
        tiers: &Tiers,
        sync_files: bool,
    ) -> TierResult<()> {
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
                    .map_err(|e| {
                        TierError::with_source(ErrorKind::Internal, "persist task failed", e)
                    })?;
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
                    return Err(TierError::from(StoreError::OutOfDescriptors {
                        op: "persist index in",
                        path: dir_path,
                        source: e,
                    })
                    .context(&self.meta.key));
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
    /// Persists a partition that is still open (its worker stops for a
    /// restart and takes no more pushes): its data flushed and synced, its
    /// index marked open, so that after the restart it is recovered open
    /// and its producer pushes on. False when it is not open.
    pub async fn persist_open(self: &Arc<Self>, tiers: &Tiers) -> TierResult<bool> {
        let _guard = self.flush_lock.lock().await;
        if !matches!(self.lock().phase, Phase::Open) {
            return Ok(false);
        }
        self.flush_locked(tiers).await?;
        self.sync_files(tiers).await?;
        let (encoded, preferred) = {
            let state = self.lock();
            if !matches!(state.phase, Phase::Open) || !state.pending.is_empty() {
                return Ok(false);
            }
            let mut persisted = self.persisted(&state);
            persisted.index.sealed = false;
            let preferred = state
                .index_dir
                .or_else(|| state.files.first().map(|f| f.dir));
            (persisted.encode()?, preferred)
        };
        let mut last = None;
        for dir in tiers.dirs.any_healthy(preferred) {
            let dir_path = tiers.dirs.get(dir).path.clone();
            let path = index_path(&dir_path, &self.meta.key);
            let layer = Arc::clone(&tiers.files);
            let bytes = encoded.clone();
            let written =
                tokio::task::spawn_blocking(move || layer.write_atomic(&dir_path, &path, &bytes))
                    .await
                    .map_err(|e| {
                        TierError::with_source(ErrorKind::Internal, "persist task failed", e)
                    })?;
            match written {
                Ok(()) => {
                    let mut state = self.lock();
                    state.generation += 1;
                    state.index_dir = Some(dir);
                    return Ok(true);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(TierError::unavailable(format!(
            "persist open {}: no data directory took its index{}",
            self.meta.key,
            last.map_or(String::new(), |e| format!(": {e}"))
        )))
    }

    pub(super) fn persisted(&self, state: &State) -> PersistedIndex {
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
                        .map_err(|e| {
                            TierError::with_source(ErrorKind::Internal, "sync task failed", e)
                        })?;
                let synced = match synced {
                    Err(e) if is_out_of_descriptors(&e) => {
                        return Err(TierError::from(StoreError::OutOfDescriptors {
                            op: "sync data file in",
                            path: tiers.dirs.get(dir).path.clone(),
                            source: e,
                        })
                        .context(&self.meta.key));
                    }
                    other => other,
                };
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
            .map_err(|e| TierError::with_source(ErrorKind::Internal, "read task failed", e))?
            .map_err(|e| {
                TierError::with_source(ErrorKind::Internal, "read back data of a failed file", e)
            })?;
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
}
