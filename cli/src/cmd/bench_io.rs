//! `terrace bench-io`: what the kernel's ways of moving a worker's bytes
//! cost on this machine. Runs the raw pipeline of `terrace bench` (socket
//! receive → file write → fsync → file read → socket send, no Terrace code)
//! with the file written through the page cache or with `O_DIRECT`, and read
//! back with `read`+`write`, `sendfile` or `O_DIRECT`, at two chunk sizes
//! (the second shows what fewer system calls, io_uring's saving, would buy).
//! Each variant runs `--runs` times; the median CPU seconds per GiB of the
//! pipeline process is reported next to the buffered/copy variant's.

use std::path::PathBuf;

use anyhow::Context;
use terrace_tier_api::ByteSize;

use crate::cmd::bench_process::{Pipeline, ReadMode, WriteMode, pipeline_with, work_dir};
use crate::progress;
use crate::sample::print_json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bytes through the pipeline per run.
    #[arg(long, default_value = "1GiB")]
    bytes: ByteSize,
    /// Runs per variant (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Directory of the pipeline's file (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Variant {
    write: WriteMode,
    read: ReadMode,
    chunk_bytes: usize,
    /// Median over the runs (null when the variant failed).
    cpu_seconds_per_gib: Option<f64>,
    /// The median over the buffered/copy variant's at 1 MiB chunks.
    vs_buffered_copy: Option<f64>,
    /// Wall-clock MiB/s of the median run (send, then read back).
    mib_s: Option<f64>,
    runs: Vec<Pipeline>,
    /// Why the variant could not run (a file system without `O_DIRECT`, say).
    error: Option<String>,
}

const MIB: usize = 1024 * 1024;

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=20).contains(&args.runs), "--runs must be 1 to 20");
    anyhow::ensure!(
        args.bytes.as_u64() >= MIB as u64,
        "--bytes must be at least 1 MiB"
    );
    let (_temp, dir) = work_dir(args.dir.as_deref())?;
    let variants = [
        (WriteMode::Buffered, ReadMode::Copy, MIB),
        (WriteMode::Buffered, ReadMode::Copy, 4 * MIB),
        (WriteMode::Delayed, ReadMode::Copy, MIB),
        (WriteMode::Recycled, ReadMode::Copy, MIB),
        (WriteMode::Buffered, ReadMode::Sendfile, MIB),
        (WriteMode::Buffered, ReadMode::Direct, MIB),
        (WriteMode::Direct, ReadMode::Copy, MIB),
        (WriteMode::Direct, ReadMode::Sendfile, MIB),
        (WriteMode::Direct, ReadMode::Direct, MIB),
    ];
    let gib = args.bytes.as_u64() as f64 / (1024.0 * MIB as f64);
    let mut results = Vec::new();
    for (write, read, chunk) in variants {
        let label = format!(
            "write {write:?}, read {read:?}, {} KiB chunks, {} runs",
            chunk / 1024,
            args.runs
        );
        let mut runs = Vec::new();
        let mut error = None;
        progress::during(&label, || {
            for _ in 0..args.runs {
                match pipeline_with(&dir, args.bytes.as_u64(), chunk, write, read) {
                    Ok(run) => runs.push(run),
                    Err(e) => {
                        // The report says it too; a variant may not run here (O_DIRECT).
                        tracing::warn!("{label}: failed: {e:#}");
                        error = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
        });
        runs.sort_by(|a, b| a.cpu_seconds.total_cmp(&b.cpu_seconds));
        let median = error.is_none().then(|| &runs[runs.len() / 2]);
        results.push(Variant {
            write,
            read,
            chunk_bytes: chunk,
            cpu_seconds_per_gib: median.map(|m| m.cpu_seconds / gib),
            vs_buffered_copy: None,
            mib_s: median.map(|m| m.bytes as f64 / MIB as f64 / m.seconds),
            runs,
            error,
        });
    }
    let base = results[0]
        .cpu_seconds_per_gib
        .context("the buffered/copy pipeline failed")?
        .max(0.01);
    for v in &mut results {
        v.vs_buffered_copy = v.cpu_seconds_per_gib.map(|c| c / base);
    }
    if args.json {
        return print_json(&results);
    }
    println!(
        "terrace bench-io: {:.0} MiB per run, median of {} (CPU of the pipeline process only)",
        args.bytes.as_u64() as f64 / MIB as f64,
        args.runs
    );
    println!("  write     read      chunk   CPU s/GiB  vs buffered+copy   MiB/s");
    for v in &results {
        let variant = format!(
            "  {:<9} {:<9} {:>4} MiB",
            format!("{:?}", v.write).to_lowercase(),
            format!("{:?}", v.read).to_lowercase(),
            v.chunk_bytes / MIB
        );
        match (v.cpu_seconds_per_gib, v.vs_buffered_copy, v.mib_s) {
            (Some(cpu), Some(ratio), Some(mib_s)) => {
                println!("{variant}  {cpu:>8.2}  {ratio:>15.2}  {mib_s:>7.0}")
            }
            _ => println!(
                "{variant}  failed: {}",
                v.error.as_deref().unwrap_or("no runs")
            ),
        }
    }
    Ok(())
}
