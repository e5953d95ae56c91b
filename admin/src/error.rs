//! Why the admin server cannot start.

use std::path::PathBuf;

use terrace_rpc::SecurityError;

/// The admin server could not start: its configuration names a token file
/// that cannot be used, or an address that cannot be bound. Either is the
/// operator's to fix; the service should not start without it.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.token_file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: Box<SecurityError>,
    },
    #[error("bind the admin HTTP server to {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}
