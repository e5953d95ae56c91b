//! The tier contract shared by every Terrace crate: newtype ids, engine
//! buffers, the buffer-batch body format (lz4 + CRC32C), errors whose kind
//! tells the caller what to do, shuffle descriptors, and the agent traits that
//! mirror Flink 1.20's `TierFactory`, `TierMasterAgent`, `TierProducerAgent`,
//! `TierConsumerAgent`, `TierShuffleHandler` and `AvailabilityNotifier`.
//!
//! This crate does no I/O and holds no state. It is the only place (with the
//! frame codec and `terrace-rpc`'s connection layer) that touches raw
//! protobuf structs: everything else sends and receives the typed messages
//! of [`protocol`].

mod batch;
mod buffer;
mod checksum;
mod config;
mod contract;
mod descriptor;
mod error;
mod ids;
pub mod protocol;

pub use batch::{
    BUFFER_HEADER_LEN, BatchBuilder, BatchReader, BufferHeader, EncodedBatch, LZ4_MIN_LEN,
    buffer_header, lz4_into, lz4_room, put_buffer, unlz4,
};
pub use buffer::{Buffer, DataType};
pub use checksum::crc32c_combine;
pub use config::{
    AgentConfig, ByteSize, ConfigError, ParseDurationError, ParseSizeError, duration,
    format_duration, parse_duration,
};
pub use contract::{
    AvailabilityNotifier, ConsumerSpec, ProducerSpec, SubpartitionRange, TierConsumerAgent,
    TierFactory, TierMasterAgent, TierProducerAgent, TierShuffleHandler, WriteOutcome,
};
pub use descriptor::ShuffleDescriptor;
pub use error::{
    ERROR_TABLE, ErrorKind, ErrorRow, MAX_WIRE_MESSAGE_BYTES, TierError, TierResult, error_text,
};
pub use ids::{
    InputChannelId, JobId, MAX_ID_BYTES, PartitionId, PartitionKey, SegmentId, SubpartitionId,
    WorkerId,
};
