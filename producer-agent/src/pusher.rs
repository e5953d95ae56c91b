//! Pushes batches to a worker, keeping at most a budget of bytes unacknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use terrace_rpc::Client;
use terrace_tier_api::protocol::PushData;
use terrace_tier_api::{PartitionKey, TierError, TierResult};
use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct Pusher {
    client: Client,
    key: PartitionKey,
    in_flight: Arc<Semaphore>,
    budget: u32,
    /// The first failed push; every later call reports it.
    failure: Arc<Mutex<Option<TierError>>>,
    /// The worker answered a push with `split`: go on on another worker.
    split_requested: Arc<AtomicBool>,
    /// Body bytes the worker acknowledged (on this part, across the
    /// pushers of one part).
    acked: Arc<AtomicU64>,
    /// Pushes sent and not acknowledged, by sequence number (within the
    /// in-flight budget): if the connection is cut (the worker restarts),
    /// those the worker did not store are sent again.
    unacked: Arc<Mutex<BTreeMap<u64, Sent>>>,
    next_seq: AtomicU64,
}

/// One push, as sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub chunks: Vec<Bytes>,
    pub num_buffers: u32,
    pub len: u32,
}

impl Pusher {
    pub fn new(client: Client, key: PartitionKey, max_bytes_in_flight: u64) -> Self {
        Pusher::continuing(client, key, max_bytes_in_flight, 0)
    }

    /// A pusher on a part the worker already acknowledged `acked` bytes of.
    pub fn continuing(
        client: Client,
        key: PartitionKey,
        max_bytes_in_flight: u64,
        acked: u64,
    ) -> Self {
        let budget = u32::try_from(max_bytes_in_flight).unwrap_or(u32::MAX);
        Pusher {
            client,
            key,
            in_flight: Arc::new(Semaphore::new(budget as usize)),
            budget,
            failure: Arc::new(Mutex::new(None)),
            split_requested: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicU64::new(acked)),
            unacked: Arc::new(Mutex::new(BTreeMap::new())),
            next_seq: AtomicU64::new(0),
        }
    }

    /// Whether the pushes failed only because the connection is gone or
    /// the worker refused them while stopping (`Unavailable`): nothing was
    /// stored wrong, and what was not stored can be sent again.
    pub fn cut(&self) -> bool {
        self.failure
            .lock()
            .expect("failure lock poisoned")
            .as_ref()
            .is_some_and(|e| e.kind() == terrace_tier_api::ErrorKind::Unavailable)
    }

    /// The pushes not acknowledged, in the order they were sent. Call once
    /// every push has completed ([`Pusher::drain`]).
    pub fn take_unacked(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.unacked.lock().expect("unacked lock poisoned"))
            .into_values()
            .collect()
    }

    /// Body bytes the worker acknowledged on this part.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Whether the worker asked for a split (and it has not been dealt with).
    pub fn split_requested(&self) -> bool {
        self.split_requested.load(Ordering::Relaxed)
    }

    /// Forgets a split request (one that could not be carried out now; the
    /// worker asks again at a later push).
    pub fn clear_split_request(&self) {
        self.split_requested.store(false, Ordering::Relaxed);
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn check(&self) -> TierResult<()> {
        match &*self.failure.lock().expect("failure lock poisoned") {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Sends a batch given as chunks (per-subpartition runs, in order). Waits
    /// while the in-flight budget is used up.
    pub async fn push(&self, chunks: Vec<Bytes>, num_buffers: u32) -> TierResult<()> {
        self.check()?;
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let len = u32::try_from(len)
            .map_err(|_| TierError::bad_input(format!("push of {len} bytes is too large")))?;
        let crc32c = chunks
            .iter()
            .fold(0u32, |crc, chunk| crc32c::crc32c_append(crc, chunk));
        let permit = Arc::clone(&self.in_flight)
            .acquire_many_owned(len.clamp(1, self.budget))
            .await
            .map_err(|_| TierError::closed("producer closed"))?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // Kept (the chunks are shared, not copied) until acknowledged.
        self.unacked.lock().expect("unacked lock poisoned").insert(
            seq,
            Sent {
                chunks: chunks.clone(),
                num_buffers,
                len,
            },
        );
        let sent = self.client.start_call(PushData {
            key: self.key.clone(),
            crc32c,
            num_buffers,
            body: chunks.into(),
        });
        let pending = match sent {
            Ok(pending) => pending,
            // The connection is gone: the push is kept, to be sent again
            // once the worker is back (see `cut`).
            Err(e) if e.kind() == terrace_tier_api::ErrorKind::Unavailable => {
                let mut failure = self.failure.lock().expect("failure lock poisoned");
                if failure.is_none() {
                    *failure = Some(e.context(format!("push to {}", self.key)));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let unacked = Arc::clone(&self.unacked);
        let failure = Arc::clone(&self.failure);
        let split_requested = Arc::clone(&self.split_requested);
        let acked = Arc::clone(&self.acked);
        let partition = self.key.clone();
        tokio::spawn(async move {
            match pending.wait().await {
                Ok(ack) => {
                    unacked.lock().expect("unacked lock poisoned").remove(&seq);
                    acked.fetch_add(u64::from(len), Ordering::AcqRel);
                    if ack.split {
                        split_requested.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    let mut failure = failure.lock().expect("failure lock poisoned");
                    if failure.is_none() {
                        tracing::debug!(%partition, error = %e, "push failed");
                        *failure = Some(e.context(format!("push to {partition}")));
                    }
                }
            }
            drop(permit);
        });
        Ok(())
    }

    /// Waits until every push is acknowledged (or one failed).
    pub async fn drain(&self) -> TierResult<()> {
        let all = self
            .in_flight
            .acquire_many(self.budget)
            .await
            .map_err(|_| TierError::closed("producer closed"))?;
        drop(all);
        self.check()
    }
}
