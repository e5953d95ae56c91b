//! What every connection of the master shares: the registry, the clock,
//! the secret that signs job tokens, and the prober.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use terrace_rpc::ClusterSecret;

use crate::clock::Clock;
use crate::cmd::ProbeDue;
use crate::probe::Prober;
use crate::registry::Registry;

/// What every connection shares: the registry and the clock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Mutex<Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Signs job tokens; `None` when the cluster runs without a secret.
    pub(crate) secret: Option<ClusterSecret>,
    /// Checks workers peers report unreachable.
    pub(crate) prober: Prober,
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
        registry.observe(now, std::time::Instant::now(), self.sweep_period);
        f(&mut registry, now)
    }

    /// Probes `due` in the background and records the outcome.
    pub(crate) fn probe(self: &Arc<Self>, due: ProbeDue) {
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let reachable = shared.prober.reachable(&due.address).await;
            shared.with_registry(|registry, now| {
                registry.probe_finished(&due.worker_id, reachable, now)
            });
        });
    }
}
