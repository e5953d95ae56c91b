//! Registration with the masters and periodic heartbeats carrying load.
//! A master replies with jobs it knows are gone; their data is dropped.
//!
//! Control never waits on data: each master has its own loop, every
//! request to it a deadline well below its `worker_timeout`, and job drops
//! (which delete files, and queue object deletions) run on their own task
//! ([`JobDrops`](crate::context::JobDrops)), so a slow disk, object store or master delays no
//! heartbeat. A heartbeat carries at most [`MAX_HEARTBEAT_JOBS`] job ids in
//! [`HEARTBEAT_LIST_BYTES`]: a worker holding more asks about a page of them
//! per heartbeat, rotating ([`Pager`]), so every job is lease-checked within
//! a bounded number of heartbeats.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions, ServerIdentity};
use terrace_tier_api::protocol::{
    DirStats, HeartbeatReply, ObjectStoreStats, RegisterWorker, Request, TierStats, Wire,
    WorkerHeartbeat, WorkerLoad,
};
use terrace_tier_api::{ErrorKind, JobId, PartitionKey, TierError, TierResult, WorkerId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::{DropReason, Shared};
use crate::store::Store;

/// The load a worker reports.
pub(crate) fn load(shared: &Shared) -> WorkerLoad {
    let store = &shared.store;
    let partitions = store.partitions();
    let sealed = partitions.iter().filter(|p| p.is_sealed()).count() as u32;
    let bytes = store.tier_bytes();
    let tiers = tier_stats(store, bytes);
    let healthy_free: u64 = tiers
        .dirs
        .iter()
        .filter(|d| d.healthy)
        .map(|d| d.capacity_bytes.saturating_sub(d.used_bytes))
        .sum();
    let unhealthy = tiers.dirs.iter().filter(|d| !d.healthy).count() as u32;
    let (push_rate, read_rate) = shared
        .rates
        .lock()
        .expect("rates lock poisoned")
        .sample(&store.counters, clock::now());
    WorkerLoad {
        stored_bytes: bytes.memory + bytes.local + bytes.object,
        memory_used_bytes: store.budget().used(),
        open_partitions: partitions.len() as u32 - sealed,
        sealed_partitions: sealed,
        tiers: Some(Box::new(tiers)),
        memory_budget_bytes: store.budget().total(),
        local_free_bytes: healthy_free,
        unhealthy_dirs: unhealthy,
        full: store.short_of_room(),
        decommissioning: shared.decommission.is_started(),
        restarting: shared.restart.is_started() && !shared.decommission.is_started(),
        durable_store: store
            .durable()
            .then(|| store.tiers().dirs.store_id().to_string()),
        read_streams: store.counters.read_streams.load(Ordering::Relaxed) as u32,
        push_bytes_per_sec: push_rate,
        read_bytes_per_sec: read_rate,
    }
}

fn tier_stats(store: &Store, bytes: crate::store::TierBytes) -> TierStats {
    let tiers = store.tiers();
    TierStats {
        memory_bytes: bytes.memory,
        local_bytes: bytes.local,
        object_bytes: bytes.object,
        dirs: tiers
            .dirs
            .status()
            .into_iter()
            .map(|d| DirStats {
                path: d.path,
                used_bytes: d.used_bytes,
                capacity_bytes: d.capacity_bytes,
                healthy: d.healthy,
                error: d.error.unwrap_or_default(),
                write_failures: d.write_failures,
            })
            .collect(),
        object_store: tiers.object.as_ref().map(|o| {
            let c = &o.counters;
            ObjectStoreStats {
                url: o.url().to_string(),
                bytes: c.bytes.load(Ordering::Relaxed),
                objects: c.objects.load(Ordering::Relaxed),
                bytes_overflowed: c.bytes_overflowed.load(Ordering::Relaxed),
                bytes_migrated: c.bytes_migrated.load(Ordering::Relaxed),
                partitions_migrated: c.partitions_migrated.load(Ordering::Relaxed),
                bytes_read: c.bytes_read.load(Ordering::Relaxed),
                gets: c.gets.load(Ordering::Relaxed),
                bytes_compacted: c.bytes_compacted.load(Ordering::Relaxed),
                partitions_compacted: c.partitions_compacted.load(Ordering::Relaxed),
                failures: c.failures.load(Ordering::Relaxed),
                available: o.is_available(),
                last_error: o.last_error().unwrap_or_default(),
            }
        }),
    }
}

/// Most jobs a heartbeat asks about (the master's limit).
pub(crate) const MAX_HEARTBEAT_JOBS: usize = 4096;

/// Most bytes of job ids, relocated partitions and later parts one heartbeat
/// carries (two thirds, a sixth and a sixth).
pub(crate) const HEARTBEAT_LIST_BYTES: usize = 48 * 1024;

/// Most bytes of a heartbeat's header, load included, unless the load alone
/// takes more (it is bounded by the master's load limits: 64 directories
/// with 1 KiB paths and 4 KiB errors): under the smallest `max_frame_size`
/// a master accepts (64 KiB).
pub(crate) const HEARTBEAT_BYTES: usize = 56 * 1024;

/// A heartbeat's deadline before the master's `worker_timeout` is known.
fn heartbeat_deadline(interval: Duration, worker_timeout: Option<Duration>) -> Duration {
    let by_interval = interval.saturating_mul(3).max(Duration::from_millis(100));
    match worker_timeout {
        // Well below the timeout: a master that answers slowly is one
        // request late, never the reason the worker is lost.
        Some(timeout) => by_interval.min((timeout / 4).max(Duration::from_millis(50))),
        None => by_interval,
    }
}

/// Pages through a set that may not fit in one heartbeat: each page starts
/// after the last item of the previous one and wraps around, so every item
/// of a set of `n` is in one of `ceil(n / page)` consecutive pages.
#[derive(Debug)]
pub(crate) struct Pager<T> {
    after: Option<T>,
}

impl<T> Default for Pager<T> {
    fn default() -> Self {
        Pager { after: None }
    }
}

impl<T: Ord + Clone> Pager<T> {
    /// The next page of `all`: at most `max_items`, whose `size`s sum to at
    /// most `max_bytes`.
    pub(crate) fn page(
        &mut self,
        all: &BTreeSet<T>,
        max_items: usize,
        max_bytes: usize,
        size: impl Fn(&T) -> usize,
    ) -> Vec<T> {
        let ordered: Box<dyn Iterator<Item = &T>> = match &self.after {
            Some(after) => Box::new(
                all.range((Bound::Excluded(after), Bound::Unbounded))
                    .chain(all.range((Bound::Unbounded, Bound::Included(after)))),
            ),
            None => Box::new(all.iter()),
        };
        let mut page = Vec::new();
        let mut bytes = 0usize;
        for item in ordered {
            let len = size(item);
            if page.len() >= max_items || bytes.saturating_add(len) > max_bytes {
                break;
            }
            bytes += len;
            page.push(item.clone());
        }
        self.after = if page.len() == all.len() {
            None
        } else {
            page.last().cloned().or_else(|| self.after.take())
        };
        page
    }
}

/// Bytes an id takes in a repeated `bytes` field (tag, length, id).
fn wire_len(id: &[u8]) -> usize {
    id.len() + 3
}

fn key_wire_len(key: &PartitionKey) -> usize {
    wire_len(key.job.as_bytes()) + wire_len(key.partition.as_bytes()) + 3
}

/// Jobs dropped at the same time.
const DROP_CONCURRENCY: usize = 2;

/// Drops queued jobs, [`DROP_CONCURRENCY`] at a time, until cancelled.
async fn run_drops(shared: Arc<Shared>) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < DROP_CONCURRENCY {
            let Some((job, why)) = shared.drops.take() else {
                break;
            };
            let shared = Arc::clone(&shared);
            running.spawn(async move {
                drop_one(&shared, &job, why).await;
                shared.drops.done(&job);
            });
        }
        let wake = shared.drops.wake.notified();
        tokio::select! {
            Some(_) = running.join_next() => {}
            _ = wake, if running.len() < DROP_CONCURRENCY => {}
        }
    }
}

async fn drop_one(shared: &Shared, job: &JobId, why: DropReason) {
    match (shared.store.drop_job(job).await, why) {
        (Ok(n), DropReason::Released) => {
            if n > 0 {
                tracing::info!(%job, partitions = n, "dropped data of a job the master released");
            }
        }
        (Ok(n), DropReason::Unknown(lease_ms)) => {
            tracing::warn!(%job, partitions = n, lease_ms,
                "dropped data of a job no master has known for a lease");
            shared
                .jobs_known
                .lock()
                .expect("jobs_known lock poisoned")
                .remove(job);
        }
        // Offered again by a later heartbeat.
        (Err(e), _) => tracing::error!(%job, error = %e, "dropping a job's data failed"),
    }
}

/// Starts one heartbeat loop per configured master, and the task that
/// drops jobs' data.
pub fn spawn(shared: Arc<Shared>, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
    let mut tasks: Vec<JoinHandle<()>> = shared
        .config
        .master_addresses
        .clone()
        .into_iter()
        .map(|master| {
            let shared = Arc::clone(&shared);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = heartbeat_loop(shared, master) => {}
                }
            })
        })
        .collect();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = run_drops(shared) => {}
        }
    }));
    tasks
}

async fn heartbeat_loop(shared: Arc<Shared>, master: String) {
    let mut warned = false;
    // Learned from the master's replies; kept across reconnections.
    let mut worker_timeout = None;
    // Whether this master has answered a heartbeat of this process.
    let mut answered = false;
    loop {
        match session(&shared, &master, &mut worker_timeout, &mut answered).await {
            Ok(()) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!(%master, error = %e, "master unreachable; retrying every heartbeat interval");
                    warned = true;
                } else {
                    tracing::debug!(%master, error = %e, "master still unreachable");
                }
            }
        }
        clock::sleep(shared.config.heartbeat_interval).await;
    }
}

/// Sends one request to a master under `deadline`; a late answer closes
/// the connection (the next session opens a fresh one).
async fn request_within<R: Request>(
    client: &Client,
    deadline: Duration,
    request: R,
) -> TierResult<R::Reply> {
    match clock::timeout(deadline, client.call(request)).await {
        Ok(reply) => reply,
        Err(_) => {
            client.close();
            Err(TierError::unavailable(format!(
                "master {} did not answer within {deadline:?}",
                client.peer()
            )))
        }
    }
}

/// One connection's life: register, then heartbeat until an error.
async fn session(
    shared: &Arc<Shared>,
    master: &str,
    worker_timeout: &mut Option<Duration>,
    answered: &mut bool,
) -> TierResult<()> {
    let interval = shared.config.heartbeat_interval;
    let deadline = heartbeat_deadline(interval, *worker_timeout);
    let options = ClientOptions {
        connect_timeout: deadline,
        request_timeout: deadline,
        ..shared.peer_options(ServerIdentity::Master)
    };
    // The handshake is a request too: bound the whole connect.
    let client = match clock::timeout(deadline, Client::connect(master, &options)).await {
        Ok(client) => client?,
        Err(_) => {
            return Err(TierError::unavailable(format!(
                "connect to master {master}: no handshake within {deadline:?}"
            )));
        }
    };
    let worker = WorkerId::new(shared.worker_id.clone())?;
    let register = RegisterWorker {
        worker: worker.clone(),
        data_address: shared.address.clone(),
    };
    request_within(&client, deadline, register).await?;
    shared.masters.answered(master, *worker_timeout, None);
    tracing::info!(%master, worker = %shared.worker_id, "registered with master");
    // Released jobs already queued for dropping here: a master lists a
    // released job in every reply for minutes. Only jobs the last reply
    // still listed are kept, so this is bounded by the master's list.
    let mut dropped: HashSet<JobId> = HashSet::new();
    let mut jobs_pager: Pager<JobId> = Pager::default();
    let mut relocated_pager: Pager<PartitionKey> = Pager::default();
    let mut parts_pager: Pager<PartitionKey> = Pager::default();
    loop {
        let deadline = heartbeat_deadline(interval, *worker_timeout);
        let mut heartbeat = WorkerHeartbeat {
            worker: worker.clone(),
            data_address: shared.address.clone(),
            load: load(shared),
            jobs: Vec::new(),
            relocated: Vec::new(),
            parts: Vec::new(),
            adopted: Vec::new(),
        };
        // What the lists may take: the load and ids come first.
        let fixed = heartbeat.header_len();
        let lists = HEARTBEAT_BYTES
            .saturating_sub(fixed)
            .min(HEARTBEAT_LIST_BYTES);
        let held = held_jobs(&shared.store);
        let jobs = jobs_pager.page(&held, MAX_HEARTBEAT_JOBS, lists / 2, |job| {
            wire_len(job.as_bytes())
        });
        heartbeat.relocated = relocated_pager.page(
            &relocated_held(shared),
            MAX_HEARTBEAT_JOBS,
            lists / 6,
            key_wire_len,
        );
        heartbeat.parts = parts_pager.page(
            &later_parts(&shared.store),
            MAX_HEARTBEAT_JOBS,
            lists / 6,
            key_wire_len,
        );
        heartbeat.adopted = adopted_held(shared, MAX_HEARTBEAT_JOBS, lists / 6);
        heartbeat.jobs = jobs.clone();
        let sent_at = clock::now();
        let reply = request_within(&client, deadline, heartbeat).await?;
        if reply.declared_lost && *answered {
            fence(shared, master, sent_at);
        }
        *answered = true;
        {
            if let Some(timeout) = reply.worker_timeout {
                *worker_timeout = Some(timeout);
            }
            shared
                .masters
                .answered(master, *worker_timeout, Some(sent_at));
            drop_jobs_no_master_knows(shared, &jobs, &reply);
            let listed: HashSet<JobId> = reply.released_jobs.into_iter().collect();
            dropped.retain(|job| listed.contains(job));
            // A partition of a dropped job created since (a create that
            // raced the release) makes the job worth dropping again.
            let held = held_jobs(&shared.store);
            for job in listed {
                if dropped.contains(&job) && !held.contains(&job) {
                    continue;
                }
                if shared.drops.offer(job.clone(), DropReason::Released) {
                    dropped.insert(job);
                }
            }
        }
        tokio::select! {
            _ = clock::sleep(interval) => {}
            _ = shared.heartbeat_now.notified() => {}
        }
    }
}

/// `master` took this worker for lost while it kept running (a paused
/// process, a host cut off, heartbeats starved), and has reported its
/// partitions to the engines, which run their producers again elsewhere:
/// every partition this process held before `sent_at` (the heartbeat that
/// was answered so) is stale, and is dropped rather than served. The
/// master placed nothing here between taking the worker back and this
/// reply. A restarted process ignores the verdict, which was about its
/// predecessor: it holds only sealed partitions it recovered, which stay
/// served (see "What survives what" in docs/operations.md).
fn fence(shared: &Arc<Shared>, master: &str, sent_at: Instant) {
    let stale: Vec<PartitionKey> = shared
        .store
        .partitions()
        .iter()
        .filter(|p| p.created() <= sent_at)
        .map(|p| p.key().clone())
        .collect();
    tracing::warn!(%master, partitions = stale.len(),
        "a master took this worker for lost while it ran (paused or cut off past the worker timeout) and reported its partitions lost: dropping every partition held before");
    shared
        .store
        .counters
        .fenced
        .fetch_add(stale.len() as u64, Ordering::Relaxed);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        for key in stale {
            match shared.store.release(&key).await {
                Ok(()) => tracing::info!(partition = %key, "dropped a stale partition"),
                // Released meanwhile: nothing to drop.
                Err(e) if e.kind() == ErrorKind::PartitionNotFound => {}
                Err(e) => {
                    tracing::error!(partition = %key, error = %e, "dropping a stale partition failed")
                }
            }
        }
    });
}

/// Relocated partitions still held (forgetting released ones).
fn relocated_held(shared: &Shared) -> BTreeSet<PartitionKey> {
    let mut relocated = shared.relocated.lock().expect("relocated lock poisoned");
    relocated.retain(|key| shared.store.get(key).is_ok());
    relocated.clone()
}

/// Later parts adopted from lost workers and still held here: the first
/// `max` that fit in `bytes` (readers of the others find them through the
/// forward pointers the adopter moved).
fn adopted_held(shared: &Shared, max: usize, bytes: usize) -> Vec<(PartitionKey, WorkerId)> {
    let mut adopted = shared.adopted.lock().expect("adopted lock poisoned");
    adopted.retain(|key, _| shared.store.get(key).is_ok());
    adopted_page(&adopted, max, bytes)
}

/// The first of `adopted` that fit in `bytes`, at most `max`.
fn adopted_page(
    adopted: &std::collections::BTreeMap<PartitionKey, WorkerId>,
    max: usize,
    bytes: usize,
) -> Vec<(PartitionKey, WorkerId)> {
    let mut used = 0;
    adopted
        .iter()
        .take(max)
        .take_while(|(k, w)| {
            used += key_wire_len(k) + wire_len(w.as_str().as_bytes()) + 4;
            used <= bytes
        })
        .map(|(k, w)| (k.clone(), w.clone()))
        .collect()
}

/// Later parts of split partitions held here, in order.
fn later_parts(store: &Store) -> BTreeSet<PartitionKey> {
    store
        .partitions()
        .iter()
        .filter(|p| p.meta().continuation)
        .map(|p| p.key().clone())
        .collect()
}

/// Jobs this worker holds partitions of, in order.
fn held_jobs(store: &Store) -> BTreeSet<JobId> {
    store
        .partitions()
        .iter()
        .map(|p| p.key().job.clone())
        .collect()
}

/// Records which of `asked` the replying master knows, and queues the drop
/// of jobs that no master has known for a whole lease: their coordinator
/// died while no master was left that knew them (a restarted worker's
/// partitions of a finished job, a job whose masters all restarted and whose
/// agent is gone). A job stays as long as any master knows it.
fn drop_jobs_no_master_knows(shared: &Shared, asked: &[JobId], reply: &HeartbeatReply) {
    let Some(lease) = reply.job_lease else {
        return;
    };
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let unknown: HashSet<&JobId> = reply.unknown_jobs.iter().collect();
    let now = clock::now();
    let mut expired = Vec::new();
    {
        let mut seen = shared.jobs_known.lock().expect("jobs_known lock poisoned");
        let held = held_jobs(&shared.store);
        seen.retain(|job, _| held.contains(job));
        for job in asked {
            if !unknown.contains(job) {
                seen.insert(job.clone(), now);
                continue;
            }
            let since = *seen.entry(job.clone()).or_insert(now);
            if now.saturating_duration_since(since) > lease {
                expired.push(job.clone());
            }
        }
    }
    for job in expired {
        // Refused when the queue is full: the job is asked about again.
        let _ = shared.drops.offer(job, DropReason::Unknown(lease_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u32) -> JobId {
        JobId::new(n.to_be_bytes().to_vec()).expect("job id")
    }

    #[test]
    fn pages_rotate_so_every_job_is_asked_within_a_bounded_number_of_heartbeats() {
        let all: BTreeSet<JobId> = (0..10).map(job).collect();
        let mut pager = Pager::default();
        // Four per page by count.
        let pages: Vec<Vec<JobId>> = (0..4)
            .map(|_| pager.page(&all, 4, usize::MAX, |j| wire_len(j.as_bytes())))
            .collect();
        assert_eq!(pages[0], (0..4).map(job).collect::<Vec<_>>());
        assert_eq!(pages[1], (4..8).map(job).collect::<Vec<_>>());
        // The third wraps around.
        assert_eq!(pages[2], [8, 9, 0, 1].map(job));
        assert_eq!(pages[3], (2..6).map(job).collect::<Vec<_>>());
        let asked: BTreeSet<JobId> = pages[..3].iter().flatten().cloned().collect();
        assert_eq!(asked, all, "every job within ceil(10 / 4) = 3 heartbeats");

        // By bytes: each id takes 4 + 3 bytes, so 20 bytes hold two.
        let mut pager = Pager::default();
        assert_eq!(
            pager.page(&all, 100, 20, |j| wire_len(j.as_bytes())),
            [0, 1].map(job)
        );
        assert_eq!(
            pager.page(&all, 100, 20, |j| wire_len(j.as_bytes())),
            [2, 3].map(job)
        );

        // A set that fits is asked whole every time, from its start.
        let few: BTreeSet<JobId> = (0..3).map(job).collect();
        let mut pager = Pager::default();
        for _ in 0..3 {
            assert_eq!(pager.page(&few, 4, usize::MAX, |_| 1), [0, 1, 2].map(job));
        }

        // Jobs come and go between pages: the rotation goes on after the
        // last one asked, even if it is gone.
        let mut pager = Pager::default();
        assert_eq!(
            pager.page(&all, 4, usize::MAX, |_| 1),
            (0..4).map(job).collect::<Vec<_>>()
        );
        let fewer: BTreeSet<JobId> = (0..10).filter(|n| *n != 3 && *n != 4).map(job).collect();
        assert_eq!(
            pager.page(&fewer, 4, usize::MAX, |_| 1),
            [5, 6, 7, 8].map(job)
        );
        assert_eq!(
            pager.page(&fewer, 4, usize::MAX, |_| 1),
            [9, 0, 1, 2].map(job)
        );
        // Nothing fits: an empty page, and the rotation stays where it was.
        assert_eq!(pager.page(&fewer, 4, 0, |_| 1), Vec::<JobId>::new());
        assert_eq!(
            pager.page(&fewer, 4, usize::MAX, |_| 1),
            [5, 6, 7, 8].map(job)
        );
    }

    #[test]
    fn a_full_heartbeat_of_the_longest_ids_fits_the_smallest_master_frame() {
        let longest = |n: u32| {
            let mut id = vec![0xab; terrace_tier_api::MAX_ID_BYTES - 4];
            id.extend_from_slice(&n.to_be_bytes());
            id
        };
        let jobs: BTreeSet<JobId> = (0..5000)
            .map(|n| JobId::new(longest(n)).expect("job id"))
            .collect();
        let keys: BTreeSet<PartitionKey> = (0..5000)
            .map(|n| PartitionKey {
                job: JobId::new(longest(n)).expect("job id"),
                partition: terrace_tier_api::PartitionId::new(longest(n)).expect("partition id"),
            })
            .collect();
        let page =
            Pager::default().page(&jobs, MAX_HEARTBEAT_JOBS, HEARTBEAT_LIST_BYTES / 2, |j| {
                wire_len(j.as_bytes())
            });
        let relocated = Pager::default().page(
            &keys,
            MAX_HEARTBEAT_JOBS,
            HEARTBEAT_LIST_BYTES / 6,
            key_wire_len,
        );
        let parts = Pager::default().page(
            &keys,
            MAX_HEARTBEAT_JOBS,
            HEARTBEAT_LIST_BYTES / 6,
            key_wire_len,
        );
        let from = WorkerId::new("w".repeat(256)).expect("worker id");
        let adopted = adopted_page(
            &keys.iter().map(|k| (k.clone(), from.clone())).collect(),
            MAX_HEARTBEAT_JOBS,
            HEARTBEAT_LIST_BYTES / 6,
        );
        assert_eq!(
            (page.len(), relocated.len(), parts.len(), adopted.len()),
            (94, 15, 15, 10)
        );
        let heartbeat = WorkerHeartbeat {
            worker: from,
            data_address: "a".repeat(256),
            load: WorkerLoad {
                durable_store: Some("f".repeat(terrace_tier_api::protocol::MAX_STORE_ID_BYTES)),
                ..WorkerLoad::default()
            },
            jobs: page,
            relocated,
            parts,
            adopted,
        };
        assert!(
            heartbeat.header_len() <= HEARTBEAT_LIST_BYTES + 1024,
            "{} bytes",
            heartbeat.header_len()
        );
    }

    #[test]
    fn heartbeat_deadlines_stay_well_below_the_worker_timeout() {
        let second = Duration::from_secs(1);
        assert_eq!(heartbeat_deadline(second, None), 3 * second);
        assert_eq!(
            heartbeat_deadline(second, Some(10 * second)),
            2500 * Duration::from_millis(1)
        );
        assert_eq!(heartbeat_deadline(second, Some(60 * second)), 3 * second);
        assert_eq!(
            heartbeat_deadline(Duration::from_millis(200), Some(2 * second)),
            Duration::from_millis(500)
        );
    }
}
