//! Appending a push: the batch is split into runs of one (subpartition,
//! segment), checked, and added to the index as memory extents.

use bytes::Bytes;
use terrace_tier_api::{BatchReader, DataType, TierError, TierResult};

use super::{Partition, index_cost};
use crate::store::budget::Reservation;
use crate::store::index::Run;

impl Partition {
    /// Appends a decoded push batch of at most `max_buffers` buffers.
    /// `reservation` holds the batch's memory until it is flushed. With
    /// `expected_crc32c`, the batch is checked against it first, from the
    /// runs' own checksums (one pass over the bytes). Returns the number of
    /// buffers appended.
    pub fn append(
        &self,
        batch: Bytes,
        reservation: Reservation,
        expected_crc32c: Option<u32>,
        max_buffers: u32,
    ) -> TierResult<u32> {
        let runs = split_runs(
            &batch,
            self.meta.num_subpartitions,
            self.meta.broadcast_only,
            max_buffers,
        )?;
        if let Some(expected) = expected_crc32c {
            let actual = runs.iter().fold(0u32, |crc, run| {
                terrace_tier_api::crc32c_combine(crc, run.crc32c, run.bytes.len())
            });
            if actual != expected {
                return Err(TierError::corruption(format!(
                    "push body checksum mismatch: header says {expected:#010x}, body has {actual:#010x}"
                )));
            }
        }
        let buffers = runs.iter().map(|run| run.num_buffers).sum();
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(e) = self.phase_error(&state.phase) {
            return Err(e);
        }
        let charge = &mut state.charge;
        let refs = state
            .index
            .append_admitted(&runs, |growth| match charge {
                Some(charge) => charge.grow(index_cost(growth), "this push's index entries"),
                None => Ok(()),
            })
            .map_err(|e| e.context(&self.meta.key))?;
        for (at, run) in refs.into_iter().zip(runs) {
            state.pending_bytes += run.bytes.len() as u64;
            state.pending.push((at, run.bytes));
        }
        state.reservations.push(reservation);
        drop(guard);
        self.bump();
        Ok(buffers)
    }
}

/// Splits a decoded batch into runs, checking ids and the END_OF_SEGMENT rule
/// (it may only be the last buffer of a run).
fn split_runs(
    batch: &Bytes,
    num_subpartitions: u32,
    broadcast_only: bool,
    max_buffers: u32,
) -> TierResult<Vec<Run>> {
    let mut reader = BatchReader::new(batch.clone());
    let mut runs: Vec<Run> = Vec::new();
    let mut buffers = 0u32;
    // (subpartition, segment, buffers, ended) of the run being built.
    let mut current: Option<(u32, u32, u32, bool)> = None;
    let mut start = 0usize;
    loop {
        let offset = reader.offset();
        let next = reader.next_buffer()?;
        let boundary = match (&current, &next) {
            (Some(_), None) => true,
            (Some((s, g, _, ended)), Some((header, _))) => {
                *ended || header.subpartition.0 != *s || header.segment.0 != *g
            }
            (None, _) => false,
        };
        if boundary {
            let (s, g, count, ended) = current.take().expect("boundary implies a run");
            let bytes = batch.slice(start..offset);
            runs.push(Run {
                sub: s as usize,
                segment: g as usize,
                crc32c: crc32c::crc32c(&bytes),
                bytes,
                num_buffers: count,
                ends_segment: ended,
            });
            start = offset;
        }
        let Some((header, _)) = next else { break };
        buffers += 1;
        if buffers > max_buffers {
            return Err(TierError::bad_input(format!(
                "push carries more than {max_buffers} buffers (limits.max_buffers_per_push)"
            )));
        }
        let sub = header.subpartition.0;
        if sub >= num_subpartitions {
            return Err(TierError::bad_input(format!(
                "subpartition {sub} out of range (partition has {num_subpartitions})"
            )));
        }
        if broadcast_only && sub != 0 {
            return Err(TierError::bad_input(format!(
                "broadcast-only partition got data for subpartition {sub}; only subpartition 0 is stored"
            )));
        }
        let ended = header.data_type == DataType::EndOfSegment;
        current = Some(match current {
            Some((s, g, count, false)) if s == sub && g == header.segment.0 => {
                (s, g, count + 1, ended)
            }
            _ => (sub, header.segment.0, 1, ended),
        });
    }
    Ok(runs)
}
