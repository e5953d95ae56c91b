//! Tier moves: a sealed, cold partition's local extents are uploaded as one
//! object laid out segment by segment; then the index is persisted pointing
//! at it, swapped in, and only then are the local files deleted.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::store::StoreError;
use bytes::Bytes;
use std::time::Instant;
use terrace_rpc::clock;
use terrace_tier_api::{ErrorKind, TierError, TierResult};

use super::{Partition, Phase, State, delete_moved_files};
use crate::store::handles::DataFile;
use crate::store::index::{Blob, ExtentRef, Location};
use crate::store::object::ObjectTier;
use crate::store::tiers::Tiers;

impl Partition {
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
    /// local copy stays and the migration backs off. A part with a durable
    /// copy in the store already (durability = "object-store") uploads
    /// nothing: its copy is swapped in.
    pub async fn migrate(self: &Arc<Self>, tiers: &Tiers) -> TierResult<u64> {
        let object = tiers.object()?;
        let prefix = self.object_prefix(object);
        // 1. Snapshot what to move. Sealed extents never change but by migration.
        let (moves, copy) = {
            let mut state = self.lock();
            if !matches!(state.phase, Phase::Sealed) || state.migrating {
                return Ok(0);
            }
            let moves = self.local_moves(&state)?;
            if moves.is_empty() && state.files.is_empty() {
                return Ok(0);
            }
            let total: u64 = moves.iter().map(|m| u64::from(m.3)).sum();
            let copy = match state.durable_copy {
                Some(copy) if copy.len == total => (copy, false),
                Some(copy) => {
                    return Err(TierError::internal(format!(
                        "{}: its durable copy holds {} bytes, its local extents {total}",
                        self.meta.key, copy.len
                    )));
                }
                None => {
                    state.next_blob += 1;
                    (
                        Blob {
                            id: state.next_blob - 1,
                            len: total,
                        },
                        true,
                    )
                }
            };
            state.migrating = true;
            (moves, copy)
        };
        let (blob, upload) = copy;
        let result = async {
            if upload {
                self.upload_moves(tiers, object, &moves, &prefix, blob.id)
                    .await?;
            }
            self.commit_moves(tiers, object, &moves, &prefix, blob, upload)
                .await
        }
        .await;
        self.lock().finish_move(result.is_ok());
        result
    }

    /// The local extents of the partition, in index order, with the file
    /// holding each: what a migration or a durable copy uploads, laid out
    /// one after another in this order.
    pub(super) fn local_moves(&self, state: &State) -> TierResult<Vec<Move>> {
        let mut moves: Vec<Move> = Vec::new();
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
        Ok(moves)
    }

    /// Uploads `moves` as object `id` under `prefix`, part by part: each
    /// part is read from the local files in index order. Every part but the
    /// last is exactly `part_size` bytes (S3 refuses a completion whose
    /// non-last parts are under 5 MiB), so a part may start or end inside an
    /// extent. Returns the object's length.
    pub(super) async fn upload_moves(
        &self,
        tiers: &Tiers,
        object: &ObjectTier,
        moves: &[Move],
        prefix: &str,
        id: u32,
    ) -> TierResult<u64> {
        let key = ObjectTier::object_key(prefix, id);
        let total: u64 = moves.iter().map(|m| u64::from(m.3)).sum();
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
                        .map_err(|e| {
                            TierError::with_source(ErrorKind::Internal, "read task failed", e)
                        })?
                        .map_err(|e| {
                            TierError::with_source(
                                ErrorKind::Internal,
                                format!("read local data for {what}"),
                                e,
                            )
                        })
                }
            })
            .await?;
        Ok(total)
    }

    /// Points the extents of `moves` at `blob` (laid out in their order),
    /// persists the index, and deletes the local files. `uploaded`: the blob
    /// was uploaded for this migration (else it is the durable copy, counted
    /// when it was uploaded). The caller has set `migrating`.
    async fn commit_moves(
        self: &Arc<Self>,
        tiers: &Tiers,
        object: &ObjectTier,
        moves: &[Move],
        prefix: &str,
        blob: Blob,
        uploaded: bool,
    ) -> TierResult<u64> {
        let key = ObjectTier::object_key(prefix, blob.id);
        // 3. Commit under the flush lock: a release waits, or has already happened.
        let _guard = self.flush_lock.lock().await;
        let released = matches!(self.lock().phase, Phase::Released);
        if released {
            if uploaded {
                let _ = object.delete(&key).await;
            }
            return Ok(0);
        }
        let (old_index, old_files, old_objects, old_copy) = {
            let mut state = self.lock();
            let old = (
                state.index.clone(),
                std::mem::take(&mut state.files),
                state.objects.clone(),
                state.durable_copy.take(),
            );
            state
                .index
                .relocate_into(blob.id, moves.iter().map(|m| (m.0, m.3)));
            state.objects.push(blob);
            if uploaded {
                // Counted with the swap, so figures and index never disagree.
                object.counters.bytes.fetch_add(blob.len, Ordering::Relaxed);
                object.counters.objects.fetch_add(1, Ordering::Relaxed);
            }
            old
        };
        if let Err(e) = self.persist(tiers, false).await {
            // Roll back to the local copy; an object uploaded now is removed.
            {
                let mut state = self.lock();
                state.index = old_index;
                state.files = old_files;
                state.objects = old_objects;
                state.durable_copy = old_copy;
                if uploaded {
                    object.counters.bytes.fetch_sub(blob.len, Ordering::Relaxed);
                    object.counters.objects.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if uploaded {
                let _ = object.delete(&key).await;
            }
            return Err(e.context(format!("migrate {}", self.meta.key)));
        }
        object
            .counters
            .bytes_migrated
            .fetch_add(blob.len, Ordering::Relaxed);
        object
            .counters
            .partitions_migrated
            .fetch_add(1, Ordering::Relaxed);
        self.bump();
        // 4. The index points at the object: the local copy can go.
        delete_moved_files(tiers, old_files).await;
        Ok(blob.len)
    }
}

/// A local extent to move: where it is in the index, its file, offset and length.
pub(super) type Move = (ExtentRef, Arc<DataFile>, u64, u32);

/// Reads the extents of one migration part into one buffer. Blocking.
/// A failed open or read is a [`StoreError::Disk`] underneath.
pub(super) fn read_chunk(chunk: &[(Arc<DataFile>, u64, u32)]) -> TierResult<Bytes> {
    use std::os::unix::fs::FileExt;
    let total: usize = chunk.iter().map(|c| c.2 as usize).sum();
    let mut out = vec![0u8; total];
    let mut at = 0;
    for (file, offset, len) in chunk {
        let disk = |op, source| {
            TierError::from(StoreError::Disk {
                op,
                path: file.path().to_path_buf(),
                source,
            })
        };
        file.handle()
            .map_err(|e| disk("open", e))?
            .read_exact_at(&mut out[at..at + *len as usize], *offset)
            .map_err(|e| disk("read", e))?;
        at += *len as usize;
    }
    Ok(Bytes::from(out))
}

/// The pieces of `sources` (each `(source, offset, len)`, laid end to end)
/// that make up bytes `part * part_size ..` of at most `part_size` bytes.
pub(super) fn part_slices<T: Clone>(
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
