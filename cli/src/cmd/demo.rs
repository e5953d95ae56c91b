//! `terrace demo`: the main job on an embedded default. A one-process cluster
//! (a master and a worker on loopback) runs a sample shuffle of several
//! producers × many subpartitions × several segments; every byte is verified.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use terrace_tier_api::{AgentConfig, ByteSize, JobId, TierFactory, TierMasterAgent};

use crate::cmd::cluster::Cluster;
use crate::sample::{LogLosses, Pool, ShuffleParams, print_json, run_shuffle};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 4)]
    producers: u32,
    #[arg(long, default_value_t = 64)]
    subpartitions: u32,
    #[arg(long, default_value_t = 4)]
    consumers: u32,
    /// 32 KiB buffers written to each subpartition.
    #[arg(long, default_value_t = 48)]
    buffers: u32,
    /// Segment size; the default gives every subpartition several segments.
    #[arg(long, default_value = "512KiB")]
    segment_size: ByteSize,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    compression: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("create a data directory")?;
    let cluster = Cluster::start(dir.path(), 1, ByteSize::mib(512))?;
    let config = AgentConfig {
        segment_size: args.segment_size,
        compression: args.compression,
        ..AgentConfig::default()
    };
    let factory = cluster.factory(&config)?;
    let master = factory
        .create_master_agent()
        .context("create the master agent")?;
    let job = JobId::new(b"terrace-demo-job".to_vec())?;
    master
        .register_job(&job, Arc::new(LogLosses))
        .context("register the demo job")?;
    let params = ShuffleParams {
        producers: args.producers,
        subpartitions: args.subpartitions,
        consumers: args.consumers,
        buffers_per_subpartition: args.buffers,
        buffer_size: 32 * 1024,
        read_after_write: false,
        read_timeout: Duration::from_secs(120),
    };
    let pool = Pool::new();
    let report = run_shuffle(&factory, &master, &job, &params, &pool)?;
    master
        .unregister_job(&job)
        .context("unregister the demo job")?;
    master.close();
    cluster.stop()?;
    let mib = report.payload_bytes as f64 / (1024.0 * 1024.0);
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "terrace demo: {} producers x {} subpartitions, {} segments, {} buffers, {:.0} MiB",
            args.producers, args.subpartitions, report.segments, report.buffers, mib
        );
        println!(
            "  every byte verified ({} bytes) by {} consumers reading while producers wrote",
            report.verified_bytes, args.consumers
        );
        println!(
            "  {:.2} s end to end: {:.0} MiB/s through one worker (compression {})",
            report.total_seconds,
            mib / report.total_seconds,
            if args.compression { "on" } else { "off" }
        );
    }
    Ok(())
}
