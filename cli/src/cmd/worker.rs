//! `terrace worker`.

use std::path::PathBuf;

use anyhow::Context;
use terrace_rpc::Client;
use terrace_tier_api::ByteSize;
use terrace_tier_api::protocol::Decommission;
use terrace_worker::WorkerConfig;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// TOML config file (keys: see docs/configuration.md, [worker]).
    #[arg(long, env = "TERRACE_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, env = "TERRACE_WORKER_LISTEN")]
    listen: Option<String>,
    /// Data directory; repeat for several (overrides `data_dirs`).
    #[arg(
        long = "data-dir",
        env = "TERRACE_WORKER_DATA_DIRS",
        value_delimiter = ','
    )]
    data_dirs: Vec<PathBuf>,
    /// Bytes of data files each data directory may hold (overrides `dir_capacity`).
    #[arg(long, env = "TERRACE_WORKER_DIR_CAPACITY")]
    dir_capacity: Option<ByteSize>,
    /// Object store for cold and overflow data: s3://bucket/prefix,
    /// file:///path or memory:// (overrides `object_store.url`).
    #[arg(long, env = "TERRACE_OBJECT_STORE")]
    object_store: Option<String>,
    /// Memory budget, e.g. "1GiB" (overrides `memory_budget`).
    #[arg(long, env = "TERRACE_WORKER_MEMORY_BUDGET")]
    memory_budget: Option<ByteSize>,
    /// Master address; repeat for several (overrides `master_addresses`).
    #[arg(long = "master", env = "TERRACE_MASTERS", value_delimiter = ',')]
    masters: Vec<String>,
    /// Worker id reported to the master (overrides `worker_id`).
    #[arg(long, env = "TERRACE_WORKER_ID")]
    worker_id: Option<String>,
    /// Stored bytes of a partition's part past which its producer is asked
    /// to go on on another worker (overrides `split_size`).
    #[arg(long, env = "TERRACE_WORKER_SPLIT_SIZE")]
    split_size: Option<ByteSize>,
    /// Start even when a data directory in use is missing or unmarked (an
    /// unmounted disk): serve what the others hold, delete nothing whose
    /// owner is unknown (sets `allow_missing_data_dirs`).
    #[arg(long, env = "TERRACE_WORKER_ALLOW_MISSING_DATA_DIRS")]
    allow_missing_data_dirs: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Ask a running worker to leave the cluster: it takes no new
    /// partitions, its producers split away at their next push, and it exits
    /// once its partitions are released (or after `decommission_timeout`).
    Decommission(DecommissionArgs),
}

#[derive(Debug, clap::Args)]
struct DecommissionArgs {
    /// The worker's data address (host:port).
    worker: String,
    /// Wait until the worker has exited, printing what it still holds.
    #[arg(long)]
    wait: bool,
    /// File holding the cluster secret, when the cluster has one.
    #[arg(long, env = "TERRACE_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// PEM CA certificates, when the cluster serves TLS.
    #[arg(long, env = "TERRACE_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Action::Decommission(d)) = args.action {
        return decommission(d);
    }
    let mut config: WorkerConfig = crate::config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if !args.data_dirs.is_empty() {
        config.data_dirs = args.data_dirs;
    }
    if let Some(capacity) = args.dir_capacity {
        config.dir_capacity = Some(capacity);
    }
    if let Some(url) = args.object_store {
        config.object_store.get_or_insert_with(Default::default).url = url;
    }
    if let Some(budget) = args.memory_budget {
        config.memory_budget = budget;
    }
    if !args.masters.is_empty() {
        config.master_addresses = args.masters;
    }
    if let Some(id) = args.worker_id {
        config.worker_id = Some(id);
    }
    if let Some(size) = args.split_size {
        config.split_size = size;
    }
    if args.allow_missing_data_dirs {
        config.allow_missing_data_dirs = true;
    }
    crate::config::raise_open_file_limit("worker");
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("check worker config")?;
    crate::config::serve(|shutdown| async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("bind worker to {}", config.listen))?;
        println!(
            "terrace worker listening on {}",
            listener.local_addr().context("read bound address")?
        );
        terrace_worker::run(config, listener, shutdown)
            .await
            .context("run worker")
    })
}

fn decommission(args: DecommissionArgs) -> anyhow::Result<()> {
    let options = crate::cmd::status::client_options(
        "terrace worker decommission",
        args.secret_file,
        args.tls_ca_file,
    )?
    .expecting(terrace_rpc::ExpectedServer::AnyWorker);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let client = Client::connect(&args.worker, &options)
            .await
            .with_context(|| format!("connect to worker {}", args.worker))?;
        client
            .call(Decommission)
            .await
            .context("ask the worker to decommission")?;
        println!("worker {} is decommissioning", args.worker);
        drop(client);
        if !args.wait {
            return Ok(());
        }
        // The worker answers until it stops; then connections fail.
        let mut last = None;
        loop {
            match crate::cmd::status::worker_stats(&args.worker, &options).await {
                Ok(stats) => {
                    let load = stats.load;
                    let now = (stats.partitions, load.stored_bytes);
                    if last != Some(now) {
                        println!(
                            "{} partition(s) ({} open), {} bytes left",
                            stats.partitions, load.open_partitions, load.stored_bytes
                        );
                        last = Some(now);
                    }
                }
                Err(_) => {
                    println!("worker {} has exited", args.worker);
                    return Ok(());
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
}
