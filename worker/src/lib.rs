//! The Terrace worker: receives pushed segments, keeps them within a memory
//! budget, stores them in three tiers (memory, local data directories, an
//! object store for cold and overflow data), persists each sealed
//! partition's segment index, and serves segments to readers over
//! credit-based streams from whichever tier holds them.
//!
//! The worker never interprets engine payloads, never grows past its memory
//! budget, and never blocks its async threads on file I/O.

mod admin;
mod cmd;
mod config;
mod context;
mod decommission;
mod heartbeat;
mod metrics;
mod restart;
mod server;
mod store;
mod stream;

pub use config::{ObjectStoreConfig, WorkerConfig, WorkerLimits};
pub use server::{WorkerHandle, run, run_with_admin, start, start_with_hooks};
pub use store::{
    Charge, FaultyFiles, FaultyStore, FileLayer, Forward, MARKER, MemoryBudget, MetadataBudget,
    ObjectOp, ObjectStoreState, ObjectTier, Partition, ReadStep, RealFiles, Reservation, Store,
    StoreError, StoreHooks, TierBytes, Tiers, build_store, cost,
};
pub use terrace_admin::AdminConfig;
