//! The HTTP side: accept loop, per-connection bounds, routing and the
//! credential check. Every request is answered from the [`AdminApp`].
//!
//! What a client may cost the server is bounded:
//! - at most [`AdminLimits::max_connections`] connections at once; one more
//!   is closed at once, unanswered;
//! - a request's line and headers must arrive within
//!   [`AdminLimits::header_read_timeout`] (also the longest a kept-alive
//!   connection may sit idle between requests) and fit in
//!   [`AdminLimits::max_header_bytes`] (431 past it), in at most
//!   [`AdminLimits::max_headers`] headers;
//! - no request body is read: a request that announces one gets 400 and the
//!   connection is closed;
//! - a connection lives at most [`AdminLimits::connection_lifetime`], then
//!   finishes the request in hand and is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use terrace_rpc::clock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AdminApp, ApiError, ApiRequest};
use crate::auth::AdminCredential;
use crate::error::AdminError;

/// `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Bounds on what clients may make the admin server hold. The defaults suit
/// a Prometheus server, a load balancer's probes and a few operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections open at once; one more is closed unanswered.
    pub max_connections: usize,
    /// Time a request's line and headers have to arrive once the server
    /// waits for them (so also the longest idle time between two requests
    /// of a kept-alive connection); then the connection is closed.
    pub header_read_timeout: Duration,
    /// Largest request line plus headers, in bytes (431 past it). At least
    /// 8 KiB (the HTTP library's smallest read buffer).
    pub max_header_bytes: usize,
    /// Most headers in one request (431 past it).
    pub max_headers: usize,
    /// Longest a connection lives: then it finishes the request in hand and
    /// is closed (a client reconnects).
    pub connection_lifetime: Duration,
    /// How long [`AdminHandle::stop`] lets open connections finish their
    /// request before they are dropped.
    pub stop_grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_headers: 32,
            connection_lifetime: Duration::from_secs(120),
            stop_grace: Duration::from_secs(2),
        }
    }
}

/// Smallest `max_header_bytes` the HTTP library accepts.
const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Pause after a failed accept (out of file descriptors), so the loop does
/// not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the admin server's listener to `address` (`admin.listen`).
pub async fn bind(address: &str) -> Result<TcpListener, AdminError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AdminError::Bind {
            address: address.to_string(),
            source,
        })
}

/// A running admin server. [`AdminHandle::stop`] stops it and waits for it;
/// dropping the handle stops it without waiting.
#[derive(Debug)]
pub struct AdminHandle {
    address: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, lets open connections finish the request in hand
    /// (at most [`AdminLimits::stop_grace`]) and returns when the server has
    /// stopped. A service calls it last in its shutdown, so that its health
    /// and metrics stay visible while it drains.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the admin HTTP server's task failed");
            }
        }
        tracing::info!(address = %self.address, "admin HTTP server stopped");
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts serving `app` on `listener` with the default [`AdminLimits`].
pub fn start(
    listener: TcpListener,
    app: Arc<dyn AdminApp>,
    credential: AdminCredential,
) -> AdminHandle {
    start_with_limits(listener, app, credential, AdminLimits::default())
}

/// Starts serving `app` on `listener` under `limits`. Must be called
/// within a tokio runtime. Logs a warning when the address is not loopback
/// and there is no credential.
pub fn start_with_limits(
    listener: TcpListener,
    app: Arc<dyn AdminApp>,
    credential: AdminCredential,
    limits: AdminLimits,
) -> AdminHandle {
    let address = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if !address.ip().is_loopback() && credential.is_open() {
        tracing::warn!(%address,
            "the admin HTTP server is not on loopback and has no credential (admin.token_file or a cluster secret): anyone who reaches it can read its metrics and API");
    }
    tracing::info!(%address, credential = credential.describe(), "admin HTTP server listening");
    let stop = CancellationToken::new();
    let limits = AdminLimits {
        max_header_bytes: limits.max_header_bytes.max(MIN_HEADER_BYTES),
        max_connections: limits.max_connections.max(1),
        ..limits
    };
    let server = Server {
        app,
        credential,
        limits,
    };
    let task = tokio::spawn(accept_loop(listener, Arc::new(server), stop.clone()));
    AdminHandle {
        address,
        stop,
        task: Some(task),
    }
}

struct Server {
    app: Arc<dyn AdminApp>,
    credential: AdminCredential,
    /// With `max_header_bytes` at least what the HTTP library takes.
    limits: AdminLimits,
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(server.limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!(%peer, limit = server.limits.max_connections,
                        "admin connection refused: too many open");
                    continue;
                };
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    Arc::clone(&server),
                    slot,
                    stop.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin HTTP server cannot accept a connection");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = clock::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    connections.close();
    // Each connection stops on `stop` within the grace; this bound is a backstop.
    let grace = server.limits.stop_grace + Duration::from_millis(100);
    if clock::timeout(grace, connections.wait()).await.is_err() {
        tracing::debug!("admin connections still open at stop are dropped");
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    server: Arc<Server>,
    _slot: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let limits = &server.limits;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .half_close(false);
    let service = {
        let server = Arc::clone(&server);
        hyper::service::service_fn(move |request| {
            let server = Arc::clone(&server);
            async move { Ok::<_, Infallible>(server.answer(&request)) }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection closed");
            }
            return;
        }
        _ = stop.cancelled() => {}
        _ = clock::sleep(limits.connection_lifetime) => {}
    }
    connection.as_mut().graceful_shutdown();
    match clock::timeout(limits.stop_grace, connection).await {
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin connection closed"),
        Ok(Ok(())) => {}
        Err(_) => {
            tracing::debug!(%peer, "admin connection dropped: its request did not finish in time")
        }
    }
}

/// Where a path leads.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Ready,
    Metrics,
    /// `/api/v1/{rest}`.
    Api(&'a str),
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Option<Self> {
        match path {
            "/healthz" => Some(Route::Health),
            "/readyz" => Some(Route::Ready),
            "/metrics" => Some(Route::Metrics),
            _ => path.strip_prefix("/api/v1/").map(Route::Api),
        }
    }

    /// Whether the route needs the admin credential.
    fn protected(&self) -> bool {
        matches!(self, Route::Metrics | Route::Api(_))
    }
}

impl Server {
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(route) = Route::of(request.uri().path()) else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        if request.method() != Method::GET {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        if !request.body().is_end_stream() {
            // The body is never read: close rather than drain it.
            let mut response = text(StatusCode::BAD_REQUEST, "a GET request has no body\n");
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        if route.protected() {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            if !self.credential.admits(authorization) {
                let mut response = text(
                    StatusCode::UNAUTHORIZED,
                    "this endpoint needs the admin credential: Authorization: Bearer <admin token or cluster secret>\n",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"terrace\""),
                );
                return response;
            }
        }
        match route {
            Route::Health => text(StatusCode::OK, "ok\n"),
            Route::Ready => match self.app.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(reason) => {
                    // One line, whatever the service said.
                    let line: String = reason
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    text(StatusCode::SERVICE_UNAVAILABLE, format!("{line}\n"))
                }
            },
            Route::Metrics => {
                let mut out = String::with_capacity(16 * 1024);
                match self.app.metrics(&mut out) {
                    Ok(()) => with_type(StatusCode::OK, METRICS_CONTENT_TYPE, out),
                    Err(_) => {
                        tracing::warn!("the service could not encode its metrics");
                        text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "metrics could not be encoded\n",
                        )
                    }
                }
            }
            Route::Api(path) => {
                let api = ApiRequest::new(path, request.uri().query());
                let (status, document) = match self.app.api(&api) {
                    Ok(document) => (StatusCode::OK, document),
                    Err(e) => {
                        let status = match e {
                            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
                            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
                        };
                        (status, serde_json::json!({ "error": e.to_string() }))
                    }
                };
                let mut body = serde_json::to_string_pretty(&document)
                    .expect("a serde_json::Value always encodes");
                body.push('\n');
                with_type(status, "application/json", body)
            }
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/healthz"), Some(Route::Health));
        assert_eq!(Route::of("/readyz"), Some(Route::Ready));
        assert_eq!(Route::of("/metrics"), Some(Route::Metrics));
        assert_eq!(Route::of("/api/v1/jobs"), Some(Route::Api("jobs")));
        assert_eq!(Route::of("/api/v1/"), Some(Route::Api("")));
        for unknown in ["/", "/healthz/", "/metricsx", "/api/v1", "/api/v2/jobs"] {
            assert_eq!(Route::of(unknown), None, "{unknown}");
        }
        assert!(Route::Metrics.protected() && Route::Api("x").protected());
        assert!(!Route::Health.protected() && !Route::Ready.protected());
    }
}
