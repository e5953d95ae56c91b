//! The native half of Terrace's Flink adapter: the JNI entry points that
//! `dev.terrace.bridge.NativeBridge` declares, over the Rust master, producer
//! and consumer agents. Java holds opaque `long` handles into generation-checked
//! tables (a stale or foreign handle is a Java exception, never a crash);
//! buffers cross with one copy each way (Flink's off-heap segment straight into
//! the producer's push batch, the consumer's received bytes straight into a
//! Flink network buffer); events that start in Rust (data available, partitions
//! lost) are queued and fetched by Java threads blocked in `*WaitEvents`.
//!
//! It must not hold protocol logic (that is the agents'), call back into the
//! JVM from Rust threads, or let a Rust panic cross the FFI boundary: every
//! entry point runs under `catch_unwind` and turns failures into
//! `TerraceNativeException`s.
// JNI entry points are `extern "system"` functions reading raw JVM memory;
// every unsafe block says why it is sound.
#![allow(unsafe_code)]

mod boundary;
mod config;
mod consumer;
mod error;
mod events;
mod handles;
mod java;
mod library;
mod master;
mod placer;
mod producer;

pub use config::{KEYS, NativeConfig, parse_config};
pub use error::{NativeError, NativeErrorKind};
pub use events::{LostEvent, ReadySet, WaitQueue, encode_events};
pub use handles::{Handle, HandleKind, HandleTable};
pub use library::ABI_VERSION;
