//! Client timeouts on paused time (tokio's `test-util`): a peer that never
//! answers costs the test no real time, and the error comes exactly at the
//! configured timeout on the one clock.

use std::time::Duration;

use terrace_proto::{FrameReader, Message, pb};
use terrace_rpc::{Client, ClientOptions, accept_handshake, clock, spawn_writer};
use terrace_tier_api::ErrorKind;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A server that completes the handshake, then reads requests and answers
/// none; returns how many it read once the client has gone.
async fn silent_server() -> (String, tokio::task::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, write) = stream.into_split();
        let mut reader = FrameReader::new(read, 1 << 20);
        let sender = spawn_writer(write, CancellationToken::new());
        accept_handshake(&mut reader, &sender, "silent", "worker silent", &[])
            .await
            .expect("handshake");
        let mut read = 0;
        while let Ok(Some(_)) = reader.read_frame().await {
            read += 1;
        }
        read
    });
    (address, task)
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_reply_fails_exactly_at_the_request_timeout() {
    let (address, server) = silent_server().await;
    let options = ClientOptions {
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let client = Client::connect(&address, &options).await.expect("connect");
    let started = clock::now();
    let err = client
        .request(|request_id| Message::WorkerStats(pb::WorkerStats { request_id }))
        .await
        .expect_err("no reply comes");
    assert_eq!(clock::elapsed(started), Duration::from_secs(30));
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.message(), format!("no reply from {address} within 30s"));
    // The connection stays usable: a second request times out the same way.
    let started = clock::now();
    client
        .request(|request_id| Message::WorkerStats(pb::WorkerStats { request_id }))
        .await
        .expect_err("no reply comes");
    assert_eq!(clock::elapsed(started), Duration::from_secs(30));
    client.close();
    assert_eq!(
        server.await.expect("server task"),
        2,
        "both requests arrived"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_never_comes_fails_the_connect_at_the_request_timeout() {
    // Accepts the TCP connection and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        std::future::pending::<()>().await;
        drop(stream);
    });
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let started = clock::now();
    let err = Client::connect(&address, &options)
        .await
        .expect_err("no handshake reply");
    // The TCP connect is bounded by connect_timeout; the handshake, a
    // request, by request_timeout.
    assert_eq!(clock::elapsed(started), Duration::from_secs(30));
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        err.message()
            .starts_with(&format!("handshake with {address}")),
        "{err}"
    );
    server.abort();
}
