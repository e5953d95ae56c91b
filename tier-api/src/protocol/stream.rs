//! The frames of an open read stream (after `OpenStream` is answered with
//! `StreamOpened`): the reader's [`StreamControl`] (no reply) and the
//! worker's [`StreamFrame`]s, all keyed by the stream id instead of a
//! request id.

use std::fmt;

use bytes::Bytes;
use terrace_proto::{Message, MessageType, pb};

use super::{Body, Wire, WorkerAt, unexpected, wire};
use crate::error::{TierError, TierResult};
use crate::ids::{SegmentId, SubpartitionId};

/// A read stream, chosen by the client and unique on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The reader wants `segment` of `subpartition` next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequireSegment {
    pub stream_id: StreamId,
    pub subpartition: SubpartitionId,
    pub segment: SegmentId,
}

impl TryFrom<pb::RequireSegment> for RequireSegment {
    type Error = TierError;

    fn try_from(m: pb::RequireSegment) -> TierResult<Self> {
        Ok(RequireSegment {
            stream_id: StreamId(m.stream_id),
            subpartition: SubpartitionId(m.subpartition),
            segment: SegmentId(m.segment_id),
        })
    }
}

impl RequireSegment {
    /// Stream frames have no request id: `_request_id` is ignored.
    pub fn into_pb(self, _request_id: u64) -> pb::RequireSegment {
        pb::RequireSegment {
            stream_id: self.stream_id.0,
            subpartition: self.subpartition.0,
            segment_id: self.segment.0,
        }
    }
}

wire!(RequireSegment);

/// The reader can take `credit` more batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddCredit {
    pub stream_id: StreamId,
    pub credit: u32,
}

impl TryFrom<pb::AddCredit> for AddCredit {
    type Error = TierError;

    fn try_from(m: pb::AddCredit) -> TierResult<Self> {
        Ok(AddCredit {
            stream_id: StreamId(m.stream_id),
            credit: m.credit,
        })
    }
}

impl AddCredit {
    pub fn into_pb(self, _request_id: u64) -> pb::AddCredit {
        pb::AddCredit {
            stream_id: self.stream_id.0,
            credit: self.credit,
        }
    }
}

wire!(AddCredit);

/// The reader is done with the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseStream {
    pub stream_id: StreamId,
}

impl TryFrom<pb::CloseStream> for CloseStream {
    type Error = TierError;

    fn try_from(m: pb::CloseStream) -> TierResult<Self> {
        Ok(CloseStream {
            stream_id: StreamId(m.stream_id),
        })
    }
}

impl CloseStream {
    pub fn into_pb(self, _request_id: u64) -> pb::CloseStream {
        pb::CloseStream {
            stream_id: self.stream_id.0,
        }
    }
}

wire!(CloseStream);

/// What a reader sends on an open stream (no reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamControl {
    RequireSegment(RequireSegment),
    AddCredit(AddCredit),
    CloseStream(CloseStream),
}

impl StreamControl {
    pub fn stream_id(&self) -> StreamId {
        match self {
            StreamControl::RequireSegment(m) => m.stream_id,
            StreamControl::AddCredit(m) => m.stream_id,
            StreamControl::CloseStream(m) => m.stream_id,
        }
    }

    pub fn message_type(&self) -> MessageType {
        match self {
            StreamControl::RequireSegment(_) => MessageType::RequireSegment,
            StreamControl::AddCredit(_) => MessageType::AddCredit,
            StreamControl::CloseStream(_) => MessageType::CloseStream,
        }
    }

    /// The frame (stream control frames have no body).
    pub fn into_message(self) -> Message {
        match self {
            StreamControl::RequireSegment(m) => m.into_frame(0).0,
            StreamControl::AddCredit(m) => m.into_frame(0).0,
            StreamControl::CloseStream(m) => m.into_frame(0).0,
        }
    }

    pub fn from_frame(message: Message, body: Bytes) -> TierResult<Self> {
        match message {
            Message::RequireSegment(_) => {
                RequireSegment::from_frame(message, body).map(StreamControl::RequireSegment)
            }
            Message::AddCredit(_) => AddCredit::from_frame(message, body).map(Self::AddCredit),
            Message::CloseStream(_) => {
                CloseStream::from_frame(message, body).map(Self::CloseStream)
            }
            other => Err(TierError::internal(format!(
                "expected a stream control frame, got {:?}",
                other.message_type()
            ))),
        }
    }
}

impl From<RequireSegment> for StreamControl {
    fn from(m: RequireSegment) -> Self {
        StreamControl::RequireSegment(m)
    }
}

impl From<AddCredit> for StreamControl {
    fn from(m: AddCredit) -> Self {
        StreamControl::AddCredit(m)
    }
}

impl From<CloseStream> for StreamControl {
    fn from(m: CloseStream) -> Self {
        StreamControl::CloseStream(m)
    }
}

/// One stored extent of a [`ReadData`] body: a run of encoded buffers and
/// the CRC32C the worker computed when it received them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub crc32c: u32,
}

/// Stored extents of one subpartition and segment, back to back in the
/// body. On receipt the extents are checked to cover the body exactly (their
/// checksums are the reader's to check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadData {
    pub stream_id: StreamId,
    pub subpartition: SubpartitionId,
    pub segment: SegmentId,
    pub extents: Vec<Extent>,
    /// The worker's count of buffers in the body (a hint, not a promise).
    pub num_buffers: u32,
    /// The subpartition the extents are stored under: `subpartition`, or 0
    /// for a broadcast-only partition.
    pub stored_subpartition: SubpartitionId,
    pub body: Body,
}

impl TryFrom<(pb::ReadData, Bytes)> for ReadData {
    type Error = TierError;

    fn try_from((m, body): (pb::ReadData, Bytes)) -> TierResult<Self> {
        if m.extent_lengths.len() != m.extent_crc32cs.len() {
            return Err(TierError::bad_input(
                "read data with mismatched extent lists",
            ));
        }
        let total: u64 = m.extent_lengths.iter().map(|l| u64::from(*l)).sum();
        if total != body.len() as u64 {
            return Err(TierError::bad_input(format!(
                "read data body has {} bytes, extents say {total}",
                body.len()
            )));
        }
        Ok(ReadData {
            stream_id: StreamId(m.stream_id),
            subpartition: SubpartitionId(m.subpartition),
            segment: SegmentId(m.segment_id),
            extents: m
                .extent_lengths
                .into_iter()
                .zip(m.extent_crc32cs)
                .map(|(len, crc32c)| Extent { len, crc32c })
                .collect(),
            num_buffers: m.num_buffers,
            stored_subpartition: SubpartitionId(m.stored_subpartition),
            body: body.into(),
        })
    }
}

impl Wire for ReadData {
    const TYPE: MessageType = MessageType::ReadData;

    fn into_frame(self, _request_id: u64) -> (Message, Body) {
        let header = pb::ReadData {
            stream_id: self.stream_id.0,
            subpartition: self.subpartition.0,
            segment_id: self.segment.0,
            extent_lengths: self.extents.iter().map(|e| e.len).collect(),
            extent_crc32cs: self.extents.iter().map(|e| e.crc32c).collect(),
            num_buffers: self.num_buffers,
            stored_subpartition: self.stored_subpartition.0,
        };
        (Message::ReadData(header), self.body)
    }

    fn from_frame(message: Message, body: Bytes) -> TierResult<Self> {
        match message {
            Message::ReadData(m) => Self::try_from((m, body)),
            other => Err(unexpected(Self::TYPE, &other)),
        }
    }
}

/// The requested segment does not exist and never will: the partition is
/// sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubpartitionEnd {
    pub stream_id: StreamId,
    pub subpartition: SubpartitionId,
    pub segment: SegmentId,
}

impl TryFrom<pb::SubpartitionEnd> for SubpartitionEnd {
    type Error = TierError;

    fn try_from(m: pb::SubpartitionEnd) -> TierResult<Self> {
        Ok(SubpartitionEnd {
            stream_id: StreamId(m.stream_id),
            subpartition: SubpartitionId(m.subpartition),
            segment: SegmentId(m.segment_id),
        })
    }
}

impl SubpartitionEnd {
    pub fn into_pb(self, _request_id: u64) -> pb::SubpartitionEnd {
        pb::SubpartitionEnd {
            stream_id: self.stream_id.0,
            subpartition: self.subpartition.0,
            segment_id: self.segment.0,
        }
    }
}

wire!(SubpartitionEnd);

/// The requested segment (and every later one of the subpartition) is on
/// the next part of the split partition, on `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubpartitionRedirect {
    pub stream_id: StreamId,
    pub subpartition: SubpartitionId,
    pub segment: SegmentId,
    pub to: WorkerAt,
}

impl TryFrom<pb::SubpartitionRedirect> for SubpartitionRedirect {
    type Error = TierError;

    fn try_from(m: pb::SubpartitionRedirect) -> TierResult<Self> {
        Ok(SubpartitionRedirect {
            stream_id: StreamId(m.stream_id),
            subpartition: SubpartitionId(m.subpartition),
            segment: SegmentId(m.segment_id),
            to: WorkerAt::parse("worker_id", m.worker_id, "address", m.address)?,
        })
    }
}

impl SubpartitionRedirect {
    pub fn into_pb(self, _request_id: u64) -> pb::SubpartitionRedirect {
        pb::SubpartitionRedirect {
            stream_id: self.stream_id.0,
            subpartition: self.subpartition.0,
            segment_id: self.segment.0,
            worker_id: self.to.id.into_string(),
            address: self.to.address,
        }
    }
}

wire!(SubpartitionRedirect);

/// The stream failed; no more frames come on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    pub stream_id: StreamId,
    /// The worker's error (its message cut as any peer's, see
    /// [`TierError::from_wire`]).
    pub error: TierError,
}

impl TryFrom<pb::StreamError> for StreamError {
    type Error = TierError;

    fn try_from(m: pb::StreamError) -> TierResult<Self> {
        Ok(StreamError {
            stream_id: StreamId(m.stream_id),
            error: TierError::from_wire(m.code, m.detail, m.message),
        })
    }
}

impl StreamError {
    pub fn into_pb(self, _request_id: u64) -> pb::StreamError {
        self.error.to_stream_error(self.stream_id.0)
    }
}

wire!(StreamError);

/// What a worker sends on an open stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamFrame {
    ReadData(ReadData),
    End(SubpartitionEnd),
    Redirect(SubpartitionRedirect),
    Error(StreamError),
}

impl StreamFrame {
    /// The stream a received frame belongs to, `None` for a frame that is
    /// not a stream frame (a reply). Read before parsing, to route it.
    pub fn stream_id_of(message: &Message) -> Option<StreamId> {
        match message {
            Message::ReadData(m) => Some(StreamId(m.stream_id)),
            Message::SubpartitionEnd(m) => Some(StreamId(m.stream_id)),
            Message::SubpartitionRedirect(m) => Some(StreamId(m.stream_id)),
            Message::StreamError(m) => Some(StreamId(m.stream_id)),
            _ => None,
        }
    }

    pub fn stream_id(&self) -> StreamId {
        match self {
            StreamFrame::ReadData(m) => m.stream_id,
            StreamFrame::End(m) => m.stream_id,
            StreamFrame::Redirect(m) => m.stream_id,
            StreamFrame::Error(m) => m.stream_id,
        }
    }

    /// The frame: header and body (only `ReadData` has one).
    pub fn into_frame(self) -> (Message, Body) {
        match self {
            StreamFrame::ReadData(m) => m.into_frame(0),
            StreamFrame::End(m) => m.into_frame(0),
            StreamFrame::Redirect(m) => m.into_frame(0),
            StreamFrame::Error(m) => m.into_frame(0),
        }
    }

    pub fn from_frame(message: Message, body: Bytes) -> TierResult<Self> {
        match message {
            Message::ReadData(_) => ReadData::from_frame(message, body).map(Self::ReadData),
            Message::SubpartitionEnd(_) => {
                SubpartitionEnd::from_frame(message, body).map(Self::End)
            }
            Message::SubpartitionRedirect(_) => {
                SubpartitionRedirect::from_frame(message, body).map(Self::Redirect)
            }
            Message::StreamError(_) => StreamError::from_frame(message, body).map(Self::Error),
            other => Err(TierError::internal(format!(
                "expected a stream frame, got {:?}",
                other.message_type()
            ))),
        }
    }
}
