//! The server side of the handshake and authentication, and error replies.

use terrace_proto::{FrameReader, Message, PROTOCOL_VERSION, pb};
use tokio::io::AsyncRead;

use terrace_tier_api::error_text;

use crate::error::OpeningError;
use crate::security::{self, ClusterSecret, Identity};
use crate::writer::FrameSender;

/// Sends an error reply.
pub fn reply_error(
    sender: &FrameSender,
    request_id: u64,
    code: pb::ErrorCode,
    message: impl Into<String>,
) {
    sender.send(
        Message::error(request_id, code, message),
        bytes::Bytes::new(),
    );
}

/// Largest handshake frame a server reads: it comes before anything is known
/// of the peer, so it is not allowed the full frame size.
pub const MAX_HANDSHAKE_BYTES: usize = 4096;

/// Longest client name accepted in a handshake, in bytes.
pub const MAX_CLIENT_NAME_BYTES: usize = 256;

/// Reads one frame of the connection's opening (handshake, authentication),
/// which may not exceed [`MAX_HANDSHAKE_BYTES`]. On failure an error frame is
/// queued and the reason returned.
async fn read_opening_frame<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    sender: &FrameSender,
    what: &'static str,
) -> Result<Message, OpeningError> {
    let refuse = |source: terrace_proto::FrameError| {
        let e = OpeningError::Frame { what, source };
        if matches!(&e, OpeningError::Frame { source, .. } if source.is_protocol_error()) {
            refuse_with(sender, 0, pb::ErrorCode::Protocol, &e);
        }
        e
    };
    let prefix = match reader.read_prefix().await {
        Ok(Some(prefix)) => prefix,
        Ok(None) => return Err(OpeningError::Closed { what }),
        Err(e) => return Err(refuse(e)),
    };
    if prefix.remaining() > MAX_HANDSHAKE_BYTES {
        let e = OpeningError::TooLarge {
            what,
            len: prefix.remaining(),
            max: MAX_HANDSHAKE_BYTES,
        };
        refuse_with(sender, 0, pb::ErrorCode::Protocol, &e);
        return Err(e);
    }
    match reader.read_rest(prefix).await {
        Ok((message, _)) => Ok(message),
        Err(e) => Err(refuse(e)),
    }
}

/// Queues `e` (with its causes) as an error reply of `code`.
fn refuse_with(sender: &FrameSender, request_id: u64, code: pb::ErrorCode, e: &OpeningError) {
    reply_error(sender, request_id, code, error_text(e));
}

/// Reads the first frame, which must be a handshake with our protocol version,
/// and answers it with the server's identity (`"master"`, `"worker <id>"`)
/// and `auth_challenge` (empty when the server has no secret). On failure an
/// error frame is queued and the reason returned; the caller closes the
/// connection.
pub async fn accept_handshake<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    sender: &FrameSender,
    server_name: &str,
    server_identity: &str,
    auth_challenge: &[u8],
) -> Result<String, OpeningError> {
    match read_opening_frame(reader, sender, "handshake").await? {
        Message::Handshake(h) if h.client_name.len() > MAX_CLIENT_NAME_BYTES => {
            let e = OpeningError::ClientName {
                len: h.client_name.len(),
                max: MAX_CLIENT_NAME_BYTES,
            };
            refuse_with(sender, h.request_id, pb::ErrorCode::BadRequest, &e);
            Err(e)
        }
        Message::Handshake(h) if h.protocol_version == PROTOCOL_VERSION => {
            sender.send(
                Message::HandshakeOk(pb::HandshakeOk {
                    request_id: h.request_id,
                    protocol_version: PROTOCOL_VERSION,
                    server_name: server_name.to_string(),
                    auth_challenge: auth_challenge.to_vec().into(),
                    server_identity: server_identity.to_string(),
                }),
                bytes::Bytes::new(),
            );
            Ok(h.client_name)
        }
        Message::Handshake(h) => {
            let e = OpeningError::Version {
                got: h.protocol_version,
                ours: PROTOCOL_VERSION,
            };
            refuse_with(sender, h.request_id, pb::ErrorCode::VersionMismatch, &e);
            Err(e)
        }
        other => {
            let e = OpeningError::NotHandshake {
                got: other.message_type(),
            };
            refuse_with(sender, 0, pb::ErrorCode::Protocol, &e);
            Err(e)
        }
    }
}

/// Reads the client's `Authenticate`, which must follow a handshake that
/// carried `challenge` and stated `server_identity`, and answers it with the
/// server's proof; `channel` is the TLS session's exporter value (empty
/// without TLS). Returns what the client proved, or (after queueing an
/// error) why it is refused; a client that proves nothing is refused.
pub(crate) async fn accept_authentication<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    sender: &FrameSender,
    secret: &ClusterSecret,
    challenge: &[u8],
    server_identity: &str,
    channel: &[u8],
) -> Result<Identity, OpeningError> {
    match read_opening_frame(reader, sender, "authentication").await? {
        Message::Authenticate(answer) => {
            match security::verify(secret, challenge, server_identity, channel, &answer) {
                Ok((identity, proof)) => {
                    sender.send(
                        Message::Authenticated(pb::Authenticated {
                            request_id: answer.request_id,
                            proof: proof.into(),
                        }),
                        bytes::Bytes::new(),
                    );
                    Ok(identity)
                }
                Err(reason) => {
                    let e = OpeningError::Auth(reason);
                    refuse_with(
                        sender,
                        answer.request_id,
                        pb::ErrorCode::PermissionDenied,
                        &e,
                    );
                    Err(e)
                }
            }
        }
        other => {
            let e = OpeningError::NotAuthenticate {
                got: other.message_type(),
            };
            refuse_with(sender, 0, pb::ErrorCode::Protocol, &e);
            Err(e)
        }
    }
}
