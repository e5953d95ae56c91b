//! The metadata budget (`limits.metadata_memory`): memory a peer makes the
//! worker hold besides pushed data and read bodies — partitions' indexes
//! (subpartitions, segments, extents), per-partition and per-job state, read
//! streams and the commands waiting for them, keys of released partitions.
//!
//! Each of those is charged here *before* it is allocated, at an estimate of
//! what it occupies (element sizes, with room for a vector's spare
//! capacity); past the limit the request that would add it is refused with
//! an error naming `limits.metadata_memory`, and nothing is allocated. A
//! [`Charge`] gives its bytes back when dropped, so a charge lives exactly as
//! long as what it pays for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use terrace_tier_api::TierResult;

use super::error::StoreError;

/// What each kind of state is charged (bytes, estimates with allocator and
/// growth slack; see `store::index` for the structures).
pub mod cost {
    /// A partition: its structs, lock, watch channel, map entries (the
    /// store's, the per-job count's, a relocation record), plus its key's bytes.
    pub const PARTITION: u64 = 2048;
    /// A subpartition with data in an index (a tree entry and its segment list).
    pub const SUBPARTITION: u64 = 128;
    /// A segment (its slot in the subpartition's list, twice for the list's
    /// spare capacity, and its extent list's allocation).
    pub const SEGMENT: u64 = 96;
    /// An extent (twice its size for spare capacity, plus its entry in the
    /// list of extents waiting for a flush).
    pub const EXTENT: u64 = 192;
    /// The same in a frozen (compact) index: exactly its array entries.
    pub const FROZEN_SUBPARTITION: u64 = 12;
    pub const FROZEN_SEGMENT: u64 = 4;
    pub const FROZEN_EXTENT: u64 = 24;
    /// A read stream: its task, its state and its command queue's first block.
    pub const STREAM: u64 = 8192;
    /// A subpartition a read stream is asked for (its entry in the stream's map).
    pub const STREAM_SUBPARTITION: u64 = 160;
    /// A command waiting in a read stream's queue.
    pub const STREAM_COMMAND: u64 = 64;
    /// A remembered released partition (plus its key's bytes).
    pub const RELEASED_KEY: u64 = 96;
}

#[derive(Debug)]
pub struct MetadataBudget {
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl MetadataBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(MetadataBudget {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// A charge of nothing, to grow later.
    pub fn empty(self: &Arc<Self>) -> Charge {
        Charge {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Charges `bytes` for `what`, or refuses (nothing charged) when the
    /// budget cannot take them.
    pub fn charge(self: &Arc<Self>, bytes: u64, what: &str) -> TierResult<Charge> {
        let mut charge = self.empty();
        charge.grow(bytes, what)?;
        Ok(charge)
    }

    /// Charges `bytes` even past the limit: for what is already in memory
    /// (partitions recovered at start). Later charges are refused until use
    /// falls under the limit.
    pub fn force(self: &Arc<Self>, bytes: u64) -> Charge {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(used, Ordering::Relaxed);
        Charge {
            budget: Arc::clone(self),
            bytes,
        }
    }

    fn take(&self, bytes: u64, what: &str) -> TierResult<()> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_add(bytes);
            if next > self.limit {
                return Err(StoreError::MetadataMemory {
                    what: what.to_string(),
                    bytes,
                    used,
                    limit: self.limit,
                }
                .into());
            }
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes charged to the metadata budget; given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MetadataBudget>,
    bytes: u64,
}

impl Charge {
    /// Adds `bytes` for `what`, or refuses (nothing added).
    pub fn grow(&mut self, bytes: u64, what: &str) -> TierResult<()> {
        if bytes > 0 {
            self.budget.take(bytes, what)?;
            self.bytes += bytes;
        }
        Ok(())
    }

    /// Gives back `bytes` (at most what is charged).
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        self.budget.give_back(bytes);
        self.bytes -= bytes;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_past_the_limit_are_refused_and_drops_give_back() {
        let budget = MetadataBudget::new(1000);
        let a = budget.charge(600, "a").expect("fits");
        let e = budget.charge(401, "an index").expect_err("past the limit");
        assert_eq!(e.kind(), terrace_tier_api::ErrorKind::Unavailable);
        assert!(
            matches!(
                std::error::Error::source(&e).and_then(|s| s.downcast_ref::<StoreError>()),
                Some(StoreError::MetadataMemory {
                    bytes: 401,
                    used: 600,
                    limit: 1000,
                    ..
                })
            ),
            "{e}"
        );
        // The message is the point here: it names the limit to raise.
        assert!(e.message().contains("limits.metadata_memory"), "{e}");
        assert_eq!(budget.used(), 600, "a refused charge takes nothing");
        let mut b = budget.charge(400, "b").expect("exactly fits");
        assert_eq!(budget.used(), 1000);
        b.shrink(150);
        assert_eq!(budget.used(), 850);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.peak(), 1000);
        let forced = budget.force(1500);
        assert!(budget.charge(1, "more").is_err());
        drop(forced);
        assert_eq!(budget.used(), 0);
    }
}
