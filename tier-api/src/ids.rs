//! Newtype ids. Job and partition ids are opaque engine bytes (Flink's `JobID`
//! and `ResultPartitionID`); subpartition and segment ids are small integers.

use std::fmt;

use bytes::Bytes;
use terrace_proto::pb;

use crate::error::TierError;

/// Longest job or partition id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

fn check_id(what: &str, bytes: &[u8]) -> Result<(), TierError> {
    if bytes.is_empty() {
        return Err(TierError::bad_input(format!("{what} id is empty")));
    }
    if bytes.len() > MAX_ID_BYTES {
        return Err(TierError::bad_input(format!(
            "{what} id has {} bytes, more than {MAX_ID_BYTES}",
            bytes.len()
        )));
    }
    Ok(())
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! bytes_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Bytes);

        impl $name {
            /// Validates and wraps engine id bytes (1..=256 bytes). The bytes
            /// are copied: an id decoded from a frame would otherwise keep
            /// the whole frame's buffer alive for as long as it is held.
            pub fn new(bytes: impl Into<Bytes>) -> Result<Self, TierError> {
                let bytes = bytes.into();
                check_id($what, &bytes)?;
                Ok(Self(Bytes::copy_from_slice(&bytes)))
            }

            pub fn as_bytes(&self) -> &Bytes {
                &self.0
            }

            /// Lower-case hex, used in file names and logs.
            pub fn to_hex(&self) -> String {
                self.to_string()
            }

            /// Parses the hex form produced by `to_hex`.
            pub fn from_hex(hex: &str) -> Result<Self, TierError> {
                if hex.len() % 2 != 0 {
                    return Err(TierError::bad_input(format!("{} id {hex:?} is not even-length hex", $what)));
                }
                // Pairs of bytes, not string slices: a non-ASCII char would
                // put a slice boundary inside it (a panic), and
                // `from_str_radix` alone would take "+f" as 15.
                let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
                let bytes = hex
                    .as_bytes()
                    .chunks_exact(2)
                    .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| TierError::bad_input(format!("{} id {hex:?} is not hex", $what)))?;
                Self::new(bytes)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }
    };
}

bytes_id!(
    /// A job (Flink `JobID`).
    JobId,
    "job"
);
bytes_id!(
    /// One producer attempt's output (Flink `ResultPartitionID` bytes).
    PartitionId,
    "partition"
);

/// A subpartition index within a partition, from 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SubpartitionId(pub u32);

/// A segment index within a subpartition, from 0, increasing by 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SegmentId(pub u32);

/// An input channel of a consumer's gate (Flink `TieredStorageInputChannelId`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct InputChannelId(pub u32);

impl fmt::Display for SubpartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A worker's id (its `worker_id` setting, or its address): non-empty text
/// of at most [`MAX_ID_BYTES`] bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct WorkerId(String);

impl WorkerId {
    /// Validates a worker id.
    pub fn new(id: impl Into<String>) -> Result<Self, TierError> {
        let id = id.into();
        if id.is_empty() {
            return Err(TierError::bad_input("worker id is empty"));
        }
        if id.len() > MAX_ID_BYTES {
            return Err(TierError::bad_input(format!(
                "worker id has {} bytes, more than {MAX_ID_BYTES}",
                id.len()
            )));
        }
        Ok(WorkerId(id))
    }

    /// Validates a worker id received in the field `field`, whose name the
    /// error gives.
    pub fn parse_field(field: &str, id: String) -> Result<Self, TierError> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(TierError::bad_input(format!(
                "{field} must have 1 to {MAX_ID_BYTES} bytes, not {}",
                id.len()
            )));
        }
        Ok(WorkerId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for WorkerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for WorkerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for WorkerId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Where a partition lives on a worker: its job and its id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PartitionKey {
    pub job: JobId,
    pub partition: PartitionId,
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} partition {}", self.job, self.partition)
    }
}

impl TryFrom<pb::PartitionKey> for PartitionKey {
    type Error = TierError;

    fn try_from(key: pb::PartitionKey) -> Result<Self, TierError> {
        Ok(PartitionKey {
            job: JobId::new(key.job_id)?,
            partition: PartitionId::new(key.partition_id)?,
        })
    }
}

impl TryFrom<Option<pb::PartitionKey>> for PartitionKey {
    type Error = TierError;

    fn try_from(key: Option<pb::PartitionKey>) -> Result<Self, TierError> {
        key.ok_or_else(|| TierError::bad_input("partition key missing"))?
            .try_into()
    }
}

impl From<PartitionKey> for pb::PartitionKey {
    fn from(key: PartitionKey) -> Self {
        pb::PartitionKey {
            job_id: key.job.0,
            partition_id: key.partition.0,
        }
    }
}

impl From<&PartitionKey> for pb::PartitionKey {
    fn from(key: &PartitionKey) -> Self {
        pb::PartitionKey {
            job_id: key.job.0.clone(),
            partition_id: key.partition.0.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_and_roundtrip_hex() {
        assert!(JobId::new(Bytes::new()).is_err());
        assert!(JobId::new(vec![0u8; MAX_ID_BYTES + 1]).is_err());
        let id = PartitionId::new(vec![0x00, 0xab, 0x7f]).expect("valid id");
        assert_eq!(id.to_hex(), "00ab7f");
        assert_eq!(PartitionId::from_hex("00ab7f").expect("hex"), id);
        assert!(PartitionId::from_hex("0g").is_err());
        assert!(PartitionId::from_hex("abc").is_err());
        // Not hex, whatever `from_str_radix` or a string slice would make of it.
        assert!(JobId::from_hex("+f").is_err());
        assert!(JobId::from_hex("é").is_err());
        assert!(JobId::from_hex("0é0").is_err(), "a slice boundary inside é");
        assert_eq!(
            JobId::from_hex("0aFf").expect("hex").as_bytes().as_ref(),
            [0x0a, 0xff]
        );
    }

    #[test]
    fn key_from_proto_requires_both_ids() {
        let missing = pb::PartitionKey {
            job_id: Bytes::from_static(b"j"),
            partition_id: Bytes::new(),
        };
        assert!(PartitionKey::try_from(missing).is_err());
        assert!(PartitionKey::try_from(None::<pb::PartitionKey>).is_err());
    }
}
