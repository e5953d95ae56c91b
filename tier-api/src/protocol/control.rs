//! What masters serve: worker registration and heartbeats, jobs and their
//! leases, partition placement, unreachable-worker reports, the worker list.

use std::time::Duration;

use bytes::Bytes;
use terrace_proto::pb;

use super::{Access, Ack, WorkerAt, millis, opt_millis, request, truncate, wire};
use crate::error::{TierError, TierResult};
use crate::ids::{JobId, MAX_ID_BYTES, PartitionId, PartitionKey, WorkerId};

/// Most jobs (and, separately, relocated partitions) one heartbeat may name.
pub const MAX_HEARTBEAT_JOBS: usize = 4096;
/// Most workers an allocation may exclude (the parts of a split chain).
pub const MAX_EXCLUDED_WORKERS: usize = 64;
/// Most data directories a worker may report.
pub const MAX_DIRS: usize = 64;
/// Longest directory path or store URL a worker may report, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest error text a worker may report in its load, in bytes.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Longest `WorkerUnreachable` error text kept (longer is cut), in bytes.
pub const MAX_REPORT_ERROR_BYTES: usize = 1024;
/// Bytes of a job token.
pub const JOB_TOKEN_BYTES: usize = 32;

/// A worker's data address: `host:port` with a numeric, non-zero port, at
/// most [`MAX_ID_BYTES`] bytes.
fn data_address(address: String) -> TierResult<String> {
    let valid = address.len() <= MAX_ID_BYTES
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
    if valid {
        Ok(address)
    } else {
        Err(TierError::bad_input(format!(
            "worker data address {address:?} is not host:port"
        )))
    }
}

fn check_len(field: &str, text: &str, max: usize) -> TierResult<()> {
    if text.len() > max {
        return Err(TierError::bad_input(format!(
            "{field} has {} bytes, more than {max}",
            text.len()
        )));
    }
    Ok(())
}

fn job_ids(ids: Vec<Bytes>) -> TierResult<Vec<JobId>> {
    ids.into_iter().map(JobId::new).collect()
}

fn job_bytes(jobs: Vec<JobId>) -> Vec<Bytes> {
    jobs.into_iter().map(|j| j.as_bytes().clone()).collect()
}

/// A worker announces itself (counts as a heartbeat). Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterWorker {
    pub worker: WorkerId,
    /// `host:port` where producers and consumers reach the worker.
    pub data_address: String,
}

impl TryFrom<pb::RegisterWorker> for RegisterWorker {
    type Error = TierError;

    fn try_from(m: pb::RegisterWorker) -> TierResult<Self> {
        Ok(RegisterWorker {
            worker: WorkerId::new(m.worker_id)?,
            data_address: data_address(m.data_address)?,
        })
    }
}

impl RegisterWorker {
    pub fn into_pb(self, request_id: u64) -> pb::RegisterWorker {
        pb::RegisterWorker {
            request_id,
            worker_id: self.worker.into_string(),
            data_address: self.data_address,
        }
    }
}

wire!(RegisterWorker);
request!(RegisterWorker => Ack, |_r| Access::Cluster);

/// A worker's liveness and load. Answered with [`HeartbeatReply`].
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerHeartbeat {
    pub worker: WorkerId,
    pub data_address: String,
    pub load: WorkerLoad,
    /// Jobs the worker holds data of (at most [`MAX_HEARTBEAT_JOBS`]: a page
    /// of them when it holds more).
    pub jobs: Vec<JobId>,
    /// Partitions created here as relocated (at most [`MAX_HEARTBEAT_JOBS`]).
    pub relocated: Vec<PartitionKey>,
    /// Later parts of split partitions held here (at most
    /// [`MAX_HEARTBEAT_JOBS`]: a page of them when there are more).
    pub parts: Vec<PartitionKey>,
    /// Parts adopted here from a lost worker, and that worker (at most
    /// [`MAX_HEARTBEAT_JOBS`]).
    pub adopted: Vec<(PartitionKey, WorkerId)>,
}

impl TryFrom<pb::WorkerHeartbeat> for WorkerHeartbeat {
    type Error = TierError;

    fn try_from(m: pb::WorkerHeartbeat) -> TierResult<Self> {
        if m.relocated.len() > MAX_HEARTBEAT_JOBS {
            return Err(TierError::bad_input(format!(
                "a heartbeat names {} relocated partitions, more than {MAX_HEARTBEAT_JOBS}",
                m.relocated.len()
            )));
        }
        if m.parts.len() > MAX_HEARTBEAT_JOBS {
            return Err(TierError::bad_input(format!(
                "a heartbeat names {} partition parts, more than {MAX_HEARTBEAT_JOBS}",
                m.parts.len()
            )));
        }
        if m.jobs.len() > MAX_HEARTBEAT_JOBS {
            return Err(TierError::bad_input(format!(
                "a heartbeat names {} jobs, more than {MAX_HEARTBEAT_JOBS}",
                m.jobs.len()
            )));
        }
        if m.adopted.len() > MAX_HEARTBEAT_JOBS {
            return Err(TierError::bad_input(format!(
                "a heartbeat names {} adopted parts, more than {MAX_HEARTBEAT_JOBS}",
                m.adopted.len()
            )));
        }
        Ok(WorkerHeartbeat {
            worker: WorkerId::new(m.worker_id)?,
            data_address: data_address(m.data_address)?,
            load: WorkerLoad::try_from(m.load.unwrap_or_default())?,
            jobs: job_ids(m.jobs)?,
            relocated: m
                .relocated
                .into_iter()
                .map(PartitionKey::try_from)
                .collect::<TierResult<_>>()?,
            parts: m
                .parts
                .into_iter()
                .map(PartitionKey::try_from)
                .collect::<TierResult<_>>()?,
            adopted: m
                .adopted
                .into_iter()
                .map(|a| {
                    Ok((
                        PartitionKey::try_from(a.key)?,
                        WorkerId::parse_field("adopted.from_worker_id", a.from_worker_id)?,
                    ))
                })
                .collect::<TierResult<_>>()?,
        })
    }
}

impl WorkerHeartbeat {
    pub fn into_pb(self, request_id: u64) -> pb::WorkerHeartbeat {
        pb::WorkerHeartbeat {
            request_id,
            worker_id: self.worker.into_string(),
            data_address: self.data_address,
            load: Some(self.load.into()),
            jobs: job_bytes(self.jobs),
            relocated: self.relocated.into_iter().map(Into::into).collect(),
            parts: self.parts.into_iter().map(Into::into).collect(),
            adopted: self
                .adopted
                .into_iter()
                .map(|(key, from)| pb::AdoptedPart {
                    key: Some(key.into()),
                    from_worker_id: from.into_string(),
                })
                .collect(),
        }
    }
}

wire!(WorkerHeartbeat);
request!(WorkerHeartbeat => HeartbeatReply, |_r| Access::Cluster);

/// A worker's load, as it reports it (heartbeats, stats) and masters list
/// it. Its lists and texts are bounded on receipt: a master keeps it per
/// worker and lists it to every client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    pub stored_bytes: u64,
    pub memory_used_bytes: u64,
    pub open_partitions: u32,
    pub sealed_partitions: u32,
    /// Where the stored bytes are, and the state of each tier (absent from
    /// a peer that sent none). Boxed, as in the frame: tier figures are large.
    pub tiers: Option<Box<TierStats>>,
    pub memory_budget_bytes: u64,
    /// Room left in healthy local data directories.
    pub local_free_bytes: u64,
    pub unhealthy_dirs: u32,
    /// The worker asks producers to split away and takes no new partitions.
    pub full: bool,
    /// The worker is leaving the cluster.
    pub decommissioning: bool,
    /// The worker is restarting: it will be back, serving what it holds.
    pub restarting: bool,
    /// The worker's store id when it runs with `durability =
    /// "object-store"` (checked by [`check_store_id`]): its sealed
    /// partitions are in the object store under it.
    pub durable_store: Option<String>,
    pub read_streams: u32,
    pub push_bytes_per_sec: u64,
    pub read_bytes_per_sec: u64,
}

/// Stored bytes per tier and the state of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    pub memory_bytes: u64,
    pub local_bytes: u64,
    pub object_bytes: u64,
    /// At most [`MAX_DIRS`].
    pub dirs: Vec<DirStats>,
    /// Absent when the worker has no object store.
    pub object_store: Option<ObjectStoreStats>,
}

/// One local data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// At most [`MAX_PATH_BYTES`].
    pub path: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub healthy: bool,
    /// The write error that made it unhealthy (empty: none), at most
    /// [`MAX_ERROR_BYTES`].
    pub error: String,
    pub write_failures: u64,
}

/// The object store tier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectStoreStats {
    /// The store's URL (no credentials), at most [`MAX_PATH_BYTES`].
    pub url: String,
    pub bytes: u64,
    pub objects: u64,
    pub bytes_overflowed: u64,
    pub bytes_migrated: u64,
    pub partitions_migrated: u64,
    pub bytes_read: u64,
    /// Ranged GETs issued.
    pub gets: u64,
    pub bytes_compacted: u64,
    pub partitions_compacted: u64,
    pub failures: u64,
    pub available: bool,
    /// At most [`MAX_ERROR_BYTES`].
    pub last_error: String,
}

impl TryFrom<pb::WorkerLoad> for WorkerLoad {
    type Error = TierError;

    fn try_from(m: pb::WorkerLoad) -> TierResult<Self> {
        Ok(WorkerLoad {
            stored_bytes: m.stored_bytes,
            memory_used_bytes: m.memory_used_bytes,
            open_partitions: m.open_partitions,
            sealed_partitions: m.sealed_partitions,
            tiers: m
                .tiers
                .map(|t| TierStats::try_from(*t).map(Box::new))
                .transpose()?,
            memory_budget_bytes: m.memory_budget_bytes,
            local_free_bytes: m.local_free_bytes,
            unhealthy_dirs: m.unhealthy_dirs,
            full: m.full,
            decommissioning: m.decommissioning,
            restarting: m.restarting,
            durable_store: if m.durable_store.is_empty() {
                None
            } else {
                check_store_id("load.durable_store", &m.durable_store)?;
                Some(m.durable_store)
            },
            read_streams: m.read_streams,
            push_bytes_per_sec: m.push_bytes_per_sec,
            read_bytes_per_sec: m.read_bytes_per_sec,
        })
    }
}

impl From<WorkerLoad> for pb::WorkerLoad {
    fn from(l: WorkerLoad) -> Self {
        pb::WorkerLoad {
            stored_bytes: l.stored_bytes,
            memory_used_bytes: l.memory_used_bytes,
            open_partitions: l.open_partitions,
            sealed_partitions: l.sealed_partitions,
            tiers: l.tiers.map(|t| Box::new((*t).into())),
            memory_budget_bytes: l.memory_budget_bytes,
            local_free_bytes: l.local_free_bytes,
            unhealthy_dirs: l.unhealthy_dirs,
            full: l.full,
            decommissioning: l.decommissioning,
            restarting: l.restarting,
            durable_store: l.durable_store.unwrap_or_default(),
            read_streams: l.read_streams,
            push_bytes_per_sec: l.push_bytes_per_sec,
            read_bytes_per_sec: l.read_bytes_per_sec,
        }
    }
}

/// Longest store id a peer may name.
pub const MAX_STORE_ID_BYTES: usize = 64;

/// A worker's store id (the name of its objects' prefix): 1 to
/// [`MAX_STORE_ID_BYTES`] ASCII letters and digits, so it is one path
/// segment and nothing else.
pub fn check_store_id(field: &str, id: &str) -> TierResult<()> {
    if id.is_empty()
        || id.len() > MAX_STORE_ID_BYTES
        || !id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(TierError::bad_input(format!(
            "{field} must be 1 to {MAX_STORE_ID_BYTES} ASCII letters and digits, not {:?}",
            id.chars().take(MAX_STORE_ID_BYTES + 1).collect::<String>()
        )));
    }
    Ok(())
}

impl TryFrom<pb::TierStats> for TierStats {
    type Error = TierError;

    fn try_from(m: pb::TierStats) -> TierResult<Self> {
        if m.dirs.len() > MAX_DIRS {
            return Err(TierError::bad_input(format!(
                "load.tiers.dirs has {} entries, more than {MAX_DIRS}",
                m.dirs.len()
            )));
        }
        let dirs = m
            .dirs
            .into_iter()
            .map(|d| {
                check_len("load.tiers.dirs.path", &d.path, MAX_PATH_BYTES)?;
                check_len("load.tiers.dirs.error", &d.error, MAX_ERROR_BYTES)?;
                Ok(DirStats {
                    path: d.path,
                    used_bytes: d.used_bytes,
                    capacity_bytes: d.capacity_bytes,
                    healthy: d.healthy,
                    error: d.error,
                    write_failures: d.write_failures,
                })
            })
            .collect::<TierResult<_>>()?;
        let object_store = match m.object_store {
            None => None,
            Some(s) => {
                check_len("load.tiers.object_store.url", &s.url, MAX_PATH_BYTES)?;
                check_len(
                    "load.tiers.object_store.last_error",
                    &s.last_error,
                    MAX_ERROR_BYTES,
                )?;
                Some(ObjectStoreStats {
                    url: s.url,
                    bytes: s.bytes,
                    objects: s.objects,
                    bytes_overflowed: s.bytes_overflowed,
                    bytes_migrated: s.bytes_migrated,
                    partitions_migrated: s.partitions_migrated,
                    bytes_read: s.bytes_read,
                    gets: s.gets,
                    bytes_compacted: s.bytes_compacted,
                    partitions_compacted: s.partitions_compacted,
                    failures: s.failures,
                    available: s.available,
                    last_error: s.last_error,
                })
            }
        };
        Ok(TierStats {
            memory_bytes: m.memory_bytes,
            local_bytes: m.local_bytes,
            object_bytes: m.object_bytes,
            dirs,
            object_store,
        })
    }
}

impl From<TierStats> for pb::TierStats {
    fn from(t: TierStats) -> Self {
        pb::TierStats {
            memory_bytes: t.memory_bytes,
            local_bytes: t.local_bytes,
            object_bytes: t.object_bytes,
            dirs: t
                .dirs
                .into_iter()
                .map(|d| pb::DirStats {
                    path: d.path,
                    used_bytes: d.used_bytes,
                    capacity_bytes: d.capacity_bytes,
                    healthy: d.healthy,
                    error: d.error,
                    write_failures: d.write_failures,
                })
                .collect(),
            object_store: t.object_store.map(|s| {
                Box::new(pb::ObjectStoreStats {
                    url: s.url,
                    bytes: s.bytes,
                    objects: s.objects,
                    bytes_overflowed: s.bytes_overflowed,
                    bytes_migrated: s.bytes_migrated,
                    partitions_migrated: s.partitions_migrated,
                    bytes_read: s.bytes_read,
                    gets: s.gets,
                    bytes_compacted: s.bytes_compacted,
                    partitions_compacted: s.partitions_compacted,
                    failures: s.failures,
                    available: s.available,
                    last_error: s.last_error,
                })
            }),
        }
    }
}

/// The master's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Jobs the master knows are gone; the worker drops their data.
    pub released_jobs: Vec<JobId>,
    /// Of the heartbeat's jobs, those this master neither holds nor released.
    pub unknown_jobs: Vec<JobId>,
    /// The master's job lease (`None`: not told).
    pub job_lease: Option<Duration>,
    /// The master's worker timeout (`None`: not told).
    pub worker_timeout: Option<Duration>,
    /// The master took the worker for lost since its last heartbeat and
    /// reported its partitions: the worker drops what it held before.
    pub declared_lost: bool,
}

impl TryFrom<pb::HeartbeatReply> for HeartbeatReply {
    type Error = TierError;

    fn try_from(m: pb::HeartbeatReply) -> TierResult<Self> {
        Ok(HeartbeatReply {
            released_jobs: job_ids(m.released_jobs)?,
            unknown_jobs: job_ids(m.unknown_jobs)?,
            job_lease: opt_millis(m.job_lease_ms),
            worker_timeout: opt_millis(m.worker_timeout_ms),
            declared_lost: m.declared_lost,
        })
    }
}

impl HeartbeatReply {
    pub fn into_pb(self, request_id: u64) -> pb::HeartbeatReply {
        pb::HeartbeatReply {
            request_id,
            released_jobs: job_bytes(self.released_jobs),
            unknown_jobs: job_bytes(self.unknown_jobs),
            job_lease_ms: self.job_lease.map_or(0, millis),
            worker_timeout_ms: self.worker_timeout.map_or(0, millis),
            declared_lost: self.declared_lost,
        }
    }
}

wire!(HeartbeatReply);

/// Registers a job, or renews its lease. Answered with [`JobRegistered`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterJob {
    pub job: JobId,
}

impl TryFrom<pb::RegisterJob> for RegisterJob {
    type Error = TierError;

    fn try_from(m: pb::RegisterJob) -> TierResult<Self> {
        Ok(RegisterJob {
            job: JobId::new(m.job_id)?,
        })
    }
}

impl RegisterJob {
    pub fn into_pb(self, request_id: u64) -> pb::RegisterJob {
        pb::RegisterJob {
            request_id,
            job_id: self.job.as_bytes().clone(),
        }
    }
}

wire!(RegisterJob);
request!(RegisterJob => JobRegistered, |_r| Access::Cluster);

/// The master's answer to [`RegisterJob`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobRegistered {
    /// The job's token ([`JOB_TOKEN_BYTES`] bytes), `None` when the master
    /// has no cluster secret.
    pub token: Option<Bytes>,
    /// The master's job lease (`None`: not told).
    pub job_lease: Option<Duration>,
}

impl TryFrom<pb::JobRegistered> for JobRegistered {
    type Error = TierError;

    fn try_from(m: pb::JobRegistered) -> TierResult<Self> {
        let token = match m.job_token.len() {
            0 => None,
            JOB_TOKEN_BYTES => Some(m.job_token),
            n => {
                return Err(TierError::bad_input(format!(
                    "job token has {n} bytes, not {JOB_TOKEN_BYTES}"
                )));
            }
        };
        Ok(JobRegistered {
            token,
            job_lease: opt_millis(m.job_lease_ms),
        })
    }
}

impl JobRegistered {
    pub fn into_pb(self, request_id: u64) -> pb::JobRegistered {
        pb::JobRegistered {
            request_id,
            job_token: self.token.unwrap_or_default(),
            job_lease_ms: self.job_lease.map_or(0, millis),
        }
    }
}

wire!(JobRegistered);

/// The job is over: the master remembers it as released. Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnregisterJob {
    pub job: JobId,
}

impl TryFrom<pb::UnregisterJob> for UnregisterJob {
    type Error = TierError;

    fn try_from(m: pb::UnregisterJob) -> TierResult<Self> {
        Ok(UnregisterJob {
            job: JobId::new(m.job_id)?,
        })
    }
}

impl UnregisterJob {
    pub fn into_pb(self, request_id: u64) -> pb::UnregisterJob {
        pb::UnregisterJob {
            request_id,
            job_id: self.job.as_bytes().clone(),
        }
    }
}

wire!(UnregisterJob);
request!(UnregisterJob => Ack, |_r| Access::Cluster);

/// Places a partition (or the next part of a split one) on a worker.
/// Answered with [`PartitionAllocated`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatePartition {
    pub key: PartitionKey,
    /// At least 1.
    pub num_subpartitions: u32,
    /// Workers not to place on (at most [`MAX_EXCLUDED_WORKERS`]).
    pub exclude: Vec<WorkerId>,
    /// The unreachable worker the partition moves away from, whole.
    pub relocated_from: Option<WorkerId>,
}

impl TryFrom<pb::AllocatePartition> for AllocatePartition {
    type Error = TierError;

    fn try_from(m: pb::AllocatePartition) -> TierResult<Self> {
        if m.num_subpartitions == 0 {
            return Err(TierError::bad_input(
                "a partition needs at least one subpartition",
            ));
        }
        if m.exclude_workers.len() > MAX_EXCLUDED_WORKERS {
            return Err(TierError::bad_input(format!(
                "exclude_workers has {} ids, more than {MAX_EXCLUDED_WORKERS}",
                m.exclude_workers.len()
            )));
        }
        let exclude = m
            .exclude_workers
            .into_iter()
            .map(WorkerId::new)
            .collect::<TierResult<_>>()?;
        let relocated_from = if m.relocated_from.is_empty() {
            None
        } else {
            Some(WorkerId::new(m.relocated_from)?)
        };
        Ok(AllocatePartition {
            key: PartitionKey::try_from(m.key)?,
            num_subpartitions: m.num_subpartitions,
            exclude,
            relocated_from,
        })
    }
}

impl AllocatePartition {
    pub fn into_pb(self, request_id: u64) -> pb::AllocatePartition {
        pb::AllocatePartition {
            request_id,
            key: Some(self.key.into()),
            num_subpartitions: self.num_subpartitions,
            exclude_workers: self
                .exclude
                .into_iter()
                .map(WorkerId::into_string)
                .collect(),
            relocated_from: self
                .relocated_from
                .map(WorkerId::into_string)
                .unwrap_or_default(),
        }
    }
}

wire!(AllocatePartition);
request!(AllocatePartition => PartitionAllocated, |r| Access::Job(&r.key.job));

/// Where the master placed a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionAllocated {
    pub key: PartitionKey,
    pub worker: WorkerAt,
}

impl TryFrom<pb::PartitionAllocated> for PartitionAllocated {
    type Error = TierError;

    fn try_from(m: pb::PartitionAllocated) -> TierResult<Self> {
        Ok(PartitionAllocated {
            key: PartitionKey::try_from(m.key)?,
            worker: WorkerAt::parse("worker_id", m.worker_id, "worker_address", m.worker_address)?,
        })
    }
}

impl PartitionAllocated {
    pub fn into_pb(self, request_id: u64) -> pb::PartitionAllocated {
        pb::PartitionAllocated {
            request_id,
            key: Some(self.key.into()),
            worker_id: self.worker.id.into_string(),
            worker_address: self.worker.address,
        }
    }
}

wire!(PartitionAllocated);

/// A peer could not reach a worker's data port. Answered with [`Ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerUnreachable {
    pub worker: WorkerId,
    /// What failed, for the master's log (cut to
    /// [`MAX_REPORT_ERROR_BYTES`] on receipt).
    pub error: String,
    /// The job whose producer or consumer could not reach the worker. A
    /// connection holding a job's token reports for that job whatever it
    /// names here.
    pub job: Option<JobId>,
}

impl TryFrom<pb::WorkerUnreachable> for WorkerUnreachable {
    type Error = TierError;

    fn try_from(m: pb::WorkerUnreachable) -> TierResult<Self> {
        let error = truncate(m.error, MAX_REPORT_ERROR_BYTES);
        let job = if m.job_id.is_empty() {
            None
        } else {
            Some(JobId::new(m.job_id)?)
        };
        Ok(WorkerUnreachable {
            worker: WorkerId::new(m.worker_id)?,
            error,
            job,
        })
    }
}

impl WorkerUnreachable {
    pub fn into_pb(self, request_id: u64) -> pb::WorkerUnreachable {
        pb::WorkerUnreachable {
            request_id,
            worker_id: self.worker.into_string(),
            error: self.error,
            job_id: self.job.map(|j| j.as_bytes().clone()).unwrap_or_default(),
        }
    }
}

wire!(WorkerUnreachable);
request!(WorkerUnreachable => Ack, |_r| Access::Authenticated);

/// Where a partition lives that was relocated before its first push.
/// Answered with [`PartitionLocated`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatePartition {
    pub key: PartitionKey,
    /// Set: the reply also says whether this worker is restarting.
    pub worker: Option<WorkerId>,
}

impl TryFrom<pb::LocatePartition> for LocatePartition {
    type Error = TierError;

    fn try_from(m: pb::LocatePartition) -> TierResult<Self> {
        Ok(LocatePartition {
            key: PartitionKey::try_from(m.key)?,
            worker: if m.worker_id.is_empty() {
                None
            } else {
                Some(WorkerId::new(m.worker_id)?)
            },
        })
    }
}

impl LocatePartition {
    pub fn into_pb(self, request_id: u64) -> pb::LocatePartition {
        pb::LocatePartition {
            request_id,
            key: Some(self.key.into()),
            worker_id: self.worker.map(WorkerId::into_string).unwrap_or_default(),
        }
    }
}

wire!(LocatePartition);
request!(LocatePartition => PartitionLocated, |r| Access::Job(&r.key.job));

/// The answer to [`LocatePartition`]: `None` when this master knows no
/// relocation of the partition (to a live worker).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionLocated {
    pub worker: Option<WorkerAt>,
    /// The worker the request named is restarting.
    pub restarting: bool,
    /// The worker the request named is durable and not counted lost yet:
    /// a reader that cannot reach it waits and asks again.
    pub recovering: bool,
    /// Where the part the named worker held lives now, if another worker
    /// adopted it (the named worker was lost).
    pub adopted_by: Option<WorkerAt>,
}

impl TryFrom<pb::PartitionLocated> for PartitionLocated {
    type Error = TierError;

    fn try_from(m: pb::PartitionLocated) -> TierResult<Self> {
        let worker = if m.worker_id.is_empty() {
            None
        } else {
            Some(WorkerAt::parse(
                "worker_id",
                m.worker_id,
                "worker_address",
                m.worker_address,
            )?)
        };
        let adopted_by = if m.adopted_by_id.is_empty() {
            None
        } else {
            Some(WorkerAt::parse(
                "adopted_by_id",
                m.adopted_by_id,
                "adopted_by_address",
                m.adopted_by_address,
            )?)
        };
        Ok(PartitionLocated {
            worker,
            restarting: m.worker_restarting,
            recovering: m.worker_recovering,
            adopted_by,
        })
    }
}

impl PartitionLocated {
    pub fn into_pb(self, request_id: u64) -> pb::PartitionLocated {
        let (worker_id, worker_address) = self
            .worker
            .map(|w| (w.id.into_string(), w.address))
            .unwrap_or_default();
        let (adopted_by_id, adopted_by_address) = self
            .adopted_by
            .map(|w| (w.id.into_string(), w.address))
            .unwrap_or_default();
        pb::PartitionLocated {
            request_id,
            worker_id,
            worker_address,
            worker_restarting: self.restarting,
            worker_recovering: self.recovering,
            adopted_by_id,
            adopted_by_address,
        }
    }
}

wire!(PartitionLocated);

/// Most partition ids one [`PartsListed`] carries.
pub const MAX_LISTED_PARTS: usize = 8192;

/// The partitions of `job` with a later part (of a split chain) on
/// `worker`. Answered with [`PartsListed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListParts {
    pub job: JobId,
    pub worker: WorkerId,
}

impl TryFrom<pb::ListParts> for ListParts {
    type Error = TierError;

    fn try_from(m: pb::ListParts) -> TierResult<Self> {
        Ok(ListParts {
            job: JobId::new(m.job_id)?,
            worker: WorkerId::new(m.worker_id)?,
        })
    }
}

impl ListParts {
    pub fn into_pb(self, request_id: u64) -> pb::ListParts {
        pb::ListParts {
            request_id,
            job_id: self.job.as_bytes().clone(),
            worker_id: self.worker.into_string(),
        }
    }
}

wire!(ListParts);
request!(ListParts => PartsListed, |r| Access::Job(&r.job));

/// The answer to [`ListParts`]: at most [`MAX_LISTED_PARTS`] partitions,
/// `truncated` when the master knows more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartsListed {
    pub partitions: Vec<PartitionId>,
    pub truncated: bool,
}

impl TryFrom<pb::PartsListed> for PartsListed {
    type Error = TierError;

    fn try_from(m: pb::PartsListed) -> TierResult<Self> {
        if m.partition_ids.len() > MAX_LISTED_PARTS {
            return Err(TierError::bad_input(format!(
                "a parts list names {} partitions, more than {MAX_LISTED_PARTS}",
                m.partition_ids.len()
            )));
        }
        Ok(PartsListed {
            partitions: m
                .partition_ids
                .into_iter()
                .map(PartitionId::new)
                .collect::<TierResult<_>>()?,
            truncated: m.truncated,
        })
    }
}

impl PartsListed {
    pub fn into_pb(self, request_id: u64) -> pb::PartsListed {
        pb::PartsListed {
            request_id,
            partition_ids: self
                .partitions
                .into_iter()
                .map(|p| p.as_bytes().clone())
                .collect(),
            truncated: self.truncated,
        }
    }
}

wire!(PartsListed);

/// Asks for the live workers and the registered jobs. Answered with [`WorkerList`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListWorkers;

impl TryFrom<pb::ListWorkers> for ListWorkers {
    type Error = TierError;

    fn try_from(_: pb::ListWorkers) -> TierResult<Self> {
        Ok(ListWorkers)
    }
}

impl ListWorkers {
    pub fn into_pb(self, request_id: u64) -> pb::ListWorkers {
        pb::ListWorkers { request_id }
    }
}

wire!(ListWorkers);
request!(ListWorkers => WorkerList, |_r| Access::Cluster);

/// One live worker in a [`WorkerList`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub worker: WorkerAt,
    pub load: WorkerLoad,
    pub since_heartbeat: Duration,
}

impl TryFrom<pb::WorkerInfo> for WorkerInfo {
    type Error = TierError;

    fn try_from(m: pb::WorkerInfo) -> TierResult<Self> {
        Ok(WorkerInfo {
            worker: WorkerAt::parse("worker_id", m.worker_id, "data_address", m.data_address)?,
            load: WorkerLoad::try_from(m.load.unwrap_or_default())?,
            since_heartbeat: Duration::from_millis(m.millis_since_heartbeat),
        })
    }
}

impl From<WorkerInfo> for pb::WorkerInfo {
    fn from(w: WorkerInfo) -> Self {
        pb::WorkerInfo {
            worker_id: w.worker.id.into_string(),
            data_address: w.worker.address,
            load: Some(w.load.into()),
            millis_since_heartbeat: millis(w.since_heartbeat),
        }
    }
}

/// The live workers with their load, and the registered jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerList {
    pub workers: Vec<WorkerInfo>,
    pub jobs: Vec<JobId>,
    /// The master has been up for a whole worker timeout: a worker missing
    /// from the list is really gone.
    pub settled: bool,
}

impl TryFrom<pb::WorkerList> for WorkerList {
    type Error = TierError;

    fn try_from(m: pb::WorkerList) -> TierResult<Self> {
        Ok(WorkerList {
            workers: m
                .workers
                .into_iter()
                .map(WorkerInfo::try_from)
                .collect::<TierResult<_>>()?,
            jobs: job_ids(m.jobs)?,
            settled: m.settled,
        })
    }
}

impl WorkerList {
    pub fn into_pb(self, request_id: u64) -> pb::WorkerList {
        pb::WorkerList {
            request_id,
            workers: self.workers.into_iter().map(Into::into).collect(),
            jobs: job_bytes(self.jobs),
            settled: self.settled,
        }
    }
}

wire!(WorkerList);
