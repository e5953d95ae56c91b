//! `terrace master`.

use std::path::PathBuf;

use anyhow::Context;
use terrace_master::MasterConfig;

use crate::config::Override;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML config file (keys: see docs/configuration.md, [master]).
    #[arg(long, env = "TERRACE_MASTER_CONFIG")]
    config: Option<PathBuf>,
    /// Sets any config key, over the file and the environment: `--set
    /// worker_timeout=30s`, `--set limits.max_jobs=1000` (repeatable; also
    /// `TERRACE_MASTER__WORKER_TIMEOUT=30s`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Address to listen on (sets `listen`; env TERRACE_MASTER_LISTEN).
    #[arg(long)]
    listen: Option<String>,
}

/// The master's environment: `TERRACE_MASTER__KEY` for any key, and the
/// named variable of `listen`.
pub const ENV: crate::config::EnvSpec = crate::config::EnvSpec {
    prefix: "TERRACE_MASTER",
    named: &[("TERRACE_MASTER_LISTEN", "listen", false)],
};

impl Args {
    /// The config: file, then environment (`vars`), then flags (`--listen`,
    /// then every `--set` in order).
    pub fn config(
        &self,
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> anyhow::Result<MasterConfig> {
        let mut overrides = ENV.overrides(vars)?;
        if let Some(listen) = &self.listen {
            overrides.push(Override::flag("listen", "listen", listen.as_str()));
        }
        for set in &self.sets {
            overrides.push(Override::from_set(set)?);
        }
        crate::config::load_layered(self.config.as_deref(), overrides)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config(std::env::vars_os())?;
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
