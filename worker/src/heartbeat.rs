//! Registration with the masters and periodic heartbeats carrying load.
//! A master replies with jobs it knows are gone; their data is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions, ServerIdentity};
use terrace_tier_api::{JobId, TierResult};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;
use crate::store::Store;

/// The load a worker reports.
pub(crate) fn load(shared: &Shared) -> pb::WorkerLoad {
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
        .sample(&store.counters, std::time::Instant::now());
    pb::WorkerLoad {
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
        read_streams: store.counters.read_streams.load(Ordering::Relaxed) as u32,
        push_bytes_per_sec: push_rate,
        read_bytes_per_sec: read_rate,
    }
}

/// Push and read rates: bytes moved since the previous sample over the time
/// since it. Samples closer than [`MIN_RATE_WINDOW`] (several masters'
/// heartbeats, a stats request) return the last rates.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    last: Option<(std::time::Instant, u64, u64)>,
    rates: (u64, u64),
}

const MIN_RATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

impl Rates {
    fn sample(&mut self, counters: &crate::store::Counters, now: std::time::Instant) -> (u64, u64) {
        let pushed = counters.bytes_pushed.load(Ordering::Relaxed);
        let read = counters.bytes_read.load(Ordering::Relaxed);
        match self.last {
            Some((at, _, _)) if now.saturating_duration_since(at) < MIN_RATE_WINDOW => {}
            Some((at, p0, r0)) => {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                let per_sec = |d: u64| (d as f64 / secs) as u64;
                self.rates = (
                    per_sec(pushed.saturating_sub(p0)),
                    per_sec(read.saturating_sub(r0)),
                );
                self.last = Some((now, pushed, read));
            }
            None => self.last = Some((now, pushed, read)),
        }
        self.rates
    }
}

fn tier_stats(store: &Store, bytes: crate::store::TierBytes) -> pb::TierStats {
    let tiers = store.tiers();
    pb::TierStats {
        memory_bytes: bytes.memory,
        local_bytes: bytes.local,
        object_bytes: bytes.object,
        dirs: tiers
            .dirs
            .status()
            .into_iter()
            .map(|d| pb::DirStats {
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
            Box::new(pb::ObjectStoreStats {
                url: o.url().to_string(),
                bytes: c.bytes.load(Ordering::Relaxed),
                objects: c.objects.load(Ordering::Relaxed),
                bytes_overflowed: c.bytes_overflowed.load(Ordering::Relaxed),
                bytes_migrated: c.bytes_migrated.load(Ordering::Relaxed),
                partitions_migrated: c.partitions_migrated.load(Ordering::Relaxed),
                bytes_read: c.bytes_read.load(Ordering::Relaxed),
                failures: c.failures.load(Ordering::Relaxed),
                available: o.is_available(),
                last_error: o.last_error().unwrap_or_default(),
            })
        }),
    }
}

/// Starts one heartbeat loop per configured master.
pub fn spawn(shared: Arc<Shared>, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
    shared
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
        .collect()
}

async fn heartbeat_loop(shared: Arc<Shared>, master: String) {
    let options = ClientOptions {
        connect_timeout: shared
            .config
            .heartbeat_interval
            .max(std::time::Duration::from_secs(1)),
        request_timeout: shared.config.heartbeat_interval * 5,
        ..shared.peer_options(ServerIdentity::Master)
    };
    let mut warned = false;
    loop {
        match session(&shared, &master, &options).await {
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
        tokio::time::sleep(shared.config.heartbeat_interval).await;
    }
}

/// One connection's life: register, then heartbeat until an error.
async fn session(shared: &Arc<Shared>, master: &str, options: &ClientOptions) -> TierResult<()> {
    let client = Client::connect(master, options).await?;
    let worker_id = shared.worker_id.clone();
    let address = shared.address.clone();
    client
        .request(|request_id| {
            Message::RegisterWorker(pb::RegisterWorker {
                request_id,
                worker_id,
                data_address: address,
            })
        })
        .await?;
    tracing::info!(%master, worker = %shared.worker_id, "registered with master");
    // Released jobs already dropped here: a master lists a released job in
    // every reply for minutes, and dropping it again would scan the
    // partitions and LIST the object store each time. Only jobs the last
    // reply still listed are kept, so this is bounded by the master's list.
    let mut dropped: std::collections::HashSet<JobId> = std::collections::HashSet::new();
    loop {
        let worker_id = shared.worker_id.clone();
        let address = shared.address.clone();
        let load = load(shared);
        let jobs: Vec<JobId> = held_jobs(&shared.store)
            .into_iter()
            .take(MAX_HEARTBEAT_JOBS)
            .collect();
        let relocated = relocated_held(shared);
        let (reply, _) = client
            .request(|request_id| {
                Message::WorkerHeartbeat(pb::WorkerHeartbeat {
                    request_id,
                    worker_id,
                    data_address: address,
                    load: Some(load),
                    jobs: jobs.iter().map(|j| j.as_bytes().clone()).collect(),
                    relocated,
                })
            })
            .await?;
        if let Message::HeartbeatReply(reply) = reply {
            drop_jobs_no_master_knows(shared, &jobs, &reply).await;
            let listed: std::collections::HashSet<JobId> = reply
                .released_jobs
                .into_iter()
                .filter_map(|job| JobId::new(job).ok())
                .collect();
            dropped.retain(|job| listed.contains(job));
            // A partition of a dropped job created since (a create that
            // raced the release) makes the job worth dropping again.
            let held: std::collections::HashSet<JobId> = shared
                .store
                .partitions()
                .iter()
                .map(|p| p.key().job.clone())
                .collect();
            for job in listed {
                if dropped.contains(&job) && !held.contains(&job) {
                    continue;
                }
                match shared.store.drop_job(&job).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(%job, partitions = n, "dropped data of a job the master released");
                        }
                        dropped.insert(job);
                    }
                    // Tried again at the next heartbeat.
                    Err(e) => tracing::error!(%job, error = %e, "dropping a released job failed"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.config.heartbeat_interval) => {}
            _ = shared.heartbeat_now.notified() => {}
        }
    }
}

/// Most jobs a heartbeat asks about (the master's limit).
const MAX_HEARTBEAT_JOBS: usize = 4096;

/// Relocated partitions still held (forgetting released ones), at most
/// the master's limit.
fn relocated_held(shared: &Shared) -> Vec<pb::PartitionKey> {
    let mut relocated = shared.relocated.lock().expect("relocated lock poisoned");
    relocated.retain(|key| shared.store.get(key).is_ok());
    relocated
        .iter()
        .take(MAX_HEARTBEAT_JOBS)
        .map(pb::PartitionKey::from)
        .collect()
}

/// Jobs this worker holds partitions of, in order.
fn held_jobs(store: &Store) -> std::collections::BTreeSet<JobId> {
    store
        .partitions()
        .iter()
        .map(|p| p.key().job.clone())
        .collect()
}

/// Records which of `asked` the replying master knows, and drops the data of
/// jobs that no master has known for a whole lease: their coordinator died
/// while no master was left that knew them (a restarted worker's partitions
/// of a finished job, a job whose masters all restarted and whose agent is
/// gone). A job stays as long as any master knows it.
async fn drop_jobs_no_master_knows(shared: &Shared, asked: &[JobId], reply: &pb::HeartbeatReply) {
    let lease = std::time::Duration::from_millis(reply.job_lease_ms);
    if lease.is_zero() {
        return;
    }
    let unknown: std::collections::HashSet<&[u8]> =
        reply.unknown_jobs.iter().map(|j| j.as_ref()).collect();
    let now = std::time::Instant::now();
    let mut expired = Vec::new();
    {
        let mut seen = shared.jobs_known.lock().expect("jobs_known lock poisoned");
        let held = held_jobs(&shared.store);
        seen.retain(|job, _| held.contains(job));
        for job in asked {
            if !unknown.contains(job.as_bytes().as_ref()) {
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
        match shared.store.drop_job(&job).await {
            Ok(n) => {
                tracing::warn!(%job, partitions = n, lease_ms = reply.job_lease_ms,
                    "dropped data of a job no master has known for a lease");
                shared
                    .jobs_known
                    .lock()
                    .expect("jobs_known lock poisoned")
                    .remove(&job);
            }
            Err(e) => tracing::error!(%job, error = %e, "dropping a job no master knows failed"),
        }
    }
}
