//! One module per command the worker serves.

pub mod create;
pub mod handoff;
pub mod push;
pub mod read;
pub mod release;
pub mod seal;
pub mod stats;

pub use read::StreamHandle;
