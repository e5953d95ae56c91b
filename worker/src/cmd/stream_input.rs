//! `RequireSegment`, `AddCredit` and `CloseStream`: a reader's frames on a
//! stream it opened (see `open_stream`). They have no reply: a problem is
//! reported on the stream (`StreamError`), which then ends.

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_tier_api::TierResult;
use tokio::sync::mpsc;

use crate::context::{Connection, StreamInput};
use crate::store::cost;

/// The reader wants `segment` of `subpartition` next.
#[derive(Debug)]
pub(crate) struct RequireSegment {
    stream_id: u64,
    subpartition: u32,
    segment: u32,
}

impl RequireSegment {
    pub(crate) fn parse(m: pb::RequireSegment) -> Self {
        RequireSegment {
            stream_id: m.stream_id,
            subpartition: m.subpartition,
            segment: m.segment_id,
        }
    }

    pub(crate) fn apply(self, conn: &mut Connection) -> Option<TierResult<Message>> {
        let input = StreamInput::Require {
            subpartition: self.subpartition,
            segment: self.segment,
        };
        send(conn, self.stream_id, input);
        None
    }
}

/// The reader takes `credit` more `ReadData` frames.
#[derive(Debug)]
pub(crate) struct AddCredit {
    stream_id: u64,
    credit: u32,
}

impl AddCredit {
    pub(crate) fn parse(m: pb::AddCredit) -> Self {
        AddCredit {
            stream_id: m.stream_id,
            credit: m.credit,
        }
    }

    pub(crate) fn apply(self, conn: &mut Connection) -> Option<TierResult<Message>> {
        send(conn, self.stream_id, StreamInput::Credit(self.credit));
        None
    }
}

/// The reader is done with the stream.
#[derive(Debug)]
pub(crate) struct CloseStream {
    stream_id: u64,
}

impl CloseStream {
    pub(crate) fn parse(m: pb::CloseStream) -> Self {
        CloseStream {
            stream_id: m.stream_id,
        }
    }

    pub(crate) fn apply(self, conn: &mut Connection) -> Option<TierResult<Message>> {
        if let Some(stream) = conn.streams.remove(&self.stream_id) {
            stream.cancel.cancel();
        }
        None
    }
}

/// Hands `input` to the stream, charged to the metadata budget until the
/// stream takes it. A stream that is not open, or whose queue is full (a
/// reader that does not wait for answers), gets a `StreamError`.
fn send(conn: &mut Connection, stream_id: u64, input: StreamInput) {
    match conn.streams.get(&stream_id) {
        Some(stream) => {
            let charge = match conn
                .shared
                .store
                .metadata()
                .charge(cost::STREAM_COMMAND, "a read stream command")
            {
                Ok(charge) => charge,
                Err(e) => {
                    if let Some(stream) = conn.streams.remove(&stream_id) {
                        stream.cancel.cancel();
                    }
                    conn.sender.send(
                        Message::StreamError(e.to_stream_error(stream_id)),
                        Bytes::new(),
                    );
                    return;
                }
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = stream.tx.try_send((input, charge)) {
                let queue = stream.tx.max_capacity();
                if let Some(stream) = conn.streams.remove(&stream_id) {
                    stream.cancel.cancel();
                }
                conn.sender.send(
                    Message::StreamError(pb::StreamError {
                        stream_id,
                        code: pb::ErrorCode::BadRequest as i32,
                        detail: pb::ErrorCode::Unspecified as i32,
                        message: format!(
                            "stream {stream_id} has {queue} commands waiting, its limit (its subpartitions + limits.max_stream_credits + 64)"
                        ),
                    }),
                    Bytes::new(),
                );
            }
        }
        None => {
            conn.sender.send(
                Message::StreamError(pb::StreamError {
                    stream_id,
                    code: pb::ErrorCode::BadRequest as i32,
                    detail: pb::ErrorCode::Unspecified as i32,
                    message: format!("stream {stream_id} is not open"),
                }),
                Bytes::new(),
            );
        }
    }
}
