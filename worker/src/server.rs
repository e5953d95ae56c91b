//! Listener → per-connection handler → command handlers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use terrace_proto::{FrameReader, Message, pb};
use terrace_rpc::{FrameSender, accept_handshake, reply_error, spawn_writer};
use terrace_tier_api::{TierError, TierResult};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::handlers::{self, StreamHandle};
use crate::heartbeat;
use crate::store::{ObjectStoreSettings, Reservation, Store, StoreHooks, StoreOptions};

/// How long a new connection may take to send its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every connection handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub config: WorkerConfig,
    pub worker_id: String,
    pub address: String,
}

/// A running worker, for embedding (demo, bench, tests).
#[derive(Debug)]
pub struct WorkerHandle {
    pub address: SocketAddr,
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
            .map_err(|e| TierError::internal(format!("worker task failed: {e}")))?
    }
}

/// Binds `config.listen` and runs the worker in the background.
pub async fn start(config: WorkerConfig) -> TierResult<WorkerHandle> {
    start_with_hooks(config, StoreHooks::default()).await
}

/// [`start`] with test seams: a file layer and an object store that inject faults.
pub async fn start_with_hooks(config: WorkerConfig, hooks: StoreHooks) -> TierResult<WorkerHandle> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| TierError::unavailable(format!("bind {}: {e}", config.listen)))?;
    let shutdown = CancellationToken::new();
    let (shared, address) = prepare(config, &listener, hooks)?;
    let store = Arc::clone(&shared.store);
    let worker_id = shared.worker_id.clone();
    let task = tokio::spawn(serve(shared, listener, shutdown.clone()));
    Ok(WorkerHandle {
        address,
        worker_id,
        store,
        shutdown,
        task,
    })
}

/// Runs a worker on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> TierResult<()> {
    let (shared, _) = prepare(config, &listener, StoreHooks::default())?;
    serve(shared, listener, shutdown).await
}

/// What the store is opened with, from the worker's config.
pub fn store_options(config: &WorkerConfig) -> StoreOptions {
    let object = config.object_store.clone().unwrap_or_default();
    StoreOptions {
        dirs: config.data_dirs.clone(),
        dir_capacity: config.dir_capacity.map(|c| c.as_u64()),
        dir_reserve: config.dir_reserve.as_u64(),
        memory_budget: config.memory_budget.as_u64(),
        flush_high_watermark: config.flush_high_watermark,
        flush_low_watermark: config.flush_low_watermark,
        object_store: config.object_store.as_ref().map(|o| ObjectStoreSettings {
            url: o.url.clone(),
            options: o.options.clone(),
            request_timeout: o.request_timeout,
            retries: o.retries,
            backoff: o.backoff,
        }),
        object_part_size: object.part_size.as_u64(),
        object_read_budget: object.read_budget.as_u64(),
        object_read_ahead: object.read_ahead.as_u64(),
        cold_after: object.cold_after,
        local_high_watermark: object.local_high_watermark,
        local_low_watermark: object.local_low_watermark,
        migration_interval: object.migration_interval,
    }
}

fn prepare(
    config: WorkerConfig,
    listener: &TcpListener,
    hooks: StoreHooks,
) -> TierResult<(Arc<Shared>, SocketAddr)> {
    config.validate().map_err(TierError::bad_input)?;
    let local = listener
        .local_addr()
        .map_err(|e| TierError::internal(format!("listener address: {e}")))?;
    let address = config
        .advertise_address
        .clone()
        .unwrap_or_else(|| local.to_string());
    let worker_id = config.worker_id.clone().unwrap_or_else(|| address.clone());
    let store = Arc::new(Store::open(store_options(&config), hooks)?);
    Ok((
        Arc::new(Shared {
            store,
            config,
            worker_id,
            address,
        }),
        local,
    ))
}

async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> TierResult<()> {
    tracing::info!(worker = %shared.worker_id, address = %shared.address, "worker serving");
    let flusher = tokio::spawn(Arc::clone(&shared.store).run_flusher(shutdown.child_token()));
    let migrator = tokio::spawn(Arc::clone(&shared.store).run_migrator(shutdown.child_token()));
    let heartbeats = heartbeat::spawn(Arc::clone(&shared), shutdown.child_token());
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = Arc::clone(&shared);
                let cancel = shutdown.child_token();
                connections
                    .spawn(async move { handle_connection(shared, stream, peer, cancel).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    connections.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connections.wait()).await;
    for task in heartbeats {
        task.abort();
    }
    let _ = flusher.await;
    let _ = migrator.await;
    tracing::info!(worker = %shared.worker_id, "worker stopped");
    Ok(())
}

/// Longest request header a worker reads.
const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// One client connection: reads frames in order and runs their commands.
pub(crate) struct Connection {
    pub shared: Arc<Shared>,
    pub sender: FrameSender,
    pub streams: HashMap<u64, StreamHandle>,
    pub cancel: CancellationToken,
    pub peer: String,
}

async fn handle_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let writer_cancel = CancellationToken::new();
    let sender = spawn_writer(write, writer_cancel.clone());
    let max_frame = shared.config.max_frame_size.as_usize();
    let mut reader = FrameReader::new(read, max_frame);
    let client = tokio::select! {
        _ = cancel.cancelled() => return,
        _ = tokio::time::sleep(HANDSHAKE_TIMEOUT) => {
            tracing::debug!(%peer, "no handshake within {HANDSHAKE_TIMEOUT:?}; closing");
            return;
        }
        r = accept_handshake(&mut reader, &sender, &shared.worker_id) => r,
    };
    let client = match client {
        Ok(name) => name,
        Err(reason) => {
            tracing::debug!(%peer, %reason, "handshake refused");
            return;
        }
    };
    tracing::debug!(%peer, %client, "connection open");
    let mut conn = Connection {
        shared,
        sender,
        streams: HashMap::new(),
        cancel: cancel.clone(),
        peer: peer.to_string(),
    };
    loop {
        let prefix = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = writer_cancel.cancelled() => break,
            prefix = reader.read_prefix() => prefix,
        };
        let prefix = match prefix {
            Ok(Some(prefix)) => prefix,
            Ok(None) => break,
            Err(e) => {
                protocol_error(&conn, &e);
                break;
            }
        };
        // Every request header a worker serves is a few hundred bytes; a
        // large one would only take memory from the budget pushes need.
        if prefix.header_len > MAX_REQUEST_HEADER_BYTES {
            protocol_error(
                &conn,
                &terrace_proto::FrameError::Malformed(
                    "request header longer than 64 KiB (the most a worker reads)",
                ),
            );
            break;
        }
        // Reserve memory for the frame before taking it off the socket: when the
        // budget is short this connection is simply not read (backpressure).
        // Bodies land in pooled buffers; small bodiless frames in plain ones.
        let store = Arc::clone(&conn.shared.store);
        let reserved = tokio::select! {
            _ = cancel.cancelled() => break,
            r = async {
                if prefix.body_len > 0 {
                    store.reserve_buffer(prefix.remaining()).await.map(|(r, b)| (r, Some(b)))
                } else {
                    store.budget().reserve(prefix.remaining() as u64).await.map(|r| (r, None))
                }
            } => r,
        };
        let (reservation, buffer) = match reserved {
            Ok(reserved) => reserved,
            Err(reason) => {
                reply_error(&conn.sender, 0, pb::ErrorCode::Protocol, reason);
                break;
            }
        };
        let frame = match buffer {
            Some(buffer) => reader.read_rest_into(prefix, buffer).await,
            None => reader.read_rest(prefix).await,
        };
        let (message, body) = match frame {
            Ok(frame) => frame,
            Err(e) => {
                protocol_error(&conn, &e);
                break;
            }
        };
        dispatch(&mut conn, message, body, reservation).await;
    }
    for (_, stream) in conn.streams.drain() {
        stream.cancel.cancel();
    }
    tracing::debug!(%peer, "connection closed");
}

fn protocol_error(conn: &Connection, e: &terrace_proto::FrameError) {
    if e.is_protocol_error() {
        tracing::warn!(peer = %conn.peer, error = %e, "protocol error; closing connection");
        reply_error(
            &conn.sender,
            0,
            pb::ErrorCode::Protocol,
            format!("protocol error: {e}"),
        );
    } else {
        tracing::debug!(peer = %conn.peer, error = %e, "connection read failed");
    }
}

async fn dispatch(conn: &mut Connection, message: Message, body: Bytes, reservation: Reservation) {
    let request_id = message.request_id();
    let reply: Option<TierResult<Message>> = match message {
        Message::CreatePartition(m) => Some(handlers::create::handle(conn, m)),
        Message::PushData(m) => Some(handlers::push::handle(conn, m, body, reservation).await),
        Message::SealPartition(m) => Some(handlers::seal::handle(conn, m).await),
        Message::ReleasePartition(m) => Some(handlers::release::release_partition(conn, m).await),
        Message::DropJob(m) => Some(handlers::release::drop_job(conn, m).await),
        Message::WorkerStats(m) => Some(Ok(handlers::stats::handle(conn, m))),
        Message::OpenStream(m) => handlers::read::open(conn, m).await.err().map(Err),
        Message::RequireSegment(m) => {
            handlers::read::require_segment(conn, m);
            None
        }
        Message::AddCredit(m) => {
            handlers::read::add_credit(conn, m);
            None
        }
        Message::CloseStream(m) => {
            handlers::read::close(conn, m);
            None
        }
        other => Some(Err(TierError::bad_input(format!(
            "a worker does not serve {:?} requests",
            other.message_type()
        )))),
    };
    match reply {
        Some(Ok(message)) => {
            conn.sender.send(message, Bytes::new());
        }
        Some(Err(e)) => {
            tracing::debug!(peer = %conn.peer, request_id, error = %e, "request failed");
            reply_error(&conn.sender, request_id, e.code(), e.message().to_string());
        }
        None => {}
    }
}
