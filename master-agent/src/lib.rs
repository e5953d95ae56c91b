//! The master agent: Terrace's `TierMasterAgent`, run in the engine's
//! coordinator. It registers jobs with a master, places new partitions
//! through it and returns their shuffle descriptors, releases partitions and
//! jobs on the workers, and watches the master's worker list so that the
//! partitions of a lost worker are reported to the engine's handler.
//!
//! Its methods block the calling thread on the shared I/O runtime
//! ([`terrace_rpc::io_runtime`]); they must not be called from a tokio
//! runtime's worker thread. It must not touch partition data itself: pushes
//! and reads belong to the producer and consumer agents.

mod agent;
mod masters;
mod placements;
mod placer;
mod recovery;

pub use agent::{DEFAULT_POLL_INTERVAL, MasterAgent};
pub use placer::JobPlacer;
