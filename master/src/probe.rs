//! The master's own check of a worker a peer reported unreachable: can the
//! master open a connection to it and complete the protocol handshake within
//! `probe_timeout`? A hung worker (a paused process, a stuck host) accepts
//! TCP connections in the kernel but never answers, so the handshake is the
//! test, not the connect.

use std::time::Duration;

use terrace_rpc::{ClientOptions, TlsClient};

/// How the master reaches workers for a probe.
#[derive(Clone, Debug)]
pub(crate) struct Prober {
    options: ClientOptions,
    timeout: Duration,
}

impl Prober {
    pub(crate) fn new(timeout: Duration, tls: Option<TlsClient>) -> Self {
        let options = ClientOptions {
            name: crate::SERVER_NAME.to_string(),
            connect_timeout: timeout,
            request_timeout: timeout,
            tls,
            // A probe proves nothing and asks nothing: completing the
            // handshake (the challenge, when the worker has a secret) is
            // the answer, and no credential goes to the address.
            ..ClientOptions::default()
        };
        Prober { options, timeout }
    }

    /// Whether the worker at `address` answers the handshake in time (see
    /// [`terrace_rpc::answers_handshake`]).
    pub(crate) async fn reachable(&self, address: &str) -> bool {
        terrace_rpc::answers_handshake(address, &self.options, self.timeout).await
    }
}
