//! What workers serve: a partition's life (create, push, seal, split,
//! release, drop), stats, the handover of a decommissioning worker's
//! partitions, and the opening of read streams.

use bytes::Bytes;
use terrace_proto::{Message, MessageType, pb};

use super::control::WorkerLoad;
use super::stream::StreamId;
use super::{Access, Ack, Body, Wire, WorkerAt, request, unexpected, wire};
use crate::error::{TierError, TierResult};
use crate::ids::{JobId, PartitionKey, WorkerId};

/// A producer announces a partition (or a part of one) before pushing to
/// it. Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatePartition {
    pub key: PartitionKey,
    pub num_subpartitions: u32,
    pub broadcast_only: bool,
    /// A later part of a split partition.
    pub continuation: bool,
    /// The partition's placed worker was unreachable; it lives here instead.
    pub relocated: bool,
}

impl TryFrom<pb::CreatePartition> for CreatePartition {
    type Error = TierError;

    fn try_from(m: pb::CreatePartition) -> TierResult<Self> {
        Ok(CreatePartition {
            key: PartitionKey::try_from(m.key)?,
            num_subpartitions: m.num_subpartitions,
            broadcast_only: m.broadcast_only,
            continuation: m.continuation,
            relocated: m.relocated,
        })
    }
}

impl CreatePartition {
    pub fn into_pb(self, request_id: u64) -> pb::CreatePartition {
        pb::CreatePartition {
            request_id,
            key: Some(self.key.into()),
            num_subpartitions: self.num_subpartitions,
            broadcast_only: self.broadcast_only,
            continuation: self.continuation,
            relocated: self.relocated,
        }
    }
}

wire!(CreatePartition);
request!(CreatePartition => Ack, |r| Access::Job(&r.key.job));

/// A batch of buffers (tier-api's batch format) for one partition.
/// Answered with [`PushAck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushData {
    pub key: PartitionKey,
    /// CRC32C of the body exactly as sent.
    pub crc32c: u32,
    pub num_buffers: u32,
    pub body: Body,
}

impl TryFrom<(pb::PushData, Bytes)> for PushData {
    type Error = TierError;

    fn try_from((m, body): (pb::PushData, Bytes)) -> TierResult<Self> {
        Ok(PushData {
            key: PartitionKey::try_from(m.key)?,
            crc32c: m.crc32c,
            num_buffers: m.num_buffers,
            body: body.into(),
        })
    }
}

impl Wire for PushData {
    const TYPE: MessageType = MessageType::PushData;

    fn into_frame(self, request_id: u64) -> (Message, Body) {
        let header = pb::PushData {
            request_id,
            key: Some(self.key.into()),
            crc32c: self.crc32c,
            num_buffers: self.num_buffers,
        };
        (Message::PushData(header), self.body)
    }

    fn from_frame(message: Message, body: Bytes) -> TierResult<Self> {
        match message {
            Message::PushData(m) => Self::try_from((m, body)),
            other => Err(unexpected(Self::TYPE, &other)),
        }
    }
}

request!(PushData => PushAck, |r| Access::Job(&r.key.job));

/// The push is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushAck {
    /// The worker asks the producer to continue the partition elsewhere.
    pub split: bool,
}

impl TryFrom<pb::PushAck> for PushAck {
    type Error = TierError;

    fn try_from(m: pb::PushAck) -> TierResult<Self> {
        Ok(PushAck { split: m.split })
    }
}

impl PushAck {
    pub fn into_pb(self, request_id: u64) -> pb::PushAck {
        pb::PushAck {
            request_id,
            split: self.split,
        }
    }
}

wire!(PushAck);

/// The producer is done. Answered with [`Ack`] once durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealPartition {
    pub key: PartitionKey,
}

impl TryFrom<pb::SealPartition> for SealPartition {
    type Error = TierError;

    fn try_from(m: pb::SealPartition) -> TierResult<Self> {
        Ok(SealPartition {
            key: PartitionKey::try_from(m.key)?,
        })
    }
}

impl SealPartition {
    pub fn into_pb(self, request_id: u64) -> pb::SealPartition {
        pb::SealPartition {
            request_id,
            key: Some(self.key.into()),
        }
    }
}

wire!(SealPartition);
request!(SealPartition => Ack, |r| Access::Job(&r.key.job));

/// Ends this worker's part of the partition and points readers of later
/// segments at `next`. Answered with [`Ack`] once durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitPartition {
    pub key: PartitionKey,
    pub next: WorkerAt,
}

impl TryFrom<pb::SplitPartition> for SplitPartition {
    type Error = TierError;

    fn try_from(m: pb::SplitPartition) -> TierResult<Self> {
        Ok(SplitPartition {
            key: PartitionKey::try_from(m.key)?,
            next: WorkerAt::parse(
                "next_worker_id",
                m.next_worker_id,
                "next_address",
                m.next_address,
            )?,
        })
    }
}

impl SplitPartition {
    pub fn into_pb(self, request_id: u64) -> pb::SplitPartition {
        pb::SplitPartition {
            request_id,
            key: Some(self.key.into()),
            next_worker_id: self.next.id.into_string(),
            next_address: self.next.address,
        }
    }
}

wire!(SplitPartition);
request!(SplitPartition => Ack, |r| Access::Job(&r.key.job));

/// Deletes a partition in every tier. Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasePartition {
    pub key: PartitionKey,
}

impl TryFrom<pb::ReleasePartition> for ReleasePartition {
    type Error = TierError;

    fn try_from(m: pb::ReleasePartition) -> TierResult<Self> {
        Ok(ReleasePartition {
            key: PartitionKey::try_from(m.key)?,
        })
    }
}

impl ReleasePartition {
    pub fn into_pb(self, request_id: u64) -> pb::ReleasePartition {
        pb::ReleasePartition {
            request_id,
            key: Some(self.key.into()),
        }
    }
}

wire!(ReleasePartition);
request!(ReleasePartition => Ack, |r| Access::Job(&r.key.job));

/// Deletes every partition of a job. Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropJob {
    pub job: JobId,
}

impl TryFrom<pb::DropJob> for DropJob {
    type Error = TierError;

    fn try_from(m: pb::DropJob) -> TierResult<Self> {
        Ok(DropJob {
            job: JobId::new(m.job_id)?,
        })
    }
}

impl DropJob {
    pub fn into_pb(self, request_id: u64) -> pb::DropJob {
        pb::DropJob {
            request_id,
            job_id: self.job.as_bytes().clone(),
        }
    }
}

wire!(DropJob);
request!(DropJob => Ack, |r| Access::Job(&r.job));

/// Asks a worker for its counters. Answered with [`WorkerStatsReply`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats;

impl TryFrom<pb::WorkerStats> for WorkerStats {
    type Error = TierError;

    fn try_from(_: pb::WorkerStats) -> TierResult<Self> {
        Ok(WorkerStats)
    }
}

impl WorkerStats {
    pub fn into_pb(self, request_id: u64) -> pb::WorkerStats {
        pb::WorkerStats { request_id }
    }
}

wire!(WorkerStats);
request!(WorkerStats => WorkerStatsReply, |_r| Access::Cluster);

/// A worker's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStatsReply {
    pub load: WorkerLoad,
    pub bytes_pushed: u64,
    pub bytes_read: u64,
    pub memory_budget_bytes: u64,
    pub memory_peak_bytes: u64,
    pub partitions: u32,
    /// The metadata budget: charged now, its peak, its limit.
    pub metadata_bytes: u64,
    pub metadata_peak_bytes: u64,
    pub metadata_limit_bytes: u64,
}

impl TryFrom<pb::WorkerStatsReply> for WorkerStatsReply {
    type Error = TierError;

    fn try_from(m: pb::WorkerStatsReply) -> TierResult<Self> {
        Ok(WorkerStatsReply {
            load: WorkerLoad::try_from(m.load.unwrap_or_default())?,
            bytes_pushed: m.bytes_pushed,
            bytes_read: m.bytes_read,
            memory_budget_bytes: m.memory_budget_bytes,
            memory_peak_bytes: m.memory_peak_bytes,
            partitions: m.partitions,
            metadata_bytes: m.metadata_bytes,
            metadata_peak_bytes: m.metadata_peak_bytes,
            metadata_limit_bytes: m.metadata_limit_bytes,
        })
    }
}

impl WorkerStatsReply {
    pub fn into_pb(self, request_id: u64) -> pb::WorkerStatsReply {
        pb::WorkerStatsReply {
            request_id,
            load: Some(self.load.into()),
            bytes_pushed: self.bytes_pushed,
            bytes_read: self.bytes_read,
            memory_budget_bytes: self.memory_budget_bytes,
            memory_peak_bytes: self.memory_peak_bytes,
            partitions: self.partitions,
            metadata_bytes: self.metadata_bytes,
            metadata_peak_bytes: self.metadata_peak_bytes,
            metadata_limit_bytes: self.metadata_limit_bytes,
        }
    }
}

wire!(WorkerStatsReply);

/// What this worker's part of a partition holds per subpartition.
/// Answered with [`PartitionMetricsReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetrics {
    pub key: PartitionKey,
}

impl TryFrom<pb::PartitionMetrics> for PartitionMetrics {
    type Error = TierError;

    fn try_from(m: pb::PartitionMetrics) -> TierResult<Self> {
        Ok(PartitionMetrics {
            key: PartitionKey::try_from(m.key)?,
        })
    }
}

impl PartitionMetrics {
    pub fn into_pb(self, request_id: u64) -> pb::PartitionMetrics {
        pb::PartitionMetrics {
            request_id,
            key: Some(self.key.into()),
        }
    }
}

wire!(PartitionMetrics);
request!(PartitionMetrics => PartitionMetricsReply, |r| Access::Job(&r.key.job));

/// What a worker's part of a partition holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionMetricsReply {
    /// No segment will be added to this part.
    pub sealed: bool,
    /// Stored bytes per subpartition.
    pub subpartition_bytes: Vec<u64>,
    /// The worker holding the partition's next part, when it was split.
    pub next: Option<WorkerAt>,
}

impl TryFrom<pb::PartitionMetricsReply> for PartitionMetricsReply {
    type Error = TierError;

    fn try_from(m: pb::PartitionMetricsReply) -> TierResult<Self> {
        let next = if m.next_address.is_empty() {
            None
        } else {
            Some(WorkerAt::parse(
                "next_worker_id",
                m.next_worker_id,
                "next_address",
                m.next_address,
            )?)
        };
        Ok(PartitionMetricsReply {
            sealed: m.sealed,
            subpartition_bytes: m.subpartition_bytes,
            next,
        })
    }
}

impl PartitionMetricsReply {
    pub fn into_pb(self, request_id: u64) -> pb::PartitionMetricsReply {
        let (next_worker_id, next_address) = self
            .next
            .map(|w| (w.id.into_string(), w.address))
            .unwrap_or_default();
        pb::PartitionMetricsReply {
            request_id,
            sealed: self.sealed,
            subpartition_bytes: self.subpartition_bytes,
            next_address,
            next_worker_id,
        }
    }
}

wire!(PartitionMetricsReply);

/// Asks a worker to leave the cluster. Answered with [`Ack`] at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decommission;

impl TryFrom<pb::Decommission> for Decommission {
    type Error = TierError;

    fn try_from(_: pb::Decommission) -> TierResult<Self> {
        Ok(Decommission)
    }
}

impl Decommission {
    pub fn into_pb(self, request_id: u64) -> pb::Decommission {
        pb::Decommission { request_id }
    }
}

wire!(Decommission);
request!(Decommission => Ack, |_r| Access::Cluster);

/// Asks a worker to stop for a restart (as SIGTERM does). Answered with
/// [`Ack`] at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restart;

impl TryFrom<pb::Restart> for Restart {
    type Error = TierError;

    fn try_from(_: pb::Restart) -> TierResult<Self> {
        Ok(Restart)
    }
}

impl Restart {
    pub fn into_pb(self, request_id: u64) -> pb::Restart {
        pb::Restart { request_id }
    }
}

wire!(Restart);
request!(Restart => Ack, |_r| Access::Cluster);

/// Asks a worker to adopt the partitions lost worker `lost` kept in the
/// object store under `store_id` (durability = "object-store"). Answered
/// with [`LostAdopted`] once every master has heard of the adoptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptLost {
    pub lost: WorkerId,
    pub store_id: String,
}

impl TryFrom<pb::AdoptLost> for AdoptLost {
    type Error = TierError;

    fn try_from(m: pb::AdoptLost) -> TierResult<Self> {
        super::control::check_store_id("store_id", &m.store_id)?;
        Ok(AdoptLost {
            lost: WorkerId::parse_field("lost_worker_id", m.lost_worker_id)?,
            store_id: m.store_id,
        })
    }
}

impl AdoptLost {
    pub fn into_pb(self, request_id: u64) -> pb::AdoptLost {
        pb::AdoptLost {
            request_id,
            lost_worker_id: self.lost.into_string(),
            store_id: self.store_id,
        }
    }
}

wire!(AdoptLost);
request!(AdoptLost => LostAdopted, |_r| Access::Cluster);

/// What a worker adopted of a lost worker's partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostAdopted {
    /// Partitions this worker holds adopted from the lost worker.
    pub adopted: u32,
    /// Partitions found in the store but not adopted here.
    pub skipped: u32,
}

impl TryFrom<pb::LostAdopted> for LostAdopted {
    type Error = TierError;

    fn try_from(m: pb::LostAdopted) -> TierResult<Self> {
        Ok(LostAdopted {
            adopted: m.adopted,
            skipped: m.skipped,
        })
    }
}

impl LostAdopted {
    pub fn into_pb(self, request_id: u64) -> pb::LostAdopted {
        pb::LostAdopted {
            request_id,
            adopted: self.adopted,
            skipped: self.skipped,
        }
    }
}

wire!(LostAdopted);

/// Hands a partition of a decommissioning worker (`from`) to this one. The
/// body is the partition's persisted index. Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptPartition {
    pub key: PartitionKey,
    pub from: WorkerId,
    pub index: Body,
}

impl TryFrom<(pb::AdoptPartition, Bytes)> for AdoptPartition {
    type Error = TierError;

    fn try_from((m, index): (pb::AdoptPartition, Bytes)) -> TierResult<Self> {
        Ok(AdoptPartition {
            key: PartitionKey::try_from(m.key)?,
            from: WorkerId::parse_field("from_worker_id", m.from_worker_id)?,
            index: index.into(),
        })
    }
}

impl Wire for AdoptPartition {
    const TYPE: MessageType = MessageType::AdoptPartition;

    fn into_frame(self, request_id: u64) -> (Message, Body) {
        let header = pb::AdoptPartition {
            request_id,
            key: Some(self.key.into()),
            from_worker_id: self.from.into_string(),
        };
        (Message::AdoptPartition(header), self.index)
    }

    fn from_frame(message: Message, body: Bytes) -> TierResult<Self> {
        match message {
            Message::AdoptPartition(m) => Self::try_from((m, body)),
            other => Err(unexpected(Self::TYPE, &other)),
        }
    }
}

request!(AdoptPartition => Ack, |_r| Access::Cluster);

/// The part of a split partition that was on `from` is now on `to`.
/// Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveForward {
    pub key: PartitionKey,
    pub from: WorkerId,
    pub to: WorkerAt,
}

impl TryFrom<pb::MoveForward> for MoveForward {
    type Error = TierError;

    fn try_from(m: pb::MoveForward) -> TierResult<Self> {
        Ok(MoveForward {
            key: PartitionKey::try_from(m.key)?,
            from: WorkerId::parse_field("from_worker_id", m.from_worker_id)?,
            to: WorkerAt::parse("to_worker_id", m.to_worker_id, "to_address", m.to_address)?,
        })
    }
}

impl MoveForward {
    pub fn into_pb(self, request_id: u64) -> pb::MoveForward {
        pb::MoveForward {
            request_id,
            key: Some(self.key.into()),
            from_worker_id: self.from.into_string(),
            to_worker_id: self.to.id.into_string(),
            to_address: self.to.address,
        }
    }
}

wire!(MoveForward);
request!(MoveForward => Ack, |_r| Access::Cluster);

/// Opens a read stream over subpartitions `first..=last` of a partition.
/// Answered with [`StreamOpened`]; then the stream's frames come as
/// [`super::StreamFrame`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenStream {
    /// Chosen by the client, unique on its connection.
    pub stream_id: StreamId,
    pub key: PartitionKey,
    pub first_subpartition: u32,
    /// Inclusive; at least `first_subpartition`.
    pub last_subpartition: u32,
    pub initial_credit: u32,
}

impl TryFrom<pb::OpenStream> for OpenStream {
    type Error = TierError;

    fn try_from(m: pb::OpenStream) -> TierResult<Self> {
        let key = PartitionKey::try_from(m.key)?;
        if m.first_subpartition > m.last_subpartition {
            return Err(TierError::bad_input(format!(
                "subpartition range {}..={} is empty",
                m.first_subpartition, m.last_subpartition
            )));
        }
        Ok(OpenStream {
            stream_id: StreamId(m.stream_id),
            key,
            first_subpartition: m.first_subpartition,
            last_subpartition: m.last_subpartition,
            initial_credit: m.initial_credit,
        })
    }
}

impl OpenStream {
    pub fn into_pb(self, request_id: u64) -> pb::OpenStream {
        pb::OpenStream {
            request_id,
            stream_id: self.stream_id.0,
            key: Some(self.key.into()),
            first_subpartition: self.first_subpartition,
            last_subpartition: self.last_subpartition,
            initial_credit: self.initial_credit,
        }
    }

    /// How many subpartitions the stream covers (at least 1).
    pub fn num_subpartitions(&self) -> u64 {
        u64::from(self.last_subpartition - self.first_subpartition) + 1
    }
}

wire!(OpenStream);
request!(OpenStream => StreamOpened, |r| Access::Job(&r.key.job));

/// The stream is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOpened {
    pub stream_id: StreamId,
    /// Subpartitions of the whole partition.
    pub num_subpartitions: u32,
}

impl TryFrom<pb::StreamOpened> for StreamOpened {
    type Error = TierError;

    fn try_from(m: pb::StreamOpened) -> TierResult<Self> {
        Ok(StreamOpened {
            stream_id: StreamId(m.stream_id),
            num_subpartitions: m.num_subpartitions,
        })
    }
}

impl StreamOpened {
    pub fn into_pb(self, request_id: u64) -> pb::StreamOpened {
        pb::StreamOpened {
            request_id,
            stream_id: self.stream_id.0,
            num_subpartitions: self.num_subpartitions,
        }
    }
}

wire!(StreamOpened);
