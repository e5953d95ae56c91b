//! Connections to workers, one per worker (id and data address), opened on
//! first use and reopened once when found closed. The agent presents the
//! cluster secret on them, so it connects only to workers the masters know,
//! and only to a server that proves it is the worker of that id.

use std::collections::HashMap;
use std::sync::Mutex;

use terrace_proto::Message;
use terrace_rpc::{Client, ClientOptions, ExpectedServer, ServerIdentity};
use terrace_tier_api::{ErrorKind, TierResult};

/// A worker as the masters know it: its id and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct WorkerAt {
    pub id: String,
    pub address: String,
}

impl WorkerAt {
    pub(crate) fn new(id: impl Into<String>, address: impl Into<String>) -> Self {
        WorkerAt {
            id: id.into(),
            address: address.into(),
        }
    }
}

impl std::fmt::Display for WorkerAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {} at {}", self.id, self.address)
    }
}

pub(crate) struct Workers {
    options: ClientOptions,
    clients: Mutex<HashMap<WorkerAt, Client>>,
}

impl Workers {
    pub(crate) fn new(options: ClientOptions) -> Self {
        Workers {
            options,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Sends a request to `worker` and returns its reply.
    pub(crate) async fn request(
        &self,
        worker: &WorkerAt,
        build: impl Fn(u64) -> Message,
    ) -> TierResult<Message> {
        let mut retried = false;
        loop {
            let client = self.client(worker).await?;
            match client.request(&build).await {
                Ok((reply, _)) => return Ok(reply),
                // The cached connection had died (the worker restarted, say): one fresh try.
                Err(e)
                    if !retried
                        && client.is_closed()
                        && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Closed) =>
                {
                    tracing::debug!(%worker, error = %e, "worker connection closed; reconnecting");
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn client(&self, worker: &WorkerAt) -> TierResult<Client> {
        if let Some(client) = self
            .clients
            .lock()
            .expect("workers lock poisoned")
            .get(worker)
        {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        // Connect without the lock, so one slow worker does not hold up others.
        let options = self
            .options
            .clone()
            .expecting(ExpectedServer::Is(ServerIdentity::Worker(
                worker.id.clone(),
            )));
        let client = Client::connect(&worker.address, &options).await?;
        let mut clients = self.clients.lock().expect("workers lock poisoned");
        if let Some(raced) = clients.get(worker).filter(|c| !c.is_closed()) {
            // Another caller connected meanwhile: share its connection.
            client.close();
            return Ok(raced.clone());
        }
        clients.insert(worker.clone(), client.clone());
        Ok(client)
    }

    pub(crate) fn close(&self) {
        for (_, client) in self.clients.lock().expect("workers lock poisoned").drain() {
            client.close();
        }
    }
}
