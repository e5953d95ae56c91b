//! The `terrace` binary: run a master or a worker, the demo shuffle, the
//! benchmark, or ask a cluster for its status. `main` only parses flags and
//! hands over to the command.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

mod cmd;
mod config;
mod progress;
mod sample;

#[derive(Debug, Parser)]
#[command(
    name = "terrace",
    version,
    about = "Terrace: a remote storage tier for tiered shuffle"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. "info" or
    /// "terrace_worker=debug". Logs go to stderr. Default: "info" for
    /// master and worker, "warn" for the commands that print a report.
    #[arg(long, global = true, env = "TERRACE_LOG", value_parser = parse_log_filter)]
    log: Option<String>,
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

impl Command {
    /// The log filter when neither `--log` nor `TERRACE_LOG` gives one: a
    /// service logs what it does; a command that prints a report logs only
    /// what needs a person's attention, so its stderr stays quiet.
    fn default_log(&self) -> &'static str {
        match self {
            Command::Master(_) | Command::Worker(_) => "info",
            Command::Demo(_)
            | Command::Bench(_)
            | Command::BenchIo(_)
            | Command::Status(_)
            | Command::BenchPipe(_) => "warn",
        }
    }
}

/// A `--log` value tracing accepts (an empty one means the default).
fn parse_log_filter(text: &str) -> Result<String, String> {
    if !text.trim().is_empty() {
        tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())?;
    }
    Ok(text.to_string())
}

/// How `terrace` exits (docs/configuration.md, "Exit codes"). Usage errors
/// exit with 2, as clap exits on them before any command runs.
mod exit {
    /// The command did what it was asked.
    pub const SUCCESS: u8 = 0;
    /// The command failed: the error is on stderr.
    pub const FAILURE: u8 = 1;
    /// `terrace demo` or `terrace bench` ran, but data read back was not
    /// the data written (see `sample::Unverified`).
    pub const UNVERIFIED: u8 = 3;
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::from(exit::SUCCESS),
        Err(e) => {
            eprintln!("{}", report(&e));
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a failed command.
fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<sample::Unverified>()) {
        exit::UNVERIFIED
    } else {
        exit::FAILURE
    }
}

/// Whether log lines on stderr may carry colour: only on a terminal, and
/// not when `NO_COLOR` is set (no-color.org).
fn log_colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
    let filter = cli
        .log
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| cli.command.default_log());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(log_colours())
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

    /// Services log at INFO, report commands at WARN, unless told.
    #[test]
    fn each_command_has_its_default_log_level() {
        let level = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).expect("parses");
            (cli.log.clone(), cli.command.default_log())
        };
        // TERRACE_LOG may be set where tests run: clap reads it, so only
        // the defaults are compared here.
        for (argv, want) in [
            (&["terrace", "master"][..], "info"),
            (&["terrace", "worker"][..], "info"),
            (&["terrace", "demo"][..], "warn"),
            (&["terrace", "bench"][..], "warn"),
            (&["terrace", "bench-io"][..], "warn"),
            (&["terrace", "status"][..], "warn"),
        ] {
            assert_eq!(level(argv).1, want, "{argv:?}");
        }
        let (log, _) = level(&["terrace", "demo", "--log", "terrace_worker=debug"]);
        assert_eq!(log.as_deref(), Some("terrace_worker=debug"));
        // A filter tracing refuses is a usage error (exit code 2).
        let e = Cli::try_parse_from(["terrace", "--log", "x=notalevel", "demo"])
            .expect_err("a bad filter");
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    /// Data that did not verify has its own exit code, wherever it sits in
    /// the chain; every other failure exits with 1.
    #[test]
    fn unverified_data_exits_with_its_own_code() {
        use anyhow::Context as _;
        let unverified: anyhow::Result<()> = Err(crate::sample::Unverified(
            "partition 1 subpartition 2 buffer 3 differs".into(),
        )
        .into());
        let e = unverified
            .context("run the sample shuffle")
            .expect_err("failed");
        assert_eq!(super::exit_code(&e), super::exit::UNVERIFIED);
        assert_eq!(super::exit::UNVERIFIED, 3);
        assert!(
            report(&e).contains("data did not verify: partition 1 subpartition 2 buffer 3 differs"),
            "{}",
            report(&e)
        );
        let other = anyhow::anyhow!("connect to the master").context("run");
        assert_eq!(super::exit_code(&other), super::exit::FAILURE);
        assert_eq!(super::exit::FAILURE, 1);
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
