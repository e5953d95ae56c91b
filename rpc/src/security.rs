//! Who a peer is and how it proves it, and TLS.
//!
//! Every member of a cluster holds one secret (a file, `secret_file` or
//! `TERRACE_SECRET_FILE`). A server that holds it challenges each new
//! connection; the client answers with an HMAC-SHA256 proof under one of two
//! keys and the server answers with its own proof under the same key, so both
//! sides know the other holds it:
//! - the cluster secret itself: masters, workers and master agents;
//! - a job's token, `HMAC(secret, "terrace job token v1" | job id)`: producers
//!   and consumers of that job. A master hands it to the job's master agent,
//!   which puts it in the shuffle descriptors. It opens that job's data and
//!   nothing else, and a worker derives it from the secret without state.
//!
//! The proofs bind the server's challenge, the client's nonce, the job id, the
//! identity the server states in its challenge ("master", "worker <id>") and,
//! over TLS, the TLS channel (an exporter value of the session), with a
//! different label for each direction. So a proof cannot be replayed on
//! another connection or reflected back, and a proof a relay obtains from a
//! client that meant to reach one server is refused by any other: the client
//! answers only a server stating the identity it meant to reach, the server
//! checks the proof against its own identity and channel. Without TLS the
//! traffic after the exchange is neither encrypted nor bound to it.
//!
//! A server with a secret serves only connections that proved something: a
//! client without a proof is refused at authentication and closed.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use terrace_proto::pb;
use terrace_tier_api::protocol::Access;
use terrace_tier_api::{ErrorKind, MAX_ID_BYTES, TierError};

use crate::error::{AuthError, SecurityError};

/// Environment variable naming the secret file when the config names none.
pub const SECRET_FILE_ENV: &str = "TERRACE_SECRET_FILE";

/// Bytes of a challenge, a nonce, a proof and a job token.
pub const AUTH_BYTES: usize = 32;

/// A secret shorter than this is refused: it could be guessed.
const MIN_SECRET_BYTES: usize = 16;
/// Longest secret file read.
const MAX_SECRET_BYTES: usize = 4096;
/// Longest certificate, key or CA file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

const JOB_TOKEN_LABEL: &[u8] = b"terrace job token v1";
const CLIENT_PROOF_LABEL: &[u8] = b"terrace client proof v2";
const SERVER_PROOF_LABEL: &[u8] = b"terrace server proof v2";
const BEARER_LABEL: &[u8] = b"terrace bearer v1";
/// The TLS exporter label whose value binds proofs to the TLS session (RFC 5705).
const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-terrace-authentication-v1";

/// Permission bits a secret file may not have: any for group or others
/// (like ssh's private keys).
#[cfg(unix)]
const SECRET_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// The cluster secret. Its bytes never leave this type (`Debug` hides them).
#[derive(Clone)]
pub struct ClusterSecret {
    key: hmac::Key,
    /// `HMAC(secret, "terrace bearer v1" | secret)`: what [`ClusterSecret::is`]
    /// compares a presented secret's tag with, so the bytes need not be kept.
    bearer: hmac::Tag,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A secret from its bytes (leading and trailing whitespace ignored, so
    /// a file written with `echo` works).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecurityError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(SecurityError::ShortSecret {
                len: trimmed.len(),
                min: MIN_SECRET_BYTES,
            });
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, trimmed);
        let bearer = hmac::sign(&key, &labelled(BEARER_LABEL, &[trimmed]));
        Ok(ClusterSecret { key, bearer })
    }

    /// Whether `presented` is this secret itself (leading and trailing
    /// whitespace ignored), as an operator presents it in an admin
    /// request's `Authorization: Bearer` header. Compared in constant time:
    /// its tag under the secret is checked against the secret's own tag.
    pub fn is(&self, presented: &[u8]) -> bool {
        let message = labelled(BEARER_LABEL, &[presented.trim_ascii()]);
        hmac::verify(&self.key, &message, self.bearer.as_ref()).is_ok()
    }

    /// Reads the secret from `path`, which only its owner may access (mode
    /// 0600 or 0400): a secret others can read is not one.
    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let file = std::fs::File::open(path).map_err(|source| SecurityError::Open {
            what: "secret file",
            path: path.to_path_buf(),
            source,
        })?;
        check_private(&file, path)?;
        let bytes = read_bounded_from(file, path, MAX_SECRET_BYTES as u64, "secret file")?;
        Self::from_bytes(&bytes).map_err(|e| SecurityError::SecretFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// The secret named by `configured`, else by `TERRACE_SECRET_FILE`, else none.
    pub fn resolve(configured: Option<&Path>) -> Result<Option<Self>, SecurityError> {
        let from_env = std::env::var_os(SECRET_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        match configured.map(Path::to_path_buf).or(from_env) {
            Some(path) => Self::load(&path).map(Some),
            None => Ok(None),
        }
    }

    /// The token of `job`: what its producers and consumers present.
    pub fn job_token(&self, job: &[u8]) -> JobToken {
        let tag = hmac::sign(&self.key, &labelled(JOB_TOKEN_LABEL, &[job]));
        let mut token = [0u8; AUTH_BYTES];
        token.copy_from_slice(tag.as_ref());
        JobToken(token)
    }
}

/// A job's token. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobToken([u8; AUTH_BYTES]);

impl fmt::Debug for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobToken(..)")
    }
}

impl JobToken {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecurityError> {
        let token: [u8; AUTH_BYTES] = bytes.try_into().map_err(|_| SecurityError::TokenLength {
            expected: AUTH_BYTES,
            len: bytes.len(),
        })?;
        Ok(JobToken(token))
    }

    pub fn from_hex(hex: &str) -> Result<Self, SecurityError> {
        if hex.len() != 2 * AUTH_BYTES || !hex.is_ascii() {
            return Err(SecurityError::TokenHexLength {
                expected: 2 * AUTH_BYTES,
                len: hex.len(),
            });
        }
        let mut token = [0u8; AUTH_BYTES];
        for (i, byte) in token.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| SecurityError::TokenHex)?;
        }
        Ok(JobToken(token))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

/// What a client proves when a server challenges it.
#[derive(Clone, Debug, Default)]
pub enum Credential {
    /// Nothing: against a server with a secret, every request is refused.
    #[default]
    None,
    /// The cluster secret: masters, workers, master agents, operators' tools.
    Cluster(ClusterSecret),
    /// One job's token: that job's producers and consumers.
    Job { job: Bytes, token: JobToken },
}

impl Credential {
    fn key(&self) -> Option<hmac::Key> {
        match self {
            Credential::None => None,
            Credential::Cluster(secret) => Some(secret.key.clone()),
            Credential::Job { token, .. } => Some(token.key()),
        }
    }

    fn job(&self) -> &[u8] {
        match self {
            Credential::Job { job, .. } => job,
            _ => &[],
        }
    }

    /// Whether this credential proves anything.
    pub fn is_none(&self) -> bool {
        matches!(self, Credential::None)
    }

    /// The client's answer to `challenge` from the server that stated
    /// `server` as its identity, over a channel with exporter value
    /// `channel` (empty without TLS), and what to check the server's reply
    /// against (`None`: the client has nothing to prove).
    pub(crate) fn answer(
        &self,
        challenge: &[u8],
        server: &str,
        channel: &[u8],
    ) -> Result<(pb::Authenticate, Option<ExpectedProof>), TierError> {
        let nonce = random_bytes()?;
        let job = self.job();
        let Some(key) = self.key() else {
            return Ok((
                pb::Authenticate {
                    request_id: 0,
                    job_id: Vec::new().into(),
                    client_nonce: nonce.to_vec().into(),
                    proof: Vec::new().into(),
                },
                None,
            ));
        };
        let parts = [challenge, &nonce[..], job, server.as_bytes(), channel];
        let proof = hmac::sign(&key, &labelled(CLIENT_PROOF_LABEL, &parts));
        let expected = ExpectedProof {
            key,
            parts: parts.iter().map(|p| p.to_vec()).collect(),
        };
        Ok((
            pb::Authenticate {
                request_id: 0,
                job_id: Bytes::copy_from_slice(job),
                client_nonce: nonce.to_vec().into(),
                proof: proof.as_ref().to_vec().into(),
            },
            Some(expected),
        ))
    }
}

/// What a server's `Authenticated` proof must be.
#[derive(Debug)]
pub(crate) struct ExpectedProof {
    key: hmac::Key,
    /// What the client's proof covered; the server's covers the same.
    parts: Vec<Vec<u8>>,
}

impl ExpectedProof {
    pub(crate) fn check(&self, proof: &[u8]) -> bool {
        let parts: Vec<&[u8]> = self.parts.iter().map(Vec::as_slice).collect();
        hmac::verify(&self.key, &labelled(SERVER_PROOF_LABEL, &parts), proof).is_ok()
    }
}

/// Who a server is. It states it in its challenge (`HandshakeOk.server_identity`)
/// and both proofs cover it: a proof made for one server is refused by
/// another. Every master states the same identity; each worker its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerIdentity {
    Master,
    Worker(String),
}

impl fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerIdentity::Master => f.write_str("master"),
            ServerIdentity::Worker(id) => write!(f, "worker {id}"),
        }
    }
}

/// Whom a client means to reach. A client that holds a credential answers
/// only a server whose stated identity is this one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExpectedServer {
    /// Whichever server answers: for addresses an operator gave
    /// (configuration, a command line), never for one a peer supplied.
    #[default]
    Any,
    /// Any worker (an operator names a worker by its address).
    AnyWorker,
    /// Exactly this server.
    Is(ServerIdentity),
}

impl ExpectedServer {
    /// Whether a server stating `stated` is the one meant.
    pub(crate) fn admits(&self, stated: &str) -> bool {
        match self {
            ExpectedServer::Any => true,
            ExpectedServer::AnyWorker => stated.starts_with("worker "),
            ExpectedServer::Is(identity) => stated == identity.to_string(),
        }
    }
}

impl fmt::Display for ExpectedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedServer::Any => f.write_str("any server"),
            ExpectedServer::AnyWorker => f.write_str("a worker"),
            ExpectedServer::Is(identity) => write!(f, "{:?}", identity.to_string()),
        }
    }
}

/// The value both ends of a TLS session derive from it (RFC 5705), which
/// proofs cover so that they are good on this session only.
pub(crate) fn tls_channel_binding<D>(
    connection: &rustls::ConnectionCommon<D>,
) -> Result<Vec<u8>, TierError> {
    connection
        .export_keying_material([0u8; AUTH_BYTES], TLS_EXPORTER_LABEL, None)
        .map(|value| value.to_vec())
        .map_err(|e| {
            TierError::with_source(ErrorKind::Internal, "TLS keying material export failed", e)
        })
}

/// What a connection proved, and so what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The server has no secret: everything is allowed (as before
    /// authentication existed).
    Open,
    /// The server has a secret and the peer proved nothing.
    Anonymous,
    /// The peer holds the cluster secret.
    Cluster,
    /// The peer holds the token of this job.
    Job(Bytes),
}

impl Identity {
    /// Whether this connection may make the request `what` (its kind, for
    /// the error), which needs `access` (each request says which: see
    /// `terrace_tier_api::protocol::Request::access`). The one place access
    /// is decided, for master and worker alike.
    pub fn authorize(&self, access: Access<'_>, what: &str) -> Result<(), TierError> {
        match access {
            Access::Cluster => self.require_cluster(what),
            Access::Job(job) => self.require_job(job.as_bytes(), what),
            Access::Authenticated => self.require_authenticated(what),
            Access::OwnStream => Ok(()),
        }
    }

    /// Allows `what` (a request kind, for the error) only to cluster members.
    fn require_cluster(&self, what: &str) -> Result<(), TierError> {
        match self {
            Identity::Open | Identity::Cluster => Ok(()),
            Identity::Anonymous => Err(TierError::permission_denied(format!(
                "{what} needs the cluster secret; this connection did not authenticate (set secret_file or {SECRET_FILE_ENV})"
            ))),
            Identity::Job(_) => Err(TierError::permission_denied(format!(
                "{what} needs the cluster secret; this connection holds only a job's token"
            ))),
        }
    }

    /// Allows `what` to anyone who proved something (the secret or any job's token).
    fn require_authenticated(&self, what: &str) -> Result<(), TierError> {
        match self {
            Identity::Anonymous => Err(TierError::permission_denied(format!(
                "{what} needs the cluster secret or a job's token; this connection did not authenticate"
            ))),
            _ => Ok(()),
        }
    }

    /// Allows `what` on `job`'s data to cluster members and holders of its token.
    fn require_job(&self, job: &[u8], what: &str) -> Result<(), TierError> {
        match self {
            Identity::Open | Identity::Cluster => Ok(()),
            Identity::Job(own) if own[..] == job[..] => Ok(()),
            Identity::Job(_) => Err(TierError::permission_denied(format!(
                "{what} of job {}: this connection holds another job's token",
                hex(job)
            ))),
            Identity::Anonymous => Err(TierError::permission_denied(format!(
                "{what} of job {} needs the job's token; this connection did not authenticate",
                hex(job)
            ))),
        }
    }
}

/// A fresh challenge (or nonce).
pub(crate) fn random_bytes() -> Result<[u8; AUTH_BYTES], TierError> {
    let mut bytes = [0u8; AUTH_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TierError::internal("the system random source failed"))?;
    Ok(bytes)
}

/// Checks a client's answer to `challenge`, given by a server that stated
/// `server` as its identity on a channel with exporter value `channel`
/// (empty without TLS): the identity it proved and the server's proof to send
/// back, or why it is refused. A client that proves nothing is refused: a
/// server with a secret serves nobody else.
pub(crate) fn verify(
    secret: &ClusterSecret,
    challenge: &[u8],
    server: &str,
    channel: &[u8],
    answer: &pb::Authenticate,
) -> Result<(Identity, Vec<u8>), AuthError> {
    if answer.client_nonce.len() != AUTH_BYTES {
        return Err(AuthError::NonceLength {
            len: answer.client_nonce.len(),
            expected: AUTH_BYTES,
        });
    }
    if answer.proof.is_empty() {
        return Err(AuthError::NoProof {
            env: SECRET_FILE_ENV,
        });
    }
    if answer.job_id.len() > MAX_ID_BYTES {
        return Err(AuthError::JobIdTooLong {
            len: answer.job_id.len(),
            max: MAX_ID_BYTES,
        });
    }
    let (key, identity, whose) = if answer.job_id.is_empty() {
        (
            secret.key.clone(),
            Identity::Cluster,
            "the cluster secret".to_string(),
        )
    } else {
        (
            secret.job_token(&answer.job_id).key(),
            Identity::Job(answer.job_id.clone()),
            format!("the token of job {}", hex(&answer.job_id)),
        )
    };
    let parts = [
        challenge,
        &answer.client_nonce[..],
        &answer.job_id[..],
        server.as_bytes(),
        channel,
    ];
    if hmac::verify(&key, &labelled(CLIENT_PROOF_LABEL, &parts), &answer.proof).is_err() {
        return Err(AuthError::BadProof {
            whose,
            server: server.to_string(),
        });
    }
    let proof = hmac::sign(&key, &labelled(SERVER_PROOF_LABEL, &parts));
    Ok((identity, proof.as_ref().to_vec()))
}

/// `label` and each part, each preceded by its length, so no two different
/// sequences of parts sign the same bytes.
fn labelled(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    for part in std::iter::once(&label).chain(parts) {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_bounded(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, SecurityError> {
    let file = std::fs::File::open(path).map_err(|source| SecurityError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    read_bounded_from(file, path, max, what)
}

fn read_bounded_from(
    file: std::fs::File,
    path: &Path,
    max: u64,
    what: &'static str,
) -> Result<Vec<u8>, SecurityError> {
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SecurityError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(SecurityError::TooLong {
            what,
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(bytes)
}

/// Refuses a secret file that group or others may access. Checked on the
/// open file, so what is read is what was checked.
#[cfg(unix)]
fn check_private(file: &std::fs::File, path: &Path) -> Result<(), SecurityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|source| SecurityError::Stat {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & SECRET_FILE_FORBIDDEN_MODE != 0 {
        return Err(SecurityError::NotPrivate {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &std::fs::File, _path: &Path) -> Result<(), SecurityError> {
    Ok(())
}

/// `[security]` of a master's or worker's configuration file. Agents carry
/// the same keys in their own configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// File holding the cluster secret (else `TERRACE_SECRET_FILE`; else
    /// none, and anyone who reaches the port may do anything).
    pub secret_file: Option<PathBuf>,
    /// PEM certificate chain this server presents; with `tls_key_file`, the
    /// server accepts only TLS connections.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: when set, this service connects to masters (and
    /// an agent to workers) over TLS and trusts the servers these sign.
    pub tls_ca_file: Option<PathBuf>,
    /// Not a configuration key (never read from a file or the environment):
    /// set by a program that starts a master and workers inside its own
    /// process, on loopback, for its own use only (the embedded cluster of
    /// `terrace demo`). Such a service does not warn that it has no secret.
    #[serde(skip)]
    pub embedded_loopback: bool,
}

/// A service's loaded security settings.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub secret: Option<ClusterSecret>,
    pub tls_server: Option<TlsServer>,
    pub tls_client: Option<TlsClient>,
    /// [`SecurityConfig::embedded_loopback`].
    pub embedded_loopback: bool,
}

/// Whether this process has warned that a service of it has no secret: the
/// warning is printed once per process, however many services it runs.
static OPEN_WARNED: AtomicBool = AtomicBool::new(false);

impl Security {
    /// Reads the files `config` names.
    pub fn load(config: &SecurityConfig) -> Result<Self, SecurityError> {
        let secret = ClusterSecret::resolve(config.secret_file.as_deref())?;
        let tls_server = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsServer::load(cert, key)?),
            (None, None) => None,
            _ => return Err(SecurityError::HalfTls),
        };
        let tls_client = config
            .tls_ca_file
            .as_deref()
            .map(TlsClient::load)
            .transpose()?;
        Ok(Security {
            secret,
            tls_server,
            tls_client,
            embedded_loopback: config.embedded_loopback,
        })
    }

    /// The credential this service presents to the servers it connects to.
    pub fn credential(&self) -> Credential {
        self.secret
            .clone()
            .map_or(Credential::None, Credential::Cluster)
    }

    /// Logs, at start, what is not protected: the warning that there is no
    /// secret once per process (a process running a master and a worker
    /// says it once), and nothing for an embedded loopback cluster.
    pub fn warn_if_open(&self, service: &str) {
        self.warn_if_open_once(service, &OPEN_WARNED);
    }

    /// [`Security::warn_if_open`], with `warned` saying whether the warning
    /// was already given.
    fn warn_if_open_once(&self, service: &str, warned: &AtomicBool) {
        if self.embedded_loopback {
            return;
        }
        if self.secret.is_none() && !warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{service} has no cluster secret (security.secret_file or {SECRET_FILE_ENV}): \
                 any peer that reaches its port can register workers, list and drop jobs, and read every job's data"
            );
        }
        if self.tls_server.is_none() {
            tracing::info!("{service} serves plaintext connections (no security.tls_cert_file)");
        }
    }
}

/// The server side of TLS: accepts only TLS connections.
#[derive(Clone)]
pub struct TlsServer {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsServer(..)")
    }
}

impl TlsServer {
    /// Loads a PEM certificate chain and its private key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, SecurityError> {
        let pem_error = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| SecurityError::Pem { what, path, source }
        };
        let pem = read_bounded(cert_file, MAX_PEM_BYTES, "TLS certificate file")?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error("TLS certificate file", cert_file))?;
        if certs.is_empty() {
            return Err(SecurityError::NoCertificate {
                what: "TLS certificate file",
                path: cert_file.to_path_buf(),
            });
        }
        let pem = read_bounded(key_file, MAX_PEM_BYTES, "TLS key file")?;
        let key =
            PrivateKeyDer::from_pem_slice(&pem).map_err(pem_error("TLS key file", key_file))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(SecurityError::Tls)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|source| SecurityError::CertificateAndKey {
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
                source,
            })?;
        Ok(TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// The client side of TLS: connects over TLS and checks the server's
/// certificate against the configured CAs and the address's host.
#[derive(Clone)]
pub struct TlsClient {
    pub(crate) connector: tokio_rustls::TlsConnector,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsClient(..)")
    }
}

impl TlsClient {
    /// Trusts the PEM CA certificates in `ca_file`.
    pub fn load(ca_file: &Path) -> Result<Self, SecurityError> {
        let pem = read_bounded(ca_file, MAX_PEM_BYTES, "TLS CA file")?;
        let mut roots = rustls::RootCertStore::empty();
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|source| SecurityError::Pem {
                what: "TLS CA file",
                path: ca_file.to_path_buf(),
                source,
            })?;
            roots.add(cert).map_err(|source| SecurityError::BadCa {
                path: ca_file.to_path_buf(),
                source,
            })?;
            count += 1;
        }
        if count == 0 {
            return Err(SecurityError::NoCertificate {
                what: "TLS CA file",
                path: ca_file.to_path_buf(),
            });
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(SecurityError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// [`TlsClient::load`], once per file per process: agents open many
    /// connections and read the CA file for the first only.
    pub fn cached(ca_file: &Path) -> Result<Self, SecurityError> {
        static CACHE: Mutex<Vec<(PathBuf, TlsClient)>> = Mutex::new(Vec::new());
        let mut cache = CACHE.lock().expect("TLS cache lock poisoned");
        if let Some((_, tls)) = cache.iter().find(|(path, _)| path == ca_file) {
            return Ok(tls.clone());
        }
        let tls = Self::load(ca_file)?;
        cache.push((ca_file.to_path_buf(), tls.clone()));
        Ok(tls)
    }

    /// The name a server at `addr` (`host:port`) must have a certificate for.
    pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, TierError> {
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        ServerName::try_from(host.to_string()).map_err(|e| {
            TierError::with_source(
                ErrorKind::BadInput,
                format!("TLS: {host:?} is not a valid server name"),
                e,
            )
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes(b"0123456789abcdef-the-secret\n").expect("long enough")
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = ClusterSecret::from_bytes(b"  short \n").unwrap_err();
        assert!(
            matches!(err, SecurityError::ShortSecret { len: 5, min: 16 }),
            "{err}"
        );
    }

    #[test]
    fn a_secret_recognises_itself_and_nothing_else() {
        let s = secret();
        assert!(s.is(b"0123456789abcdef-the-secret"));
        assert!(
            s.is(b" 0123456789abcdef-the-secret\r\n"),
            "whitespace is ignored"
        );
        for wrong in [
            &b""[..],
            b"0123456789abcdef-the-secreT",
            b"0123456789abcdef-the-secret!",
            b"0123456789abcdef-the-secre",
        ] {
            assert!(!s.is(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
        let other = ClusterSecret::from_bytes(b"another secret, long enough").expect("long");
        assert!(!other.is(b"0123456789abcdef-the-secret"));
    }

    #[test]
    fn job_tokens_differ_per_job_and_round_trip_as_hex() {
        let s = secret();
        let a = s.job_token(b"job-a");
        assert_eq!(a, s.job_token(b"job-a"));
        assert_ne!(a, s.job_token(b"job-b"));
        assert_eq!(JobToken::from_hex(&a.to_hex()).expect("hex"), a);
        assert!(matches!(
            JobToken::from_hex("zz"),
            Err(SecurityError::TokenHexLength { len: 2, .. })
        ));
        assert!(matches!(
            JobToken::from_hex(&"zz".repeat(AUTH_BYTES)),
            Err(SecurityError::TokenHex)
        ));
        let other = ClusterSecret::from_bytes(b"another secret of enough bytes").unwrap();
        assert_ne!(a, other.job_token(b"job-a"));
    }

    const WORKER_A: &str = "worker a";
    const NO_TLS: &[u8] = &[];

    #[test]
    fn proofs_identify_the_key_and_the_server_proves_back() {
        let s = secret();
        let challenge = random_bytes().unwrap();
        for (credential, identity) in [
            (Credential::Cluster(s.clone()), Identity::Cluster),
            (
                Credential::Job {
                    job: Bytes::from_static(b"job-a"),
                    token: s.job_token(b"job-a"),
                },
                Identity::Job(Bytes::from_static(b"job-a")),
            ),
        ] {
            let (answer, expected) = credential.answer(&challenge, WORKER_A, NO_TLS).unwrap();
            let expected = expected.expect("a credential expects the server's proof");
            let (got, server_proof) = verify(&s, &challenge, WORKER_A, NO_TLS, &answer).unwrap();
            assert_eq!(got, identity);
            assert!(expected.check(&server_proof));
            // The client's own proof is not a valid server proof.
            assert!(!expected.check(&answer.proof));
        }
    }

    #[test]
    fn a_client_without_a_proof_is_refused() {
        let s = secret();
        let challenge = random_bytes().unwrap();
        let (answer, expected) = Credential::None
            .answer(&challenge, WORKER_A, NO_TLS)
            .unwrap();
        assert!(expected.is_none());
        assert!(answer.proof.is_empty());
        let err = verify(&s, &challenge, WORKER_A, NO_TLS, &answer).unwrap_err();
        assert!(matches!(err, AuthError::NoProof { .. }), "{err}");
    }

    #[test]
    fn wrong_secrets_tokens_and_replays_are_refused() {
        let s = secret();
        let other = ClusterSecret::from_bytes(b"another secret of enough bytes").unwrap();
        let challenge = random_bytes().unwrap();
        let (answer, _) = Credential::Cluster(other.clone())
            .answer(&challenge, WORKER_A, NO_TLS)
            .unwrap();
        assert!(verify(&s, &challenge, WORKER_A, NO_TLS, &answer).is_err());
        // Job B's token claimed for job A.
        let (mut answer, _) = Credential::Job {
            job: Bytes::from_static(b"job-b"),
            token: s.job_token(b"job-b"),
        }
        .answer(&challenge, WORKER_A, NO_TLS)
        .unwrap();
        answer.job_id = Bytes::from_static(b"job-a");
        assert!(verify(&s, &challenge, WORKER_A, NO_TLS, &answer).is_err());
        // A proof made for one challenge fails on another connection's.
        let (answer, _) = Credential::Cluster(s.clone())
            .answer(&challenge, WORKER_A, NO_TLS)
            .unwrap();
        let fresh = random_bytes().unwrap();
        assert!(verify(&s, &fresh, WORKER_A, NO_TLS, &answer).is_err());
    }

    /// What a relay would do: pass a proof made for one server (identity,
    /// TLS session) on to another. Every mismatch is refused, and the server
    /// proof made for one binding does not satisfy a client of another.
    #[test]
    fn a_proof_is_bound_to_the_server_identity_and_the_tls_channel() {
        let s = secret();
        let challenge = random_bytes().unwrap();
        let master = ServerIdentity::Master.to_string();
        let channel_a = [1u8; AUTH_BYTES];
        let channel_b = [2u8; AUTH_BYTES];
        for credential in [
            Credential::Cluster(s.clone()),
            Credential::Job {
                job: Bytes::from_static(b"job-a"),
                token: s.job_token(b"job-a"),
            },
        ] {
            // Made for worker a, presented to a master with the same challenge.
            let (answer, expected) = credential.answer(&challenge, WORKER_A, NO_TLS).unwrap();
            let err = verify(&s, &challenge, &master, NO_TLS, &answer).unwrap_err();
            assert!(matches!(err, AuthError::BadProof { .. }), "{err}");
            // The same proof is good where it was meant to go.
            assert!(verify(&s, &challenge, WORKER_A, NO_TLS, &answer).is_ok());
            // A master's proof does not satisfy a client that meant worker a.
            let (for_master, _) = credential.answer(&challenge, &master, NO_TLS).unwrap();
            let (_, master_proof) = verify(&s, &challenge, &master, NO_TLS, &for_master).unwrap();
            assert!(!expected.expect("expects a proof").check(&master_proof));

            // Bound to one TLS session, refused on another (and without TLS).
            let (answer, expected) = credential.answer(&challenge, WORKER_A, &channel_a).unwrap();
            assert!(verify(&s, &challenge, WORKER_A, &channel_b, &answer).is_err());
            assert!(verify(&s, &challenge, WORKER_A, NO_TLS, &answer).is_err());
            let (_, proof) = verify(&s, &challenge, WORKER_A, &channel_a, &answer).unwrap();
            let expected = expected.expect("expects a proof");
            assert!(expected.check(&proof));
            let (on_b, _) = credential.answer(&challenge, WORKER_A, &channel_b).unwrap();
            let (_, proof_b) = verify(&s, &challenge, WORKER_A, &channel_b, &on_b).unwrap();
            assert!(!expected.check(&proof_b));
        }
    }

    #[test]
    fn clients_admit_only_the_server_they_meant() {
        let worker_a = ServerIdentity::Worker("a".into()).to_string();
        assert_eq!(worker_a, WORKER_A);
        assert_eq!(ServerIdentity::Master.to_string(), "master");
        let meant = ExpectedServer::Is(ServerIdentity::Worker("a".into()));
        assert!(meant.admits("worker a"));
        assert!(!meant.admits("worker b"));
        assert!(!meant.admits("worker a "));
        assert!(!meant.admits("master"));
        assert!(!meant.admits(""));
        assert!(ExpectedServer::Is(ServerIdentity::Master).admits("master"));
        assert!(!ExpectedServer::Is(ServerIdentity::Master).admits("worker master"));
        assert!(ExpectedServer::AnyWorker.admits("worker b"));
        assert!(!ExpectedServer::AnyWorker.admits("master"));
        assert!(ExpectedServer::Any.admits("master"));
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_access_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef-the-secret\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o644, false),
            (0o640, false),
            (0o604, false),
            (0o620, false),
            (0o660, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match ClusterSecret::load(&path) {
                Ok(_) => assert!(ok, "mode {mode:04o} was accepted"),
                Err(e) => {
                    assert!(!ok, "mode {mode:04o} was refused: {e}");
                    assert!(
                        matches!(&e, SecurityError::NotPrivate { path: p, mode: m } if *p == path && *m == mode),
                        "{e}"
                    );
                    // The message is the point: it tells the operator the fix.
                    assert!(e.to_string().contains("chmod 600"), "{e}");
                }
            }
        }
    }

    #[test]
    fn identities_allow_what_they_proved() {
        use terrace_tier_api::ErrorKind::PermissionDenied;
        use terrace_tier_api::JobId;
        let a = Bytes::from_static(b"job-a");
        let allowed =
            |identity: &Identity, access: Access<'_>| match identity.authorize(access, "request") {
                Ok(()) => true,
                Err(e) => {
                    assert_eq!(e.kind(), PermissionDenied, "{e}");
                    false
                }
            };
        let identities = [
            Identity::Open,
            Identity::Anonymous,
            Identity::Cluster,
            Identity::Job(a.clone()),
        ];
        let (job_a, job_b) = (
            JobId::new(Bytes::from_static(b"job-a")).expect("valid"),
            JobId::new(Bytes::from_static(b"job-b")).expect("valid"),
        );
        // (access, allowed for Open, Anonymous, Cluster, Job(a))
        let table: [(Access<'_>, [bool; 4]); 5] = [
            (Access::Cluster, [true, false, true, false]),
            (Access::Job(&job_a), [true, false, true, true]),
            (Access::Job(&job_b), [true, false, true, false]),
            (Access::Authenticated, [true, false, true, true]),
            (Access::OwnStream, [true, true, true, true]),
        ];
        for (access, want) in table {
            for (identity, want) in identities.iter().zip(want) {
                assert_eq!(allowed(identity, access), want, "{identity:?} {access:?}");
            }
        }
        let err = Identity::Job(a)
            .authorize(Access::Job(&job_b), "PushData")
            .unwrap_err();
        assert_eq!(
            err.message(),
            "PushData of job 6a6f622d62: this connection holds another job's token"
        );
    }

    /// What `warn_if_open_once` logs, one string per line.
    fn open_warnings(run: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lines lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(lines.0.lock().expect("lines lock").clone()).expect("UTF-8");
        text.lines().map(str::to_string).collect()
    }

    /// A process running a master and a worker without a secret says so
    /// once; a service with a secret or in an embedded loopback cluster
    /// does not say it.
    #[test]
    fn the_no_secret_warning_is_given_once_and_never_for_an_embedded_loopback_cluster() {
        let warned = AtomicBool::new(false);
        let lines = open_warnings(|| {
            Security::default().warn_if_open_once("the master", &warned);
            Security::default().warn_if_open_once("the worker", &warned);
        });
        let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{lines:?}");
        assert!(
            warnings[0].contains("the master has no cluster secret"),
            "{lines:?}"
        );
        // The plaintext note is per service, at INFO.
        assert_eq!(
            lines.iter().filter(|l| l.contains("INFO")).count(),
            2,
            "{lines:?}"
        );

        let fresh = AtomicBool::new(false);
        let embedded = Security {
            embedded_loopback: true,
            ..Security::default()
        };
        let with_secret = Security {
            secret: Some(secret()),
            ..Security::default()
        };
        let lines = open_warnings(|| {
            embedded.warn_if_open_once("the master", &fresh);
            with_secret.warn_if_open_once("the worker", &fresh);
        });
        assert!(!fresh.load(Ordering::Relaxed));
        assert!(!lines.iter().any(|l| l.contains("WARN")), "{lines:?}");
        // The embedded cluster says nothing at all; the other service only
        // that it is plaintext.
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("the worker serves plaintext"),
            "{lines:?}"
        );

        // The flag is no configuration key: a file cannot set it.
        let parsed: Result<SecurityConfig, _> =
            serde_json::from_str(r#"{"embedded_loopback": true}"#);
        assert!(parsed.is_err(), "{parsed:?}");
    }

    #[test]
    fn server_names_come_from_the_address_host() {
        assert!(TlsClient::server_name("127.0.0.1:9870").is_ok());
        assert!(TlsClient::server_name("[::1]:9870").is_ok());
        assert!(TlsClient::server_name("worker-1.example:9871").is_ok());
    }
}
