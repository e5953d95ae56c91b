//! The connection pool every agent shares the code of: one connection per
//! peer (address, the server it must prove to be, the credential presented),
//! opened on first use, shared by concurrent callers, and dropped when it
//! fails so the next call opens a fresh one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use terrace_tier_api::protocol::{Request, WorkerAt};
use terrace_tier_api::{ErrorKind, TierError, TierResult};

use crate::client::{Client, ClientOptions};
use crate::security::{Credential, ExpectedServer, ServerIdentity};

/// A peer a pool connects to.
#[derive(Clone, Debug)]
pub struct Peer {
    /// `host:port`.
    pub address: String,
    /// Whom the address must lead to: credentials are presented only to a
    /// server that proves it is this one.
    pub server: ExpectedServer,
    /// Presented instead of the pool's own credential (a job's token, for
    /// a job's data only).
    pub credential: Option<Credential>,
}

impl Peer {
    /// The worker `at`, which must prove it is that worker.
    pub fn worker(at: &WorkerAt) -> Self {
        Peer {
            address: at.address.clone(),
            server: ExpectedServer::Is(ServerIdentity::Worker(at.id.to_string())),
            credential: None,
        }
    }

    /// A master at `address`.
    pub fn master(address: impl Into<String>) -> Self {
        Peer {
            address: address.into(),
            server: ExpectedServer::Is(ServerIdentity::Master),
            credential: None,
        }
    }

    /// Whatever answers at `address`, as the pool's options expect (an
    /// address an operator or a shuffle descriptor gave).
    pub fn at(address: impl Into<String>) -> Self {
        Peer {
            address: address.into(),
            server: ExpectedServer::Any,
            credential: None,
        }
    }

    /// This peer, presenting `credential`.
    pub fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = Some(credential);
        self
    }
}

/// What a pooled connection is keyed by: two peers share a connection only
/// when they are the same address, expected server and credential.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    address: String,
    server: ExpectedServer,
    credential: CredentialKey,
}

/// Which credential a connection presents (never the secret itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CredentialKey {
    Pool,
    None,
    Cluster,
    Job(bytes::Bytes, Vec<u8>),
}

impl Key {
    fn of(peer: &Peer, pool_server: &ExpectedServer) -> Self {
        let credential = match &peer.credential {
            None => CredentialKey::Pool,
            Some(Credential::None) => CredentialKey::None,
            Some(Credential::Cluster(_)) => CredentialKey::Cluster,
            Some(Credential::Job { job, token }) => {
                CredentialKey::Job(job.clone(), token.as_bytes().to_vec())
            }
        };
        let server = match peer.server {
            ExpectedServer::Any => pool_server.clone(),
            ref server => server.clone(),
        };
        Key {
            address: peer.address.clone(),
            server,
            credential,
        }
    }
}

/// Connections to peers, one per [`Peer`]. Cheap to share behind an `Arc`;
/// [`Pool::close`] closes every connection.
#[derive(Debug)]
pub struct Pool {
    options: ClientOptions,
    clients: Mutex<HashMap<Key, Client>>,
}

impl Pool {
    /// A pool connecting with `options` (name, timeouts, TLS, the default
    /// credential and expected server).
    pub fn new(options: ClientOptions) -> Self {
        Pool {
            options,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The options of a connection to `peer`.
    fn options_for(&self, peer: &Peer) -> ClientOptions {
        let mut options = self.options.clone();
        if peer.server != ExpectedServer::Any {
            options.server = peer.server.clone();
        }
        if let Some(credential) = &peer.credential {
            options.credential = credential.clone();
        }
        options
    }

    /// The open connection to `peer`, or a new one (connected without the
    /// pool's lock, so one slow peer holds up no other). Two callers that
    /// connect at once share the first connection stored.
    pub async fn client(&self, peer: &Peer) -> TierResult<Client> {
        self.connect(peer, None).await.map(|(client, _)| client)
    }

    /// [`Pool::client`] within `timeout` (the connect and its handshake),
    /// also telling whether the connection is new.
    pub async fn client_within(
        &self,
        peer: &Peer,
        timeout: Duration,
    ) -> TierResult<(Client, bool)> {
        self.connect(peer, Some(timeout)).await
    }

    async fn connect(&self, peer: &Peer, timeout: Option<Duration>) -> TierResult<(Client, bool)> {
        let key = Key::of(peer, &self.options.server);
        if let Some(client) = self.cached(&key) {
            return Ok((client, false));
        }
        let mut options = self.options_for(peer);
        let client = match timeout {
            None => Client::connect(&peer.address, &options).await?,
            Some(timeout) => {
                options.connect_timeout = options.connect_timeout.min(timeout);
                tokio::time::timeout(timeout, Client::connect(&peer.address, &options))
                    .await
                    .map_err(|_| {
                        TierError::unavailable(format!(
                            "connect to {}: no handshake within {timeout:?}",
                            peer.address
                        ))
                    })??
            }
        };
        let mut clients = self.clients.lock().expect("pool lock poisoned");
        if let Some(raced) = clients.get(&key).filter(|c| !c.is_closed()) {
            // Another caller connected meanwhile: share its connection.
            client.close();
            return Ok((raced.clone(), false));
        }
        clients.insert(key, client.clone());
        Ok((client, true))
    }

    fn cached(&self, key: &Key) -> Option<Client> {
        self.clients
            .lock()
            .expect("pool lock poisoned")
            .get(key)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// Sends `request` to `peer` and waits for its reply. A pooled
    /// connection found dead (the peer restarted, say) is replaced and the
    /// request sent once more on the fresh one.
    pub async fn call<R: Request + Clone>(&self, peer: &Peer, request: R) -> TierResult<R::Reply> {
        let mut retried = false;
        loop {
            let client = self.client(peer).await?;
            match client.call(request.clone()).await {
                Err(e)
                    if !retried
                        && client.is_closed()
                        && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Closed) =>
                {
                    tracing::debug!(peer = %peer.address, error = %e, "pooled connection closed; reconnecting");
                    self.forget(peer, &client);
                    retried = true;
                }
                reply => return reply,
            }
        }
    }

    /// Closes `client` and forgets it if it is still `peer`'s connection: the
    /// next call opens a fresh one.
    pub fn forget(&self, peer: &Peer, client: &Client) {
        client.close();
        let key = Key::of(peer, &self.options.server);
        let mut clients = self.clients.lock().expect("pool lock poisoned");
        if clients.get(&key).is_some_and(|c| c.same_connection(client)) {
            clients.remove(&key);
        }
    }

    /// Closes every connection.
    pub fn close(&self) {
        let clients: Vec<Client> = self
            .clients
            .lock()
            .expect("pool lock poisoned")
            .drain()
            .map(|(_, c)| c)
            .collect();
        for client in clients {
            client.close();
        }
    }
}
