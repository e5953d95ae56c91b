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
                crate::clock::timeout(timeout, Client::connect(&peer.address, &options))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use terrace_tier_api::protocol::{Ack, Decommission, Wire, WorkerRequest};
    use terrace_tier_api::{JobId, WorkerId};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::listener::{ServerOptions, ServerSpec, serve};
    use crate::security::ClusterSecret;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes(&[7u8; 32]).expect("secret")
    }

    /// A worker `w1` holding `secret()` that acks every request it may
    /// serve, and counts the connections it accepted.
    async fn worker() -> (String, Arc<AtomicUsize>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let spec = ServerSpec {
            name: "w1".into(),
            identity: ServerIdentity::Worker("w1".into()),
            max_frame: 1 << 20,
            options: ServerOptions::default(),
            secret: Some(secret()),
            tls: None,
        };
        let counted = Arc::clone(&accepted);
        tokio::spawn(serve(listener, spec, stop.clone(), move |mut conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                while let Some(prefix) = conn.next_prefix(true).await {
                    let Some((message, body)) = conn.read_rest(prefix).await else {
                        break;
                    };
                    let request_id = message.request_id();
                    let reply = match WorkerRequest::from_frame(message, body).and_then(|r| {
                        conn.identity
                            .authorize(r.access(), &format!("{:?}", r.message_type()))
                    }) {
                        Ok(()) => Ack.into_frame(request_id).0,
                        Err(e) => terrace_proto::Message::error(request_id, e.code(), e.message()),
                    };
                    conn.sender.send(reply, Bytes::new());
                }
                conn
            }
        }));
        (address, accepted, stop)
    }

    fn pool() -> Pool {
        Pool::new(ClientOptions {
            credential: Credential::Cluster(secret()),
            ..ClientOptions::default()
        })
    }

    fn w1(address: &str) -> Peer {
        Peer::worker(&WorkerAt::new(WorkerId::new("w1").expect("id"), address))
    }

    #[tokio::test]
    async fn calls_to_one_peer_share_a_connection_and_a_forgotten_one_is_replaced() {
        let (address, accepted, stop) = worker().await;
        let pool = pool();
        let peer = w1(&address);
        pool.call(&peer, Decommission).await.expect("first call");
        pool.call(&peer, Decommission).await.expect("second call");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // A connection found closed is replaced on the next call.
        let client = pool.client(&peer).await.expect("pooled");
        client.close();
        pool.call(&peer, Decommission).await.expect("after close");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // A forgotten connection is closed and replaced.
        let client = pool.client(&peer).await.expect("pooled");
        pool.forget(&peer, &client);
        assert!(client.is_closed());
        pool.call(&peer, Decommission).await.expect("after forget");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        pool.close();
        stop.cancel();
    }

    #[tokio::test]
    async fn another_credential_is_another_connection_with_its_own_rights() {
        let (address, accepted, stop) = worker().await;
        let pool = pool();
        let job = JobId::new(vec![1, 2, 3]).expect("job");
        let as_job = w1(&address).with_credential(Credential::Job {
            job: job.as_bytes().clone(),
            token: secret().job_token(job.as_bytes()),
        });
        // The job's token may not decommission a worker: the same pool's
        // cluster connection may.
        let refused = pool
            .call(&as_job, Decommission)
            .await
            .expect_err("job token");
        assert_eq!(refused.kind(), ErrorKind::PermissionDenied);
        pool.call(&w1(&address), Decommission)
            .await
            .expect("cluster");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        pool.close();
        stop.cancel();
    }

    #[tokio::test]
    async fn a_peer_that_is_not_the_worker_named_gets_no_credential() {
        let (address, accepted, stop) = worker().await;
        let pool = pool();
        let w2 = Peer::worker(&WorkerAt::new(WorkerId::new("w2").expect("id"), &address));
        let e = pool
            .call(&w2, Decommission)
            .await
            .expect_err("w1 is not w2");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        // The message is the point: it names the peer the call was meant for.
        assert!(e.message().contains("meant to reach \"worker w2\""), "{e}");
        // The client left before authenticating: no connection was served.
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        stop.cancel();
    }
}
