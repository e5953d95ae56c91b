//! What can go wrong in the store, with its causes. Each variant becomes a
//! [`TierError`] whose kind says what the caller does (a full worker is
//! `StorageFull`, a failing disk or object store `Unavailable`, a missing
//! object `PartitionNotFound`, bad bytes `DataCorruption`), with the variant
//! itself as the source, so a caller (or a test) can still see the cause.

use std::io;
use std::path::PathBuf;

use terrace_tier_api::{ErrorKind, TierError};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No tier can take the bytes: no local directory has room, and the
    /// object store is absent or failing (`object_store` says which).
    #[error("storage full: no local directory {}", full_text(.object_store.as_ref()))]
    StorageFull {
        object_store: Option<ObjectStoreState>,
    },
    /// No local directory can take a flush of `bytes` and no object store
    /// is configured.
    /// The last directory write that failed, if one did, is the source.
    #[error(
        "storage full: no local directory can take {bytes} bytes and no object store is configured{}",
        if .last_write_error.is_some() { "; last write error" } else { "" }
    )]
    NoDirectoryRoom {
        bytes: u64,
        #[source]
        last_write_error: Option<Box<StoreError>>,
    },
    /// More than the worker's whole memory budget asked at once.
    #[error("{bytes} bytes exceed the worker's whole memory budget of {total} bytes")]
    OverBudget { bytes: u64, total: u64 },
    /// One reservation larger than the semaphore can count.
    #[error("{bytes} bytes is too large for one reservation")]
    ReservationTooLarge { bytes: u64 },
    /// The memory budget is closed: the worker is stopping.
    #[error("memory budget closed")]
    BudgetClosed,
    /// A local file operation failed.
    #[error("{op} {}", path.display())]
    Disk {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A local file operation failed because the process has no file
    /// descriptor left: not the disk's fault, so its directory stays healthy.
    #[error(
        "{op} {}: out of file descriptors (raise the open-file limit, or lower limits.max_open_data_files)",
        path.display()
    )]
    OutOfDescriptors {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The worker's metadata memory (`limits.metadata_memory`) cannot take
    /// `bytes` more for `what`.
    #[error(
        "{what} needs {bytes} bytes of worker metadata memory; {used} of {limit} are in use (limits.metadata_memory)"
    )]
    MetadataMemory {
        what: String,
        bytes: u64,
        used: u64,
        limit: u64,
    },
    /// An object store request failed for good (after its retries, or with
    /// an error retrying cannot fix).
    #[error("object store {url}: {op} {key}")]
    ObjectStore {
        url: String,
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// An object store request failed for good without an error of the
    /// store's own (no answer in time, a multipart upload that never
    /// completed); the text says which.
    #[error("{0}")]
    ObjectStoreFailed(String),
    /// Stored bytes are not what was written.
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
}

fn full_text(object_store: Option<&ObjectStoreState>) -> String {
    match object_store {
        None => "has room and no object store is configured".to_string(),
        Some(ObjectStoreState { url, last_error }) => {
            format!("has room and the object store {url} is failing ({last_error})")
        }
    }
}

/// The state of an object store when a write found no room.
#[derive(Debug)]
pub struct ObjectStoreState {
    pub url: String,
    pub last_error: String,
}

impl StoreError {
    /// The kind a caller acts on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::StorageFull { .. } | StoreError::NoDirectoryRoom { .. } => {
                ErrorKind::StorageFull
            }
            StoreError::OverBudget { .. } | StoreError::ReservationTooLarge { .. } => {
                ErrorKind::BadInput
            }
            StoreError::BudgetClosed => ErrorKind::Closed,
            StoreError::Disk { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                ErrorKind::StorageFull
            }
            StoreError::Disk { .. }
            | StoreError::OutOfDescriptors { .. }
            | StoreError::MetadataMemory { .. } => ErrorKind::Unavailable,
            StoreError::ObjectStore {
                source: object_store::Error::NotFound { .. },
                ..
            } => ErrorKind::PartitionNotFound,
            StoreError::ObjectStore { .. } | StoreError::ObjectStoreFailed(_) => {
                ErrorKind::Unavailable
            }
            StoreError::Corrupt { .. } => ErrorKind::DataCorruption,
        }
    }
}

impl From<StoreError> for TierError {
    fn from(e: StoreError) -> Self {
        TierError::from_cause(e.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn each_cause_has_the_kind_a_caller_acts_on_and_stays_the_source() {
        let full = TierError::from(StoreError::StorageFull { object_store: None });
        assert_eq!(full.kind(), ErrorKind::StorageFull);
        assert_eq!(
            full.message(),
            "storage full: no local directory has room and no object store is configured"
        );
        assert!(matches!(
            full.source().and_then(|s| s.downcast_ref::<StoreError>()),
            Some(StoreError::StorageFull { object_store: None })
        ));

        let enospc = StoreError::Disk {
            op: "write",
            path: "/d/f".into(),
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert_eq!(enospc.kind(), ErrorKind::StorageFull);
        let eio = TierError::from(StoreError::Disk {
            op: "write",
            path: "/d/f".into(),
            source: io::Error::other("EIO"),
        });
        assert_eq!(eio.kind(), ErrorKind::Unavailable);
        assert_eq!(eio.full_message(), "write /d/f: EIO");

        let missing = StoreError::ObjectStore {
            url: "memory://".into(),
            op: "get",
            key: "k".into(),
            source: object_store::Error::NotFound {
                path: "k".into(),
                source: "gone".into(),
            },
        };
        assert_eq!(missing.kind(), ErrorKind::PartitionNotFound);
        assert_eq!(StoreError::BudgetClosed.kind(), ErrorKind::Closed);
        let corrupt = StoreError::Corrupt {
            what: "index".into(),
            detail: "crc".into(),
        };
        assert_eq!(corrupt.kind(), ErrorKind::DataCorruption);
    }
}
