//! Why a frame could not be read.

use crate::message::MessageType;

/// Why a frame could not be read. Every variant but `Io` is a protocol error.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("header of {ty:?} does not decode: {source}")]
    BadHeader {
        ty: MessageType,
        #[source]
        source: prost::DecodeError,
    },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the peer sent something that breaks the protocol (as opposed
    /// to the connection failing).
    pub fn is_protocol_error(&self) -> bool {
        !matches!(self, FrameError::Io(_) | FrameError::Truncated)
    }
}
