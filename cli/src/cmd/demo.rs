//! `terrace demo`: the main job on an embedded default. A one-process cluster
//! (a master and a worker on loopback) runs a sample shuffle of several
//! producers × many subpartitions × several segments; every byte is verified.
//! The report goes to stdout; on a terminal, stderr shows a progress bar of
//! the bytes verified.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use terrace_rpc::clock;
use terrace_tier_api::{AgentConfig, ByteSize, JobId, TierFactory, TierMasterAgent};

use crate::cmd::cluster::Cluster;
use crate::progress;
use crate::sample::{
    LogLosses, Pool, ShuffleParams, print_json, read_back, release_all, run_shuffle,
    shuffle_and_keep, verify, with_progress,
};

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
    /// Run the worker with this object store (s3://bucket/prefix, file:///path
    /// or memory://) and a tiny local capacity, so data overflows to the
    /// store and migrates there; print the bytes in each tier, read
    /// everything back from the store, and check nothing is left in it.
    #[arg(long)]
    object_store: Option<String>,
    /// Local capacity of the worker's data directory with --object-store.
    #[arg(long, default_value = "32MiB")]
    local_capacity: ByteSize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.object_store.is_some() {
        return run_tiered(args);
    }
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
        cpu_of: None,
        verified: Some(progress::counter()),
    };
    let pool = Pool::new();
    let report = with_progress("shuffling", &params, || {
        run_shuffle(&factory, &master, &job, &params, &pool)
    })?;
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

/// The demo with an object store: overflow, migration, reads from the store,
/// and a clean bucket at the end.
fn run_tiered(args: Args) -> anyhow::Result<()> {
    let url = args.object_store.clone().unwrap_or_default();
    let dir = tempfile::tempdir().context("create a data directory")?;
    let capacity = args.local_capacity;
    let store_url = url.clone();
    let cluster = Cluster::start_with(dir.path(), 1, ByteSize::mib(64), move |c| {
        c.dir_capacity = Some(capacity);
        c.max_frame_size = ByteSize::mib(8);
        c.object_store = Some(terrace_worker::ObjectStoreConfig {
            url: store_url.clone(),
            cold_after: Duration::from_secs(1),
            migration_interval: Duration::from_millis(200),
            part_size: ByteSize::mib(8),
            request_timeout: Duration::from_secs(10),
            ..Default::default()
        });
    })?;
    let config = AgentConfig {
        segment_size: args.segment_size,
        compression: args.compression,
        max_frame_size: ByteSize::mib(8),
        ..AgentConfig::default()
    };
    let factory = cluster.factory(&config)?;
    let master = factory
        .create_master_agent()
        .context("create the master agent")?;
    let job = JobId::new(b"terrace-demo-tiered".to_vec())?;
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
        read_timeout: Duration::from_secs(300),
        cpu_of: None,
        verified: Some(progress::counter()),
    };
    let pool = Pool::new();
    let (report, descriptors) = with_progress("shuffling", &params, || {
        shuffle_and_keep(&factory, &master, &job, &params, &pool)
    })?;
    let store = Arc::clone(&cluster.workers[0].store);
    let during = tier_line(&store);
    // Sealed partitions go cold after 1 s and migrate: wait for the local tier to empty.
    progress::during("waiting for migration to the object store", || {
        let deadline = clock::now() + Duration::from_secs(60);
        while store.tier_bytes().local > 0 && clock::now() < deadline {
            // The demo runs on a plain thread and polls the store's tier sizes.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Overflowed partitions are compacted once sealed: wait for that too
    // (none left fragmented), so the read below meets the final layout.
    progress::during("waiting for compaction in the object store", || {
        let deadline = clock::now() + Duration::from_secs(60);
        while store.partitions().iter().any(|p| p.compaction_candidate()) && clock::now() < deadline
        {
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let migrated = tier_line(&store);
    let object = store.tiers().object.as_ref().context("the object tier")?;
    let (gets_before, fetched_before) = (
        object
            .counters
            .gets
            .load(std::sync::atomic::Ordering::Relaxed),
        object
            .counters
            .bytes_read
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let read_start = clock::now();
    let verified_again = with_progress("reading back from the object store", &params, || {
        read_back(&factory, &params, &pool, &descriptors)
    })?;
    let read_seconds = clock::elapsed(read_start).as_secs_f64();
    let gets = object
        .counters
        .gets
        .load(std::sync::atomic::Ordering::Relaxed)
        - gets_before;
    let fetched = object
        .counters
        .bytes_read
        .load(std::sync::atomic::Ordering::Relaxed)
        - fetched_before;
    let bytes_per_get = fetched as f64 / gets.max(1) as f64;
    let gets_per_gib = gets as f64 / (fetched.max(1) as f64 / (1u64 << 30) as f64);
    verify(verified_again == report.payload_bytes, || {
        format!(
            "read back {verified_again} bytes of {} from the object store",
            report.payload_bytes
        )
    })?;
    release_all(&master, &descriptors)?;
    master
        .unregister_job(&job)
        .context("unregister the demo job")?;
    master.close();
    let left = cluster.drop_job_and_count_objects(0, &job)?;
    cluster.stop()?;
    verify(left == 0, || {
        format!("{left} objects of the demo are left in {url}")
    })?;
    let mib = report.payload_bytes as f64 / (1024.0 * 1024.0);
    if args.json {
        print_json(&serde_json::json!({
            "object_store": url,
            "payload_bytes": report.payload_bytes,
            "verified_bytes": report.verified_bytes,
            "verified_again_bytes": verified_again,
            "after_shuffle": during,
            "after_migration": migrated,
            "objects_left": left,
            "read_back_gets": gets,
            "read_back_bytes_fetched": fetched,
            "bytes_per_get": bytes_per_get,
            "gets_per_gib": gets_per_gib,
        }))?;
    } else {
        println!(
            "terrace demo with object store {url}: {} producers x {} subpartitions, {mib:.0} MiB, local capacity {capacity}",
            args.producers, args.subpartitions
        );
        println!(
            "  every byte verified ({} bytes) by {} consumers reading while producers wrote ({:.2} s)",
            report.verified_bytes, args.consumers, report.total_seconds
        );
        println!("  after the shuffle:   {}", during.text);
        println!("  after migration:     {}", migrated.text);
        println!(
            "  read back from the object store and verified again: {verified_again} bytes in {read_seconds:.2} s"
        );
        println!(
            "  object-store reads: {gets} GETs fetched {fetched} bytes: {:.2} MiB per GET, {gets_per_gib:.0} GETs per GiB",
            bytes_per_get / (1024.0 * 1024.0)
        );
        println!("  after release and job drop: {left} objects left in the store");
    }
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct TierLine {
    memory_bytes: u64,
    local_bytes: u64,
    object_bytes: u64,
    overflowed_bytes: u64,
    migrated_bytes: u64,
    objects: u64,
    #[serde(skip)]
    text: String,
}

fn tier_line(store: &terrace_worker::Store) -> TierLine {
    use std::sync::atomic::Ordering;
    let bytes = store.tier_bytes();
    let (overflowed, migrated, objects) = store.tiers().object.as_ref().map_or((0, 0, 0), |o| {
        (
            o.counters.bytes_overflowed.load(Ordering::Relaxed),
            o.counters.bytes_migrated.load(Ordering::Relaxed),
            o.counters.objects.load(Ordering::Relaxed),
        )
    });
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    TierLine {
        memory_bytes: bytes.memory,
        local_bytes: bytes.local,
        object_bytes: bytes.object,
        overflowed_bytes: overflowed,
        migrated_bytes: migrated,
        objects,
        text: format!(
            "memory {:.1} MiB, local disk {:.1} MiB, object store {:.1} MiB in {objects} objects ({:.1} MiB overflowed, {:.1} MiB migrated)",
            mib(bytes.memory),
            mib(bytes.local),
            mib(bytes.object),
            mib(overflowed),
            mib(migrated)
        ),
    }
}
