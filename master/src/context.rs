//! What every connection of the master shares: the registry, the clock,
//! the secret that signs job tokens, and the prober.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use terrace_rpc::ClusterSecret;

use crate::clock::Clock;
use crate::cmd::ProbeDue;
use crate::probe::Prober;
use crate::registry::{Probe, Registry};

/// What every connection shares: the registry and the clock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Mutex<Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Signs job tokens; `None` when the cluster runs without a secret.
    pub(crate) secret: Option<ClusterSecret>,
    /// Checks workers peers report unreachable.
    pub(crate) prober: Prober,
    /// Asks workers to adopt lost durable workers' partitions.
    pub(crate) recoverer: crate::recovery::Recoverer,
    /// How often the registry is swept (see [`crate::registry::sweep_period`]).
    pub(crate) sweep_period: Duration,
}

impl Shared {
    /// Runs `f` on the registry at the clock's current time.
    pub(crate) fn with_registry<T>(
        &self,
        f: impl FnOnce(&mut Registry, std::time::Instant) -> T,
    ) -> T {
        let now = self.clock.now();
        let mut registry = self.registry.lock().expect("registry lock poisoned");
        registry.observe(now, terrace_rpc::clock::now(), self.sweep_period);
        f(&mut registry, now)
    }

    /// Probes `due` in the background and records the outcome; probes
    /// again, at most once per [`crate::registry::PROBE_INTERVAL`], while
    /// reports keep coming in during the probes.
    pub(crate) fn probe(self: &Arc<Self>, due: ProbeDue) {
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let ProbeDue { worker_id, when } = due;
            let mut address = match when {
                Probe::Now(address) => Some(address),
                Probe::After(wait) => shared.scheduled_probe(&worker_id, wait).await,
                Probe::Covered => None,
            };
            while let Some(at) = address.take() {
                let reachable = shared.prober.reachable(&at).await;
                let again = shared.with_registry(|registry, now| {
                    registry.probe_finished(&worker_id, reachable, now)
                });
                if let Some(wait) = again {
                    address = shared.scheduled_probe(&worker_id, wait).await;
                }
            }
        });
    }

    /// Starts the adoption of every lost durable worker's partitions the
    /// registry has due (see `crate::recovery`); each worker counts as lost
    /// once its adopters were asked.
    pub(crate) fn start_recoveries(self: &Arc<Self>) {
        let due = self.with_registry(|registry, _| registry.take_recoveries());
        for due in due {
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                let adopters =
                    shared.with_registry(|registry, _| registry.adopters_for(&due.worker_id));
                let adopted = shared.recoverer.recover(&due, &adopters).await;
                shared.with_registry(|registry, _| registry.recovery_finished(&due.worker_id));
                tracing::warn!(worker = %due.worker_id, adopted,
                    "recovery of the lost worker done: it counts as lost now, and its partitions not adopted are reported");
            });
        }
    }

    /// Waits `wait`, then starts the probe the registry scheduled.
    async fn scheduled_probe(&self, worker_id: &str, wait: Duration) -> Option<String> {
        terrace_rpc::clock::sleep(wait).await;
        self.with_registry(|registry, now| registry.start_scheduled_probe(worker_id, now))
    }
}
