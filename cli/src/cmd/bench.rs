//! `terrace bench`: push, read and end-to-end throughput of an embedded
//! cluster, next to the machine's own limits measured in the same run (raw
//! loopback TCP, raw sequential disk), with the ratios.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use terrace_tier_api::{AgentConfig, ByteSize, JobId, TierFactory, TierMasterAgent};

use crate::cmd::cluster::Cluster;
use crate::sample::{LogLosses, Pool, ShuffleParams, ShuffleReport, print_json, run_shuffle};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Payload bytes per shuffle phase.
    #[arg(long, default_value = "1GiB")]
    bytes: ByteSize,
    #[arg(long, default_value_t = 4)]
    producers: u32,
    #[arg(long, default_value_t = 64)]
    subpartitions: u32,
    #[arg(long, default_value_t = 4)]
    consumers: u32,
    /// lz4 on pushes (the comparison with raw TCP is meant with it off).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    compression: bool,
    /// Worker memory budget.
    #[arg(long, default_value = "1GiB")]
    memory_budget: ByteSize,
    /// Where the worker and the raw disk test write (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Run one untimed shuffle of the same size first (warm buffer pools).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warmup: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    payload_bytes: u64,
    warmup: bool,
    raw_tcp_mib_s: f64,
    raw_disk_write_mib_s: f64,
    push_mib_s: f64,
    push_and_seal_mib_s: f64,
    read_mib_s: f64,
    end_to_end_mib_s: f64,
    push_vs_raw_tcp: f64,
    read_vs_raw_tcp: f64,
    end_to_end_vs_raw_tcp: f64,
    push_and_seal_vs_raw_disk_write: f64,
    write_then_read: ShuffleReport,
    concurrent: ShuffleReport,
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(args: Args) -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("create a temp dir")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let buffer_size = 32 * 1024;
    let per_sub = args.bytes.as_u64()
        / (u64::from(args.producers) * u64::from(args.subpartitions) * buffer_size as u64);
    let buffers = u32::try_from(per_sub.max(1)).context("too many buffers per subpartition")?;
    let payload = u64::from(buffers)
        * u64::from(args.producers)
        * u64::from(args.subpartitions)
        * buffer_size as u64;

    eprintln!("measuring raw loopback TCP ...");
    let raw_tcp = raw_tcp_throughput(payload).context("measure raw loopback TCP")?;
    eprintln!("measuring raw sequential disk writes ...");
    let raw_disk = raw_disk_write_throughput(&dir.join("raw-disk-test"), payload)
        .context("measure raw disk")?;

    let cluster = Cluster::start(&dir.join("cluster"), 1, args.memory_budget)?;
    let config = AgentConfig {
        compression: args.compression,
        ..AgentConfig::default()
    };
    let factory = cluster.factory(&config)?;
    let master = factory
        .create_master_agent()
        .context("create the master agent")?;
    let pool = Pool::new();
    let mut params = ShuffleParams {
        producers: args.producers,
        subpartitions: args.subpartitions,
        consumers: args.consumers,
        buffers_per_subpartition: buffers,
        buffer_size,
        read_after_write: true,
        read_timeout: Duration::from_secs(600),
    };
    if args.warmup {
        // A long-running worker's buffer pool and the allocator are warm; a
        // fresh one pays a page fault per 4 KiB of its first budget's worth.
        eprintln!(
            "warming up (untimed): pushing then reading {:.0} MiB ...",
            payload as f64 / MIB
        );
        let job = JobId::new(b"terrace-bench-warmup".to_vec())?;
        master.register_job(&job, Arc::new(LogLosses))?;
        run_shuffle(&factory, &master, &job, &params, &pool)?;
        master.unregister_job(&job)?;
    }
    eprintln!("pushing then reading {:.0} MiB ...", payload as f64 / MIB);
    let job = JobId::new(b"terrace-bench-1".to_vec())?;
    master.register_job(&job, Arc::new(LogLosses))?;
    let write_then_read = run_shuffle(&factory, &master, &job, &params, &pool)?;
    master.unregister_job(&job)?;
    eprintln!(
        "pushing and reading {:.0} MiB concurrently ...",
        payload as f64 / MIB
    );
    params.read_after_write = false;
    let job = JobId::new(b"terrace-bench-2".to_vec())?;
    master.register_job(&job, Arc::new(LogLosses))?;
    let concurrent = run_shuffle(&factory, &master, &job, &params, &pool)?;
    master.unregister_job(&job)?;
    master.close();
    cluster.stop()?;

    let mib = payload as f64 / MIB;
    let push = mib / write_then_read.push_seconds;
    let push_and_seal = mib / write_then_read.write_seconds;
    let read = mib / write_then_read.read_seconds;
    let e2e = mib / concurrent.total_seconds;
    let report = Report {
        payload_bytes: payload,
        warmup: args.warmup,
        raw_tcp_mib_s: raw_tcp,
        raw_disk_write_mib_s: raw_disk,
        push_mib_s: push,
        push_and_seal_mib_s: push_and_seal,
        read_mib_s: read,
        end_to_end_mib_s: e2e,
        push_vs_raw_tcp: push / raw_tcp,
        read_vs_raw_tcp: read / raw_tcp,
        end_to_end_vs_raw_tcp: e2e / raw_tcp,
        push_and_seal_vs_raw_disk_write: push_and_seal / raw_disk,
        write_then_read,
        concurrent,
    };
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "terrace bench: {:.0} MiB per phase, {} producers x {} subpartitions, {} consumers, compression {}, warm-up {}",
            mib,
            args.producers,
            args.subpartitions,
            args.consumers,
            if args.compression { "on" } else { "off" },
            if args.warmup { "on" } else { "off" }
        );
        println!("  raw loopback TCP          {:>8.0} MiB/s", raw_tcp);
        println!("  raw disk write (+fsync)   {:>8.0} MiB/s", raw_disk);
        println!(
            "  push (until acked)        {:>8.0} MiB/s  = {:.2} x raw TCP",
            push, report.push_vs_raw_tcp
        );
        println!(
            "  push + seal (fsync)       {:>8.0} MiB/s  = {:.2} x raw disk write",
            push_and_seal, report.push_and_seal_vs_raw_disk_write
        );
        println!(
            "  read (after seal)         {:>8.0} MiB/s  = {:.2} x raw TCP",
            read, report.read_vs_raw_tcp
        );
        println!(
            "  end to end (concurrent)   {:>8.0} MiB/s  = {:.2} x raw TCP",
            e2e, report.end_to_end_vs_raw_tcp
        );
    }
    Ok(())
}

/// One TCP connection on loopback, 1 MiB writes, the reader draining into a
/// 1 MiB buffer: the ceiling for any protocol over it.
fn raw_tcp_throughput(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let address = listener.local_addr().context("address")?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut stream = TcpStream::connect(address).context("connect")?;
    let mut sent = 0u64;
    while sent < bytes {
        stream.write_all(&chunk).context("write")?;
        sent += chunk.len() as u64;
    }
    drop(stream);
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    anyhow::ensure!(received == sent, "sent {sent} bytes, received {received}");
    Ok(sent as f64 / MIB / start.elapsed().as_secs_f64())
}

/// Sequential 4 MiB writes and an fsync: the ceiling for the worker's data files.
fn raw_disk_write_throughput(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let chunk = vec![0xa5u8; 4 << 20];
    let start = Instant::now();
    let mut file =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut written = 0u64;
    while written < bytes {
        file.write_all(&chunk).context("write")?;
        written += chunk.len() as u64;
    }
    file.sync_all().context("fsync")?;
    let seconds = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path).context("remove the raw disk test file")?;
    Ok(written as f64 / MIB / seconds)
}
