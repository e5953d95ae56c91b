//! Engine buffers: opaque payload bytes with the engine's data type and
//! compressed flag, both carried through Terrace untouched.

use bytes::Bytes;

/// The engine's buffer type. Codes are Flink's `Buffer.DataType` ordinals;
/// codes Terrace does not name travel through as `Other`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DataType {
    /// A data buffer (Flink `DATA_BUFFER`, 1).
    Data,
    /// An event (Flink `EVENT_BUFFER`, 2): end of partition, end of data, ...
    Event,
    /// The marker closing a segment (Flink `END_OF_SEGMENT`, 7).
    EndOfSegment,
    /// Any other engine type code, passed through unchanged.
    Other(u8),
}

impl DataType {
    pub const DATA_CODE: u8 = 1;
    pub const EVENT_CODE: u8 = 2;
    pub const END_OF_SEGMENT_CODE: u8 = 7;
    /// Flink `DATA_BUFFER_WITH_CLEAR_END` (1.20): a data buffer that ends on
    /// a record boundary, what hybrid shuffle's producers mostly write. It
    /// travels as `Other(8)` but is data.
    pub const DATA_WITH_CLEAR_END_CODE: u8 = 8;

    pub fn code(self) -> u8 {
        match self {
            DataType::Data => Self::DATA_CODE,
            DataType::Event => Self::EVENT_CODE,
            DataType::EndOfSegment => Self::END_OF_SEGMENT_CODE,
            DataType::Other(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Self {
        match code {
            Self::DATA_CODE => DataType::Data,
            Self::EVENT_CODE => DataType::Event,
            Self::END_OF_SEGMENT_CODE => DataType::EndOfSegment,
            other => DataType::Other(other),
        }
    }

    /// Whether buffers of this type are data (as opposed to events and
    /// markers): what the producer agent compresses.
    pub fn is_data(self) -> bool {
        matches!(
            self,
            DataType::Data | DataType::Other(Self::DATA_WITH_CLEAR_END_CODE)
        )
    }
}

/// One engine buffer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Buffer {
    pub data_type: DataType,
    /// The engine's own compression flag; Terrace never looks inside.
    pub compressed: bool,
    pub payload: Bytes,
}

impl Buffer {
    pub fn data(payload: impl Into<Bytes>) -> Self {
        Buffer {
            data_type: DataType::Data,
            compressed: false,
            payload: payload.into(),
        }
    }

    pub fn event(payload: impl Into<Bytes>) -> Self {
        Buffer {
            data_type: DataType::Event,
            compressed: false,
            payload: payload.into(),
        }
    }

    /// The END_OF_SEGMENT marker Terrace appends when a segment is full.
    /// Its payload is `payload` (Flink: the serialized `EndOfSegmentEvent`).
    pub fn end_of_segment(payload: Bytes) -> Self {
        Buffer {
            data_type: DataType::EndOfSegment,
            compressed: false,
            payload,
        }
    }

    pub fn len(&self) -> usize {
        self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}
