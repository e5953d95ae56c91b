//! The tier contract as Rust traits, mirroring Flink 1.20's tiered-storage
//! interfaces method by method (see `shared/reference/flink-tier-contract.md`).
//!
//! All methods are synchronous, like Flink's: implementations run their own
//! I/O threads and must not be called from inside an async runtime's worker
//! threads (use `spawn_blocking` there).

use std::ops::RangeInclusive;
use std::sync::Arc;

use bytes::Bytes;

use crate::buffer::Buffer;
use crate::descriptor::ShuffleDescriptor;
use crate::error::{TierError, TierResult};
use crate::ids::{InputChannelId, JobId, PartitionId, SegmentId, SubpartitionId};

/// Creates the agents of one tier (Flink `TierFactory`). Flink's factory is
/// built by class name and then `setup` with the engine's configuration;
/// here the configuration is the constructor's argument. Memory specs, netty
/// services and resource registries are Flink's own and stay in the Flink
/// adapter.
pub trait TierFactory: Send + Sync {
    type MasterAgent: TierMasterAgent;
    type ProducerAgent: TierProducerAgent;
    type ConsumerAgent: TierConsumerAgent;

    /// In the engine's coordinator: once per shuffle master.
    fn create_master_agent(&self) -> TierResult<Self::MasterAgent>;

    /// In an engine worker: one per produced partition, whose descriptor came
    /// from [`TierMasterAgent::add_partition_and_get_shuffle_descriptor`].
    fn create_producer_agent(&self, spec: ProducerSpec) -> TierResult<Self::ProducerAgent>;

    /// In an engine worker: one per input gate; `descriptors[i]` belongs to
    /// `specs[i]`, `None` while not known yet.
    fn create_consumer_agent(
        &self,
        specs: Vec<ConsumerSpec>,
        descriptors: Vec<Option<ShuffleDescriptor>>,
    ) -> TierResult<Self::ConsumerAgent>;
}

/// What the engine tells a producer agent about its partition (the
/// engine-neutral part of Flink's `createProducerAgent` arguments).
#[derive(Debug, Clone)]
pub struct ProducerSpec {
    pub descriptor: ShuffleDescriptor,
    pub num_subpartitions: u32,
    /// All data goes to subpartition 0 and every reader reads it (Flink `isBroadcastOnly`).
    pub broadcast_only: bool,
    /// Payload of the END_OF_SEGMENT buffers the agent appends (Flink: the
    /// serialized `EndOfSegmentEvent`).
    pub end_of_segment_payload: Bytes,
}

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
