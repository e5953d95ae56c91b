//! `RequireSegment`, `AddCredit` and `CloseStream`: a reader's frames on a
//! stream it opened (see `open_stream`). They have no reply: a problem is
//! reported on the stream (`StreamError`), which then ends.

use bytes::Bytes;
use terrace_tier_api::TierError;
use terrace_tier_api::protocol::{StreamControl, StreamError, StreamId, Wire};
use tokio::sync::mpsc;

use crate::context::{Connection, StreamInput};
use crate::store::cost;

/// Runs a reader's frame on the stream it names.
pub(crate) fn apply(control: StreamControl, conn: &mut Connection) {
    match control {
        StreamControl::RequireSegment(r) => {
            let input = StreamInput::Require {
                subpartition: r.subpartition.0,
                segment: r.segment.0,
            };
            send(conn, r.stream_id.0, input);
        }
        StreamControl::AddCredit(c) => send(conn, c.stream_id.0, StreamInput::Credit(c.credit)),
        StreamControl::CloseStream(c) => {
            if let Some(stream) = conn.streams.remove(&c.stream_id.0) {
                stream.cancel.cancel();
            }
        }
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
                    stream_error(conn, stream_id, e);
                    return;
                }
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = stream.tx.try_send((input, charge)) {
                let queue = stream.tx.max_capacity();
                if let Some(stream) = conn.streams.remove(&stream_id) {
                    stream.cancel.cancel();
                }
                let error = TierError::bad_input(format!(
                    "stream {stream_id} has {queue} commands waiting, its limit (its subpartitions + limits.max_stream_credits + 64)"
                ));
                stream_error(conn, stream_id, error);
            }
        }
        None => {
            let error = TierError::bad_input(format!("stream {stream_id} is not open"));
            stream_error(conn, stream_id, error);
        }
    }
}

/// Tells the reader its stream ended with `error`.
fn stream_error(conn: &Connection, stream_id: u64, error: TierError) {
    let (frame, _) = StreamError {
        stream_id: StreamId(stream_id),
        error,
    }
    .into_frame(0);
    conn.sender.send(frame, Bytes::new());
}
