//! Pushes batches to a worker, keeping at most a budget of bytes unacknowledged.

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
        }
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
        let pending = self.client.start_call(PushData {
            key: self.key.clone(),
            crc32c,
            num_buffers,
            body: chunks.into(),
        })?;
        let failure = Arc::clone(&self.failure);
        let split_requested = Arc::clone(&self.split_requested);
        let acked = Arc::clone(&self.acked);
        let partition = self.key.clone();
        tokio::spawn(async move {
            match pending.wait().await {
                Ok(ack) => {
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
