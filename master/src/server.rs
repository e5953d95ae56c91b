//! The accept loop and shutdown (mini-redis `server.rs`): one task per
//! connection, all tracked so shutdown waits for them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use terrace_tier_api::{TierError, TierResult};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock};
use crate::config::MasterConfig;
use crate::connection;
use crate::registry::Registry;

/// The name the master gives in handshakes.
pub const SERVER_NAME: &str = "terrace-master";

/// How long shutdown waits for open connections to end.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Longest pause after a failed accept (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What every connection shares: the registry and the clock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Mutex<Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_frame: usize,
}

impl Shared {
    /// Runs `f` on the registry at the clock's current time.
    pub(crate) fn with_registry<T>(
        &self,
        f: impl FnOnce(&mut Registry, std::time::Instant) -> T,
    ) -> T {
        let now = self.clock.now();
        let mut registry = self.registry.lock().expect("registry lock poisoned");
        f(&mut registry, now)
    }
}

/// Serves the master protocol on `listener` until `shutdown` fires, then
/// stops accepting, closes every connection (waiting up to 5s for them) and
/// returns. `config.listen` is not read: the caller binds the listener.
///
/// Fails only if `config` is invalid; failed accepts are logged and retried.
pub async fn run(
    config: MasterConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> TierResult<()> {
    run_with_clock(config, listener, shutdown, Arc::new(SystemClock)).await
}

/// [`run`] with the time taken from `clock` (tests pass a [`ManualClock`](crate::ManualClock)).
pub async fn run_with_clock(
    config: MasterConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) -> TierResult<()> {
    config
        .validate()
        .map_err(|e| TierError::bad_input(format!("master config: {e}")))?;
    let shared = Arc::new(Shared {
        registry: Mutex::new(Registry::new(&config, clock.now())),
        clock,
        max_frame: config.max_frame_size.as_usize(),
    });
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "an unknown address".into());
    tracing::info!(address = %local, "master listening");

    // Expire silent workers even when nobody asks, so their loss is logged on time.
    let mut sweep =
        tokio::time::interval((config.worker_timeout / 2).max(Duration::from_millis(10)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                shared.with_registry(|registry, now| registry.expire(now));
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    tracker.spawn(connection::serve(shared.clone(), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(address = %local, error = %e, backoff_ms = backoff.as_millis() as u64,
                        "accept failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            },
        }
    }

    drop(listener);
    tracker.close();
    tracing::info!(address = %local, connections = tracker.len(), "master shutting down");
    if tokio::time::timeout(SHUTDOWN_DRAIN, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "connections still open after the shutdown grace period"
        );
    }
    tracing::info!(address = %local, "master stopped");
    Ok(())
}
