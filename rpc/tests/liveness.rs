//! The liveness deadline on real sockets and real time: a peer that keeps
//! its connections open and answers nothing (a paused process: its kernel
//! still accepts connections) fails what waits on it within the deadline,
//! while a peer that is slow to reply but answers a new connection's
//! handshake is left alone, however long it takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use terrace_proto::{FrameReader, Message, pb};
use terrace_rpc::{Client, ClientOptions, StreamEvent, accept_handshake, clock, spawn_writer};
use terrace_tier_api::ErrorKind;
use terrace_tier_api::protocol::{Ack, StreamId, Wire};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const LIVENESS: Duration = Duration::from_millis(1000);

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(60),
        liveness: Some(LIVENESS),
        ..ClientOptions::default()
    }
}

/// A peer that completes the handshake of its first connection, then reads
/// and answers nothing, and never accepts another connection (the kernel
/// still completes their TCP handshakes from the listen backlog): a
/// paused process. The listener stays open until `stop`.
async fn hung_peer(stop: CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, write) = stream.into_split();
        let mut reader = FrameReader::new(read, 1 << 20);
        let sender = spawn_writer(write, CancellationToken::new());
        accept_handshake(&mut reader, &sender, "hung", "worker hung", &[])
            .await
            .expect("handshake");
        // Paused: holds the connection and the listener, reads nothing.
        stop.cancelled().await;
        drop((reader, sender, listener));
    });
    address
}

/// A peer that answers every connection's handshake at once and every
/// request `delay` later; counts the connections it accepted.
async fn slow_peer(delay: Duration, stop: CancellationToken) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted.expect("accept"),
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (read, write) = stream.into_split();
                let mut reader = FrameReader::new(read, 1 << 20);
                let sender = spawn_writer(write, CancellationToken::new());
                if accept_handshake(&mut reader, &sender, "slow", "worker slow", &[])
                    .await
                    .is_err()
                {
                    return;
                }
                while let Ok(Some((message, _))) = reader.read_frame().await {
                    let request_id = message.request_id();
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        clock::sleep(delay).await;
                        sender.send(Ack.into_frame(request_id).0, bytes::Bytes::new());
                    });
                }
            });
        }
    });
    (address, accepted)
}

fn stats(request_id: u64) -> Message {
    Message::WorkerStats(pb::WorkerStats { request_id })
}

#[tokio::test]
async fn a_hung_peer_fails_waiting_requests_and_streams_within_the_liveness_deadline() {
    let stop = CancellationToken::new();
    let address = hung_peer(stop.clone()).await;
    let client = Client::connect(&address, &options())
        .await
        .expect("connect");

    // Nothing outstanding: an idle connection is never judged.
    clock::sleep(LIVENESS * 2).await;
    assert!(!client.is_closed(), "an idle connection was taken for hung");

    let mut stream = client.register_stream(StreamId(7)).expect("stream");
    let started = clock::now();
    let err = client.request(stats).await.expect_err("no reply comes");
    let waited = clock::elapsed(started);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("taken for hung"), "{err}");
    assert!(err.message().contains(&address), "{err}");
    // A fifth of the deadline of silence, then at most the rest of it for
    // the handshake, checked every fifth: well before the request timeout.
    assert!(
        waited >= LIVENESS && waited < LIVENESS * 2,
        "failed after {waited:?} (deadline {LIVENESS:?})"
    );
    match stream.recv().await {
        Some(StreamEvent::Lost(e)) => assert_eq!(e.message(), err.message()),
        other => panic!("the stream was not told: {other:?}"),
    }
    assert!(client.is_closed());
    let again = client.request(stats).await.expect_err("closed");
    assert_eq!(again.message(), err.message());

    // A new connection's handshake is bounded by the deadline too.
    let started = clock::now();
    let err = Client::connect(&address, &options())
        .await
        .expect_err("no handshake comes");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let waited = clock::elapsed(started);
    assert!(
        waited >= LIVENESS && waited < LIVENESS * 2,
        "connect failed after {waited:?}"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_slow_peer_that_answers_handshakes_is_not_taken_for_hung() {
    let stop = CancellationToken::new();
    let delay = LIVENESS * 3;
    let (address, accepted) = slow_peer(delay, stop.clone()).await;
    let client = Client::connect(&address, &options())
        .await
        .expect("connect");
    let started = clock::now();
    client
        .request(stats)
        .await
        .expect("a slow reply still comes");
    assert!(clock::elapsed(started) >= delay);
    assert!(!client.is_closed());
    // The watch asked the peer on side connections while it waited.
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "no side connection was opened: the silence was never checked"
    );
    client.close();
    stop.cancel();
}
