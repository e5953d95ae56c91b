//! Durability through the object store (`durability = "object-store"`).
//!
//! A copy of a sealed part's local data is uploaded to the object store
//! and its index, locating every extent there, written beside it
//! (`{partition prefix}/index`) before the seal is acknowledged; reads stay
//! local (a migration later swaps the copy in instead of uploading again). A worker lost for good then leaves every sealed part in
//! the store, data and index, and a master asks a live worker to adopt
//! them ([`Store::adopt_lost`]): it copies each under its own prefix,
//! serves it, and deletes the lost worker's copy.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use terrace_rpc::clock;
use terrace_tier_api::{PartitionKey, TierError, TierResult};

use super::object::{INDEX_OBJECT, ObjectTier};
use super::{Partition, PersistedIndex, Store};
use crate::config::Durability;

/// How long a seal waits for a migration of the same part already running
/// (the migrator's) before it gives up on making it durable now.
const MIGRATION_WAIT: Duration = Duration::from_secs(60);
/// Between looks at a part whose migration another task runs.
const MIGRATION_POLL: Duration = Duration::from_millis(20);

/// What [`Store::adopt_lost`] did with a lost worker's durable partitions.
#[derive(Debug, Default)]
pub struct LostScan {
    /// Adopted here, with whether each is a later part of a split partition.
    pub adopted: Vec<(PartitionKey, bool)>,
    /// Found in the store but not adopted here (a part of it is here
    /// already, its index is damaged or too large, or copying failed).
    pub skipped: u32,
}

impl Store {
    /// Whether sealed parts go to the object store before their seal is
    /// acknowledged.
    pub fn durable(&self) -> bool {
        self.config.durability == Durability::ObjectStore && self.tiers.object.is_some()
    }

    /// With durability = "object-store": uploads a copy of a sealed part's
    /// local data to the object store and writes its index there beside it.
    /// A part already durable costs nothing.
    pub async fn make_durable(&self, partition: &Arc<Partition>) -> TierResult<()> {
        if !self.durable() {
            return Ok(());
        }
        let object = self.tiers.object()?;
        let deadline = clock::now() + MIGRATION_WAIT;
        loop {
            if partition.is_durable() {
                return Ok(());
            }
            if !partition.is_sealed() {
                return Err(TierError::not_found(format!(
                    "{} is not sealed (released meanwhile?)",
                    partition.key()
                )));
            }
            let copied = partition.upload_durable_copy(&self.tiers).await?;
            self.counters
                .durable_bytes
                .fetch_add(copied, Ordering::Relaxed);
            if let Some((encoded, generation)) = partition.durable_index(object)? {
                let len = encoded.len() as u64;
                let at = ObjectTier::index_key(&object.partition_prefix(partition.key()));
                object.put(&at, &[encoded]).await?;
                if partition.mark_durable(generation) {
                    self.counters.durable_parts.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .durable_index_bytes
                        .fetch_add(len, Ordering::Relaxed);
                    return Ok(());
                }
                // The index changed while it was written: write it again.
                continue;
            }
            if clock::now() >= deadline {
                return Err(TierError::unavailable(format!(
                    "{}: a migration to the object store did not finish within {MIGRATION_WAIT:?}",
                    partition.key()
                )));
            }
            clock::sleep(MIGRATION_POLL).await;
        }
    }

    /// [`Store::make_durable`] for a seal being acknowledged: a failure (the
    /// store is down) is logged and counted, the seal is acknowledged as a
    /// local one, and the migrator tries again ([`Store::make_parts_durable`]).
    /// With `durable_before_ack = false` the migrator does it all, right after.
    pub(crate) async fn make_durable_or_later(&self, partition: &Arc<Partition>) {
        if !self.config.durable_before_ack {
            return;
        }
        if let Err(e) = self.make_durable(partition).await {
            self.counters
                .durable_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(partition = %partition.key(), error = %e,
                "sealed part not made durable in the object store: acknowledged as local (lost with this worker); retried by the migrator");
        }
    }

    /// Makes every sealed part that is not durable yet durable (after a
    /// failure, a restart, or a forward pointer moved). One pass of the
    /// migrator.
    pub(crate) async fn make_parts_durable(&self) {
        if !self.durable() {
            return;
        }
        for partition in self.partitions() {
            if partition.is_sealed() && !partition.is_durable() {
                if let Err(e) = self.make_durable(&partition).await {
                    tracing::debug!(partition = %partition.key(), error = %e,
                        "cannot make the part durable yet");
                }
            }
        }
    }

    /// Adopts the sealed parts a lost worker kept in the object store under
    /// `store_id`: each whose index is found there and of which no part is
    /// held here is copied under this worker's prefix and served from now
    /// on, and the lost worker's copy is deleted (so a second adopter does
    /// not take it too). At most `limits.max_partitions` indexes are looked at.
    pub async fn adopt_lost(&self, store_id: &str, max_index_bytes: u64) -> TierResult<LostScan> {
        let object = self.tiers.object()?;
        if store_id == self.tiers.dirs.store_id() {
            return Err(TierError::bad_input(
                "the lost worker's store id is this worker's own",
            ));
        }
        let root = object.root_of(store_id);
        let suffix = format!("/{INDEX_OBJECT}");
        let limit = self.config.limits.max_partitions as usize;
        let mut scan = LostScan::default();
        let (indexes, more) = object.list_ending(&root, &suffix, limit).await?;
        if more {
            tracing::warn!(
                limit,
                "the lost worker left more durable parts than limits.max_partitions; adopting that many now (asking again adopts more)"
            );
        }
        for (path, size) in indexes {
            let prefix = path
                .as_ref()
                .strip_suffix(&suffix)
                .unwrap_or_default()
                .to_string();
            match self.adopt_one(object, &path, size, max_index_bytes).await {
                Ok((key, continuation)) => {
                    // The lost worker's copy goes: this one is served now.
                    // A marker stays, for the lost worker should it return.
                    let gone = async {
                        object.delete_prefix(&prefix).await?;
                        object
                            .put(&ObjectTier::adopted_key(&prefix), &[bytes::Bytes::new()])
                            .await
                    };
                    if let Err(e) = gone.await {
                        tracing::warn!(partition = %key, error = %e,
                            "adopted a lost worker's part; its old objects are left in the store");
                    }
                    self.counters.lost_adoptions.fetch_add(1, Ordering::Relaxed);
                    scan.adopted.push((key, continuation));
                }
                Err(e) => {
                    scan.skipped += 1;
                    tracing::warn!(index = %path, error = %e,
                        "a lost worker's durable part was not adopted here");
                }
            }
        }
        Ok(scan)
    }

    /// Drops the sealed parts recovered at start that another worker
    /// adopted while this one was lost (their prefix holds the adopter's
    /// marker, [`super::object::ADOPTED_MARKER`]): the masters send their
    /// readers to the adopter, and the engine was told nothing was lost.
    pub async fn drop_adopted_elsewhere(&self) {
        if !self.durable() {
            return;
        }
        let Ok(object) = self.tiers.object() else {
            return;
        };
        for partition in self.partitions() {
            if !partition.is_sealed() {
                continue;
            }
            let marker = ObjectTier::adopted_key(&object.partition_prefix(partition.key()));
            match object.exists(&marker).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!(partition = %partition.key(),
                        "a part recovered at start was adopted by another worker while this one was lost: dropped here");
                    let key = partition.key().clone();
                    drop(partition);
                    if let Err(e) = self.release(&key).await {
                        tracing::warn!(partition = %key, error = %e, "dropping it failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(partition = %partition.key(), error = %e,
                        "cannot tell whether a recovered part was adopted elsewhere; serving it");
                }
            }
        }
    }

    async fn adopt_one(
        &self,
        object: &ObjectTier,
        path: &object_store::path::Path,
        size: u64,
        max_index_bytes: u64,
    ) -> TierResult<(PartitionKey, bool)> {
        if size > max_index_bytes {
            return Err(TierError::bad_input(format!(
                "index of {size} bytes, more than max_frame_size ({max_index_bytes})"
            )));
        }
        let whole = std::iter::once(0..size).collect::<Vec<_>>();
        let encoded = object
            .get_ranges(path, &whole)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        let persisted = PersistedIndex::decode(&encoded)?;
        let key = persisted.key.clone();
        let continuation = persisted.index.continuation;
        let partition = self.adopt(&key, &encoded).await?;
        self.make_durable_or_later(&partition).await;
        Ok((key, continuation))
    }
}
