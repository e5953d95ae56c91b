//! `terrace bench`: a worker's CPU time per GiB moved and its peak memory,
//! next to a raw pipeline moving the same bytes (see `bench_process`); push,
//! read and end-to-end throughput, next to the machine's own limits measured
//! in the same run (raw loopback TCP, raw sequential disk), with the ratios;
//! and reads served by the object-store tier next to reads of the same data
//! from local disk (that phase runs its worker in this process).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use terrace_rpc::clock;
use terrace_tier_api::{AgentConfig, ByteSize, JobId, TierFactory, TierMasterAgent};

use crate::cmd::bench_process::{
    Pipeline, WorkerProcess, cpu_seconds, peak_rss, pipeline_yardstick, work_dir,
};
use crate::cmd::bench_scale::{ScaleArgs, parse_steps};
use crate::cmd::cluster::Cluster;
use crate::progress;
use crate::sample::{
    LogLosses, Pool, ShuffleParams, ShuffleReport, print_json, read_back, release_all, run_shuffle,
    shuffle_and_keep, verify, with_progress,
};

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
    /// The worker's `write_on_push` setting (its default: true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    write_on_push: bool,
    /// Where the worker and the raw disk test write (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Write-then-read shuffles whose worker CPU is measured, each paired
    /// with a run of the raw pipeline right after it; medians are reported
    /// (this machine is shared and noisy).
    #[arg(long, default_value_t = 3)]
    cpu_runs: u32,
    /// Run one untimed shuffle of the same size first (warm buffer pools).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warmup: bool,
    /// Object store of the object-store read phase: s3://bucket/prefix,
    /// file:///path or memory://; "none" skips the phase. For s3 the
    /// endpoint and credentials come from the AWS_* environment variables.
    #[arg(long, env = "TERRACE_BENCH_OBJECT_STORE", default_value = "memory://")]
    object_store: String,
    /// Payload bytes of the object-store phase at most (it is --bytes when
    /// that is smaller): the phase writes, reads, migrates and reads again.
    #[arg(long, default_value = "256MiB")]
    object_store_bytes: ByteSize,
    /// Scale mode instead of the byte benchmark: one shuffle per step of
    /// --scale-steps, many producers x many subpartitions with one small
    /// buffer each, reporting placements per second, time and CPU per
    /// buffer, worker memory per partition and per written subpartition,
    /// connections held, and time to first byte.
    #[arg(long)]
    scale: bool,
    /// Scale mode's steps: PRODUCERSxSUBPARTITIONS, comma-separated (one
    /// consumer task per subpartition reads it from every partition).
    #[arg(long, default_value = "10x10,100x100,1000x1000")]
    scale_steps: String,
    /// Scale mode: the one buffer written per (partition, subpartition).
    #[arg(long, default_value = "4KiB")]
    scale_buffer: ByteSize,
    /// Scale mode: producer (then consumer) tasks running at once, as an
    /// engine's slots run them.
    #[arg(long, default_value_t = 16)]
    scale_slots: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    /// CPU seconds of the worker process per GiB of payload moved in the
    /// write-then-read shuffle (pushed, stored, sealed, read once)...
    worker_cpu_seconds_per_gib: f64,
    /// ...of the raw pipeline moving the same bytes (receive, write, fsync,
    /// read, send; `pipeline` has its figures)...
    pipeline_cpu_seconds_per_gib: f64,
    /// ...and the median over the pairs of the first over the second (the
    /// pipeline's taken as at least 0.01 s per GiB, the clock's resolution
    /// on small runs).
    worker_cpu_vs_pipeline: f64,
    /// Every pair: the worker's and the pipeline's CPU seconds per GiB and
    /// their ratio.
    cpu_runs: Vec<CpuPair>,
    /// The worker process's peak resident memory over the whole run.
    worker_peak_rss_bytes: u64,
    memory_budget_bytes: u64,
    /// The pipeline run of the median pair.
    pipeline: Pipeline,
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
    /// The raw pipeline's own rate (its bytes over its wall time: sent in,
    /// then read back, with no Terrace code) against raw TCP: what moving
    /// each byte over loopback twice and through a file costs on this
    /// machine, the ceiling of any store's end-to-end ratio here.
    pipeline_vs_raw_tcp: f64,
    push_and_seal_vs_raw_disk_write: f64,
    /// Reads of the object-store phase's shuffle after every partition was
    /// migrated to the object store (null when the phase is skipped)...
    object_store_read_mib_s: Option<f64>,
    /// ...and of the same shuffle from local disk, before the migration.
    local_read_mib_s: Option<f64>,
    object_vs_local_read: Option<f64>,
    /// The object-store read against the store's raw GETs in the same run.
    object_vs_raw_get: Option<f64>,
    /// The first write-then-read shuffle (push and read figures above).
    write_then_read: ShuffleReport,
    concurrent: ShuffleReport,
    object_store_phase: Option<ObjectStorePhase>,
}

/// One write-then-read shuffle's worker CPU and the pipeline run after it.
#[derive(Debug, serde::Serialize)]
struct CpuPair {
    worker_cpu_seconds_per_gib: f64,
    pipeline_cpu_seconds_per_gib: f64,
    ratio: f64,
    /// The share of the two figures above spent until the data was stored
    /// (the worker: every partition sealed; the pipeline: its file written
    /// and fsynced). The rest went to reading it back and deleting it.
    worker_write_cpu_seconds_per_gib: f64,
    pipeline_write_cpu_seconds_per_gib: f64,
}

/// The object-store phase: one shuffle written to a worker with an object
/// store, read from local disk, migrated explicitly, read from the store.
#[derive(Debug, serde::Serialize)]
struct ObjectStorePhase {
    /// The store (no credentials).
    url: String,
    payload_bytes: u64,
    /// The shuffle (its read is the first read after the write, from local disk).
    write_then_read: ShuffleReport,
    /// A second read from local disk, timed like the object-store read.
    local_read_seconds: f64,
    migrated_bytes: u64,
    migrated_partitions: u64,
    migrate_seconds: f64,
    migrate_mib_s: f64,
    objects: u64,
    object_read_seconds: f64,
    /// Bytes the worker fetched from the object store during that read...
    object_bytes_fetched: u64,
    /// ...in this many ranged GETs...
    object_gets: u64,
    /// ...so many bytes per GET on average, and GETs per GiB fetched.
    object_bytes_per_get: f64,
    object_gets_per_gib: f64,
    /// The store's own ceiling in the same run: every object fetched in
    /// 4 MiB ranged GETs, 16 at a time, by the worker's client with no
    /// Terrace code around it (nothing sent anywhere).
    raw_get_mib_s: f64,
    /// Objects left in the store after the partitions were released.
    objects_left: usize,
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=20).contains(&args.cpu_runs),
        "--cpu-runs must be 1 to 20"
    );
    let (_temp, dir) = work_dir(args.dir.as_deref())?;
    if args.scale {
        let scale = ScaleArgs {
            steps: parse_steps(&args.scale_steps).context("--scale-steps")?,
            buffer: args.scale_buffer,
            slots: args.scale_slots,
            memory_budget: args.memory_budget,
            write_on_push: args.write_on_push,
            json: args.json,
        };
        return crate::cmd::bench_scale::run(scale, &dir);
    }
    let buffer_size = 32 * 1024;
    let (buffers, payload) = shape(&args, args.bytes, buffer_size)?;
    let object_store = match args.object_store.trim() {
        "" | "none" => None,
        url => {
            check_object_store_url(url).with_context(|| format!("--object-store {url}"))?;
            Some(url.to_string())
        }
    };

    let raw_tcp = progress::during("measuring raw loopback TCP", || raw_tcp_throughput(payload))
        .context("measure raw loopback TCP")?;
    let raw_disk = progress::during("measuring raw sequential disk writes", || {
        raw_disk_write_throughput(&dir.join("raw-disk-test"), payload)
    })
    .context("measure raw disk")?;

    // The master in this process; the worker, as deployed, in its own.
    let cluster = Cluster::start(&dir.join("cluster"), 0, args.memory_budget)?;
    let worker = WorkerProcess::start(
        &dir.join("worker"),
        &cluster.master_address,
        args.memory_budget,
        args.write_on_push,
        "",
    )?;
    let config = AgentConfig {
        compression: args.compression,
        ..AgentConfig::default()
    };
    let factory = cluster.factory_for(&config, 1)?;
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
        cpu_of: Some(worker.pid()),
        verified: Some(progress::counter()),
    };
    if args.warmup {
        // A long-running worker's buffer pool and the allocator are warm; a
        // fresh one pays a page fault per 4 KiB of its first budget's worth.
        let job = JobId::new(b"terrace-bench-warmup".to_vec())?;
        master.register_job(&job, Arc::new(LogLosses))?;
        with_progress("warming up (untimed)", &params, || {
            run_shuffle(&factory, &master, &job, &params, &pool)
        })?;
        master.unregister_job(&job)?;
    }
    let gib = payload as f64 / (MIB * 1024.0);
    let mut pairs = Vec::new();
    let mut first = None;
    for run in 0..args.cpu_runs {
        let job = JobId::new(format!("terrace-bench-1-{run}").into_bytes())?;
        master.register_job(&job, Arc::new(LogLosses))?;
        let cpu_before = cpu_seconds(worker.pid())?;
        let label = format!(
            "pushing then reading (CPU run {} of {})",
            run + 1,
            args.cpu_runs
        );
        let report = with_progress(&label, &params, || {
            run_shuffle(&factory, &master, &job, &params, &pool)
        })?;
        // The job's drop (its files deleted) is part of what a byte costs, as
        // the pipeline's file deletion is part of its figure; and it must not
        // be charged to the next run.
        master.unregister_job(&job)?;
        wait_until_idle(worker.pid())?;
        let worker_cpu = cpu_seconds(worker.pid())? - cpu_before;
        let worker_cpu_write = report
            .cpu_seconds_at_seal
            .context("the shuffle took the worker's CPU time at the seal")?
            - cpu_before;
        first.get_or_insert(report);
        let pipeline = progress::during("measuring the raw pipeline", || {
            pipeline_yardstick(&dir, payload, config.push_size.as_usize())
        })
        .context("run the raw pipeline yardstick")?;
        pairs.push(((worker_cpu / gib, worker_cpu_write / gib), pipeline));
    }
    let write_then_read = first.context("--cpu-runs must be at least 1")?;
    params.read_after_write = false;
    let job = JobId::new(b"terrace-bench-2".to_vec())?;
    master.register_job(&job, Arc::new(LogLosses))?;
    let concurrent = with_progress("pushing and reading concurrently", &params, || {
        run_shuffle(&factory, &master, &job, &params, &pool)
    })?;
    master.unregister_job(&job)?;
    master.close();
    let worker_peak_rss = peak_rss(worker.pid())?;
    worker.stop();
    cluster.stop()?;
    let object_store_phase = match &object_store {
        Some(url) => Some(
            object_store_phase(&args, &dir, url, buffer_size, &pool)
                .with_context(|| format!("object-store phase ({url})"))?,
        ),
        None => None,
    };

    let mib = payload as f64 / MIB;
    let push = mib / write_then_read.push_seconds;
    let push_and_seal = mib / write_then_read.write_seconds;
    let read = mib / write_then_read.read_seconds;
    let e2e = mib / concurrent.total_seconds;
    let cpu_runs: Vec<CpuPair> = pairs
        .iter()
        .map(|((worker, worker_write), pipeline)| {
            let pipeline_write = pipeline.cpu_seconds_write / gib;
            let pipeline = pipeline.cpu_seconds / gib;
            CpuPair {
                worker_cpu_seconds_per_gib: *worker,
                pipeline_cpu_seconds_per_gib: pipeline,
                ratio: worker / pipeline.max(0.01),
                worker_write_cpu_seconds_per_gib: *worker_write,
                pipeline_write_cpu_seconds_per_gib: pipeline_write,
            }
        })
        .collect();
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let worker_cpu_per_gib = median(&mut pairs.iter().map(|p| p.0.0).collect());
    let ratio = median(&mut cpu_runs.iter().map(|p| p.ratio).collect());
    let median_pair = cpu_runs
        .iter()
        .position(|p| p.ratio == ratio)
        .unwrap_or_default();
    let pipeline_cpu_per_gib = median(
        &mut cpu_runs
            .iter()
            .map(|p| p.pipeline_cpu_seconds_per_gib)
            .collect(),
    );
    let pipeline = pairs.swap_remove(median_pair).1;
    let pipeline_rate = pipeline.bytes as f64 / MIB / pipeline.seconds;
    let report = Report {
        worker_cpu_seconds_per_gib: worker_cpu_per_gib,
        pipeline_cpu_seconds_per_gib: pipeline_cpu_per_gib,
        worker_cpu_vs_pipeline: ratio,
        cpu_runs,
        worker_peak_rss_bytes: worker_peak_rss,
        memory_budget_bytes: args.memory_budget.as_u64(),
        pipeline,
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
        pipeline_vs_raw_tcp: pipeline_rate / raw_tcp,
        push_and_seal_vs_raw_disk_write: push_and_seal / raw_disk,
        object_store_read_mib_s: object_store_phase
            .as_ref()
            .map(ObjectStorePhase::object_mib_s),
        local_read_mib_s: object_store_phase
            .as_ref()
            .map(ObjectStorePhase::local_mib_s),
        object_vs_local_read: object_store_phase
            .as_ref()
            .map(|o| o.object_mib_s() / o.local_mib_s()),
        object_vs_raw_get: object_store_phase
            .as_ref()
            .map(|o| o.object_mib_s() / o.raw_get_mib_s),
        write_then_read,
        concurrent,
        object_store_phase,
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
        println!(
            "  worker CPU (own process)  {:>8.2} s/GiB  = {:.2} x the raw pipeline ({:.2} s/GiB: receive, write, fsync, read, send); medians of {} pairs",
            report.worker_cpu_seconds_per_gib,
            report.worker_cpu_vs_pipeline,
            report.pipeline_cpu_seconds_per_gib,
            report.cpu_runs.len()
        );
        let pairs: Vec<String> = report
            .cpu_runs
            .iter()
            .map(|p| {
                format!(
                    "{:.2}/{:.2}={:.2} (write {:.2}/{:.2}, read {:.2}/{:.2})",
                    p.worker_cpu_seconds_per_gib,
                    p.pipeline_cpu_seconds_per_gib,
                    p.ratio,
                    p.worker_write_cpu_seconds_per_gib,
                    p.pipeline_write_cpu_seconds_per_gib,
                    p.worker_cpu_seconds_per_gib - p.worker_write_cpu_seconds_per_gib,
                    p.pipeline_cpu_seconds_per_gib - p.pipeline_write_cpu_seconds_per_gib,
                )
            })
            .collect();
        println!("    pairs (worker/pipeline s/GiB) {}", pairs.join("  "));
        println!(
            "  worker peak RSS           {:>8.0} MiB  (memory budget {:.0} MiB)",
            report.worker_peak_rss_bytes as f64 / MIB,
            report.memory_budget_bytes as f64 / MIB
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
        println!(
            "  raw pipeline (no Terrace) {:>8.0} MiB/s  = {:.2} x raw TCP (in, then back out: the ceiling here)",
            pipeline_rate, report.pipeline_vs_raw_tcp
        );
        match &report.object_store_phase {
            Some(o) => {
                let local = o.local_mib_s();
                let object = o.object_mib_s();
                println!(
                    "  object store {}: {:.0} MiB written, read, migrated ({:.0} MiB/s, {} objects), read again",
                    o.url,
                    o.payload_bytes as f64 / MIB,
                    o.migrate_mib_s,
                    o.objects
                );
                println!("  read from local disk      {local:>8.0} MiB/s");
                println!(
                    "  read from object store    {object:>8.0} MiB/s  = {:.2} x read from local disk, {:.2} x raw GETs ({} GETs, {:.2} MiB each, {:.0} GETs per GiB)",
                    object / local,
                    object / o.raw_get_mib_s,
                    o.object_gets,
                    o.object_bytes_per_get / MIB,
                    o.object_gets_per_gib
                );
                println!(
                    "  raw GETs of the store     {:>8.0} MiB/s  (4 MiB ranges, 16 in flight, no Terrace code)",
                    o.raw_get_mib_s
                );
            }
            None => println!("  object store: skipped (--object-store none)"),
        }
    }
    Ok(())
}

/// Waits until process `pid` has used no CPU time for half a second (at
/// most 20 s): the worker has dropped the job it was told to drop.
pub(crate) fn wait_until_idle(pid: u32) -> anyhow::Result<()> {
    let deadline = clock::now() + Duration::from_secs(20);
    let mut last = cpu_seconds(pid)?;
    let mut quiet = 0;
    while quiet < 5 && clock::now() < deadline {
        // A blocking command-line tool sampling another process's CPU time between sleeps.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_seconds(pid)?;
        quiet = if now - last < 0.005 { quiet + 1 } else { 0 };
        last = now;
    }
    Ok(())
}

/// Fails on a URL the worker would refuse, before any phase runs. An s3 URL
/// is only checked for its scheme and bucket here: building an S3 client
/// needs the TLS provider the worker installs when it starts.
fn check_object_store_url(url: &str) -> anyhow::Result<()> {
    let (scheme, rest) = url
        .split_once("://")
        .context("expected s3://bucket/prefix, file:///path, memory:// or none")?;
    match scheme {
        "s3" | "s3a" => {
            anyhow::ensure!(
                !rest.split('/').next().unwrap_or_default().is_empty(),
                "an s3 URL names a bucket: s3://bucket/prefix"
            );
            Ok(())
        }
        "file" | "memory" => {
            terrace_worker::build_store(&terrace_worker::ObjectStoreConfig {
                url: url.to_string(),
                ..Default::default()
            })?;
            Ok(())
        }
        other => anyhow::bail!("unsupported scheme {other}: use s3://, file://, memory:// or none"),
    }
}

/// Buffers per subpartition and the payload of a shuffle of about `bytes`.
fn shape(args: &Args, bytes: ByteSize, buffer_size: usize) -> anyhow::Result<(u32, u64)> {
    let per_sub = bytes.as_u64()
        / (u64::from(args.producers) * u64::from(args.subpartitions) * buffer_size as u64);
    let buffers = u32::try_from(per_sub.max(1)).context("too many buffers per subpartition")?;
    let payload = u64::from(buffers)
        * u64::from(args.producers)
        * u64::from(args.subpartitions)
        * buffer_size as u64;
    Ok((buffers, payload))
}

impl ObjectStorePhase {
    fn local_mib_s(&self) -> f64 {
        self.payload_bytes as f64 / MIB / self.local_read_seconds
    }

    fn object_mib_s(&self) -> f64 {
        self.payload_bytes as f64 / MIB / self.object_read_seconds
    }
}

/// A worker with the object store at `url`: pushes a shuffle (readers after
/// the writers), reads it back from local disk, migrates every partition
/// explicitly, and reads it back from the object store. Both reads are of
/// the same bytes, timed the same way (consumer agents created, every byte
/// verified).
fn object_store_phase(
    args: &Args,
    dir: &Path,
    url: &str,
    buffer_size: usize,
    pool: &Pool,
) -> anyhow::Result<ObjectStorePhase> {
    use std::sync::atomic::Ordering;
    let (buffers, payload) = shape(args, args.bytes.min(args.object_store_bytes), buffer_size)?;
    let store_url = url.to_string();
    let cluster = Cluster::start_with(
        &dir.join("cluster-object-store"),
        1,
        args.memory_budget,
        move |c| {
            c.object_store = Some(terrace_worker::ObjectStoreConfig {
                url: store_url.clone(),
                // Nothing migrates on its own: the phase migrates explicitly.
                cold_after: Duration::from_secs(3600),
                local_high_watermark: 1.0,
                local_low_watermark: 1.0,
                ..Default::default()
            });
        },
    )?;
    let store = Arc::clone(&cluster.workers[0].store);
    let config = AgentConfig {
        compression: args.compression,
        ..AgentConfig::default()
    };
    let factory = cluster.factory(&config)?;
    let master = factory
        .create_master_agent()
        .context("create the master agent")?;
    let params = ShuffleParams {
        producers: args.producers,
        subpartitions: args.subpartitions,
        consumers: args.consumers,
        buffers_per_subpartition: buffers,
        buffer_size,
        read_after_write: true,
        read_timeout: Duration::from_secs(600),
        cpu_of: None,
        verified: Some(progress::counter()),
    };
    let job = JobId::new(b"terrace-bench-object-store".to_vec())?;
    master.register_job(&job, Arc::new(LogLosses))?;
    let (write_then_read, descriptors) =
        with_progress("object store phase: pushing then reading", &params, || {
            shuffle_and_keep(&factory, &master, &job, &params, pool)
        })?;
    let local = store.tier_bytes();
    anyhow::ensure!(
        local.memory == 0 && local.object == 0 && local.local > 0,
        "after the seal, expected every byte on local disk, got {local:?}"
    );

    // Just written, so mostly served by the page cache, as a worker's recent
    // data is; the object-store read below pays the store's request path.
    let timed_read = |from: &str| -> anyhow::Result<f64> {
        let start = clock::now();
        let verified = with_progress(&format!("reading from {from}"), &params, || {
            read_back(&factory, &params, pool, &descriptors)
        })?;
        let seconds = clock::elapsed(start).as_secs_f64();
        verify(verified == payload, || {
            format!("read back {verified} bytes of {payload} from {from}")
        })?;
        Ok(seconds)
    };
    let local_read_seconds = timed_read("local disk")?;

    let start = clock::now();
    let partitions = store.partitions();
    let migrated_bytes = progress::during("migrating every partition to the object store", || {
        let mut migrated_bytes = 0;
        for partition in &partitions {
            migrated_bytes += cluster
                .runtime
                .block_on(store.migrate(partition))
                .with_context(|| format!("migrate {}", partition.key()))?;
        }
        anyhow::Ok(migrated_bytes)
    })?;
    let migrate_seconds = clock::elapsed(start).as_secs_f64();
    let migrated_partitions = partitions.len() as u64;
    drop(partitions);
    let tiers = store.tier_bytes();
    anyhow::ensure!(
        tiers.local == 0 && tiers.object > 0,
        "after the migration, expected every byte in the object store, got {tiers:?}"
    );
    let object = store.tiers().object().context("the object tier")?;
    let objects = object.counters.objects.load(Ordering::Relaxed);
    let fetched_before = object.counters.bytes_read.load(Ordering::Relaxed);
    let gets_before = object.counters.gets.load(Ordering::Relaxed);

    let object_read_seconds = timed_read("the object store")?;
    let object_bytes_fetched = object.counters.bytes_read.load(Ordering::Relaxed) - fetched_before;
    let object_gets = object.counters.gets.load(Ordering::Relaxed) - gets_before;
    let raw_get_mib_s = progress::during("fetching every object with raw ranged GETs", || {
        cluster.runtime.block_on(raw_get_throughput(object))
    })
    .context("raw GETs")?;

    release_all(&master, &descriptors)?;
    master.unregister_job(&job)?;
    master.close();
    let objects_left = cluster.drop_job_and_count_objects(0, &job)?;
    if objects_left > 0 {
        tracing::warn!("{objects_left} objects of the benchmark are left in {url}");
    }
    let url = object.url().to_string();
    drop(store);
    cluster.stop()?;
    Ok(ObjectStorePhase {
        url,
        payload_bytes: payload,
        write_then_read,
        local_read_seconds,
        migrated_bytes,
        migrated_partitions,
        migrate_seconds,
        migrate_mib_s: migrated_bytes as f64 / MIB / migrate_seconds,
        objects,
        object_read_seconds,
        object_bytes_fetched,
        object_gets,
        object_bytes_per_get: object_bytes_fetched as f64 / object_gets.max(1) as f64,
        object_gets_per_gib: object_gets as f64
            / (object_bytes_fetched.max(1) as f64 / MIB / 1024.0),
        raw_get_mib_s,
        objects_left,
    })
}

/// Fetches every object under the tier's root in 4 MiB ranges, 16 GETs in
/// flight, and returns MiB/s: what the store serves this client at most.
async fn raw_get_throughput(object: &terrace_worker::ObjectTier) -> anyhow::Result<f64> {
    use futures::StreamExt;
    const RANGE: u64 = 4 << 20;
    let listed = object.list(object.root()).await?;
    let mut ranges = Vec::new();
    for (key, size) in &listed {
        let mut at = 0;
        while at < *size {
            ranges.push((key.clone(), at..(at + RANGE).min(*size)));
            at += RANGE;
        }
    }
    let start = clock::now();
    let mut fetched = 0u64;
    let mut gets = futures::stream::iter(ranges.into_iter().map(|(key, range)| async move {
        object
            .get_ranges(&key, std::slice::from_ref(&range))
            .await
            .map(|bodies| bodies.iter().map(|b| b.len() as u64).sum::<u64>())
    }))
    .buffer_unordered(16);
    while let Some(got) = gets.next().await {
        fetched += got?;
    }
    let seconds = clock::elapsed(start).as_secs_f64();
    anyhow::ensure!(fetched > 0, "no object to fetch");
    Ok(fetched as f64 / MIB / seconds)
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
    let start = clock::now();
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
    Ok(sent as f64 / MIB / clock::elapsed(start).as_secs_f64())
}

/// Sequential 4 MiB writes and an fsync: the ceiling for the worker's data files.
fn raw_disk_write_throughput(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let chunk = vec![0xa5u8; 4 << 20];
    let start = clock::now();
    let mut file =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut written = 0u64;
    while written < bytes {
        file.write_all(&chunk).context("write")?;
        written += chunk.len() as u64;
    }
    file.sync_all().context("fsync")?;
    let seconds = clock::elapsed(start).as_secs_f64();
    drop(file);
    std::fs::remove_file(path).context("remove the raw disk test file")?;
    Ok(written as f64 / MIB / seconds)
}
