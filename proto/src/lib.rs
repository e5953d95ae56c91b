//! The Terrace wire protocol: protobuf frame headers (generated from
//! `proto/terrace.proto`) and the frame codec that carries them.
//!
//! A frame is `u32 length | u8 type | u32 header length | header | body`.
//! This crate only knows messages and frames. It must not hold domain logic:
//! ids, validation and the meaning of messages live in `terrace-tier-api`
//! and the services.

mod codec;
mod error;
mod message;

/// Generated protobuf messages (package `terrace.v1`).
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/terrace.v1.rs"));
}

pub use codec::{FRAME_PREFIX_LEN, FramePrefix, FrameReader, encode_frame, write_frame};
pub use error::FrameError;
pub use message::{Message, MessageType};

/// The protocol version sent in every handshake. Peers with another version are refused.
/// Version 2 added authentication (`auth_challenge`, `Authenticate`);
/// version 3 binds proofs to the server's stated identity
/// (`server_identity`) and to the TLS session.
pub const PROTOCOL_VERSION: u32 = 3;

/// Default upper bound for one frame (type, header and body), in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
