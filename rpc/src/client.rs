//! The client side of a connection: requests matched to replies by request
//! id, and stream frames routed to their stream's receiver by stream id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock;
use crate::error::ConnectError;
use bytes::Bytes;
use terrace_proto::{FrameReader, Message, PROTOCOL_VERSION, pb};
use terrace_tier_api::protocol::{
    Request, StreamControl, StreamFrame, StreamId, Wire, WorkerUnreachable,
};
use terrace_tier_api::{
    AgentConfig, ErrorKind, JobId, ShuffleDescriptor, TierError, TierResult, WorkerId,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::listener::BoxRead;
use crate::security::{
    AUTH_BYTES, Credential, ExpectedServer, JobToken, TlsClient, tls_channel_binding,
};
use crate::writer::{FrameSender, spawn_writer};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Named in the handshake, for the server's logs.
    pub name: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_frame_bytes: usize,
    /// What to prove when the server challenges (see [`Credential`]).
    pub credential: Credential,
    /// Whom the client means to reach: it presents `credential` only to a
    /// server that states this identity. An address a peer supplied must
    /// name the server it is expected to be (see [`ExpectedServer`]).
    pub server: ExpectedServer,
    /// Set: connect over TLS, trusting the servers its CAs sign.
    pub tls: Option<TlsClient>,
    /// Set: the connection's liveness deadline (see [`Liveness`]). A
    /// connection waiting for a reply or a stream frame that hears nothing
    /// from its peer checks that the peer still answers a new connection's
    /// handshake, and fails every request and stream when it does not
    /// within this long of the silence starting: a hung peer (a paused
    /// process, a black-holed host) keeps TCP connections open and answers
    /// nothing, so waiting on the connection alone would wait for ever.
    pub liveness: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: "terrace-client".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            max_frame_bytes: terrace_proto::DEFAULT_MAX_FRAME_BYTES,
            credential: Credential::None,
            server: ExpectedServer::Any,
            tls: None,
            liveness: None,
        }
    }
}

impl ClientOptions {
    /// Options of an agent's connections: timeouts and frame size from
    /// `config`, TLS when it names a CA file; no credential yet.
    pub fn for_agent(config: &AgentConfig, name: impl Into<String>) -> TierResult<Self> {
        let tls = config
            .tls_ca_file
            .as_deref()
            .map(TlsClient::cached)
            .transpose()?;
        Ok(ClientOptions {
            name: name.into(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_frame_bytes: config.max_frame_size.as_usize(),
            credential: Credential::None,
            server: ExpectedServer::Any,
            tls,
            liveness: Some(config.liveness_timeout),
        })
    }

    /// These options for reaching `server` only.
    pub fn expecting(mut self, server: ExpectedServer) -> Self {
        self.server = server;
        self
    }

    /// These options presenting the job token of `descriptor` (none when the
    /// descriptor carries no token: the cluster has no secret).
    pub fn with_job_token(mut self, descriptor: &ShuffleDescriptor) -> TierResult<Self> {
        self.credential = if descriptor.token.is_empty() {
            Credential::None
        } else {
            let key = descriptor.key()?;
            let token = JobToken::from_hex(&descriptor.token)
                .map_err(|e| TierError::from(e).context(format!("shuffle descriptor of {key}")))?;
            Credential::Job {
                job: key.job.as_bytes().clone(),
                token,
            }
        };
        Ok(self)
    }
}

/// What a stream's receiver gets.
#[derive(Debug)]
pub enum StreamEvent {
    /// A `ReadData` (with its body), `SubpartitionEnd`, `SubpartitionRedirect`
    /// or `StreamError` frame, parsed.
    Frame(StreamFrame),
    /// A frame of the stream that does not parse (read data whose extents do
    /// not cover its body, a redirect without a worker id): the stream
    /// cannot be trusted further.
    Invalid(TierError),
    /// The connection is gone; no more frames will come.
    Lost(TierError),
}

pub type StreamReceiver = mpsc::UnboundedReceiver<StreamEvent>;

type ReplySender = oneshot::Sender<TierResult<(Message, Bytes)>>;

#[derive(Debug, Default)]
struct Routes {
    pending: HashMap<u64, ReplySender>,
    streams: HashMap<StreamId, mpsc::UnboundedSender<StreamEvent>>,
    /// Set once the connection is gone; every later call fails with it.
    failed: Option<TierError>,
    /// When the peer last showed progress: a frame received, or (when
    /// nothing was outstanding before) the first request or stream since.
    heard: Option<Instant>,
}

impl Routes {
    fn waiting(&self) -> bool {
        !self.pending.is_empty() || !self.streams.is_empty()
    }

    /// About to wait for something: the silence is counted from now when
    /// nothing was outstanding before.
    fn start_waiting(&mut self) {
        if !self.waiting() {
            self.heard = Some(clock::now());
        }
    }
}

#[derive(Debug)]
struct Inner {
    peer: String,
    sender: FrameSender,
    routes: Mutex<Routes>,
    next_id: AtomicU64,
    cancel: CancellationToken,
    request_timeout: Duration,
}

/// A connection to a master or worker. Cheap to clone; closed when the last
/// clone is dropped or [`Client::close`] is called.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A reply that has been asked for and not yet received.
#[derive(Debug)]
pub struct PendingReply {
    rx: oneshot::Receiver<TierResult<(Message, Bytes)>>,
    peer: String,
    timeout: Duration,
    /// To forget the request when its reply does not come in time.
    inner: std::sync::Weak<Inner>,
    request_id: u64,
}

/// A typed reply that has been asked for and not yet received.
#[derive(Debug)]
pub struct PendingCall<T> {
    pending: PendingReply,
    reply: std::marker::PhantomData<fn() -> T>,
}

impl<T: Wire> PendingCall<T> {
    /// Waits for the reply and parses it: an error reply is its error, a
    /// reply of another type or content is an error too.
    pub async fn wait(self) -> TierResult<T> {
        let (message, body) = self.pending.wait().await?;
        T::from_frame(message, body)
    }
}

impl PendingReply {
    /// Waits for the reply; an error reply becomes an error.
    pub async fn wait(self) -> TierResult<(Message, Bytes)> {
        match clock::timeout(self.timeout, self.rx).await {
            Err(_) => {
                if let Some(inner) = self.inner.upgrade() {
                    inner
                        .routes
                        .lock()
                        .expect("routes lock poisoned")
                        .pending
                        .remove(&self.request_id);
                }
                Err(TierError::unavailable(format!(
                    "no reply from {} within {:?}",
                    self.peer, self.timeout
                )))
            }
            Ok(Err(_)) => Err(TierError::unavailable(format!(
                "connection to {} closed",
                self.peer
            ))),
            Ok(Ok(reply)) => reply,
        }
    }
}

impl Client {
    /// Connects to `addr` (over TLS when configured), completes the version
    /// handshake and, when the server challenges, the authentication. With
    /// a liveness deadline, the handshake must come within it, and the
    /// connection is watched from then on (see [`Liveness`]).
    pub async fn connect(addr: &str, options: &ClientOptions) -> TierResult<Client> {
        let Some(deadline) = options.liveness else {
            return Client::open(addr, options).await;
        };
        let client = clock::timeout(deadline, Client::open(addr, options))
            .await
            .map_err(|_| {
                TierError::unavailable(format!(
                    "{addr} did not complete the handshake within {deadline:?} (the liveness deadline): taken for hung"
                ))
            })??;
        let liveness = Liveness::new(deadline, addr, options);
        tokio::spawn(liveness.watch(Arc::downgrade(&client.inner), client.inner.cancel.clone()));
        Ok(client)
    }

    /// [`Client::connect`] without the liveness watch.
    async fn open(addr: &str, options: &ClientOptions) -> TierResult<Client> {
        let stream = clock::timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::ConnectTimeout {
                addr: addr.to_string(),
                after: options.connect_timeout,
            })?
            .map_err(|source| ConnectError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::NoDelay {
                addr: addr.to_string(),
                source,
            })?;
        let cancel = CancellationToken::new();
        let (read, sender, channel) = match &options.tls {
            None => {
                let (read, write) = stream.into_split();
                (
                    Box::new(read) as BoxRead,
                    spawn_writer(write, cancel.clone()),
                    Vec::new(),
                )
            }
            Some(tls) => {
                let name = TlsClient::server_name(addr)?;
                let stream =
                    clock::timeout(options.connect_timeout, tls.connector.connect(name, stream))
                        .await
                        .map_err(|_| ConnectError::TlsTimeout {
                            addr: addr.to_string(),
                            after: options.connect_timeout,
                        })?
                        .map_err(|source| ConnectError::Tls {
                            addr: addr.to_string(),
                            source,
                        })?;
                let channel = tls_channel_binding(stream.get_ref().1)?;
                let (read, write) = tokio::io::split(stream);
                (
                    Box::new(read) as BoxRead,
                    spawn_writer(write, cancel.clone()),
                    channel,
                )
            }
        };
        let inner = Arc::new(Inner {
            peer: addr.to_string(),
            sender,
            routes: Mutex::new(Routes::default()),
            next_id: AtomicU64::new(1),
            cancel: cancel.clone(),
            request_timeout: options.request_timeout,
        });
        tokio::spawn(read_loop(
            Arc::downgrade(&inner),
            FrameReader::new(read, options.max_frame_bytes),
            cancel,
            Counted::open(addr),
        ));
        let client = Client { inner };
        // Servers refuse longer names; a name is for logs, so its tail may go.
        let mut name = options.name.clone();
        if name.len() > crate::server::MAX_CLIENT_NAME_BYTES {
            let mut end = crate::server::MAX_CLIENT_NAME_BYTES;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
        }
        let (reply, _) = client
            .request(|request_id| {
                Message::Handshake(pb::Handshake {
                    request_id,
                    protocol_version: PROTOCOL_VERSION,
                    client_name: name,
                })
            })
            .await
            .map_err(|e| e.context(format!("handshake with {addr}")))?;
        let (challenge, server) = match reply {
            Message::HandshakeOk(ok) if ok.protocol_version == PROTOCOL_VERSION => {
                (ok.auth_challenge, ok.server_identity)
            }
            other => {
                return Err(TierError::bad_input(format!(
                    "handshake with {addr}: unexpected reply {:?}",
                    other.message_type()
                )));
            }
        };
        let authenticated = client
            .authenticate(addr, &challenge, &server, &channel, options)
            .await;
        if let Err(e) = authenticated {
            client.close();
            return Err(e);
        }
        Ok(client)
    }

    /// Answers the challenge of the server that stated `server` as its
    /// identity, over a channel with exporter value `channel`, and checks the
    /// server's own proof. A client that holds a credential presents it only
    /// to the server it meant to reach (`options.server`). A server that does
    /// not challenge is accepted only by a client that has nothing to prove:
    /// one that holds a credential expects a cluster member, and such a
    /// server is not one.
    async fn authenticate(
        &self,
        addr: &str,
        challenge: &[u8],
        server: &str,
        channel: &[u8],
        options: &ClientOptions,
    ) -> TierResult<()> {
        let credential = &options.credential;
        if challenge.is_empty() {
            return match credential {
                Credential::None => Ok(()),
                _ => Err(TierError::permission_denied(format!(
                    "{addr} does not authenticate its peers (it has no cluster secret) but this client holds one: configure the same secret_file on every member of the cluster"
                ))),
            };
        }
        if challenge.len() != AUTH_BYTES {
            return Err(TierError::bad_input(format!(
                "handshake with {addr}: auth_challenge has {} bytes, not {AUTH_BYTES}",
                challenge.len()
            )));
        }
        if !credential.is_none() && !options.server.admits(server) {
            return Err(TierError::permission_denied(format!(
                "{addr} says it is {server:?} but this client meant to reach {}: not authenticating to it (an address that does not lead where it was said to)",
                options.server
            )));
        }
        let (answer, expected) = credential.answer(challenge, server, channel)?;
        let (reply, _) = self
            .request(|request_id| {
                Message::Authenticate(pb::Authenticate {
                    request_id,
                    ..answer
                })
            })
            .await
            .map_err(|e| e.context(format!("authenticate with {addr}")))?;
        let Message::Authenticated(reply) = reply else {
            return Err(TierError::bad_input(format!(
                "authenticate with {addr}: unexpected reply {:?}",
                reply.message_type()
            )));
        };
        match expected {
            Some(expected) if !expected.check(&reply.proof) => {
                Err(TierError::permission_denied(format!(
                    "{addr} did not prove it holds the cluster secret: it is not a member of this cluster"
                )))
            }
            _ => Ok(()),
        }
    }

    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// Whether `other` is a clone of this client (the same connection).
    pub fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Sends `request` and waits for its reply: the one typed call. The
    /// request id is assigned here; an error reply is returned as its error
    /// ([`TierError::from_wire`]); a reply of another type is an error
    /// naming both types.
    pub async fn call<R: Request>(&self, request: R) -> TierResult<R::Reply> {
        self.start_call(request)?.wait().await
    }

    /// Sends `request` (its body written straight from its chunks) and
    /// returns its pending reply, for callers that keep several requests in
    /// flight (pushes).
    pub fn start_call<R: Request>(&self, request: R) -> TierResult<PendingCall<R::Reply>> {
        let request_id = self.next_request_id();
        let (message, body) = request.into_frame(request_id);
        let pending = self.send_request(request_id, message, body.into_chunks())?;
        Ok(PendingCall {
            pending,
            reply: std::marker::PhantomData,
        })
    }

    /// Sends a control frame on an open read stream (no reply).
    pub fn send_stream(&self, control: impl Into<StreamControl>) -> TierResult<()> {
        self.send(control.into().into_message())
    }

    /// Whether the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.inner.cancel.is_cancelled() || self.inner.sender.is_closed()
    }

    pub fn next_request_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a raw request (built from a fresh request id) and returns the
    /// pending reply. For the connection layer (handshake, authentication)
    /// and tests that send hostile frames; everything else uses
    /// [`Client::call`].
    pub fn start_request(
        &self,
        build: impl FnOnce(u64) -> Message,
        body: Vec<Bytes>,
    ) -> TierResult<PendingReply> {
        let request_id = self.next_request_id();
        self.send_request(request_id, build(request_id), body)
    }

    fn send_request(
        &self,
        request_id: u64,
        message: Message,
        body: Vec<Bytes>,
    ) -> TierResult<PendingReply> {
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = self.inner.routes.lock().expect("routes lock poisoned");
            if let Some(err) = &routes.failed {
                return Err(err.clone());
            }
            routes.start_waiting();
            routes.pending.insert(request_id, tx);
        }
        if !self.inner.sender.send_chunks(message, body) {
            self.inner
                .routes
                .lock()
                .expect("routes lock poisoned")
                .pending
                .remove(&request_id);
            return Err(self.lost_error());
        }
        Ok(PendingReply {
            rx,
            peer: self.inner.peer.clone(),
            timeout: self.inner.request_timeout,
            inner: Arc::downgrade(&self.inner),
            request_id,
        })
    }

    /// Sends a raw request without a body and waits for its reply (see
    /// [`Client::start_request`]).
    pub async fn request(
        &self,
        build: impl FnOnce(u64) -> Message,
    ) -> TierResult<(Message, Bytes)> {
        self.start_request(build, Vec::new())?.wait().await
    }

    /// Sends one request over a fresh connection to the first of
    /// `addresses` (in order) that answers it; the last error when none does.
    /// For agents asking masters, any of which will do.
    pub async fn ask_first<R: Request + Clone>(
        addresses: &[String],
        options: &ClientOptions,
        request: R,
    ) -> TierResult<R::Reply> {
        let mut last = TierError::unavailable("no master configured");
        for address in addresses {
            let reply = async {
                let client = Client::connect(address, options).await?;
                let reply = client.call(request.clone()).await;
                client.close();
                reply
            }
            .await;
            match reply {
                Ok(reply) => return Ok(reply),
                Err(e) => last = e.context(format!("master {address}")),
            }
        }
        Err(last)
    }

    /// Tells the first of `masters` that answers that `worker` could not be
    /// reached by `job`'s producer or consumer (`WorkerUnreachable`): the
    /// master places none of the job's partitions there until the worker
    /// heartbeats again, and probes the worker itself. Best effort: logged
    /// when no master takes it.
    pub async fn report_unreachable(
        masters: &[String],
        options: &ClientOptions,
        job: &JobId,
        worker: &WorkerId,
        error: &TierError,
    ) {
        let report = WorkerUnreachable {
            worker: worker.clone(),
            error: error.message().to_string(),
            job: Some(job.clone()),
        };
        if let Err(e) = Client::ask_first(masters, options, report).await {
            tracing::debug!(worker = %worker, error = %e, "could not report an unreachable worker");
        }
    }

    /// Sends a raw frame that gets no reply (see [`Client::send_stream`]).
    pub fn send(&self, message: Message) -> TierResult<()> {
        if self.inner.sender.send(message, Bytes::new()) {
            Ok(())
        } else {
            Err(self.lost_error())
        }
    }

    /// Registers a receiver for the frames of `stream_id`.
    pub fn register_stream(&self, stream_id: StreamId) -> TierResult<StreamReceiver> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut routes = self.inner.routes.lock().expect("routes lock poisoned");
        if let Some(err) = &routes.failed {
            return Err(err.clone());
        }
        routes.start_waiting();
        routes.streams.insert(stream_id, tx);
        Ok(rx)
    }

    pub fn unregister_stream(&self, stream_id: StreamId) {
        self.inner
            .routes
            .lock()
            .expect("routes lock poisoned")
            .streams
            .remove(&stream_id);
    }

    /// Closes the connection; pending requests fail.
    pub fn close(&self) {
        self.inner.cancel.cancel();
    }

    fn lost_error(&self) -> TierError {
        self.inner
            .routes
            .lock()
            .expect("routes lock poisoned")
            .failed
            .clone()
            .unwrap_or_else(|| {
                TierError::unavailable(format!("connection to {} is closed", self.inner.peer))
            })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The error a peer's `ErrorReply` stands for: the one place that turns
/// error replies into [`TierError`]s.
fn reply_error(err: pb::ErrorReply) -> TierError {
    TierError::from_wire(err.code, err.detail, err.message)
}

/// Reads a frame; a body lands in a buffer of the shared pool.
async fn read_frame_pooled(
    reader: &mut FrameReader<BoxRead>,
) -> Result<Option<(Message, Bytes)>, terrace_proto::FrameError> {
    let Some(prefix) = reader.read_prefix().await? else {
        return Ok(None);
    };
    if prefix.body_len == 0 {
        return reader.read_rest(prefix).await.map(Some);
    }
    let buffer = crate::buffers::shared_pool().take(prefix.remaining());
    reader.read_rest_into(prefix, buffer).await.map(Some)
}

async fn read_loop(
    inner: std::sync::Weak<Inner>,
    mut reader: FrameReader<BoxRead>,
    cancel: CancellationToken,
    // Counted open until the loop ends: the connection is gone then.
    _counted: Counted,
) {
    let failure = loop {
        let frame = tokio::select! {
            frame = read_frame_pooled(&mut reader) => frame,
            _ = cancel.cancelled() => break TierError::closed("connection closed"),
        };
        let Some(inner) = inner.upgrade() else { return };
        let (message, body) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                break TierError::unavailable(format!("{} closed the connection", inner.peer));
            }
            Err(e) => {
                break TierError::with_source(
                    ErrorKind::Unavailable,
                    format!("reading from {}", inner.peer),
                    e,
                );
            }
        };
        let mut routes = inner.routes.lock().expect("routes lock poisoned");
        routes.heard = Some(clock::now());
        if let Some(stream_id) = StreamFrame::stream_id_of(&message) {
            if let Some(tx) = routes.streams.get(&stream_id) {
                let event = match StreamFrame::from_frame(message, body) {
                    Ok(frame) => StreamEvent::Frame(frame),
                    Err(e) => StreamEvent::Invalid(e),
                };
                let _ = tx.send(event);
            }
            continue;
        }
        let request_id = message.request_id();
        if let Message::ErrorReply(err) = message {
            if request_id == 0 {
                // A connection-level protocol error: the server closes the connection.
                break reply_error(err).context(format!("{} reported", inner.peer));
            }
            match routes.pending.remove(&request_id) {
                Some(tx) => {
                    let _ = tx.send(Err(reply_error(err)));
                }
                None => {
                    tracing::debug!(peer = %inner.peer, request_id, "error reply to no pending request")
                }
            }
            continue;
        }
        match routes.pending.remove(&request_id) {
            Some(tx) => {
                let _ = tx.send(Ok((message, body)));
            }
            None => tracing::debug!(peer = %inner.peer, request_id, "reply to no pending request"),
        }
    };
    if let Some(inner) = inner.upgrade() {
        fail(&inner, failure);
    }
    cancel.cancel();
}

/// Fails the connection: every pending request and open stream gets
/// `failure` (or the failure recorded first), and so does every later call.
fn fail(inner: &Inner, failure: TierError) {
    let mut routes = inner.routes.lock().expect("routes lock poisoned");
    let failure = routes.failed.get_or_insert(failure).clone();
    for (_, tx) in routes.pending.drain() {
        let _ = tx.send(Err(failure.clone()));
    }
    for (_, tx) in routes.streams.drain() {
        let _ = tx.send(StreamEvent::Lost(failure.clone()));
    }
    drop(routes);
    inner.cancel.cancel();
}

/// A connection's liveness deadline: progress, not the connection's state.
///
/// While the connection waits for something (a reply, a stream's frames)
/// and its peer has sent nothing for a fifth of the deadline, the peer is
/// asked to answer the protocol handshake on a new connection, and must
/// answer it before the deadline (counted from the start of the silence,
/// and at least half the deadline for the answer). A peer that is merely
/// busy (a full memory budget that stops it reading pushes, a stream
/// waiting for data nobody has written yet) answers and the connection
/// goes on; one that answers neither is treated as hung and the
/// connection fails with [`ErrorKind::Unavailable`], as if it had been
/// reset. A connection with nothing outstanding is never judged.
#[derive(Debug)]
struct Liveness {
    deadline: Duration,
    peer: String,
    /// How the side connection is made: the same TLS, no credential (a
    /// handshake proves nothing and asks nothing), no liveness of its own.
    probe: ClientOptions,
}

impl Liveness {
    fn new(deadline: Duration, peer: &str, options: &ClientOptions) -> Self {
        Liveness {
            deadline,
            peer: peer.to_string(),
            probe: ClientOptions {
                name: format!("{} (liveness)", options.name),
                connect_timeout: deadline,
                request_timeout: deadline,
                max_frame_bytes: options.max_frame_bytes,
                credential: Credential::None,
                server: ExpectedServer::Any,
                tls: options.tls.clone(),
                liveness: None,
            },
        }
    }

    fn tick(&self) -> Duration {
        (self.deadline / 5).max(Duration::from_millis(10))
    }

    /// Watches the connection until it is closed or judged hung.
    async fn watch(self, inner: std::sync::Weak<Inner>, cancel: CancellationToken) {
        let tick = self.tick();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = clock::sleep(tick) => {}
            }
            let Some(silent_since) = Self::silent_since(&inner) else {
                continue;
            };
            let silent = clock::elapsed(silent_since);
            if silent < tick {
                continue;
            }
            let budget = self.deadline.saturating_sub(silent).max(self.deadline / 2);
            let answered = tokio::select! {
                _ = cancel.cancelled() => return,
                answered = answers_handshake(&self.peer, &self.probe, budget) => answered,
            };
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let mut routes = strong.routes.lock().expect("routes lock poisoned");
            if answered {
                // Alive, with nothing to say yet: count the silence afresh.
                routes.heard = Some(clock::now());
                continue;
            }
            if routes.heard.is_some_and(|heard| heard > silent_since) || !routes.waiting() {
                // It spoke (or nothing waits any more) while we asked.
                continue;
            }
            drop(routes);
            let silent = clock::elapsed(silent_since);
            let error = TierError::unavailable(format!(
                "{} sent nothing for {:.1?} while requests or streams waited on it and did not answer the handshake of a new connection within {budget:?}: taken for hung (liveness deadline {:?})",
                self.peer, silent, self.deadline
            ));
            tracing::warn!(peer = %self.peer, silent_ms = silent.as_millis() as u64, "peer taken for hung: no progress and no handshake");
            fail(&strong, error);
            return;
        }
    }

    /// Since when the connection has waited without hearing from its peer
    /// (none: it waits for nothing, or is gone).
    fn silent_since(inner: &std::sync::Weak<Inner>) -> Option<Instant> {
        let inner = inner.upgrade()?;
        let routes = inner.routes.lock().expect("routes lock poisoned");
        if routes.failed.is_some() || !routes.waiting() {
            return None;
        }
        routes.heard
    }
}

/// Whether whatever listens at `address` completes the protocol handshake
/// (and the challenge, when it has a secret) within `timeout` on a new
/// connection made with `options`. An answer that refuses us (a TLS or
/// protocol mismatch, a connection limit) still shows a live process: only
/// silence, a refused connection or a reset count as no answer. A hung
/// process whose kernel still accepts connections does not answer.
pub async fn answers_handshake(address: &str, options: &ClientOptions, timeout: Duration) -> bool {
    let mut options = options.clone();
    options.connect_timeout = options.connect_timeout.min(timeout);
    options.request_timeout = options.request_timeout.min(timeout);
    match clock::timeout(timeout, Client::open(address, &options)).await {
        Ok(Ok(client)) => {
            client.close();
            true
        }
        Ok(Err(e)) => !matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Closed),
        Err(_) => false,
    }
}

/// Client connections this process opened, by the address they went to:
/// how many are open now and how many were ever opened (a benchmark's
/// reading of what agents cost; see [`connections_to`]).
static CONNECTIONS: Mutex<Option<std::collections::HashMap<String, (u64, u64)>>> = Mutex::new(None);

/// Counts one open connection to an address for as long as it lives.
struct Counted(String);

impl Counted {
    fn open(address: &str) -> Counted {
        let mut map = CONNECTIONS.lock().expect("connections lock poisoned");
        let entry = map
            .get_or_insert_with(Default::default)
            .entry(address.to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += 1;
        Counted(address.to_string())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut map = CONNECTIONS.lock().expect("connections lock poisoned");
        if let Some(entry) = map.as_mut().and_then(|m| m.get_mut(&self.0)) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }
}

/// Client connections of this process to `address` (as it was dialled):
/// open now, and opened since the process started.
pub fn connections_to(address: &str) -> (u64, u64) {
    CONNECTIONS
        .lock()
        .expect("connections lock poisoned")
        .as_ref()
        .and_then(|m| m.get(address).copied())
        .unwrap_or_default()
}
