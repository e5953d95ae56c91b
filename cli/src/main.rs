//! The `terrace` binary: run a master or a worker, the demo shuffle, the
//! benchmark, or ask a cluster for its status. `main` only parses flags and
//! hands over to the command.

use clap::{Parser, Subcommand};

mod cmd;
mod config;
mod sample;

#[derive(Debug, Parser)]
#[command(
    name = "terrace",
    version,
    about = "Terrace: a remote storage tier for tiered shuffle"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. "info" or "terrace_worker=debug".
    #[arg(long, global = true, env = "TERRACE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a master: worker registry, job registry, partition placement.
    Master(cmd::master::Args),
    /// Run a worker: stores pushed segments and serves them.
    Worker(Box<cmd::worker::Args>),
    /// Run a sample shuffle on an embedded one-process cluster and verify every byte.
    Demo(cmd::demo::Args),
    /// Measure push, read and end-to-end throughput against raw loopback TCP and raw disk.
    Bench(cmd::bench::Args),
    /// Measure what the kernel's ways of writing and sending a file cost in CPU here.
    #[command(name = "bench-io")]
    BenchIo(cmd::bench_io::Args),
    /// Show the workers and jobs a master knows, and each worker's counters.
    Status(cmd::status::Args),
    /// The raw pipeline yardstick of `terrace bench`, as its own process.
    #[command(hide = true, name = "bench-pipe")]
    BenchPipe(cmd::bench_process::PipeArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A fatal error as anyhow prints it ("Error: ..." then "Caused by:"), except
/// that a cause whose text the link above it already shows is left out: a
/// `TierError` names its cause in its own text and also keeps it as its
/// `source`, so anyhow's own report would print that cause twice.
fn report(error: &anyhow::Error) -> String {
    let mut links: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if links.last().is_some_and(|above| above.contains(&text)) {
            continue;
        }
        links.push(text);
    }
    let mut out = format!("Error: {}", links[0]);
    match &links[1..] {
        [] => {}
        // Continuation lines are indented under their cause, as anyhow does.
        [one] => out.push_str(&format!(
            "\n\nCaused by:\n    {}",
            one.replace('\n', "\n    ")
        )),
        many => {
            out.push_str("\n\nCaused by:");
            for (i, cause) in many.iter().enumerate() {
                out.push_str(&format!("\n    {i}: {}", cause.replace('\n', "\n       ")));
            }
        }
    }
    // RUST_BACKTRACE still shows where the error was made, as anyhow does.
    let backtrace = error.backtrace();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        out.push_str(&format!("\n\nStack backtrace:\n{backtrace}"));
    }
    out
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Master(args) => cmd::master::run(args),
        Command::Worker(args) => cmd::worker::run(*args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::BenchIo(args) => cmd::bench_io::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::BenchPipe(args) => cmd::bench_process::run_pipe(args),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::Parser;
    use terrace_tier_api::ByteSize;

    use super::{Cli, Command};

    /// The report without the backtrace `RUST_BACKTRACE` adds (set or not
    /// where the tests run).
    fn report(error: &anyhow::Error) -> String {
        let full = super::report(error);
        match full.split_once("\n\nStack backtrace:") {
            Some((text, _)) => text.to_string(),
            None => full,
        }
    }

    /// The report is what a user reads, so its text is the point: a
    /// `TierError` that names its cause is not followed by that cause again.
    #[test]
    fn a_fatal_error_names_its_cause_once() {
        use anyhow::Context as _;
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let failed: anyhow::Result<()> = Err(terrace_tier_api::TierError::with_source(
            terrace_tier_api::ErrorKind::BadInput,
            "create data directory /x",
            io,
        ))
        .context("run worker");
        assert_eq!(
            report(&failed.expect_err("failed")),
            "Error: run worker\n\nCaused by:\n    BadInput: create data directory /x: entity not found"
        );
        // What anyhow itself prints for the same error repeats the cause.
        let failed = anyhow::Error::from(terrace_tier_api::TierError::with_source(
            terrace_tier_api::ErrorKind::BadInput,
            "create data directory /x",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
        .context("run worker");
        assert_eq!(
            format!("{failed:?}")
                .lines()
                .filter(|l| l.contains("entity not found"))
                .count(),
            2,
            "{failed:?}"
        );
        let plain = anyhow::anyhow!(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("read config file /c")
            .context("load config");
        assert_eq!(
            report(&plain),
            "Error: load config\n\nCaused by:\n    0: read config file /c\n    1: entity not found"
        );
    }

    fn worker(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<terrace_worker::WorkerConfig> {
        let cli = Cli::try_parse_from(["terrace", "worker"].iter().chain(argv))?;
        let Command::Worker(args) = cli.command else {
            panic!("parsed as another command")
        };
        let vars = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        args.config(vars)
    }

    /// The named flags and variables are shorthands in their layers: a
    /// named flag beats every variable, a `--set` after it beats it, and a
    /// named variable beats the file only.
    #[test]
    fn named_flags_and_variables_sit_in_their_layers() {
        let env = [
            ("TERRACE_WORKER_MEMORY_BUDGET", "32MiB"),
            ("TERRACE_WORKER__SPLIT_SIZE", "3GiB"),
            ("TERRACE_MASTERS", "m:1,m:2"),
            ("TERRACE_OBJECT_STORE", "memory://"),
        ];
        let from_env = worker(&[], &env).expect("env");
        assert_eq!(from_env.memory_budget, ByteSize::mib(32));
        assert_eq!(from_env.split_size, ByteSize::gib(3));
        assert_eq!(from_env.master_addresses, ["m:1", "m:2"]);
        assert_eq!(
            from_env.object_store.map(|o| o.url).as_deref(),
            Some("memory://")
        );
        let flags = worker(
            &[
                "--memory-budget",
                "48MiB",
                "--split-size",
                "5GiB",
                "--data-dir",
                "/a",
                "--data-dir",
                "/b",
                "--allow-missing-data-dirs",
                "--set",
                "split_size=6GiB",
                "--master",
                "x:1",
            ],
            &env,
        )
        .expect("flags");
        assert_eq!(flags.memory_budget, ByteSize::mib(48));
        assert_eq!(flags.split_size, ByteSize::gib(6));
        assert_eq!(
            flags.data_dirs,
            [std::path::PathBuf::from("/a"), "/b".into()]
        );
        assert!(flags.allow_missing_data_dirs);
        assert_eq!(flags.master_addresses, ["x:1"]);
        let e = worker(&["--set", "memory_budgte=1GiB"], &[]).expect_err("unknown key");
        assert!(
            format!("{e:#}").contains("--set memory_budgte=1GiB"),
            "{e:#}"
        );
    }
}
