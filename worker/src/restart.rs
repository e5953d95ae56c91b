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
//! 2. once no partition here holding data is still being written (or
//!    after `server.shutdown_grace`), it persists each partition created
//!    but not pushed to yet (its producer may push only much later) as
//!    open and empty, and once every master answered a heartbeat saying it
//!    is restarting (at most 2 s more), it stops as before: connections
//!    get `server.shutdown_grace` for their in-flight replies.
//!
//! After the restart it recovers its sealed partitions (split parts with
//! their forward pointers included) and its open empty ones, and serves
//! them again; a producer that had not pushed yet reconnects and pushes
//! (see the producer agent). Consumers whose
//! streams it cut, and those that could not reach it meanwhile, find it
//! listed as restarting by the masters and reconnect, resuming where they
//! were. A partition still being written when the grace ran out is lost,
//! as for a crash: its producer re-runs.

use std::sync::Arc;
use std::time::Duration;

use terrace_rpc::clock;

use crate::context::Shared;

/// How often the drain looks whether partitions are still being written.
const POLL: Duration = Duration::from_millis(50);
/// How long the drain waits for the masters to hear that it is restarting.
const TELL_MASTERS: Duration = Duration::from_secs(2);

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
    loop {
        let open = written_partitions(shared);
        if open == 0 {
            break;
        }
        if clock::now() >= deadline {
            tracing::error!(worker = %shared.worker_id, open_partitions = open, grace_ms = grace.as_millis() as u64,
                "partitions still being written after server.shutdown_grace: they are lost with the restart (their producers re-run)");
            break;
        }
        clock::sleep(POLL).await;
    }
    let mut kept = 0;
    for partition in shared.store.partitions() {
        match partition.persist_open_empty(shared.store.tiers()).await {
            Ok(true) => kept += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(partition = %partition.key(), error = %e,
                "cannot keep an empty open partition across the restart; its producer will place it again"),
        }
    }
    // The masters must know it is restarting before it goes silent.
    let told_by = clock::now() + TELL_MASTERS;
    while !masters_told(shared, started) && clock::now() < told_by {
        shared.heartbeat_now.notify_waiters();
        clock::sleep(POLL).await;
    }
    tracing::warn!(worker = %shared.worker_id, drained_ms = clock::elapsed(started).as_millis() as u64,
        empty_open_partitions_kept = kept, "drained for the restart; stopping");
}

/// Partitions here still being written that hold data (not sealed, split
/// away or failed; one not pushed to yet is kept open instead).
fn written_partitions(shared: &Shared) -> usize {
    shared
        .store
        .partitions()
        .iter()
        .filter(|p| {
            p.state() == crate::store::PartitionState::Open
                && (p.stored_bytes() > 0 || p.pending_bytes() > 0)
        })
        .count()
}

/// Whether every master that ever answered this worker answered a
/// heartbeat sent after `since` (which carried the restarting flag).
fn masters_told(shared: &Shared, since: std::time::Instant) -> bool {
    shared.config.master_addresses.iter().all(|master| {
        shared
            .masters
            .get(master)
            .is_none_or(|contact| contact.last_sent.is_some_and(|sent| sent > since))
    })
}
