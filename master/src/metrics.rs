//! The master's Prometheus metrics. Counters are counted where things
//! happen (the registry); gauges are computed from the registry when
//! `/metrics` is read. Every family here is listed with its meaning under
//! "Master metrics" in docs/operations.md (a test compares the two).

use terrace_admin::prometheus_client::metrics::counter::Counter;
use terrace_admin::prometheus_client::metrics::family::Family;
use terrace_admin::prometheus_client::metrics::gauge::Gauge;
use terrace_admin::prometheus_client::registry::Registry as MetricRegistry;

/// One label and its value.
pub(crate) type Label = [(&'static str, &'static str); 1];

/// The states a known worker is counted in (`terrace_master_workers{state}`).
/// Each worker is in exactly one.
pub(crate) const WORKER_STATES: [&str; 4] = ["live", "lost", "decommissioning", "unhealthy"];

/// Why a placement was refused (`terrace_master_placements_refused_total{reason}`).
pub(crate) const REFUSAL_REASONS: [&str; 3] = ["no_workers", "job_limit", "job_released"];

/// What the registry counts and the gauges set at scrape time.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: MetricRegistry,
    pub(crate) workers_lost: Counter,
    pub(crate) placements: Counter,
    pub(crate) placements_refused: Family<Label, Counter>,
    pub(crate) lease_expiries: Counter,
    pub(crate) relocations: Counter,
    pub(crate) heartbeats: Counter,
    pub(crate) unreachable_reports: Counter,
    pub(crate) probes_failed: Counter,
    pub(crate) workers: Family<Label, Gauge>,
    pub(crate) jobs: Gauge,
    pub(crate) released_jobs: Gauge,
    pub(crate) relocated_partitions: Gauge,
    pub(crate) settled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = MetricRegistry::with_prefix("terrace_master");
        let metrics = Metrics {
            workers_lost: Counter::default(),
            placements: Counter::default(),
            placements_refused: Family::default(),
            lease_expiries: Counter::default(),
            relocations: Counter::default(),
            heartbeats: Counter::default(),
            unreachable_reports: Counter::default(),
            probes_failed: Counter::default(),
            workers: Family::default(),
            jobs: Gauge::default(),
            released_jobs: Gauge::default(),
            relocated_partitions: Gauge::default(),
            settled: Gauge::default(),
            registry: MetricRegistry::default(),
        };
        // Every label value exists from the start, so a rate over it is
        // defined before the first event.
        for state in WORKER_STATES {
            metrics.workers.get_or_create(&[("state", state)]).set(0);
        }
        for reason in REFUSAL_REASONS {
            metrics
                .placements_refused
                .get_or_create(&[("reason", reason)])
                .inc_by(0);
        }
        registry.register(
            "workers",
            "Workers this master knows, by state: live (heartbeating and taking partitions), decommissioning, unhealthy (a failed data directory, or it failed the master's probe after a peer reported it unreachable), lost (silent past worker_timeout, until it heartbeats again or is forgotten after lost_worker_memory)",
            metrics.workers.clone(),
        );
        registry.register(
            "workers_lost",
            "Workers declared lost: silent past worker_timeout without having been decommissioning",
            metrics.workers_lost.clone(),
        );
        registry.register(
            "jobs",
            "Jobs registered with this master",
            metrics.jobs.clone(),
        );
        registry.register(
            "released_jobs",
            "Released jobs this master remembers and lists in heartbeat replies",
            metrics.released_jobs.clone(),
        );
        registry.register(
            "placements",
            "Partitions (and parts of split partitions) placed on a worker",
            metrics.placements.clone(),
        );
        registry.register(
            "placements_refused",
            "Placements refused, by reason: no_workers (no live worker could take it), job_limit (limits.max_jobs), job_released (the job was unregistered)",
            metrics.placements_refused.clone(),
        );
        registry.register(
            "lease_expiries",
            "Jobs released because their master agent stopped renewing their lease",
            metrics.lease_expiries.clone(),
        );
        registry.register(
            "relocations",
            "Partitions newly recorded as relocated away from an unreachable worker",
            metrics.relocations.clone(),
        );
        registry.register(
            "relocated_partitions",
            "Relocated partitions this master remembers (forgotten with their job)",
            metrics.relocated_partitions.clone(),
        );
        registry.register(
            "heartbeats",
            "Worker heartbeats received",
            metrics.heartbeats.clone(),
        );
        registry.register(
            "unreachable_reports",
            "Reports from peers that a worker was unreachable",
            metrics.unreachable_reports.clone(),
        );
        registry.register(
            "probes_failed",
            "Probes of a reported worker that it did not answer (no placements on it until it heartbeats again)",
            metrics.probes_failed.clone(),
        );
        registry.register(
            "settled",
            "1 once this master has been up a whole worker_timeout, so its worker list is complete; else 0",
            metrics.settled.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts a refused placement.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.placements_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// The metrics in the Prometheus text format (set the gauges first).
    pub(crate) fn encode(&self, out: &mut String) -> std::fmt::Result {
        terrace_admin::encode_metrics(out, &self.registry)
    }
}
