//! `OpenStream`: a reader opens a read stream on a partition's subpartition
//! range. The stream itself runs in `crate::stream`; this checks the request
//! against the limits, charges the stream to the metadata budget and starts
//! it. The stream answers (`StreamOpened` or an error) once it has the
//! partition.

use std::sync::Arc;

use terrace_proto::pb;
use terrace_tier_api::{PartitionKey, TierError, TierResult};
use tokio::sync::mpsc;

use crate::context::{Connection, StreamHandle};
use crate::store::cost;
use crate::stream;

#[derive(Debug)]
pub(crate) struct OpenStream {
    pub stream: stream::Request,
}

impl OpenStream {
    pub(crate) fn parse(m: pb::OpenStream) -> TierResult<Self> {
        let key = PartitionKey::try_from(m.key)?;
        if m.first_subpartition > m.last_subpartition {
            return Err(TierError::bad_input(format!(
                "subpartition range {}..={} is empty",
                m.first_subpartition, m.last_subpartition
            )));
        }
        Ok(OpenStream {
            stream: stream::Request {
                request_id: m.request_id,
                stream_id: m.stream_id,
                key,
                first: m.first_subpartition,
                last: m.last_subpartition,
                credits: m.initial_credit,
            },
        })
    }

    /// Starts the stream; an error is the reply to send instead.
    pub(crate) fn apply(self, conn: &mut Connection) -> TierResult<()> {
        let request = self.stream;
        let limits = &conn.shared.config.limits;
        let range = u64::from(request.last - request.first) + 1;
        if range > u64::from(limits.max_subpartitions) {
            return Err(TierError::bad_input(format!(
                "subpartition range {}..={} has {range} subpartitions, more than {} (limits.max_subpartitions)",
                request.first, request.last, limits.max_subpartitions
            )));
        }
        if request.credits > limits.max_stream_credits {
            return Err(TierError::bad_input(format!(
                "initial_credit {} is more than {} (limits.max_stream_credits)",
                request.credits, limits.max_stream_credits
            )));
        }
        // Streams whose task ended (finished, failed) no longer count.
        conn.streams.retain(|_, s| !s.is_done());
        if conn.streams.len() >= limits.max_streams_per_connection as usize {
            return Err(TierError::bad_input(format!(
                "this connection has {} streams open, the limit (limits.max_streams_per_connection)",
                conn.streams.len()
            )));
        }
        if conn.streams.contains_key(&request.stream_id) {
            return Err(TierError::bad_input(format!(
                "stream {} is already open",
                request.stream_id
            )));
        }
        // The stream's state is charged to the metadata budget before it is
        // made: a fixed part now, each subpartition the reader asks for and each
        // command waiting for the stream as they come. Nothing is allocated
        // per subpartition of the range.
        let charge = conn
            .shared
            .store
            .metadata()
            .charge(cost::STREAM, &format!("read stream {}", request.stream_id))?;
        // A reader has at most one RequireSegment per subpartition and its
        // credits outstanding; more waiting commands than that (plus slack) is a
        // reader that does not wait for answers.
        let queue = range as usize + limits.max_stream_credits as usize + 64;
        let (tx, rx) = mpsc::channel(queue);
        let cancel = conn.cancel.child_token();
        conn.streams.insert(
            request.stream_id,
            StreamHandle {
                tx,
                cancel: cancel.clone(),
            },
        );
        stream::spawn(
            Arc::clone(&conn.shared),
            conn.sender.clone(),
            request,
            charge,
            Arc::clone(&conn.reads),
            rx,
            cancel,
        );
        Ok(())
    }
}
