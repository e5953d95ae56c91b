//! What the worker's connections share ([`Shared`]: the store, the config,
//! the worker's identity and its background state) and what one connection
//! holds ([`Connection`]: its sender and its read streams). Commands, the
//! stream engine, heartbeats and decommissioning all work on these; this
//! module imports none of them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use terrace_rpc::{ExpectedServer, FrameSender, Security, ServerIdentity};
use terrace_tier_api::JobId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::store::{Charge, Store};

/// What every connection, stream and background task of the worker shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<Store>,
    /// Read memory: bytes read for readers and not yet sent (`read_memory`).
    pub read_budget: Arc<tokio::sync::Semaphore>,
    /// Per job held here: when a master last said it knows the job (or when
    /// this worker first asked). See `heartbeat`.
    pub jobs_known: std::sync::Mutex<HashMap<terrace_tier_api::JobId, std::time::Instant>>,
    pub config: WorkerConfig,
    /// The cluster secret and TLS, loaded from `config.security`.
    pub security: Security,
    pub worker_id: String,
    pub address: String,
    pub decommission: Decommission,
    /// Partitions created here as relocated (their placed worker was
    /// unreachable); heartbeats name those still held so masters can locate
    /// them. Not persisted: after a restart, masters know them only from the
    /// producer's allocation.
    pub relocated: std::sync::Mutex<std::collections::BTreeSet<terrace_tier_api::PartitionKey>>,
    /// Wakes the heartbeat loops (a change masters should hear of at once).
    pub heartbeat_now: tokio::sync::Notify,
    /// Push and read rates between heartbeats.
    pub rates: std::sync::Mutex<Rates>,
    /// Jobs whose data is to be dropped, off the heartbeat loops.
    pub drops: JobDrops,
    /// Cancelling it stops the worker in order (see `serve`).
    pub stop: CancellationToken,
}

impl Shared {
    /// How this worker connects to `server` (a master, or another worker
    /// the masters know): as a member of the cluster (the cluster
    /// credential), over TLS when configured.
    pub fn peer_options(&self, server: ServerIdentity) -> terrace_rpc::ClientOptions {
        terrace_rpc::ClientOptions {
            name: format!("worker {}", self.worker_id),
            credential: self.security.credential(),
            server: ExpectedServer::Is(server),
            tls: self.security.tls_client.clone(),
            ..terrace_rpc::ClientOptions::default()
        }
    }

    /// How this worker connects to worker `worker_id` at an address a peer
    /// gave (a forward pointer) about `job`'s data: with the job's token,
    /// never the cluster secret, so the address can learn nothing that
    /// opens more than that job.
    pub fn job_peer_options(
        &self,
        job: &terrace_tier_api::JobId,
        worker_id: &str,
    ) -> terrace_rpc::ClientOptions {
        let credential = match &self.security.secret {
            Some(secret) => terrace_rpc::Credential::Job {
                job: job.as_bytes().clone(),
                token: secret.job_token(job.as_bytes()),
            },
            None => terrace_rpc::Credential::None,
        };
        terrace_rpc::ClientOptions {
            credential,
            ..self.peer_options(ServerIdentity::Worker(worker_id.to_string()))
        }
    }
}

/// What one client connection holds while the server's connection loop
/// reads its frames and runs their commands on it.
pub(crate) struct Connection {
    pub shared: Arc<Shared>,
    pub sender: FrameSender,
    pub streams: HashMap<u64, StreamHandle>,
    pub cancel: CancellationToken,
    pub peer: String,
    /// This connection's share of read memory (`server.max_send_queue`).
    pub reads: Arc<tokio::sync::Semaphore>,
}

/// The connection's handle on one of its streams.
#[derive(Debug)]
pub(crate) struct StreamHandle {
    /// Each input carries its charge to the metadata budget until the
    /// stream has taken it.
    pub tx: mpsc::Sender<(StreamInput, Charge)>,
    pub cancel: CancellationToken,
}

impl StreamHandle {
    /// Whether the stream's task has ended (finished, failed or closed).
    pub fn is_done(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What a reader sends an open stream after `OpenStream`.
#[derive(Debug)]
pub(crate) enum StreamInput {
    Require { subpartition: u32, segment: u32 },
    Credit(u32),
}

/// Whether and since when the worker is decommissioning.
#[derive(Debug, Default)]
pub(crate) struct Decommission {
    started: OnceLock<Instant>,
}

impl Decommission {
    pub(crate) fn is_started(&self) -> bool {
        self.started.get().is_some()
    }

    /// Starts it; false if it had already started.
    pub(crate) fn start(&self) -> bool {
        let now = Instant::now();
        self.started.set(now).is_ok()
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
    pub(crate) fn sample(
        &mut self,
        counters: &crate::store::Counters,
        now: std::time::Instant,
    ) -> (u64, u64) {
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

/// Why a job's data is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// A master listed it as released (unregistered or its lease expired).
    Released,
    /// No master has known it for a lease of this many milliseconds.
    Unknown(u64),
}

/// Most jobs waiting to be dropped; past it a job is offered again by the
/// next heartbeat that names it.
const MAX_QUEUED_DROPS: usize = 4096;
/// Jobs whose data is to be dropped, dropped by the heartbeat module's
/// drop task, off the heartbeat loops.
#[derive(Debug, Default)]
pub(crate) struct JobDrops {
    state: Mutex<DropQueue>,
    pub(crate) wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct DropQueue {
    waiting: VecDeque<(JobId, DropReason)>,
    /// Waiting or being dropped.
    queued: HashSet<JobId>,
}

impl JobDrops {
    /// Queues `job` to be dropped unless it already is; returns whether it
    /// is queued now (false: the queue is full).
    pub(crate) fn offer(&self, job: JobId, why: DropReason) -> bool {
        let mut state = self.state.lock().expect("drops lock poisoned");
        if state.queued.contains(&job) {
            return true;
        }
        if state.queued.len() >= MAX_QUEUED_DROPS {
            return false;
        }
        state.queued.insert(job.clone());
        state.waiting.push_back((job, why));
        drop(state);
        self.wake.notify_one();
        true
    }

    pub(crate) fn take(&self) -> Option<(JobId, DropReason)> {
        self.state
            .lock()
            .expect("drops lock poisoned")
            .waiting
            .pop_front()
    }

    pub(crate) fn done(&self, job: &JobId) {
        self.state
            .lock()
            .expect("drops lock poisoned")
            .queued
            .remove(job);
    }
}
