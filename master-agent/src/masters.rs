//! The connection to the masters: one at a time, in the configured order,
//! failing over to the next when one is unavailable. Lease renewals, job
//! registrations and releases go to every master at once, each request
//! under [`Masters::control_timeout`], so one hung master delays none of
//! the others (and never past a third of the lease).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions, Peer, Pool};
use terrace_tier_api::protocol::{JobRegistered, RegisterJob, Request};
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
    renewals: Pool,
    /// How often leases are renewed (`job_renew_interval`).
    renew_interval: Duration,
    /// The shortest `job_lease` a master has announced (milliseconds; 0
    /// until one has).
    lease_ms: AtomicU64,
}

/// The shortest deadline of a control request.
const MIN_CONTROL_TIMEOUT: Duration = Duration::from_millis(100);

/// Whether another master (or a new connection) may succeed where this failed.
/// Whether another master may answer where this one failed: it is
/// unreachable, or it knows no worker that can take a partition (a master
/// restarted a moment ago has not heard every worker's heartbeat yet).
fn is_retryable(e: &TierError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Unavailable | ErrorKind::Closed | ErrorKind::NoWorkers
    )
}

impl Masters {
    pub(crate) fn new(
        addresses: Vec<String>,
        options: ClientOptions,
        announce: JobsToAnnounce,
        renew_interval: Duration,
    ) -> Self {
        Masters {
            addresses,
            renewals: Pool::new(options.clone()),
            options,
            announce,
            current: Mutex::new(Current::default()),
            renew_interval,
            lease_ms: AtomicU64::new(0),
        }
    }

    /// The deadline of each renewal, registration and release sent to every
    /// master (connecting included): the shortest of `request_timeout`,
    /// `job_renew_interval` and a quarter of the shortest `job_lease` a
    /// master has announced, at least 100 ms. A renewal that misses it is
    /// tried again at the next round, well within the lease.
    pub(crate) fn control_timeout(&self) -> Duration {
        let mut timeout = self.options.request_timeout.min(self.renew_interval);
        let lease = self.lease_ms.load(Ordering::Relaxed);
        if lease > 0 {
            timeout = timeout.min(Duration::from_millis(lease) / 4);
        }
        timeout.max(MIN_CONTROL_TIMEOUT)
    }

    /// Takes note of the lease a `JobRegistered` reply announces.
    fn learn_lease(&self, reply: &JobRegistered) {
        if let Some(lease) = reply.job_lease {
            let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            let _ = self
                .lease_ms
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    Some(if old == 0 {
                        lease_ms
                    } else {
                        old.min(lease_ms)
                    })
                });
        }
    }

    pub(crate) fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Sends a request and returns its reply. An unavailable master is left
    /// for the next one; every master is tried, the first one twice (its
    /// connection may just have gone stale).
    pub(crate) async fn request<R: Request + Clone>(&self, request: R) -> TierResult<R::Reply> {
        let mut last = None;
        for _ in 0..=self.addresses.len() {
            let (generation, client) = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match client.call(request.clone()).await {
                Ok(reply) => return Ok(reply),
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
    /// All masters at once, each under [`Masters::control_timeout`] per request.
    pub(crate) async fn renew_everywhere(&self) {
        let renewals = self.addresses.iter().map(|address| async move {
            let jobs = (self.announce)();
            if jobs.is_empty() {
                return;
            }
            for job in jobs {
                let renewed = self.register_on(address, job.clone()).await;
                if let Err(e) = renewed {
                    // The rest of this master's jobs wait for the next round.
                    tracing::warn!(master = %address, job = %job, error = %e, "renewing job leases failed");
                    return;
                }
            }
        });
        futures::future::join_all(renewals).await;
    }

    /// Sends a request to every master at once (so that all of them know
    /// what one of them is told) and returns each one's reply, in
    /// configured order; an unreachable or late master's is its error.
    /// Takes at most [`Masters::control_timeout`] to connect and as long
    /// again to answer.
    pub(crate) async fn request_everywhere<R: Request + Clone>(
        &self,
        request: R,
    ) -> Vec<TierResult<R::Reply>> {
        let request = &request;
        futures::future::join_all(
            self.addresses
                .iter()
                .map(|address| self.side_request(address, request.clone())),
        )
        .await
    }

    /// Registers (or renews) `job` on every master at once; see
    /// [`Masters::request_everywhere`].
    pub(crate) async fn register_everywhere(&self, job: &JobId) -> Vec<TierResult<JobRegistered>> {
        futures::future::join_all(
            self.addresses
                .iter()
                .map(|address| self.register_on(address, job.clone())),
        )
        .await
    }

    /// Registers (or renews) `job` on the master at `address`, and learns
    /// the lease it announces.
    async fn register_on(&self, address: &str, job: JobId) -> TierResult<JobRegistered> {
        let registered = self.side_request(address, RegisterJob { job }).await?;
        self.learn_lease(&registered);
        Ok(registered)
    }

    /// One request to `address` over its side connection, under
    /// [`Masters::control_timeout`] (and as long again to connect). A master
    /// that misses the deadline has its connection closed: the next request
    /// opens a fresh one.
    async fn side_request<R: Request>(&self, address: &str, request: R) -> TierResult<R::Reply> {
        let timeout = self.control_timeout();
        let peer = Peer::master(address);
        let (client, _) = self
            .renewals
            .client_within(&peer, timeout)
            .await
            .map_err(|e| {
                tracing::debug!(master = %address, error = %e, "cannot reach master");
                e.context(format!("master {address}"))
            })?;
        match clock::timeout(timeout, client.call(request)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e.context(format!("master {address}"))),
            Err(_) => {
                self.renewals.forget(&peer, &client);
                Err(TierError::unavailable(format!(
                    "master {address} did not answer within {timeout:?}"
                )))
            }
        }
    }

    async fn announce_jobs(&self, client: &Client) -> TierResult<()> {
        for job in (self.announce)() {
            client
                .call(RegisterJob { job: job.clone() })
                .await
                .map_err(|e| e.context(format!("announce job {job}")))?;
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
        self.renewals.close();
    }
}
