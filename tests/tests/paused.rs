//! A worker and a master in one process on paused time (tokio's
//! `test-util`): the worker's retries of an absent master and the master's
//! worker timeout, advanced by the test instead of waited for.

use std::time::Duration;

use terrace_master::MasterConfig;
use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions, clock};
use terrace_tests::logs;
use terrace_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn listed(master: &str) -> Option<pb::WorkerList> {
    let client = Client::connect(master, &ClientOptions::default())
        .await
        .ok()?;
    let reply = client
        .request(|request_id| Message::ListWorkers(pb::ListWorkers { request_id }))
        .await;
    client.close();
    match reply {
        Ok((Message::WorkerList(list), _)) => Some(list),
        other => panic!("expected a worker list, got {other:?}"),
    }
}

/// Polls the master's list every 100 ms of virtual time (at most `within`)
/// until `check` holds; returns the virtual time it took.
async fn until_listed(
    master: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&pb::WorkerList) -> bool,
) -> Duration {
    let started = clock::now();
    loop {
        if listed(master).await.is_some_and(|l| check(&l)) {
            return clock::elapsed(started);
        }
        assert!(clock::elapsed(started) < within, "{what} within {within:?}");
        clock::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_retries_an_absent_master_every_heartbeat_and_is_lost_a_timeout_after_it_stops() {
    let _logs = logs::capture();
    let master_address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        probe.local_addr().expect("address").to_string()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let heartbeat = Duration::from_secs(2);
    let worker = terrace_worker::start(WorkerConfig {
        listen: "127.0.0.1:0".into(),
        data_dirs: vec![dir.path().join("data")],
        master_addresses: vec![master_address.clone()],
        heartbeat_interval: heartbeat,
        ..WorkerConfig::default()
    })
    .await
    .expect("worker starts");

    // The master is absent for a minute of the worker's retries, then starts.
    tokio::time::advance(Duration::from_secs(60)).await;
    let listener = TcpListener::bind(&master_address)
        .await
        .expect("bind the master's address");
    let shutdown = CancellationToken::new();
    let worker_timeout = Duration::from_secs(10);
    let master = tokio::spawn(terrace_master::run(
        MasterConfig {
            worker_timeout,
            ..MasterConfig::default()
        },
        listener,
        shutdown.clone(),
    ));
    let took = until_listed(
        &master_address,
        Duration::from_secs(30),
        "the worker registers",
        |l| l.workers.len() == 1,
    )
    .await;
    // Within one heartbeat interval (and one 100 ms look at the list).
    assert!(
        took <= heartbeat + Duration::from_millis(100),
        "the worker found the master {took:?} after it started; it retries every {heartbeat:?}"
    );

    // The worker stops: its heartbeats stop, and the master drops it a worker
    // timeout after the last one (its sweeps look every second or so).
    worker.stop().await.expect("the worker stops cleanly");
    let stopped = clock::now();
    let gone = until_listed(
        &master_address,
        Duration::from_secs(60),
        "the worker is dropped",
        |l| l.workers.is_empty(),
    )
    .await;
    assert!(
        gone > worker_timeout - heartbeat && gone <= worker_timeout + Duration::from_millis(200),
        "dropped {gone:?} after the worker stopped (timeout {worker_timeout:?}, heartbeat {heartbeat:?})"
    );
    assert!(clock::elapsed(stopped) >= gone);
    shutdown.cancel();
    master
        .await
        .expect("master task")
        .expect("the master ran cleanly");
}
