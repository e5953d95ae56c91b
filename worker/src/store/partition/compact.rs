//! Compaction: overflow flushes write a partition's extents to the object
//! store in the order they arrived, every subpartition's buffers interleaved,
//! so one segment of one subpartition is spread over many small ranges of
//! many objects. Once the partition is sealed all its extents (those in
//! objects, and those a full disk still took) are rewritten as one object
//! laid out segment by segment (the layout a migration writes): a reader then
//! reads each segment as one range, and adjacent segments coalesce into large
//! GETs. Overflow happens when the local disks are full, so moving the
//! partition's local rest out with it frees them too.
//!
//! Commit order, as for a migration: upload the new object; persist the
//! index pointing at it and swap it in; delete the local files; delete the
//! old objects only after a grace period for reads already resolved to them
//! (the caller's). A crash before the persist leaves the new object
//! unreferenced, a crash after it the old ones: the orphan cleanup at
//! start-up deletes either, and the index read back names a complete set of
//! objects and files.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use object_store::path::Path as ObjectPath;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use terrace_rpc::clock;
use terrace_tier_api::{ErrorKind, TierError, TierResult};

use super::migrate::{part_slices, read_chunk};
use super::{Partition, Phase, delete_moved_files};
use crate::store::StoreError;
use crate::store::handles::DataFile;
use crate::store::index::{Blob, ExtentRef, Location};
use crate::store::object::ObjectTier;
use crate::store::tiers::Tiers;

/// Ranged GETs one compaction part has in flight at once.
const PART_GETS: usize = 8;

/// Where an extent to rewrite lies: an object (by id) or a local file.
#[derive(Debug, Clone)]
enum Held {
    Object(u32),
    File(Arc<DataFile>),
}

/// An extent to rewrite: where it is in the index, what holds it, its
/// offset there and its length.
type Piece = (ExtentRef, Held, u64, u32);

impl Partition {
    /// Whether the partition should be compacted now: sealed, not
    /// migrating or backing off, without a durable copy, and with object
    /// extents that are not one run in index order (see [`fragmented`]).
    pub fn compaction_candidate(&self) -> bool {
        let state = self.lock();
        let now = clock::now();
        matches!(state.phase, Phase::Sealed)
            && !state.migrating
            && state.migrate_after.is_none_or(|t| now >= t)
            && state.durable_copy.is_none()
            && fragmented(&state.index)
    }

    /// Rewrites the partition's object extents as one new object in index
    /// order; returns its length (0: nothing to do) and the keys of the
    /// objects it replaced, which the caller deletes once reads already
    /// resolved to them are done. On failure the old objects stay in use and
    /// the partition backs off as after a failed migration.
    pub async fn compact(self: &Arc<Self>, tiers: &Tiers) -> TierResult<Compacted> {
        let object = tiers.object()?;
        let prefix = self.object_prefix(object);
        let (pieces, blob) = {
            let mut state = self.lock();
            if !matches!(state.phase, Phase::Sealed)
                || state.migrating
                || state.durable_copy.is_some()
                || !fragmented(&state.index)
            {
                return Ok(Compacted::default());
            }
            let pieces = self.pieces(&state)?;
            let len: u64 = pieces.iter().map(|p| u64::from(p.3)).sum();
            state.next_blob += 1;
            state.migrating = true;
            (
                pieces,
                Blob {
                    id: state.next_blob - 1,
                    len,
                },
            )
        };
        let result = async {
            self.upload_pieces(tiers, object, &pieces, &prefix, blob.id)
                .await?;
            self.commit_compaction(tiers, object, &pieces, &prefix, blob)
                .await
        }
        .await;
        let mut state = self.lock();
        state.finish_move(result.is_ok());
        if result.is_err() && matches!(state.phase, Phase::Released) {
            // Released meanwhile: its objects went with it.
            return Ok(Compacted::default());
        }
        result
    }

    /// Every extent of the partition (none is in memory once it is sealed),
    /// in index order, with what holds it.
    fn pieces(&self, state: &super::State) -> TierResult<Vec<Piece>> {
        let mut pieces = Vec::new();
        for (at, extent) in state.index.extents() {
            let (held, offset) = match &extent.location {
                Location::Object { object, offset } => (Held::Object(*object), *offset),
                Location::Local { file, offset } => {
                    let Some(f) = state.files.iter().find(|f| f.id == *file) else {
                        return Err(TierError::internal(format!(
                            "{}: index names local file {file}, which the partition lacks",
                            self.meta.key
                        )));
                    };
                    (Held::File(Arc::clone(&f.file)), *offset)
                }
                Location::Memory(_) => {
                    return Err(TierError::internal(format!(
                        "{}: a sealed partition holds an extent in memory",
                        self.meta.key
                    )));
                }
            };
            pieces.push((at, held, offset, extent.len));
        }
        Ok(pieces)
    }

    /// Uploads `pieces` (read from their old objects and files) end to end as object
    /// `id`, in parts of `object_part_size` (at least 5 MiB).
    async fn upload_pieces(
        &self,
        tiers: &Tiers,
        object: &ObjectTier,
        pieces: &[Piece],
        prefix: &str,
        id: u32,
    ) -> TierResult<()> {
        let key = ObjectTier::object_key(prefix, id);
        let total: u64 = pieces.iter().map(|p| u64::from(p.3)).sum();
        let part_size = tiers.object_part_size.max(5 << 20);
        let num_parts = usize::try_from(total.div_ceil(part_size).max(1)).unwrap_or(usize::MAX);
        let sources: Vec<(Held, u64, u32)> =
            pieces.iter().map(|p| (p.1.clone(), p.2, p.3)).collect();
        object
            .put_parts(&key, num_parts, |i| {
                let slices = part_slices(&sources, part_size, i);
                async move { fetch_part(object, prefix, &slices).await }
            })
            .await
    }

    /// Points every piece at `blob`, persists the index and deletes the
    /// local files. On a failed persist the old index, files and objects
    /// stay and the new object is deleted.
    async fn commit_compaction(
        self: &Arc<Self>,
        tiers: &Tiers,
        object: &ObjectTier,
        pieces: &[Piece],
        prefix: &str,
        blob: Blob,
    ) -> TierResult<Compacted> {
        let key = ObjectTier::object_key(prefix, blob.id);
        let _guard = self.flush_lock.lock().await;
        if matches!(self.lock().phase, Phase::Released) {
            let _ = object.delete(&key).await;
            return Ok(Compacted::default());
        }
        let (old_index, old_files, old_objects) = {
            let mut state = self.lock();
            let old = (
                state.index.clone(),
                std::mem::take(&mut state.files),
                state.objects.clone(),
            );
            state
                .index
                .relocate_into(blob.id, pieces.iter().map(|m| (m.0, m.3)));
            state.objects = vec![blob];
            old
        };
        if let Err(e) = self.persist(tiers, false).await {
            {
                let mut state = self.lock();
                state.index = old_index;
                state.files = old_files;
                state.objects = old_objects;
            }
            let _ = object.delete(&key).await;
            return Err(e.context(format!("compact {}", self.meta.key)));
        }
        // Counted with the swap, so figures and index never disagree.
        let old_len: u64 = old_objects.iter().map(|b| b.len).sum();
        object.counters.bytes.fetch_add(blob.len, Ordering::Relaxed);
        object.counters.bytes.fetch_sub(old_len, Ordering::Relaxed);
        object.counters.objects.fetch_add(1, Ordering::Relaxed);
        object
            .counters
            .objects
            .fetch_sub(old_objects.len() as u64, Ordering::Relaxed);
        object
            .counters
            .bytes_compacted
            .fetch_add(blob.len, Ordering::Relaxed);
        object
            .counters
            .partitions_compacted
            .fetch_add(1, Ordering::Relaxed);
        self.bump();
        delete_moved_files(tiers, old_files).await;
        Ok(Compacted {
            bytes: blob.len,
            replaced: old_objects
                .iter()
                .map(|b| ObjectTier::object_key(prefix, b.id))
                .collect(),
        })
    }
}

/// What a compaction did: the new object's length (0: nothing done) and
/// the objects it replaced, to delete once no read can still want them.
#[derive(Debug, Default)]
pub struct Compacted {
    pub bytes: u64,
    pub replaced: Vec<ObjectPath>,
}

/// Whether the index's object extents are not one run laid out in index
/// order: some object extent does not follow the one before it back to
/// back in the same object. (A migration's or a compaction's object is one
/// run; overflow objects interleave subpartitions.)
fn fragmented(index: &crate::store::index::PartitionIndex) -> bool {
    let mut last: Option<(u32, u64)> = None;
    for (_, extent) in index.extents() {
        if let Location::Object { object, offset } = extent.location {
            if last.is_some_and(|(o, end)| o != object || end != offset) {
                return true;
            }
            last = Some((object, offset + u64::from(extent.len)));
        }
    }
    false
}

/// Reads one part's `slices` (object id, offset, length; laid end to end)
/// from their objects. The slices of one object are fetched in ranges that
/// cover neighbours when what lies between is no larger than what they
/// carry (so at most twice the part's bytes are fetched), `PART_GETS` GETs
/// at a time.
async fn fetch_part(
    object: &ObjectTier,
    prefix: &str,
    slices: &[(Held, u64, u32)],
) -> TierResult<Bytes> {
    let total: usize = slices.iter().map(|s| s.2 as usize).sum();
    let mut by_object: BTreeMap<u32, Vec<Range<u64>>> = BTreeMap::new();
    let mut in_files = Vec::new();
    for (held, offset, len) in slices {
        match held {
            Held::Object(id) => by_object
                .entry(*id)
                .or_default()
                .push(*offset..offset + u64::from(*len)),
            Held::File(file) => in_files.push((Arc::clone(file), *offset, *len)),
        }
    }
    // One blocking read per local slice, on the blocking pool.
    let mut from_files = tokio::task::spawn_blocking(move || {
        in_files
            .iter()
            .map(|slice| read_chunk(std::slice::from_ref(slice)))
            .collect::<TierResult<Vec<Bytes>>>()
    })
    .await
    .map_err(|e| TierError::with_source(ErrorKind::Internal, "read task failed", e))??
    .into_iter();
    let mut requests = Vec::new();
    for (id, mut ranges) in by_object {
        ranges.sort_by_key(|r| r.start);
        for range in cover(&ranges) {
            requests.push((id, range));
        }
    }
    let fetched: Vec<(u32, Range<u64>, Bytes)> = futures::stream::iter(requests)
        .map(|(id, range)| async move {
            let key = ObjectTier::object_key(prefix, id);
            let body = object
                .get_ranges(&key, std::slice::from_ref(&range))
                .await?
                .pop()
                .unwrap_or_default();
            if body.len() as u64 != range.end - range.start {
                return Err(TierError::from(StoreError::Corrupt {
                    what: format!("object {key} range {range:?}"),
                    detail: format!(
                        "returned {} bytes, expected {}",
                        body.len(),
                        range.end - range.start
                    ),
                }));
            }
            Ok((id, range, body))
        })
        .buffer_unordered(PART_GETS)
        .collect::<Vec<TierResult<_>>>()
        .await
        .into_iter()
        .collect::<TierResult<_>>()?;
    let fetched: BTreeMap<(u32, u64), (u64, Bytes)> = fetched
        .into_iter()
        .map(|(id, range, body)| ((id, range.start), (range.end, body)))
        .collect();
    let mut out = BytesMut::with_capacity(total);
    for (held, offset, len) in slices {
        let id = match held {
            Held::Object(id) => id,
            Held::File(_) => {
                let Some(bytes) = from_files.next() else {
                    return Err(TierError::internal(
                        "compaction: a local slice was not read",
                    ));
                };
                out.extend_from_slice(&bytes);
                continue;
            }
        };
        let end = offset + u64::from(*len);
        let covering = fetched
            .range(..=(*id, *offset))
            .next_back()
            .filter(|((i, _), (e, _))| i == id && end <= *e);
        let Some(((_, start), (_, body))) = covering else {
            return Err(TierError::internal(format!(
                "compaction: no fetched range of object {id} covers {offset}..{end}"
            )));
        };
        let from = (offset - start) as usize;
        out.extend_from_slice(&body[from..from + *len as usize]);
    }
    Ok(out.freeze())
}

/// Sorted, non-overlapping `ranges` merged into the ranges to fetch: a
/// range grows over the next one while the gaps it spans stay no larger in
/// total than the bytes it carries (so at most twice those are fetched).
fn cover(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    // (range, useful bytes, gap bytes)
    let mut out: Vec<(Range<u64>, u64, u64)> = Vec::new();
    for r in ranges {
        let len = r.end - r.start;
        match out.last_mut() {
            Some((last, useful, waste)) if *waste + r.start.saturating_sub(last.end) <= *useful => {
                *waste += r.start.saturating_sub(last.end);
                *useful += len;
                last.end = last.end.max(r.end);
            }
            _ => out.push((r.clone(), len, 0)),
        }
    }
    out.into_iter().map(|(r, _, _)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::cover;
    use proptest::prelude::*;

    proptest! {
        /// Every wanted range lies inside one fetched range, fetched ranges
        /// do not overlap, and at most twice the wanted bytes are fetched.
        #[test]
        fn fetched_ranges_cover_every_slice_at_most_twice_over(
            spans in proptest::collection::vec((0u64..5000, 1u64..3000), 1..60),
        ) {
            let mut wanted = Vec::new();
            let mut at = 0;
            for (gap, len) in spans {
                at += gap;
                wanted.push(at..at + len);
                at += len;
            }
            let fetched = cover(&wanted);
            for w in &wanted {
                prop_assert!(fetched.iter().any(|f| f.start <= w.start && w.end <= f.end));
            }
            for pair in fetched.windows(2) {
                prop_assert!(pair[0].end <= pair[1].start);
            }
            let want: u64 = wanted.iter().map(|r| r.end - r.start).sum();
            let got: u64 = fetched.iter().map(|r| r.end - r.start).sum();
            prop_assert!(got <= 2 * want);
        }
    }
}
