//! What can go wrong in this crate, with its causes: loading keys and
//! certificates ([`SecurityError`]), a peer's authentication
//! ([`AuthError`]), a connection's opening on the server ([`OpeningError`])
//! and on the client ([`ConnectError`]). Each turns
//! into a [`TierError`] whose kind says what the caller does (a bad file is
//! bad input, a failed proof is permission denied) and whose source is the
//! variant itself.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use terrace_proto::{FrameError, MessageType};
use terrace_tier_api::{ErrorKind, TierError};

/// Reading the cluster secret, a job token, TLS certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("open {what} {}", path.display())]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stat secret file {}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {} is longer than {max} bytes", path.display())]
    TooLong {
        what: &'static str,
        path: PathBuf,
        max: u64,
    },
    #[error(
        "secret file {} has mode {mode:04o}: it is accessible by group or others, so it is no secret; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error(
        "the cluster secret has {len} bytes; it needs at least {min} (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    ShortSecret { len: usize, min: usize },
    /// A secret file's content is not a secret (its cause says why).
    #[error("secret file {}", path.display())]
    SecretFile {
        path: PathBuf,
        #[source]
        source: Box<SecurityError>,
    },
    #[error("a job token has {expected} bytes, not {len}")]
    TokenLength { expected: usize, len: usize },
    #[error("a job token is {expected} hex digits, not {len:?}")]
    TokenHexLength { expected: usize, len: usize },
    #[error("a job token is hex digits")]
    TokenHex,
    #[error("{what} {} holds no certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS CA file {}", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS certificate {} and key {}", cert.display(), key.display())]
    CertificateAndKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS")]
    Tls(#[source] rustls::Error),
    #[error("security.tls_cert_file and security.tls_key_file go together: set both or neither")]
    HalfTls,
}

/// Bad security settings are bad input: nothing works until they change.
impl From<SecurityError> for TierError {
    fn from(e: SecurityError) -> Self {
        TierError::from_cause(ErrorKind::BadInput, e)
    }
}

/// Why a server refuses a peer's `Authenticate`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication: client_nonce has {len} bytes, not {expected}")]
    NonceLength { len: usize, expected: usize },
    #[error(
        "this server holds a cluster secret and serves only connections that prove it or a job's token; this one did not authenticate (set secret_file or {env})"
    )]
    NoProof { env: &'static str },
    #[error("authentication: job_id has {len} bytes, more than {max}")]
    JobIdTooLong { len: usize, max: usize },
    #[error(
        "authentication failed: the proof does not match {whose} for {server:?} on this connection (is secret_file the same on every member of the cluster? a proof made for another server or relayed from another connection is refused)"
    )]
    BadProof { whose: String, server: String },
}

impl From<AuthError> for TierError {
    fn from(e: AuthError) -> Self {
        TierError::from_cause(ErrorKind::PermissionDenied, e)
    }
}

/// Why a connection's opening (handshake, then authentication) failed. The
/// server has queued the matching error frame, except for [`Self::Closed`].
#[derive(Debug, thiserror::Error)]
pub enum OpeningError {
    /// The peer closed before sending anything (port probes, health checks).
    #[error("closed before the {what}")]
    Closed { what: &'static str },
    #[error("bad {what} frame")]
    Frame {
        what: &'static str,
        #[source]
        source: FrameError,
    },
    #[error("{what} frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("client_name of {len} bytes exceeds the maximum of {max} bytes")]
    ClientName { len: usize, max: usize },
    #[error("protocol version {got} is not supported (this server speaks {ours})")]
    Version { got: u32, ours: u32 },
    #[error("expected a handshake first, got {got:?}")]
    NotHandshake { got: MessageType },
    #[error(
        "this server holds a cluster secret: expected Authenticate after the handshake, got {got:?}"
    )]
    NotAuthenticate { got: MessageType },
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No challenge could be drawn.
    #[error(transparent)]
    Challenge(TierError),
}

impl From<OpeningError> for TierError {
    fn from(e: OpeningError) -> Self {
        let kind = match &e {
            OpeningError::Closed { .. } => ErrorKind::Unavailable,
            OpeningError::Auth(_) => ErrorKind::PermissionDenied,
            OpeningError::Challenge(inner) => inner.kind(),
            _ => ErrorKind::BadInput,
        };
        TierError::from_cause(kind, e)
    }
}

/// Why a client could not open a connection (before the version
/// handshake). Every variant is [`ErrorKind::Unavailable`]: the peer may be
/// down, overloaded or misconfigured, and another attempt (later, or to
/// another peer) may succeed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("set TCP_NODELAY on {addr}")]
    NoDelay {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {addr}: timed out after {after:?}")]
    TlsTimeout { addr: String, after: Duration },
    #[error(
        "TLS handshake with {addr} (does it serve TLS, with a certificate the configured CA signed?)"
    )]
    Tls {
        addr: String,
        #[source]
        source: io::Error,
    },
}

impl From<ConnectError> for TierError {
    fn from(e: ConnectError) -> Self {
        TierError::from_cause(ErrorKind::Unavailable, e)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn each_error_becomes_the_kind_a_caller_acts_on_with_its_cause() {
        let open = SecurityError::Open {
            what: "secret file",
            path: "/etc/terrace/secret".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let e = TierError::from(open);
        assert_eq!(e.kind(), ErrorKind::BadInput);
        let cause = e
            .source()
            .and_then(|s| s.downcast_ref::<SecurityError>())
            .expect("the SecurityError is the source");
        assert!(matches!(cause, SecurityError::Open { .. }));
        assert!(cause.source().is_some_and(|s| s.is::<io::Error>()));
        assert_eq!(
            e.message(),
            "open secret file /etc/terrace/secret",
            "the message names the file"
        );

        let auth = TierError::from(AuthError::NoProof { env: "X" });
        assert_eq!(auth.kind(), ErrorKind::PermissionDenied);
        let opening = TierError::from(OpeningError::Auth(AuthError::NonceLength {
            len: 1,
            expected: 32,
        }));
        assert_eq!(opening.kind(), ErrorKind::PermissionDenied);
        let probe = TierError::from(OpeningError::Closed { what: "handshake" });
        assert_eq!(probe.kind(), ErrorKind::Unavailable);
        let version = TierError::from(OpeningError::Version { got: 2, ours: 3 });
        assert_eq!(version.kind(), ErrorKind::BadInput);
    }

    /// A refused connection is `Unavailable`, keeps the `io::Error` under
    /// its `ConnectError`, and its text still names the address and cause.
    #[tokio::test]
    async fn a_refused_connection_keeps_its_io_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        drop(listener);
        let e = crate::client::Client::connect(&addr, &crate::client::ClientOptions::default())
            .await
            .expect_err("nothing listens");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let cause = e
            .source()
            .and_then(|s| s.downcast_ref::<ConnectError>())
            .expect("the ConnectError is the source");
        let ConnectError::Connect { addr: at, source } = cause else {
            panic!("not a refused connect: {cause:?}");
        };
        assert_eq!(at, &addr);
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(
            e.full_message(),
            format!("connect to {addr}: {source}"),
            "the cause is named once"
        );
    }
}
