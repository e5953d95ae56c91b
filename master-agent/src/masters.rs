//! The connection to the masters: one at a time, in the configured order,
//! failing over to the next when one is unavailable.

use std::sync::{Arc, Mutex};

use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions};
use terrace_tier_api::{ErrorKind, JobId, TierError, TierResult};

/// Lists the jobs to announce to a master on a new connection (a master
/// holds only soft state, so one that restarted does not know them).
pub(crate) type JobsToAnnounce = Arc<dyn Fn() -> Vec<JobId> + Send + Sync>;

#[derive(Default)]
struct Current {
    /// Index in `addresses` of the master to use next.
    index: usize,
    /// The open connection to `addresses[index]`, with its generation.
    client: Option<(u64, Client)>,
    generation: u64,
}

pub(crate) struct Masters {
    addresses: Vec<String>,
    options: ClientOptions,
    announce: JobsToAnnounce,
    current: Mutex<Current>,
    /// Connections for requests to every master (lease renewals, job
    /// registrations and releases), per master address.
    renewals: Mutex<std::collections::HashMap<String, Client>>,
}

/// Whether another master (or a new connection) may succeed where this failed.
fn is_retryable(e: &TierError) -> bool {
    matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Closed)
}

impl Masters {
    pub(crate) fn new(
        addresses: Vec<String>,
        options: ClientOptions,
        announce: JobsToAnnounce,
    ) -> Self {
        Masters {
            addresses,
            options,
            announce,
            current: Mutex::new(Current::default()),
            renewals: Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub(crate) fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Sends a request and returns its reply. An unavailable master is left
    /// for the next one; every master is tried, the first one twice (its
    /// connection may just have gone stale).
    pub(crate) async fn request(&self, build: impl Fn(u64) -> Message) -> TierResult<Message> {
        let mut last = None;
        for _ in 0..=self.addresses.len() {
            let (generation, client) = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match client.request(&build).await {
                Ok((reply, _)) => return Ok(reply),
                Err(e) if is_retryable(&e) => {
                    tracing::warn!(master = %client.peer(), error = %e, "master unavailable; trying the next one");
                    self.failed(generation);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let e = last.unwrap_or_else(|| TierError::unavailable("no master address configured"));
        Err(e.context(format!("no master of {:?} answered", self.addresses)))
    }

    /// The open connection, or a new one to the current master. A failed
    /// connect moves on to the next master.
    async fn client(&self) -> TierResult<(u64, Client)> {
        let address = {
            let current = self.current.lock().expect("masters lock poisoned");
            if let Some((generation, client)) = &current.client {
                if !client.is_closed() {
                    return Ok((*generation, client.clone()));
                }
            }
            self.addresses[current.index].clone()
        };
        let connected = match Client::connect(&address, &self.options).await {
            Ok(client) => self.announce_jobs(&client).await.map(|()| client),
            Err(e) => Err(e),
        };
        let mut current = self.current.lock().expect("masters lock poisoned");
        match connected {
            Ok(client) => {
                if let Some((generation, raced)) =
                    current.client.as_ref().filter(|(_, c)| !c.is_closed())
                {
                    // Another caller connected meanwhile: share its connection.
                    client.close();
                    return Ok((*generation, raced.clone()));
                }
                tracing::info!(master = %address, "connected to master");
                current.generation += 1;
                let generation = current.generation;
                current.client = Some((generation, client.clone()));
                Ok((generation, client))
            }
            Err(e) => {
                tracing::warn!(master = %address, error = %e, "cannot reach master");
                if self.addresses[current.index] == address {
                    current.index = (current.index + 1) % self.addresses.len();
                }
                Err(e)
            }
        }
    }

    /// Renews the leases of the jobs to announce on every master, not only
    /// the current one: a master that stopped hearing of a live job would
    /// release it. Failures are logged; the next round tries again.
    pub(crate) async fn renew_everywhere(&self) {
        for address in &self.addresses {
            let Some(client) = self.side_client(address).await else {
                continue;
            };
            if let Err(e) = self.announce_jobs(&client).await {
                tracing::warn!(master = %address, error = %e, "renewing job leases failed");
            }
        }
    }

    /// Sends a request to every master (so that all of them know what one
    /// of them is told) and returns each one's reply, in configured order;
    /// an unreachable master's is its error.
    pub(crate) async fn request_everywhere(
        &self,
        build: impl Fn(u64) -> Message,
    ) -> Vec<TierResult<Message>> {
        let mut replies = Vec::with_capacity(self.addresses.len());
        for address in &self.addresses {
            let reply = match self.side_client(address).await {
                Some(client) => client
                    .request(&build)
                    .await
                    .map(|(reply, _)| reply)
                    .map_err(|e| e.context(format!("master {address}"))),
                None => Err(TierError::unavailable(format!(
                    "master {address} is unreachable"
                ))),
            };
            replies.push(reply);
        }
        replies
    }

    /// The cached connection to `address` for requests to every master
    /// (renewals, registrations, releases), opened when missing.
    async fn side_client(&self, address: &str) -> Option<Client> {
        let cached = self
            .renewals
            .lock()
            .expect("renewals lock poisoned")
            .get(address)
            .filter(|c| !c.is_closed())
            .cloned();
        if cached.is_some() {
            return cached;
        }
        match Client::connect(address, &self.options).await {
            Ok(client) => {
                self.renewals
                    .lock()
                    .expect("renewals lock poisoned")
                    .insert(address.to_string(), client.clone());
                Some(client)
            }
            Err(e) => {
                tracing::debug!(master = %address, error = %e, "cannot reach master");
                None
            }
        }
    }

    async fn announce_jobs(&self, client: &Client) -> TierResult<()> {
        for job in (self.announce)() {
            let (reply, _) = client
                .request(|request_id| {
                    Message::RegisterJob(pb::RegisterJob {
                        request_id,
                        job_id: job.as_bytes().clone(),
                    })
                })
                .await?;
            expect_job_registered(reply).map_err(|e| e.context(format!("announce job {job}")))?;
        }
        Ok(())
    }

    /// The connection of `generation` failed: drop it and use the next master.
    fn failed(&self, generation: u64) {
        let mut current = self.current.lock().expect("masters lock poisoned");
        if current
            .client
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
        {
            if let Some((_, client)) = current.client.take() {
                client.close();
            }
            current.index = (current.index + 1) % self.addresses.len();
        }
    }

    pub(crate) fn close(&self) {
        if let Some((_, client)) = self
            .current
            .lock()
            .expect("masters lock poisoned")
            .client
            .take()
        {
            client.close();
        }
        for (_, client) in self
            .renewals
            .lock()
            .expect("renewals lock poisoned")
            .drain()
        {
            client.close();
        }
    }
}

/// Checks that a reply is an `Ack`.
pub(crate) fn expect_ack(reply: Message) -> TierResult<()> {
    match reply {
        Message::Ack(_) => Ok(()),
        other => Err(TierError::internal(format!(
            "expected an Ack, got {:?}",
            other.message_type()
        ))),
    }
}

/// The token in a `JobRegistered` reply (empty without a cluster secret).
pub(crate) fn expect_job_registered(reply: Message) -> TierResult<bytes::Bytes> {
    match reply {
        Message::JobRegistered(r) => Ok(r.job_token),
        other => Err(TierError::internal(format!(
            "expected JobRegistered, got {:?}",
            other.message_type()
        ))),
    }
}
