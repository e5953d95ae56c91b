//! A cluster of real processes that hold a cluster secret (and serve TLS
//! when asked): one `terrace master` and workers, for the tests of who may
//! do what (`auth`, `relay`, `unreachable_reports`).

use std::time::Duration;

use terrace_rpc::{
    Client, ClientOptions, ClusterSecret, Credential, ExpectedServer, ServerIdentity, TlsClient,
};
use terrace_tier_api::TierResult;

use crate::ServiceProcess;
use crate::pki::TestPki;

/// A master and its workers sharing a secret; killed when dropped.
#[derive(Debug)]
pub struct SecureCluster {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub tls: bool,
    pub master: ServiceProcess,
    pub workers: Vec<ServiceProcess>,
}

fn write_file(path: &std::path::Path, text: &str) -> String {
    std::fs::write(path, text).expect("write config file");
    path.to_str().expect("utf-8 path").to_string()
}

impl SecureCluster {
    /// Starts a master (its configuration: `master_toml`, then the
    /// security table) and one worker per entry of `worker_ids` (an empty
    /// id: the worker's default, its address), each configured with
    /// `worker_toml` too; returns once every worker has registered, which
    /// it can only do by proving the secret.
    pub fn start(tls: bool, master_toml: &str, worker_ids: &[&str], worker_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::generate(dir.path());
        let master_config = write_file(
            &dir.path().join("master.toml"),
            &format!(
                "listen = \"127.0.0.1:0\"\n{master_toml}\n{}",
                pki.security_toml(tls)
            ),
        );
        let master = ServiceProcess::start(&["master", "--config", &master_config]);
        let workers = worker_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let id_line = if id.is_empty() {
                    String::new()
                } else {
                    format!("worker_id = \"{id}\"\n")
                };
                let config = write_file(
                    &dir.path().join(format!("worker-{i}.toml")),
                    &format!(
                        "listen = \"127.0.0.1:0\"\n{id_line}data_dirs = [\"{}\"]\nmaster_addresses = [\"{}\"]\nheartbeat_interval = \"200ms\"\n{worker_toml}\n{}",
                        dir.path().join(format!("data-{i}")).display(),
                        master.address,
                        pki.security_toml(tls)
                    ),
                );
                ServiceProcess::start(&["worker", "--config", &config])
            })
            .collect();
        let cluster = SecureCluster {
            dir,
            pki,
            tls,
            master,
            workers,
        };
        crate::wait_until(Duration::from_secs(20), "the workers register", || {
            cluster.listed_workers() == Some(worker_ids.len())
        });
        cluster
    }

    pub fn secret(&self) -> ClusterSecret {
        ClusterSecret::load(&self.pki.secret_file).expect("load the test secret")
    }

    pub fn cluster_credential(&self) -> Credential {
        Credential::Cluster(self.secret())
    }

    /// What a producer or consumer of `job` holds: the job's token.
    pub fn job_credential(&self, job: &[u8]) -> Credential {
        Credential::Job {
            job: bytes::Bytes::copy_from_slice(job),
            token: self.secret().job_token(job),
        }
    }

    /// Client options presenting `credential` to `server` (over TLS when the
    /// cluster serves it).
    pub fn options(
        &self,
        name: &str,
        credential: Credential,
        server: ExpectedServer,
    ) -> ClientOptions {
        ClientOptions {
            name: name.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            credential,
            server,
            tls: self
                .tls
                .then(|| TlsClient::load(&self.pki.ca_file).expect("load the test CA")),
            ..ClientOptions::default()
        }
    }

    /// A connection to the master holding the cluster secret.
    pub fn master_client(&self) -> TierResult<Client> {
        let options = self.options(
            "secure-cluster",
            self.cluster_credential(),
            ExpectedServer::Is(ServerIdentity::Master),
        );
        terrace_rpc::io_runtime().block_on(Client::connect(&self.master.address, &options))
    }

    /// How many workers the master lists (`None`: it did not answer).
    pub fn listed_workers(&self) -> Option<usize> {
        let client = self.master_client().ok()?;
        let reply = terrace_rpc::io_runtime()
            .block_on(client.call(terrace_tier_api::protocol::ListWorkers));
        client.close();
        reply.ok().map(|list| list.workers.len())
    }
}
