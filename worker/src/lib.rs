//! The Terrace worker: receives pushed segments, keeps them within a memory
//! budget, flushes them to one append-only data file per partition, persists
//! each sealed partition's segment index, and serves segments to readers over
//! credit-based streams.
//!
//! The worker never interprets engine payloads, never grows past its memory
//! budget, and never blocks its async threads on file I/O.

mod config;
mod handlers;
mod heartbeat;
mod server;
mod store;

pub use config::WorkerConfig;
pub use server::{WorkerHandle, run, start};
pub use store::{MemoryBudget, Store};
