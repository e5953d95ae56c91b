//! The accept loop and shutdown (mini-redis `server.rs`): one task per
//! connection, all tracked so shutdown waits for them; the admin server
//! (when configured) runs beside it and stops last.

use std::sync::{Arc, Mutex};

use terrace_admin::{AdminCredential, AdminHandle};
use terrace_rpc::clock;
use terrace_rpc::{Security, ServerIdentity, ServerSpec};
use terrace_tier_api::{ErrorKind, TierError, TierResult};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::SERVER_NAME;
use crate::admin::MasterAdmin;
use crate::clock::{Clock, SystemClock};
use crate::config::MasterConfig;
use crate::connection;
use crate::context::Shared;
use crate::probe::Prober;
use crate::registry::Registry;

/// Listeners a caller bound for [`serve`].
#[derive(Debug)]
pub struct Listeners {
    /// For the master protocol (`listen`).
    pub rpc: TcpListener,
    /// For the admin HTTP server (`admin.listen`). `None`: the master binds
    /// `admin.listen` itself if it is set, and runs no admin server if not.
    pub admin: Option<TcpListener>,
}

/// Serves the master protocol on `listener` until `shutdown` fires, then
/// stops accepting, lets every connection finish (up to
/// `server.shutdown_grace`) and returns. `config.listen` is not read: the
/// caller binds the listener. The admin server, if `admin.listen` is set,
/// is bound here.
///
/// Fails only if `config` is invalid or the admin address cannot be bound;
/// failed accepts are logged and retried.
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
    let listeners = Listeners {
        rpc: listener,
        admin: None,
    };
    serve(config, listeners, shutdown, clock).await
}

/// [`run_with_clock`] on listeners the caller bound, the admin one
/// included (the CLI binds both to print their addresses; tests bind
/// `127.0.0.1:0`). An admin listener is served even if `admin.listen` is
/// unset.
pub async fn serve(
    config: MasterConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) -> TierResult<()> {
    config
        .validate()
        .map_err(|e| TierError::from(e).context("master config"))?;
    let security = Security::load(&config.security)
        .map_err(|e| TierError::from(e).context("master config"))?;
    security.warn_if_open("the master");
    let admin_credential = AdminCredential::resolve(&config.admin, security.secret.as_ref())
        .map_err(|e| TierError::from_cause(ErrorKind::BadInput, e).context("master config"))?;
    let admin_listener = match (listeners.admin, &config.admin.listen) {
        (Some(listener), _) => Some(listener),
        (None, Some(address)) => Some(
            terrace_admin::bind(address)
                .await
                .map_err(|e| TierError::from_cause(ErrorKind::Unavailable, e))?,
        ),
        (None, None) => None,
    };
    let listener = listeners.rpc;
    let shared = Arc::new(Shared {
        registry: Mutex::new(Registry::new(&config, clock.now())),
        clock,
        secret: security.secret.clone(),
        prober: Prober::new(config.probe_timeout, security.tls_client.clone()),
        recoverer: crate::recovery::Recoverer::new(
            security.credential(),
            security.tls_client.clone(),
        ),
        sweep_period: crate::registry::sweep_period(&config),
    });
    // Up first and stopped last, so health and metrics are seen while the
    // master starts and drains.
    let admin: Option<AdminHandle> = admin_listener.map(|listener| {
        let app = MasterAdmin::new(Arc::clone(&shared), shutdown.clone());
        terrace_admin::start(listener, Arc::new(app), admin_credential)
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
                        shared.start_recoveries();
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
    if let Some(admin) = admin {
        admin.stop().await;
    }
    tracing::info!(address = %local, "master stopped");
    Ok(())
}
