//! One file per request the worker serves, shaped like the master's
//! commands: each is parsed and validated from its wire message (`parse`),
//! says what it acts on ([`Command::access`], which the connection's
//! identity is checked against), and is then applied to the connection and
//! the worker's shared state (`apply`), which yields the reply.

mod adopt_partition;
mod create_partition;
mod decommission;
mod drop_job;
mod move_forward;
mod open_stream;
mod partition_metrics;
mod push_data;
mod release_partition;
mod seal_partition;
mod split_partition;
mod stream_input;
mod worker_stats;

use bytes::Bytes;
use terrace_proto::{Message, MessageType};
use terrace_rpc::Access;
use terrace_tier_api::{MAX_ID_BYTES, PartitionKey, TierError, TierResult};

use crate::context::Connection;
use crate::store::Reservation;

use adopt_partition::AdoptPartition;
use create_partition::CreatePartition;
use decommission::Decommission;
use drop_job::DropJob;
use move_forward::MoveForward;
use open_stream::OpenStream;
use partition_metrics::PartitionMetrics;
use push_data::PushData;
use release_partition::ReleasePartition;
use seal_partition::SealPartition;
use split_partition::SplitPartition;
use stream_input::{AddCredit, CloseStream, RequireSegment};
use worker_stats::WorkerStats;

/// A validated request.
#[derive(Debug)]
pub(crate) enum Command {
    CreatePartition(CreatePartition),
    PushData(PushData),
    SealPartition(SealPartition),
    SplitPartition(SplitPartition),
    ReleasePartition(ReleasePartition),
    DropJob(DropJob),
    WorkerStats(WorkerStats),
    PartitionMetrics(PartitionMetrics),
    Decommission(Decommission),
    AdoptPartition(AdoptPartition),
    MoveForward(MoveForward),
    OpenStream(OpenStream),
    RequireSegment(RequireSegment),
    AddCredit(AddCredit),
    CloseStream(CloseStream),
    /// A request a worker does not serve (a master's): refused as a
    /// cluster request would be, then answered BAD_REQUEST.
    Unserved(MessageType),
}

impl Command {
    /// Parses a request; `body` and `reservation` are its frame body and the
    /// memory budget it holds (a push's data, a handover's index).
    pub(crate) fn from_message(
        message: Message,
        body: Bytes,
        reservation: Reservation,
    ) -> TierResult<Command> {
        Ok(match message {
            Message::CreatePartition(m) => Command::CreatePartition(CreatePartition::parse(m)?),
            Message::PushData(m) => Command::PushData(PushData::parse(m, body, reservation)?),
            Message::SealPartition(m) => Command::SealPartition(SealPartition::parse(m)?),
            Message::SplitPartition(m) => Command::SplitPartition(SplitPartition::parse(m)?),
            Message::ReleasePartition(m) => Command::ReleasePartition(ReleasePartition::parse(m)?),
            Message::DropJob(m) => Command::DropJob(DropJob::parse(m)?),
            Message::WorkerStats(m) => Command::WorkerStats(WorkerStats::parse(m)),
            Message::PartitionMetrics(m) => Command::PartitionMetrics(PartitionMetrics::parse(m)?),
            Message::Decommission(m) => Command::Decommission(Decommission::parse(m)),
            Message::AdoptPartition(m) => Command::AdoptPartition(AdoptPartition::parse(m, body)?),
            Message::MoveForward(m) => Command::MoveForward(MoveForward::parse(m)?),
            Message::OpenStream(m) => Command::OpenStream(OpenStream::parse(m)?),
            Message::RequireSegment(m) => Command::RequireSegment(RequireSegment::parse(m)),
            Message::AddCredit(m) => Command::AddCredit(AddCredit::parse(m)),
            Message::CloseStream(m) => Command::CloseStream(CloseStream::parse(m)),
            other => Command::Unserved(other.message_type()),
        })
    }

    /// What the request acts on: a job's data (create, push, seal, split,
    /// release, metrics, read, drop) needs that job's token or the cluster
    /// secret; stats, decommissioning and handovers need the secret; stream
    /// control frames act on streams the connection opened, so the
    /// `OpenStream` check covers them.
    pub(crate) fn access(&self) -> Access<'_> {
        match self {
            Command::CreatePartition(c) => job_of(&c.key),
            Command::PushData(c) => job_of(&c.key),
            Command::SealPartition(c) => job_of(&c.key),
            Command::SplitPartition(c) => job_of(&c.key),
            Command::ReleasePartition(c) => job_of(&c.key),
            Command::PartitionMetrics(c) => job_of(&c.key),
            Command::OpenStream(c) => job_of(&c.stream.key),
            Command::DropJob(c) => Access::Job(c.job.as_bytes()),
            Command::RequireSegment(_) | Command::AddCredit(_) | Command::CloseStream(_) => {
                Access::Opened
            }
            Command::WorkerStats(_)
            | Command::Decommission(_)
            | Command::AdoptPartition(_)
            | Command::MoveForward(_)
            | Command::Unserved(_) => Access::Cluster,
        }
    }

    /// Runs the command for `request_id` on `conn`. The reply to send, if
    /// any: a stream answers its `OpenStream` itself, and stream control
    /// frames have none.
    pub(crate) async fn apply(
        self,
        request_id: u64,
        conn: &mut Connection,
    ) -> Option<TierResult<Message>> {
        Some(match self {
            Command::CreatePartition(c) => c.apply(request_id, conn).await,
            Command::PushData(c) => c.apply(request_id, conn).await,
            Command::SealPartition(c) => c.apply(request_id, conn).await,
            Command::SplitPartition(c) => c.apply(request_id, conn).await,
            Command::ReleasePartition(c) => c.apply(request_id, conn).await,
            Command::DropJob(c) => c.apply(request_id, conn).await,
            Command::WorkerStats(c) => Ok(c.apply(request_id, conn)),
            Command::PartitionMetrics(c) => c.apply(request_id, conn),
            Command::Decommission(c) => Ok(c.apply(request_id, conn)),
            Command::AdoptPartition(c) => c.apply(request_id, conn).await,
            Command::MoveForward(c) => c.apply(request_id, conn).await,
            Command::OpenStream(c) => return c.apply(conn).err().map(Err),
            Command::RequireSegment(c) => return c.apply(conn),
            Command::AddCredit(c) => return c.apply(conn),
            Command::CloseStream(c) => return c.apply(conn),
            Command::Unserved(ty) => Err(TierError::bad_input(format!(
                "a worker does not serve {ty:?} requests"
            ))),
        })
    }
}

/// A request on `key`'s data.
fn job_of(key: &PartitionKey) -> Access<'_> {
    Access::Job(key.job.as_bytes())
}

/// A non-empty worker id or address of at most `MAX_ID_BYTES`.
fn bounded(field: &str, value: String) -> TierResult<String> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(TierError::bad_input(format!(
            "{field} must have 1 to {MAX_ID_BYTES} bytes, not {}",
            value.len()
        )));
    }
    Ok(value)
}
