//! One client connection, past its handshake: requests answered in order
//! until the peer closes, breaks the protocol, or the master shuts down.

use std::sync::Arc;

use bytes::Bytes;
use terrace_proto::Message;
use terrace_rpc::Accepted;

use crate::cmd::Command;
use crate::server::Shared;

/// Serves one connection to its end and gives it back to the skeleton.
pub(crate) async fn serve(shared: Arc<Shared>, mut conn: Accepted) -> Accepted {
    while let Some(prefix) = conn.next_prefix(true).await {
        let Some((message, _body)) = conn.read_rest(prefix).await else {
            break;
        };
        // Every master request is a cluster member's (or an operator's),
        // except that a job's producers may place the next part of one of
        // its split partitions, and report a worker they cannot reach.
        let what = format!("{:?}", message.message_type());
        let allowed = match &message {
            Message::AllocatePartition(m) => match &m.key {
                Some(key) => conn.identity.require_job(&key.job_id, &what),
                None => conn.identity.require_cluster(&what),
            },
            Message::LocatePartition(m) => match &m.key {
                Some(key) => conn.identity.require_job(&key.job_id, &what),
                None => conn.identity.require_cluster(&what),
            },
            Message::WorkerUnreachable(_) => conn.identity.require_authenticated(&what),
            _ => conn.identity.require_cluster(&what),
        };
        let reply = match allowed {
            Err(e) => {
                tracing::debug!(peer = %conn.peer, client = %conn.client, error = %e, "request refused");
                e.to_reply(message.request_id())
            }
            Ok(()) => match Command::from_message(message) {
                Ok((request_id, command)) => {
                    let command = match command {
                        Command::WorkerUnreachable(c) => {
                            Command::WorkerUnreachable(c.reported_over(&conn.identity))
                        }
                        other => other,
                    };
                    let (reply, probe) = shared.with_registry(|registry, now| {
                        command.apply(request_id, registry, now, shared.secret.as_ref())
                    });
                    if let Some(due) = probe {
                        crate::probe::spawn(Arc::clone(&shared), due);
                    }
                    reply
                }
                Err(reply) => *reply,
            },
        };
        if !conn.sender.send(reply, Bytes::new()) {
            tracing::debug!(peer = %conn.peer, client = %conn.client, "connection lost while replying");
            break;
        }
    }
    conn
}
