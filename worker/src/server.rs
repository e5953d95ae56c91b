//! Listener → per-connection handler → command handlers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use terrace_admin::{AdminCredential, AdminHandle};
use terrace_rpc::{Accepted, Meter, Security, ServerIdentity, ServerSpec};
use terrace_tier_api::{ErrorKind, TierError, TierResult, error_text};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cmd::Command;
use crate::config::WorkerConfig;
use crate::context::{
    Connection, Decommission, JobDrops, MasterContacts, Rates, Shared, read_budget_permits,
};
use crate::heartbeat;
use crate::store::counters::{ErrorClass, Occupancy, Occupied};
use crate::store::{Reservation, Store, StoreHooks};

/// A running worker, for embedding (demo, bench, tests).
#[derive(Debug)]
pub struct WorkerHandle {
    pub address: SocketAddr,
    /// Where its admin HTTP server listens (`admin.listen` set).
    pub admin_address: Option<SocketAddr>,
    pub worker_id: String,
    pub store: Arc<Store>,
    shutdown: CancellationToken,
    task: JoinHandle<TierResult<()>>,
}

impl WorkerHandle {
    /// Stops the worker and waits for it.
    pub async fn stop(self) -> TierResult<()> {
        self.shutdown.cancel();
        self.task
            .await
            .map_err(|e| TierError::with_source(ErrorKind::Internal, "worker task failed", e))?
    }
}

/// Binds `config.listen` and runs the worker in the background.
pub async fn start(config: WorkerConfig) -> TierResult<WorkerHandle> {
    start_with_hooks(config, StoreHooks::default()).await
}

/// [`start`] with test seams: a file layer and an object store that inject faults.
pub async fn start_with_hooks(config: WorkerConfig, hooks: StoreHooks) -> TierResult<WorkerHandle> {
    let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
        TierError::with_source(ErrorKind::Unavailable, format!("bind {}", config.listen), e)
    })?;
    let admin = bind_admin(&config).await?;
    let admin_address = admin.as_ref().and_then(|l| l.local_addr().ok());
    let shutdown = CancellationToken::new();
    let (shared, address) = prepare(config, &listener, hooks, shutdown.clone())?;
    let admin = start_admin(&shared, admin)?;
    let store = Arc::clone(&shared.store);
    let worker_id = shared.worker_id.clone();
    let task = tokio::spawn(serve(shared, listener, admin, shutdown.clone()));
    Ok(WorkerHandle {
        address,
        admin_address,
        worker_id,
        store,
        shutdown,
        task,
    })
}

/// Runs a worker on `listener` until `shutdown` is cancelled, with its
/// admin HTTP server on `admin.listen` when that is set.
pub async fn run(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> TierResult<()> {
    let admin = bind_admin(&config).await?;
    run_with_admin(config, listener, admin, shutdown).await
}

/// [`run`] with the admin HTTP server on `admin`, bound by the caller (who
/// can then print its address); `None` runs none, whatever the config says.
pub async fn run_with_admin(
    config: WorkerConfig,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> TierResult<()> {
    let (shared, _) = prepare(config, &listener, StoreHooks::default(), shutdown.clone())?;
    let admin = start_admin(&shared, admin)?;
    // A service stopped by its supervisor (SIGTERM) is usually restarted:
    // it drains first (see `crate::restart`).
    let stop = CancellationToken::new();
    {
        let (shared, stop) = (Arc::clone(&shared), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => crate::restart::drain(&shared).await,
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        });
    }
    serve(shared, listener, admin, stop).await
}

/// Binds `admin.listen`, if set.
async fn bind_admin(config: &WorkerConfig) -> TierResult<Option<TcpListener>> {
    match &config.admin.listen {
        Some(address) => terrace_admin::bind(address)
            .await
            .map(Some)
            .map_err(|e| TierError::from_cause(ErrorKind::Unavailable, e)),
        None => Ok(None),
    }
}

/// Starts the admin HTTP server on `listener` for the worker `shared`
/// describes, with the admin credential its config gives.
fn start_admin(
    shared: &Arc<Shared>,
    listener: Option<TcpListener>,
) -> TierResult<Option<AdminHandle>> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let credential =
        AdminCredential::resolve(&shared.config.admin, shared.security.secret.as_ref())
            .map_err(|e| TierError::from_cause(ErrorKind::BadInput, e).context("worker config"))?;
    let app = Arc::new(crate::admin::WorkerAdmin::new(Arc::clone(shared)));
    Ok(Some(terrace_admin::start(listener, app, credential)))
}

fn prepare(
    config: WorkerConfig,
    listener: &TcpListener,
    hooks: StoreHooks,
    stop: CancellationToken,
) -> TierResult<(Arc<Shared>, SocketAddr)> {
    config.validate()?;
    let local = listener
        .local_addr()
        .map_err(|e| TierError::with_source(ErrorKind::Internal, "listener address", e))?;
    let address = config
        .advertise_address
        .clone()
        .unwrap_or_else(|| local.to_string());
    let worker_id = config.worker_id.clone().unwrap_or_else(|| address.clone());
    let security = Security::load(&config.security)
        .map_err(|e| TierError::from(e).context("worker config"))?;
    security.warn_if_open("the worker");
    let store = Arc::new(Store::open(&config, hooks)?);
    // Recovered partitions the masters locate here: named in heartbeats
    // again, so masters that restarted since learn them.
    let relocated = store
        .partitions()
        .iter()
        .filter(|p| p.is_relocated())
        .map(|p| p.key().clone())
        .collect();
    Ok((
        Arc::new(Shared {
            store,
            jobs_known: std::sync::Mutex::new(HashMap::new()),
            read_budget: Arc::new(tokio::sync::Semaphore::new(read_budget_permits(&config))),
            config,
            security,
            worker_id,
            address,
            decommission: Decommission::default(),
            restart: Decommission::default(),
            pushes_frozen: Default::default(),
            relocated: std::sync::Mutex::new(relocated),
            adopted: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            adopting_lost: tokio::sync::Mutex::new(()),
            heartbeat_now: tokio::sync::Notify::new(),
            rates: std::sync::Mutex::new(Rates::default()),
            drops: JobDrops::default(),
            masters: MasterContacts::default(),
            stop,
        }),
        local,
    ))
}

async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<AdminHandle>,
    shutdown: CancellationToken,
) -> TierResult<()> {
    tracing::info!(worker = %shared.worker_id, address = %shared.address, "worker serving");
    let flusher = tokio::spawn(Arc::clone(&shared.store).run_flusher(shutdown.child_token()));
    let migrator = tokio::spawn(Arc::clone(&shared.store).run_migrator(shutdown.child_token()));
    let deletions = tokio::spawn(Arc::clone(&shared.store).run_deletions(shutdown.child_token()));
    let heartbeats = heartbeat::spawn(Arc::clone(&shared), shutdown.child_token());
    let spec = ServerSpec {
        name: shared.worker_id.clone(),
        identity: ServerIdentity::Worker(shared.worker_id.clone()),
        max_frame: shared.config.max_frame_size.as_usize(),
        options: shared.config.server.clone(),
        secret: shared.security.secret.clone(),
        tls: shared.security.tls_server.clone(),
    };
    let served = Arc::clone(&shared);
    terrace_rpc::serve(listener, spec, shutdown, move |conn| {
        handle_connection(Arc::clone(&served), conn)
    })
    .await;
    for task in heartbeats {
        task.abort();
    }
    let _ = flusher.await;
    let _ = migrator.await;
    let _ = deletions.await;
    // Last, so health checks see the worker until it is gone.
    if let Some(admin) = admin {
        admin.stop().await;
    }
    tracing::info!(worker = %shared.worker_id, "worker stopped");
    Ok(())
}

/// Longest request header a worker reads. Its requests' headers take a few
/// hundred bytes (ids are at most 256 bytes); headers are read without the
/// memory budget, so this times `server.max_connections` bounds what
/// connections stalled in a header can hold (64 MiB at the defaults).
const MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;

/// Takes a frame's memory from the push budget as its bytes arrive.
struct BudgetMeter<'a> {
    store: &'a Store,
    held: Reservation,
}

impl Meter for BudgetMeter<'_> {
    async fn grant(&mut self, bytes: usize) -> TierResult<()> {
        let more = self.store.budget().reserve(bytes as u64).await?;
        self.held.merge(more);
        Ok(())
    }
}

async fn handle_connection(shared: Arc<Shared>, mut accepted: Accepted) -> Accepted {
    let _open = Occupied::new(&shared.store.counters, Occupancy::Connection);
    let reads = shared.config.server.max_send_queue.as_usize();
    let mut conn = Connection {
        shared,
        sender: accepted.sender.clone(),
        streams: HashMap::new(),
        cancel: accepted.shutdown.child_token(),
        peer: accepted.peer.to_string(),
        reads: Arc::new(tokio::sync::Semaphore::new(reads)),
    };
    let counters = Arc::clone(&conn.shared.store.counters);
    let errors = &counters.errors;
    loop {
        // A connection with open read streams is busy even when it sends
        // nothing; streams whose task ended do not count.
        conn.streams.retain(|_, s| !s.is_done());
        let Some(prefix) = accepted.next_prefix(conn.streams.is_empty()).await else {
            break;
        };
        // Every request header a worker serves is a few hundred bytes; a
        // large one could only be an attack.
        if prefix.header_len > MAX_REQUEST_HEADER_BYTES {
            errors.add(ErrorClass::Protocol);
            accepted.fail_protocol(
                "protocol error: request header longer than 16 KiB (the most a worker reads)",
            );
            break;
        }
        // Control frames (no body) take no budget: they are small, one at a
        // time per connection, and must be served when the budget is full (a
        // release is what frees it). A body's memory is taken from the budget
        // as its bytes arrive, so a peer that announces a push and stalls
        // holds almost nothing; when the budget is short this connection is
        // simply not read (backpressure).
        let frame = if prefix.body_len == 0 {
            accepted
                .read_rest(prefix)
                .await
                .map(|frame| (frame, Reservation::empty()))
        } else {
            let store = Arc::clone(&conn.shared.store);
            let buffer = store.take_buffer(prefix.remaining());
            let mut meter = BudgetMeter {
                store: &store,
                held: Reservation::empty(),
            };
            match accepted.read_rest_metered(prefix, buffer, &mut meter).await {
                // The pooled buffer is a size class: hold all of it.
                Some(frame) => match store.top_up(meter.held, prefix.remaining()).await {
                    Ok(held) => Some((frame, held)),
                    Err(reason) => {
                        errors.add(ErrorClass::Protocol);
                        accepted.fail_protocol(error_text(&reason));
                        None
                    }
                },
                None => None,
            }
        };
        let Some(((message, body), reservation)) = frame else {
            break;
        };
        let request_id = message.request_id();
        let what = format!("{:?}", message.message_type());
        let command = match Command::from_message(message, body, reservation) {
            Ok(command) => command,
            Err(e) => {
                tracing::debug!(peer = %conn.peer, request_id, error = %e, "request failed");
                errors.count(&e);
                conn.sender.send(e.to_reply(request_id), Bytes::new());
                continue;
            }
        };
        if let Err(e) = accepted.identity.authorize(command.access(), &what) {
            tracing::debug!(peer = %conn.peer, client = %accepted.client, error = %e, "request refused");
            errors.count(&e);
            conn.sender.send(e.to_reply(request_id), Bytes::new());
            continue;
        }
        match command.apply(request_id, &mut conn).await {
            Some(Ok(message)) => {
                conn.sender.send(message, Bytes::new());
            }
            Some(Err(e)) => {
                tracing::debug!(peer = %conn.peer, request_id, error = %e, "request failed");
                errors.count(&e);
                conn.sender.send(e.to_reply(request_id), Bytes::new());
            }
            None => {}
        }
    }
    for (_, stream) in conn.streams.drain() {
        stream.cancel.cancel();
    }
    accepted
}
