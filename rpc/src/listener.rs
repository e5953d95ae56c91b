//! The server skeleton masters and workers share: the accept loop, the limits
//! every connection lives under, and ordered shutdown. A service supplies
//! only what it does with a connection once the handshake is done.
//!
//! What a connection may cost the server is bounded here:
//! - at most `max_connections` at once; one more is told so and closed;
//! - the TLS handshake, the protocol handshake and (with a secret) the
//!   authentication must all be done within `handshake_timeout`; with a
//!   secret, a peer that proves nothing is refused there, so before it proved
//!   itself a connection is read only for those few small frames (no request,
//!   no body, no budget);
//! - once a frame's prefix has arrived, its rest must within `frame_timeout`
//!   (time the server spends waiting for its own memory does not count);
//!   past it the connection is closed and what the frame held is freed;
//! - a connection that sends nothing for `idle_timeout` (while its service
//!   lets it idle) is closed, and TCP keepalive finds peers that vanished;
//! - replies the peer does not read stop the server reading its requests once
//!   `max_send_queue` bytes wait, and close it if they still wait after
//!   `frame_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use terrace_proto::{FrameError, FramePrefix, FrameReader, Message, pb};
use terrace_tier_api::{ByteSize, ConfigError, TierResult, error_text};

use crate::error::OpeningError;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::security::{ClusterSecret, Identity, ServerIdentity, TlsServer, tls_channel_binding};
use crate::server::{accept_authentication, accept_handshake, reply_error};
use crate::writer::{FrameSender, spawn_writer, spawn_writer_with_stall_limit};

/// Limits of a server's connections (`[server]` in a master's or worker's
/// configuration file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerOptions {
    /// Connections open at once; one more is refused with an error frame.
    pub max_connections: u32,
    /// Time a new connection has to send its handshake.
    #[serde(with = "terrace_tier_api::duration")]
    pub handshake_timeout: Duration,
    /// Time a frame's header and body have to arrive once its 9-byte prefix
    /// has; also the longest a connection's replies may stay unread once
    /// `max_send_queue` bytes of them wait.
    #[serde(with = "terrace_tier_api::duration")]
    pub frame_timeout: Duration,
    /// A connection that sends nothing for this long is closed (a worker
    /// keeps connections with open read streams regardless).
    #[serde(with = "terrace_tier_api::duration")]
    pub idle_timeout: Duration,
    /// TCP keepalive probe time (and interval); `0s` turns keepalive off.
    #[serde(with = "terrace_tier_api::duration")]
    pub keepalive: Duration,
    /// Bytes of replies and data queued for one connection before the server
    /// stops reading its requests (and a worker stops reading data for it).
    pub max_send_queue: ByteSize,
    /// How long shutdown waits for open connections to finish what they are doing.
    #[serde(with = "terrace_tier_api::duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3600),
            keepalive: Duration::from_secs(60),
            max_send_queue: ByteSize::mib(16),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl ServerOptions {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "server.max_connections",
                "server.max_connections must be at least 1",
            ));
        }
        for (name, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("frame_timeout", self.frame_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(
                    format!("server.{name}"),
                    format!("server.{name} must be longer than 0s"),
                ));
            }
        }
        if self.max_send_queue.as_u64() < 64 * 1024 {
            return Err(ConfigError::new(
                "server.max_send_queue",
                "server.max_send_queue must be at least 64KiB",
            ));
        }
        Ok(())
    }
}

/// The reading half of a connection, whatever carries it.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// Grants memory for a frame's bytes as they arrive (see
/// [`Accepted::read_rest_metered`]).
pub trait Meter: Send {
    /// Grants `bytes` more; waits while memory is short. An error closes the
    /// connection with it.
    fn grant(&mut self, bytes: usize) -> impl Future<Output = TierResult<()>> + Send;
}

/// Most bytes granted ahead of what has arrived: all that a connection that
/// announced a frame and stalled holds.
const GRANT_CHUNK: usize = 256 * 1024;

/// After the server sends a connection-level error, how long unread input is
/// discarded so the error reaches the peer before the socket closes (closing
/// with unread input sends a reset that can overtake it).
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Most input discarded while lingering after a refused opening (handshake or
/// authentication): a peer that has not proved itself gets its error, not
/// its push read, even into a scratch buffer.
const OPENING_LINGER_BYTES: usize = 64 * 1024;

/// Connections refused for the connection limit that are still being told so;
/// past this, one more is closed without a word.
const MAX_REFUSING: usize = 64;

/// A connection past its handshake, handed to the service.
pub struct Accepted {
    pub peer: SocketAddr,
    /// The name the peer gave in its handshake.
    pub client: String,
    /// What the peer proved (see [`Identity`]); services check it per request.
    pub identity: Identity,
    pub sender: FrameSender,
    /// Fires when the server shuts down.
    pub shutdown: CancellationToken,
    /// Fires when writing to the peer failed.
    pub write_failed: CancellationToken,
    reader: FrameReader<BoxRead>,
    options: Arc<ServerOptions>,
    /// Set once a connection-level error was sent: linger before closing.
    failed: bool,
    /// Most input discarded while lingering.
    linger_bytes: usize,
    /// Longest wait at close for queued replies to be written.
    close_wait: Duration,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("peer", &self.peer)
            .field("client", &self.client)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Accepted {
    /// Waits for the next frame's prefix. `None` ends the connection: the
    /// peer closed it or broke the protocol (it has been told), the server is
    /// shutting down, the peer left its replies unread past the deadline, or
    /// (when `may_idle`) it sent nothing for the idle timeout.
    pub async fn next_prefix(&mut self, may_idle: bool) -> Option<FramePrefix> {
        let limit = self.options.max_send_queue.as_usize();
        if self.sender.queued_bytes() >= limit {
            let drained = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = clock::timeout(self.options.frame_timeout, self.sender.wait_queued_below(limit)) => r,
            };
            if drained.is_err() {
                tracing::warn!(peer = %self.peer, client = %self.client, queued = self.sender.queued_bytes(),
                    "peer left its replies unread for {:?}; closing", self.options.frame_timeout);
                // What is queued would never be written: drop it and the socket.
                self.write_failed.cancel();
                return None;
            }
        }
        let idle = if may_idle {
            self.options.idle_timeout
        } else {
            Duration::MAX
        };
        let prefix = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            _ = self.write_failed.cancelled() => return None,
            _ = clock::sleep(idle), if may_idle => {
                tracing::debug!(peer = %self.peer, client = %self.client, "idle for {idle:?}; closing");
                return None;
            }
            prefix = self.reader.read_prefix() => prefix,
        };
        match prefix {
            Ok(Some(prefix)) => Some(prefix),
            Ok(None) => None,
            Err(e) => {
                self.frame_error(&e);
                None
            }
        }
    }

    /// Reads the rest of a frame into a fresh buffer within the frame deadline.
    pub async fn read_rest(&mut self, prefix: FramePrefix) -> Option<(Message, Bytes)> {
        match clock::timeout(self.options.frame_timeout, self.reader.read_rest(prefix)).await {
            Ok(Ok(frame)) => Some(frame),
            Ok(Err(e)) => {
                self.frame_error(&e);
                None
            }
            Err(_) => {
                self.deadline_passed(prefix);
                None
            }
        }
    }

    /// Reads the rest of a frame into `buf`, asking `meter` for memory a
    /// piece at a time just before the piece is read: a peer that announces
    /// a large frame and sends little holds little. The frame deadline counts
    /// time spent waiting for the peer, not for the meter.
    pub async fn read_rest_metered<B, M>(
        &mut self,
        prefix: FramePrefix,
        mut buf: B,
        meter: &mut M,
    ) -> Option<(Message, Bytes)>
    where
        B: AsRef<[u8]> + AsMut<[u8]> + Send + 'static,
        M: Meter,
    {
        let len = prefix.remaining();
        if buf.as_ref().len() < len {
            self.frame_error(&FrameError::Malformed(
                "receive buffer shorter than the frame",
            ));
            return None;
        }
        let mut filled = 0;
        let mut granted = 0;
        let mut left = self.options.frame_timeout;
        while filled < len {
            if granted == filled {
                let n = (len - filled).min(GRANT_CHUNK);
                let grant = tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    grant = meter.grant(n) => grant,
                };
                if let Err(reason) = grant {
                    self.fail(pb::ErrorCode::Protocol, reason.full_message());
                    return None;
                }
                granted += n;
            }
            let started = clock::now();
            let read = clock::timeout(
                left,
                self.reader
                    .get_mut()
                    .read(&mut buf.as_mut()[filled..granted]),
            )
            .await;
            left = left.saturating_sub(clock::elapsed(started));
            match read {
                Ok(Ok(0)) => {
                    self.frame_error(&FrameError::Truncated);
                    return None;
                }
                Ok(Ok(n)) => filled += n,
                Ok(Err(e)) => {
                    self.frame_error(&FrameError::Io(e));
                    return None;
                }
                Err(_) => {
                    self.deadline_passed(prefix);
                    return None;
                }
            }
        }
        match FrameReader::<BoxRead>::decode(prefix, buf) {
            Ok(frame) => Some(frame),
            Err(e) => {
                self.frame_error(&e);
                None
            }
        }
    }

    /// Sends a connection-level error; the connection is closed after it.
    pub fn fail(&mut self, code: pb::ErrorCode, message: impl Into<String>) {
        reply_error(&self.sender, 0, code, message);
        self.failed = true;
    }

    /// Closes the connection after a protocol error: a PROTOCOL error reply
    /// with `message`, then the end of the connection.
    pub fn fail_protocol(&mut self, message: impl Into<String>) {
        self.fail(pb::ErrorCode::Protocol, message);
    }

    fn frame_error(&mut self, e: &FrameError) {
        if e.is_protocol_error() {
            tracing::warn!(peer = %self.peer, client = %self.client, error = %e, "protocol error; closing the connection");
            self.fail(pb::ErrorCode::Protocol, format!("protocol error: {e}"));
        } else {
            tracing::debug!(peer = %self.peer, client = %self.client, error = %e, "connection read failed");
        }
    }

    fn deadline_passed(&mut self, prefix: FramePrefix) {
        let message = format!(
            "a {:?} frame of {} bytes did not arrive within {:?} of its start (server.frame_timeout); closing",
            prefix.ty,
            prefix.remaining(),
            self.options.frame_timeout
        );
        tracing::warn!(peer = %self.peer, client = %self.client, "{message}");
        self.fail(pb::ErrorCode::Protocol, message);
    }
}

/// What the skeleton needs from a service.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Given in handshakes and logs.
    pub name: String,
    /// Who this server is, stated in every handshake and covered by proofs.
    pub identity: ServerIdentity,
    /// Largest frame accepted from a peer.
    pub max_frame: usize,
    pub options: ServerOptions,
    /// Set: every connection must authenticate (see [`crate::Credential`]).
    pub secret: Option<ClusterSecret>,
    /// Set: only TLS connections are accepted.
    pub tls: Option<TlsServer>,
}

/// Serves connections on `listener` until `shutdown` fires, then stops in
/// order: stop accepting, let every connection finish the request in hand
/// and its queued replies (up to `shutdown_grace`), return. `handle` runs one
/// connection and gives it back when done, so the skeleton can close it.
pub async fn serve<H, F>(
    listener: TcpListener,
    spec: ServerSpec,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(Accepted) -> F + Send + Sync + 'static,
    F: Future<Output = Accepted> + Send + 'static,
{
    let options = Arc::new(spec.options.clone());
    let handle = Arc::new(handle);
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "an unknown address".into());
    let slots = Arc::new(Semaphore::new(options.max_connections as usize));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tracker = TaskTracker::new();
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = MIN_ACCEPT_BACKOFF;
                accepted
            }
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(address = %local, error = %e, backoff_ms = backoff.as_millis() as u64,
                    "accept failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = clock::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(address = %local, %peer, limit = options.max_connections,
                "connection refused: at server.max_connections");
            if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
                let message = format!(
                    "{} has {} connections open, its limit (server.max_connections); try again later",
                    spec.name, options.max_connections
                );
                tracker.spawn(async move {
                    refuse(stream, pb::ErrorCode::Unavailable, message).await;
                    drop(permit);
                });
            }
            continue;
        };
        let spec = spec.clone();
        let options = Arc::clone(&options);
        let handle = Arc::clone(&handle);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let Some(accepted) = open(stream, peer, &spec, options, shutdown).await else {
                return;
            };
            let accepted = handle(accepted).await;
            close(accepted).await;
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracing::info!(address = %local, connections = tracker.len(), "{} shutting down", spec.name);
    if clock::timeout(options.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "connections still open after the shutdown grace period"
        );
    }
}

const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause after a failed accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

fn set_socket_options(stream: &TcpStream, options: &ServerOptions, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    if !options.keepalive.is_zero() {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(options.keepalive)
            .with_interval(options.keepalive);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
    }
}

/// Sets the socket up, takes the TLS handshake (when configured), the
/// protocol handshake and the authentication (when the server has a secret).
async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    spec: &ServerSpec,
    options: Arc<ServerOptions>,
    shutdown: CancellationToken,
) -> Option<Accepted> {
    set_socket_options(&stream, &options, peer);
    // One deadline for the whole opening: TLS, handshake, authentication.
    let deadline = clock::now() + options.handshake_timeout;
    let write_failed = CancellationToken::new();
    let stall = Some(options.frame_timeout);
    let (reader, sender, channel) = match &spec.tls {
        None => {
            let (read, write) = stream.into_split();
            let sender = spawn_writer_with_stall_limit(write, write_failed.clone(), stall);
            (Box::new(read) as BoxRead, sender, Vec::new())
        }
        Some(tls) => {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return None,
                stream = tls_accept(stream, tls, &spec.name, &options, peer, deadline) => stream?,
            };
            let channel = match tls_channel_binding(stream.get_ref().1) {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "refused connection");
                    return None;
                }
            };
            let (read, write) = tokio::io::split(stream);
            let sender = spawn_writer_with_stall_limit(write, write_failed.clone(), stall);
            (Box::new(read) as BoxRead, sender, channel)
        }
    };
    let mut reader = FrameReader::new(reader, spec.max_frame);
    let identity = spec.identity.to_string();
    let opening = async {
        let challenge = match &spec.secret {
            Some(_) => Some(crate::security::random_bytes().map_err(OpeningError::Challenge)?),
            None => None,
        };
        let client = accept_handshake(
            &mut reader,
            &sender,
            &spec.name,
            &identity,
            challenge.as_ref().map_or(&[][..], |c| &c[..]),
        )
        .await?;
        let proved = match (&spec.secret, challenge) {
            (Some(secret), Some(challenge)) => {
                accept_authentication(
                    &mut reader,
                    &sender,
                    secret,
                    &challenge,
                    &identity,
                    &channel,
                )
                .await?
            }
            _ => Identity::Open,
        };
        Ok::<_, OpeningError>((client, proved))
    };
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = clock::timeout_at(deadline, opening) => r,
    };
    let close_wait = options.frame_timeout;
    let mut accepted = Accepted {
        peer,
        client: String::new(),
        identity: Identity::Anonymous,
        sender,
        shutdown,
        write_failed,
        reader,
        options,
        failed: false,
        linger_bytes: usize::MAX,
        close_wait,
    };
    match opened {
        Ok(Ok((client, identity))) => {
            tracing::debug!(%peer, %client, ?identity, "connection open");
            accepted.client = client;
            accepted.identity = identity;
            Some(accepted)
        }
        Ok(Err(e)) => {
            let reason = error_text(&e);
            if matches!(e, OpeningError::Closed { .. }) {
                // Port probes and health checks.
                tracing::debug!(%peer, reason, "connection closed before the handshake");
            } else {
                tracing::warn!(%peer, reason, "refused connection");
                // Linger a moment so the error arrives, over little input.
                accepted.failed = true;
                accepted.linger_bytes = OPENING_LINGER_BYTES;
                accepted.close_wait = CLOSE_LINGER;
            }
            close(accepted).await;
            None
        }
        Err(_) => {
            // Closed at the deadline, without a word or a linger: the slot
            // goes now.
            let reason = format!(
                "no handshake{} within {:?} (server.handshake_timeout)",
                if spec.secret.is_some() {
                    " and authentication"
                } else {
                    ""
                },
                accepted.options.handshake_timeout
            );
            tracing::warn!(%peer, reason, "refused connection");
            accepted.close_wait = CLOSE_LINGER;
            close(accepted).await;
            None
        }
    }
}

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Takes a connection's TLS handshake by `deadline` (`server.handshake_timeout`
/// after accept). A peer that speaks plaintext Terrace is told, in
/// plaintext, that this server takes only TLS.
async fn tls_accept(
    stream: TcpStream,
    tls: &TlsServer,
    name: &str,
    options: &ServerOptions,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let timeout = options.handshake_timeout;
    let mut first = [0u8; 1];
    match clock::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => {
            tracing::warn!(%peer, "refused a plaintext connection: this server takes only TLS");
            let message = format!(
                "{name} accepts only TLS connections (it has security.tls_cert_file): connect with TLS (security.tls_ca_file, or terrace.tls.ca-file in Flink)"
            );
            refuse(stream, pb::ErrorCode::Protocol, message).await;
            return None;
        }
        Ok(_) => return None,
        Err(_) => {
            tracing::warn!(%peer, "no TLS handshake within {timeout:?} (server.handshake_timeout)");
            return None;
        }
    }
    match clock::timeout_at(deadline, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake not done within {timeout:?} (server.handshake_timeout)");
            None
        }
    }
}

/// Ends a connection: the writer sends what is queued once the last sender
/// is gone; after an error, input is discarded a moment so the error arrives.
async fn close(accepted: Accepted) {
    let Accepted {
        mut reader,
        sender,
        failed,
        peer,
        write_failed,
        linger_bytes,
        close_wait,
        ..
    } = accepted;
    // Queued replies get one frame deadline (a refused opening a moment) to
    // reach a peer that reads them.
    if clock::timeout(close_wait, sender.wait_queued_below(1))
        .await
        .is_err()
    {
        tracing::debug!(%peer, queued = sender.queued_bytes(), "replies left unsent at close");
        write_failed.cancel();
    }
    drop(sender);
    if failed {
        linger(reader.get_mut(), linger_bytes).await;
    }
    tracing::debug!(%peer, "connection closed");
}

/// Tells a connection over the limit why it is refused, then closes it.
async fn refuse(stream: TcpStream, code: pb::ErrorCode, message: String) {
    let (mut read, write) = stream.into_split();
    let sender = spawn_writer(write, CancellationToken::new());
    reply_error(&sender, 0, code, message);
    drop(sender);
    linger(&mut read, OPENING_LINGER_BYTES).await;
}

/// Discards input until the peer closes, for at most [`CLOSE_LINGER`] and
/// `max_bytes`.
async fn linger<R: AsyncRead + Unpin + ?Sized>(read: &mut R, max_bytes: usize) {
    let mut scratch = [0u8; 4096];
    let mut discarded = 0usize;
    let _ = clock::timeout(CLOSE_LINGER, async {
        while let Ok(n) = read.read(&mut scratch).await {
            discarded = discarded.saturating_add(n);
            if n == 0 || discarded >= max_bytes {
                break;
            }
        }
    })
    .await;
}
