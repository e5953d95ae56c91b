//! One file per request the worker serves, shaped like the master's
//! commands. A request is parsed and validated once, on receipt, into its
//! typed form (`terrace_tier_api::protocol::WorkerRequest`, which also says
//! what it acts on: [`Command::access`], checked against the connection's
//! identity); each file here applies one to the connection and the worker's
//! shared state and returns its typed reply.

mod adopt_lost;
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
use terrace_proto::Message;
use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{Access, Wire, WorkerRequest};

use crate::context::Connection;
use crate::store::Reservation;

/// A validated request, with the memory budget its frame holds.
#[derive(Debug)]
pub(crate) struct Command {
    request: WorkerRequest,
    /// A push's data stays charged to the budget until it is flushed.
    reservation: Reservation,
}

impl Command {
    /// Parses a request; `body` and `reservation` are its frame body and the
    /// memory budget it holds (a push's data, a handover's index). A type a
    /// worker does not serve is a bad request naming it.
    pub(crate) fn from_message(
        message: Message,
        body: Bytes,
        reservation: Reservation,
    ) -> TierResult<Command> {
        Ok(Command {
            request: WorkerRequest::from_frame(message, body)?,
            reservation,
        })
    }

    /// What the request acts on: a job's data (create, push, seal, split,
    /// release, metrics, read, drop) needs that job's token or the cluster
    /// secret; stats, decommissioning and handovers need the secret; stream
    /// control frames act on streams the connection opened, so the
    /// `OpenStream` check covers them.
    pub(crate) fn access(&self) -> Access<'_> {
        self.request.access()
    }

    /// Runs the command for `request_id` on `conn`. The reply to send, if
    /// any: a stream answers its `OpenStream` itself, and stream control
    /// frames have none.
    pub(crate) async fn apply(
        self,
        request_id: u64,
        conn: &mut Connection,
    ) -> Option<TierResult<Message>> {
        let reply = |r: TierResult<_>| Some(r.map(|r| frame(r, request_id)));
        match self.request {
            WorkerRequest::CreatePartition(r) => reply(create_partition::apply(r, conn).await),
            WorkerRequest::PushData(r) => {
                let pushed = push_data::apply(r, conn, self.reservation).await;
                Some(pushed.map(|r| frame(r, request_id)))
            }
            WorkerRequest::SealPartition(r) => reply(seal_partition::apply(r, conn).await),
            WorkerRequest::SplitPartition(r) => reply(split_partition::apply(r, conn).await),
            WorkerRequest::ReleasePartition(r) => reply(release_partition::apply(r, conn).await),
            WorkerRequest::DropJob(r) => reply(drop_job::apply(r, conn).await),
            WorkerRequest::WorkerStats(r) => {
                Some(Ok(frame(worker_stats::apply(r, conn), request_id)))
            }
            WorkerRequest::PartitionMetrics(r) => {
                Some(partition_metrics::apply(r, conn).map(|r| frame(r, request_id)))
            }
            WorkerRequest::Decommission(r) => reply(Ok(decommission::apply(r, conn))),
            WorkerRequest::Restart(_) => {
                crate::restart::requested(&conn.shared, &conn.peer);
                reply(Ok(terrace_tier_api::protocol::Ack))
            }
            WorkerRequest::AdoptLost(r) => Some(
                adopt_lost::apply(r, conn)
                    .await
                    .map(|r| frame(r, request_id)),
            ),
            WorkerRequest::AdoptPartition(r) => reply(adopt_partition::apply(r, conn).await),
            WorkerRequest::MoveForward(r) => reply(move_forward::apply(r, conn).await),
            WorkerRequest::OpenStream(r) => open_stream::apply(r, request_id, conn).err().map(Err),
            WorkerRequest::Stream(control) => {
                stream_input::apply(control, conn);
                None
            }
        }
    }
}

/// A bodiless reply's frame.
fn frame(reply: impl Wire, request_id: u64) -> Message {
    reply.into_frame(request_id).0
}
