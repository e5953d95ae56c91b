//! A partition's segment index, `subpartition → segment → [extent]`, and its
//! persisted form.
//!
//! An extent is one stored run of buffers of a single (subpartition, segment),
//! exactly as pushed, with its own CRC32C. The index says where each extent
//! lives (memory, the local data file, and later object storage), so readers
//! never need to know which tier serves them.
//!
//! Persisted format (little-endian), version 1:
//! ```text
//! magic "TRIX" | u32 version | u32 job id len | job id | u32 partition id len | partition id
//! | u32 num_subpartitions | u8 broadcast_only | u64 data file length
//! | per subpartition: u32 num_segments | per segment: u8 closed | u32 num_extents
//! |   | per extent: u8 location kind (1 = local data file) | u64 offset | u32 len | u32 crc32c | u32 num_buffers
//! | u32 num_forward_pointers (0 in version 1; reserved for splits)
//! | u32 crc32c of everything before it
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use terrace_tier_api::{JobId, PartitionId, PartitionKey, TierError};

const MAGIC: &[u8; 4] = b"TRIX";
const VERSION: u32 = 1;
const LOCATION_LOCAL_FILE: u8 = 1;

/// Where an extent's bytes are.
#[derive(Debug, Clone)]
pub enum Location {
    /// Still in memory, not yet flushed.
    Memory(Bytes),
    /// In the partition's local data file at `offset`.
    LocalFile { offset: u64 },
}

#[derive(Debug, Clone)]
pub struct Extent {
    pub location: Location,
    pub len: u32,
    pub crc32c: u32,
    pub num_buffers: u32,
}

#[derive(Debug, Clone, Default)]
pub struct SegmentIndex {
    pub extents: Vec<Extent>,
    /// The segment ended with END_OF_SEGMENT: nothing more will be added.
    pub closed: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SubpartitionIndex {
    /// Indexed by segment id.
    pub segments: Vec<SegmentIndex>,
}

/// What the persisted index holds.
#[derive(Debug, Clone)]
pub struct PersistedIndex {
    pub key: PartitionKey,
    pub num_subpartitions: u32,
    pub broadcast_only: bool,
    pub data_len: u64,
    pub subpartitions: Vec<SubpartitionIndex>,
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

impl PersistedIndex {
    /// Encodes the index. Every extent must be in the local file.
    pub fn encode(&self) -> Result<Bytes, TierError> {
        let mut out = BytesMut::with_capacity(64 + self.subpartitions.len() * 16);
        out.put_slice(MAGIC);
        out.put_u32_le(VERSION);
        put_bytes(&mut out, self.key.job.as_bytes());
        put_bytes(&mut out, self.key.partition.as_bytes());
        out.put_u32_le(self.num_subpartitions);
        out.put_u8(u8::from(self.broadcast_only));
        out.put_u64_le(self.data_len);
        for sub in &self.subpartitions {
            out.put_u32_le(sub.segments.len() as u32);
            for segment in &sub.segments {
                out.put_u8(u8::from(segment.closed));
                out.put_u32_le(segment.extents.len() as u32);
                for extent in &segment.extents {
                    let Location::LocalFile { offset } = extent.location else {
                        return Err(TierError::internal(
                            "index persisted with an extent still in memory",
                        ));
                    };
                    out.put_u8(LOCATION_LOCAL_FILE);
                    out.put_u64_le(offset);
                    out.put_u32_le(extent.len);
                    out.put_u32_le(extent.crc32c);
                    out.put_u32_le(extent.num_buffers);
                }
            }
        }
        out.put_u32_le(0);
        let crc = crc32c::crc32c(&out);
        out.put_u32_le(crc);
        Ok(out.freeze())
    }

    /// Decodes and checks an index; any damage is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, TierError> {
        let bad = |what: &str| TierError::corruption(format!("partition index: {what}"));
        if bytes.len() < 8 {
            return Err(bad("too short"));
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        if crc32c::crc32c(body) != stored {
            return Err(bad("checksum mismatch"));
        }
        let mut r = body;
        let need = |r: &[u8], n: usize| {
            if r.remaining() < n {
                Err(bad("truncated"))
            } else {
                Ok(())
            }
        };
        need(r, 8)?;
        if &r[..4] != MAGIC {
            return Err(bad("wrong magic"));
        }
        r.advance(4);
        let version = r.get_u32_le();
        if version != VERSION {
            return Err(bad(&format!("unsupported version {version}")));
        }
        let take_id = |r: &mut &[u8]| -> Result<Bytes, TierError> {
            need(r, 4)?;
            let len = r.get_u32_le() as usize;
            need(r, len)?;
            let id = Bytes::copy_from_slice(&r[..len]);
            r.advance(len);
            Ok(id)
        };
        let job = JobId::new(take_id(&mut r)?)?;
        let partition = PartitionId::new(take_id(&mut r)?)?;
        need(r, 13)?;
        let num_subpartitions = r.get_u32_le();
        let broadcast_only = r.get_u8() != 0;
        let data_len = r.get_u64_le();
        let stored_subs = if broadcast_only {
            1
        } else {
            num_subpartitions as usize
        };
        let mut subpartitions = Vec::with_capacity(stored_subs.min(1 << 16));
        for _ in 0..stored_subs {
            need(r, 4)?;
            let num_segments = r.get_u32_le() as usize;
            let mut segments = Vec::with_capacity(num_segments.min(1 << 16));
            for _ in 0..num_segments {
                need(r, 5)?;
                let closed = r.get_u8() != 0;
                let num_extents = r.get_u32_le() as usize;
                let mut extents = Vec::with_capacity(num_extents.min(1 << 16));
                for _ in 0..num_extents {
                    need(r, 21)?;
                    let kind = r.get_u8();
                    if kind != LOCATION_LOCAL_FILE {
                        return Err(bad(&format!("unknown location kind {kind}")));
                    }
                    let offset = r.get_u64_le();
                    let len = r.get_u32_le();
                    let crc32c = r.get_u32_le();
                    let num_buffers = r.get_u32_le();
                    if offset
                        .checked_add(u64::from(len))
                        .is_none_or(|end| end > data_len)
                    {
                        return Err(bad("extent past the end of the data file"));
                    }
                    extents.push(Extent {
                        location: Location::LocalFile { offset },
                        len,
                        crc32c,
                        num_buffers,
                    });
                }
                segments.push(SegmentIndex { extents, closed });
            }
            subpartitions.push(SubpartitionIndex { segments });
        }
        need(r, 4)?;
        let forward_pointers = r.get_u32_le();
        if forward_pointers != 0 {
            return Err(bad("forward pointers are not supported by this version"));
        }
        if r.has_remaining() {
            return Err(bad("trailing bytes"));
        }
        Ok(PersistedIndex {
            key: PartitionKey { job, partition },
            num_subpartitions,
            broadcast_only,
            data_len,
            subpartitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(extents_per_segment: &[Vec<(u64, u32)>], closed_mask: u32) -> PersistedIndex {
        let mut segments = Vec::new();
        for (i, extents) in extents_per_segment.iter().enumerate() {
            segments.push(SegmentIndex {
                closed: closed_mask & (1 << (i % 32)) != 0,
                extents: extents
                    .iter()
                    .map(|&(offset, len)| Extent {
                        location: Location::LocalFile { offset },
                        len,
                        crc32c: (offset as u32).wrapping_mul(31),
                        num_buffers: len / 7,
                    })
                    .collect(),
            });
        }
        PersistedIndex {
            key: PartitionKey {
                job: JobId::new(vec![1, 2, 3]).expect("id"),
                partition: PartitionId::new(vec![9; 40]).expect("id"),
            },
            num_subpartitions: 2,
            broadcast_only: false,
            data_len: 1 << 40,
            subpartitions: vec![SubpartitionIndex { segments }, SubpartitionIndex::default()],
        }
    }

    proptest! {
        #[test]
        fn index_roundtrips(
            extents in proptest::collection::vec(proptest::collection::vec((0u64..1 << 30, 0u32..1 << 20), 0..5), 0..6),
            closed in any::<u32>(),
        ) {
            let index = sample(&extents, closed);
            let bytes = index.encode().expect("all extents on disk");
            let back = PersistedIndex::decode(&bytes).expect("decodes");
            prop_assert_eq!(&back.key, &index.key);
            prop_assert_eq!(back.subpartitions.len(), 2);
            let segs = &back.subpartitions[0].segments;
            prop_assert_eq!(segs.len(), extents.len());
            for (i, (seg, want)) in segs.iter().zip(&extents).enumerate() {
                prop_assert_eq!(seg.closed, closed & (1 << (i % 32)) != 0);
                let got: Vec<(u64, u32)> = seg.extents.iter().map(|e| match e.location {
                    Location::LocalFile { offset } => (offset, e.len),
                    Location::Memory(_) => (u64::MAX, 0),
                }).collect();
                prop_assert_eq!(&got, want);
            }
        }

        /// Any bytes in: an error or an index, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PersistedIndex::decode(&data);
        }

        /// Any single flipped byte is caught.
        #[test]
        fn corruption_is_detected(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let bytes = sample(&[vec![(0, 10), (10, 20)]], 1).encode().expect("encode");
            let mut damaged = bytes.to_vec();
            let i = pos.index(damaged.len());
            damaged[i] ^= flip;
            prop_assert!(PersistedIndex::decode(&damaged).is_err());
        }
    }
}
