//! The master's side of the admin server: readiness (its worker list is
//! settled and it is not shutting down), its metrics, and the JSON API
//! (`/api/v1/workers`, `/api/v1/jobs`, `/api/v1/jobs/{job}/partitions`).
//! Everything is read from the registry under its lock, never changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use terrace_admin::{AdminApp, ApiError, ApiRequest};
use terrace_tier_api::{JobId, MAX_ID_BYTES};
use tokio_util::sync::CancellationToken;

use crate::context::Shared;
use crate::registry::{JobSnapshot, Registry, WorkerState};

/// What the master's admin endpoints read.
#[derive(Debug)]
pub(crate) struct MasterAdmin {
    shared: Arc<Shared>,
    /// The master's shutdown: once cancelled, the master is not ready.
    shutdown: CancellationToken,
}

/// What `/api/v1/jobs/{job}/partitions` can and cannot tell.
const PARTITIONS_NOTE: &str = "a master does not track partitions one by one: it counts the partitions it placed for the job on each worker (since it started, while the job is registered) and remembers partitions relocated away from an unreachable worker; each partition's state is on its worker (/api/v1/partitions?job= of the worker's admin server)";

impl MasterAdmin {
    pub(crate) fn new(shared: Arc<Shared>, shutdown: CancellationToken) -> Self {
        MasterAdmin { shared, shutdown }
    }

    fn workers(&self) -> Value {
        self.shared.with_registry(|registry, now| {
            let workers: Vec<Value> = registry
                .workers_with_state(now)
                .into_iter()
                .map(|(w, state)| {
                    let l = &w.load;
                    json!({
                        "id": w.id,
                        "address": w.data_address,
                        "state": state.name(),
                        "millis_since_heartbeat": millis(w.since_heartbeat),
                        "stored_bytes": l.stored_bytes,
                        "memory_used_bytes": l.memory_used_bytes,
                        "memory_budget_bytes": l.memory_budget_bytes,
                        "local_free_bytes": l.local_free_bytes,
                        "open_partitions": l.open_partitions,
                        "sealed_partitions": l.sealed_partitions,
                        "read_streams": l.read_streams,
                        "unhealthy_dirs": l.unhealthy_dirs,
                        "full": l.full,
                        "decommissioning": l.decommissioning,
                        "push_bytes_per_sec": l.push_bytes_per_sec,
                        "read_bytes_per_sec": l.read_bytes_per_sec,
                    })
                })
                .collect();
            let lost: Vec<Value> = registry
                .lost_workers()
                .into_iter()
                .map(|(id, w)| {
                    json!({
                        "id": id,
                        "address": w.data_address,
                        "state": "lost",
                        "millis_since_heartbeat": millis(now.saturating_duration_since(w.last_heartbeat)),
                        "millis_since_lost": millis(now.saturating_duration_since(w.lost_at)),
                    })
                })
                .collect();
            json!({
                "settled": registry.settled(now),
                "worker_timeout_ms": millis(registry.worker_timeout()),
                "workers": workers,
                "lost": lost,
            })
        })
    }

    fn jobs(&self) -> Value {
        self.shared.with_registry(|registry, now| {
            let lease = registry.job_lease();
            let jobs: Vec<Value> = registry
                .jobs()
                .iter()
                .filter_map(|job| registry.job(job, now))
                .map(|j| {
                    json!({
                        "job": j.job.to_hex(),
                        "millis_since_renewal": millis(j.since_renewal),
                        "lease_ms": millis(lease),
                        "partitions_placed": j.placements.values().map(|n| u64::from(*n)).sum::<u64>(),
                        "relocated_partitions": j.relocated.len(),
                    })
                })
                .collect();
            let released: Vec<Value> = registry
                .released_jobs()
                .into_iter()
                .map(|(job, at)| released(&job, at, now))
                .collect();
            json!({ "jobs": jobs, "released": released })
        })
    }

    fn partitions(&self, hex: &str) -> Result<Value, ApiError> {
        let job = parse_job(hex)?;
        self.shared.with_registry(|registry, now| {
            if let Some(snapshot) = registry.job(&job, now) {
                return Ok(job_partitions(registry, snapshot, now));
            }
            match registry.released_at(&job) {
                Some(at) => Ok(released(&job, at, now)),
                None => Err(ApiError::NotFound(format!(
                    "job {hex} is neither registered with this master nor recently released"
                ))),
            }
        })
    }
}

fn job_partitions(registry: &Registry, snapshot: JobSnapshot, now: Instant) -> Value {
    let live = registry.workers_with_state(now);
    let address = |id: &str| {
        live.iter()
            .find(|(w, _)| w.id == id)
            .map(|(w, _)| w.data_address.clone())
    };
    let relocated: Vec<Value> = snapshot
        .relocated
        .iter()
        .map(|(key, worker)| {
            json!({
                "partition": key.partition.to_hex(),
                "worker": worker,
                "address": address(worker),
            })
        })
        .collect();
    json!({
        "job": snapshot.job.to_hex(),
        "state": "registered",
        "millis_since_renewal": millis(snapshot.since_renewal),
        "placements_by_worker": snapshot.placements,
        "relocated": relocated,
        "note": PARTITIONS_NOTE,
    })
}

fn released(job: &JobId, at: Instant, now: Instant) -> Value {
    json!({
        "job": job.to_hex(),
        "state": "released",
        "millis_since_release": millis(now.saturating_duration_since(at)),
    })
}

/// A job id from a request path: lower- or upper-case hex of 1 to
/// [`MAX_ID_BYTES`] bytes, as `terrace status` prints it.
fn parse_job(hex: &str) -> Result<JobId, ApiError> {
    let well_formed = !hex.is_empty()
        && hex.len() <= 2 * MAX_ID_BYTES
        && hex.len() % 2 == 0
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ApiError::BadRequest(format!(
            "a job id is 2 to {} hex digits, an even number",
            2 * MAX_ID_BYTES
        )));
    }
    JobId::from_hex(&hex.to_ascii_lowercase()).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl AdminApp for MasterAdmin {
    fn ready(&self) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        self.shared.with_registry(|registry, now| {
            if registry.settled(now) {
                Ok(())
            } else {
                Err(format!(
                    "worker list not settled yet: a master is ready one worker_timeout ({}ms) after it starts, once every live worker has heartbeated to it",
                    millis(registry.worker_timeout())
                ))
            }
        })
    }

    fn metrics(&self, out: &mut String) -> std::fmt::Result {
        let (counts, metrics) = self
            .shared
            .with_registry(|registry, now| (registry.counts(now), Arc::clone(registry.metrics())));
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (state, n) in [
            (WorkerState::Live.name(), counts.live),
            ("lost", counts.lost),
            (WorkerState::Decommissioning.name(), counts.decommissioning),
            (WorkerState::Unhealthy.name(), counts.unhealthy),
        ] {
            metrics
                .workers
                .get_or_create(&[("state", state)])
                .set(gauge(n));
        }
        metrics.jobs.set(gauge(counts.jobs));
        metrics.released_jobs.set(gauge(counts.released_jobs));
        metrics
            .relocated_partitions
            .set(gauge(counts.relocated_partitions));
        metrics.settled.set(i64::from(counts.settled));
        metrics.encode(out)
    }

    fn api(&self, request: &ApiRequest<'_>) -> Result<Value, ApiError> {
        match request.segments()[..] {
            ["workers"] => Ok(self.workers()),
            ["jobs"] => Ok(self.jobs()),
            ["jobs", job, "partitions"] => self.partitions(job),
            _ => Err(ApiError::no_route(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::config::MasterConfig;
    use crate::probe::Prober;

    /// Ready once settled (a worker timeout after start), and not ready
    /// again once shutdown has begun, whatever the time.
    #[test]
    fn ready_after_a_worker_timeout_and_not_while_shutting_down() {
        let config = MasterConfig {
            worker_timeout: Duration::from_secs(10),
            ..MasterConfig::default()
        };
        let clock = Arc::new(ManualClock::new());
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::new(&config, clock.now())),
            clock: Arc::clone(&clock) as Arc<dyn Clock>,
            secret: None,
            prober: Prober::new(config.probe_timeout, None),
            recoverer: crate::recovery::Recoverer::new(terrace_rpc::Credential::None, None),
            sweep_period: crate::registry::sweep_period(&config),
        });
        let shutdown = CancellationToken::new();
        let admin = MasterAdmin::new(shared, shutdown.clone());
        let reason = admin.ready().expect_err("not settled");
        assert!(reason.contains("(10000ms)"), "{reason}");
        clock.advance(Duration::from_millis(9_999));
        assert!(admin.ready().is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(admin.ready(), Ok(()));
        shutdown.cancel();
        assert_eq!(admin.ready(), Err("shutting down".to_string()));
    }

    #[test]
    fn job_ids_in_paths_are_bounded_hex() {
        assert_eq!(
            parse_job("0aFF").expect("hex").as_bytes().as_ref(),
            [0x0a, 0xff]
        );
        for bad in ["", "0", "0g", "aé", "éa", &"ab".repeat(MAX_ID_BYTES + 1)] {
            assert!(
                matches!(parse_job(bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
        assert!(parse_job(&"ab".repeat(MAX_ID_BYTES)).is_ok());
    }
}
