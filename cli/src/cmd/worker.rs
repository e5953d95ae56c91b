//! `terrace worker`.

use std::path::PathBuf;

use anyhow::Context;
use terrace_rpc::Client;
use terrace_rpc::clock;
use terrace_tier_api::ByteSize;
use terrace_tier_api::protocol::Decommission;
use terrace_worker::WorkerConfig;

use crate::config::Override;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// TOML config file (keys: see docs/configuration.md, [worker]).
    #[arg(long, env = "TERRACE_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Sets any config key, over the file and the environment: `--set
    /// memory_budget=64MiB`, `--set object_store.url=memory://`
    /// (repeatable; also `TERRACE_WORKER__MEMORY_BUDGET=64MiB`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Address to listen on (sets `listen`; env TERRACE_WORKER_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory; repeat for several (sets `data_dirs`; env
    /// TERRACE_WORKER_DATA_DIRS, comma-separated).
    #[arg(long = "data-dir")]
    data_dirs: Vec<PathBuf>,
    /// Bytes of data files each data directory may hold (sets
    /// `dir_capacity`; env TERRACE_WORKER_DIR_CAPACITY).
    #[arg(long)]
    dir_capacity: Option<ByteSize>,
    /// Object store for cold and overflow data: s3://bucket/prefix,
    /// file:///path or memory:// (sets `object_store.url`; env TERRACE_OBJECT_STORE).
    #[arg(long)]
    object_store: Option<String>,
    /// Memory budget, e.g. "1GiB" (sets `memory_budget`; env TERRACE_WORKER_MEMORY_BUDGET).
    #[arg(long)]
    memory_budget: Option<ByteSize>,
    /// Master address; repeat for several (sets `master_addresses`; env
    /// TERRACE_MASTERS, comma-separated).
    #[arg(long = "master")]
    masters: Vec<String>,
    /// Worker id reported to the master (sets `worker_id`; env TERRACE_WORKER_ID).
    #[arg(long)]
    worker_id: Option<String>,
    /// Stored bytes of a partition's part past which its producer is asked
    /// to go on on another worker (sets `split_size`; env TERRACE_WORKER_SPLIT_SIZE).
    #[arg(long)]
    split_size: Option<ByteSize>,
    /// Start even when a data directory in use is missing or unmarked (an
    /// unmounted disk): serve what the others hold, delete nothing whose
    /// owner is unknown (sets `allow_missing_data_dirs`; env
    /// TERRACE_WORKER_ALLOW_MISSING_DATA_DIRS=true).
    #[arg(long)]
    allow_missing_data_dirs: bool,
    /// Address of the admin HTTP server: metrics, health, JSON API (sets
    /// `admin.listen`; env TERRACE_WORKER__ADMIN__LISTEN). Off by default.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
}

/// The worker's environment: `TERRACE_WORKER__KEY` for any key, and the
/// named variables of the keys that have a flag.
pub const ENV: crate::config::EnvSpec = crate::config::EnvSpec {
    prefix: "TERRACE_WORKER",
    named: &[
        ("TERRACE_WORKER_LISTEN", "listen", false),
        ("TERRACE_WORKER_DATA_DIRS", "data_dirs", true),
        ("TERRACE_WORKER_DIR_CAPACITY", "dir_capacity", false),
        ("TERRACE_OBJECT_STORE", "object_store.url", false),
        ("TERRACE_WORKER_MEMORY_BUDGET", "memory_budget", false),
        ("TERRACE_MASTERS", "master_addresses", true),
        ("TERRACE_WORKER_ID", "worker_id", false),
        ("TERRACE_WORKER_SPLIT_SIZE", "split_size", false),
        (
            "TERRACE_WORKER_ALLOW_MISSING_DATA_DIRS",
            "allow_missing_data_dirs",
            false,
        ),
    ],
};

impl Args {
    /// The flag layer: named flags, then every `--set` in order.
    fn overrides(&self) -> anyhow::Result<Vec<Override>> {
        let strings = |v: &[String]| v.iter().map(|s| toml::Value::from(s.as_str())).collect();
        let mut out = Vec::new();
        if let Some(listen) = &self.listen {
            out.push(Override::flag("listen", "listen", listen.as_str()));
        }
        if let Some(admin) = &self.admin_listen {
            out.push(Override::flag(
                "admin-listen",
                "admin.listen",
                admin.as_str(),
            ));
        }
        if !self.data_dirs.is_empty() {
            let dirs: Vec<String> = self
                .data_dirs
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            out.push(Override::flag(
                "data-dir",
                "data_dirs",
                toml::Value::Array(strings(&dirs)),
            ));
        }
        if let Some(capacity) = self.dir_capacity {
            out.push(Override::flag(
                "dir-capacity",
                "dir_capacity",
                capacity.to_string(),
            ));
        }
        if let Some(url) = &self.object_store {
            out.push(Override::flag(
                "object-store",
                "object_store.url",
                url.as_str(),
            ));
        }
        if let Some(budget) = self.memory_budget {
            out.push(Override::flag(
                "memory-budget",
                "memory_budget",
                budget.to_string(),
            ));
        }
        if !self.masters.is_empty() {
            out.push(Override::flag(
                "master",
                "master_addresses",
                toml::Value::Array(strings(&self.masters)),
            ));
        }
        if let Some(id) = &self.worker_id {
            out.push(Override::flag("worker-id", "worker_id", id.as_str()));
        }
        if let Some(size) = self.split_size {
            out.push(Override::flag("split-size", "split_size", size.to_string()));
        }
        if self.allow_missing_data_dirs {
            out.push(Override::flag(
                "allow-missing-data-dirs",
                "allow_missing_data_dirs",
                true,
            ));
        }
        for set in &self.sets {
            out.push(Override::from_set(set)?);
        }
        Ok(out)
    }

    /// The config: file, then environment (`vars`), then flags.
    pub fn config(
        &self,
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> anyhow::Result<WorkerConfig> {
        let mut overrides = ENV.overrides(vars)?;
        overrides.extend(self.overrides()?);
        crate::config::load_layered(self.config.as_deref(), overrides)
    }
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Ask a running worker to leave the cluster: it takes no new
    /// partitions, its producers split away at their next push, and it exits
    /// once its partitions are released (or after `decommission_timeout`).
    Decommission(DecommissionArgs),
    /// Ask a running worker to stop for a restart, as SIGTERM does: it
    /// drains (producers split away, what is still open is kept), tells its
    /// masters it is restarting and exits 0, for its supervisor (systemd,
    /// Docker, Kubernetes) to start it again on the same directories and
    /// address. Jobs lose nothing.
    Restart(RestartArgs),
}

#[derive(Debug, clap::Args)]
struct RestartArgs {
    /// The worker's data address (host:port).
    worker: String,
    /// Wait until the worker has stopped and answers again (its supervisor
    /// started it), at most this long, e.g. "2m".
    #[arg(long, value_parser = terrace_tier_api::parse_duration)]
    wait: Option<std::time::Duration>,
    /// File holding the cluster secret, when the cluster has one.
    #[arg(long, env = "TERRACE_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// PEM CA certificates, when the cluster serves TLS.
    #[arg(long, env = "TERRACE_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
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
    match args.action {
        Some(Action::Decommission(d)) => return decommission(d),
        Some(Action::Restart(r)) => return restart(r),
        None => {}
    }
    let config = args.config(std::env::vars_os())?;
    crate::config::raise_open_file_limit("worker");
    config.validate().context("check worker config")?;
    crate::config::serve(|shutdown| async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("bind worker to {}", config.listen))?;
        println!(
            "terrace worker listening on {}",
            listener.local_addr().context("read bound address")?
        );
        let admin = match &config.admin.listen {
            Some(address) => {
                let admin = terrace_admin::bind(address)
                    .await
                    .context("start the admin HTTP server")?;
                println!(
                    "terrace worker admin listening on {}",
                    admin.local_addr().context("read bound admin address")?
                );
                Some(admin)
            }
            None => None,
        };
        terrace_worker::run_with_admin(config, listener, admin, shutdown)
            .await
            .context("run worker")
    })
}

/// The options and a runtime for asking the worker at `worker` something
/// (as `command`), and `request` asked there.
fn ask_worker<R: terrace_tier_api::protocol::Request>(
    command: &str,
    worker: &str,
    secret_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    request: R,
) -> anyhow::Result<(tokio::runtime::Runtime, terrace_rpc::ClientOptions)> {
    let options = crate::cmd::status::client_options(command, secret_file, tls_ca_file)?
        .expecting(terrace_rpc::ExpectedServer::AnyWorker);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let client = Client::connect(worker, &options)
            .await
            .with_context(|| format!("connect to worker {worker}"))?;
        client
            .call(request)
            .await
            .with_context(|| format!("ask worker {worker}"))?;
        anyhow::Ok(())
    })?;
    Ok((runtime, options))
}

fn restart(args: RestartArgs) -> anyhow::Result<()> {
    let (runtime, options) = ask_worker(
        "terrace worker restart",
        &args.worker,
        args.secret_file,
        args.tls_ca_file,
        terrace_tier_api::protocol::Restart,
    )?;
    println!("worker {} is stopping for a restart", args.worker);
    runtime.block_on(async {
        let Some(wait) = args.wait else {
            return Ok(());
        };
        let deadline = clock::now() + wait;
        let answers = || crate::cmd::status::worker_stats(&args.worker, &options);
        // It answers while it drains, then stops; then answers again once
        // its supervisor started it.
        while answers().await.is_ok() {
            if clock::now() >= deadline {
                anyhow::bail!("worker {} still runs after {wait:?}", args.worker);
            }
            clock::sleep(std::time::Duration::from_millis(200)).await;
        }
        println!("worker {} has stopped", args.worker);
        loop {
            if answers().await.is_ok() {
                println!("worker {} is back", args.worker);
                return Ok(());
            }
            if clock::now() >= deadline {
                anyhow::bail!(
                    "worker {} did not come back within {wait:?}: is a supervisor restarting it?",
                    args.worker
                );
            }
            clock::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

fn decommission(args: DecommissionArgs) -> anyhow::Result<()> {
    let (runtime, options) = ask_worker(
        "terrace worker decommission",
        &args.worker,
        args.secret_file,
        args.tls_ca_file,
        Decommission,
    )?;
    println!("worker {} is decommissioning", args.worker);
    runtime.block_on(async {
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
            clock::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn config(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<WorkerConfig> {
        let cli = Cli::try_parse_from(std::iter::once(&"terrace-worker").chain(argv))?;
        let vars = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        cli.args.config(vars)
    }

    /// `admin.listen` comes from the environment, `--admin-listen` beats
    /// it, and a `--set` after both beats them.
    #[test]
    fn admin_listen_from_every_layer() {
        assert_eq!(config(&[], &[]).expect("defaults").admin.listen, None);
        let env = [("TERRACE_WORKER__ADMIN__LISTEN", "127.0.0.1:1")];
        let from_env = config(&[], &env).expect("env");
        assert_eq!(from_env.admin.listen.as_deref(), Some("127.0.0.1:1"));
        let flag = config(&["--admin-listen", "127.0.0.1:2"], &env).expect("flag");
        assert_eq!(flag.admin.listen.as_deref(), Some("127.0.0.1:2"));
        let set = config(
            &[
                "--admin-listen",
                "127.0.0.1:2",
                "--set",
                "admin.listen=127.0.0.1:3",
                "--set",
                "admin.token_file=/etc/terrace/admin-token",
            ],
            &env,
        )
        .expect("set");
        assert_eq!(set.admin.listen.as_deref(), Some("127.0.0.1:3"));
        assert_eq!(
            set.admin.token_file,
            Some(PathBuf::from("/etc/terrace/admin-token"))
        );
        let e = config(&["--set", "admin.lisen=x"], &[]).expect_err("unknown key");
        assert!(format!("{e:#}").contains("admin.lisen"), "{e:#}");
    }
}
