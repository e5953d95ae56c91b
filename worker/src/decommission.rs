//! Leaving the cluster. A decommissioning worker takes no new partitions,
//! answers every push with `split` so producers go on elsewhere at their next
//! push, tells its masters at once (they stop placing on it), and keeps
//! serving readers. It stops itself, in order, once it holds no partition,
//! or after `decommission_timeout` with whatever is left.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use terrace_proto::{Message, pb};

use crate::server::{Connection, Shared};

/// Whether and since when the worker is decommissioning.
#[derive(Debug, Default)]
pub(crate) struct Decommission {
    started: OnceLock<Instant>,
}

impl Decommission {
    pub(crate) fn is_started(&self) -> bool {
        self.started.get().is_some()
    }

    /// Starts it; false if it had already started.
    fn start(&self) -> bool {
        let now = Instant::now();
        self.started.set(now).is_ok()
    }
}

/// How often the worker looks whether its partitions are all gone.
const POLL: Duration = Duration::from_millis(200);

/// `Decommission` (cluster credential, checked by the caller).
pub(crate) fn handle(conn: &Connection, m: pb::Decommission) -> Message {
    let shared = &conn.shared;
    if shared.decommission.start() {
        let partitions = shared.store.partition_count();
        tracing::warn!(worker = %shared.worker_id, peer = %conn.peer, partitions,
            timeout_s = shared.config.decommission_timeout.as_secs(),
            "decommission started: no new partitions; exiting once every partition is released");
        shared.heartbeat_now.notify_waiters();
        tokio::spawn(watch(Arc::clone(shared)));
    }
    Message::ack(m.request_id)
}

/// Stops the worker once it holds nothing, or at the timeout.
async fn watch(shared: Arc<Shared>) {
    let deadline = Instant::now() + shared.config.decommission_timeout;
    loop {
        let left = shared.store.partition_count();
        if left == 0 {
            tracing::warn!(worker = %shared.worker_id, "decommission done: every partition released; stopping");
            break;
        }
        if Instant::now() >= deadline {
            tracing::error!(worker = %shared.worker_id, partitions = left,
                timeout_s = shared.config.decommission_timeout.as_secs(),
                "decommission timed out with partitions left; stopping anyway (their readers get partition-not-found)");
            break;
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    shared.stop.cancel();
}
