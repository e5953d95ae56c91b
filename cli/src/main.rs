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

fn main() -> anyhow::Result<()> {
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
