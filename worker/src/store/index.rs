//! A partition's segment index, `subpartition → segment → [extent]`: a pure
//! state machine (segment rules, extents, what a reader gets next) and its
//! persisted form. It knows *which* tier holds each extent (a [`Location`]) but
//! does no I/O: where the bytes live is the tiers' business.
//!
//! An extent is one stored run of buffers of a single (subpartition, segment),
//! exactly as pushed, with its own CRC32C.
//!
//! A partition may be split over several workers (a chain). The worker that
//! holds its first part is the one in the engine's shuffle descriptor; each
//! part but the last ends with a *forward pointer* to the worker holding the
//! next part, and a *continuation* part starts each subpartition at the
//! segment where the previous part stopped. A subpartition's segments on one
//! worker are therefore `first_segment..first_segment + n`, and a reader who
//! asks a split part for a segment past its own is redirected.
//!
//! Persisted format (little-endian), version 4:
//! ```text
//! magic "TRIX" | u32 version | u32 job id len | job id | u32 partition id len | partition id
//! | u32 num_subpartitions | u8 broadcast_only
//! | u8 flags (1: continuation, 2: relocated, 4: open)
//! | u64 generation
//! | u32 num_files   | per local data file: u32 id | u64 length
//! | u32 prefix len  | object key prefix (UTF-8)
//! | u32 num_objects | per object: u32 id | u64 length
//! | per subpartition: u32 first_segment | u32 num_segments
//! |   | per segment: u8 closed | u32 num_extents
//! |   | per extent: u8 location kind (1 = local file, 2 = object) | u32 file or object id
//! |   |             | u64 offset | u32 len | u32 crc32c | u32 num_buffers
//! | u32 num_forward_pointers (0 or 1)
//! |   | per pointer: u32 len | next worker's id | u32 len | its data address
//! | u32 crc32c of everything before it
//! ```
//! Version 3 (still read): `flags` is `u8 continuation` (0 or 1), never
//! relocated. A *relocated* partition is one the masters locate here
//! although its descriptor names another worker (created here when that
//! worker was unreachable, or adopted from a decommissioning worker): a
//! restarted worker names it in its heartbeats again. An *open* index is
//! a partition still being written when its worker stopped for a restart
//! (every push it acknowledged flushed and synced first): it is recovered
//! open, and its producer pushes on to it after the restart.
//!
//! Version 2 (still read): no `continuation`, no `first_segment` (0), and no
//! forward pointer. Version 1 (still read): as version 2 without generation
//! or file and object tables; one data file (id 0) whose length follows
//! `broadcast_only` as a u64, and extents `u8 kind (1) | u64 offset | u32 len
//! | u32 crc32c | u32 num_buffers`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use terrace_tier_api::{JobId, PartitionId, PartitionKey, TierError, TierResult};

use super::StoreError;

mod frozen;
use frozen::Frozen;

const MAGIC: &[u8; 4] = b"TRIX";
const VERSION_1: u32 = 1;
const VERSION_2: u32 = 2;
const VERSION_3: u32 = 3;
const VERSION: u32 = 4;
const FLAG_CONTINUATION: u8 = 1;
const FLAG_RELOCATED: u8 = 2;
const FLAG_OPEN: u8 = 4;
const KIND_LOCAL: u8 = 1;
const KIND_OBJECT: u8 = 2;
/// Upper bounds on counts read from a persisted index: anything larger is damage.
const MAX_BLOBS: usize = 1 << 20;
const MAX_PREFIX: usize = 4096;
/// Longest worker id or address in a forward pointer.
const MAX_POINTER_FIELD: usize = 1024;

/// Which tier holds an extent's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In memory, not yet flushed.
    Memory(Bytes),
    /// In the partition's local data file `file`, at `offset`.
    Local { file: u32, offset: u64 },
    /// In the partition's object `object`, at `offset`.
    Object { object: u32, offset: u64 },
}

impl Location {
    pub fn tier(&self) -> TierKind {
        match self {
            Location::Memory(_) => TierKind::Memory,
            Location::Local { .. } => TierKind::Local,
            Location::Object { .. } => TierKind::Object,
        }
    }
}

/// The three tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierKind {
    Memory,
    Local,
    Object,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub location: Location,
    pub len: u32,
    pub crc32c: u32,
    pub num_buffers: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub extents: Vec<Extent>,
    /// The segment ended with END_OF_SEGMENT: nothing more will be added.
    pub closed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubpartitionIndex {
    /// The id of `segments[0]`: 0, except in a continuation part.
    pub first_segment: u32,
    /// Segment `first_segment + i` at `i`.
    pub segments: Vec<SegmentIndex>,
}

impl SubpartitionIndex {
    /// The id the next new segment gets.
    pub fn next_segment(&self) -> u32 {
        self.first_segment + self.segments.len() as u32
    }
}

/// Where a split partition goes on: the worker that holds its next part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub worker_id: String,
    pub address: String,
}

/// One run of a push to append: consecutive buffers of one (subpartition, segment).
#[derive(Debug, Clone)]
pub struct Run {
    pub sub: usize,
    pub segment: usize,
    pub bytes: Bytes,
    pub crc32c: u32,
    pub num_buffers: u32,
    pub ends_segment: bool,
}

/// Where an appended or relocated extent sits in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentRef {
    pub sub: usize,
    /// Position in the subpartition's `segments` (its id less `first_segment`).
    pub segment: usize,
    pub extent: usize,
}

/// What a reader of a segment gets next.
#[derive(Debug)]
pub enum NextRead {
    /// Up to about `max_bytes` of extents of the segment, from the reader's position.
    Extents(Vec<Extent>),
    /// Everything of the (closed) segment was read.
    SegmentDone,
    /// The segment does not exist and never will, or it is the unclosed last
    /// segment of a sealed partition and was read to its end.
    End,
    /// Nothing yet: wait for a change.
    Wait,
    /// The segment lives on the next part of a split partition.
    Redirect(Forward),
}

/// What an append adds to an index: counted before anything is added, so
/// the memory it takes can be charged (or refused) first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Growth {
    pub subpartitions: u64,
    pub segments: u64,
    pub extents: u64,
}

/// Bytes of an index's extents per tier, kept up to date by every append and
/// relocation so that no push has to walk the index to know them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub memory: u64,
    pub local: u64,
    pub object: u64,
}

impl Totals {
    fn add(&mut self, tier: TierKind, len: u64) {
        match tier {
            TierKind::Memory => self.memory += len,
            TierKind::Local => self.local += len,
            TierKind::Object => self.object += len,
        }
    }

    fn sub(&mut self, tier: TierKind, len: u64) {
        let slot = match tier {
            TierKind::Memory => &mut self.memory,
            TierKind::Local => &mut self.local,
            TierKind::Object => &mut self.object,
        };
        *slot = slot.saturating_sub(len);
    }
}

/// The index of one partition.
#[derive(Debug, Clone)]
pub struct PartitionIndex {
    pub num_subpartitions: u32,
    pub broadcast_only: bool,
    /// The stored subpartitions that have data, by number: an index costs
    /// memory for what was written, not for the subpartitions declared.
    /// Empty once the index is frozen.
    subs: std::collections::BTreeMap<usize, SubpartitionIndex>,
    /// The compact form, once the index is settled (sealed, nothing in
    /// memory; see [`PartitionIndex::freeze_if_settled`]): it then holds
    /// what `subs` held.
    frozen: Option<Frozen>,
    /// Sealed: no segment will be added; readers past the end get `End`
    /// (or, with a forward pointer, a redirect).
    pub sealed: bool,
    /// A later part of a split partition: each subpartition's first segment
    /// may have any id (where the previous part stopped).
    pub continuation: bool,
    /// The masters locate this partition here, not on its descriptor's
    /// worker (see the module's notes).
    pub relocated: bool,
    /// Set when the partition was split on: later segments are on that worker.
    pub forward: Option<Forward>,
    /// Bytes per tier (derived from `subs`; see [`PartitionIndex::recount`]).
    totals: Totals,
}

/// Two indexes are equal when they hold the same segments and extents: the
/// totals are derived from those.
impl PartialEq for PartitionIndex {
    fn eq(&self, other: &Self) -> bool {
        self.num_subpartitions == other.num_subpartitions
            && self.broadcast_only == other.broadcast_only
            && *self.tree() == *other.tree()
            && self.sealed == other.sealed
            && self.continuation == other.continuation
            && self.relocated == other.relocated
            && self.forward == other.forward
    }
}

impl Eq for PartitionIndex {}

impl PartitionIndex {
    pub fn new(num_subpartitions: u32, broadcast_only: bool) -> Self {
        PartitionIndex {
            num_subpartitions,
            broadcast_only,
            subs: std::collections::BTreeMap::new(),
            frozen: None,
            sealed: false,
            continuation: false,
            relocated: false,
            forward: None,
            totals: Totals::default(),
        }
    }

    /// Computes the per-tier totals from the extents (after `subs` was
    /// changed by hand, or decoded). Walks the whole index: not for pushes.
    pub fn recount(&mut self) {
        let mut totals = Totals::default();
        for (_, extent) in self.extents() {
            totals.add(extent.location.tier(), u64::from(extent.len));
        }
        self.totals = totals;
    }

    /// Bytes of the extents per tier.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Subpartitions, segments and extents in the index: what its memory
    /// is charged for. Walks the index's segment lists (not its extents).
    pub fn size(&self) -> Growth {
        if let Some(frozen) = &self.frozen {
            let (subpartitions, segments, extents) = frozen.counts();
            return Growth {
                subpartitions,
                segments,
                extents,
            };
        }
        let mut size = Growth {
            subpartitions: self.subs.len() as u64,
            ..Growth::default()
        };
        for sub in self.subs.values() {
            size.segments += sub.segments.len() as u64;
            size.extents += sub
                .segments
                .iter()
                .map(|g| g.extents.len() as u64)
                .sum::<u64>();
        }
        size
    }

    /// Records where the partition goes on. Every segment must be closed: a
    /// segment never spans parts. Readers are redirected once the partition
    /// is also sealed (after the pointer is durable).
    pub fn split(&mut self, next: Forward) -> TierResult<()> {
        if self.forward.is_some() {
            return Err(TierError::bad_input("the partition was already split"));
        }
        if self.sealed {
            return Err(TierError::new(
                terrace_tier_api::ErrorKind::PartitionSealed,
                "sealed; it cannot be split",
            ));
        }
        if let Some((sub, _)) = self
            .subs
            .iter()
            .find(|(_, s)| s.segments.last().is_some_and(|g| !g.closed))
        {
            return Err(TierError::bad_input(format!(
                "subpartition {sub} has an open segment; close every segment before a split"
            )));
        }
        self.forward = Some(next);
        Ok(())
    }

    /// Checks `runs` against the segment rules (segment ids start at 0 and go
    /// up by one, a segment is extended only while open), then appends each as
    /// a memory extent. All or nothing. Returns where each run went.
    pub fn append(&mut self, runs: &[Run]) -> TierResult<Vec<ExtentRef>> {
        self.append_admitted(runs, |_| Ok(()))
    }

    /// [`PartitionIndex::append`], with `admit` told what the runs would add
    /// once they are checked and before anything is added: an error from it
    /// refuses the append. Costs O(runs), whatever the index holds.
    pub fn append_admitted(
        &mut self,
        runs: &[Run],
        admit: impl FnOnce(Growth) -> TierResult<()>,
    ) -> TierResult<Vec<ExtentRef>> {
        if self.sealed {
            return Err(TierError::new(
                terrace_tier_api::ErrorKind::PartitionSealed,
                "sealed; no more pushes",
            ));
        }
        // Only a sealed index is frozen; one unsealed by hand is thawed.
        self.thaw();
        // Per subpartition touched: (last segment, closed) as the runs would leave it.
        let mut state: Vec<(usize, Option<(usize, bool)>)> = Vec::new();
        // Where each subpartition's entry in `state` is (pushes may carry
        // tens of thousands of runs).
        let mut slots: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        let mut growth = Growth {
            extents: runs.len() as u64,
            ..Growth::default()
        };
        for run in runs {
            if run.sub >= self.stored_subpartitions() {
                return Err(TierError::bad_input(format!(
                    "subpartition {} out of range (partition stores {})",
                    run.sub,
                    self.stored_subpartitions()
                )));
            }
            let empty = SubpartitionIndex::default();
            let sub_index = self.subs.get(&run.sub).unwrap_or(&empty);
            let slot = match slots.get(&run.sub) {
                Some(&i) => i,
                None => {
                    if !self.subs.contains_key(&run.sub) {
                        growth.subpartitions += 1;
                    }
                    slots.insert(run.sub, state.len());
                    let last = sub_index
                        .segments
                        .last()
                        .map(|seg| (sub_index.next_segment() as usize - 1, seg.closed));
                    state.push((run.sub, last));
                    state.len() - 1
                }
            };
            let last = state[slot].1;
            let ok = match last {
                // A continuation starts where the previous part stopped.
                None => {
                    run.segment == 0 || (self.continuation && run.segment <= u32::MAX as usize / 2)
                }
                Some((last, closed)) => {
                    (run.segment == last && !closed) || (run.segment == last + 1 && closed)
                }
            };
            if !ok {
                let (last, closed) = match last {
                    Some((g, c)) => (g.to_string(), if c { "closed" } else { "open" }),
                    None => ("none".to_string(), "closed"),
                };
                return Err(TierError::bad_input(format!(
                    "subpartition {} segment {} breaks the segment order (last segment {last}, {closed})",
                    run.sub, run.segment
                )));
            }
            if last.is_none_or(|(g, _)| g != run.segment) {
                growth.segments += 1;
            }
            state[slot].1 = Some((run.segment, run.ends_segment));
        }
        admit(growth)?;
        let mut refs = Vec::with_capacity(runs.len());
        for run in runs {
            let sub = self
                .subs
                .entry(run.sub)
                .or_insert_with(|| SubpartitionIndex {
                    first_segment: run.segment as u32,
                    // Most subpartitions of a partition get one segment.
                    segments: Vec::with_capacity(1),
                });
            let at = run.segment - sub.first_segment as usize;
            let segments = &mut sub.segments;
            if at == segments.len() {
                // Most segments get one extent per push: no spare room.
                segments.push(SegmentIndex {
                    extents: Vec::with_capacity(1),
                    closed: false,
                });
            }
            let segment = &mut segments[at];
            self.totals.memory += run.bytes.len() as u64;
            segment.extents.push(Extent {
                location: Location::Memory(run.bytes.clone()),
                len: run.bytes.len() as u32,
                crc32c: run.crc32c,
                num_buffers: run.num_buffers,
            });
            segment.closed = run.ends_segment;
            refs.push(ExtentRef {
                sub: run.sub,
                segment: at,
                extent: segment.extents.len() - 1,
            });
        }
        Ok(refs)
    }

    /// Points the extent at `at` to a new location (after a flush or a migration).
    pub fn relocate(&mut self, at: ExtentRef, location: Location) {
        if let Some(frozen) = &mut self.frozen {
            let Some(slot) = frozen.slot_of(at.sub, at.segment, at.extent) else {
                return;
            };
            let (len, old) = frozen.at(slot);
            if frozen.set(slot, &location) {
                self.totals.sub(old.tier(), u64::from(len));
                self.totals.add(location.tier(), u64::from(len));
                return;
            }
            // Somewhere the compact form cannot say (never done to a sealed index).
            self.thaw();
        }
        if let Some(extent) = self
            .subs
            .get_mut(&at.sub)
            .and_then(|s| s.segments.get_mut(at.segment))
            .and_then(|g| g.extents.get_mut(at.extent))
        {
            let len = u64::from(extent.len);
            self.totals.sub(extent.location.tier(), len);
            self.totals.add(location.tier(), len);
            extent.location = location;
        }
    }

    /// Points `extents` (each with its length) at `object`, laid out one
    /// after another from offset 0 in the order given (a migration's or a
    /// compaction's new object).
    pub fn relocate_into(
        &mut self,
        object: u32,
        extents: impl IntoIterator<Item = (ExtentRef, u32)>,
    ) {
        let mut offset = 0u64;
        for (at, len) in extents {
            self.relocate(at, Location::Object { object, offset });
            offset += u64::from(len);
        }
    }

    /// Every extent with where it is, in (subpartition, segment, write) order.
    pub fn extents(&self) -> impl Iterator<Item = (ExtentRef, Extent)> + '_ {
        self.sub_views().flat_map(|(sub, view)| {
            (0..view.num_segments()).flat_map(move |segment| {
                (0..view.num_extents(segment)).map(move |extent| {
                    (
                        ExtentRef {
                            sub,
                            segment,
                            extent,
                        },
                        view.extent(segment, extent),
                    )
                })
            })
        })
    }

    /// Switches the index to its compact form if it is settled: sealed,
    /// with no extent in memory. Returns whether it switched now. A frozen
    /// index reads and relocates as before; only appends (refused once
    /// sealed) need the tree form.
    pub fn freeze_if_settled(&mut self) -> bool {
        if self.frozen.is_some() || !self.sealed || self.totals.memory != 0 {
            return false;
        }
        match Frozen::of(&self.subs) {
            Some(frozen) => {
                self.frozen = Some(frozen);
                self.subs = std::collections::BTreeMap::new();
                true
            }
            None => false,
        }
    }

    /// Whether the index is in its compact form.
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Bytes the compact form's arrays take (0 in the tree form).
    pub fn frozen_bytes(&self) -> u64 {
        self.frozen.as_ref().map_or(0, Frozen::bytes)
    }

    /// Back to the tree form.
    fn thaw(&mut self) {
        if let Some(frozen) = self.frozen.take() {
            self.subs = frozen.thaw();
        }
    }

    /// The tree form's map, built from the compact form when frozen.
    fn tree(&self) -> std::borrow::Cow<'_, std::collections::BTreeMap<usize, SubpartitionIndex>> {
        match &self.frozen {
            Some(frozen) => std::borrow::Cow::Owned(frozen.thaw()),
            None => std::borrow::Cow::Borrowed(&self.subs),
        }
    }

    /// Stored subpartition `number`, if it has data.
    fn sub(&self, number: usize) -> Option<SubView<'_>> {
        match &self.frozen {
            Some(frozen) => frozen.find(number).map(|slot| SubView::Flat(frozen, slot)),
            None => self.subs.get(&number).map(SubView::Tree),
        }
    }

    /// Every stored subpartition with data, by number.
    fn sub_views(&self) -> Box<dyn Iterator<Item = (usize, SubView<'_>)> + '_> {
        match &self.frozen {
            Some(frozen) => Box::new(
                (0..frozen.len())
                    .map(move |slot| (frozen.number(slot), SubView::Flat(frozen, slot))),
            ),
            None => Box::new(self.subs.iter().map(|(&n, s)| (n, SubView::Tree(s)))),
        }
    }

    /// Where `subpartition`'s data is stored: a broadcast-only partition
    /// stores subpartition 0 for all.
    fn stored_sub(&self, subpartition: u32) -> usize {
        if self.broadcast_only {
            0
        } else {
            subpartition as usize
        }
    }

    /// Subpartitions the index stores data for: 1 for a broadcast-only
    /// partition, else all of them.
    pub fn stored_subpartitions(&self) -> usize {
        if self.broadcast_only {
            1
        } else {
            self.num_subpartitions as usize
        }
    }

    /// Stored bytes per subpartition, `num_subpartitions` entries; a
    /// broadcast-only partition's one stored copy is every subpartition's.
    pub fn subpartition_bytes(&self) -> Vec<u64> {
        let bytes = |sub: usize| -> u64 {
            self.sub(sub).map_or(0, |view| {
                (0..view.num_segments())
                    .flat_map(|g| (0..view.num_extents(g)).map(move |e| (g, e)))
                    .map(|(g, e)| u64::from(view.len(g, e)))
                    .sum()
            })
        };
        (0..self.num_subpartitions)
            .map(|sub| bytes(self.stored_sub(sub)))
            .collect()
    }

    /// Bytes of all extents.
    pub fn stored_bytes(&self) -> u64 {
        self.totals.memory + self.totals.local + self.totals.object
    }

    /// What a reader of `subpartition` positioned at extent `position` of
    /// `segment` gets next: at most about `max_bytes` of extents (always at
    /// least one).
    pub fn next_read(
        &self,
        subpartition: u32,
        segment: u32,
        position: usize,
        max_bytes: usize,
    ) -> NextRead {
        let sub = self.stored_sub(subpartition);
        let found = self
            .sub(sub)
            .and_then(|view| Some((view, view.segment_at(segment)?)));
        let Some((view, seg)) = found else {
            return match &self.forward {
                Some(next) if self.sealed && !self.precedes(sub, segment) => {
                    NextRead::Redirect(next.clone())
                }
                _ if self.sealed => NextRead::End,
                _ => NextRead::Wait,
            };
        };
        let num_extents = view.num_extents(seg);
        if position < num_extents {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for k in position..num_extents {
                let len = view.len(seg, k) as usize;
                if !out.is_empty() && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                out.push(view.extent(seg, k));
            }
            return NextRead::Extents(out);
        }
        if view.closed(seg) {
            NextRead::SegmentDone
        } else if self.sealed {
            NextRead::End
        } else {
            NextRead::Wait
        }
    }
}

impl PartitionIndex {
    /// Whether `segment` of stored subpartition `sub` comes before this
    /// part's first (a continuation part never holds those).
    fn precedes(&self, sub: usize, segment: u32) -> bool {
        self.sub(sub)
            .is_some_and(|view| segment < view.first_segment())
    }

    /// The object range a reader of `subpartition` at extent `position` of
    /// `segment` will read next, grown over the following extents (across
    /// segments, closed or not) while they lie back to back in the same
    /// object, up to about `max_bytes` (at least the first extent). `None`
    /// when that next extent is not in the object store.
    pub fn object_run(
        &self,
        subpartition: u32,
        segment: u32,
        position: usize,
        max_bytes: u64,
    ) -> Option<(u32, std::ops::Range<u64>)> {
        let sub = self.stored_sub(subpartition);
        let view = self.sub(sub)?;
        let at = view.segment_at(segment)?;
        let mut extents = (at..view.num_segments()).flat_map(|g| {
            let skip = if g == at { position } else { 0 };
            (skip..view.num_extents(g)).map(move |k| view.extent(g, k))
        });
        let first = extents.next()?;
        let Location::Object { object, offset } = first.location else {
            return None;
        };
        let mut end = offset + u64::from(first.len);
        for extent in extents {
            match extent.location {
                Location::Object {
                    object: o,
                    offset: at,
                } if o == object
                    && at == end
                    && end + u64::from(extent.len) - offset <= max_bytes =>
                {
                    end += u64::from(extent.len)
                }
                _ => break,
            }
        }
        Some((object, offset..end))
    }
}

/// One stored subpartition with data, in either form of the index.
#[derive(Clone, Copy)]
enum SubView<'a> {
    Tree(&'a SubpartitionIndex),
    Flat(&'a Frozen, usize),
}

impl SubView<'_> {
    fn first_segment(self) -> u32 {
        match self {
            SubView::Tree(s) => s.first_segment,
            SubView::Flat(f, slot) => f.first_segment(slot),
        }
    }

    fn num_segments(self) -> usize {
        match self {
            SubView::Tree(s) => s.segments.len(),
            SubView::Flat(f, slot) => f.num_segments(slot),
        }
    }

    /// The position of the segment with id `segment`, if this part holds it.
    fn segment_at(self, segment: u32) -> Option<usize> {
        let at = segment.checked_sub(self.first_segment())? as usize;
        (at < self.num_segments()).then_some(at)
    }

    fn closed(self, segment: usize) -> bool {
        match self {
            SubView::Tree(s) => s.segments[segment].closed,
            SubView::Flat(f, slot) => f.closed(slot, segment),
        }
    }

    fn num_extents(self, segment: usize) -> usize {
        match self {
            SubView::Tree(s) => s.segments[segment].extents.len(),
            SubView::Flat(f, slot) => f.num_extents(slot, segment),
        }
    }

    fn extent(self, segment: usize, extent: usize) -> Extent {
        match self {
            SubView::Tree(s) => s.segments[segment].extents[extent].clone(),
            SubView::Flat(f, slot) => f.extent(slot, segment, extent),
        }
    }

    fn len(self, segment: usize, extent: usize) -> u32 {
        match self {
            SubView::Tree(s) => s.segments[segment].extents[extent].len,
            SubView::Flat(f, slot) => f.extent(slot, segment, extent).len,
        }
    }
}

/// A local data file or an object of a partition: its id and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    pub id: u32,
    pub len: u64,
}

/// What the persisted index holds: the sealed index plus the partition's
/// local files and objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedIndex {
    pub key: PartitionKey,
    /// Bumped on every rewrite (a migration); the highest one wins at recovery.
    pub generation: u64,
    pub files: Vec<Blob>,
    /// Key prefix of the partition's objects (empty when it has none).
    pub object_prefix: String,
    pub objects: Vec<Blob>,
    pub index: PartitionIndex,
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_blobs(out: &mut BytesMut, blobs: &[Blob]) {
    out.put_u32_le(blobs.len() as u32);
    for blob in blobs {
        out.put_u32_le(blob.id);
        out.put_u64_le(blob.len);
    }
}

/// A cursor over a persisted index that turns every shortfall into an error.
struct Reader<'a> {
    r: &'a [u8],
}

fn damaged(what: &str) -> TierError {
    StoreError::Corrupt {
        what: "partition index".to_string(),
        detail: what.to_string(),
    }
    .into()
}

impl Reader<'_> {
    fn need(&self, n: usize) -> TierResult<()> {
        if self.r.remaining() < n {
            Err(damaged("truncated"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> TierResult<u8> {
        self.need(1)?;
        Ok(self.r.get_u8())
    }
    fn u32(&mut self) -> TierResult<u32> {
        self.need(4)?;
        Ok(self.r.get_u32_le())
    }
    fn u64(&mut self) -> TierResult<u64> {
        self.need(8)?;
        Ok(self.r.get_u64_le())
    }
    fn bytes(&mut self, max: usize) -> TierResult<&[u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(damaged("field too long"));
        }
        self.need(len)?;
        let (head, tail) = self.r.split_at(len);
        self.r = tail;
        Ok(head)
    }
    fn blobs(&mut self) -> TierResult<Vec<Blob>> {
        let n = self.u32()? as usize;
        if n > MAX_BLOBS {
            return Err(damaged("too many files or objects"));
        }
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let id = self.u32()?;
            let len = self.u64()?;
            if out.iter().any(|b: &Blob| b.id == id) {
                return Err(damaged("a file or object id appears twice"));
            }
            out.push(Blob { id, len });
        }
        Ok(out)
    }
}

impl PersistedIndex {
    /// Whether every byte is in the object store (no local file, no extent
    /// elsewhere): what a partition handed to another worker must be.
    pub fn wholly_in_object_store(&self) -> bool {
        self.files.is_empty()
            && self
                .index
                .extents()
                .all(|(_, e)| e.location.tier() == TierKind::Object)
    }

    /// Encodes the index. Every extent must be in a local file or an object
    /// that the tables list.
    pub fn encode(&self) -> TierResult<Bytes> {
        let mut out = BytesMut::with_capacity(
            128 + self.index.stored_subpartitions() * 4 + self.index.size().extents as usize * 25,
        );
        out.put_slice(MAGIC);
        out.put_u32_le(VERSION);
        put_bytes(&mut out, self.key.job.as_bytes());
        put_bytes(&mut out, self.key.partition.as_bytes());
        out.put_u32_le(self.index.num_subpartitions);
        out.put_u8(u8::from(self.index.broadcast_only));
        let mut flags = 0;
        if self.index.continuation {
            flags |= FLAG_CONTINUATION;
        }
        if self.index.relocated {
            flags |= FLAG_RELOCATED;
        }
        if !self.index.sealed {
            flags |= FLAG_OPEN;
        }
        out.put_u8(flags);
        out.put_u64_le(self.generation);
        put_blobs(&mut out, &self.files);
        put_bytes(&mut out, self.object_prefix.as_bytes());
        put_blobs(&mut out, &self.objects);
        for number in 0..self.index.stored_subpartitions() {
            let Some(sub) = self.index.sub(number) else {
                out.put_u32_le(0);
                out.put_u32_le(0);
                continue;
            };
            out.put_u32_le(sub.first_segment());
            out.put_u32_le(sub.num_segments() as u32);
            for segment in 0..sub.num_segments() {
                out.put_u8(u8::from(sub.closed(segment)));
                out.put_u32_le(sub.num_extents(segment) as u32);
                for extent in (0..sub.num_extents(segment)).map(|k| sub.extent(segment, k)) {
                    let (kind, id, offset) = match extent.location {
                        Location::Local { file, offset } => (KIND_LOCAL, file, offset),
                        Location::Object { object, offset } => (KIND_OBJECT, object, offset),
                        Location::Memory(_) => {
                            return Err(TierError::internal(
                                "index persisted with an extent still in memory",
                            ));
                        }
                    };
                    out.put_u8(kind);
                    out.put_u32_le(id);
                    out.put_u64_le(offset);
                    out.put_u32_le(extent.len);
                    out.put_u32_le(extent.crc32c);
                    out.put_u32_le(extent.num_buffers);
                }
            }
        }
        match &self.index.forward {
            None => out.put_u32_le(0),
            Some(next) => {
                out.put_u32_le(1);
                put_bytes(&mut out, next.worker_id.as_bytes());
                put_bytes(&mut out, next.address.as_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.put_u32_le(crc);
        Ok(out.freeze())
    }

    /// Decodes and checks an index of any version this worker reads; any
    /// damage is an error, never a panic. The result is sealed, unless it
    /// stands for a partition left open by a restart.
    pub fn decode(bytes: &[u8]) -> TierResult<Self> {
        if bytes.len() < 12 {
            return Err(damaged("too short"));
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        if crc32c::crc32c(body) != stored {
            return Err(damaged("checksum mismatch"));
        }
        let mut r = Reader { r: body };
        r.need(4)?;
        if &r.r[..4] != MAGIC {
            return Err(damaged("wrong magic"));
        }
        r.r.advance(4);
        let version = r.u32()?;
        if !(VERSION_1..=VERSION).contains(&version) {
            return Err(damaged(&format!("unsupported version {version}")));
        }
        let job = JobId::new(Bytes::copy_from_slice(r.bytes(usize::MAX)?))?;
        let partition = PartitionId::new(Bytes::copy_from_slice(r.bytes(usize::MAX)?))?;
        let num_subpartitions = r.u32()?;
        let broadcast_only = r.u8()? != 0;
        let flags = if version >= VERSION_3 { r.u8()? } else { 0 };
        let (continuation, relocated, open) = match version {
            VERSION => {
                if flags & !(FLAG_CONTINUATION | FLAG_RELOCATED | FLAG_OPEN) != 0 {
                    return Err(damaged(&format!("unknown flags {flags:#x}")));
                }
                (
                    flags & FLAG_CONTINUATION != 0,
                    flags & FLAG_RELOCATED != 0,
                    flags & FLAG_OPEN != 0,
                )
            }
            _ => (flags != 0, false, false),
        };
        let (generation, files, object_prefix, objects) = if version == VERSION_1 {
            let data_len = r.u64()?;
            (
                0,
                vec![Blob {
                    id: 0,
                    len: data_len,
                }],
                String::new(),
                Vec::new(),
            )
        } else {
            let generation = r.u64()?;
            let files = r.blobs()?;
            let prefix = std::str::from_utf8(r.bytes(MAX_PREFIX)?)
                .map_err(|_| damaged("object prefix is not UTF-8"))?
                .to_string();
            let objects = r.blobs()?;
            (generation, files, prefix, objects)
        };
        let mut index = PartitionIndex::new(num_subpartitions, broadcast_only);
        index.continuation = continuation;
        index.relocated = relocated;
        // A stored subpartition takes at least 4 bytes: more than the rest holds is damage.
        if index.stored_subpartitions() > r.r.remaining() / 4 {
            return Err(damaged("more subpartitions than bytes"));
        }
        for number in 0..index.stored_subpartitions() {
            let first_segment = if version >= VERSION_3 { r.u32()? } else { 0 };
            let num_segments = r.u32()? as usize;
            if num_segments == 0 {
                continue;
            }
            if first_segment > 0 && !continuation {
                return Err(damaged("a first part that does not start at segment 0"));
            }
            if u64::from(first_segment) + num_segments as u64 > u64::from(u32::MAX) {
                return Err(damaged("segment ids past u32"));
            }
            let sub = index.subs.entry(number).or_default();
            sub.first_segment = first_segment;
            if num_segments > r.r.remaining() / 5 {
                return Err(damaged("more segments than bytes"));
            }
            sub.segments.reserve(num_segments);
            for _ in 0..num_segments {
                let closed = r.u8()? != 0;
                let num_extents = r.u32()? as usize;
                if num_extents > r.r.remaining() / 21 {
                    return Err(damaged("more extents than bytes"));
                }
                let mut extents = Vec::with_capacity(num_extents);
                for _ in 0..num_extents {
                    let kind = r.u8()?;
                    let id = if version == VERSION_1 { 0 } else { r.u32()? };
                    let offset = r.u64()?;
                    let len = r.u32()?;
                    let crc32c = r.u32()?;
                    let num_buffers = r.u32()?;
                    let (table, location) = match kind {
                        KIND_LOCAL => (&files, Location::Local { file: id, offset }),
                        KIND_OBJECT if version >= VERSION_2 => {
                            (&objects, Location::Object { object: id, offset })
                        }
                        other => return Err(damaged(&format!("unknown location kind {other}"))),
                    };
                    let Some(blob) = table.iter().find(|b| b.id == id) else {
                        return Err(damaged(&format!(
                            "extent names unknown file or object {id}"
                        )));
                    };
                    if offset
                        .checked_add(u64::from(len))
                        .is_none_or(|end| end > blob.len)
                    {
                        return Err(damaged("extent past the end of its file or object"));
                    }
                    extents.push(Extent {
                        location,
                        len,
                        crc32c,
                        num_buffers,
                    });
                }
                sub.segments.push(SegmentIndex { extents, closed });
            }
        }
        match r.u32()? {
            0 => {}
            1 if version >= VERSION_3 => {
                let mut text = |what: &str| -> TierResult<String> {
                    std::str::from_utf8(r.bytes(MAX_POINTER_FIELD)?)
                        .map(str::to_string)
                        .map_err(|_| damaged(&format!("forward pointer {what} is not UTF-8")))
                };
                let worker_id = text("worker id")?;
                let address = text("address")?;
                index.forward = Some(Forward { worker_id, address });
            }
            _ => return Err(damaged("unsupported forward pointers")),
        }
        if r.r.has_remaining() {
            return Err(damaged("trailing bytes"));
        }
        index.sealed = !open;
        index.recount();
        Ok(PersistedIndex {
            key: PartitionKey { job, partition },
            generation,
            files,
            object_prefix,
            objects,
            index,
        })
    }
}

#[cfg(test)]
mod tests;
