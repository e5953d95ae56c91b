//! The Terrace master service: a registry of live workers (fed by their
//! heartbeats) and of jobs, load-aware placement of new partitions, and the
//! list of released jobs that workers learn from their heartbeat replies.
//!
//! The master holds only soft state, rebuilt from heartbeats, so several
//! masters can run side by side and a restarted one is whole again after one
//! heartbeat interval. It must never sit on the data path, persist anything,
//! or depend on another master.

mod admin;
mod clock;
mod cmd;
mod config;
mod connection;
mod context;
mod error;
mod metrics;
mod probe;
mod recovery;
mod registry;
mod server;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{MasterConfig, MasterLimits};
pub use error::PlacementError;
pub use server::{Listeners, run, run_with_clock, serve};

/// The name the master gives in handshakes.
pub const SERVER_NAME: &str = "terrace-master";
