//! Connections between Terrace peers over the framed protocol: a client that
//! matches replies to requests and routes stream frames to their readers, the
//! server side of the version handshake, authentication and TLS, a frame writer task shared by both,
//! and the shared I/O runtime the synchronous agents run on.
//!
//! It knows frames, request ids and the typed messages of
//! `terrace_tier_api::protocol` (one typed [`Client::call`], one connection
//! [`Pool`] for every agent), never what a message means.

mod buffers;
mod client;
pub mod clock;
mod error;
mod listener;
mod pool;
mod runtime;
mod security;
mod server;
mod writer;

pub use buffers::{BufferPool, PooledBuf, class_size, shared_pool};
pub use client::{
    Client, ClientOptions, PendingCall, PendingReply, StreamEvent, StreamReceiver,
    answers_handshake, connections_to,
};
pub use error::{AuthError, ConnectError, OpeningError, SecurityError};
pub use listener::{Accepted, BoxRead, Meter, ServerOptions, ServerSpec, serve};
pub use pool::{Peer, Pool};
pub use runtime::io_runtime;
pub use security::{
    AUTH_BYTES, ClusterSecret, Credential, ExpectedServer, Identity, JobToken, SECRET_FILE_ENV,
    Security, SecurityConfig, ServerIdentity, TlsClient, TlsServer,
};
pub use server::{accept_handshake, reply_error};
pub use writer::{FrameSender, OutFrame, spawn_writer};
