//! The Terrace consumer agent (Flink `TierConsumerAgent`): for one input gate,
//! opens a credit-based stream per (partition, subpartition range) on the
//! partition's worker, asks for segments in order, checks every extent's
//! CRC32C, and hands buffers back in write order, waking the engine when an
//! empty channel gets data.
//!
//! It must never hang on a failure: a lost worker, an unknown or released
//! partition or a checksum mismatch is remembered per partition and returned
//! from the next call for that partition. Memory is bounded by
//! `read_credits` read batches per stream.

mod agent;
mod queues;

pub use agent::ConsumerAgent;
