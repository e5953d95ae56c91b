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
    /// Set once the worker began stopping for a restart (SIGTERM): see
    /// `crate::restart`.
    pub restart: Decommission,
    /// Set when a restarting worker keeps its open partitions: no push is
    /// taken any more.
    pub pushes_frozen: std::sync::atomic::AtomicBool,
    /// Partitions created here as relocated (their placed worker was
    /// unreachable) or adopted as first parts; heartbeats name those still
    /// held so masters can locate them. Persisted in each partition's index,
    /// so a restarted worker names them again.
    pub relocated: std::sync::Mutex<std::collections::BTreeSet<terrace_tier_api::PartitionKey>>,
    /// Parts adopted here from a lost worker, and that worker:
    /// heartbeats name those still held, so masters send their readers here.
    pub adopted: std::sync::Mutex<
        std::collections::BTreeMap<terrace_tier_api::PartitionKey, terrace_tier_api::WorkerId>,
    >,
    /// Held while a lost worker's partitions are adopted (one at a time).
    pub adopting_lost: tokio::sync::Mutex<()>,
    /// Wakes the heartbeat loops (a change masters should hear of at once).
    pub heartbeat_now: tokio::sync::Notify,
    /// Push and read rates between heartbeats.
    pub rates: std::sync::Mutex<Rates>,
    /// Jobs whose data is to be dropped, off the heartbeat loops.
    pub drops: JobDrops,
    /// When each master last answered this worker (see `heartbeat`).
    pub masters: MasterContacts,
    /// Cancelling it stops the worker in order (see `serve`).
    pub stop: CancellationToken,
}

/// Bytes of read memory (`read_memory`), as the semaphore counts them.
pub(crate) fn read_budget_permits(config: &WorkerConfig) -> usize {
    usize::try_from(config.read_memory.as_u64())
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
}

impl Shared {
    /// Bytes of read memory the worker holds at most.
    pub fn read_budget_total(&self) -> u64 {
        read_budget_permits(&self.config) as u64
    }

    /// Bytes of read memory in use: read for readers and not sent yet.
    pub fn read_budget_used(&self) -> u64 {
        self.read_budget_total()
            .saturating_sub(self.read_budget.available_permits() as u64)
    }

    /// Whether the worker should get new work: registered with a master
    /// that answered recently (see [`MasterContacts::registered`]), and not
    /// decommissioning. `Err` says why not.
    /// Leaving or restarting: producers split away, no new partitions.
    pub fn draining(&self) -> bool {
        self.decommission.is_started() || self.restart.is_started()
    }

    pub fn readiness(&self) -> Result<(), String> {
        if self.decommission.is_started() {
            return Err(format!(
                "worker {} is decommissioning (draining)",
                self.worker_id
            ));
        }
        if self.restart.is_started() {
            return Err(format!(
                "worker {} is stopping for a restart (draining)",
                self.worker_id
            ));
        }
        if self.config.master_addresses.is_empty() {
            // Standalone (embedded, tests): there is no master to wait for.
            return Ok(());
        }
        if self
            .masters
            .registered(terrace_rpc::clock::now(), self.config.heartbeat_interval)
        {
            return Ok(());
        }
        Err(format!(
            "worker {} is not registered with any master: none of {} answered its heartbeats recently",
            self.worker_id,
            self.config.master_addresses.join(", ")
        ))
    }

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
        let now = terrace_rpc::clock::now();
        self.started.set(now).is_ok()
    }
}

/// When each master last answered this worker's registration or
/// heartbeat, and the `worker_timeout` it announced.
#[derive(Debug, Default)]
pub(crate) struct MasterContacts {
    answered: Mutex<HashMap<String, MasterContact>>,
}

/// One master as this worker last heard from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MasterContact {
    pub last_answer: Instant,
    /// When the last heartbeat it answered was sent (it carried the load,
    /// restarting flag included, of then); `None` before any.
    pub last_sent: Option<Instant>,
    /// How long the master waits for heartbeats before it counts this
    /// worker lost, once a reply said.
    pub worker_timeout: Option<std::time::Duration>,
}

impl MasterContact {
    /// Whether the master still counts this worker live: it answered
    /// within its `worker_timeout` (before that is known, within three
    /// heartbeat intervals).
    pub fn is_fresh(&self, now: Instant, heartbeat_interval: std::time::Duration) -> bool {
        let window = self
            .worker_timeout
            .unwrap_or_else(|| heartbeat_interval.saturating_mul(3));
        now.saturating_duration_since(self.last_answer) <= window
    }
}

impl MasterContacts {
    /// `master` answered just now (a registration or a heartbeat).
    pub(crate) fn answered(
        &self,
        master: &str,
        worker_timeout: Option<std::time::Duration>,
        heartbeat_sent: Option<Instant>,
    ) {
        let mut answered = self.answered.lock().expect("masters lock poisoned");
        let last_sent = heartbeat_sent.or_else(|| answered.get(master).and_then(|c| c.last_sent));
        let contact = MasterContact {
            last_answer: terrace_rpc::clock::now(),
            last_sent,
            worker_timeout,
        };
        answered.insert(master.to_string(), contact);
    }

    /// The master at `address`, if it ever answered.
    pub(crate) fn get(&self, address: &str) -> Option<MasterContact> {
        self.answered
            .lock()
            .expect("masters lock poisoned")
            .get(address)
            .copied()
    }

    /// Whether at least one master answered recently enough to still count
    /// this worker live.
    pub(crate) fn registered(&self, now: Instant, heartbeat_interval: std::time::Duration) -> bool {
        self.answered
            .lock()
            .expect("masters lock poisoned")
            .values()
            .any(|c| c.is_fresh(now, heartbeat_interval))
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
