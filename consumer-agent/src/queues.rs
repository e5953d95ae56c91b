//! Received buffers per (partition, subpartition), and per-partition failures.

use std::collections::{HashMap, VecDeque};

use terrace_tier_api::{Buffer, InputChannelId, PartitionId, TierError};

/// A buffer with what the reader must do after handing it out.
#[derive(Debug)]
pub struct Received {
    pub segment: u32,
    pub buffer: Buffer,
    /// The last buffer of a read batch: handing it out returns a credit.
    pub returns_credit: bool,
    /// The hop (stream on one part of a split partition) it came on.
    pub hop: usize,
}

#[derive(Debug)]
pub struct SubQueue {
    pub channel: InputChannelId,
    pub stream: usize,
    /// The hop of `stream` its segments are asked from now (0 until the
    /// partition's first part redirects it).
    pub hop: usize,
    pub buffers: VecDeque<Received>,
    /// The segment the worker was last asked for.
    pub requested: u32,
    /// The worker said this segment will never exist.
    pub ended_at: Option<u32>,
    /// What has arrived of the segment being read: its id, how many of its
    /// buffers, and whether its END_OF_SEGMENT came. A stream cut by a
    /// worker's restart resumes from here.
    pub received: ReceivedSoFar,
}

/// Progress through the segments of one subpartition, counted on arrival.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedSoFar {
    pub segment: u32,
    pub buffers: u32,
    pub complete: bool,
    /// Buffers of `segment` a resumed stream sends again, to drop.
    pub skip: u32,
}

impl ReceivedSoFar {
    /// Counts `count` buffers of `segment` arriving (`complete`: the last is
    /// its END_OF_SEGMENT).
    pub fn arrived(&mut self, segment: u32, count: u32, complete: bool) {
        if segment != self.segment {
            *self = ReceivedSoFar {
                segment,
                ..ReceivedSoFar::default()
            };
        }
        self.buffers = self.buffers.saturating_add(count);
        self.complete |= complete;
    }

    /// The segment a resumed stream must ask for (none: the next one is
    /// asked for when the reader gets there), with `requested` the last
    /// one asked for; sets how many of its buffers to drop.
    pub fn resume_at(&mut self, requested: u32) -> Option<u32> {
        let target = if self.buffers > 0 && !self.complete {
            self.segment
        } else {
            requested
        };
        if self.complete && target == self.segment {
            return None;
        }
        self.skip = if target == self.segment && !self.complete {
            self.buffers
        } else {
            0
        };
        Some(target)
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub queues: HashMap<(PartitionId, u32), SubQueue>,
    pub failures: HashMap<PartitionId, TierError>,
}

impl State {
    /// Records a failure for `partition` (the first one wins) and returns the
    /// channels to wake so the engine sees it.
    pub fn fail(&mut self, partition: &PartitionId, error: TierError) -> Vec<InputChannelId> {
        self.failures.entry(partition.clone()).or_insert(error);
        let mut channels: Vec<InputChannelId> = self
            .queues
            .iter()
            .filter(|((p, _), _)| p == partition)
            .map(|(_, q)| q.channel)
            .collect();
        channels.sort();
        channels.dedup();
        channels
    }
}
