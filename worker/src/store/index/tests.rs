//! Property tests of the index state machine and of every persisted version it reads.

use super::*;
use proptest::prelude::*;

fn key() -> PartitionKey {
    PartitionKey {
        job: JobId::new(vec![1, 2, 3]).expect("id"),
        partition: PartitionId::new(vec![9; 40]).expect("id"),
    }
}

fn run(sub: usize, segment: usize, len: usize, ends: bool, tag: u8) -> Run {
    let bytes = Bytes::from(vec![tag; len]);
    Run {
        sub,
        segment,
        crc32c: crc32c::crc32c(&bytes),
        bytes,
        num_buffers: 1 + len as u32 % 3,
        ends_segment: ends,
    }
}

/// The model: per subpartition, segments of (extent tags, closed).
type Model = Vec<Vec<(Vec<u8>, bool)>>;

fn model_accepts(model: &Model, runs: &[(usize, usize, bool)]) -> bool {
    let mut m = model.clone();
    for &(sub, segment, ends) in runs {
        let segs = &mut m[sub];
        let ok = match segs.last() {
            None => segment == 0,
            Some((_, closed)) => {
                let last = segs.len() - 1;
                (segment == last && !closed) || (segment == last + 1 && *closed)
            }
        };
        if !ok {
            return false;
        }
        if segment == segs.len() {
            segs.push((Vec::new(), false));
        }
        segs[segment].1 = ends;
    }
    true
}

/// Reads every segment of every subpartition in small batches, as a stream would.
fn read_all(index: &PartitionIndex, subs: u32, max_bytes: usize) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for sub in 0..subs {
        let mut segments = Vec::new();
        let mut segment = 0u32;
        loop {
            let mut tags = Vec::new();
            let mut position = 0;
            let finished = loop {
                match index.next_read(sub, segment, position, max_bytes) {
                    NextRead::Extents(extents) => {
                        assert!(!extents.is_empty(), "a batch holds at least one extent");
                        position += extents.len();
                        for e in extents {
                            match e.location {
                                Location::Memory(b) => tags.push(b.first().copied().unwrap_or(0)),
                                Location::Local { offset, .. }
                                | Location::Object { offset, .. } => tags.push(offset as u8),
                            }
                        }
                    }
                    NextRead::SegmentDone => break false,
                    NextRead::End => break true,
                    NextRead::Wait => break true,
                    NextRead::Redirect(next) => panic!("unexpected redirect to {next:?}"),
                }
            };
            if !tags.is_empty() || !finished {
                segments.push(tags);
            }
            if finished {
                break;
            }
            segment += 1;
        }
        out.push(segments);
    }
    out
}

proptest! {
    /// Any sequence of pushes: the index accepts exactly what the segment
    /// rules allow, all or nothing, and readers see exactly the accepted
    /// extents in write order, whatever the batch size.
    #[test]
    fn state_machine_follows_the_segment_rules(
        pushes in proptest::collection::vec(
            proptest::collection::vec((0usize..3, 0usize..4, any::<bool>(), 1usize..50), 1..4),
            0..30,
        ),
        max_bytes in 1usize..200,
        seal in any::<bool>(),
    ) {
        let mut index = PartitionIndex::new(3, false);
        let mut model: Model = vec![Vec::new(); 3];
        let mut tag = 1u8;
        for push in pushes {
            let shape: Vec<(usize, usize, bool)> = push.iter().map(|&(s, g, e, _)| (s, g, e)).collect();
            let runs: Vec<Run> = push.iter().map(|&(s, g, e, len)| {
                tag = tag.wrapping_add(1).max(1);
                run(s, g, len, e, tag)
            }).collect();
            let before = index.clone();
            let accepted = index.append(&runs);
            prop_assert_eq!(accepted.is_ok(), model_accepts(&model, &shape));
            match accepted {
                Ok(refs) => {
                    prop_assert_eq!(refs.len(), runs.len());
                    for (r, run) in refs.iter().zip(&runs) {
                        prop_assert_eq!((r.sub, r.segment), (run.sub, run.segment));
                        let segs = &mut model[run.sub];
                        if run.segment == segs.len() {
                            segs.push((Vec::new(), false));
                        }
                        segs[run.segment].0.push(run.bytes[0]);
                        segs[run.segment].1 = run.ends_segment;
                    }
                }
                Err(_) => prop_assert_eq!(&index, &before, "a refused push changes nothing"),
            }
        }
        if seal {
            index.sealed = true;
        }
        let got = read_all(&index, 3, max_bytes);
        for (sub, segments) in model.iter().enumerate() {
            let want: Vec<Vec<u8>> = segments.iter().map(|(tags, _)| tags.clone()).collect();
            prop_assert_eq!(&got[sub], &want);
        }
        prop_assert_eq!(
            index.stored_bytes(),
            index.extents().map(|(_, e)| u64::from(e.len)).sum::<u64>()
        );
        if seal {
            prop_assert!(index.append(&[run(0, 0, 1, false, 1)]).is_err(), "sealed refuses pushes");
        }
    }

    /// The compact form of a settled index reads, counts, relocates and
    /// persists exactly as the tree form it came from; an index with an
    /// extent in memory, or not sealed, is not frozen.
    #[test]
    fn a_frozen_index_behaves_as_its_tree_form(
        pushes in proptest::collection::vec(
            proptest::collection::vec((0usize..3, 0usize..4, any::<bool>(), 1usize..50), 1..4),
            0..30,
        ),
        max_bytes in 1usize..200,
        objects in any::<u64>(),
        moves in any::<u64>(),
    ) {
        let mut index = PartitionIndex::new(3, false);
        let mut tag = 1u8;
        for push in pushes {
            let runs: Vec<Run> = push.iter().map(|&(s, g, e, len)| {
                tag = tag.wrapping_add(1).max(1);
                run(s, g, len, e, tag)
            }).collect();
            let _ = index.append(&runs);
        }
        let placed: Vec<(ExtentRef, Extent)> = index.extents().collect();
        prop_assert!(!index.freeze_if_settled(), "not sealed");
        index.sealed = true;
        if !placed.is_empty() {
            prop_assert!(!index.freeze_if_settled(), "extents in memory");
        }
        // Flushed: each extent at the offset of its tag, so reads see the tags.
        for (i, (at, extent)) in placed.iter().enumerate() {
            let Location::Memory(bytes) = &extent.location else { unreachable!() };
            let offset = u64::from(bytes[0]);
            let location = if objects & (1 << (i % 64)) != 0 {
                Location::Object { object: 1, offset }
            } else {
                Location::Local { file: 2, offset }
            };
            index.relocate(*at, location);
        }
        let mut tree = index.clone();
        prop_assert!(index.freeze_if_settled());
        prop_assert!(index.is_frozen() && !tree.is_frozen());
        for round in 0..2 {
            prop_assert_eq!(&index, &tree);
            prop_assert_eq!(read_all(&index, 3, max_bytes), read_all(&tree, 3, max_bytes));
            prop_assert_eq!(index.size(), tree.size());
            prop_assert_eq!(index.totals(), tree.totals());
            prop_assert_eq!(index.subpartition_bytes(), tree.subpartition_bytes());
            let frozen_extents: Vec<(ExtentRef, Extent)> = index.extents().collect();
            let tree_extents: Vec<(ExtentRef, Extent)> = tree.extents().collect();
            prop_assert_eq!(frozen_extents, tree_extents);
            for sub in 0..4u32 {
                for segment in 0..5u32 {
                    for position in 0..4usize {
                        prop_assert_eq!(
                            index.object_run(sub, segment, position, max_bytes as u64),
                            tree.object_run(sub, segment, position, max_bytes as u64)
                        );
                        prop_assert_eq!(
                            format!("{:?}", index.next_read(sub, segment, position, max_bytes)),
                            format!("{:?}", tree.next_read(sub, segment, position, max_bytes))
                        );
                    }
                }
            }
            let persisted = |index: &PartitionIndex| PersistedIndex {
                key: key(),
                generation: 3,
                files: vec![Blob { id: 2, len: 1 << 20 }],
                object_prefix: "p/".into(),
                objects: vec![Blob { id: 1, len: 1 << 20 }, Blob { id: 5, len: 1 << 20 }],
                index: index.clone(),
            };
            let encoded = persisted(&index).encode().expect("encode frozen");
            prop_assert_eq!(&encoded, &persisted(&tree).encode().expect("encode tree"));
            let back = PersistedIndex::decode(&encoded).expect("decode");
            prop_assert_eq!(&back.index, &tree);
            if round == 0 {
                // A migration moves some extents: both forms alike.
                for (i, (at, _)) in placed.iter().enumerate() {
                    if moves & (1 << (i % 64)) != 0 {
                        let location = Location::Object { object: 5, offset: (i * 3) as u64 % 250 };
                        index.relocate(*at, location.clone());
                        tree.relocate(*at, location);
                    }
                }
                prop_assert!(index.is_frozen(), "a relocation keeps the compact form");
            }
        }
    }

    /// Relocating extents changes where they are, never what a reader gets.
    #[test]
    fn relocation_keeps_reads(lens in proptest::collection::vec(1usize..100, 1..20), to_object in any::<u64>()) {
        let mut index = PartitionIndex::new(1, true);
        let runs: Vec<Run> = lens.iter().enumerate()
            .map(|(i, &len)| run(0, 0, len, i + 1 == lens.len(), i as u8)).collect();
        let refs = index.append(&runs).expect("valid");
        let mut offset = 0u64;
        for (i, r) in refs.iter().enumerate() {
            let location = if to_object & (1 << (i % 64)) != 0 {
                Location::Object { object: 3, offset }
            } else {
                Location::Local { file: 0, offset }
            };
            index.relocate(*r, location);
            offset += lens[i] as u64;
        }
        // Broadcast-only: any subpartition reads subpartition 0's data.
        let NextRead::Extents(extents) = index.next_read(5, 0, 0, usize::MAX) else {
            return Err(TestCaseError::fail("expected extents"));
        };
        prop_assert_eq!(extents.len(), lens.len());
        prop_assert!(extents.iter().zip(&lens).all(|(e, &l)| e.len as usize == l));
        prop_assert!(extents.iter().all(|e| e.location.tier() != TierKind::Memory));
        prop_assert!(matches!(index.next_read(5, 0, lens.len(), 10), NextRead::SegmentDone));
    }

    /// The object run from any position is exactly the back-to-back object
    /// extents that follow it, across segments, capped by `max_bytes`.
    #[test]
    fn object_runs_cover_the_adjacent_object_extents(
        plan in proptest::collection::vec((1usize..100, 0u8..3, any::<bool>()), 1..30),
        start in any::<prop::sample::Index>(),
        max_bytes in 1u64..600,
    ) {
        // Extents of subpartition 0 over several segments; each goes to
        // object 1 (back to back), object 2, or a local file.
        let mut index = PartitionIndex::new(1, false);
        let mut segment = 0;
        let mut refs = Vec::new();
        for (i, &(len, _, ends)) in plan.iter().enumerate() {
            let r = index.append(&[run(0, segment, len, ends, i as u8)]).expect("valid");
            refs.push((r[0], segment));
            if ends {
                segment += 1;
            }
        }
        let (mut one, mut two) = (0u64, 0u64);
        let mut placed = Vec::new();
        for (&(len, tier, _), &(r, _)) in plan.iter().zip(&refs) {
            let location = match tier {
                0 => { one += len as u64; Location::Object { object: 1, offset: one - len as u64 } }
                1 => { two += len as u64; Location::Object { object: 2, offset: two - len as u64 } }
                _ => Location::Local { file: 0, offset: 0 },
            };
            index.relocate(r, location.clone());
            placed.push(location);
        }
        let at = start.index(plan.len());
        let (segment, position) = {
            let seg = refs[at].1;
            let first_of_segment = refs.iter().position(|&(_, s)| s == seg).expect("there");
            (seg, at - first_of_segment)
        };
        let got = index.object_run(0, segment as u32, position, max_bytes);
        // The model: walk the placed extents from `at`.
        let want = match placed[at] {
            Location::Object { object, offset } => {
                let mut end = offset + plan[at].0 as u64;
                for (j, location) in placed.iter().enumerate().skip(at + 1) {
                    match location {
                        Location::Object { object: o, offset: x }
                            if *o == object && *x == end && end + plan[j].0 as u64 - offset <= max_bytes =>
                        {
                            end += plan[j].0 as u64
                        }
                        _ => break,
                    }
                }
                Some((object, offset..end))
            }
            _ => None,
        };
        prop_assert_eq!(got, want);
    }

    #[test]
    fn persisted_index_roundtrips(
        mut persisted in samples(),
        first_segment in 0u32..1 << 20,
        forward in proptest::option::of(("[a-z0-9-]{1,40}", "[a-z0-9.]{1,30}:[0-9]{1,5}")),
        relocated in any::<bool>(),
    ) {
        // A later part of a split partition, or one split on.
        persisted.index.continuation = first_segment > 0;
        persisted.index.relocated = relocated && first_segment == 0;
        for sub in persisted.index.subs.values_mut() {
            sub.first_segment = first_segment;
        }
        persisted.index.forward = forward.map(|(worker_id, address)| Forward { worker_id, address });
        let bytes = persisted.encode().expect("no memory extents");
        let back = PersistedIndex::decode(&bytes).expect("decodes");
        prop_assert_eq!(back, persisted);
    }

    /// Any bytes in: an error or an index, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = PersistedIndex::decode(&data);
    }

    /// Bytes that pass the checksum but are otherwise garbage: never a panic.
    #[test]
    fn garbage_with_a_valid_checksum_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..400), version in 1u32..5) {
        let mut body = b"TRIX".to_vec();
        body.extend_from_slice(&version.to_le_bytes());
        body.append(&mut data);
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let _ = PersistedIndex::decode(&body);
    }

    /// Any single flipped byte is caught, in both versions.
    #[test]
    fn corruption_is_detected(pos in any::<prop::sample::Index>(), flip in 1u8..=255, v1 in any::<bool>()) {
        let bytes = if v1 {
            encode_v1(&key(), 2, false, 30, &[vec![vec![(0, 10), (10, 20)]], vec![]])
        } else {
            sample(&[vec![vec![(false, 0), (true, 10)]]], 1, 7, false).encode().expect("encode").to_vec()
        };
        let mut damaged = bytes;
        let i = pos.index(damaged.len());
        damaged[i] ^= flip;
        prop_assert!(PersistedIndex::decode(&damaged).is_err());
    }

    /// Version 1 indexes (one data file, no objects) written by earlier
    /// workers still load, as local-file extents of file 0.
    #[test]
    fn version_1_indexes_still_load(
        segments in proptest::collection::vec(proptest::collection::vec((0u64..1 << 30, 0u32..1 << 20), 0..5), 0..6),
    ) {
        let data_len = 1u64 << 40;
        let bytes = encode_v1(&key(), 2, false, data_len, &[segments.clone(), vec![]]);
        let back = PersistedIndex::decode(&bytes).expect("v1 decodes");
        prop_assert_eq!(back.generation, 0);
        prop_assert_eq!(back.files, vec![Blob { id: 0, len: data_len }]);
        prop_assert!(back.objects.is_empty());
        prop_assert!(back.index.sealed);
        let none = SubpartitionIndex::default();
        let got: Vec<Vec<(u64, u32)>> = back.index.subs.get(&0).unwrap_or(&none).segments.iter().map(|g| {
            g.extents.iter().map(|e| match e.location {
                Location::Local { file: 0, offset } => (offset, e.len),
                _ => (u64::MAX, 0),
            }).collect()
        }).collect();
        prop_assert_eq!(got, segments);
    }

    /// Version 3 indexes (a continuation byte where version 4 has flags)
    /// written by earlier workers still load, never relocated.
    #[test]
    fn version_3_indexes_still_load(mut persisted in samples(), continuation in any::<bool>()) {
        persisted.index.continuation = continuation;
        let mut bytes = persisted.encode().expect("encode").to_vec();
        bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        let body = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        let back = PersistedIndex::decode(&bytes).expect("v3 decodes");
        prop_assert_eq!(back, persisted);
    }

    /// Version 2 indexes (local files and objects, no splits) written by
    /// earlier workers still load as the same index.
    #[test]
    fn version_2_indexes_still_load(persisted in samples()) {
        let back = PersistedIndex::decode(&encode_v2(&persisted)).expect("v2 decodes");
        prop_assert_eq!(back, persisted);
    }
}

#[test]
fn unknown_flags_are_damage() {
    let mut persisted = sample(&[vec![vec![(false, 0)]]], 1, 1, false);
    persisted.index.relocated = true;
    let mut bytes = persisted.encode().expect("encode").to_vec();
    let at = 4
        + 4
        + 4
        + persisted.key.job.as_bytes().len()
        + 4
        + persisted.key.partition.as_bytes().len()
        + 4
        + 1;
    assert_eq!(bytes[at], FLAG_RELOCATED, "the flags byte");
    bytes[at] |= 8;
    let body = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    let err = PersistedIndex::decode(&bytes).expect_err("unknown flag");
    assert_eq!(corrupt_detail(&err), "unknown flags 0xa");
}

/// Open partitions (kept across a restart), empty or with data, round-trip
/// open; the flag is read back as such.
#[test]
fn open_partitions_persist_open() {
    let mut empty = sample(&[], 2, 1, false);
    empty.files.clear();
    empty.objects.clear();
    empty.index.sealed = false;
    let back = PersistedIndex::decode(&empty.encode().expect("encode")).expect("decode");
    assert!(!back.index.sealed);
    assert_eq!(back, empty);

    let mut with_data = sample(&[vec![vec![(false, 0), (true, 10)]]], 0, 1, false);
    with_data.index.sealed = false;
    with_data.index.relocated = true;
    let bytes = with_data.encode().expect("encode").to_vec();
    let at = 4
        + 4
        + 4
        + with_data.key.job.as_bytes().len()
        + 4
        + with_data.key.partition.as_bytes().len()
        + 4
        + 1;
    assert_eq!(bytes[at], FLAG_RELOCATED | FLAG_OPEN, "the flags byte");
    let back = PersistedIndex::decode(&bytes).expect("decode");
    assert!(!back.index.sealed);
    assert_eq!(back, with_data);
}

#[test]
fn extents_must_fit_their_file_or_object() {
    let mut persisted = sample(&[vec![vec![(true, 10)]]], 1, 1, false);
    persisted.objects[0].len = 3; // the extent is longer
    let bytes = persisted.encode().expect("encode");
    let err = PersistedIndex::decode(&bytes).expect_err("past the end");
    assert_eq!(
        corrupt_detail(&err),
        "extent past the end of its file or object"
    );

    let mut persisted = sample(&[vec![vec![(false, 0)]]], 1, 1, false);
    persisted.files.clear(); // names a file the table lacks
    let bytes = persisted.encode().expect("encode");
    let err = PersistedIndex::decode(&bytes).expect_err("unknown file");
    // The detail is the point: it says which consistency check fired.
    assert!(
        corrupt_detail(&err).starts_with("extent names unknown file or object"),
        "{err}"
    );
}

/// The detail of a decode failure, which must be `DataCorruption` with a
/// `StoreError::Corrupt` of the partition index underneath.
fn corrupt_detail(err: &TierError) -> &str {
    assert_eq!(
        err.kind(),
        terrace_tier_api::ErrorKind::DataCorruption,
        "{err}"
    );
    match std::error::Error::source(err).and_then(|s| s.downcast_ref::<crate::store::StoreError>())
    {
        Some(crate::store::StoreError::Corrupt { what, detail }) if what == "partition index" => {
            detail
        }
        other => panic!("not a corrupt partition index: {other:?}"),
    }
}

#[test]
fn memory_extents_are_never_persisted() {
    let mut index = PartitionIndex::new(1, false);
    index.append(&[run(0, 0, 5, true, 1)]).expect("valid");
    let persisted = PersistedIndex {
        key: key(),
        generation: 1,
        files: Vec::new(),
        object_prefix: String::new(),
        objects: Vec::new(),
        index,
    };
    assert!(persisted.encode().is_err());
}

/// Sealed indexes of 1 to 3 subpartitions with up to 3 segments of up to 3
/// extents each, in a file and an object ([`sample`]).
fn samples() -> impl Strategy<Value = PersistedIndex> {
    let extents = proptest::collection::vec((any::<bool>(), 0u32..1 << 20), 0..4);
    let layout = proptest::collection::vec(proptest::collection::vec(extents, 0..4), 1..4);
    (layout, any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
        |(layout, closed, generation, broadcast)| sample(&layout, closed, generation, broadcast),
    )
}

/// An index whose extents sit in file 0 (`false`) or object 5 (`true`), laid
/// out back to back in each.
fn sample(
    layout: &[Vec<Vec<(bool, u32)>>],
    closed: u32,
    generation: u64,
    broadcast: bool,
) -> PersistedIndex {
    let stored = if broadcast { 1 } else { layout.len() };
    let mut index = PartitionIndex::new(layout.len() as u32, broadcast);
    let (mut file_len, mut object_len) = (0u64, 0u64);
    for (sub, segments) in layout.iter().take(stored).enumerate() {
        for (g, extents) in segments.iter().enumerate() {
            let mut segment = SegmentIndex {
                closed: closed & (1 << ((sub * 8 + g) % 32)) != 0,
                extents: Vec::new(),
            };
            for &(in_object, len) in extents {
                let location = if in_object {
                    object_len += u64::from(len);
                    Location::Object {
                        object: 5,
                        offset: object_len - u64::from(len),
                    }
                } else {
                    file_len += u64::from(len);
                    Location::Local {
                        file: 0,
                        offset: file_len - u64::from(len),
                    }
                };
                segment.extents.push(Extent {
                    location,
                    len,
                    crc32c: len.wrapping_mul(31),
                    num_buffers: len / 7,
                });
            }
            index.subs.entry(sub).or_default().segments.push(segment);
        }
    }
    index.sealed = true;
    PersistedIndex {
        key: key(),
        generation,
        files: vec![Blob {
            id: 0,
            len: file_len,
        }],
        object_prefix: "terrace/abc/01/02".into(),
        objects: vec![Blob {
            id: 5,
            len: object_len,
        }],
        index,
    }
}

/// The version 1 encoder, as earlier workers wrote it.
fn encode_v1(
    key: &PartitionKey,
    num_subpartitions: u32,
    broadcast_only: bool,
    data_len: u64,
    subs: &[Vec<Vec<(u64, u32)>>],
) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_slice(MAGIC);
    out.put_u32_le(1);
    put_bytes(&mut out, key.job.as_bytes());
    put_bytes(&mut out, key.partition.as_bytes());
    out.put_u32_le(num_subpartitions);
    out.put_u8(u8::from(broadcast_only));
    out.put_u64_le(data_len);
    for segments in subs {
        out.put_u32_le(segments.len() as u32);
        for extents in segments {
            out.put_u8(1);
            out.put_u32_le(extents.len() as u32);
            for &(offset, len) in extents {
                out.put_u8(KIND_LOCAL);
                out.put_u64_le(offset);
                out.put_u32_le(len);
                out.put_u32_le(7);
                out.put_u32_le(1);
            }
        }
    }
    out.put_u32_le(0);
    let crc = crc32c::crc32c(&out);
    out.put_u32_le(crc);
    out.to_vec()
}

/// The version 2 encoder, as workers before splits wrote it: no
/// continuation flag, no first segment, a forward pointer count of 0.
fn encode_v2(p: &PersistedIndex) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_slice(MAGIC);
    out.put_u32_le(2);
    put_bytes(&mut out, p.key.job.as_bytes());
    put_bytes(&mut out, p.key.partition.as_bytes());
    out.put_u32_le(p.index.num_subpartitions);
    out.put_u8(u8::from(p.index.broadcast_only));
    out.put_u64_le(p.generation);
    let put_blobs = |out: &mut BytesMut, blobs: &[Blob]| {
        out.put_u32_le(blobs.len() as u32);
        for blob in blobs {
            out.put_u32_le(blob.id);
            out.put_u64_le(blob.len);
        }
    };
    put_blobs(&mut out, &p.files);
    put_bytes(&mut out, p.object_prefix.as_bytes());
    put_blobs(&mut out, &p.objects);
    let empty = SubpartitionIndex::default();
    for number in 0..p.index.stored_subpartitions() {
        let sub = p.index.subs.get(&number).unwrap_or(&empty);
        out.put_u32_le(sub.segments.len() as u32);
        for segment in &sub.segments {
            out.put_u8(u8::from(segment.closed));
            out.put_u32_le(segment.extents.len() as u32);
            for extent in &segment.extents {
                let (kind, id, offset) = match extent.location {
                    Location::Local { file, offset } => (KIND_LOCAL, file, offset),
                    Location::Object { object, offset } => (KIND_OBJECT, object, offset),
                    Location::Memory(_) => unreachable!("samples are persisted"),
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
    out.put_u32_le(0);
    let crc = crc32c::crc32c(&out);
    out.put_u32_le(crc);
    out.to_vec()
}

/// A split: every segment must be closed first; after the pointer is durable
/// (sealed), segments past each subpartition's last one redirect; the next
/// part starts each subpartition where the previous one stopped.
#[test]
fn a_split_part_redirects_and_a_continuation_starts_where_it_stopped() {
    let next = Forward {
        worker_id: "w2".into(),
        address: "127.0.0.1:2".into(),
    };
    let mut first = PartitionIndex::new(3, false);
    first
        .append(&[run(0, 0, 10, true, 1), run(1, 0, 10, false, 2)])
        .expect("append");
    let err = first
        .split(next.clone())
        .expect_err("subpartition 1 is open");
    assert_eq!(err.kind(), terrace_tier_api::ErrorKind::BadInput, "{err}");
    // The message is the point: it names the subpartition to close.
    assert_eq!(
        err.message(),
        "subpartition 1 has an open segment; close every segment before a split"
    );
    first
        .append(&[run(1, 0, 5, true, 3), run(1, 1, 5, true, 4)])
        .expect("append");
    first.split(next.clone()).expect("split");
    // Not yet durable: readers of the next segment still wait.
    assert!(matches!(first.next_read(0, 1, 0, 1 << 20), NextRead::Wait));
    first.sealed = true;
    assert!(matches!(
        first.next_read(0, 0, 0, 1 << 20),
        NextRead::Extents(_)
    ));
    for (sub, segment) in [(0, 1), (1, 2), (2, 0)] {
        match first.next_read(sub, segment, 0, 1 << 20) {
            NextRead::Redirect(to) => assert_eq!(to, next),
            other => panic!("subpartition {sub} segment {segment}: {other:?}"),
        }
    }
    let mut second = PartitionIndex::new(3, false);
    second.continuation = true;
    second
        .append(&[run(0, 1, 10, true, 5), run(1, 2, 10, false, 6)])
        .expect("a continuation starts anywhere");
    let err = second
        .append(&[run(0, 3, 1, true, 7)])
        .expect_err("no gaps after the start");
    assert_eq!(err.kind(), terrace_tier_api::ErrorKind::BadInput, "{err}");
    // The message is the point: it names the run out of order.
    assert_eq!(
        err.message(),
        "subpartition 0 segment 3 breaks the segment order (last segment 1, closed)"
    );
    assert!(matches!(
        second.next_read(0, 1, 0, 1 << 20),
        NextRead::Extents(_)
    ));
    assert!(matches!(second.next_read(2, 0, 0, 1 << 20), NextRead::Wait));
    second.sealed = true;
    assert!(matches!(second.next_read(2, 0, 0, 1 << 20), NextRead::End));
    let mut plain = PartitionIndex::new(1, false);
    assert!(
        plain.append(&[run(0, 1, 1, true, 8)]).is_err(),
        "a first part starts at 0"
    );
}
