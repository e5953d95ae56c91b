//! Config of the long-running services, from three layers applied once for
//! every key: the TOML file, then the environment, then command-line flags.
//!
//! Each layer is a set of `key = value` overrides onto the file's TOML table
//! (a key is a dotted path: `memory_budget`, `object_store.url`,
//! `limits.max_partitions`); the result is deserialized once into the
//! service's config type, whose `deny_unknown_fields` refuses a key it does
//! not have, whichever layer set it. Every key can come from any layer:
//! - environment: `{PREFIX}__KEY`, tables separated by `__`
//!   (`TERRACE_WORKER__OBJECT_STORE__URL=memory://`), and the older named
//!   variables (`TERRACE_WORKER_MEMORY_BUDGET`) for the keys that have one;
//! - flags: `--set key=value` (repeatable), and the named flags
//!   (`--memory-budget`) for the keys that have one.
//!
//! Named variables and flags apply before the generic ones of their layer.
//! A value is read as a TOML value (`64`, `true`, `0.5`, `["a", "b"]`,
//! `"text"`), else as a string (`64MiB`, `127.0.0.1:9871`), and as a string
//! too when the key takes one (`--set worker_id=7`).

use std::ffi::OsString;
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// A value for one key, from one layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text from the environment or `--set`: a TOML value if it parses as
    /// one, else a string.
    Text(String),
    /// A value a named flag already parsed.
    Toml(toml::Value),
}

/// One key set by one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// Where it came from, for errors: `--set memory_budget=64MiB`,
    /// `environment variable TERRACE_WORKER__MEMORY_BUDGET`.
    pub source: String,
    /// Dotted path of the key: `object_store.url`.
    pub key: String,
    pub value: Value,
}

impl Override {
    /// `--set key=value`.
    pub fn from_set(text: &str) -> anyhow::Result<Override> {
        let (key, value) = text
            .split_once('=')
            .with_context(|| format!("--set {text}: expected KEY=VALUE"))?;
        Ok(Override {
            source: format!("--set {text}"),
            key: key.trim().to_string(),
            value: Value::Text(value.to_string()),
        })
    }

    /// A named flag's value for `key`.
    pub fn flag(flag: &str, key: &str, value: impl Into<toml::Value>) -> Override {
        Override {
            source: format!("--{flag}"),
            key: key.to_string(),
            value: Value::Toml(value.into()),
        }
    }
}

/// How one service reads its environment.
#[derive(Clone, Copy, Debug)]
pub struct EnvSpec {
    /// Variables named `{prefix}__KEY` (`TERRACE_WORKER`) set any key.
    pub prefix: &'static str,
    /// Named variables that set one key each, applied first: name, key, and
    /// whether the value is a comma-separated list.
    pub named: &'static [(&'static str, &'static str, bool)],
}

impl EnvSpec {
    /// The environment layer: named variables in `named` order, then the
    /// `{prefix}__` ones by name. Empty named variables are absent (as
    /// they were when the flags read them).
    pub fn overrides(
        &self,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> anyhow::Result<Vec<Override>> {
        let generic_prefix = format!("{}__", self.prefix);
        let mut named = Vec::new();
        let mut generic = Vec::new();
        for (name, value) in vars {
            let Some(name) = name.to_str() else { continue };
            let is_named = self.named.iter().any(|(n, _, _)| *n == name);
            if !is_named && !name.starts_with(&generic_prefix) {
                continue;
            }
            let value = value
                .into_string()
                .map_err(|_| anyhow::anyhow!("environment variable {name} is not UTF-8"))?;
            if is_named {
                named.push((name.to_string(), value));
            } else {
                generic.push((name.to_string(), value));
            }
        }
        let mut out = Vec::new();
        for (var, key, list) in self.named {
            let Some((_, value)) = named.iter().find(|(n, _)| n == var) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            let value = if *list {
                Value::Toml(toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_string()))
                        .collect(),
                ))
            } else {
                Value::Text(value.clone())
            };
            out.push(Override {
                source: format!("environment variable {var}"),
                key: (*key).to_string(),
                value,
            });
        }
        generic.sort();
        for (var, value) in generic {
            let path = &var[generic_prefix.len()..];
            let key = path
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            out.push(Override {
                source: format!("environment variable {var}"),
                key,
                value: Value::Text(value),
            });
        }
        Ok(out)
    }
}

/// Loads `T` from `path` (or the defaults), then applies `overrides` in
/// order (the environment's, then the flags'). An override naming a key `T`
/// does not have, or a value it cannot take, is an error naming the
/// override's source and key.
pub fn load_layered<T: DeserializeOwned + Default>(
    path: Option<&Path>,
    overrides: Vec<Override>,
) -> anyhow::Result<T> {
    let (mut table, from_file) = match path {
        None => (toml::Table::new(), T::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read config file {}", path.display()))?;
            // Parsed into `T` first, for errors that point at the line.
            let from_file = toml::from_str::<T>(&text)
                .with_context(|| format!("parse config file {}", path.display()))?;
            let table = toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("parse config file {}", path.display()))?;
            (table, from_file)
        }
    };
    if overrides.is_empty() {
        return Ok(from_file);
    }
    for o in overrides {
        apply::<T>(&mut table, &o).with_context(|| format!("{} (key `{}`)", o.source, o.key))?;
    }
    Ok(T::deserialize(toml::Value::Table(table))?)
}

/// Sets `o.key` in `table` and checks that the table still makes a `T`: an
/// inferred value that does not fit goes in as a string instead (`--set
/// worker_id=7`); if neither fits, the error says why for both.
fn apply<T: DeserializeOwned>(table: &mut toml::Table, o: &Override) -> anyhow::Result<()> {
    let segments: Vec<&str> = o.key.split('.').collect();
    if segments.iter().any(|s| s.trim().is_empty()) {
        anyhow::bail!("a key is a dotted path of names, like object_store.url");
    }
    let candidates = match &o.value {
        Value::Toml(v) => vec![v.clone()],
        Value::Text(text) => {
            let string = toml::Value::String(text.clone());
            match parse_value(text) {
                Some(v) if v != string => vec![v, string],
                _ => vec![string],
            }
        }
    };
    let mut errors = Vec::new();
    for candidate in candidates {
        let mut attempt = table.clone();
        set(&mut attempt, &segments, candidate)?;
        match T::deserialize(toml::Value::Table(attempt.clone())) {
            Ok(_) => {
                *table = attempt;
                return Ok(());
            }
            Err(e) => errors.push(e.to_string().trim_end().to_string()),
        }
    }
    // No reading fits: say why for each (`30` as a number, then as text).
    anyhow::bail!("{}", errors.join("; as text: "))
}

/// `text` as a TOML value (`64`, `true`, `[1, 2]`, `"quoted"`), if it is one.
fn parse_value(text: &str) -> Option<toml::Value> {
    let mut table: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    if table.len() != 1 {
        return None;
    }
    table.remove("v")
}

fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().expect("a path has a name");
    let mut current = table;
    for (i, name) in parents.iter().enumerate() {
        let entry = current
            .entry(name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => anyhow::bail!("`{}` is not a table", path[..=i].join(".")),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
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
#[path = "config_tests.rs"]
mod tests;
