//! One client connection, past its handshake: requests answered in order
//! until the peer closes, breaks the protocol, or the master shuts down.

use std::sync::Arc;

use bytes::Bytes;
use terrace_rpc::Accepted;

use crate::cmd::Command;
use crate::context::Shared;

/// Serves one connection to its end and gives it back to the skeleton.
pub(crate) async fn serve(shared: Arc<Shared>, mut conn: Accepted) -> Accepted {
    while let Some(prefix) = conn.next_prefix(true).await {
        let Some((message, body)) = conn.read_rest(prefix).await else {
            break;
        };
        let request_id = message.request_id();
        let reply = match Command::from_frame(message, body) {
            Err(e) => {
                tracing::debug!(request_id, error = %e, "bad request");
                e.to_reply(request_id)
            }
            Ok(command) => {
                let what = format!("{:?}", command.message_type());
                match conn.identity.authorize(command.access(), &what) {
                    Err(e) => {
                        tracing::debug!(peer = %conn.peer, client = %conn.client, error = %e, "request refused");
                        e.to_reply(request_id)
                    }
                    Ok(()) => {
                        let command = command.made_by(&conn.identity);
                        let (reply, probe) = shared.with_registry(|registry, now| {
                            command.apply(request_id, registry, now, shared.secret.as_ref())
                        });
                        if let Some(due) = probe {
                            shared.probe(due);
                        }
                        reply
                    }
                }
            }
        };
        if !conn.sender.send(reply, Bytes::new()) {
            tracing::debug!(peer = %conn.peer, client = %conn.client, "connection lost while replying");
            break;
        }
    }
    conn
}
