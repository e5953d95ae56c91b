//! The admin server over real TCP on 127.0.0.1: routing, the credential,
//! readiness, the metrics content type, and the bounds a hostile client
//! meets (slow headers, oversized headers, bodies, too many connections).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use terrace_admin::prometheus_client::metrics::counter::Counter;
use terrace_admin::prometheus_client::registry::Registry;
use terrace_admin::{
    AdminApp, AdminConfig, AdminCredential, AdminHandle, AdminLimits, ApiError, ApiRequest,
    encode_metrics, start_with_limits,
};
use terrace_rpc::{ClusterSecret, clock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest any exchange may take before the test fails.
const BOUND: Duration = Duration::from_secs(5);

struct App {
    not_ready: Mutex<Option<String>>,
    registry: Registry,
    scrapes: Counter,
}

impl App {
    fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let scrapes = Counter::default();
        registry.register("test_scrapes", "Scrapes served", scrapes.clone());
        Arc::new(App {
            not_ready: Mutex::new(None),
            registry,
            scrapes,
        })
    }
}

impl AdminApp for App {
    fn ready(&self) -> Result<(), String> {
        match self.not_ready.lock().expect("lock").clone() {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    }

    fn metrics(&self, out: &mut String) -> std::fmt::Result {
        self.scrapes.inc();
        encode_metrics(out, &self.registry)
    }

    fn api(&self, request: &ApiRequest<'_>) -> Result<serde_json::Value, ApiError> {
        match request.segments()[..] {
            ["things"] => Ok(serde_json::json!({ "things": [1, 2], "job": request.param("job") })),
            ["things", id] if id.chars().all(|c| c.is_ascii_hexdigit()) => {
                Err(ApiError::NotFound(format!("no thing {id}")))
            }
            ["things", id] => Err(ApiError::BadRequest(format!("{id:?} is not hex"))),
            ["big"] => Ok(serde_json::json!({ "big": "x".repeat(1 << 20) })),
            _ => Err(ApiError::no_route(request)),
        }
    }
}

async fn serve(app: Arc<App>, credential: AdminCredential, limits: AdminLimits) -> AdminHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_with_limits(listener, app, credential, limits)
}

/// A reply as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Sends `raw` on a new connection and reads until the server closes it.
async fn exchange(handle: &AdminHandle, raw: &[u8]) -> Option<Reply> {
    let mut stream = TcpStream::connect(handle.local_addr())
        .await
        .expect("connect");
    stream.write_all(raw).await.expect("send");
    let mut bytes = Vec::new();
    clock::timeout(BOUND, stream.read_to_end(&mut bytes))
        .await
        .expect("the server answers and closes within the bound")
        .ok()?;
    let text = String::from_utf8(bytes).expect("UTF-8 reply");
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

async fn get(handle: &AdminHandle, path: &str, authorization: Option<&str>) -> Reply {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
    exchange(handle, raw.as_bytes())
        .await
        .unwrap_or_else(|| panic!("a reply to GET {path}"))
}

#[tokio::test]
async fn endpoints_answer_get_and_refuse_other_methods_and_paths() {
    let app = App::new();
    let admin = serve(
        Arc::clone(&app),
        AdminCredential::Open,
        AdminLimits::default(),
    )
    .await;

    let health = get(&admin, "/healthz", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(&admin, "/readyz", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    *app.not_ready.lock().expect("lock") = Some("draining:\nsecond line".into());
    let ready = get(&admin, "/readyz", None).await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "draining: second line\n")
    );
    let health = get(&admin, "/healthz", None).await;
    assert_eq!(health.status, 200, "health does not follow readiness");

    let metrics = get(&admin, "/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        metrics.body,
        "# HELP test_scrapes_total Scrapes served.\n# TYPE test_scrapes_total counter\ntest_scrapes_total 1\n"
    );

    let api = get(&admin, "/api/v1/things?job=ab", None).await;
    assert_eq!(api.status, 200);
    assert_eq!(api.header("content-type"), Some("application/json"));
    let document: serde_json::Value = serde_json::from_str(&api.body).expect("JSON");
    assert_eq!(
        document,
        serde_json::json!({ "things": [1, 2], "job": "ab" })
    );
    let missing = get(&admin, "/api/v1/things/ff", None).await;
    assert_eq!(missing.status, 404);
    let error: serde_json::Value = serde_json::from_str(&missing.body).expect("JSON");
    assert_eq!(error, serde_json::json!({ "error": "no thing ff" }));
    let bad = get(&admin, "/api/v1/things/zz", None).await;
    assert_eq!(bad.status, 400);
    let unknown = get(&admin, "/api/v1/nothing", None).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.body.contains("no API resource /api/v1/nothing"),
        "{}",
        unknown.body
    );

    // Replies far larger than the 8 KiB request-head bound go out whole.
    let big = get(&admin, "/api/v1/big", None).await;
    assert_eq!(big.status, 200);
    let document: serde_json::Value = serde_json::from_str(&big.body).expect("JSON");
    assert_eq!(document["big"].as_str().map(str::len), Some(1 << 20));

    for path in ["/", "/metrics/", "/api/v2/things", "/favicon.ico"] {
        assert_eq!(get(&admin, path, None).await.status, 404, "{path}");
    }
    for method in ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"] {
        let raw = format!(
            "{method} /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let reply = exchange(&admin, raw.as_bytes()).await.expect("a reply");
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET"), "{method}");
    }
    // A body is never read: refused, and the connection closed.
    let with_body = exchange(
        &admin,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .expect("a reply");
    assert_eq!(with_body.status, 400);
    admin.stop().await;
}

fn token_file(token: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "{token}").expect("write");
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    file
}

#[tokio::test]
async fn metrics_and_api_need_the_credential_health_and_readiness_do_not() {
    let secret = ClusterSecret::from_bytes(b"cluster secret of the test").expect("long");
    let token = "admin token of the test";
    let file = token_file(token);
    let with_token = AdminConfig {
        listen: None,
        token_file: Some(file.path().to_path_buf()),
    };
    for (credential, right, wrong) in [
        (
            AdminCredential::resolve(&with_token, Some(&secret)).expect("token"),
            format!("Bearer {token}"),
            "Bearer cluster secret of the test".to_string(),
        ),
        (
            AdminCredential::resolve(&AdminConfig::default(), Some(&secret)).expect("secret"),
            "Bearer cluster secret of the test".to_string(),
            format!("Bearer {token}"),
        ),
    ] {
        let what = format!("{credential:?}");
        let admin = serve(App::new(), credential, AdminLimits::default()).await;
        for path in ["/metrics", "/api/v1/things"] {
            for auth in [
                None,
                Some(wrong.as_str()),
                Some("Bearer"),
                Some(&right[7..]),
            ] {
                let reply = get(&admin, path, auth).await;
                assert_eq!(reply.status, 401, "{what}: {path} with {auth:?}");
                assert_eq!(
                    reply.header("www-authenticate"),
                    Some("Bearer realm=\"terrace\"")
                );
            }
            assert_eq!(
                get(&admin, path, Some(&right)).await.status,
                200,
                "{what}: {path}"
            );
        }
        for path in ["/healthz", "/readyz"] {
            assert_eq!(get(&admin, path, None).await.status, 200, "{what}: {path}");
        }
        // Unknown paths are 404 whatever the credential.
        assert_eq!(get(&admin, "/secret", None).await.status, 404);
        admin.stop().await;
    }
}

fn short_limits() -> AdminLimits {
    AdminLimits {
        header_read_timeout: Duration::from_millis(300),
        ..AdminLimits::default()
    }
}

#[tokio::test]
async fn a_slow_or_oversized_request_head_is_refused_within_its_bound() {
    let admin = serve(App::new(), AdminCredential::Open, short_limits()).await;

    // Slow loris: a request line and one header, then nothing.
    let started = clock::now();
    let mut stream = TcpStream::connect(admin.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("send");
    let mut bytes = Vec::new();
    clock::timeout(BOUND, stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes a stalled request")
        .ok();
    let took = clock::elapsed(started);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(" 200 "), "{text}");

    // An idle kept-alive connection is closed on the same bound.
    let mut stream = TcpStream::connect(admin.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("send");
    let mut bytes = Vec::new();
    clock::timeout(BOUND, stream.read_to_end(&mut bytes))
        .await
        .expect("an idle connection is closed")
        .ok();
    assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 200 OK"));

    // Headers past 8 KiB: 431, then closed.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let reply = exchange(&admin, big.as_bytes()).await;
    assert_eq!(reply.map(|r| r.status), Some(431));
    // Too many headers: refused too.
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    let reply = exchange(&admin, raw.as_bytes()).await;
    assert_eq!(reply.map(|r| r.status), Some(431));
    // And the server still serves.
    assert_eq!(get(&admin, "/healthz", None).await.status, 200);
    admin.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_stop_closes_the_rest() {
    let admin = serve(
        App::new(),
        AdminCredential::Open,
        AdminLimits {
            max_connections: 2,
            ..AdminLimits::default()
        },
    )
    .await;
    // Two connections that have each been answered once hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(admin.local_addr())
            .await
            .expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("send");
        let mut buf = [0u8; 256];
        let n = clock::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        held.push(stream);
    }
    // A third is closed unanswered.
    let refused = exchange(&admin, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(refused.is_none(), "{refused:?}");
    // A slot freed is taken again.
    drop(held.pop());
    let served = terrace_rpc::clock::timeout(BOUND, async {
        loop {
            let raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
            if let Some(reply) = exchange(&admin, raw).await {
                return reply;
            }
            clock::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("served once a slot is free");
    assert_eq!(served.status, 200);

    // Stop closes the idle connection still held, and the port.
    let address = admin.local_addr();
    clock::timeout(BOUND, admin.stop())
        .await
        .expect("stop returns within its grace");
    let mut stream = held.pop().expect("one held");
    let mut buf = [0u8; 16];
    let n = clock::timeout(BOUND, stream.read(&mut buf))
        .await
        .expect("closed at stop")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        TcpStream::connect(address).await.is_err(),
        "the port is closed"
    );
}
