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
