//! Leaving the cluster. A decommissioning worker takes no new partitions,
//! answers every push with `split` so producers go on elsewhere at their next
//! push, tells its masters at once (they stop placing on it), and keeps
//! serving readers. It stops itself, in order, once it holds no partition,
//! or after `decommission_timeout` with whatever is left.
//!
//! With an object store, it does not wait for its sealed partitions to be
//! released: it hands each one over to another worker. The partition is
//! migrated to the store, a master picks an adopter, the adopter copies its
//! objects under its own prefix and serves it (`AdoptPartition`). Readers
//! then find it there: a partition's first part through the masters (the
//! adopter reports it as relocated, and this worker waits until the masters
//! locate it there), a later part of a split chain through the forward
//! pointer of the part before it, which every worker is asked to move
//! (`MoveForward`). Readers streaming from this worker finish first; then
//! its copy is deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use terrace_rpc::clock;
use terrace_rpc::{Client, ServerIdentity};
use terrace_tier_api::protocol::{
    AdoptPartition, AllocatePartition, ListWorkers, LocatePartition, MoveForward, WorkerAt,
};
use terrace_tier_api::{PartitionKey, TierError, TierResult, WorkerId};
use tokio::task::JoinSet;

use crate::context::Shared;

/// How often the worker looks whether its partitions are all gone.
const POLL: Duration = Duration::from_millis(200);

/// Starts decommissioning, asked by `peer` (a `Decommission` request); a
/// second request changes nothing.
pub(crate) fn start(shared: &Arc<Shared>, peer: &str) {
    if shared.decommission.start() {
        let partitions = shared.store.partition_count();
        tracing::warn!(worker = %shared.worker_id, peer = %peer, partitions,
            timeout_s = shared.config.decommission_timeout.as_secs(),
            "decommission started: no new partitions; exiting once every partition is released or handed over");
        shared.heartbeat_now.notify_waiters();
        tokio::spawn(watch(Arc::clone(shared)));
    }
}

/// Between rounds of handovers that failed (no adopter, store down).
const HANDOFF_RETRY: Duration = Duration::from_secs(5);
/// Most adopters tried for one partition in one round.
const ADOPTER_ATTEMPTS: usize = 3;
/// How long a leaving worker waits for its queued object deletions.
const DELETIONS_WAIT: Duration = Duration::from_secs(60);
/// How long the masters get to learn where a handed-over first part is.
const LOCATE_WAIT: Duration = Duration::from_secs(15);

/// Stops the worker once it holds nothing, or at the timeout.
async fn watch(shared: Arc<Shared>) {
    let deadline = clock::now() + shared.config.decommission_timeout;
    let mut next_handoff = clock::now();
    let mut warned: HashSet<PartitionKey> = HashSet::new();
    // Handed-over partitions whose readers here have not finished yet.
    let mut finishing: JoinSet<()> = JoinSet::new();
    loop {
        while finishing.try_join_next().is_some() {}
        let due = shared.store.tiers().object.is_some() && clock::now() >= next_handoff;
        if due && !hand_off_sealed(&shared, deadline, &mut warned, &mut finishing).await {
            next_handoff = clock::now() + HANDOFF_RETRY;
        }
        let left = shared.store.partition_count() + finishing.len();
        if left == 0 {
            tracing::warn!(worker = %shared.worker_id, "decommission done: every partition released or handed over; stopping");
            break;
        }
        if clock::now() >= deadline {
            tracing::error!(worker = %shared.worker_id, partitions = left,
                timeout_s = shared.config.decommission_timeout.as_secs(),
                "decommission timed out with partitions left; stopping anyway (their readers get partition-not-found)");
            break;
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = clock::sleep(POLL) => {}
        }
    }
    // Past the deadline these delete at once.
    while finishing.join_next().await.is_some() {}
    // Objects are deleted in the background; a worker leaving for good
    // deletes what is still queued before it goes (bounded: a hung store
    // does not keep it).
    match clock::timeout(DELETIONS_WAIT, shared.store.delete_queued_now()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(worker = %shared.worker_id, error = %e, "objects of released partitions are left in the store")
        }
        Err(_) => {
            tracing::warn!(worker = %shared.worker_id, wait_s = DELETIONS_WAIT.as_secs(), "objects of released partitions are left in the store: deleting them took too long")
        }
    }
    shared.stop.cancel();
}

/// Hands over every sealed partition, one at a time; false if any failed
/// (it is tried again later, and served here meanwhile).
async fn hand_off_sealed(
    shared: &Arc<Shared>,
    deadline: Instant,
    warned: &mut HashSet<PartitionKey>,
    finishing: &mut JoinSet<()>,
) -> bool {
    let mut all = true;
    // Keys, not partitions: a reference held here would look like a reader
    // to `Store::hand_off`.
    let sealed: Vec<PartitionKey> = shared
        .store
        .partitions()
        .iter()
        .filter(|p| p.is_sealed())
        .map(|p| p.key().clone())
        .collect();
    for key in sealed {
        if shared.stop.is_cancelled() {
            break;
        }
        match hand_off(shared, &key, deadline, finishing).await {
            Ok(to) => {
                shared
                    .store
                    .counters
                    .handovers
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(partition = %key, %to, "handed over");
            }
            Err(e) => {
                all = false;
                if warned.insert(key.clone()) {
                    tracing::warn!(partition = %key, error = %e,
                        "cannot hand the partition over yet; serving it here and trying again");
                } else {
                    tracing::debug!(partition = %key, error = %e, "handover failed again");
                }
            }
        }
    }
    all
}

/// Moves one sealed partition to another worker through the object store;
/// returns the adopter's address. This worker's copy goes once its readers
/// finish (a task in `finishing`).
async fn hand_off(
    shared: &Arc<Shared>,
    key: &PartitionKey,
    deadline: Instant,
    finishing: &mut JoinSet<()>,
) -> TierResult<String> {
    let partition = shared.store.get(key)?;
    let tiers = partition.tier_bytes();
    if tiers.local > 0 || tiers.memory > 0 {
        shared.store.migrate(&partition).await?;
    }
    let index = partition.handoff_index()?;
    let options = shared.peer_options(ServerIdentity::Master);
    let masters = &shared.config.master_addresses;
    let this_worker = WorkerId::new(shared.worker_id.clone())?;
    // Not this worker, nor the one holding the next part.
    let mut exclude = vec![this_worker.clone()];
    exclude.extend(
        partition
            .forward()
            .and_then(|f| WorkerId::new(f.worker_id).ok()),
    );
    let mut last = TierError::unavailable("no adopter tried");
    let mut adopter = None;
    for _ in 0..ADOPTER_ATTEMPTS {
        let allocate = AllocatePartition {
            key: key.clone(),
            num_subpartitions: partition.meta().num_subpartitions,
            exclude: exclude.clone(),
            relocated_from: None,
        };
        let placed = Client::ask_first(masters, &options, allocate).await?.worker;
        let adopted = async {
            // The adopter is one a master placed: it must prove it is that worker.
            let to = shared.peer_options(ServerIdentity::Worker(placed.id.to_string()));
            let client = Client::connect(&placed.address, &to).await?;
            let reply = client
                .call(AdoptPartition {
                    key: key.clone(),
                    from: this_worker.clone(),
                    index: index.clone().into(),
                })
                .await;
            client.close();
            reply.map(drop)
        }
        .await;
        match adopted {
            Ok(()) => {
                adopter = Some(placed);
                break;
            }
            Err(e) => {
                last = e.context(format!("adopter {}", placed.address));
                exclude.push(placed.id);
            }
        }
    }
    let Some(adopter) = adopter else {
        return Err(last);
    };
    let continuation = partition.meta().continuation;
    drop(partition);
    if continuation {
        move_forward_pointers(shared, key, &this_worker, &adopter).await;
    } else {
        wait_until_located(shared, key, &adopter).await;
    }
    let partition = shared.store.take_for_hand_off(key)?;
    let readers_wait = deadline.saturating_duration_since(clock::now());
    let store = Arc::clone(&shared.store);
    finishing.spawn(async move {
        let key = partition.key().clone();
        if let Err(e) = store.finish_hand_off(partition, readers_wait).await {
            tracing::error!(partition = %key, error = %e,
                "deleting the handed-over copy failed; it stays until this worker's data is cleaned");
        }
    });
    Ok(adopter.address)
}

/// Asks every live worker to point forward pointers naming this worker for
/// `key` at the adopter. Best effort: a worker that misses it leaves its
/// readers to fail on this part, and the engine reruns the producer.
pub(crate) async fn move_forward_pointers(
    shared: &Arc<Shared>,
    key: &PartitionKey,
    this_worker: &WorkerId,
    adopter: &WorkerAt,
) {
    let options = shared.peer_options(ServerIdentity::Master);
    let listed = Client::ask_first(&shared.config.master_addresses, &options, ListWorkers).await;
    let workers = match listed {
        Ok(list) => list.workers,
        Err(e) => {
            tracing::warn!(partition = %key, error = %e,
                "cannot list workers to move forward pointers");
            return;
        }
    };
    for worker in workers.into_iter().map(|w| w.worker) {
        if worker.id == *this_worker || worker.id == adopter.id {
            continue;
        }
        let moved = async {
            let to = shared.peer_options(ServerIdentity::Worker(worker.id.to_string()));
            let client = Client::connect(&worker.address, &to).await?;
            let reply = client
                .call(MoveForward {
                    key: key.clone(),
                    from: this_worker.clone(),
                    to: adopter.clone(),
                })
                .await;
            client.close();
            reply.map(drop)
        }
        .await;
        if let Err(e) = moved {
            tracing::warn!(partition = %key, worker = %worker.address, error = %e,
                "could not ask a worker to move its forward pointer");
        }
    }
}

/// Waits (up to [`LOCATE_WAIT`]) until every master that answers locates
/// `key` on the adopter, so no consumer is told it is nowhere.
async fn wait_until_located(shared: &Arc<Shared>, key: &PartitionKey, adopter: &WorkerAt) {
    let options = shared.peer_options(ServerIdentity::Master);
    let locate = LocatePartition {
        key: key.clone(),
        worker: None,
    };
    let until = clock::now() + LOCATE_WAIT;
    let mut waiting: Vec<&String> = shared.config.master_addresses.iter().collect();
    while !waiting.is_empty() && clock::now() < until {
        let mut still = Vec::new();
        for master in waiting {
            let reply =
                Client::ask_first(std::slice::from_ref(master), &options, locate.clone()).await;
            match reply {
                Ok(located) if located.worker.as_ref().map(|w| &w.id) == Some(&adopter.id) => {}
                // A master that is down learns it from the heartbeats when back.
                Err(_) => {}
                Ok(_) => still.push(master),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            clock::sleep(Duration::from_millis(100)).await;
        }
    }
    if !waiting.is_empty() {
        tracing::warn!(partition = %key, masters = ?waiting,
            "masters do not locate the handed-over partition yet; handing it over anyway");
    }
}
