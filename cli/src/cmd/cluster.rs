//! An embedded one-process cluster (a master and workers on loopback), used by
//! `terrace demo` and `terrace bench`. Its services are the process's own:
//! they do not warn that they have no cluster secret
//! (`SecurityConfig::embedded_loopback`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use terrace_agents::TerraceTierFactory;
use terrace_master::MasterConfig;
use terrace_rpc::clock;
use terrace_tier_api::{AgentConfig, ByteSize};
use terrace_worker::{WorkerConfig, WorkerHandle};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Cluster {
    pub runtime: tokio::runtime::Runtime,
    pub master_address: String,
    pub workers: Vec<WorkerHandle>,
    shutdown: CancellationToken,
}

impl Cluster {
    /// Starts a master and `workers` workers with data under `dir`.
    pub fn start(dir: &Path, workers: usize, memory_budget: ByteSize) -> anyhow::Result<Cluster> {
        Cluster::start_with(dir, workers, memory_budget, |_| {})
    }

    /// [`Cluster::start`], with each worker's config adjusted by `tweak`.
    pub fn start_with(
        dir: &Path,
        workers: usize,
        memory_budget: ByteSize,
        tweak: impl Fn(&mut WorkerConfig),
    ) -> anyhow::Result<Cluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("terrace-cluster")
            .build()
            .context("start the cluster runtime")?;
        let shutdown = CancellationToken::new();
        let (master_address, handles) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("bind master")?;
            let master_address = listener.local_addr().context("master address")?.to_string();
            // Bound to 127.0.0.1 above: the process's own loopback master.
            let mut master_config = MasterConfig::default();
            master_config.security.embedded_loopback = true;
            tokio::spawn(terrace_master::run(
                master_config,
                listener,
                shutdown.clone(),
            ));
            let mut handles = Vec::new();
            for i in 0..workers {
                let mut config = WorkerConfig {
                    listen: "127.0.0.1:0".into(),
                    data_dirs: vec![dir.join(format!("worker-{i}"))],
                    memory_budget,
                    master_addresses: vec![master_address.clone()],
                    heartbeat_interval: Duration::from_millis(200),
                    // A demo on a nearly full disk still runs.
                    dir_reserve: ByteSize::mib(64),
                    ..WorkerConfig::default()
                };
                tweak(&mut config);
                config.security.embedded_loopback = listens_on_loopback(&config);
                handles.push(
                    terrace_worker::start(config)
                        .await
                        .context("start a worker")?,
                );
            }
            Ok::<_, anyhow::Error>((master_address, handles))
        })?;
        Ok(Cluster {
            runtime,
            master_address,
            workers: handles,
            shutdown,
        })
    }

    /// A tier factory for this cluster (agents with `config`, talking to this
    /// cluster's master), once every worker has registered.
    pub fn factory(&self, config: &AgentConfig) -> anyhow::Result<TerraceTierFactory> {
        self.factory_for(config, self.workers.len())
    }

    /// [`Cluster::factory`], once `expected` workers (in this process or
    /// not) have registered.
    pub fn factory_for(
        &self,
        config: &AgentConfig,
        expected: usize,
    ) -> anyhow::Result<TerraceTierFactory> {
        let factory = TerraceTierFactory::new(AgentConfig {
            master_addresses: vec![self.master_address.clone()],
            ..config.clone()
        })
        .context("create the tier factory")?;
        let deadline = clock::now() + Duration::from_secs(10);
        loop {
            let registered = self
                .runtime
                .block_on(registered_workers(&self.master_address))?;
            if registered >= expected {
                return Ok(factory);
            }
            anyhow::ensure!(
                clock::now() < deadline,
                "only {registered} of {expected} workers registered within 10s"
            );
            // Blocking caller (the benchmark's own thread, outside the runtime) polling the master.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Drops `job` on worker `worker` and lists what is left in its object
    /// store: how many objects (0 when the job's data is all gone).
    pub fn drop_job_and_count_objects(
        &self,
        worker: usize,
        job: &terrace_tier_api::JobId,
    ) -> anyhow::Result<usize> {
        let store = &self.workers[worker].store;
        self.runtime.block_on(async {
            store.drop_job(job).await.context("drop the job")?;
            // Objects go in the background; wait for them (bounded).
            clock::timeout(
                std::time::Duration::from_secs(60),
                store.delete_queued_now(),
            )
            .await
            .context("deleting the job's objects took over 60 s")?
            .context("delete the job's objects")?;
            let object = store.tiers().object().context("the object tier")?;
            let left = object
                .list(object.root())
                .await
                .context("list what is left in the object store")?;
            Ok(left.len())
        })
    }

    pub fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.runtime.block_on(async {
            for worker in self.workers {
                worker.stop().await.context("stop a worker")?;
            }
            Ok(())
        })
    }
}

/// Whether an embedded worker serves loopback only: it listens on a
/// loopback IP and advertises nothing else. Only then is it the process's
/// own, needing no warning that it has no cluster secret.
fn listens_on_loopback(config: &WorkerConfig) -> bool {
    let loopback = |address: &str| {
        address
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    };
    loopback(&config.listen) && config.advertise_address.as_deref().is_none_or(loopback)
}

/// How many workers the master lists.
async fn registered_workers(master: &str) -> anyhow::Result<usize> {
    let client = terrace_rpc::Client::connect(master, &terrace_rpc::ClientOptions::default())
        .await
        .context("connect to the master")?;
    let list = client
        .call(terrace_tier_api::protocol::ListWorkers)
        .await
        .context("list workers")?;
    Ok(list.workers.len())
}
