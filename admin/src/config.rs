//! `[admin]` of a master's or worker's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The admin HTTP server of a service. Off unless `listen` is set.
///
/// ```toml
/// [admin]
/// listen = "127.0.0.1:9880"
/// token_file = "/etc/terrace/admin-token"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` the admin HTTP server listens on (`/metrics`, `/healthz`,
    /// `/readyz`, `/api/v1/...`); unset: no admin server. Any address may be
    /// given, but one that is not loopback without a credential logs a
    /// warning at start: anyone who reaches it reads the metrics and the API.
    pub listen: Option<String>,
    /// File holding the admin token, read and checked as
    /// `security.secret_file` is (only its owner may access it; 16 bytes to
    /// 4 KiB; surrounding whitespace ignored). Requests to `/metrics` and
    /// `/api/` must send `Authorization: Bearer <token>`. Unset: the cluster
    /// secret is the admin credential if there is one, else there is none.
    pub token_file: Option<PathBuf>,
}
