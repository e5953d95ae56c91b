//! The typed view of a frame: one enum variant per message type.

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::pb;

macro_rules! messages {
    ($( $code:literal => $name:ident ),* $(,)?) => {
        /// The message type byte of a frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum MessageType {
            $( $name = $code, )*
        }

        impl MessageType {
            /// The type for a type byte, or `None` for an unknown byte.
            pub fn from_u8(byte: u8) -> Option<Self> {
                match byte {
                    $( $code => Some(Self::$name), )*
                    _ => None,
                }
            }
        }

        /// A decoded frame. `PushData` and `ReadData` carry a raw body; every
        /// other message has an empty body.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message {
            $( $name(pb::$name), )*
        }

        impl Message {
            /// The type byte this message is sent with.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $( Self::$name(_) => MessageType::$name, )*
                }
            }

            /// Decodes a header of type `ty` (the codec says which frame it was in).
            pub fn decode_header(ty: MessageType, header: Bytes) -> Result<Self, prost::DecodeError> {
                Ok(match ty {
                    $( MessageType::$name => Self::$name(pb::$name::decode(header)?), )*
                })
            }

            /// Appends the encoded header to `dst`.
            pub fn encode_header(&self, dst: &mut BytesMut) {
                match self {
                    $( Self::$name(m) => m.encode_raw(dst), )*
                }
            }

            /// The encoded length of the header.
            pub fn header_len(&self) -> usize {
                match self {
                    $( Self::$name(m) => m.encoded_len(), )*
                }
            }
        }
    };
}

messages! {
    1 => Handshake,
    2 => HandshakeOk,
    3 => ErrorReply,
    4 => Ack,
    5 => Authenticate,
    6 => Authenticated,
    9 => WorkerUnreachable,
    10 => RegisterWorker,
    11 => WorkerHeartbeat,
    12 => HeartbeatReply,
    13 => RegisterJob,
    19 => JobRegistered,
    14 => UnregisterJob,
    15 => AllocatePartition,
    16 => PartitionAllocated,
    7 => LocatePartition,
    8 => PartitionLocated,
    17 => ListWorkers,
    18 => WorkerList,
    20 => CreatePartition,
    21 => PushData,
    22 => SealPartition,
    23 => ReleasePartition,
    24 => DropJob,
    25 => WorkerStats,
    26 => WorkerStatsReply,
    27 => PushAck,
    28 => SplitPartition,
    29 => Decommission,
    30 => OpenStream,
    31 => StreamOpened,
    32 => RequireSegment,
    33 => AddCredit,
    34 => CloseStream,
    35 => ReadData,
    36 => SubpartitionEnd,
    37 => StreamError,
    38 => SubpartitionRedirect,
    39 => AdoptPartition,
    40 => MoveForward,
    41 => PartitionMetrics,
    42 => PartitionMetricsReply,
    43 => ListParts,
    44 => PartsListed,
    45 => Restart,
    46 => AdoptLost,
    47 => LostAdopted,
}

impl MessageType {
    /// Whether frames of this type may carry a body.
    pub fn has_body(self) -> bool {
        matches!(
            self,
            MessageType::PushData | MessageType::ReadData | MessageType::AdoptPartition
        )
    }
}

impl Message {
    /// The request id of a request or reply, or 0 for messages that have none
    /// (stream messages are keyed by stream id instead).
    pub fn request_id(&self) -> u64 {
        match self {
            Message::Handshake(m) => m.request_id,
            Message::HandshakeOk(m) => m.request_id,
            Message::ErrorReply(m) => m.request_id,
            Message::Ack(m) => m.request_id,
            Message::Authenticate(m) => m.request_id,
            Message::Authenticated(m) => m.request_id,
            Message::WorkerUnreachable(m) => m.request_id,
            Message::RegisterWorker(m) => m.request_id,
            Message::WorkerHeartbeat(m) => m.request_id,
            Message::HeartbeatReply(m) => m.request_id,
            Message::RegisterJob(m) => m.request_id,
            Message::JobRegistered(m) => m.request_id,
            Message::UnregisterJob(m) => m.request_id,
            Message::AllocatePartition(m) => m.request_id,
            Message::PartitionAllocated(m) => m.request_id,
            Message::LocatePartition(m) => m.request_id,
            Message::AdoptPartition(m) => m.request_id,
            Message::MoveForward(m) => m.request_id,
            Message::PartitionLocated(m) => m.request_id,
            Message::ListParts(m) => m.request_id,
            Message::PartsListed(m) => m.request_id,
            Message::ListWorkers(m) => m.request_id,
            Message::WorkerList(m) => m.request_id,
            Message::CreatePartition(m) => m.request_id,
            Message::PushData(m) => m.request_id,
            Message::SealPartition(m) => m.request_id,
            Message::ReleasePartition(m) => m.request_id,
            Message::DropJob(m) => m.request_id,
            Message::WorkerStats(m) => m.request_id,
            Message::WorkerStatsReply(m) => m.request_id,
            Message::PartitionMetrics(m) => m.request_id,
            Message::PartitionMetricsReply(m) => m.request_id,
            Message::PushAck(m) => m.request_id,
            Message::SplitPartition(m) => m.request_id,
            Message::Decommission(m) => m.request_id,
            Message::Restart(m) => m.request_id,
            Message::AdoptLost(m) => m.request_id,
            Message::LostAdopted(m) => m.request_id,
            Message::OpenStream(m) => m.request_id,
            Message::StreamOpened(m) => m.request_id,
            Message::RequireSegment(_)
            | Message::AddCredit(_)
            | Message::CloseStream(_)
            | Message::ReadData(_)
            | Message::SubpartitionEnd(_)
            | Message::SubpartitionRedirect(_)
            | Message::StreamError(_) => 0,
        }
    }

    /// An error reply for `request_id`.
    pub fn error(request_id: u64, code: pb::ErrorCode, message: impl Into<String>) -> Self {
        Message::ErrorReply(pb::ErrorReply {
            request_id,
            code: code as i32,
            message: message.into(),
            detail: pb::ErrorCode::Unspecified as i32,
        })
    }

    /// A plain success reply for `request_id`.
    pub fn ack(request_id: u64) -> Self {
        Message::Ack(pb::Ack { request_id })
    }
}
