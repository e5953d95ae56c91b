//! `terrace master`.

use std::path::PathBuf;

use anyhow::Context;
use terrace_master::MasterConfig;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML config file (keys: see docs/configuration.md, [master]).
    #[arg(long, env = "TERRACE_MASTER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, env = "TERRACE_MASTER_LISTEN")]
    listen: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config: MasterConfig = crate::config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    crate::config::raise_open_file_limit("master");
    crate::config::serve(|shutdown| async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("bind master to {}", config.listen))?;
        // Printed on stdout so scripts and tests can learn the bound port.
        println!(
            "terrace master listening on {}",
            listener.local_addr().context("read bound address")?
        );
        terrace_master::run(config, listener, shutdown)
            .await
            .context("run master")
    })
}
