//! Durability through the object store (`durability = "object-store"`): a
//! copy of a sealed part's local data goes to the store, and its persisted
//! index, locating every extent there, beside it (`{partition prefix}/index`),
//! so that another worker can adopt the part from the store alone if this
//! worker is lost. The part is still read from the local disks here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use terrace_tier_api::{TierError, TierResult};

use super::{Partition, Phase};
use crate::store::index::{Blob, Location};
use crate::store::object::ObjectTier;
use crate::store::tiers::Tiers;

impl Partition {
    /// Whether the object store holds this part's data and its current index.
    pub fn is_durable(&self) -> bool {
        let state = self.lock();
        state.durable_generation == Some(state.generation)
    }

    /// Uploads a copy of the part's local extents (one object, in index
    /// order) unless it has one or holds nothing locally; returns the bytes
    /// uploaded. The local files stay and keep serving reads.
    pub(crate) async fn upload_durable_copy(self: &Arc<Self>, tiers: &Tiers) -> TierResult<u64> {
        let object = tiers.object()?;
        let prefix = self.object_prefix(object);
        let (moves, id) = {
            let mut state = self.lock();
            if !matches!(state.phase, Phase::Sealed)
                || state.migrating
                || state.durable_copy.is_some()
            {
                return Ok(0);
            }
            let moves = self.local_moves(&state)?;
            if moves.is_empty() {
                return Ok(0);
            }
            state.migrating = true;
            state.next_blob += 1;
            (moves, state.next_blob - 1)
        };
        let uploaded = self.upload_moves(tiers, object, &moves, &prefix, id).await;
        // Kept under the flush lock, as a migration's commit: a release
        // waits, or has already happened (and the copy is removed here).
        let _guard = self.flush_lock.lock().await;
        let kept = {
            let mut state = self.lock();
            state.migrating = false;
            let len = uploaded?;
            let released = matches!(state.phase, Phase::Released);
            if !released {
                state.durable_copy = Some(Blob { id, len });
                object.counters.bytes.fetch_add(len, Ordering::Relaxed);
                object.counters.objects.fetch_add(1, Ordering::Relaxed);
            }
            (!released).then_some(len)
        };
        match kept {
            Some(len) => Ok(len),
            None => {
                let _ = object.delete(&ObjectTier::object_key(&prefix, id)).await;
                Ok(0)
            }
        }
    }

    /// The persisted index to write to the object store, and its generation,
    /// when the part is sealed and at rest with every extent in the store
    /// (its local extents located in its durable copy); `None` while it is
    /// not (a migration or an upload runs, or local data has no copy yet).
    pub(crate) fn durable_index(&self, object: &ObjectTier) -> TierResult<Option<(Bytes, u64)>> {
        // The prefix is fixed now, so a release deletes the index object
        // even when the part holds no data object.
        self.object_prefix(object);
        let state = self.lock();
        if !matches!(state.phase, Phase::Sealed) || state.migrating {
            return Ok(None);
        }
        // `persisted` is the next generation: the one on disk is the current.
        let mut persisted = self.persisted(&state);
        persisted.generation = state.generation;
        if !persisted.files.is_empty() {
            let Some(copy) = state.durable_copy else {
                return Ok(None);
            };
            let locals: Vec<(crate::store::index::ExtentRef, u32)> = persisted
                .index
                .extents()
                .filter(|(_, e)| matches!(e.location, Location::Local { .. }))
                .map(|(at, e)| (at, e.len))
                .collect();
            let mut at = 0u64;
            for (extent, len) in locals {
                persisted.index.relocate(
                    extent,
                    Location::Object {
                        object: copy.id,
                        offset: at,
                    },
                );
                at += u64::from(len);
            }
            if at != copy.len {
                return Err(TierError::internal(format!(
                    "{}: its durable copy holds {} bytes, its local extents {at}",
                    self.meta.key, copy.len
                )));
            }
            persisted.files.clear();
            persisted.objects.push(copy);
        }
        if !persisted.wholly_in_object_store() {
            return Ok(None);
        }
        Ok(Some((persisted.encode()?, state.generation)))
    }

    /// Records that index `generation` is in the object store; false when
    /// the index changed meanwhile (it is written again).
    pub(crate) fn mark_durable(&self, generation: u64) -> bool {
        let mut state = self.lock();
        if state.generation == generation && matches!(state.phase, Phase::Sealed) {
            state.durable_generation = Some(generation);
            true
        } else {
            false
        }
    }
}
