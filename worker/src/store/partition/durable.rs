//! Durability through the object store (`durability = "object-store"`): a
//! sealed part's data is migrated to the store and its persisted index
//! written beside it, `{partition prefix}/index`, so that another worker can
//! adopt the part from the store alone if this worker is lost.

use bytes::Bytes;
use terrace_tier_api::TierResult;

use super::{Partition, Phase};
use crate::store::object::ObjectTier;

impl Partition {
    /// Whether the object store holds this part's data and its current index.
    pub fn is_durable(&self) -> bool {
        let state = self.lock();
        state.durable_generation == Some(state.generation)
    }

    /// The persisted index to write to the object store, and its generation,
    /// when the part is sealed, at rest and wholly in the store; `None` while
    /// it is not (a migration runs, or local data is left).
    pub(crate) fn durable_index(&self, object: &ObjectTier) -> TierResult<Option<(Bytes, u64)>> {
        // The prefix is fixed now, so a release deletes the index object
        // even when the part holds no data object.
        self.object_prefix(object);
        let state = self.lock();
        if !matches!(state.phase, Phase::Sealed) || state.migrating {
            return Ok(None);
        }
        let persisted = self.persisted(&state);
        if !persisted.wholly_in_object_store() {
            return Ok(None);
        }
        // `persisted` is the next generation: the one on disk is the current.
        let mut current = persisted;
        current.generation = state.generation;
        Ok(Some((current.encode()?, state.generation)))
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
