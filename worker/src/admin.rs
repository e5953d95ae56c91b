//! What the worker's admin HTTP port answers besides `/metrics` (see
//! `crate::metrics`): its readiness, and its own state and partitions as
//! JSON (`/api/v1/worker`, `/api/v1/partitions`). The HTTP server itself
//! (credential, limits, routing) is the `terrace-admin` crate's.
//!
//! Job and partition ids are lower-case hex, as `terrace status` prints
//! them. Lists are bounded ([`MAX_LISTED`]); a longer one says it was cut.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use terrace_admin::prometheus_client::registry::Registry;
use terrace_admin::{AdminApp, ApiError, ApiRequest};
use terrace_rpc::clock;
use terrace_tier_api::{JobId, MAX_ID_BYTES};

use crate::context::Shared;

/// The worker's side of its admin HTTP server.
pub(crate) struct WorkerAdmin {
    shared: Arc<Shared>,
    registry: Registry,
}

impl WorkerAdmin {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        WorkerAdmin {
            registry: crate::metrics::registry(Arc::clone(&shared)),
            shared,
        }
    }
}

impl AdminApp for WorkerAdmin {
    fn ready(&self) -> Result<(), String> {
        if self.shared.stop.is_cancelled() {
            return Err(format!("worker {} is stopping", self.shared.worker_id));
        }
        self.shared.readiness()
    }

    fn metrics(&self, out: &mut String) -> std::fmt::Result {
        terrace_admin::encode_metrics(out, &self.registry)
    }

    fn api(&self, request: &ApiRequest<'_>) -> Result<Value, ApiError> {
        match request.segments().as_slice() {
            ["worker"] => Ok(worker_state(&self.shared)),
            ["partitions"] => {
                let job = request
                    .param("job")
                    .map(parse_job)
                    .transpose()
                    .map_err(|BadQuery(why)| ApiError::BadRequest(why))?;
                Ok(partitions(&self.shared, job.as_ref()))
            }
            _ => Err(ApiError::no_route(request)),
        }
    }
}

/// Most jobs or partitions one answer lists.
pub(crate) const MAX_LISTED: usize = 10_000;

/// `/api/v1/worker`: the worker's own state.
pub(crate) fn worker_state(shared: &Shared) -> Value {
    let store = &shared.store;
    let now = clock::now();
    let interval = shared.config.heartbeat_interval;
    let masters: Vec<Value> = shared
        .config
        .master_addresses
        .iter()
        .map(|address| {
            let contact = shared.masters.get(address);
            json!({
                "address": address,
                "registered": contact.is_some_and(|c| c.is_fresh(now, interval)),
                "last_answer_ms_ago": contact.map(|c| {
                    u64::try_from(now.saturating_duration_since(c.last_answer).as_millis())
                        .unwrap_or(u64::MAX)
                }),
            })
        })
        .collect();
    let (states, bytes) = store.census();
    let (memory, disk, object) = (bytes.memory, bytes.local, bytes.object);
    let tiers = store.tiers();
    let dirs: Vec<Value> = tiers
        .dirs
        .status()
        .into_iter()
        .map(|d| {
            json!({
                "path": d.path,
                "healthy": d.healthy,
                "used_bytes": d.used_bytes,
                "capacity_bytes": d.capacity_bytes,
                "write_failures": d.write_failures,
                "error": d.error,
            })
        })
        .collect();
    let object_store = tiers.object.as_ref().map(|o| {
        let c = &o.counters;
        json!({
            "url": o.url(),
            "available": o.is_available(),
            "bytes": c.bytes.load(Ordering::Relaxed),
            "objects": c.objects.load(Ordering::Relaxed),
            "failures": c.failures.load(Ordering::Relaxed),
            "last_error": o.last_error(),
        })
    });
    let mut jobs = store.jobs();
    jobs.sort();
    let jobs_total = jobs.len();
    let jobs: Vec<Value> = jobs
        .into_iter()
        .take(MAX_LISTED)
        .map(|(job, partitions)| json!({ "job": job.to_hex(), "partitions": partitions }))
        .collect();
    let budget = store.budget();
    let metadata = store.metadata();
    let counters = &store.counters;
    let ready = shared.readiness();
    json!({
        "worker_id": shared.worker_id,
        "address": shared.address,
        "ready": ready.is_ok(),
        "not_ready_reason": ready.err(),
        "draining": shared.draining(),
        "masters": masters,
        "memory": {
            "budget_bytes": budget.total(),
            "used_bytes": budget.used(),
            "peak_bytes": budget.peak(),
        },
        "read_memory": {
            "budget_bytes": shared.read_budget_total(),
            "used_bytes": shared.read_budget_used(),
        },
        "metadata_memory": {
            "limit_bytes": metadata.limit(),
            "used_bytes": metadata.used(),
            "peak_bytes": metadata.peak(),
        },
        "stored_bytes": {
            "memory": memory,
            "disk": disk,
            "object_store": object,
        },
        "dirs": dirs,
        "object_store": object_store,
        "partitions": {
            "total": states.iter().sum::<u64>(),
            "open": states[0],
            "sealed": states[1],
            "failed": states[2],
        },
        "jobs_total": jobs_total,
        "jobs": jobs,
        "jobs_truncated": jobs_total > MAX_LISTED,
        "streams_open": counters.read_streams.load(Ordering::Relaxed),
        "connections_open": counters.connections.load(Ordering::Relaxed),
        "pushed_bytes": counters.bytes_pushed.load(Ordering::Relaxed),
        "read_bytes": counters.bytes_read.load(Ordering::Relaxed),
    })
}

/// Why a request to the worker's API is refused (a 400 with this text).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadQuery(pub String);

/// The job a `job=` parameter names: hex of 1..=256 bytes.
pub(crate) fn parse_job(hex: &str) -> Result<JobId, BadQuery> {
    // Checked here before `from_hex` slices it: only ASCII hex digits, and
    // no longer than the longest id.
    if hex.is_empty() || hex.len() > 2 * MAX_ID_BYTES || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(BadQuery(format!(
            "job must be a job id in hex (1 to {MAX_ID_BYTES} bytes)"
        )));
    }
    JobId::from_hex(&hex.to_ascii_lowercase()).map_err(|e| BadQuery(e.message().to_string()))
}

/// `/api/v1/partitions`, of one job when `job` is given: each partition
/// held, by job and partition id.
pub(crate) fn partitions(shared: &Shared, job: Option<&JobId>) -> Value {
    let mut held: Vec<_> = shared
        .store
        .partitions()
        .into_iter()
        .filter(|p| job.is_none_or(|j| &p.key().job == j))
        .collect();
    held.sort_by(|a, b| a.key().cmp(b.key()));
    let total = held.len();
    let listed: Vec<Value> = held
        .iter()
        .take(MAX_LISTED)
        .map(|p| {
            let meta = p.meta();
            let bytes = p.tier_bytes();
            let next = p
                .forward()
                .map(|f| json!({ "worker_id": f.worker_id, "address": f.address }));
            json!({
                "job": meta.key.job.to_hex(),
                "partition": meta.key.partition.to_hex(),
                "state": p.state().as_str(),
                "subpartitions": meta.num_subpartitions,
                "broadcast_only": meta.broadcast_only,
                "continuation": meta.continuation,
                "stored_bytes": p.stored_bytes(),
                "memory_bytes": bytes.memory,
                "disk_bytes": bytes.local,
                "object_store_bytes": bytes.object,
                "next": next,
            })
        })
        .collect();
    json!({
        "worker_id": shared.worker_id,
        "job": job.map(JobId::to_hex),
        "total": total,
        "truncated": total > MAX_LISTED,
        "partitions": listed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_parameters_are_hex_ids_and_nothing_else() {
        assert_eq!(
            parse_job("0A0b").map(|j| j.as_bytes().to_vec()),
            Ok(vec![0x0a, 0x0b])
        );
        for bad in [
            "",
            "abc",
            "zz",
            "aéb",
            "0x0a",
            &"ab".repeat(MAX_ID_BYTES + 1),
        ] {
            assert!(parse_job(bad).is_err(), "{bad:?} is refused");
        }
        assert!(parse_job(&"ab".repeat(MAX_ID_BYTES)).is_ok());
    }
}
