//! The tier contract as Rust traits, mirroring Flink 1.20's tiered-storage
//! interfaces method by method (see `shared/reference/flink-tier-contract.md`).
//!
//! All methods are synchronous, like Flink's: implementations run their own
//! I/O threads and must not be called from inside an async runtime's worker
//! threads (use `spawn_blocking` there).

use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::buffer::Buffer;
use crate::descriptor::ShuffleDescriptor;
use crate::error::{TierError, TierResult};
use crate::ids::{InputChannelId, JobId, PartitionId, SegmentId, SubpartitionId};

/// The engine's callbacks from a master agent (Flink `TierShuffleHandler`).
pub trait TierShuffleHandler: Send + Sync {
    /// The tier lost these partitions; the engine should re-run their producers.
    fn on_release_partitions(&self, partitions: Vec<PartitionId>);
    /// The tier cannot go on.
    fn on_fatal_error(&self, error: TierError);
}

/// Runs in the engine's coordinator (Flink `TierMasterAgent`).
pub trait TierMasterAgent: Send + Sync {
    fn register_job(&self, job: &JobId, handler: Arc<dyn TierShuffleHandler>) -> TierResult<()>;
    /// The job reached a terminal state: drop all of its data on every worker.
    fn unregister_job(&self, job: &JobId) -> TierResult<()>;
    /// Places a new partition on a worker and returns where it lives.
    fn add_partition_and_get_shuffle_descriptor(
        &self,
        job: &JobId,
        partition: &PartitionId,
        num_subpartitions: u32,
    ) -> TierResult<ShuffleDescriptor>;
    /// The partition is no longer needed: delete its data.
    fn release_partition(&self, descriptor: &ShuffleDescriptor) -> TierResult<()>;
    fn close(&self);
}

/// The result of [`TierProducerAgent::try_write`].
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The tier took the buffer.
    Written,
    /// The segment is full and was closed with END_OF_SEGMENT; the buffer was
    /// not taken. Start segment + 1 and write it again.
    SegmentFull(Buffer),
}

/// Writes one partition (Flink `TierProducerAgent`).
pub trait TierProducerAgent: Send {
    /// Whether the tier accepts segment `segment` of `subpartition`, which must
    /// hold at least `min_num_buffers` buffers. Segment ids per subpartition
    /// start at 0 and go up by 1.
    fn try_start_new_segment(
        &mut self,
        subpartition: SubpartitionId,
        segment: SegmentId,
        min_num_buffers: u32,
    ) -> TierResult<bool>;

    /// Appends `buffer` to the current segment of `subpartition`, unless the
    /// segment cannot hold it and its `num_remaining_consecutive_buffers`
    /// followers, in which case the segment is closed.
    fn try_write(
        &mut self,
        subpartition: SubpartitionId,
        buffer: Buffer,
        num_remaining_consecutive_buffers: u32,
    ) -> TierResult<WriteOutcome>;

    /// Flushes everything and seals the partition. Readers then see its end.
    fn close(&mut self) -> TierResult<()>;
}

/// An inclusive range of subpartitions read by one input channel.
pub type SubpartitionRange = RangeInclusive<u32>;

/// What one input channel of a consumer reads (Flink `TieredStorageConsumerSpec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub partition: PartitionId,
    pub input_channel: InputChannelId,
    pub subpartitions: SubpartitionRange,
}

/// Told when an input channel that had nothing gets data (Flink `AvailabilityNotifier`).
pub trait AvailabilityNotifier: Send + Sync {
    fn notify_available(&self, partition: &PartitionId, input_channel: InputChannelId);
}

/// Reads for one input gate (Flink `TierConsumerAgent`).
pub trait TierConsumerAgent: Send {
    /// Opens the streams and asks for segment 0 of every subpartition.
    fn start(&mut self) -> TierResult<()>;

    /// A subpartition of `subpartitions` that has a buffer ready, if any.
    fn peek_next_buffer_subpartition_id(
        &self,
        partition: &PartitionId,
        subpartitions: &SubpartitionRange,
    ) -> TierResult<Option<SubpartitionId>>;

    /// The next buffer of `segment` of `subpartition` in write order, or
    /// `None` if none has arrived yet. END_OF_SEGMENT comes last in a segment.
    fn get_next_buffer(
        &self,
        partition: &PartitionId,
        subpartition: SubpartitionId,
        segment: SegmentId,
    ) -> TierResult<Option<Buffer>>;

    fn register_availability_notifier(&mut self, notifier: Arc<dyn AvailabilityNotifier>);

    /// The descriptor of a channel that was unknown at creation became known.
    fn update_tier_shuffle_descriptor(
        &mut self,
        partition: &PartitionId,
        input_channel: InputChannelId,
        subpartition: SubpartitionId,
        descriptor: ShuffleDescriptor,
    ) -> TierResult<()>;

    fn close(&mut self) -> TierResult<()>;
}
