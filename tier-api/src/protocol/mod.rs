//! Typed protocol messages: one domain type per request and reply of
//! `proto/terrace.proto`, validated once on receipt and converted on send.
//!
//! - [`control`]: what masters serve (worker registration and heartbeats,
//!   jobs, placement, the worker list).
//! - [`data`]: what workers serve (partitions, pushes, stats, handover, the
//!   opening of read streams).
//! - [`stream`]: the frames of an open read stream, both ways (the reader's
//!   [`StreamControl`], the worker's [`StreamFrame`]).
//!
//! Every type implements [`Wire`]: `into_frame(request_id)` builds the frame
//! (header and body) and `from_frame` parses a received one, refusing a frame
//! of another type with one error ("expected X, got Y"). Each type also has
//! `TryFrom<pb::X>` (the validation: ids, bounds, required fields) and
//! `into_pb(request_id)`. Required fields are not `Option`; ids are the
//! newtypes of [`crate::ids`]. A [`Request`] names its reply type and the
//! [`Access`] it needs, so a server authorizes every request in one place.
//!
//! The connection layer stays in `terrace-rpc`: `Handshake`, `HandshakeOk`,
//! `Authenticate`, `Authenticated` (its security code builds and checks
//! them) and `ErrorReply` (turned into a [`TierError`] by the client, sent
//! by servers from a [`TierError`]'s code and message). Request ids are the
//! connection's too: domain types carry none.
//!
//! Bodies (`PushData`, `AdoptPartition`, `ReadData`) travel as [`Body`]:
//! reference-counted chunks, never copied on the way in or out.

pub mod control;
pub mod data;
pub mod stream;

use std::fmt;

use bytes::Bytes;
use terrace_proto::{Message, MessageType};

use crate::error::{TierError, TierResult};
use crate::ids::{JobId, MAX_ID_BYTES, WorkerId};

pub use control::{
    AllocatePartition, DirStats, HeartbeatReply, JOB_TOKEN_BYTES, JobRegistered, ListParts,
    ListWorkers, LocatePartition, MAX_DIRS, MAX_ERROR_BYTES, MAX_EXCLUDED_WORKERS,
    MAX_HEARTBEAT_JOBS, MAX_LISTED_PARTS, MAX_PATH_BYTES, MAX_REPORT_ERROR_BYTES,
    MAX_STORE_ID_BYTES, ObjectStoreStats, PartitionAllocated, PartitionLocated, PartsListed,
    RegisterJob, RegisterWorker, TierStats, UnregisterJob, WorkerHeartbeat, WorkerInfo, WorkerList,
    WorkerLoad, WorkerUnreachable, check_store_id,
};
pub use data::{
    AdoptLost, AdoptPartition, CreatePartition, Decommission, DropJob, LostAdopted, MoveForward,
    OpenStream, PartitionMetrics, PartitionMetricsReply, PushAck, PushData, ReleasePartition,
    Restart, SealPartition, SplitPartition, StreamOpened, WorkerStats, WorkerStatsReply,
};
pub use stream::{
    AddCredit, CloseStream, Extent, ReadData, RequireSegment, StreamControl, StreamError,
    StreamFrame, StreamId, SubpartitionEnd, SubpartitionRedirect,
};

/// A message that travels as one frame: its header (for a request id;
/// stream frames have none and ignore it) and its body.
pub trait Wire: Sized {
    /// The type byte it is sent with.
    const TYPE: MessageType;

    /// The frame that carries it, answering or asking as `request_id`.
    fn into_frame(self, request_id: u64) -> (Message, Body);

    /// Parses and validates a received frame. A frame of another type is an
    /// error naming both types (the one place that says "expected X, got Y").
    fn from_frame(message: Message, body: Bytes) -> TierResult<Self>;

    /// The encoded length of its header (for callers that fit lists into a
    /// frame).
    fn header_len(&self) -> usize
    where
        Self: Clone,
    {
        self.clone().into_frame(u64::MAX).0.header_len()
    }
}

/// A request: a message answered by exactly one reply of type `Reply` (or
/// an `ErrorReply`, which the client turns into a [`TierError`]).
pub trait Request: Wire {
    /// What the server answers on success.
    type Reply: Wire;

    /// What the connection must have proved to make this request. Servers
    /// decide with this alone (see [`Access`]); a request whose content does
    /// not parse is refused as a bad request before it is authorized.
    fn access(&self) -> Access<'_>;
}

/// What a request needs the connection to have proved (the server's
/// identity check, `terrace_rpc::Identity::authorize`). On a server without
/// a cluster secret every connection may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// Only cluster members (the cluster secret): masters, workers, master
    /// agents, operators' tools.
    Cluster,
    /// Cluster members, and holders of this job's token (its producers and
    /// consumers): the request touches this job's data or placement only.
    Job(&'a JobId),
    /// Anyone who proved something (the secret or any job's token). Only
    /// `WorkerUnreachable`: a job's report counts for its own job (the
    /// master replaces the job it names by the connection's).
    Authenticated,
    /// Acts on a read stream this connection opened (`OpenStream` was
    /// checked for its job): no further check.
    OwnStream,
}

/// A frame body: a list of reference-counted chunks sent back to back.
/// A received body is one chunk (the frame's buffer); a sent one may be
/// several (a producer's runs, a worker's extents), written with vectored
/// writes. Neither way copies the bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Body {
    chunks: Vec<Bytes>,
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Body::default()
    }

    /// The body's chunks, in order (empty chunks dropped).
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    pub fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
    }

    /// Bytes in all chunks.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The body as one buffer: no copy for a received body (one chunk);
    /// a body of several chunks is concatenated.
    pub fn into_bytes(self) -> Bytes {
        let mut chunks = self.chunks;
        match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().expect("one chunk"),
            _ => {
                let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
                for chunk in &chunks {
                    all.extend_from_slice(chunk);
                }
                Bytes::from(all)
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::from(vec![bytes])
    }
}

impl From<Vec<Bytes>> for Body {
    fn from(mut chunks: Vec<Bytes>) -> Self {
        chunks.retain(|c| !c.is_empty());
        Body { chunks }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Body({} bytes in {} chunks)",
            self.len(),
            self.chunks.len()
        )
    }
}

/// The error for a frame of type `got` where `expected` was due.
pub fn unexpected(expected: MessageType, got: &Message) -> TierError {
    TierError::internal(format!(
        "expected {expected:?}, got {:?}",
        got.message_type()
    ))
}

/// A plain success reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack;

impl Ack {
    pub fn into_pb(self, request_id: u64) -> terrace_proto::pb::Ack {
        terrace_proto::pb::Ack { request_id }
    }
}

impl From<terrace_proto::pb::Ack> for Ack {
    fn from(_: terrace_proto::pb::Ack) -> Self {
        Ack
    }
}

impl Wire for Ack {
    const TYPE: MessageType = MessageType::Ack;

    fn into_frame(self, request_id: u64) -> (Message, Body) {
        (Message::Ack(self.into_pb(request_id)), Body::empty())
    }

    fn from_frame(message: Message, _body: Bytes) -> TierResult<Self> {
        match message {
            Message::Ack(m) => Ok(m.into()),
            other => Err(unexpected(Self::TYPE, &other)),
        }
    }
}

/// Implements [`Wire`] for a bodiless type with `TryFrom<pb::$variant>` and
/// `into_pb(request_id)`.
macro_rules! wire {
    ($ty:ident) => {
        impl $crate::protocol::Wire for $ty {
            const TYPE: ::terrace_proto::MessageType = ::terrace_proto::MessageType::$ty;

            fn into_frame(
                self,
                request_id: u64,
            ) -> (::terrace_proto::Message, $crate::protocol::Body) {
                (
                    ::terrace_proto::Message::$ty(self.into_pb(request_id)),
                    $crate::protocol::Body::empty(),
                )
            }

            fn from_frame(
                message: ::terrace_proto::Message,
                _body: ::bytes::Bytes,
            ) -> $crate::error::TierResult<Self> {
                match message {
                    ::terrace_proto::Message::$ty(m) => Self::try_from(m),
                    other => Err($crate::protocol::unexpected(
                        <Self as $crate::protocol::Wire>::TYPE,
                        &other,
                    )),
                }
            }
        }
    };
}
pub(crate) use wire;

/// Implements [`Request`].
macro_rules! request {
    ($ty:ident => $reply:ty, |$this:ident| $access:expr) => {
        impl $crate::protocol::Request for $ty {
            type Reply = $reply;

            fn access(&self) -> $crate::protocol::Access<'_> {
                let $this = self;
                $access
            }
        }
    };
}
pub(crate) use request;

/// A worker as the masters know it: its id and the `host:port` of its data
/// port. A client that reaches it presents credentials only to the server
/// that proves this id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerAt {
    pub id: WorkerId,
    pub address: String,
}

impl WorkerAt {
    pub fn new(id: WorkerId, address: impl Into<String>) -> Self {
        WorkerAt {
            id,
            address: address.into(),
        }
    }

    /// A worker named in a frame: `id` as a worker id and `address` of 1 to
    /// [`MAX_ID_BYTES`] bytes, each error naming its field.
    pub fn parse(
        id_field: &str,
        id: String,
        address_field: &str,
        address: String,
    ) -> TierResult<Self> {
        Ok(WorkerAt {
            id: WorkerId::parse_field(id_field, id)?,
            address: bounded(address_field, address)?,
        })
    }
}

impl fmt::Display for WorkerAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} at {}", self.id, self.address)
    }
}

/// A non-empty text field of at most [`MAX_ID_BYTES`] bytes (an address,
/// a worker id named by another field).
pub(crate) fn bounded(field: &str, value: String) -> TierResult<String> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(TierError::bad_input(format!(
            "{field} must have 1 to {MAX_ID_BYTES} bytes, not {}",
            value.len()
        )));
    }
    Ok(value)
}

/// `text` cut at a char boundary to at most `max` bytes.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The milliseconds of a duration, saturating.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration in milliseconds, `None` for 0 (not told).
pub(crate) fn opt_millis(ms: u64) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// Every request a master serves, parsed from its frame: what a master's
/// connection dispatches on.
#[derive(Clone, Debug, PartialEq)]
pub enum MasterRequest {
    RegisterWorker(RegisterWorker),
    WorkerHeartbeat(WorkerHeartbeat),
    RegisterJob(RegisterJob),
    UnregisterJob(UnregisterJob),
    AllocatePartition(AllocatePartition),
    WorkerUnreachable(WorkerUnreachable),
    LocatePartition(LocatePartition),
    ListParts(ListParts),
    ListWorkers(ListWorkers),
}

/// Every frame a worker serves: requests, and the control frames of the
/// read streams a connection opened.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerRequest {
    CreatePartition(CreatePartition),
    PushData(PushData),
    SealPartition(SealPartition),
    SplitPartition(SplitPartition),
    ReleasePartition(ReleasePartition),
    DropJob(DropJob),
    WorkerStats(WorkerStats),
    PartitionMetrics(PartitionMetrics),
    Decommission(Decommission),
    Restart(Restart),
    AdoptLost(AdoptLost),
    AdoptPartition(AdoptPartition),
    MoveForward(MoveForward),
    OpenStream(OpenStream),
    Stream(StreamControl),
}

macro_rules! dispatch_enum {
    (
        $enum:ident, $server:literal, [$($variant:ident),*],
        parse |$m:ident, $body:ident| { $($parse:tt)* }
        access { $($access:tt)* }
        type { $($ty:tt)* }
    ) => {
        impl $enum {
            /// Parses a received frame; a type this server does not serve is
            /// a bad request naming it.
            pub fn from_frame($m: Message, $body: Bytes) -> TierResult<Self> {
                match $m {
                    $( Message::$variant(_) => $variant::from_frame($m, $body).map($enum::$variant), )*
                    $($parse)*
                    other => Err(TierError::bad_input(format!(
                        concat!($server, " does not serve {:?} requests"),
                        other.message_type()
                    ))),
                }
            }

            /// What the connection must have proved to make it.
            pub fn access(&self) -> Access<'_> {
                match self {
                    $( $enum::$variant(r) => r.access(), )*
                    $($access)*
                }
            }

            /// Its message type, for logs and errors.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $( $enum::$variant(_) => <$variant as Wire>::TYPE, )*
                    $($ty)*
                }
            }
        }
    };
}

dispatch_enum!(
    MasterRequest,
    "the master",
    [
        RegisterWorker,
        WorkerHeartbeat,
        RegisterJob,
        UnregisterJob,
        AllocatePartition,
        WorkerUnreachable,
        LocatePartition,
        ListParts,
        ListWorkers
    ],
    parse |message, body| {}
    access {}
    type {}
);

dispatch_enum!(
    WorkerRequest,
    "a worker",
    [
        CreatePartition,
        PushData,
        SealPartition,
        SplitPartition,
        ReleasePartition,
        DropJob,
        WorkerStats,
        PartitionMetrics,
        Decommission,
        Restart,
        AdoptLost,
        AdoptPartition,
        MoveForward,
        OpenStream
    ],
    parse |message, body| {
        Message::RequireSegment(_) | Message::AddCredit(_) | Message::CloseStream(_) => {
            StreamControl::from_frame(message, body).map(WorkerRequest::Stream)
        }
    }
    access { WorkerRequest::Stream(_) => Access::OwnStream, }
    type { WorkerRequest::Stream(c) => c.message_type(), }
);

impl WorkerRequest {
    /// The stream control frame's own type, when it is one.
    pub fn stream_control(&self) -> Option<&StreamControl> {
        match self {
            WorkerRequest::Stream(c) => Some(c),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
