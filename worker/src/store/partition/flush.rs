//! Flushing: pending memory extents go to a local data file in a healthy
//! directory, another directory when a write fails, or the object store when
//! no directory has room.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use terrace_tier_api::{TierError, TierResult};

use super::{LocalFile, Partition, Phase, data_path};
use crate::store::StoreError;
use crate::store::handles::{DataFile, is_out_of_descriptors};
use crate::store::index::{Blob, ExtentRef, Location};
use crate::store::object::ObjectTier;
use crate::store::tiers::Tiers;

impl Partition {
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
    pub(super) async fn flush_locked(self: &Arc<Self>, tiers: &Tiers) -> TierResult<()> {
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
    pub(super) async fn write_out(
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
                    return Err(Unstored::OutOfDescriptors(
                        StoreError::OutOfDescriptors {
                            op: "write to",
                            path: tiers.dirs.get(dir).path.clone(),
                            source: e,
                        }
                        .into(),
                    ));
                }
                Err(e) => {
                    tiers.dirs.get(dir).remove(total);
                    tiers.dirs.get(dir).mark_unhealthy(&e);
                    last_error = Some(Box::new(StoreError::Disk {
                        op: "write to",
                        path: tiers.dirs.get(dir).path.clone(),
                        source: e,
                    }));
                }
            }
        }
        let Some(object) = tiers.object.as_ref() else {
            return Err(Unstored::Failed(
                StoreError::NoDirectoryRoom {
                    bytes: total,
                    last_write_error: last_error,
                }
                .into(),
            ));
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

    pub(super) fn object_prefix(&self, object: &ObjectTier) -> String {
        let mut state = self.lock();
        state
            .object_prefix
            .get_or_insert_with(|| object.partition_prefix(&self.meta.key))
            .clone()
    }
}

/// Why pending data was not stored.
#[derive(Debug)]
pub(super) enum Unstored {
    /// The process ran out of file descriptors: the data may wait in memory.
    OutOfDescriptors(TierError),
    /// Nothing could take it.
    Failed(TierError),
}

impl Unstored {
    pub(super) fn into_error(self) -> TierError {
        match self {
            Unstored::OutOfDescriptors(e) | Unstored::Failed(e) => e,
        }
    }
}

/// Which thread appends to a local data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writer {
    /// The blocking pool (flusher, seal, evacuation): data that waited in
    /// memory, and callers that must not hold a runtime thread.
    Pool,
    /// The calling runtime thread, handing its other tasks to the rest of
    /// the runtime meanwhile (`block_in_place`); the blocking pool on a
    /// single-threaded runtime, where that is not possible.
    Inline,
}
