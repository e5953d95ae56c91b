//! Stopping for a restart (SIGTERM to `terrace worker`, as a supervisor
//! sends it before starting the worker again on the same directories and
//! address). The worker drains before it stops, so that a rolling restart
//! costs no producer a re-run:
//!
//! 1. it takes no new partitions, answers every push with `split` (each
//!    producer goes on on another worker at its next push; the part here
//!    ends with a forward pointer, sealed and persisted), and tells its
//!    masters at once that it is restarting: they place nothing here and
//!    wait their `restart_grace` for it, not their `worker_timeout`;
//! 2. once every partition still open here is idle (nothing pushed to it
//!    for 500 ms: its producer is waiting for its own input, or has not
//!    pushed yet; active producers have split away by then), or after
//!    `server.shutdown_grace`, it takes no more pushes (a push then gets an
//!    unavailable error), lets those under way finish (at most 1 s), and
//!    keeps each open partition: its data flushed and synced, its index
//!    persisted as open. Once every master answered a heartbeat saying it
//!    is restarting (at most 2 s more), it stops as before: connections get
//!    `server.shutdown_grace` for their in-flight replies.
//!
//! After the restart it recovers its sealed partitions (split parts with
//! their forward pointers included) and the open ones it kept, and serves
//! them again; their producers reconnect and push on, once they checked
//! that the worker holds exactly what it acknowledged (see the producer
//! agent). Consumers whose
//! streams it cut, and those that could not reach it meanwhile, find it
//! listed as restarting by the masters and reconnect, resuming where they
//! were. A push refused or cut by the stop, or an open partition that
//! could not be kept (no data directory took its index), costs that
//! producer a re-run, as a crash would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use terrace_rpc::clock;
use terrace_tier_api::PartitionKey;

use crate::context::Shared;
use crate::store::PartitionState;

/// How often the drain looks whether partitions are still being written.
const POLL: Duration = Duration::from_millis(50);
/// An open partition whose bytes have not changed this long is idle: its
/// producer will not split away soon, so it is kept open instead.
const IDLE: Duration = Duration::from_millis(500);
/// How long pushes under way get to finish once no more are taken.
const PUSHES_SETTLE: Duration = Duration::from_secs(1);
/// How long the drain waits for the masters to hear that it is restarting.
const TELL_MASTERS: Duration = Duration::from_secs(2);

/// A `Restart` request from `peer`: the worker stops as on SIGTERM (a
/// `terrace worker` process drains first; see [`drain`]).
pub(crate) fn requested(shared: &Arc<Shared>, peer: &str) {
    tracing::warn!(worker = %shared.worker_id, %peer, "asked to restart");
    shared.stop.cancel();
}

/// Drains the worker for a restart; returns when it may stop.
pub(crate) async fn drain(shared: &Arc<Shared>) {
    if shared.decommission.is_started() || !shared.restart.start() {
        return;
    }
    let started = clock::now();
    let grace = shared.config.server.shutdown_grace;
    let open = written_partitions(shared);
    tracing::warn!(worker = %shared.worker_id, open_partitions = open, grace_ms = grace.as_millis() as u64,
        "stopping for a restart: no new partitions, producers split away; sealed partitions are served again after the restart");
    shared.heartbeat_now.notify_waiters();
    let deadline = started + grace;
    // Per open partition: its bytes when last looked at, and since when.
    let mut seen: HashMap<PartitionKey, (u64, Instant)> = HashMap::new();
    loop {
        let now = clock::now();
        let busy = shared
            .store
            .partitions()
            .iter()
            .filter(|p| p.state() == PartitionState::Open)
            .filter(|p| {
                let bytes = p.stored_bytes() + p.pending_bytes();
                let entry = seen.entry(p.key().clone()).or_insert((bytes, now));
                if entry.0 != bytes {
                    *entry = (bytes, now);
                }
                now.saturating_duration_since(entry.1) < IDLE
            })
            .count();
        if busy == 0 {
            break;
        }
        if now >= deadline {
            tracing::warn!(worker = %shared.worker_id, partitions = busy, grace_ms = grace.as_millis() as u64,
                "partitions still pushed to after server.shutdown_grace: kept open as they are");
            break;
        }
        clock::sleep(POLL).await;
    }
    // What is still open is kept: no push is taken from now on, those
    // under way finish, and each open partition is flushed, synced and
    // persisted open.
    shared.pushes_frozen.store(true, Ordering::Release);
    let settle = clock::now() + PUSHES_SETTLE;
    while shared
        .store
        .counters
        .pushes_in_flight
        .load(Ordering::Acquire)
        > 0
        && clock::now() < settle
    {
        clock::sleep(Duration::from_millis(5)).await;
    }
    let mut kept = 0;
    for partition in shared.store.partitions() {
        match partition.persist_open(shared.store.tiers()).await {
            Ok(true) => kept += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(partition = %partition.key(), error = %e,
                "cannot keep an open partition across the restart: it is lost (its producer re-runs)"),
        }
    }
    // The masters must know it is restarting before it goes silent.
    let told_by = clock::now() + TELL_MASTERS;
    while !masters_told(shared, started) && clock::now() < told_by {
        shared.heartbeat_now.notify_waiters();
        clock::sleep(POLL).await;
    }
    tracing::warn!(worker = %shared.worker_id, drained_ms = clock::elapsed(started).as_millis() as u64,
        open_partitions_kept = kept, "drained for the restart; stopping");
}

/// Partitions here still being written (not sealed, split away or failed).
fn written_partitions(shared: &Shared) -> usize {
    shared
        .store
        .partitions()
        .iter()
        .filter(|p| p.state() == PartitionState::Open)
        .count()
}

/// Whether every master that ever answered this worker answered a
/// heartbeat sent after `since` (which carried the restarting flag).
pub(crate) fn masters_told(shared: &Shared, since: std::time::Instant) -> bool {
    shared.config.master_addresses.iter().all(|master| {
        shared
            .masters
            .get(master)
            .is_none_or(|contact| contact.last_sent.is_some_and(|sent| sent > since))
    })
}
