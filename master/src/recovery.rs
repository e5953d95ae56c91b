//! Adopting a lost durable worker's partitions. A worker with durability =
//! "object-store" keeps each sealed part in the object store, data and
//! index. When it goes silent past the worker timeout, the registry keeps it
//! listed as recovering (see `Registry::expire`) and this asks a live worker
//! to adopt what it left (`AdoptLost`). The adopter answers once every
//! master has heard of the adoptions, so when the lost worker leaves the
//! list, master agents find its adopted partitions where they are now and
//! report only the others.

use std::time::Duration;

use terrace_rpc::{Client, ClientOptions, Credential, ExpectedServer, ServerIdentity, TlsClient};
use terrace_tier_api::protocol::AdoptLost;
use terrace_tier_api::{TierError, TierResult, WorkerId};

use crate::registry::{Placement, RecoveryDue};

/// Adopters asked, one after another, while some of the partitions are left.
const ADOPTERS_TRIED: usize = 3;
/// One adopter's whole answer (it copies every partition in the store).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(300);

/// How the master reaches adopters: with the cluster credential, to the
/// worker the registry names.
#[derive(Clone, Debug)]
pub(crate) struct Recoverer {
    options: ClientOptions,
}

impl Recoverer {
    pub(crate) fn new(credential: Credential, tls: Option<TlsClient>) -> Self {
        Recoverer {
            options: ClientOptions {
                name: crate::SERVER_NAME.to_string(),
                credential,
                tls,
                request_timeout: ADOPT_TIMEOUT,
                ..ClientOptions::default()
            },
        }
    }

    /// Asks `adopter` to adopt what `due`'s worker left in the store;
    /// returns how many it adopted and skipped.
    async fn ask(&self, adopter: &Placement, due: &RecoveryDue) -> TierResult<(u32, u32)> {
        let options = ClientOptions {
            server: ExpectedServer::Is(ServerIdentity::Worker(adopter.worker_id.clone())),
            ..self.options.clone()
        };
        let request = AdoptLost {
            lost: WorkerId::new(due.worker_id.clone())?,
            store_id: due.store_id.clone(),
        };
        let asked = async {
            let client = Client::connect(&adopter.data_address, &options).await?;
            let reply = client.call(request).await;
            client.close();
            reply
        };
        let reply = terrace_rpc::clock::timeout(ADOPT_TIMEOUT, asked)
            .await
            .map_err(|_| TierError::unavailable(format!("no answer within {ADOPT_TIMEOUT:?}")))??;
        Ok((reply.adopted, reply.skipped))
    }
}

impl Recoverer {
    /// Asks `adopters`, best first, to adopt what `due`'s worker left in the
    /// store, until one adopts everything it finds (at most
    /// [`ADOPTERS_TRIED`]); returns how many partitions were adopted.
    pub(crate) async fn recover(&self, due: &RecoveryDue, adopters: &[Placement]) -> u64 {
        if adopters.is_empty() {
            tracing::error!(worker = %due.worker_id,
                "no live worker with an object store can adopt the lost worker's partitions: they are reported lost");
        }
        let mut adopted = 0u64;
        for adopter in adopters.iter().take(ADOPTERS_TRIED) {
            match self.ask(adopter, due).await {
                Ok((n, skipped)) => {
                    adopted += u64::from(n);
                    tracing::warn!(worker = %due.worker_id, adopter = %adopter.worker_id,
                        adopted = n, skipped, "lost worker's partitions adopted from the object store");
                    if skipped == 0 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %due.worker_id, adopter = %adopter.worker_id, error = %e,
                        "a worker did not adopt the lost worker's partitions; asking the next");
                }
            }
        }
        adopted
    }
}
