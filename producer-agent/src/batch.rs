//! The producer's push batch: one pooled arena per push, filled in arrival
//! order (each buffer copied once), emitted in subpartition order as
//! zero-copy slices of the arena, so a push is a region (non-decreasing
//! subpartitions) without any sorting copy. The arena goes back to the shared
//! pool once the push is written.

use std::ops::Range;

use bytes::Bytes;
use terrace_rpc::{PooledBuf, shared_pool};
use terrace_tier_api::{BUFFER_HEADER_LEN, DataType, SegmentId, SubpartitionId, buffer_header};

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
}

fn new_arena(capacity: usize) -> PooledBuf {
    let mut arena = shared_pool().take(capacity);
    arena.set_len(0);
    arena
}

impl PushBatch {
    /// A batch for `subpartitions`, expecting about `capacity` bytes per push.
    pub fn new(subpartitions: usize, capacity: usize) -> Self {
        PushBatch {
            arena: new_arena(capacity),
            len: 0,
            runs: vec![Vec::new(); subpartitions],
            used: Vec::new(),
            num_buffers: 0,
            capacity,
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
        let end = start + BUFFER_HEADER_LEN + payload.len();
        if end > self.arena.capacity() {
            // Rare: more than the expected push size; move to a larger arena.
            let mut larger = new_arena(end.max(2 * self.arena.capacity()));
            larger.spare_mut()[..start].copy_from_slice(&self.arena.spare_mut()[..start]);
            self.arena = larger;
        }
        let header = buffer_header(
            SubpartitionId(sub as u32),
            SegmentId(segment),
            data_type,
            compressed,
            payload.len(),
        );
        let spare = self.arena.spare_mut();
        spare[start..start + BUFFER_HEADER_LEN].copy_from_slice(&header);
        spare[start + BUFFER_HEADER_LEN..end].copy_from_slice(payload);
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
        let mut batch = PushBatch::new(4, 1024);
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
        let mut batch = PushBatch::new(2, 16);
        let big = vec![9u8; 200_000];
        batch.push(1, 0, DataType::Data, false, b"x");
        batch.push(0, 0, DataType::Data, false, &big);
        let (chunks, _) = batch.take();
        assert_eq!(decode(&chunks), vec![(0, big), (1, b"x".to_vec())]);
    }
}
