//! The compact form of a settled index: once a partition is sealed and none
//! of its extents is in memory, its index only ever changes where an extent
//! lives (a migration or a compaction moves it), never its shape. It is then
//! kept as three flat arrays instead of a tree of lists: 12 bytes per written
//! subpartition, 4 per segment and 24 per extent, against about 400 for the
//! tree form's smallest subpartition (a tree entry, a segment list and an
//! extent list, each allocated with spare room). What a worker holding a
//! million written subpartitions of sealed partitions needs is then tens of
//! megabytes, not hundreds.

use std::collections::BTreeMap;

use super::{Extent, Location, SegmentIndex, SubpartitionIndex};

/// Segment entries keep the closed flag in their top bit.
const CLOSED: u32 = 1 << 31;
/// Object ids keep the tier in their top bit (set: an object).
const OBJECT: u32 = 1 << 31;

/// One extent, packed: where (a local file or an object, and the offset),
/// its length, CRC32C and buffer count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    offset: u64,
    place: u32,
    len: u32,
    crc32c: u32,
    num_buffers: u32,
}

impl Packed {
    fn of(extent: &Extent) -> Option<Packed> {
        let (place, offset) = match extent.location {
            Location::Local { file, offset } if file < OBJECT => (file, offset),
            Location::Object { object, offset } if object < OBJECT => (object | OBJECT, offset),
            _ => return None,
        };
        Some(Packed {
            offset,
            place,
            len: extent.len,
            crc32c: extent.crc32c,
            num_buffers: extent.num_buffers,
        })
    }

    fn location(&self) -> Location {
        if self.place & OBJECT != 0 {
            Location::Object {
                object: self.place & !OBJECT,
                offset: self.offset,
            }
        } else {
            Location::Local {
                file: self.place,
                offset: self.offset,
            }
        }
    }

    fn extent(&self) -> Extent {
        Extent {
            location: self.location(),
            len: self.len,
            crc32c: self.crc32c,
            num_buffers: self.num_buffers,
        }
    }
}

/// A written subpartition: its number, its first segment's id, and where
/// its segments start in [`Frozen::segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sub {
    number: u32,
    first_segment: u32,
    first: u32,
}

/// The compact index: subpartitions by number, their segments one after
/// another (each the position of its first extent, with the closed flag;
/// one more entry at the end closes the last), and the extents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen {
    subs: Vec<Sub>,
    segments: Vec<u32>,
    extents: Vec<Packed>,
}

/// Where one extent of a frozen index is.
#[derive(Debug, Clone, Copy)]
pub struct Slot(usize);

impl Frozen {
    /// The compact form of `subs`, or `None` when an extent is still in
    /// memory or a count does not fit (then the tree form stays).
    pub fn of(subs: &BTreeMap<usize, SubpartitionIndex>) -> Option<Frozen> {
        let mut out = Frozen {
            subs: Vec::with_capacity(subs.len()),
            segments: Vec::with_capacity(
                subs.values().map(|s| s.segments.len()).sum::<usize>() + 1,
            ),
            extents: Vec::with_capacity(
                subs.values()
                    .flat_map(|s| &s.segments)
                    .map(|g| g.extents.len())
                    .sum(),
            ),
        };
        if out.extents.capacity() >= CLOSED as usize || out.segments.capacity() >= u32::MAX as usize
        {
            return None;
        }
        for (&number, sub) in subs {
            out.subs.push(Sub {
                number: u32::try_from(number).ok()?,
                first_segment: sub.first_segment,
                first: out.segments.len() as u32,
            });
            for segment in &sub.segments {
                let closed = if segment.closed { CLOSED } else { 0 };
                out.segments.push(out.extents.len() as u32 | closed);
                for extent in &segment.extents {
                    out.extents.push(Packed::of(extent)?);
                }
            }
        }
        out.segments.push(out.extents.len() as u32);
        Some(out)
    }

    /// The tree form again.
    pub fn thaw(&self) -> BTreeMap<usize, SubpartitionIndex> {
        (0..self.subs.len())
            .map(|slot| {
                let sub = self.subs[slot];
                let segments = (0..self.num_segments(slot))
                    .map(|i| SegmentIndex {
                        extents: (0..self.num_extents(slot, i))
                            .map(|k| self.extent(slot, i, k))
                            .collect(),
                        closed: self.closed(slot, i),
                    })
                    .collect();
                (
                    sub.number as usize,
                    SubpartitionIndex {
                        first_segment: sub.first_segment,
                        segments,
                    },
                )
            })
            .collect()
    }

    /// The slot of subpartition `number`, if it has data.
    pub fn find(&self, number: usize) -> Option<usize> {
        let number = u32::try_from(number).ok()?;
        self.subs.binary_search_by_key(&number, |s| s.number).ok()
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }

    pub fn number(&self, slot: usize) -> usize {
        self.subs[slot].number as usize
    }

    pub fn first_segment(&self, slot: usize) -> u32 {
        self.subs[slot].first_segment
    }

    fn segment_range(&self, slot: usize) -> std::ops::Range<usize> {
        let start = self.subs[slot].first as usize;
        let end = self
            .subs
            .get(slot + 1)
            .map_or(self.segments.len() - 1, |next| next.first as usize);
        start..end
    }

    pub fn num_segments(&self, slot: usize) -> usize {
        self.segment_range(slot).len()
    }

    fn extent_range(&self, slot: usize, segment: usize) -> std::ops::Range<usize> {
        let at = self.segment_range(slot).start + segment;
        (self.segments[at] & !CLOSED) as usize..(self.segments[at + 1] & !CLOSED) as usize
    }

    pub fn closed(&self, slot: usize, segment: usize) -> bool {
        self.segments[self.segment_range(slot).start + segment] & CLOSED != 0
    }

    pub fn num_extents(&self, slot: usize, segment: usize) -> usize {
        self.extent_range(slot, segment).len()
    }

    pub fn extent(&self, slot: usize, segment: usize, extent: usize) -> Extent {
        self.extents[self.extent_range(slot, segment).start + extent].extent()
    }

    /// Extent `extent` of `segment` of subpartition `number`, if there is one.
    pub fn slot_of(&self, number: usize, segment: usize, extent: usize) -> Option<Slot> {
        let slot = self.find(number)?;
        if segment >= self.num_segments(slot) {
            return None;
        }
        let range = self.extent_range(slot, segment);
        (extent < range.len()).then_some(Slot(range.start + extent))
    }

    /// The length and location of the extent at `slot`.
    pub fn at(&self, slot: Slot) -> (u32, Location) {
        let packed = &self.extents[slot.0];
        (packed.len, packed.location())
    }

    /// Moves the extent at `slot` to `location`; false (and nothing moved)
    /// when the compact form cannot hold it (in memory, or an id past 2^31).
    pub fn set(&mut self, slot: Slot, location: &Location) -> bool {
        let packed = &mut self.extents[slot.0];
        let mut moved = *packed;
        let (place, offset) = match *location {
            Location::Local { file, offset } if file < OBJECT => (file, offset),
            Location::Object { object, offset } if object < OBJECT => (object | OBJECT, offset),
            _ => return false,
        };
        moved.place = place;
        moved.offset = offset;
        *packed = moved;
        true
    }

    /// Written subpartitions, segments and extents.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.subs.len() as u64,
            self.segments.len() as u64 - 1,
            self.extents.len() as u64,
        )
    }

    /// What this form takes in memory (its arrays).
    pub fn bytes(&self) -> u64 {
        (self.subs.capacity() * std::mem::size_of::<Sub>()
            + self.segments.capacity() * 4
            + self.extents.capacity() * std::mem::size_of::<Packed>()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_entries_are_as_small_as_the_notes_say() {
        assert_eq!(std::mem::size_of::<Sub>(), 12);
        assert_eq!(std::mem::size_of::<Packed>(), 24);
    }

    #[test]
    fn memory_extents_and_huge_ids_keep_the_tree_form() {
        let extent = |location| Extent {
            location,
            len: 1,
            crc32c: 0,
            num_buffers: 1,
        };
        let tree = |location| {
            let mut subs = BTreeMap::new();
            subs.insert(
                3,
                SubpartitionIndex {
                    first_segment: 0,
                    segments: vec![SegmentIndex {
                        extents: vec![extent(location)],
                        closed: true,
                    }],
                },
            );
            subs
        };
        assert!(Frozen::of(&tree(Location::Memory(bytes::Bytes::from_static(b"x")))).is_none());
        assert!(
            Frozen::of(&tree(Location::Object {
                object: OBJECT,
                offset: 0
            }))
            .is_none()
        );
        let subs = tree(Location::Object {
            object: OBJECT - 1,
            offset: 7,
        });
        let mut frozen = Frozen::of(&subs).expect("compact");
        assert_eq!(frozen.thaw(), subs);
        let slot = frozen.slot_of(3, 0, 0).expect("the extent");
        assert!(!frozen.set(slot, &Location::Memory(bytes::Bytes::new())));
        assert!(frozen.slot_of(3, 0, 1).is_none() && frozen.slot_of(2, 0, 0).is_none());
    }
}
