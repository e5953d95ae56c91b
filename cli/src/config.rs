//! Config files: TOML, every key optional (defaults from the service's config type).

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Loads `path` as `T`, or `T::default()` without a file.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))
}

/// Raises this process's soft open-file limit to its hard limit (a worker
/// holds connections and data files; its data files are bounded by
/// `limits.max_open_data_files`, half the limit by default) and logs it.
pub fn raise_open_file_limit(service: &str) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(
                service,
                from = soft,
                to = hard,
                "raised the open-file limit to its hard limit"
            ),
            Err(e) => {
                tracing::warn!(service, soft, hard, error = %e, "cannot raise the open-file limit")
            }
        },
        Ok((soft, _)) => tracing::info!(service, limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(service, error = %e, "cannot read the open-file limit"),
    }
}

/// Runs `future` on a fresh multi-threaded runtime, stopping on Ctrl-C or SIGTERM.
pub fn serve<F, Fut>(make: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("terrace")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = tokio::signal::ctrl_c().await;
                        signal.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            signal.cancel();
        });
        make(shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use terrace_master::MasterConfig;
    use terrace_worker::WorkerConfig;

    /// The documented examples parse, and say exactly the defaults (except the
    /// worker's master address, which the example sets).
    #[test]
    fn example_configs_parse_to_the_defaults() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let master: MasterConfig =
            super::load(Some(&root.join("master.toml"))).expect("master example parses");
        assert_eq!(master, MasterConfig::default());
        let worker: WorkerConfig =
            super::load(Some(&root.join("worker.toml"))).expect("worker example parses");
        assert_eq!(
            worker,
            WorkerConfig {
                master_addresses: vec!["127.0.0.1:9870".into()],
                ..WorkerConfig::default()
            }
        );
        // The commented-out `[limits]` and `[server]` tables, uncommented, say the defaults.
        let text = std::fs::read_to_string(root.join("worker.toml")).expect("read example");
        for (table, key) in [("limits", "max_partitions"), ("server", "shutdown_grace")] {
            let header = format!("# [{table}]");
            let uncommented: String = text
                .lines()
                .skip_while(|l| *l != header)
                .take_while(|l| !l.is_empty())
                .map(|l| format!("{}\n", l.trim_start_matches("# ")))
                .collect();
            assert!(uncommented.contains(key), "{uncommented}");
            let parsed: WorkerConfig =
                toml::from_str(&uncommented).expect("the example table parses");
            assert_eq!(parsed, WorkerConfig::default(), "[{table}]");
        }
        let typo = toml::from_str::<WorkerConfig>("memory_budgte = \"1GiB\"");
        assert!(typo.is_err(), "unknown keys are refused");
    }
}
