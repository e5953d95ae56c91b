//! One file per request the master serves. A request is parsed and
//! validated once, on receipt, into its typed form
//! (`terrace_tier_api::protocol::MasterRequest`, which also says what it
//! acts on: [`Command::access`], checked against the connection's
//! identity); each file here applies one to the registry and returns its
//! typed reply.

mod allocate_partition;
mod heartbeat;
mod list_parts;
mod list_workers;
mod locate_partition;
mod register_job;
mod register_worker;
mod unregister_job;
mod worker_unreachable;

use std::time::Instant;

use bytes::Bytes;
use terrace_proto::{Message, MessageType};
use terrace_rpc::{ClusterSecret, Identity};
use terrace_tier_api::protocol::{Access, MasterRequest, Wire, WorkerAt};
use terrace_tier_api::{TierResult, WorkerId};

use crate::registry::Registry;

pub(crate) use worker_unreachable::ProbeDue;

/// A validated request.
#[derive(Debug)]
pub(crate) struct Command {
    request: MasterRequest,
}

impl Command {
    /// Parses a request. A type the master does not serve (a worker's) is a
    /// bad request naming it.
    pub(crate) fn from_frame(message: Message, body: Bytes) -> TierResult<Command> {
        Ok(Command {
            request: MasterRequest::from_frame(message, body)?,
        })
    }

    /// What the request acts on. Every master request is a cluster
    /// member's (or an operator's), except that a job's producers may place
    /// the next part of one of its split partitions, locate a relocated one
    /// and list the job's parts on a worker, and any authenticated peer may report a worker it cannot reach.
    pub(crate) fn access(&self) -> Access<'_> {
        self.request.access()
    }

    /// Its message type, for logs and errors.
    pub(crate) fn message_type(&self) -> MessageType {
        self.request.message_type()
    }

    /// The request as made over a connection that proved `identity` (a
    /// job's unreachable report counts for that job).
    pub(crate) fn made_by(self, identity: &Identity) -> Self {
        match self.request {
            MasterRequest::WorkerUnreachable(r) => Command {
                request: MasterRequest::WorkerUnreachable(worker_unreachable::reported_over(
                    r, identity,
                )),
            },
            request => Command { request },
        }
    }

    /// Applies the command and returns the reply for `request_id`, and a
    /// worker the master should probe now (after an unreachable report).
    /// `secret` signs the tokens of registered jobs.
    pub(crate) fn apply(
        self,
        request_id: u64,
        registry: &mut Registry,
        now: Instant,
        secret: Option<&ClusterSecret>,
    ) -> (Message, Option<ProbeDue>) {
        let reply = match self.request {
            MasterRequest::WorkerUnreachable(r) => {
                let (ack, probe) = worker_unreachable::apply(r, registry, now);
                return (frame(ack, request_id), probe);
            }
            MasterRequest::RegisterWorker(r) => {
                register_worker::apply(r, registry, now).map(|r| frame(r, request_id))
            }
            MasterRequest::WorkerHeartbeat(r) => {
                heartbeat::apply(r, registry, now).map(|r| frame(r, request_id))
            }
            MasterRequest::RegisterJob(r) => {
                register_job::apply(r, registry, now, secret).map(|r| frame(r, request_id))
            }
            MasterRequest::UnregisterJob(r) => {
                Ok(frame(unregister_job::apply(r, registry, now), request_id))
            }
            MasterRequest::AllocatePartition(r) => {
                allocate_partition::apply(r, registry, now).map(|r| frame(r, request_id))
            }
            MasterRequest::ListWorkers(r) => {
                Ok(frame(list_workers::apply(r, registry, now), request_id))
            }
            MasterRequest::LocatePartition(r) => {
                Ok(frame(locate_partition::apply(r, registry, now), request_id))
            }
            MasterRequest::ListParts(r) => Ok(frame(list_parts::apply(r, registry), request_id)),
        };
        (reply.unwrap_or_else(|e| e.to_reply(request_id)), None)
    }
}

/// A bodiless reply's frame.
fn frame(reply: impl Wire, request_id: u64) -> Message {
    reply.into_frame(request_id).0
}

/// A worker the registry holds: its id was validated when the worker
/// registered or heartbeat.
fn worker_at(id: String, address: String) -> WorkerAt {
    WorkerAt::new(
        WorkerId::new(id).expect("the registry holds only worker ids validated on receipt"),
        address,
    )
}

#[cfg(test)]
mod tests {
    use terrace_tier_api::protocol::{DropJob, RegisterWorker};
    use terrace_tier_api::{ErrorKind, JobId};

    use super::*;

    fn register(address: &str) -> TierResult<Command> {
        let (message, body) = RegisterWorker {
            worker: WorkerId::new("w1").expect("valid"),
            data_address: address.to_string(),
        }
        .into_frame(7);
        Command::from_frame(message, body.into_bytes())
    }

    #[test]
    fn worker_addresses_are_validated_on_receipt() {
        for good in ["10.0.0.1:7000", "[::1]:7000"] {
            let command = register(good).expect("valid address");
            assert_eq!(command.access(), Access::Cluster);
            assert_eq!(command.message_type(), MessageType::RegisterWorker);
        }
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:99999",
            "host:http",
        ] {
            let e = register(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::BadInput, "{bad:?}");
            assert_eq!(
                e.message(),
                format!("worker data address {bad:?} is not host:port")
            );
        }
    }

    #[test]
    fn requests_the_master_does_not_serve_are_bad_requests_naming_their_type() {
        let (message, body) = DropJob {
            job: JobId::new(Bytes::from_static(b"j")).expect("valid"),
        }
        .into_frame(42);
        let e = Command::from_frame(message, body.into_bytes()).expect_err("unserved");
        assert_eq!(e.kind(), ErrorKind::BadInput);
        assert_eq!(e.message(), "the master does not serve DropJob requests");
    }
}
