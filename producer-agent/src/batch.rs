//! The producer's push batch: one pooled arena per push, filled in arrival
//! order (each buffer copied once, or compressed straight into the arena),
//! emitted in subpartition order as zero-copy slices of the arena, so a push
//! is a region (non-decreasing subpartitions) without any sorting copy. The
//! arena goes back to the shared pool once the push is written.
//!
//! With compression on, each data buffer the engine did not compress itself
//! is lz4-compressed and kept so only when that makes it smaller (see
//! `terrace_tier_api::lz4_into`); events stay raw. The worker stores the
//! bytes as they arrive; the consumer agent decompresses.

use std::ops::Range;

use bytes::Bytes;
use terrace_rpc::{PooledBuf, shared_pool};
use terrace_tier_api::{
    BUFFER_HEADER_LEN, DataType, LZ4_MIN_LEN, SegmentId, SubpartitionId, buffer_header, lz4_into,
    lz4_room,
};

#[derive(Debug)]
pub struct PushBatch {
    arena: PooledBuf,
    len: usize,
    /// Per subpartition, the arena ranges of its encoded buffers, in order.
    runs: Vec<Vec<Range<usize>>>,
    /// Subpartitions with at least one buffer in this batch.
    used: Vec<usize>,
    num_buffers: u32,
    capacity: usize,
    /// lz4 per data buffer.
    compression: bool,
}

fn new_arena(capacity: usize) -> PooledBuf {
    let mut arena = shared_pool().take(capacity);
    arena.set_len(0);
    arena
}

impl PushBatch {
    /// A batch for `subpartitions`, expecting about `capacity` bytes per push.
    pub fn new(subpartitions: usize, capacity: usize, compression: bool) -> Self {
        PushBatch {
            arena: new_arena(capacity),
            len: 0,
            runs: vec![Vec::new(); subpartitions],
            used: Vec::new(),
            num_buffers: 0,
            capacity,
            compression,
        }
    }

    /// Encoded bytes in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn num_buffers(&self) -> u32 {
        self.num_buffers
    }

    /// Copies one buffer into the batch.
    pub fn push(
        &mut self,
        sub: usize,
        segment: u32,
        data_type: DataType,
        compressed: bool,
        payload: &[u8],
    ) {
        let start = self.len;
        let body = start + BUFFER_HEADER_LEN;
        let try_lz4 =
            self.compression && data_type.is_data() && !compressed && payload.len() >= LZ4_MIN_LEN;
        let room = if try_lz4 {
            lz4_room(payload.len()).max(payload.len())
        } else {
            payload.len()
        };
        if body + room > self.arena.capacity() {
            // Rare: more than the expected push size; move to a larger arena.
            let mut larger = new_arena((body + room).max(2 * self.arena.capacity()));
            larger.spare_mut()[..start].copy_from_slice(&self.arena.spare_mut()[..start]);
            self.arena = larger;
        }
        let spare = self.arena.spare_mut();
        let lz4 = if try_lz4 {
            lz4_into(payload, &mut spare[body..body + room])
        } else {
            None
        };
        let stored = match lz4 {
            Some(written) => written,
            None => {
                spare[body..body + payload.len()].copy_from_slice(payload);
                payload.len()
            }
        };
        let header = buffer_header(
            SubpartitionId(sub as u32),
            SegmentId(segment),
            data_type,
            compressed,
            lz4.is_some(),
            stored,
        );
        spare[start..body].copy_from_slice(&header);
        let end = body + stored;
        self.len = end;
        let runs = &mut self.runs[sub];
        match runs.last_mut() {
            // Contiguous with this subpartition's previous buffer: extend the run.
            Some(last) if last.end == start => last.end = end,
            Some(_) => runs.push(start..end),
            None => {
                self.used.push(sub);
                runs.push(start..end);
            }
        }
        self.num_buffers += 1;
    }

    /// Takes the batch as body chunks in subpartition order, and starts a new one.
    pub fn take(&mut self) -> (Vec<Bytes>, u32) {
        let mut arena = std::mem::replace(&mut self.arena, new_arena(self.capacity));
        arena.set_len(std::mem::take(&mut self.len));
        let arena = arena.freeze();
        self.used.sort_unstable();
        let mut chunks = Vec::new();
        for &sub in &self.used {
            for range in self.runs[sub].drain(..) {
                chunks.push(arena.slice(range));
            }
        }
        self.used.clear();
        let num_buffers = std::mem::take(&mut self.num_buffers);
        (chunks, num_buffers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_tier_api::BatchReader;

    fn decode(chunks: &[Bytes]) -> Vec<(u32, Vec<u8>)> {
        let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        BatchReader::new(Bytes::from(body))
            .collect_all()
            .expect("valid batch")
            .into_iter()
            .map(|(h, b)| (h.subpartition.0, b.payload.to_vec()))
            .collect()
    }

    #[test]
    fn chunks_come_out_in_subpartition_order_with_every_buffer_once() {
        let mut batch = PushBatch::new(4, 1024, false);
        let writes = [
            (2usize, b"c1".as_slice()),
            (0, b"a1"),
            (2, b"c2"),
            (1, b""),
            (0, b"a2"),
            (0, b"a3"),
        ];
        for (sub, payload) in writes {
            batch.push(sub, 0, DataType::Data, false, payload);
        }
        assert_eq!(batch.num_buffers(), 6);
        let (chunks, n) = batch.take();
        assert_eq!(n, 6);
        let want: Vec<(u32, Vec<u8>)> = [
            (0, "a1"),
            (0, "a2"),
            (0, "a3"),
            (1, ""),
            (2, "c1"),
            (2, "c2"),
        ]
        .into_iter()
        .map(|(s, p)| (s, p.as_bytes().to_vec()))
        .collect();
        assert_eq!(decode(&chunks), want);
        // Adjacent buffers of one subpartition share a chunk: a2+a3 are contiguous.
        assert_eq!(chunks.len(), 5);
        assert_eq!(batch.len(), 0);
        assert_eq!(batch.num_buffers(), 0);
    }

    #[test]
    fn a_batch_larger_than_expected_moves_to_a_larger_arena() {
        let mut batch = PushBatch::new(2, 16, false);
        let big = vec![9u8; 200_000];
        batch.push(1, 0, DataType::Data, false, b"x");
        batch.push(0, 0, DataType::Data, false, &big);
        let (chunks, _) = batch.take();
        assert_eq!(decode(&chunks), vec![(0, big), (1, b"x".to_vec())]);
    }

    #[test]
    fn data_buffers_are_compressed_only_when_smaller_and_events_never() {
        let mut batch = PushBatch::new(2, 1024, true);
        let compressible = vec![3u8; 4096];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        batch.push(0, 0, DataType::Data, false, &compressible);
        batch.push(0, 0, DataType::Data, false, &random);
        batch.push(0, 0, DataType::Data, true, &compressible); // the engine's own
        batch.push(1, 0, DataType::EndOfSegment, false, &compressible);
        batch.push(1, 0, DataType::Data, false, &compressible[..10]);
        // Flink 1.20's DATA_BUFFER_WITH_CLEAR_END is data too.
        batch.push(1, 0, DataType::from_code(8), false, &compressible);
        let (chunks, n) = batch.take();
        assert_eq!(n, 6);
        let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let buffers = BatchReader::new(Bytes::from(body))
            .collect_all()
            .expect("valid batch");
        let lz4: Vec<bool> = buffers.iter().map(|(h, _)| h.lz4).collect();
        assert_eq!(lz4, [true, false, false, false, false, true]);
        assert!(buffers[0].1.payload.len() < 100);
        let back = terrace_tier_api::unlz4(&buffers[0].1.payload, 4096).expect("decompresses");
        assert_eq!(&back[..], &compressible[..]);
        assert_eq!(&buffers[1].1.payload[..], &random[..]);
        assert!(buffers[2].0.compressed && buffers[2].1.payload.len() == 4096);
    }
}
