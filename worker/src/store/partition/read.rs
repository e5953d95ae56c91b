//! Reads: what a reader of a segment gets next, with each extent's bytes
//! resolved to memory, a local file or an object.

use std::sync::Arc;

use terrace_tier_api::TierError;
use tokio::time::Instant;

use super::{Partition, Phase};
use crate::store::index::{Extent, Forward, Location, NextRead};
use crate::store::object::ObjectTier;
use crate::store::tiers::Source;

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

impl Partition {
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

    /// What a reader of `subpartition` at extent `position` of `segment`
    /// gets next, about `max_bytes` at most, with where the bytes are.
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
                state.last_access = Instant::now();
                ReadStep::Batch { extents, sources }
            }
            NextRead::SegmentDone => ReadStep::SegmentDone,
            NextRead::End => ReadStep::End,
            NextRead::Wait => ReadStep::Wait,
            NextRead::Redirect(next) => ReadStep::Redirect(next),
        }
    }
}
