//! Connections to workers, one per data address, opened on first use and
//! reopened once when found closed.

use std::collections::HashMap;
use std::sync::Mutex;

use terrace_proto::Message;
use terrace_rpc::{Client, ClientOptions};
use terrace_tier_api::{ErrorKind, TierResult};

pub(crate) struct Workers {
    options: ClientOptions,
    clients: Mutex<HashMap<String, Client>>,
}

impl Workers {
    pub(crate) fn new(options: ClientOptions) -> Self {
        Workers {
            options,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Sends a request to the worker at `address` and returns its reply.
    pub(crate) async fn request(
        &self,
        address: &str,
        build: impl Fn(u64) -> Message,
    ) -> TierResult<Message> {
        let mut retried = false;
        loop {
            let client = self.client(address).await?;
            match client.request(&build).await {
                Ok((reply, _)) => return Ok(reply),
                // The cached connection had died (the worker restarted, say): one fresh try.
                Err(e)
                    if !retried
                        && client.is_closed()
                        && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Closed) =>
                {
                    tracing::debug!(worker = %address, error = %e, "worker connection closed; reconnecting");
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn client(&self, address: &str) -> TierResult<Client> {
        if let Some(client) = self
            .clients
            .lock()
            .expect("workers lock poisoned")
            .get(address)
        {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        // Connect without the lock, so one slow worker does not hold up others.
        let client = Client::connect(address, &self.options).await?;
        let mut clients = self.clients.lock().expect("workers lock poisoned");
        if let Some(raced) = clients.get(address).filter(|c| !c.is_closed()) {
            // Another caller connected meanwhile: share its connection.
            client.close();
            return Ok(raced.clone());
        }
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    pub(crate) fn close(&self) {
        for (_, client) in self.clients.lock().expect("workers lock poisoned").drain() {
            client.close();
        }
    }
}
