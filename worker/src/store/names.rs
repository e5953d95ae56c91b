//! The names a worker gives jobs and partitions in its data directories and
//! object keys.
//!
//! An id of up to [`PLAIN_BYTES`] bytes is named by its lower-case hex. A
//! longer one (Flink's partition ids are 80 bytes, and ids may have 256) is
//! named `{hex of its first 16 bytes}-{hex of 16 bytes of its SHA-256}`, so
//! that no name passes a file system's 255-byte limit and object keys stay
//! short enough for every S3 server (s3s-fs fails on keys of about 190
//! bytes). The `-` keeps the two forms apart: no plain name can equal a
//! digest name. The persisted index carries the full id, and recovery checks
//! it against the name.

use ring::digest::{SHA256, digest};
use terrace_tier_api::{JobId, PartitionId};

/// Longest id, in bytes, that is named by its plain hex.
pub const PLAIN_BYTES: usize = 32;

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn id_name(bytes: &[u8]) -> String {
    if bytes.len() <= PLAIN_BYTES {
        return hex(bytes);
    }
    let sum = digest(&SHA256, bytes);
    format!("{}-{}", hex(&bytes[..16]), hex(&sum.as_ref()[..16]))
}

pub fn job_name(job: &JobId) -> String {
    id_name(job.as_bytes())
}

pub fn partition_name(partition: &PartitionId) -> String {
    id_name(partition.as_bytes())
}

/// Whether `s` has the form of a name this module gives.
pub fn is_name(s: &str) -> bool {
    fn is_hex(s: &str) -> bool {
        !s.is_empty()
            && s.len() % 2 == 0
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }
    match s.split_once('-') {
        None => is_hex(s) && s.len() <= PLAIN_BYTES * 2,
        Some((head, sum)) => head.len() == 32 && sum.len() == 32 && is_hex(head) && is_hex(sum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_plain_hex_and_long_ones_are_bounded_and_distinct() {
        let short = PartitionId::new(vec![0xab; PLAIN_BYTES]).expect("id");
        assert_eq!(partition_name(&short), "ab".repeat(PLAIN_BYTES));
        assert!(is_name(&partition_name(&short)));

        let long_a = PartitionId::new(vec![7u8; 256]).expect("id");
        let mut other = vec![7u8; 256];
        other[255] = 8;
        let long_b = PartitionId::new(other).expect("id");
        let (a, b) = (partition_name(&long_a), partition_name(&long_b));
        assert_eq!(a.len(), 65);
        assert!(a.starts_with(&"07".repeat(16)));
        assert_ne!(a, b, "ids differing in their last byte get different names");
        assert!(is_name(&a) && is_name(&b));
        // Deterministic across calls (and so across restarts).
        assert_eq!(a, partition_name(&long_a));

        for bad in [
            "",
            "abc",
            "AB",
            "zz",
            "ab-cd",
            &"ab".repeat(PLAIN_BYTES + 1),
        ] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }
}
