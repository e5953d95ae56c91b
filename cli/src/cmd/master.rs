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
    /// Address of the admin HTTP server: metrics, health, JSON API (sets
    /// `admin.listen`; env TERRACE_MASTER__ADMIN__LISTEN). Off by default.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
}

/// The master's environment: `TERRACE_MASTER__KEY` for any key, and the
/// named variable of `listen`.
pub const ENV: crate::config::EnvSpec = crate::config::EnvSpec {
    prefix: "TERRACE_MASTER",
    named: &[("TERRACE_MASTER_LISTEN", "listen", false)],
};

impl Args {
    /// The config: file, then environment (`vars`), then flags (`--listen`,
    /// `--admin-listen`, then every `--set` in order).
    pub fn config(
        &self,
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> anyhow::Result<MasterConfig> {
        let mut overrides = ENV.overrides(vars)?;
        if let Some(listen) = &self.listen {
            overrides.push(Override::flag("listen", "listen", listen.as_str()));
        }
        if let Some(admin) = &self.admin_listen {
            overrides.push(Override::flag(
                "admin-listen",
                "admin.listen",
                admin.as_str(),
            ));
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
        let admin = match &config.admin.listen {
            Some(address) => {
                let admin = terrace_admin::bind(address)
                    .await
                    .context("start the admin HTTP server")?;
                println!(
                    "terrace master admin listening on {}",
                    admin.local_addr().context("read bound admin address")?
                );
                Some(admin)
            }
            None => None,
        };
        let listeners = terrace_master::Listeners {
            rpc: listener,
            admin,
        };
        terrace_master::serve(
            config,
            listeners,
            shutdown,
            std::sync::Arc::new(terrace_master::SystemClock),
        )
        .await
        .context("run master")
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

    fn config(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<MasterConfig> {
        let cli = Cli::try_parse_from(std::iter::once(&"terrace-master").chain(argv))?;
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
        let env = [("TERRACE_MASTER__ADMIN__LISTEN", "127.0.0.1:1")];
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
