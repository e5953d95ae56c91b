//! The accept loop and shutdown (mini-redis `server.rs`): one task per
//! connection, all tracked so shutdown waits for them.

use std::sync::{Arc, Mutex};

use terrace_rpc::clock;
use terrace_rpc::{Security, ServerIdentity, ServerSpec};
use terrace_tier_api::{TierError, TierResult};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::SERVER_NAME;
use crate::clock::{Clock, SystemClock};
use crate::config::MasterConfig;
use crate::connection;
use crate::context::Shared;
use crate::probe::Prober;
use crate::registry::Registry;

/// Serves the master protocol on `listener` until `shutdown` fires, then
/// stops accepting, lets every connection finish (up to
/// `server.shutdown_grace`) and returns. `config.listen` is not read: the caller binds the listener.
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
        .map_err(|e| TierError::from(e).context("master config"))?;
    let security = Security::load(&config.security)
        .map_err(|e| TierError::from(e).context("master config"))?;
    security.warn_if_open("the master");
    let shared = Arc::new(Shared {
        registry: Mutex::new(Registry::new(&config, clock.now())),
        clock,
        secret: security.secret.clone(),
        prober: Prober::new(config.probe_timeout, security.tls_client.clone()),
        sweep_period: crate::registry::sweep_period(&config),
    });
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "an unknown address".into());
    tracing::info!(address = %local, "master listening");

    // Expire silent workers even when nobody asks, so their loss is logged on time.
    let sweeper = {
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        let period = shared.sweep_period;
        tokio::spawn(async move {
            let mut sweep = clock::interval(period);
            sweep.set_missed_tick_behavior(clock::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sweep.tick() => {
                        shared.with_registry(|registry, now| registry.expire(now));
                    }
                }
            }
        })
    };
    let spec = ServerSpec {
        name: SERVER_NAME.to_string(),
        identity: ServerIdentity::Master,
        max_frame: config.max_frame_size.as_usize(),
        options: config.server.clone(),
        secret: security.secret,
        tls: security.tls_server,
    };
    terrace_rpc::serve(listener, spec, shutdown, move |conn| {
        connection::serve(Arc::clone(&shared), conn)
    })
    .await;
    let _ = sweeper.await;
    tracing::info!(address = %local, "master stopped");
    Ok(())
}
