//! The Terrace producer agent (Flink `TierProducerAgent`): takes one
//! partition's engine buffers per subpartition, keeps Flink's segment rules
//! (END_OF_SEGMENT when a segment is full), batches buffers into large pushes
//! ordered by subpartition, compresses and checksums them, and pushes them to
//! the partition's worker with a bounded number of bytes in flight.
//!
//! It must not hold more than `push_size` plus `max_bytes_in_flight` bytes of
//! buffers, and must not interpret payloads.

mod agent;
mod batch;
mod pusher;

pub use agent::ProducerAgent;
pub use terrace_tier_api::ProducerSpec;
