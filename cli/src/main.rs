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
    Worker(cmd::worker::Args),
    /// Run a sample shuffle on an embedded one-process cluster and verify every byte.
    Demo(cmd::demo::Args),
    /// Measure push, read and end-to-end throughput against raw loopback TCP and raw disk.
    Bench(cmd::bench::Args),
    /// Show the workers and jobs a master knows, and each worker's counters.
    Status(cmd::status::Args),
}

/// Makes glibc serve every allocation of 128 KiB or more (push bodies, read
/// batches) with its own mmap, returned to the OS on free. Without this, glibc
/// raises its mmap threshold after the first large free and keeps freed push
/// buffers in per-thread arenas, so a worker's resident memory drifts to about
/// twice its memory budget (measured: 138 MiB RSS for a 64 MiB budget).
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc parameters; it runs first in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Master(args) => cmd::master::run(args),
        Command::Worker(args) => cmd::worker::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Status(args) => cmd::status::run(args),
    }
}
