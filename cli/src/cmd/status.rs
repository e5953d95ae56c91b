//! `terrace status`: what a master knows, and each worker's own counters.

use anyhow::Context;
use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Master to ask.
    #[arg(long, env = "TERRACE_MASTER", default_value = "127.0.0.1:9870")]
    master: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct WorkerStatus {
    worker_id: String,
    address: String,
    millis_since_heartbeat: u64,
    stored_bytes: u64,
    memory_used_bytes: u64,
    memory_budget_bytes: u64,
    memory_peak_bytes: u64,
    partitions: u32,
    sealed_partitions: u32,
    bytes_pushed: u64,
    bytes_read: u64,
    error: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let (workers, jobs) = runtime.block_on(collect(&args.master))?;
    if args.json {
        let out = serde_json::json!({ "master": args.master, "jobs": jobs, "workers": workers });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("encode status")?
        );
        return Ok(());
    }
    println!(
        "master {}: {} worker(s), {} job(s)",
        args.master,
        workers.len(),
        jobs.len()
    );
    for job in &jobs {
        println!("  job {job}");
    }
    println!(
        "{:<24} {:<22} {:>8} {:>12} {:>12} {:>12} {:>6} {:>6}",
        "worker", "address", "hb ms", "stored", "mem used", "mem peak", "parts", "sealed"
    );
    for w in &workers {
        println!(
            "{:<24} {:<22} {:>8} {:>12} {:>12} {:>12} {:>6} {:>6}{}",
            w.worker_id,
            w.address,
            w.millis_since_heartbeat,
            w.stored_bytes,
            w.memory_used_bytes,
            w.memory_peak_bytes,
            w.partitions,
            w.sealed_partitions,
            w.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn collect(master: &str) -> anyhow::Result<(Vec<WorkerStatus>, Vec<String>)> {
    let options = ClientOptions {
        name: "terrace status".into(),
        ..ClientOptions::default()
    };
    let client = Client::connect(master, &options)
        .await
        .with_context(|| format!("connect to master {master}"))?;
    let (reply, _) = client
        .request(|request_id| Message::ListWorkers(pb::ListWorkers { request_id }))
        .await
        .context("list workers")?;
    let Message::WorkerList(list) = reply else {
        anyhow::bail!(
            "master answered ListWorkers with {:?}",
            reply.message_type()
        );
    };
    let jobs = list
        .jobs
        .iter()
        .map(|j| j.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut out = Vec::new();
    for info in list.workers {
        let load = info.load.unwrap_or_default();
        let mut status = WorkerStatus {
            worker_id: info.worker_id,
            address: info.data_address.clone(),
            millis_since_heartbeat: info.millis_since_heartbeat,
            stored_bytes: load.stored_bytes,
            memory_used_bytes: load.memory_used_bytes,
            memory_budget_bytes: 0,
            memory_peak_bytes: 0,
            partitions: load.open_partitions + load.sealed_partitions,
            sealed_partitions: load.sealed_partitions,
            bytes_pushed: 0,
            bytes_read: 0,
            error: None,
        };
        match worker_stats(&info.data_address, &options).await {
            Ok(stats) => {
                status.memory_budget_bytes = stats.memory_budget_bytes;
                status.memory_peak_bytes = stats.memory_peak_bytes;
                status.bytes_pushed = stats.bytes_pushed;
                status.bytes_read = stats.bytes_read;
                if let Some(load) = stats.load {
                    status.stored_bytes = load.stored_bytes;
                    status.memory_used_bytes = load.memory_used_bytes;
                    status.sealed_partitions = load.sealed_partitions;
                }
                status.partitions = stats.partitions;
            }
            Err(e) => status.error = Some(format!("{e:#}")),
        }
        out.push(status);
    }
    Ok((out, jobs))
}

/// Asks one worker for its counters.
pub async fn worker_stats(
    address: &str,
    options: &ClientOptions,
) -> anyhow::Result<pb::WorkerStatsReply> {
    let client = Client::connect(address, options)
        .await
        .with_context(|| format!("connect to worker {address}"))?;
    let (reply, _) = client
        .request(|request_id| Message::WorkerStats(pb::WorkerStats { request_id }))
        .await
        .context("ask worker for stats")?;
    match reply {
        Message::WorkerStatsReply(stats) => Ok(stats),
        other => anyhow::bail!(
            "worker answered WorkerStats with {:?}",
            other.message_type()
        ),
    }
}
