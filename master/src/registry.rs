//! The master's soft state: live workers with their load, registered jobs,
//! recently released jobs, and the placement rule. Pure and synchronous; the
//! caller passes the time in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use terrace_rpc::clock;
use terrace_tier_api::{JobId, PartitionId, PartitionKey, TierResult};

use crate::config::MasterConfig;
use crate::error::PlacementError;
use crate::metrics::Metrics;

// What a worker reported in its last heartbeat, kept as sent (the tier
// figures are passed through to `terrace status`).
pub(crate) use terrace_tier_api::protocol::WorkerLoad;

/// Whether the worker's memory use is at or past [`HIGH_MEMORY_PRESSURE`]
/// of its budget.
fn under_pressure(load: &WorkerLoad) -> bool {
    load.memory_budget_bytes > 0
        && load.memory_used_bytes as f64 >= load.memory_budget_bytes as f64 * HIGH_MEMORY_PRESSURE
}

/// Memory use, as a fraction of the budget, past which a worker is placed on
/// only when every other candidate is as pressed.
const HIGH_MEMORY_PRESSURE: f64 = 0.8;

/// A live worker as listed to clients.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WorkerSnapshot {
    pub id: String,
    pub data_address: String,
    pub load: WorkerLoad,
    pub since_heartbeat: Duration,
}

/// What became of an unreachable report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The master knows no such worker.
    UnknownWorker,
    /// Recorded; `probe`: what the master should do about it.
    Recorded { probe: Probe },
}

/// The master's next probe of a reported worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A probe already covers the report: one is running (and will be
    /// followed by another), or one is scheduled.
    Covered,
    /// Probe this data address now.
    Now(String),
    /// The last probe began less than [`PROBE_INTERVAL`] ago: start one
    /// with [`Registry::start_scheduled_probe`] after this long.
    After(Duration),
}

/// Where the master's probe of one worker stands. A report never goes
/// unanswered: one that arrives while a probe runs, or within
/// [`PROBE_INTERVAL`] of the last one, gets a probe of its own later, so a
/// worker that hangs just after answering one probe is still found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeState {
    Idle,
    /// `again`: a report came after this probe began.
    Running {
        again: bool,
    },
    /// A probe will start at `last_probe + PROBE_INTERVAL`.
    Scheduled,
}

/// Where a partition was placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub worker_id: String,
    pub data_address: String,
}

#[derive(Debug)]
struct Worker {
    data_address: String,
    load: WorkerLoad,
    last_heartbeat: Instant,
    /// Estimated bytes of partitions placed since the last heartbeat.
    placed_bytes: u64,
    /// Sequence number of the last placement here (0: never), for round robin
    /// among equally loaded workers.
    last_placed: u64,
    /// When the master's own probe last failed to reach the worker (after a
    /// peer reported it unreachable); no placements for anyone until a
    /// heartbeat comes [`UNREACHABLE_GRACE`] after it.
    unreachable_since: Option<Instant>,
    /// Jobs whose producers or consumers reported the worker unreachable,
    /// and when: that job's own placements skip it until a heartbeat comes
    /// [`UNREACHABLE_GRACE`] after the report. At most
    /// [`MAX_REPORTING_JOBS`]; a report is evidence, not a verdict, so it
    /// never excludes the worker for other jobs.
    reported_by: BTreeMap<JobId, Instant>,
    /// The master's probe of this worker, and when the last one started
    /// (at most one per [`PROBE_INTERVAL`]).
    probe: ProbeState,
    last_probe: Option<Instant>,
    /// Partitions placed here since the last heartbeat (each will be a push
    /// stream the heartbeat has not counted yet).
    placed_since_heartbeat: u32,
    /// This master took the worker for lost, and it has come back: until a
    /// heartbeat reply has told it so (and it dropped what it held), it
    /// gets no partitions.
    rejoined: bool,
    /// The worker kept its sealed partitions in the object store
    /// (durability = "object-store") and went silent past the timeout: until
    /// this deadline, or until another worker has adopted them, it stays
    /// listed (so master agents do not report its partitions yet), gets no
    /// partitions, and readers are told to wait for it.
    recovering: Option<Recovering>,
}

/// A durable worker's partitions being adopted by others.
#[derive(Clone, Copy, Debug)]
struct Recovering {
    deadline: Instant,
    done: bool,
}

/// A lost durable worker whose partitions another worker should adopt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecoveryDue {
    pub worker_id: String,
    pub store_id: String,
}

/// How long a lost durable worker stays listed while its partitions are
/// adopted, at most; past it, it is counted lost and what was not adopted
/// is reported.
pub(crate) const RECOVERY_TIMEOUT: Duration = Duration::from_secs(600);

impl Worker {
    /// How long until the next probe may start (zero: now).
    fn probe_wait(&self, now: Instant) -> Duration {
        self.last_probe.map_or(Duration::ZERO, |at| {
            PROBE_INTERVAL.saturating_sub(now.saturating_duration_since(at))
        })
    }

    fn start_probe(&mut self, now: Instant) {
        self.probe = ProbeState::Running { again: false };
        self.last_probe = Some(now);
    }
}

/// A worker that went silent past the worker timeout (and was not
/// decommissioning): counted as lost until it heartbeats again or
/// `lost_worker_memory` passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LostWorker {
    pub data_address: String,
    pub last_heartbeat: Instant,
    pub lost_at: Instant,
}

/// The state a known worker is counted in (see [`crate::metrics::WORKER_STATES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerState {
    Live,
    Decommissioning,
    Unhealthy,
}

impl WorkerState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WorkerState::Live => "live",
            WorkerState::Decommissioning => "decommissioning",
            WorkerState::Unhealthy => "unhealthy",
        }
    }
}

/// A registered job as the admin API lists it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JobSnapshot {
    pub job: JobId,
    pub since_renewal: Duration,
    /// Partitions this master placed for the job, per worker id.
    pub placements: BTreeMap<String, u32>,
    /// Partitions of the job recorded as relocated, and the worker holding each.
    pub relocated: Vec<(PartitionKey, String)>,
}

/// What the registry holds, counted for the gauges at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub live: u64,
    pub decommissioning: u64,
    pub unhealthy: u64,
    pub lost: u64,
    pub jobs: u64,
    pub released_jobs: u64,
    pub relocated_partitions: u64,
    pub settled: bool,
}

/// Most relocated partitions a master remembers over all jobs (each job is
/// held to `limits.max_relocations_per_job`). Past it a relocation is not
/// recorded (logged): its consumers fail with partition-not-found and the
/// engine reruns the producer.
const MAX_RELOCATIONS: usize = 1 << 20;

/// Most later parts of split partitions a master remembers over all jobs
/// (each job is held to `limits.max_parts_per_job`). Past it a part is not
/// recorded (logged): its loss is found by the partition's readers.
const MAX_PARTS: usize = 1 << 21;

/// Most jobs whose reports a worker entry remembers; past it a report only
/// triggers the master's probe.
const MAX_REPORTING_JOBS: usize = 1024;

/// Least time between two of the master's probes of one worker, however
/// many reports arrive.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A heartbeat this soon after an unreachable report may have been sent
/// before the worker died: it does not clear the report.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(1);

impl Worker {
    fn placement_load(&self) -> u64 {
        self.load.stored_bytes.saturating_add(self.placed_bytes)
    }

    /// Streams the worker serves: open partitions (one producer each), read
    /// streams, and partitions placed since its last heartbeat.
    fn streams(&self) -> u64 {
        u64::from(self.load.open_partitions)
            + u64::from(self.load.read_streams)
            + u64::from(self.placed_since_heartbeat)
    }

    /// Why the worker may not take a new partition, if it may not.
    fn state(&self) -> WorkerState {
        if self.load.decommissioning {
            WorkerState::Decommissioning
        } else if self.unreachable_since.is_some() || self.load.unhealthy_dirs > 0 {
            WorkerState::Unhealthy
        } else {
            WorkerState::Live
        }
    }

    fn refusal(&self) -> Option<&'static str> {
        if self.recovering.is_some() {
            Some("lost (its partitions are being adopted from the object store)")
        } else if self.load.restarting {
            Some("restarting")
        } else if self.rejoined {
            Some("rejoining after it was taken for lost")
        } else if self.unreachable_since.is_some() {
            Some("unreachable (the master's probe failed)")
        } else if self.load.decommissioning {
            Some("decommissioning")
        } else if self.load.full {
            Some("full")
        } else {
            None
        }
    }
}

/// Workers, jobs and released jobs.
#[derive(Debug)]
pub(crate) struct Registry {
    worker_timeout: Duration,
    released_job_memory: Duration,
    partition_size_estimate: u64,
    limits: crate::config::MasterLimits,
    workers: BTreeMap<String, Worker>,
    job_lease: Duration,
    /// Registered jobs and when their lease was last renewed.
    jobs: BTreeMap<JobId, Instant>,
    /// Unregistered jobs and when they were unregistered.
    released: BTreeMap<JobId, Instant>,
    placements: u64,
    /// Per registered job: partitions this master placed on each worker, so
    /// that a job's partitions spread. Forgotten with the job.
    job_placements: BTreeMap<JobId, BTreeMap<String, u32>>,
    /// Partitions relocated from their descriptor's worker, and the worker
    /// now holding each (at most [`MAX_RELOCATIONS`]). Forgotten with the job.
    relocations: BTreeMap<PartitionKey, String>,
    /// Entries of `relocations` per job.
    job_relocations: BTreeMap<JobId, usize>,
    /// Later parts of split partitions: per job, the workers holding one
    /// and the partitions whose part each holds (from allocations of next
    /// parts and from the workers' heartbeats), for `ListParts`.
    parts: BTreeMap<JobId, BTreeMap<String, BTreeSet<PartitionId>>>,
    /// Later parts adopted from a lost worker: (partition, lost worker) to
    /// the adopter (at most [`MAX_RELOCATIONS`]). Forgotten with the job.
    moved: BTreeMap<(PartitionKey, String), String>,
    /// Lost durable workers whose partitions no adopter was asked for yet.
    recoveries_due: Vec<RecoveryDue>,
    /// Entries of `parts` per job, and in all.
    job_parts: BTreeMap<JobId, usize>,
    part_count: usize,
    /// Workers lost (silent past the timeout, not decommissioning), kept
    /// for `lost_worker_memory` or until they heartbeat again; at most
    /// `limits.max_workers` (the oldest is forgotten first).
    lost: BTreeMap<String, LostWorker>,
    lost_worker_memory: Duration,
    /// How long a restarting worker may be silent (`restart_grace`).
    restart_grace: Duration,
    /// Counters, and the gauges set when they are read.
    metrics: Arc<Metrics>,
    /// When this master started: until `worker_timeout` has passed, live
    /// workers may not have heartbeated to it yet.
    started: Instant,
    /// The latest time this master observed (a request or a sweep), on the
    /// clock and on the process's own monotonic time, to tell a stall (the
    /// process stopped or starved) from time that passed while it was
    /// watching. See [`Registry::observe`].
    last_seen: (Instant, Instant),
}

/// A weight of `worker` for adopting `lost`'s partitions (rendezvous
/// hashing: the same on every master, spread over lost workers).
fn rendezvous(lost: &str, worker: &str) -> u64 {
    // FNV-1a, fixed, so masters of different builds agree.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lost.bytes().chain([0u8]).chain(worker.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The shortest gap between two observations taken for a stall: shorter
/// ones are scheduling noise on a loaded machine.
const MIN_STALL: Duration = Duration::from_secs(1);

/// How often the master sweeps for silent workers and expired leases: four
/// times per the shorter of `worker_timeout` and `job_lease`, so an idle
/// master observes the time at least that often.
pub(crate) fn sweep_period(config: &MasterConfig) -> Duration {
    (config.worker_timeout.min(config.job_lease) / 4).max(Duration::from_millis(10))
}

impl Registry {
    pub(crate) fn new(config: &MasterConfig, started: Instant) -> Self {
        Registry {
            started,
            last_seen: (started, clock::now()),
            worker_timeout: config.worker_timeout,
            released_job_memory: config.released_job_memory,
            partition_size_estimate: config.partition_size_estimate.as_u64(),
            limits: config.limits.clone(),
            workers: BTreeMap::new(),
            job_lease: config.job_lease,
            jobs: BTreeMap::new(),
            released: BTreeMap::new(),
            placements: 0,
            job_placements: BTreeMap::new(),
            relocations: BTreeMap::new(),
            job_relocations: BTreeMap::new(),
            parts: BTreeMap::new(),
            moved: BTreeMap::new(),
            recoveries_due: Vec::new(),
            job_parts: BTreeMap::new(),
            part_count: 0,
            lost: BTreeMap::new(),
            lost_worker_memory: config.lost_worker_memory,
            restart_grace: config.restart_grace,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// The master's metrics (counted here; gauges set from [`Registry::counts`]).
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Takes note that the master runs at `now` on its clock and at `real`
    /// on the process's monotonic time (every request and sweep does,
    /// through `Shared::with_registry`; the sweeper observes every
    /// `sweep_period`). A gap since the last observation longer than two
    /// sweep periods (and [`MIN_STALL`]) on both means the master itself was
    /// stopped (SIGSTOP, a paused VM) or starved: it did not see the
    /// heartbeats and renewals sent meanwhile, so that time does not count
    /// against them. Every lease and heartbeat age is moved forward by the
    /// unobserved time (the gap less one sweep period), so a job or worker
    /// alive before the stall gets its remaining lease or timeout after it,
    /// and a job whose agent really died is released that much later.
    pub(crate) fn observe(&mut self, now: Instant, real: Instant, sweep_period: Duration) {
        let gap = now
            .saturating_duration_since(self.last_seen.0)
            .min(real.saturating_duration_since(self.last_seen.1));
        if gap > (sweep_period * 2).max(MIN_STALL) {
            let stalled = gap - sweep_period;
            tracing::warn!(
                stalled_ms = stalled.as_millis() as u64,
                "this master was stopped or starved; leases and worker timeouts do not count the time it missed"
            );
            let credit = |t: &mut Instant| *t = (*t + stalled).min(now);
            self.jobs.values_mut().for_each(credit);
            self.workers
                .values_mut()
                .for_each(|w| credit(&mut w.last_heartbeat));
        }
        self.last_seen = (self.last_seen.0.max(now), self.last_seen.1.max(real));
    }

    /// The master's `worker_timeout`.
    pub(crate) fn worker_timeout(&self) -> Duration {
        self.worker_timeout
    }

    /// Forgets workers whose heartbeat is older than the timeout and released
    /// jobs older than their memory. Returns the ids of the workers dropped.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<String> {
        let (timeout, restart_grace) = (
            self.worker_timeout,
            self.restart_grace.max(self.worker_timeout),
        );
        let mut lost = Vec::new();
        let mut newly_lost = Vec::new();
        let mut due = Vec::new();
        self.workers.retain(|id, worker| {
            let silent = now.saturating_duration_since(worker.last_heartbeat);
            let mut live = if worker.load.restarting {
                silent <= restart_grace
            } else {
                silent <= timeout
            };
            // A durable worker's partitions are adopted before it counts
            // as lost (see `Worker::recovering`).
            if !live && !worker.load.decommissioning {
                match (&mut worker.recovering, &worker.load.durable_store) {
                    (None, Some(store_id)) => {
                        tracing::warn!(worker = %id, address = %worker.data_address, silent_ms = silent.as_millis() as u64,
                            "durable worker silent past the worker timeout: asking another worker to adopt its partitions from the object store");
                        worker.recovering = Some(Recovering {
                            deadline: now + RECOVERY_TIMEOUT,
                            done: false,
                        });
                        due.push(RecoveryDue {
                            worker_id: id.clone(),
                            store_id: store_id.clone(),
                        });
                        live = true;
                    }
                    (Some(r), _) if !r.done && now < r.deadline => live = true,
                    _ => {}
                }
            }
            if !live {
                if worker.load.decommissioning {
                    tracing::info!(worker = %id, address = %worker.data_address, silent_ms = silent.as_millis() as u64,
                        "decommissioned worker gone: no heartbeat within the worker timeout");
                } else {
                    tracing::warn!(worker = %id, address = %worker.data_address, silent_ms = silent.as_millis() as u64,
                        "worker lost: no heartbeat within the worker timeout");
                    newly_lost.push((
                        id.clone(),
                        LostWorker {
                            data_address: worker.data_address.clone(),
                            last_heartbeat: worker.last_heartbeat,
                            lost_at: now,
                        },
                    ));
                }
                lost.push(id.clone());
            }
            live
        });
        for (id, worker) in newly_lost {
            self.metrics.workers_lost.inc();
            self.lost.insert(id, worker);
        }
        self.recoveries_due.extend(due);
        let memory = self.lost_worker_memory;
        self.lost
            .retain(|_, w| now.saturating_duration_since(w.lost_at) <= memory);
        while self.lost.len() > self.limits.max_workers as usize {
            let oldest = self
                .lost
                .iter()
                .min_by_key(|(_, w)| w.lost_at)
                .map(|(id, _)| id.clone());
            let Some(oldest) = oldest else { break };
            self.lost.remove(&oldest);
        }
        let memory = self.released_job_memory;
        self.released
            .retain(|_, at| now.saturating_duration_since(*at) <= memory);
        let lease = self.job_lease;
        let expired: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, renewed)| now.saturating_duration_since(**renewed) > lease)
            .map(|(job, _)| job.clone())
            .collect();
        for job in expired {
            tracing::warn!(job = %job, lease_ms = lease.as_millis() as u64,
                "job lease expired (its master agent stopped renewing it); workers will be told to drop it");
            self.metrics.lease_expiries.inc();
            self.release(job, now);
        }
        lost
    }

    /// The master's job lease.
    pub(crate) fn job_lease(&self) -> Duration {
        self.job_lease
    }

    /// Of `jobs`, those this master neither holds nor remembers as released.
    pub(crate) fn unknown_jobs<'a>(&self, jobs: &'a [JobId]) -> Vec<&'a JobId> {
        jobs.iter()
            .filter(|job| !self.jobs.contains_key(*job) && !self.released.contains_key(*job))
            .collect()
    }

    /// Records a worker's registration (or re-registration) as a heartbeat
    /// without load. Returns true if the worker was not known.
    pub(crate) fn register_worker(
        &mut self,
        id: String,
        data_address: String,
        now: Instant,
    ) -> TierResult<bool> {
        self.expire(now);
        let was_lost = self.lost.remove(&id).is_some();
        if was_lost {
            tracing::warn!(worker = %id, "lost worker heartbeats again: it will be told to drop what it held");
        }
        if !self.workers.contains_key(&id) && self.workers.len() >= self.limits.max_workers as usize
        {
            return Err(PlacementError::WorkerLimit {
                known: self.workers.len(),
            }
            .into());
        }
        match self.workers.get_mut(&id) {
            Some(worker) => {
                if worker.data_address != data_address {
                    tracing::info!(worker = %id, old = %worker.data_address, new = %data_address,
                        "worker re-registered with a new address");
                    worker.data_address = data_address;
                }
                worker.last_heartbeat = now;
                worker.rejoined |= was_lost;
                if worker
                    .unreachable_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= UNREACHABLE_GRACE)
                {
                    tracing::info!(worker = %id, "unreachable worker heartbeats again; placing on it again");
                    worker.unreachable_since = None;
                }
                worker
                    .reported_by
                    .retain(|_, at| now.saturating_duration_since(*at) < UNREACHABLE_GRACE);
                Ok(false)
            }
            None => {
                tracing::info!(worker = %id, address = %data_address, "worker registered");
                self.workers.insert(
                    id,
                    Worker {
                        data_address,
                        load: WorkerLoad::default(),
                        last_heartbeat: now,
                        placed_bytes: 0,
                        last_placed: 0,
                        unreachable_since: None,
                        reported_by: BTreeMap::new(),
                        probe: ProbeState::Idle,
                        last_probe: None,
                        placed_since_heartbeat: 0,
                        rejoined: was_lost,
                        recovering: None,
                    },
                );
                Ok(true)
            }
        }
    }

    /// Records a heartbeat (registering an unknown worker) and returns the
    /// jobs released recently, which the worker must drop, and whether this
    /// master took the worker for lost since it last told it (it is told
    /// now, and gets partitions again).
    pub(crate) fn heartbeat(
        &mut self,
        id: String,
        data_address: String,
        load: WorkerLoad,
        now: Instant,
    ) -> TierResult<(Vec<JobId>, bool)> {
        let key = id.clone();
        self.metrics.heartbeats.inc();
        self.register_worker(id, data_address, now)?;
        let worker = self
            .workers
            .get_mut(&key)
            .expect("register_worker just inserted or refreshed this worker");
        worker.load = load;
        worker.placed_bytes = 0;
        worker.placed_since_heartbeat = 0;
        if worker.recovering.take().is_some() {
            let due = self.recoveries_due.len();
            self.recoveries_due.retain(|d| d.worker_id != key);
            if self.recoveries_due.len() == due {
                // An adopter was asked already and may hold its partitions:
                // it drops what it held, as a worker taken for lost does.
                tracing::warn!(worker = %key, "durable worker heartbeats again while its partitions were being adopted: it will be told to drop what it held");
                worker.rejoined = true;
            } else {
                tracing::info!(worker = %key, "durable worker heartbeats again before any adopter was asked: nothing to recover");
            }
        }
        let declared_lost = std::mem::take(&mut worker.rejoined);
        Ok((self.released.keys().cloned().collect(), declared_lost))
    }

    /// A peer could not reach worker `id`. A report is evidence, not a
    /// verdict: the reporting job's own placements skip the worker until it
    /// heartbeats again, and the master probes the worker itself (see
    /// [`Registry::probe_finished`]); only a failed probe keeps it from
    /// other jobs. `reporter` is the job whose producer or consumer
    /// reported (none: a cluster member, or a peer of an open cluster that
    /// named no job).
    pub(crate) fn report_unreachable(
        &mut self,
        id: &str,
        reporter: Option<&JobId>,
        now: Instant,
    ) -> Report {
        self.metrics.unreachable_reports.inc();
        let Some(worker) = self.workers.get_mut(id) else {
            return Report::UnknownWorker;
        };
        if let Some(job) = reporter.filter(|job| self.jobs.contains_key(*job)) {
            if worker.reported_by.len() < MAX_REPORTING_JOBS || worker.reported_by.contains_key(job)
            {
                worker.reported_by.insert(job.clone(), now);
            }
        }
        let probe = match worker.probe {
            ProbeState::Running { .. } => {
                worker.probe = ProbeState::Running { again: true };
                Probe::Covered
            }
            ProbeState::Scheduled => Probe::Covered,
            ProbeState::Idle => match worker.probe_wait(now) {
                Duration::ZERO => {
                    worker.start_probe(now);
                    Probe::Now(worker.data_address.clone())
                }
                wait => {
                    worker.probe = ProbeState::Scheduled;
                    Probe::After(wait)
                }
            },
        };
        Report::Recorded { probe }
    }

    /// Starts the probe of worker `id` that [`Probe::After`] (or
    /// [`Registry::probe_finished`]) scheduled: the address to probe, or
    /// `None` when none is due (the worker left, or no probe is scheduled).
    pub(crate) fn start_scheduled_probe(&mut self, id: &str, now: Instant) -> Option<String> {
        let worker = self.workers.get_mut(id)?;
        if worker.probe != ProbeState::Scheduled {
            return None;
        }
        worker.start_probe(now);
        Some(worker.data_address.clone())
    }

    /// The master's probe of worker `id` (started by
    /// [`Registry::report_unreachable`]) finished: a worker that did not
    /// answer gets no placements from anyone until it heartbeats again. A
    /// worker that answered while reports kept coming is probed again: the
    /// wait before [`Registry::start_scheduled_probe`] is returned.
    pub(crate) fn probe_finished(
        &mut self,
        id: &str,
        reachable: bool,
        now: Instant,
    ) -> Option<Duration> {
        let worker = self.workers.get_mut(id)?;
        let again = worker.probe == ProbeState::Running { again: true };
        worker.probe = ProbeState::Idle;
        if reachable {
            tracing::debug!(worker = %id, again, "worker reported unreachable answered the master's probe");
            if again {
                worker.probe = ProbeState::Scheduled;
                return Some(worker.probe_wait(now));
            }
        } else {
            self.metrics.probes_failed.inc();
            if worker.unreachable_since.is_none() {
                tracing::warn!(worker = %id, address = %worker.data_address,
                    "worker reported unreachable did not answer the master's probe; no placements on it until it heartbeats again");
            }
            worker.unreachable_since = Some(now);
        }
        None
    }

    pub(crate) fn register_job(&mut self, job: JobId, now: Instant) -> TierResult<()> {
        self.expire(now);
        self.check_job_room(&job)?;
        if self.released.remove(&job).is_some() {
            tracing::info!(job = %job, "released job registered again");
        }
        // Registering again renews the lease.
        if self.jobs.insert(job.clone(), now).is_none() {
            tracing::info!(job = %job, "job registered");
        }
        Ok(())
    }

    fn check_job_room(&self, job: &JobId) -> TierResult<()> {
        Ok(self.job_room(job)?)
    }

    fn job_room(&self, job: &JobId) -> Result<(), PlacementError> {
        if !self.jobs.contains_key(job) && self.jobs.len() >= self.limits.max_jobs as usize {
            return Err(PlacementError::JobLimit {
                jobs: self.jobs.len(),
            });
        }
        Ok(())
    }

    /// Forgets the job and remembers it as released, whether or not it was
    /// registered here (it may have been registered with a master that
    /// restarted since).
    pub(crate) fn unregister_job(&mut self, job: JobId, now: Instant) {
        self.expire(now);
        let known = self.jobs.contains_key(&job);
        tracing::info!(job = %job, known, "job unregistered; workers will be told to drop it");
        self.release(job, now);
    }

    /// Forgets the job and remembers it as released.
    fn release(&mut self, job: JobId, now: Instant) {
        self.jobs.remove(&job);
        self.job_placements.remove(&job);
        if self.job_relocations.remove(&job).is_some() {
            self.relocations.retain(|key, _| key.job != job);
        }
        self.parts.remove(&job);
        self.moved.retain(|(key, _), _| key.job != job);
        if let Some(n) = self.job_parts.remove(&job) {
            self.part_count = self.part_count.saturating_sub(n);
        }
        let max = self.limits.max_released_jobs as usize;
        while self.released.len() >= max && !self.released.contains_key(&job) {
            let oldest = self
                .released
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(j, _)| j.clone());
            let Some(oldest) = oldest else { break };
            tracing::warn!(job = %oldest, "forgetting a released job early (limits.max_released_jobs)");
            self.released.remove(&oldest);
        }
        self.released.insert(job, now);
    }

    /// Places a new partition (or the next part of a split one) on a live
    /// worker not in `exclude`.
    ///
    /// Workers reported unreachable, decommissioning, full, or back from
    /// being taken for lost and not yet told so, are never chosen. Of the
    /// rest, the first by:
    /// 0. a heartbeat within a third of `worker_timeout` (a worker whose
    ///    heartbeats stall, hung or cut off, is chosen only when no other
    ///    can take the partition);
    /// 1. no unhealthy data directory (one with a failed disk is chosen only
    ///    when no healthy worker can take the partition);
    /// 2. memory use under 80 % of its budget;
    /// 3. fewest of this job's partitions placed by this master (spread);
    /// 4. fewest streams (open partitions, read streams, and partitions
    ///    placed since its last heartbeat);
    /// 5. least stored bytes (plus the size estimate of partitions placed
    ///    since its last heartbeat);
    /// 6. least recently chosen, then id.
    ///
    /// A job this master does not know is registered on the way (soft state:
    /// it may have been registered with a master that restarted since); a job
    /// released recently is refused.
    pub(crate) fn allocate(
        &mut self,
        key: &PartitionKey,
        exclude: &[String],
        now: Instant,
    ) -> TierResult<Placement> {
        match self.place(key, exclude, now) {
            Ok(placement) => {
                self.metrics.placements.inc();
                Ok(placement)
            }
            Err(e) => {
                self.metrics.refused(e.reason());
                Err(e.into())
            }
        }
    }

    /// [`Registry::allocate`], uncounted.
    fn place(
        &mut self,
        key: &PartitionKey,
        exclude: &[String],
        now: Instant,
    ) -> Result<Placement, PlacementError> {
        self.expire(now);
        if self.released.contains_key(&key.job) {
            return Err(PlacementError::JobReleased {
                job: key.job.clone(),
            });
        }
        self.job_room(&key.job)?;
        if let std::collections::btree_map::Entry::Vacant(entry) = self.jobs.entry(key.job.clone())
        {
            entry.insert(now);
            tracing::info!(job = %key.job, "job registered by its first partition");
        }
        let spread = self.job_placements.entry(key.job.clone()).or_default();
        let stall = self.worker_timeout / 3;
        let chosen = self
            .workers
            .iter_mut()
            .filter(|(id, w)| {
                !exclude.contains(id)
                    && w.refusal().is_none()
                    && !w.reported_by.contains_key(&key.job)
            })
            .min_by_key(|(id, w)| {
                (
                    now.saturating_duration_since(w.last_heartbeat) > stall,
                    w.load.unhealthy_dirs > 0,
                    under_pressure(&w.load),
                    spread.get(id.as_str()).copied().unwrap_or(0),
                    w.streams(),
                    w.placement_load(),
                    w.last_placed,
                    id.as_str(),
                )
            });
        let Some((id, worker)) = chosen else {
            return Err(self.why_no_worker(&key.job, exclude));
        };
        self.placements += 1;
        worker.last_placed = self.placements;
        worker.placed_since_heartbeat = worker.placed_since_heartbeat.saturating_add(1);
        worker.placed_bytes = worker
            .placed_bytes
            .saturating_add(self.partition_size_estimate);
        *spread.entry(id.clone()).or_insert(0) += 1;
        tracing::debug!(job = %key.job, partition = %key.partition, worker = %id, "partition placed");
        Ok(Placement {
            worker_id: id.clone(),
            data_address: worker.data_address.clone(),
        })
    }

    /// Records that `key` lives on `worker` instead of its descriptor's worker.
    pub(crate) fn record_relocation(&mut self, key: PartitionKey, worker: String) {
        if self.released.contains_key(&key.job) {
            return;
        }
        if let Some(known) = self.relocations.get_mut(&key) {
            *known = worker;
            return;
        }
        let per_job = self.limits.max_relocations_per_job as usize;
        let of_job = self.job_relocations.get(&key.job).copied().unwrap_or(0);
        if of_job >= per_job {
            tracing::warn!(partition = %key, %worker, limit = per_job,
                "too many relocated partitions of this job to remember (limits.max_relocations_per_job); consumers of this one will not find it");
            return;
        }
        if self.relocations.len() >= MAX_RELOCATIONS {
            tracing::warn!(partition = %key, %worker, limit = MAX_RELOCATIONS,
                "too many relocated partitions to remember; consumers of this one will not find it");
            return;
        }
        *self.job_relocations.entry(key.job.clone()).or_insert(0) += 1;
        self.relocations.insert(key, worker);
        self.metrics.relocations.inc();
    }

    /// Records that `worker` holds a later part of the split partition `key`.
    pub(crate) fn record_part(&mut self, key: &PartitionKey, worker: &str) {
        if self.released.contains_key(&key.job) {
            return;
        }
        let known = self
            .parts
            .get(&key.job)
            .and_then(|w| w.get(worker))
            .is_some_and(|p| p.contains(&key.partition));
        if known {
            return;
        }
        let per_job = self.limits.max_parts_per_job as usize;
        let of_job = self.job_parts.get(&key.job).copied().unwrap_or(0);
        if of_job >= per_job || self.part_count >= MAX_PARTS {
            tracing::warn!(partition = %key, %worker, limit = per_job,
                "too many partition parts to remember (limits.max_parts_per_job); a loss of this one is found by its readers, not reported");
            return;
        }
        *self.job_parts.entry(key.job.clone()).or_insert(0) += 1;
        self.part_count += 1;
        self.parts
            .entry(key.job.clone())
            .or_default()
            .entry(worker.to_string())
            .or_default()
            .insert(key.partition.clone());
    }

    /// Records that `to` adopted the part of `key` that lost worker `from`
    /// held: readers of that part are sent there, and a later part is no
    /// longer listed among `from`'s parts.
    pub(crate) fn record_moved(&mut self, key: &PartitionKey, from: &str, to: &str) {
        if self.released.contains_key(&key.job) {
            return;
        }
        let entry = (key.clone(), from.to_string());
        if !self.moved.contains_key(&entry) && self.moved.len() >= MAX_RELOCATIONS {
            tracing::warn!(partition = %key, %from, %to, limit = MAX_RELOCATIONS,
                "too many adopted parts to remember; readers of this one will not find it");
            return;
        }
        self.moved.insert(entry, to.to_string());
        let removed = self
            .parts
            .get_mut(&key.job)
            .and_then(|w| w.get_mut(from))
            .is_some_and(|held| held.remove(&key.partition));
        if removed {
            if let Some(n) = self.job_parts.get_mut(&key.job) {
                *n = n.saturating_sub(1);
            }
            self.part_count = self.part_count.saturating_sub(1);
            self.record_part(key, to);
        }
    }

    /// Lost durable workers whose partitions an adopter should be asked for
    /// now (each once).
    pub(crate) fn take_recoveries(&mut self) -> Vec<RecoveryDue> {
        std::mem::take(&mut self.recoveries_due)
    }

    /// Live workers that may adopt `lost`'s partitions, best first: those
    /// with an object store that take partitions, in an order every master
    /// computes alike (so that they ask the same one).
    pub(crate) fn adopters_for(&self, lost: &str) -> Vec<Placement> {
        let mut candidates: Vec<(u64, &String, &Worker)> = self
            .workers
            .iter()
            .filter(|(id, w)| {
                id.as_str() != lost
                    && w.refusal().is_none()
                    && w.load
                        .tiers
                        .as_ref()
                        .is_some_and(|t| t.object_store.is_some())
            })
            .map(|(id, w)| (rendezvous(lost, id), id, w))
            .collect();
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        candidates
            .into_iter()
            .map(|(_, id, w)| Placement {
                worker_id: id.clone(),
                data_address: w.data_address.clone(),
            })
            .collect()
    }

    /// The adopters were asked (whatever they answered): `worker` counts as
    /// lost at the next sweep, and what was not adopted is reported.
    pub(crate) fn recovery_finished(&mut self, worker: &str) {
        if let Some(r) = self
            .workers
            .get_mut(worker)
            .and_then(|w| w.recovering.as_mut())
        {
            r.done = true;
        }
    }

    /// The partitions of `job` with a later part on `worker`, if this
    /// master took `worker` for lost (a decommissioned worker handed its
    /// parts over before it left): at most `max`, and whether there are
    /// more.
    pub(crate) fn parts_on(
        &self,
        job: &JobId,
        worker: &str,
        max: usize,
    ) -> (Vec<PartitionId>, bool) {
        if !self.lost.contains_key(worker) {
            return (Vec::new(), false);
        }
        let Some(held) = self.parts.get(job).and_then(|w| w.get(worker)) else {
            return (Vec::new(), false);
        };
        (held.iter().take(max).cloned().collect(), held.len() > max)
    }

    /// Where a relocated partition lives, if this master knows and that
    /// worker is live and not reported unreachable.
    pub(crate) fn locate(&mut self, key: &PartitionKey, now: Instant) -> Option<Placement> {
        self.expire(now);
        let id = self.relocations.get(key)?;
        self.live_placement(id, key)
    }

    /// Where the part of `key` that lost worker `from` held lives now, if
    /// another worker adopted it.
    pub(crate) fn locate_moved(
        &mut self,
        key: &PartitionKey,
        from: &str,
        now: Instant,
    ) -> Option<Placement> {
        self.expire(now);
        let id = self.moved.get(&(key.clone(), from.to_string()))?.clone();
        self.live_placement(&id, key)
    }

    /// Worker `id` for readers of `key`: if it is live and not reported
    /// unreachable.
    fn live_placement(&self, id: &str, key: &PartitionKey) -> Option<Placement> {
        let worker = self.workers.get(id)?;
        if worker.unreachable_since.is_some()
            || worker.reported_by.contains_key(&key.job)
            || worker.recovering.is_some()
        {
            return None;
        }
        Some(Placement {
            worker_id: id.to_string(),
            data_address: worker.data_address.clone(),
        })
    }

    /// Why no worker could take a partition, counting each reason.
    fn why_no_worker(&self, job: &JobId, exclude: &[String]) -> PlacementError {
        let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (id, w) in &self.workers {
            let reason = if exclude.contains(id) {
                "already holding a part of the partition (excluded)"
            } else if let Some(refusal) = w.refusal() {
                refusal
            } else if w.reported_by.contains_key(job) {
                "reported unreachable by this job"
            } else {
                "available"
            };
            *reasons.entry(reason).or_default() += 1;
        }
        PlacementError::NoWorker {
            live: self.workers.len(),
            reasons: reasons.into_iter().collect(),
        }
    }

    /// Live workers, by id.
    /// Whether the worker list is complete: this master has been up for a
    /// whole `worker_timeout`, so every live worker has heartbeated to it. A
    /// worker missing from an unsettled list may just not have reached a
    /// freshly restarted master yet.
    pub(crate) fn settled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= self.worker_timeout
    }

    pub(crate) fn live_workers(&mut self, now: Instant) -> Vec<WorkerSnapshot> {
        self.expire(now);
        self.workers
            .iter()
            .map(|(id, w)| WorkerSnapshot {
                id: id.clone(),
                data_address: w.data_address.clone(),
                load: w.load.clone(),
                since_heartbeat: now.saturating_duration_since(w.last_heartbeat),
            })
            .collect()
    }

    /// Registered jobs, in byte order.
    pub(crate) fn jobs(&self) -> Vec<JobId> {
        self.jobs.keys().cloned().collect()
    }

    /// Whether worker `id` said it is restarting and is still waited for.
    pub(crate) fn is_restarting(&self, id: &str, now: Instant) -> bool {
        self.workers
            .get(id)
            .is_some_and(|w| w.load.restarting && !self.silent_past_timeout(w, now))
    }

    /// Whether worker `id` is durable (durability = "object-store") and not
    /// counted lost yet: its parts are back when it is, or adopted by
    /// another worker, so a reader that cannot reach it waits.
    pub(crate) fn is_recovering(&self, id: &str) -> bool {
        self.workers
            .get(id)
            .is_some_and(|w| w.load.durable_store.is_some() && w.recovering.is_none_or(|r| !r.done))
    }

    /// Whether `worker` has been silent longer than it may be: its
    /// `worker_timeout`, or `restart_grace` while it says it is restarting.
    fn silent_past_timeout(&self, worker: &Worker, now: Instant) -> bool {
        let allowed = if worker.load.restarting {
            self.restart_grace.max(self.worker_timeout)
        } else {
            self.worker_timeout
        };
        now.saturating_duration_since(worker.last_heartbeat) > allowed
    }

    /// What the gauges show at `now`. Reads only: a worker silent past the
    /// timeout that no sweep has dropped yet already counts as lost.
    pub(crate) fn counts(&self, now: Instant) -> Counts {
        let mut counts = Counts {
            lost: self.lost.len() as u64,
            jobs: self.jobs.len() as u64,
            released_jobs: self.released.len() as u64,
            relocated_partitions: self.relocations.len() as u64,
            settled: self.settled(now),
            ..Counts::default()
        };
        for worker in self.workers.values() {
            if self.silent_past_timeout(worker, now) {
                if !worker.load.decommissioning {
                    counts.lost += 1;
                }
                continue;
            }
            match worker.state() {
                WorkerState::Live => counts.live += 1,
                WorkerState::Decommissioning => counts.decommissioning += 1,
                WorkerState::Unhealthy => counts.unhealthy += 1,
            }
        }
        counts
    }

    /// Live workers with their state, by id (read only, like [`Registry::counts`]).
    pub(crate) fn workers_with_state(&self, now: Instant) -> Vec<(WorkerSnapshot, WorkerState)> {
        self.workers
            .iter()
            .filter(|(_, w)| !self.silent_past_timeout(w, now))
            .map(|(id, w)| {
                (
                    WorkerSnapshot {
                        id: id.clone(),
                        data_address: w.data_address.clone(),
                        load: w.load.clone(),
                        since_heartbeat: now.saturating_duration_since(w.last_heartbeat),
                    },
                    w.state(),
                )
            })
            .collect()
    }

    /// Workers counted as lost, by id.
    pub(crate) fn lost_workers(&self) -> Vec<(String, LostWorker)> {
        self.lost
            .iter()
            .map(|(id, w)| (id.clone(), w.clone()))
            .collect()
    }

    /// Released jobs and when each was released, in byte order.
    pub(crate) fn released_jobs(&self) -> Vec<(JobId, Instant)> {
        self.released
            .iter()
            .map(|(j, at)| (j.clone(), *at))
            .collect()
    }

    /// A registered job's placements and relocations, if it is registered.
    pub(crate) fn job(&self, job: &JobId, now: Instant) -> Option<JobSnapshot> {
        let renewed = self.jobs.get(job)?;
        let relocated = if self.job_relocations.contains_key(job) {
            // Keys sort by job first, and `[0]` is the least partition id.
            let first = PartitionKey {
                job: job.clone(),
                partition: PartitionId::new(vec![0u8]).expect("a one-byte id is valid"),
            };
            self.relocations
                .range(first..)
                .take_while(|(key, _)| &key.job == job)
                .map(|(key, worker)| (key.clone(), worker.clone()))
                .collect()
        } else {
            Vec::new()
        };
        Some(JobSnapshot {
            job: job.clone(),
            since_renewal: now.saturating_duration_since(*renewed),
            placements: self.job_placements.get(job).cloned().unwrap_or_default(),
            relocated,
        })
    }

    /// Whether `job` was released recently (and when).
    pub(crate) fn released_at(&self, job: &JobId) -> Option<Instant> {
        self.released.get(job).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::placement;
    use terrace_tier_api::protocol::TierStats;
    use terrace_tier_api::{ByteSize, ErrorKind, TierError};

    /// Why each live worker was passed over, from a `NoWorkers` error.
    fn no_worker_reasons(err: &TierError) -> Vec<(&'static str, usize)> {
        match placement(err) {
            Some(PlacementError::NoWorker { reasons, .. }) => reasons.clone(),
            other => panic!("not a NoWorker placement error: {other:?} ({err})"),
        }
    }

    const MIB: u64 = 1024 * 1024;

    fn registry(estimate: u64) -> Registry {
        Registry::new(
            &MasterConfig {
                worker_timeout: Duration::from_millis(300),
                released_job_memory: Duration::from_secs(1),
                partition_size_estimate: ByteSize(estimate),
                ..MasterConfig::default()
            },
            clock::now(),
        )
    }

    #[test]
    fn time_a_stopped_master_missed_does_not_expire_leases_or_workers() {
        let t0 = clock::now();
        let config = MasterConfig {
            job_lease: Duration::from_secs(3),
            worker_timeout: Duration::from_secs(2),
            ..MasterConfig::default()
        };
        let period = sweep_period(&config);
        assert_eq!(period, Duration::from_millis(500));
        let mut r = Registry::new(&config, t0);
        let job = key("job", 1).job;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        r.observe(at(0), at(0), period);
        r.register_job(job.clone(), at(0)).expect("register");
        r.register_worker("w".into(), "h:1".into(), at(0))
            .expect("register worker");
        // Sweeps every period while the master runs: nothing is credited.
        for ms in [500, 1000, 1500] {
            r.observe(at(ms), at(ms), period);
        }
        // Stopped for 20 s: the next observation (a sweep or a request) sees
        // the gap on both clocks and credits 19.5 s of it.
        r.observe(at(21_500), at(21_500), period);
        assert!(r.expire(at(21_500)).is_empty(), "the worker is not lost");
        assert_eq!(r.jobs(), std::slice::from_ref(&job), "the job is kept");
        // Its remaining lease (3 s from its renewal at 0, 1.5 s of which had
        // passed before the stall, plus the one uncredited period) still runs out.
        r.observe(at(22_000), at(22_000), period);
        r.observe(at(22_500), at(22_500), period);
        assert_eq!(
            r.expire(at(22_500)),
            ["w"],
            "the silent worker is lost after its timeout"
        );
        assert_eq!(
            r.jobs(),
            std::slice::from_ref(&job),
            "at 3 s of observed age"
        );
        r.observe(at(22_501), at(22_501), period);
        r.expire(at(22_501));
        assert_eq!(r.jobs(), Vec::<JobId>::new(), "expired past its lease");

        // A clock that jumps while the process ran (a test's manual clock)
        // is not a stall: the process's own time shows no gap.
        let mut r = Registry::new(&config, t0);
        r.observe(at(0), at(0), period);
        r.register_job(job.clone(), at(0)).expect("register");
        r.observe(at(10_000), at(10), period);
        r.expire(at(10_000));
        assert_eq!(r.jobs(), Vec::<JobId>::new());
    }

    #[test]
    fn jobs_not_renewed_for_a_lease_are_released_and_others_are_unknown() {
        let t0 = clock::now();
        let mut r = Registry::new(
            &MasterConfig {
                job_lease: Duration::from_secs(3),
                released_job_memory: Duration::from_secs(60),
                ..MasterConfig::default()
            },
            t0,
        );
        let renewed = key("renewed", 1).job;
        let dead = key("dead", 1).job;
        let stranger = key("stranger", 1).job;
        r.register_job(renewed.clone(), t0).expect("register");
        r.register_job(dead.clone(), t0).expect("register");
        // Registering again renews; `dead` is not renewed.
        r.register_job(renewed.clone(), t0 + Duration::from_secs(2))
            .expect("renew");
        r.expire(t0 + Duration::from_secs(3));
        assert_eq!(
            r.jobs(),
            [dead.clone(), renewed.clone()],
            "not expired at the lease"
        );
        r.expire(t0 + Duration::from_millis(3001));
        assert_eq!(r.jobs(), std::slice::from_ref(&renewed));
        // The expired job is told to workers like an unregistered one.
        let (released, _) = r
            .heartbeat(
                "w".into(),
                "h:1".into(),
                stored(0),
                t0 + Duration::from_millis(3002),
            )
            .expect("heartbeat");
        assert_eq!(released, std::slice::from_ref(&dead));
        // Of the jobs a worker holds, only those neither held nor released are unknown.
        let asked = [renewed.clone(), dead.clone(), stranger.clone()];
        assert_eq!(r.unknown_jobs(&asked), [&stranger]);
        // An expired job that comes back (its agent was only slow) is live again.
        r.register_job(dead.clone(), t0 + Duration::from_secs(4))
            .expect("register again");
        assert!(r.jobs().contains(&dead));
    }

    /// A worker reported unreachable gets no placements, and excluded workers
    /// none either; a heartbeat sent before the report (within the grace)
    /// does not clear it, a later one does.
    #[test]
    fn unreachable_and_excluded_workers_get_no_placements() {
        let t0 = clock::now();
        let mut r = registry(0);
        for w in ["w1", "w2", "w3"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), t0)
                .expect("heartbeat");
        }
        assert_eq!(
            r.report_unreachable("w2", None, t0),
            Report::Recorded {
                probe: Probe::Now("w2:1".into())
            }
        );
        assert_eq!(
            r.report_unreachable("nobody", None, t0),
            Report::UnknownWorker
        );
        r.probe_finished("w2", false, t0);
        // A job of its own each time, so that spreading one job's
        // partitions does not decide.
        let mut jobs = 0;
        let mut placed = |r: &mut Registry, exclude: &[String], now| {
            jobs += 1;
            (0..6)
                .map(|p| {
                    r.allocate(&key(&format!("j{jobs}"), p), exclude, now)
                        .expect("a worker is free")
                        .worker_id
                })
                .collect::<std::collections::BTreeSet<_>>()
        };
        let w1_w3: std::collections::BTreeSet<String> = ["w1".to_string(), "w3".to_string()].into();
        assert_eq!(placed(&mut r, &[], t0), w1_w3);
        assert_eq!(
            placed(&mut r, &["w1".to_string()], t0),
            ["w3".to_string()].into()
        );
        let err = r
            .allocate(&key("j", 9), &["w1".to_string(), "w3".to_string()], t0)
            .expect_err("all excluded or unreachable");
        assert_eq!(err.kind(), ErrorKind::NoWorkers);
        assert_eq!(
            no_worker_reasons(&err),
            [
                ("already holding a part of the partition (excluded)", 2),
                ("unreachable (the master's probe failed)", 1)
            ],
            "{err}"
        );
        let soon = t0 + Duration::from_millis(100);
        r.heartbeat("w2".into(), "w2:1".into(), stored(0), soon)
            .expect("heartbeat");
        assert_eq!(placed(&mut r, &[], soon), w1_w3, "still unreachable");
        let later = t0 + Duration::from_millis(1100);
        for w in ["w1", "w2", "w3"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), later)
                .expect("heartbeat");
        }
        assert!(
            placed(&mut r, &[], later).contains("w2"),
            "back after a heartbeat"
        );
    }

    /// A report from one job keeps that job's placements off the worker and
    /// no other job's; it asks for one probe per [`PROBE_INTERVAL`] however
    /// often it comes; a probe that finds the worker alive changes nothing
    /// for others, and the reporting job's exclusion ends with a heartbeat
    /// sent after the grace.
    #[test]
    fn a_report_excludes_a_worker_only_for_the_reporting_job() {
        let t0 = clock::now();
        let mut r = Registry::new(
            &MasterConfig {
                worker_timeout: Duration::from_secs(60),
                ..MasterConfig::default()
            },
            t0,
        );
        for w in ["w1", "w2"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), t0)
                .expect("heartbeat");
        }
        let (a, b) = (job("a"), job("b"));
        r.register_job(a.clone(), t0).expect("room");
        r.register_job(b.clone(), t0).expect("room");
        assert_eq!(
            r.report_unreachable("w1", Some(&a), t0),
            Report::Recorded {
                probe: Probe::Now("w1:1".into())
            }
        );
        // A flood of reports while the probe runs: no second probe now, but
        // the probe that finds the worker alive asks for one more, a probe
        // interval after the first began.
        for ms in [10, 20, 40] {
            let at = t0 + Duration::from_millis(ms);
            assert_eq!(
                r.report_unreachable("w1", Some(&a), at),
                Report::Recorded {
                    probe: Probe::Covered
                }
            );
        }
        assert_eq!(
            r.probe_finished("w1", true, t0 + Duration::from_millis(50)),
            Some(Duration::from_millis(950)),
            "reports came during the probe: another one later"
        );
        assert_eq!(
            r.report_unreachable("w1", Some(&a), t0 + Duration::from_millis(200)),
            Report::Recorded {
                probe: Probe::Covered
            },
            "a probe is scheduled"
        );
        assert_eq!(
            r.start_scheduled_probe("w1", t0 + PROBE_INTERVAL),
            Some("w1:1".to_string())
        );
        assert_eq!(
            r.start_scheduled_probe("w1", t0 + PROBE_INTERVAL),
            None,
            "started once"
        );
        let second = t0 + PROBE_INTERVAL;
        assert_eq!(
            r.probe_finished("w1", true, second),
            None,
            "no report during the second probe: nothing more"
        );
        // A report within the interval of the last probe: scheduled for when
        // the interval ends, not dropped.
        assert_eq!(
            r.report_unreachable("w1", Some(&a), second + Duration::from_millis(300)),
            Report::Recorded {
                probe: Probe::After(Duration::from_millis(700))
            },
            "within the probe interval"
        );
        let next = second + PROBE_INTERVAL;
        assert_eq!(r.start_scheduled_probe("w1", next), Some("w1:1".into()));
        r.probe_finished("w1", true, next);
        let placed = |r: &mut Registry, job: &JobId, n: u32, now| {
            (0..n)
                .map(|p| {
                    r.allocate(
                        &PartitionKey {
                            job: job.clone(),
                            partition: PartitionId::new(p.to_be_bytes().to_vec())
                                .expect("valid partition id"),
                        },
                        &[],
                        now,
                    )
                    .expect("a worker is free")
                    .worker_id
                })
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(placed(&mut r, &a, 6, next), ["w2".to_string()].into());
        assert_eq!(
            placed(&mut r, &b, 6, next),
            ["w1".to_string(), "w2".to_string()].into()
        );
        let err = r
            .allocate(&key("a", 99), &["w2".to_string()], next)
            .expect_err("w1 reported by this job, w2 excluded");
        assert_eq!(err.kind(), ErrorKind::NoWorkers);
        assert!(
            no_worker_reasons(&err).contains(&("reported unreachable by this job", 1)),
            "{err}"
        );
        // A heartbeat within the grace of the last report keeps it; a later one ends it.
        let later = next + UNREACHABLE_GRACE;
        for w in ["w1", "w2"] {
            r.heartbeat(
                w.into(),
                format!("{w}:1"),
                stored(0),
                next + Duration::from_millis(10),
            )
            .expect("heartbeat");
        }
        assert_eq!(placed(&mut r, &a, 6, later), ["w2".to_string()].into());
        for w in ["w1", "w2"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), later)
                .expect("heartbeat");
        }
        assert!(placed(&mut r, &a, 6, later).contains("w1"));
    }

    /// Reports naming a job the master does not hold only ask for a probe;
    /// a failed probe keeps the worker from every job.
    #[test]
    fn only_a_failed_probe_excludes_a_worker_for_everyone() {
        let t0 = clock::now();
        let mut r = registry(0);
        for w in ["w1", "w2"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), t0)
                .expect("heartbeat");
        }
        let ghost = job("never-registered");
        assert!(matches!(
            r.report_unreachable("w1", Some(&ghost), t0),
            Report::Recorded {
                probe: Probe::Now(_)
            }
        ));
        let any = r.allocate(&key("ghost-free", 1), &["w2".to_string()], t0);
        assert_eq!(any.expect("w1 still places").worker_id, "w1");
        r.probe_finished("w1", false, t0);
        let err = r
            .allocate(&key("other", 1), &["w2".to_string()], t0)
            .expect_err("w1 failed the probe");
        assert!(
            no_worker_reasons(&err).contains(&("unreachable (the master's probe failed)", 1)),
            "{err}"
        );
        r.probe_finished("nobody", false, t0);
    }

    /// One job cannot fill the relocation map: past its own limit its
    /// relocations are not recorded, and other jobs' still are.
    #[test]
    fn relocations_are_bounded_per_job() {
        let now = clock::now();
        let mut r = Registry::new(
            &MasterConfig {
                limits: crate::config::MasterLimits {
                    max_relocations_per_job: 3,
                    ..Default::default()
                },
                ..MasterConfig::default()
            },
            now,
        );
        r.heartbeat("w1".into(), "w1:1".into(), stored(0), now)
            .expect("room");
        for p in 0..5 {
            r.record_relocation(key("greedy", p), "w1".into());
        }
        let found = (0..5)
            .filter(|p| r.locate(&key("greedy", *p), now).is_some())
            .count();
        assert_eq!(found, 3);
        // Recording a known one again is an update, not a new entry.
        r.record_relocation(key("greedy", 0), "w1".into());
        r.record_relocation(key("other", 0), "w1".into());
        assert!(r.locate(&key("other", 0), now).is_some());
        // Released with its job, the job's count starts over.
        r.unregister_job(job("greedy"), now);
        r.register_job(job("greedy"), now).expect("room");
        r.record_relocation(key("greedy", 4), "w1".into());
        assert!(r.locate(&key("greedy", 4), now).is_some());
    }

    fn job(name: &str) -> JobId {
        JobId::new(name.as_bytes().to_vec()).expect("valid job id")
    }

    fn key(job: &str, partition: u32) -> PartitionKey {
        PartitionKey {
            job: JobId::new(job.as_bytes().to_vec()).expect("valid job id"),
            partition: PartitionId::new(partition.to_be_bytes().to_vec())
                .expect("valid partition id"),
        }
    }

    fn stored(bytes: u64) -> WorkerLoad {
        WorkerLoad {
            stored_bytes: bytes,
            ..WorkerLoad::default()
        }
    }

    fn place(r: &mut Registry, n: u32, now: Instant) -> Vec<String> {
        (0..n)
            .map(|p| {
                r.allocate(&key("j", p), &[], now)
                    .expect("a worker is live")
                    .worker_id
            })
            .collect()
    }

    #[test]
    fn workers_jobs_and_released_jobs_are_bounded() {
        let now = clock::now();
        let mut r = Registry::new(
            &MasterConfig {
                limits: crate::config::MasterLimits {
                    max_workers: 2,
                    max_jobs: 2,
                    max_released_jobs: 2,
                    ..Default::default()
                },
                ..MasterConfig::default()
            },
            now,
        );
        r.register_worker("w1".into(), "h:1".into(), now)
            .expect("room");
        r.heartbeat("w2".into(), "h:2".into(), stored(0), now)
            .expect("room");
        let err = r
            .register_worker("w3".into(), "h:3".into(), now)
            .expect_err("a third worker");
        assert!(
            matches!(
                placement(&err),
                Some(PlacementError::WorkerLimit { known: 2 })
            ),
            "{err}"
        );
        let err = r
            .heartbeat("w3".into(), "h:3".into(), stored(0), now)
            .expect_err("a third worker by heartbeat");
        assert!(
            matches!(
                placement(&err),
                Some(PlacementError::WorkerLimit { known: 2 })
            ),
            "{err}"
        );
        // Known workers go on.
        r.heartbeat("w1".into(), "h:1".into(), stored(1), now)
            .expect("known");

        let job = |name: &str| JobId::new(name.as_bytes().to_vec()).expect("id");
        r.register_job(job("a"), now).expect("room");
        r.allocate(&key("b", 1), &[], now)
            .expect("room by allocation");
        let err = r.register_job(job("c"), now).expect_err("a third job");
        assert!(
            matches!(placement(&err), Some(PlacementError::JobLimit { jobs: 2 })),
            "{err}"
        );
        let err = r
            .allocate(&key("c", 1), &[], now)
            .expect_err("a third job by allocation");
        assert!(
            matches!(placement(&err), Some(PlacementError::JobLimit { jobs: 2 })),
            "{err}"
        );
        r.register_job(job("a"), now).expect("a known job again");

        // Released jobs: the oldest is forgotten past the limit.
        for (i, name) in ["a", "b", "x", "y"].into_iter().enumerate() {
            r.unregister_job(job(name), now + Duration::from_millis(i as u64));
        }
        let (released, _) = r
            .heartbeat(
                "w1".into(),
                "h:1".into(),
                stored(0),
                now + Duration::from_millis(5),
            )
            .expect("known");
        assert_eq!(released, vec![job("x"), job("y")]);
    }

    #[test]
    fn equal_loads_rotate_even_without_an_estimate() {
        let now = clock::now();
        let mut r = registry(0);
        for id in ["w1", "w2", "w3"] {
            r.register_worker(id.into(), format!("{id}:1"), now)
                .expect("room");
        }
        assert_eq!(
            place(&mut r, 7, now),
            ["w1", "w2", "w3", "w1", "w2", "w3", "w1"]
        );
    }

    /// Places one partition of each of `n` jobs never seen before.
    fn place_jobs(r: &mut Registry, n: u32, now: Instant) -> Vec<String> {
        static JOBS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        (0..n)
            .map(|_| {
                let j = JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                r.allocate(&key(&format!("job{j}"), 0), &[], now)
                    .expect("a worker is live")
                    .worker_id
            })
            .collect()
    }

    #[test]
    fn placement_follows_stored_plus_estimated_bytes() {
        let now = clock::now();
        let mut r = registry(64 * MIB);
        r.heartbeat("a".into(), "a:1".into(), stored(300 * MIB), now)
            .expect("room");
        r.heartbeat("b".into(), "b:1".into(), stored(100 * MIB), now)
            .expect("room");
        r.heartbeat("c".into(), "c:1".into(), stored(200 * MIB), now)
            .expect("room");
        // b 100 → 164 → 228, c 200 → 264, b 228 → 292, c 264 → 328, b 292 → 356, a 300.
        // Each placement also counts as a stream until the next heartbeat,
        // so the partitions of different jobs rotate first: a, b, c get one
        // stream each, then bytes decide among equal streams.
        assert_eq!(
            place_jobs(&mut r, 7, now),
            ["b", "c", "a", "b", "c", "a", "b"]
        );
        for (id, bytes) in [("a", 300), ("b", 100), ("c", 200)] {
            r.heartbeat(id.into(), format!("{id}:1"), stored(bytes * MIB), now)
                .expect("room");
        }
        // b 100 → 164; then streams are 1, 0 (a, c): c 200 → 264; a 300: all
        // have one stream, b has the least bytes.
        assert_eq!(place_jobs(&mut r, 4, now), ["b", "c", "a", "b"]);
        // A heartbeat replaces the estimate with what the worker reports.
        for (id, bytes) in [("a", 0), ("b", 100), ("c", 200)] {
            r.heartbeat(id.into(), format!("{id}:1"), stored(bytes * MIB), now)
                .expect("room");
        }
        assert_eq!(place_jobs(&mut r, 1, now), ["a"]);
    }

    /// Full, decommissioning and unreachable workers are never chosen; a
    /// worker with a failed directory or under memory pressure only when
    /// nothing better is left; and the error says why nobody could take it.
    #[test]
    fn full_decommissioning_unhealthy_and_pressed_workers_are_avoided() {
        let now = clock::now();
        let mut r = registry(0);
        let idle = WorkerLoad {
            memory_budget_bytes: 100,
            ..WorkerLoad::default()
        };
        let heartbeat = |r: &mut Registry, id: &str, load: WorkerLoad| {
            r.heartbeat(id.into(), format!("{id}:1"), load, now)
                .expect("room");
        };
        heartbeat(&mut r, "ok", idle.clone());
        heartbeat(
            &mut r,
            "full",
            WorkerLoad {
                full: true,
                ..idle.clone()
            },
        );
        heartbeat(
            &mut r,
            "leaving",
            WorkerLoad {
                decommissioning: true,
                ..idle.clone()
            },
        );
        heartbeat(
            &mut r,
            "bad-disk",
            WorkerLoad {
                unhealthy_dirs: 1,
                ..idle.clone()
            },
        );
        heartbeat(
            &mut r,
            "pressed",
            WorkerLoad {
                memory_used_bytes: 85,
                ..idle.clone()
            },
        );
        let mut jobs = 0;
        let mut spread = |r: &mut Registry, exclude: &[&str]| {
            jobs += 1;
            let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
            (0..8)
                .map(|p| {
                    r.allocate(&key(&format!("j{jobs}"), p), &exclude, now)
                        .map(|p| p.worker_id)
                })
                .collect::<TierResult<std::collections::BTreeSet<String>>>()
        };
        assert_eq!(
            spread(&mut r, &[]).expect("ok is free"),
            ["ok".to_string()].into()
        );
        // Under pressure beats a failed disk; a failed disk beats nothing.
        assert_eq!(
            spread(&mut r, &["ok"]).expect("pressed"),
            ["pressed".to_string()].into()
        );
        assert_eq!(
            spread(&mut r, &["ok", "pressed"]).expect("bad-disk"),
            ["bad-disk".to_string()].into()
        );
        let err = spread(&mut r, &["ok", "pressed", "bad-disk"]).expect_err("nobody");
        assert_eq!(err.kind(), ErrorKind::NoWorkers);
        // The whole message: it is what an operator reads to see why.
        assert_eq!(
            err.message(),
            "no live worker can take a partition (5 live: 3 already holding a part of the partition (excluded), 1 decommissioning, 1 full)"
        );
        // A heartbeat that no longer says full makes the worker eligible.
        heartbeat(&mut r, "full", idle.clone());
        assert_eq!(
            spread(&mut r, &["ok", "pressed", "bad-disk"]).expect("full no more"),
            ["full".to_string()].into()
        );
    }

    /// One job's partitions spread over the workers even when one of them
    /// stores much less; streams and bytes only break ties.
    #[test]
    fn one_jobs_partitions_spread_over_the_workers() {
        let now = clock::now();
        let mut r = registry(64 * MIB);
        r.heartbeat("empty".into(), "e:1".into(), stored(0), now)
            .expect("room");
        for id in ["busy1", "busy2"] {
            r.heartbeat(
                id.into(),
                format!("{id}:1"),
                WorkerLoad {
                    stored_bytes: 50 * 1024 * MIB,
                    open_partitions: 40,
                    read_streams: 12,
                    ..WorkerLoad::default()
                },
                now,
            )
            .expect("room");
        }
        let placed = place(&mut r, 9, now);
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for w in &placed {
            *count.entry(w.as_str()).or_default() += 1;
        }
        assert_eq!(count, [("busy1", 3), ("busy2", 3), ("empty", 3)].into());
        // The least loaded takes the first of each round.
        assert_eq!(placed[0], "empty");
        assert_eq!(placed[3], "empty");
        // Another job starts again on the least loaded worker.
        assert_eq!(place_jobs(&mut r, 1, now), ["empty"]);
    }

    /// A relocated partition is located on its new worker while that worker
    /// is live and reachable, and forgotten with its job.
    #[test]
    fn relocated_partitions_are_located_until_their_job_is_released() {
        let now = clock::now();
        let mut r = registry(0);
        for w in ["w1", "w2"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), now)
                .expect("room");
        }
        let (moved, other) = (key("j", 1), key("j", 2));
        assert_eq!(r.locate(&moved, now), None);
        r.record_relocation(moved.clone(), "w2".into());
        let at = r.locate(&moved, now).expect("located");
        assert_eq!(
            (at.worker_id.as_str(), at.data_address.as_str()),
            ("w2", "w2:1")
        );
        assert_eq!(r.locate(&other, now), None);
        // Not while its worker failed the master's probe.
        r.report_unreachable("w2", None, now);
        r.probe_finished("w2", false, now);
        assert_eq!(r.locate(&moved, now), None);
        let later = now + Duration::from_millis(1100);
        for w in ["w1", "w2"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), later)
                .expect("room");
        }
        assert!(r.locate(&moved, later).is_some());
        // Released with the job; a late report does not bring it back.
        r.unregister_job(moved.job.clone(), later);
        assert_eq!(r.locate(&moved, later), None);
        r.record_relocation(moved.clone(), "w2".into());
        assert_eq!(r.locate(&moved, later), None);
    }

    /// Later parts are listed per job and worker, at most `max` at a time,
    /// bounded per job, and forgotten with their job.
    #[test]
    fn later_parts_are_listed_per_worker_bounded_and_forgotten_with_the_job() {
        let t0 = clock::now();
        let mut r = Registry::new(
            &MasterConfig {
                limits: crate::config::MasterLimits {
                    max_parts_per_job: 3,
                    ..Default::default()
                },
                ..Default::default()
            },
            t0,
        );
        r.register_job(job("j"), t0).expect("room");
        r.register_job(job("k"), t0).expect("room");
        for w in ["w1", "w2", "w3"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), t0)
                .expect("room");
        }
        r.record_part(&key("j", 1), "w1");
        r.record_part(&key("j", 1), "w1");
        r.record_part(&key("j", 2), "w1");
        r.record_part(&key("j", 1), "w2");
        // Past the job's limit: not recorded.
        r.record_part(&key("j", 3), "w1");
        r.record_part(&key("k", 1), "w1");
        // Asked about only once lost (w3 decommissions: gone, not lost).
        assert_eq!(r.parts_on(&job("j"), "w1", 10), (Vec::new(), false));
        let mut leaving = stored(0);
        leaving.decommissioning = true;
        r.heartbeat("w3".into(), "w3:1".into(), leaving, t0)
            .expect("room");
        r.record_part(&key("k", 2), "w3");
        let later = t0 + Duration::from_secs(11);
        r.expire(later);
        assert_eq!(r.parts_on(&job("k"), "w3", 10), (Vec::new(), false));
        let ids =
            |n: &[u32]| -> Vec<PartitionId> { n.iter().map(|&n| key("j", n).partition).collect() };
        assert_eq!(r.parts_on(&job("j"), "w1", 10), (ids(&[1, 2]), false));
        assert_eq!(r.parts_on(&job("j"), "w1", 1), (ids(&[1]), true));
        assert_eq!(r.parts_on(&job("j"), "w2", 10), (ids(&[1]), false));
        assert_eq!(r.parts_on(&job("j"), "w3", 10), (Vec::new(), false));
        assert_eq!(r.parts_on(&job("k"), "w1", 10).0.len(), 1);
        r.unregister_job(job("j"), t0);
        assert_eq!(r.parts_on(&job("j"), "w1", 10), (Vec::new(), false));
        // A released job's late parts are not recorded.
        r.record_part(&key("j", 4), "w1");
        assert_eq!(r.parts_on(&job("j"), "w1", 10), (Vec::new(), false));
        assert_eq!(r.parts_on(&job("k"), "w1", 10).0.len(), 1);
    }

    /// A worker whose heartbeats stall (a third of the 300 ms timeout) is
    /// placed on only when no other can take the partition; one taken for
    /// lost that comes back gets no partition until a heartbeat reply has
    /// told it, once, that it was declared lost.
    #[test]
    fn stalled_workers_are_avoided_and_a_lost_one_is_told_when_it_returns() {
        let t0 = clock::now();
        let mut r = registry(0);
        for w in ["w1", "w2"] {
            r.heartbeat(w.into(), format!("{w}:1"), stored(0), t0)
                .expect("room");
        }
        // w1 stalls: 150 ms silent, past a third of the timeout.
        let t1 = t0 + Duration::from_millis(150);
        r.heartbeat("w2".into(), "w2:1".into(), stored(0), t1)
            .expect("room");
        assert_eq!(place(&mut r, 3, t1), ["w2", "w2", "w2"]);
        // With w2 excluded, the stalled worker is still better than none.
        let chosen = r
            .allocate(&key("j", 50), &["w2".to_string()], t1)
            .expect("the stalled worker takes it");
        assert_eq!(chosen.worker_id, "w1");

        // w1 silent past the timeout: lost. It comes back by registering.
        let t2 = t0 + Duration::from_millis(400);
        r.heartbeat("w2".into(), "w2:1".into(), stored(0), t2)
            .expect("room");
        let lost: Vec<String> = r.lost_workers().into_iter().map(|(id, _)| id).collect();
        assert_eq!(lost, ["w1"]);
        r.register_worker("w1".into(), "w1:1".into(), t2)
            .expect("room");
        let err = r
            .allocate(&key("j", 51), &["w2".to_string()], t2)
            .expect_err("w1 has not been told yet");
        assert!(
            err.message()
                .contains("rejoining after it was taken for lost"),
            "{err}"
        );
        let (_, declared_lost) = r
            .heartbeat("w1".into(), "w1:1".into(), stored(0), t2)
            .expect("room");
        assert!(declared_lost, "the returning worker is told");
        let (_, again) = r
            .heartbeat("w1".into(), "w1:1".into(), stored(0), t2)
            .expect("room");
        assert!(!again, "told once");
        let chosen = r
            .allocate(&key("j", 52), &["w2".to_string()], t2)
            .expect("placed on again once told");
        assert_eq!(chosen.worker_id, "w1");
        // A worker that was never lost is never told.
        let (_, w2_told) = r
            .heartbeat("w2".into(), "w2:1".into(), stored(0), t2)
            .expect("room");
        assert!(!w2_told);
    }

    /// A durable worker (durability = "object-store") silent past the
    /// timeout stays listed, refused for placements, while readers are told
    /// to wait; its recovery is due once; parts its adopter names move (read
    /// from the adopter, no longer listed on the lost worker); once the
    /// adopters were asked it counts as lost at the next sweep.
    #[test]
    fn a_silent_durable_worker_is_recovered_before_it_counts_as_lost() {
        let t0 = clock::now();
        let mut r = registry(0);
        r.register_job(job("j"), t0).expect("room");
        let durable = || {
            let mut load = stored(0);
            load.durable_store = Some("abc123".into());
            load.tiers = Some(Box::new(TierStats {
                object_store: Some(Default::default()),
                ..Default::default()
            }));
            load
        };
        for w in ["w1", "w2", "w3"] {
            r.heartbeat(w.into(), format!("{w}:1"), durable(), t0)
                .expect("room");
        }
        r.record_part(&key("j", 1), "w1");
        assert!(r.is_recovering("w1"), "readers wait for a durable worker");
        assert!(r.take_recoveries().is_empty());
        // w1 silent past the 300 ms timeout: recovering, still listed.
        let t1 = t0 + Duration::from_millis(400);
        for at in [t0 + Duration::from_millis(200), t1] {
            for w in ["w2", "w3"] {
                r.heartbeat(w.into(), format!("{w}:1"), durable(), at)
                    .expect("room");
            }
        }
        let listed: Vec<String> = r.live_workers(t1).into_iter().map(|w| w.id).collect();
        assert_eq!(listed, ["w1", "w2", "w3"]);
        assert!(r.lost_workers().is_empty());
        assert_eq!(
            r.take_recoveries(),
            [RecoveryDue {
                worker_id: "w1".into(),
                store_id: "abc123".into(),
            }]
        );
        assert!(r.take_recoveries().is_empty(), "due once");
        assert!(r.is_recovering("w1"));
        let adopters: Vec<String> = r
            .adopters_for("w1")
            .into_iter()
            .map(|p| p.worker_id)
            .collect();
        let mut sorted = adopters.clone();
        sorted.sort();
        assert_eq!(sorted, ["w2", "w3"], "live workers with a store, never w1");
        let err = r
            .allocate(&key("j", 9), &["w2".into(), "w3".into()], t1)
            .expect_err("nothing is placed on a recovering worker");
        assert!(err.message().contains("being adopted"), "{err}");
        // The adopter names the part it adopted from w1.
        r.record_moved(&key("j", 1), "w1", "w2");
        assert_eq!(
            r.locate_moved(&key("j", 1), "w1", t1).map(|p| p.worker_id),
            Some("w2".into())
        );
        assert_eq!(r.locate_moved(&key("j", 1), "w3", t1), None);
        r.recovery_finished("w1");
        assert!(!r.is_recovering("w1"));
        let t2 = t1 + Duration::from_millis(10);
        r.expire(t2);
        let lost: Vec<String> = r.lost_workers().into_iter().map(|(id, _)| id).collect();
        assert_eq!(lost, ["w1"]);
        assert_eq!(
            r.parts_on(&job("j"), "w1", 10),
            (Vec::new(), false),
            "the adopted part is no longer listed on the lost worker"
        );
        assert_eq!(
            r.parts_on(&job("j"), "w2", 10),
            (Vec::new(), false),
            "w2 is live: not asked about"
        );
        // Forgotten with the job.
        r.unregister_job(job("j"), t2);
        assert_eq!(r.locate_moved(&key("j", 1), "w1", t2), None);

        // w3 late past the timeout, heartbeating before any adopter was
        // asked: nothing is due and it is not fenced.
        let t3 = t2 + Duration::from_millis(400);
        r.heartbeat("w2".into(), "w2:1".into(), durable(), t2)
            .expect("room");
        r.expire(t3 - Duration::from_millis(50));
        let (_, fenced) = r
            .heartbeat("w3".into(), "w3:1".into(), durable(), t3)
            .expect("room");
        assert!(!fenced, "not asked about yet: nothing to fence");
        let due: Vec<String> = r
            .take_recoveries()
            .into_iter()
            .map(|d| d.worker_id)
            .collect();
        assert!(!due.contains(&"w3".to_string()), "{due:?}");
    }

    #[test]
    fn silent_workers_expire_and_come_back_with_a_heartbeat() {
        let t0 = clock::now();
        let mut r = registry(0);
        r.register_worker("w1".into(), "h:1".into(), t0)
            .expect("room");
        r.register_worker("w2".into(), "h:2".into(), t0)
            .expect("room");
        let t1 = t0 + Duration::from_millis(200);
        r.heartbeat("w2".into(), "h:2".into(), stored(5), t1)
            .expect("room");
        assert_eq!(
            r.expire(t0 + Duration::from_millis(300)),
            Vec::<String>::new()
        );
        let t2 = t0 + Duration::from_millis(301);
        let live: Vec<String> = r.live_workers(t2).into_iter().map(|w| w.id).collect();
        assert_eq!(live, ["w2"]);
        assert_eq!(place(&mut r, 2, t2), ["w2", "w2"]);
        let t3 = t1 + Duration::from_millis(301);
        let err = r
            .allocate(&key("j", 9), &[], t3)
            .expect_err("nobody is live");
        assert_eq!(err.kind(), ErrorKind::NoWorkers);
        r.heartbeat("w1".into(), "h:9".into(), stored(1), t3)
            .expect("room");
        let live = r.live_workers(t3);
        assert_eq!(
            live,
            [WorkerSnapshot {
                id: "w1".into(),
                data_address: "h:9".into(),
                load: stored(1),
                since_heartbeat: Duration::ZERO,
            }]
        );
    }

    #[test]
    fn released_jobs_are_listed_for_their_memory_then_forgotten() {
        let t0 = clock::now();
        let mut r = registry(0);
        let (j1, j2) = (key("job1", 0).job, key("job2", 0).job);
        r.register_job(j1.clone(), t0).expect("room");
        r.register_job(j2.clone(), t0).expect("room");
        assert_eq!(r.jobs(), [j1.clone(), j2.clone()]);
        r.unregister_job(j1.clone(), t0);
        assert_eq!(r.jobs(), vec![j2.clone()]);
        let (released, _) = r
            .heartbeat(
                "w".into(),
                "h:1".into(),
                stored(0),
                t0 + Duration::from_millis(10),
            )
            .expect("room");
        assert_eq!(released, vec![j1.clone()]);
        let err = r
            .allocate(&key("job1", 1), &[], t0)
            .expect_err("released job");
        assert_eq!(err.kind(), ErrorKind::BadInput);
        let (released, _) = r
            .heartbeat(
                "w".into(),
                "h:1".into(),
                stored(0),
                t0 + Duration::from_millis(1001),
            )
            .expect("room");
        assert_eq!(released, Vec::<JobId>::new());
        r.unregister_job(j2.clone(), t0 + Duration::from_millis(1001));
        r.register_job(j2.clone(), t0 + Duration::from_millis(1002))
            .expect("room");
        let (released, _) = r
            .heartbeat(
                "w".into(),
                "h:1".into(),
                stored(0),
                t0 + Duration::from_millis(1003),
            )
            .expect("room");
        assert_eq!(released, Vec::<JobId>::new());
        assert_eq!(r.jobs(), [j2]);
    }

    #[test]
    fn worker_list_is_settled_one_worker_timeout_after_start() {
        let started = clock::now();
        let registry = Registry::new(
            &MasterConfig {
                worker_timeout: Duration::from_millis(300),
                ..MasterConfig::default()
            },
            started,
        );
        assert!(!registry.settled(started));
        assert!(!registry.settled(started + Duration::from_millis(299)));
        assert!(registry.settled(started + Duration::from_millis(300)));
    }
}
