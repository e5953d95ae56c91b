//! The admin HTTP server of masters and workers: Prometheus metrics
//! (`/metrics`), liveness and readiness (`/healthz`, `/readyz`) and a
//! read-only JSON API (`/api/v1/...`) for operators and their tools.
//!
//! A service implements [`AdminApp`] (what is ready, its metrics, its API
//! answers) and starts the server with [`start`]; this crate owns the HTTP
//! side: routing, the admin credential ([`AdminCredential`]), and the bounds
//! that keep a hostile client from holding the port (header size, header
//! time, connection lifetime and count, GET only, no bodies).
//!
//! It must stay off the data path: it never changes the state of the service
//! it reports on, and its answers are computed from what the service already
//! holds. It serves plain HTTP/1.1 (no TLS): bind it to loopback or a
//! private network.

mod app;
mod auth;
pub mod catalog;
pub mod client;
mod config;
mod error;
mod server;

pub use app::{AdminApp, ApiError, ApiRequest, encode_metrics};
pub use auth::AdminCredential;
pub use config::AdminConfig;
pub use error::AdminError;
pub use server::{AdminHandle, AdminLimits, METRICS_CONTENT_TYPE, bind, start, start_with_limits};

/// The metrics library services register their metrics with
/// (`prometheus_client::registry::Registry`, counters, gauges, families,
/// histograms), re-exported so that every service uses the one version.
pub use prometheus_client;
