//! [`MasterAgent`]: the `TierMasterAgent` methods, and the background task
//! that turns workers missing from the master's list into lost partitions.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use terrace_rpc::clock;
use terrace_rpc::{
    ClientOptions, ExpectedServer, JobToken, Peer, Pool, Security, SecurityConfig, ServerIdentity,
    io_runtime,
};
use terrace_tier_api::protocol::{
    AllocatePartition, DropJob, ListParts, ListWorkers, LocatePartition, ReleasePartition,
    UnregisterJob, WorkerAt, WorkerList,
};
use terrace_tier_api::{
    AgentConfig, ErrorKind, JobId, PartitionId, PartitionKey, ShuffleDescriptor, TierError,
    TierMasterAgent, TierResult, TierShuffleHandler, WorkerId,
};
use tokio_util::sync::CancellationToken;

use crate::masters::Masters;
use crate::placements::{LostPartitions, Placements};

/// How often the agent asks a master for its worker list, by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Terrace's `TierMasterAgent`.
///
/// Every method blocks the calling thread on [`terrace_rpc::io_runtime`]:
/// call them from engine threads or from `spawn_blocking`, never from a tokio
/// runtime's worker thread (tokio panics: a runtime cannot be blocked on from
/// inside one).
///
/// Lost partitions are reported through the job's
/// [`TierShuffleHandler::on_release_partitions`], called once per job and lost
/// worker with that job's partitions on it, from a blocking-pool thread; each
/// partition is reported at most once.
pub struct MasterAgent {
    pub(crate) shared: Arc<Shared>,
    stop: CancellationToken,
}

pub(crate) struct Shared {
    pub(crate) masters: Masters,
    /// Connections to workers, presenting the cluster secret only to the
    /// worker the masters list at an address.
    pub(crate) workers: Pool,
    placements: Arc<Mutex<Placements>>,
    /// The workers the last settled list named: one missing from the next
    /// is lost, and the later parts it held are asked for (`ListParts`).
    listed: Mutex<HashSet<String>>,
    closed: AtomicBool,
}

impl fmt::Debug for MasterAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterAgent")
            .field("masters", &self.shared.masters.addresses())
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    io_runtime().block_on(future)
}

impl MasterAgent {
    /// An agent for the masters of `config.master_addresses` (tried in order)
    /// that checks for lost workers every [`DEFAULT_POLL_INTERVAL`].
    /// Connections are opened on first use.
    pub fn new(config: AgentConfig) -> TierResult<Self> {
        Self::with_poll_interval(config, DEFAULT_POLL_INTERVAL)
    }

    /// [`MasterAgent::new`] with another interval between worker-list polls.
    pub fn with_poll_interval(config: AgentConfig, poll_interval: Duration) -> TierResult<Self> {
        if config.master_addresses.is_empty() {
            return Err(TierError::bad_input("master_addresses is empty"));
        }
        if poll_interval.is_zero() {
            return Err(TierError::bad_input("the poll interval must be positive"));
        }
        // The agent proves it holds the cluster secret to masters and workers.
        let security = Security::load(&SecurityConfig {
            secret_file: config.secret_file.clone(),
            tls_ca_file: config.tls_ca_file.clone(),
            ..SecurityConfig::default()
        })?;
        let options = |name: &str| ClientOptions {
            name: name.to_string(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_frame_bytes: config.max_frame_size.as_usize(),
            credential: security.credential(),
            server: ExpectedServer::Any,
            tls: security.tls_client.clone(),
            liveness: Some(config.liveness_timeout),
        };
        let placements = Arc::new(Mutex::new(Placements::default()));
        let announce = {
            let placements = placements.clone();
            Arc::new(move || placements.lock().expect("placements lock poisoned").jobs())
        };
        let shared = Arc::new(Shared {
            masters: Masters::new(
                config.master_addresses.clone(),
                options("master-agent").expecting(ExpectedServer::Is(ServerIdentity::Master)),
                announce,
                config.job_renew_interval,
            ),
            workers: Pool::new(options("master-agent")),
            placements,
            listed: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        io_runtime().spawn(poll_loop(shared.clone(), poll_interval, stop.clone()));
        io_runtime().spawn(renew_loop(
            shared.clone(),
            config.job_renew_interval,
            stop.clone(),
        ));
        Ok(MasterAgent { shared, stop })
    }

    /// Releases a partition of a registered job that some other process
    /// placed (an engine's task, through a [`crate::JobPlacer`]), whose
    /// worker this agent does not know: every live worker is asked to
    /// delete it (a worker holding its first part deletes its later parts
    /// too). Returns whether a worker held it; a partition never placed, or
    /// already gone, is `Ok(false)`. Meant for the rare attempt an engine
    /// gives up on: it costs one request per live worker.
    pub fn release_placed(&self, job: &JobId, partition: &PartitionId) -> TierResult<bool> {
        self.shared.check_open()?;
        if self.shared.placements().token(job).is_none() {
            return Err(TierError::bad_input(format!("job {job} is not registered")));
        }
        let key = PartitionKey {
            job: job.clone(),
            partition: partition.clone(),
        };
        block_on(async {
            let list = self.shared.list_workers().await?;
            let mut releases = tokio::task::JoinSet::new();
            for worker in list.workers {
                let shared = Arc::clone(&self.shared);
                let key = key.clone();
                releases.spawn(async move {
                    let peer = Peer::worker(&worker.worker);
                    shared.workers.call(&peer, ReleasePartition { key }).await
                });
            }
            let mut held = false;
            let mut failed = None;
            while let Some(joined) = releases.join_next().await {
                let result = joined
                    .map_err(|e| TierError::with_source(ErrorKind::Internal, "release task", e))?;
                match result {
                    Ok(_) => held = true,
                    Err(e) if e.kind() == ErrorKind::PartitionNotFound => {}
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                // A worker that could not be asked may be the one holding it.
                Some(e) if !held => Err(e.context(format!("release {key}"))),
                _ => Ok(held),
            }
        })
    }
}

impl Shared {
    pub(crate) fn placements(&self) -> MutexGuard<'_, Placements> {
        self.placements.lock().expect("placements lock poisoned")
    }

    pub(crate) fn check_open(&self) -> TierResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(TierError::closed("the master agent is closed"))
        } else {
            Ok(())
        }
    }

    pub(crate) async fn list_workers(&self) -> TierResult<WorkerList> {
        self.masters.request(ListWorkers).await
    }

    /// Asks every live worker to drop `job`. An unreachable worker is only
    /// logged: its data died with it (and the master lists the job as released
    /// in its heartbeat replies, should it come back).
    async fn drop_job_on_workers(self: &Arc<Self>, job: &JobId) -> TierResult<()> {
        let list = self.list_workers().await?;
        let mut drops = tokio::task::JoinSet::new();
        for worker in list.workers {
            let shared = self.clone();
            let job = job.clone();
            drops.spawn(async move {
                let peer = Peer::worker(&worker.worker);
                let result = shared
                    .workers
                    .call(&peer, DropJob { job: job.clone() })
                    .await;
                (worker.worker, job, result)
            });
        }
        while let Some(joined) = drops.join_next().await {
            let (worker, job, result) = joined
                .map_err(|e| TierError::with_source(ErrorKind::Internal, "drop job task", e))?;
            match result {
                Ok(_) => {
                    tracing::debug!(job = %job, worker = %worker.id, "job dropped on worker")
                }
                Err(e) => {
                    tracing::warn!(job = %job, worker = %worker.id, address = %worker.address,
                    error = %e, "cannot drop job on worker; the master will tell it in its heartbeat replies")
                }
            }
        }
        Ok(())
    }

    /// Of `partitions` (placed on a worker now lost), those not relocated
    /// elsewhere: a producer whose worker was unreachable before its first
    /// push moved its partition whole to another worker, which a master
    /// locates. Those are placed again where they are and not lost.
    async fn keep_relocated(&self, job: &JobId, partitions: Vec<PartitionId>) -> Vec<PartitionId> {
        let mut lost = Vec::new();
        for partition in partitions {
            let key = PartitionKey {
                job: job.clone(),
                partition: partition.clone(),
            };
            match self.locate(&key).await {
                Some(at) => {
                    tracing::info!(partition = %key, worker = %at.id,
                        "partition on a lost worker was relocated before its first push; not lost");
                    if let Err(e) = self.placements().add(
                        job,
                        partition.clone(),
                        at.id.into_string(),
                        clock::now(),
                    ) {
                        tracing::debug!(partition = %key, error = %e, "job gone meanwhile");
                    }
                }
                None => lost.push(partition),
            }
        }
        lost
    }

    /// The worker a master says a relocated partition lives on, if any knows.
    pub(crate) async fn locate(&self, key: &PartitionKey) -> Option<WorkerAt> {
        let located = self
            .masters
            .request(LocatePartition {
                key: key.clone(),
                worker: None,
            })
            .await;
        located.ok().and_then(|l| l.worker)
    }

    /// One round of lost-worker detection.
    async fn poll_once(&self) -> TierResult<()> {
        if !self.placements().has_partitions() {
            return Ok(());
        }
        let listed_at = clock::now();
        let list = self.list_workers().await?;
        if !list.settled {
            // A master that started less than a worker timeout ago may not have
            // heard from every live worker yet: judge nothing from its list.
            return Ok(());
        }
        let live: HashSet<String> = list
            .workers
            .into_iter()
            .map(|w| w.worker.id.into_string())
            .collect();
        let gone: Vec<String> = {
            let mut listed = self.listed.lock().expect("listed lock poisoned");
            let gone = listed.difference(&live).cloned().collect();
            listed.clone_from(&live);
            gone
        };
        let mut lost = self.placements().take_lost(&live, listed_at);
        for worker in gone {
            lost.extend(self.take_lost_parts(&worker).await);
        }
        for mut lost in lost {
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            if !lost.later_parts {
                lost.partitions = self.keep_relocated(&lost.job, lost.partitions).await;
            }
            if lost.partitions.is_empty() {
                continue;
            }
            tracing::warn!(job = %lost.job, worker = %lost.worker_id, partitions = lost.partitions.len(),
                later_parts = lost.later_parts,
                "worker lost; reporting the partitions with a part on it to the engine");
            // Engine callbacks may block: keep them off the I/O threads.
            let handler = lost.handler;
            let partitions = lost.partitions;
            tokio::task::spawn_blocking(move || handler.on_release_partitions(partitions))
                .await
                .map_err(|e| {
                    TierError::with_source(
                        ErrorKind::Internal,
                        "on_release_partitions callback failed",
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// The tracked partitions (not yet reported) with a later part on the
    /// lost `worker`, as the masters know them (`ListParts`), per job;
    /// taken from tracking, so each is reported once.
    async fn take_lost_parts(&self, worker: &str) -> Vec<LostPartitions> {
        let Ok(worker_id) = WorkerId::new(worker.to_string()) else {
            return Vec::new();
        };
        let jobs = self.placements().jobs();
        let mut lost = Vec::new();
        for job in jobs {
            let listed = self
                .masters
                .request(ListParts {
                    job: job.clone(),
                    worker: worker_id.clone(),
                })
                .await;
            let listed = match listed {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(job = %job, worker, error = %e,
                        "cannot ask the masters which partitions had a part on a lost worker; their readers will find out");
                    continue;
                }
            };
            if listed.truncated {
                tracing::warn!(job = %job, worker, listed = listed.partitions.len(),
                    "the masters list only some of the partitions with a part on a lost worker; readers of the others will find out");
            }
            if let Some(taken) = self.placements().take(&job, worker, &listed.partitions) {
                lost.push(taken);
            }
        }
        lost
    }
}

/// Renews the leases of this agent's jobs on every master: a master
/// releases a job whose agent (the engine's coordinator) stops renewing it.
async fn renew_loop(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clock::sleep(interval) => {}
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        shared.masters.renew_everywhere().await;
    }
}

async fn poll_loop(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clock::sleep(interval) => {}
        }
        match shared.poll_once().await {
            Ok(()) => {
                if failing {
                    tracing::info!("lost-worker detection works again");
                }
                failing = false;
            }
            // Logged once per run of failures; nothing is declared lost meanwhile.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot check for lost workers; will retry");
                failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot check for lost workers"),
        }
    }
}

impl TierMasterAgent for MasterAgent {
    fn register_job(&self, job: &JobId, handler: Arc<dyn TierShuffleHandler>) -> TierResult<()> {
        self.shared.check_open()?;
        // Every master learns of the job now, not at the next renewal: any
        // of them may be asked to place its partitions or hear it released.
        let replies = block_on(self.shared.masters.register_everywhere(job));
        let token = first_success(replies)
            .and_then(|registered| match registered.token {
                None => Ok(String::new()),
                Some(token) => JobToken::from_bytes(&token)
                    .map(|t| t.to_hex())
                    .map_err(TierError::from),
            })
            .map_err(|e| e.context(format!("register job {job}")))?;
        self.shared
            .placements()
            .register(job.clone(), handler, token);
        tracing::info!(job = %job, "job registered");
        Ok(())
    }

    fn unregister_job(&self, job: &JobId) -> TierResult<()> {
        self.shared.check_open()?;
        // Forget first, so a lost worker found meanwhile is not reported for a finished job.
        let partitions = self.shared.placements().unregister(job);
        tracing::info!(job = %job, partitions = partitions.unwrap_or(0), "unregistering job");
        block_on(async {
            // Every reachable master releases it (one that is down forgets
            // the job anyway, and its workers drop data of unknown jobs).
            let replies = self
                .shared
                .masters
                .request_everywhere(UnregisterJob { job: job.clone() })
                .await;
            first_success(replies)?;
            self.shared.drop_job_on_workers(job).await
        })
        .map_err(|e| e.context(format!("unregister job {job}")))
    }

    fn add_partition_and_get_shuffle_descriptor(
        &self,
        job: &JobId,
        partition: &PartitionId,
        num_subpartitions: u32,
    ) -> TierResult<ShuffleDescriptor> {
        self.shared.check_open()?;
        let Some(token) = self.shared.placements().token(job) else {
            return Err(TierError::bad_input(format!("job {job} is not registered")));
        };
        let key = PartitionKey {
            job: job.clone(),
            partition: partition.clone(),
        };
        let allocated = block_on(self.shared.masters.request(AllocatePartition {
            key: key.clone(),
            num_subpartitions,
            exclude: Vec::new(),
            relocated_from: None,
        }))
        .map_err(|e| e.context(format!("place {key}")))?;
        if allocated.key != key {
            return Err(TierError::internal(format!(
                "place {key}: the master placed {} instead",
                allocated.key
            )));
        }
        let worker = allocated.worker;
        self.shared.placements().add(
            job,
            partition.clone(),
            worker.id.to_string(),
            clock::now(),
        )?;
        tracing::debug!(job = %job, partition = %partition, worker = %worker.id, "partition placed");
        Ok(ShuffleDescriptor::new(&key, worker.id.into_string(), worker.address).with_token(token))
    }

    fn release_partition(&self, descriptor: &ShuffleDescriptor) -> TierResult<()> {
        self.shared.check_open()?;
        let key = descriptor.key()?;
        self.shared.placements().remove(&key.job, &key.partition);
        let release = |worker: WorkerAt| {
            let key = key.clone();
            let shared = Arc::clone(&self.shared);
            async move {
                shared
                    .workers
                    .call(&Peer::worker(&worker), ReleasePartition { key })
                    .await
                    .map(drop)
            }
        };
        let placed = WorkerAt::new(
            WorkerId::new(descriptor.worker_id.clone())?,
            &descriptor.worker_address,
        );
        let result = block_on(async {
            match release(placed).await {
                // The descriptor's worker is gone: the partition may have
                // been relocated before its first push.
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    match self.shared.locate(&key).await {
                        Some(worker) => release(worker).await,
                        None => Err(e),
                    }
                }
                other => other,
            }
        });
        match result {
            Ok(()) => {
                tracing::debug!(job = %key.job, partition = %key.partition, worker = %descriptor.worker_id,
                    "partition released");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::PartitionNotFound => {
                tracing::debug!(job = %key.job, partition = %key.partition, worker = %descriptor.worker_id,
                    "partition already gone");
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "release {key} on worker {} at {}",
                descriptor.worker_id, descriptor.worker_address
            ))),
        }
    }

    /// Stops lost-worker detection and closes every connection. Later calls
    /// fail with `Closed`. A handler callback already running may still finish.
    fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.stop.cancel();
        self.shared.masters.close();
        self.shared.workers.close();
        tracing::debug!("master agent closed");
    }
}

impl Drop for MasterAgent {
    fn drop(&mut self) {
        self.close();
    }
}

/// The first successful reply of a request sent to every master, or the
/// last error when none succeeded.
fn first_success<T>(replies: Vec<TierResult<T>>) -> TierResult<T> {
    let mut last = TierError::unavailable("no master address configured");
    for reply in replies {
        match reply {
            Ok(reply) => return Ok(reply),
            Err(e) => last = e,
        }
    }
    Err(last.context("no master answered"))
}
