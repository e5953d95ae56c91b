//! The producer's push batch: one arena per push, filled in arrival order
//! (each buffer copied once), emitted in subpartition order as zero-copy
//! slices of the arena, so a push is a region (non-decreasing subpartitions)
//! without any sorting copy.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use terrace_tier_api::{BUFFER_HEADER_LEN, DataType, SegmentId, SubpartitionId, put_buffer};

#[derive(Debug)]
pub struct PushBatch {
    arena: BytesMut,
    /// Per subpartition, the arena ranges of its encoded buffers, in order.
    runs: Vec<Vec<Range<usize>>>,
    /// Subpartitions with at least one buffer in this batch.
    used: Vec<usize>,
    num_buffers: u32,
    capacity: usize,
}

impl PushBatch {
    /// A batch for `subpartitions`, expecting about `capacity` bytes per push.
    pub fn new(subpartitions: usize, capacity: usize) -> Self {
        PushBatch {
            arena: BytesMut::with_capacity(capacity),
            runs: vec![Vec::new(); subpartitions],
            used: Vec::new(),
            num_buffers: 0,
            capacity,
        }
    }

    /// Encoded bytes in the batch.
    pub fn len(&self) -> usize {
        self.arena.len()
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
        let start = self.arena.len();
        put_buffer(
            &mut self.arena,
            SubpartitionId(sub as u32),
            SegmentId(segment),
            data_type,
            compressed,
            payload,
        );
        let end = start + BUFFER_HEADER_LEN + payload.len();
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
        let arena =
            std::mem::replace(&mut self.arena, BytesMut::with_capacity(self.capacity)).freeze();
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
        let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let decoded = BatchReader::new(Bytes::from(body))
            .collect_all()
            .expect("valid batch");
        let got: Vec<(u32, &[u8])> = decoded
            .iter()
            .map(|(h, b)| (h.subpartition.0, b.payload.as_ref()))
            .collect();
        let want: Vec<(u32, &[u8])> = vec![
            (0, b"a1"),
            (0, b"a2"),
            (0, b"a3"),
            (1, b""),
            (2, b"c1"),
            (2, b"c2"),
        ];
        assert_eq!(got, want);
        // Adjacent buffers of one subpartition share a chunk: a2+a3 are contiguous.
        assert_eq!(chunks.len(), 5);
        assert_eq!(batch.len(), 0);
        assert_eq!(batch.num_buffers(), 0);
    }
}
