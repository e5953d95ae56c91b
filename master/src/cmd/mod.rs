//! One file per request the master serves. Each command is parsed and
//! validated from its wire message (`parse`), says what it acts on
//! ([`Command::access`], which the connection's identity is checked
//! against), then is applied to the registry (`apply`), which yields the
//! reply. Raw protobuf structs stay in this module.

mod allocate_partition;
mod heartbeat;
mod list_workers;
mod locate_partition;
mod register_job;
mod register_worker;
mod unregister_job;
mod worker_unreachable;

use std::time::Instant;

use terrace_proto::{Message, MessageType, pb};
use terrace_rpc::ClusterSecret;
use terrace_tier_api::protocol::Access;
use terrace_tier_api::{JobId, MAX_ID_BYTES, TierError, TierResult};

use crate::registry::{Registry, WorkerLoad};

pub(crate) use allocate_partition::AllocatePartition;
pub(crate) use heartbeat::Heartbeat;
pub(crate) use list_workers::ListWorkers;
pub(crate) use locate_partition::LocatePartition;
pub(crate) use register_job::RegisterJob;
pub(crate) use register_worker::RegisterWorker;
pub(crate) use unregister_job::UnregisterJob;
pub(crate) use worker_unreachable::{ProbeDue, WorkerUnreachable};

/// A validated request.
#[derive(Debug)]
pub(crate) enum Command {
    RegisterWorker(RegisterWorker),
    Heartbeat(Heartbeat),
    RegisterJob(RegisterJob),
    UnregisterJob(UnregisterJob),
    AllocatePartition(AllocatePartition),
    ListWorkers(ListWorkers),
    WorkerUnreachable(WorkerUnreachable),
    LocatePartition(LocatePartition),
    /// A request the master does not serve (a worker's): refused as a
    /// cluster request would be, then answered BAD_REQUEST.
    Unserved(MessageType),
}

impl Command {
    /// Parses a request. On failure, the error reply to send instead
    /// (BAD_REQUEST for invalid content).
    pub(crate) fn from_message(message: Message) -> Result<(u64, Command), Box<Message>> {
        let request_id = message.request_id();
        let parsed = match message {
            Message::RegisterWorker(m) => RegisterWorker::parse(m).map(Command::RegisterWorker),
            Message::WorkerHeartbeat(m) => Heartbeat::parse(m).map(Command::Heartbeat),
            Message::RegisterJob(m) => RegisterJob::parse(m).map(Command::RegisterJob),
            Message::UnregisterJob(m) => UnregisterJob::parse(m).map(Command::UnregisterJob),
            Message::AllocatePartition(m) => {
                AllocatePartition::parse(m).map(Command::AllocatePartition)
            }
            Message::ListWorkers(_) => Ok(Command::ListWorkers(ListWorkers)),
            Message::LocatePartition(m) => LocatePartition::parse(m).map(Command::LocatePartition),
            Message::WorkerUnreachable(m) => {
                WorkerUnreachable::parse(m).map(Command::WorkerUnreachable)
            }
            other => Ok(Command::Unserved(other.message_type())),
        };
        match parsed {
            Ok(command) => Ok((request_id, command)),
            Err(e) => {
                tracing::debug!(request_id, error = %e, "bad request");
                Err(Box::new(e.to_reply(request_id)))
            }
        }
    }

    /// What the request acts on. Every master request is a cluster
    /// member's (or an operator's), except that a job's producers may place
    /// the next part of one of its split partitions and locate a relocated
    /// one, and any authenticated peer may report a worker it cannot reach.
    pub(crate) fn access(&self) -> Access<'_> {
        match self {
            Command::AllocatePartition(c) => Access::Job(&c.key.job),
            Command::LocatePartition(c) => Access::Job(&c.key.job),
            Command::WorkerUnreachable(_) => Access::Authenticated,
            Command::RegisterWorker(_)
            | Command::Heartbeat(_)
            | Command::RegisterJob(_)
            | Command::UnregisterJob(_)
            | Command::ListWorkers(_)
            | Command::Unserved(_) => Access::Cluster,
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
        let reply = match self {
            Command::WorkerUnreachable(c) => return c.apply(request_id, registry, now),
            Command::RegisterWorker(c) => c.apply(request_id, registry, now),
            Command::Heartbeat(c) => c.apply(request_id, registry, now),
            Command::RegisterJob(c) => c.apply(request_id, registry, now, secret),
            Command::UnregisterJob(c) => c.apply(request_id, registry, now),
            Command::AllocatePartition(c) => c.apply(request_id, registry, now),
            Command::ListWorkers(c) => c.apply(request_id, registry, now),
            Command::LocatePartition(c) => c.apply(request_id, registry, now),
            Command::Unserved(ty) => Message::error(
                request_id,
                pb::ErrorCode::BadRequest,
                format!("the master does not serve {ty:?} requests"),
            ),
        };
        (reply, None)
    }
}

/// A worker id: non-empty text of at most [`MAX_ID_BYTES`] bytes.
fn worker_id(id: String) -> TierResult<String> {
    if id.is_empty() {
        return Err(TierError::bad_input("worker id is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(TierError::bad_input(format!(
            "worker id has {} bytes, more than {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(id)
}

/// A worker's data address: `host:port` with a numeric port.
fn data_address(address: String) -> TierResult<String> {
    let valid = address.len() <= MAX_ID_BYTES
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
    if valid {
        Ok(address)
    } else {
        Err(TierError::bad_input(format!(
            "worker data address {address:?} is not host:port"
        )))
    }
}

fn job_id(bytes: bytes::Bytes) -> TierResult<JobId> {
    JobId::new(bytes)
}

/// Most data directories a worker may report.
const MAX_DIRS: usize = 64;
/// Longest directory path or store URL a worker may report, in bytes.
const MAX_PATH_BYTES: usize = 1024;
/// Longest error text a worker may report, in bytes.
const MAX_ERROR_BYTES: usize = 4096;

fn check_len(field: &str, text: &str, max: usize) -> TierResult<()> {
    if text.len() > max {
        return Err(TierError::bad_input(format!(
            "{field} has {} bytes, more than {max}",
            text.len()
        )));
    }
    Ok(())
}

/// A heartbeat's load, with its lists and texts bounded: the master keeps
/// it per worker and lists it to every client.
fn worker_load(load: Option<pb::WorkerLoad>) -> TierResult<WorkerLoad> {
    if let Some(tiers) = load.as_ref().and_then(|l| l.tiers.as_ref()) {
        if tiers.dirs.len() > MAX_DIRS {
            return Err(TierError::bad_input(format!(
                "load.tiers.dirs has {} entries, more than {MAX_DIRS}",
                tiers.dirs.len()
            )));
        }
        for dir in &tiers.dirs {
            check_len("load.tiers.dirs.path", &dir.path, MAX_PATH_BYTES)?;
            check_len("load.tiers.dirs.error", &dir.error, MAX_ERROR_BYTES)?;
        }
        if let Some(store) = &tiers.object_store {
            check_len("load.tiers.object_store.url", &store.url, MAX_PATH_BYTES)?;
            check_len(
                "load.tiers.object_store.last_error",
                &store.last_error,
                MAX_ERROR_BYTES,
            )?;
        }
    }
    Ok(load.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_and_addresses_are_validated() {
        assert_eq!(worker_id("w1".into()), Ok("w1".to_string()));
        assert_eq!(
            worker_id(String::new()),
            Err(TierError::bad_input("worker id is empty"))
        );
        assert!(worker_id("x".repeat(MAX_ID_BYTES + 1)).is_err());
        assert_eq!(
            data_address("10.0.0.1:7000".into()),
            Ok("10.0.0.1:7000".to_string())
        );
        assert_eq!(
            data_address("[::1]:7000".into()),
            Ok("[::1]:7000".to_string())
        );
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:99999",
            "host:http",
        ] {
            assert!(data_address(bad.into()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn requests_the_master_does_not_serve_are_cluster_requests_answered_bad_request() {
        let (request_id, command) = Command::from_message(Message::DropJob(pb::DropJob {
            request_id: 42,
            job_id: bytes::Bytes::from_static(b"j"),
        }))
        .expect("parsed");
        assert_eq!(command.access(), Access::Cluster);
        let config = crate::MasterConfig::default();
        let now = terrace_rpc::clock::now();
        let mut registry = Registry::new(&config, now);
        let (reply, probe) = command.apply(request_id, &mut registry, now, None);
        assert_eq!(probe, None);
        assert_eq!(
            reply,
            Message::error(
                42,
                pb::ErrorCode::BadRequest,
                "the master does not serve DropJob requests"
            )
        );
    }
}
