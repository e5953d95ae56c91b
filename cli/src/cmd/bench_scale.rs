//! `terrace bench --scale`: what a shuffle costs in count rather than bytes.
//! Each step is one shuffle of P producers × S subpartitions with one small
//! buffer per (partition, subpartition), run the way an engine runs it: the
//! master agent places every partition, then producer tasks and then
//! consumer tasks (one per subpartition, reading it from every partition)
//! run a few at a time, as an engine's slots run them. Measured per step:
//! placements per second, time and CPU per buffer (the worker's and this
//! process's), the worker's resident memory per partition and per written
//! subpartition, the connections this process (the only agent process)
//! holds to the worker, and each task's time to its first byte.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use terrace_agents::{TerraceMasterAgent, TerraceTierFactory};
use terrace_rpc::{clock, connections_to};
use terrace_tier_api::{
    AgentConfig, ByteSize, ConsumerSpec, InputChannelId, JobId, PartitionId, ProducerSpec,
    ShuffleDescriptor, TierConsumerAgent, TierFactory, TierMasterAgent,
};

use crate::cmd::bench_process::{WorkerProcess, cpu_seconds, peak_rss};
use crate::cmd::cluster::Cluster;
use crate::progress;
use crate::sample::{
    LogLosses, Pool, ShuffleParams, Wakeup, print_json, read_range, release_all, verify,
    write_partition,
};

/// What a step may ask for at most: a million (partition, subpartition)
/// pairs per thousand producers is what the issue asks; ten times that in
/// each dimension is plenty for any machine this runs on.
const MAX_PRODUCERS: u32 = 10_000;
const MAX_SUBPARTITIONS: u32 = 10_000;
const MAX_PAIRS: u64 = 10_000_000;
const MAX_BUFFER: u64 = 1024 * 1024;
const MAX_SLOTS: u32 = 256;
/// How often the connections this process holds open are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// The worker's resident memory may exceed its budget by this much plus
/// [`BYTES_PER_PAIR`] per written (partition, subpartition) (the bound).
const RSS_ALLOWANCE: u64 = 64 * 1024 * 1024;
const BYTES_PER_PAIR: u64 = 64;

/// The scale mode's settings (parsed from `terrace bench`'s flags).
#[derive(Debug, Clone)]
pub struct ScaleArgs {
    pub steps: Vec<(u32, u32)>,
    pub buffer: ByteSize,
    pub slots: u32,
    pub memory_budget: ByteSize,
    pub write_on_push: bool,
    pub json: bool,
}

/// Parses `--scale-steps`: `PxS` pairs, comma-separated, each within bounds.
pub fn parse_steps(text: &str) -> anyhow::Result<Vec<(u32, u32)>> {
    let mut steps = Vec::new();
    for step in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (p, s) = step
            .split_once(['x', 'X'])
            .with_context(|| format!("step {step:?}: expected PRODUCERSxSUBPARTITIONS"))?;
        let p: u32 = p
            .trim()
            .parse()
            .with_context(|| format!("step {step:?}: producers"))?;
        let s: u32 = s
            .trim()
            .parse()
            .with_context(|| format!("step {step:?}: subpartitions"))?;
        ensure!(
            (1..=MAX_PRODUCERS).contains(&p) && (1..=MAX_SUBPARTITIONS).contains(&s),
            "step {step:?}: producers and subpartitions must each be 1 to {MAX_PRODUCERS}"
        );
        ensure!(
            u64::from(p) * u64::from(s) <= MAX_PAIRS,
            "step {step:?}: at most {MAX_PAIRS} (partition, subpartition) pairs"
        );
        steps.push((p, s));
    }
    ensure!(
        (1..=8).contains(&steps.len()),
        "1 to 8 steps, e.g. 10x10,100x100,1000x1000"
    );
    Ok(steps)
}

#[derive(Debug, serde::Serialize)]
struct Report {
    memory_budget_bytes: u64,
    buffer_bytes: u64,
    slots: u32,
    steps: Vec<Step>,
    /// The largest step's time per buffer over the smallest's (flat is 1).
    time_per_buffer_largest_vs_smallest: f64,
    /// This process's peak resident memory (every agent and the master).
    agent_process_peak_rss_bytes: u64,
}

#[derive(Debug, serde::Serialize)]
struct Step {
    producers: u32,
    subpartitions: u32,
    /// Data buffers written and read: one per (partition, subpartition).
    buffers: u64,
    payload_bytes: u64,
    /// Placing every partition, one call after another (as a job master does).
    place_seconds: f64,
    placements_per_second: f64,
    /// The master's rate with `slots` callers at once (as many partitions
    /// again, placed and released).
    concurrent_placements_per_second: f64,
    write_seconds: f64,
    read_seconds: f64,
    /// Write and read stage time over the buffers.
    micros_per_buffer: f64,
    worker_cpu_seconds: f64,
    worker_cpu_micros_per_buffer: f64,
    /// This process: the agents, and the master, which runs here too.
    agent_cpu_micros_per_buffer: f64,
    /// The worker's resident memory before the step, once every partition
    /// was sealed (all of them held), and its peak during the step.
    worker_rss_before_bytes: u64,
    worker_rss_sealed_bytes: u64,
    worker_rss_peak_bytes: u64,
    /// Whether the peak was taken over this step alone (the kernel's peak
    /// could be reset) or over the whole run.
    worker_rss_peak_is_this_steps: bool,
    /// Budget + 64 MiB + 64 bytes per written (partition, subpartition).
    worker_rss_limit_bytes: u64,
    worker_rss_within_limit: bool,
    /// Growth from before the step to sealed, per partition and per written
    /// (partition, subpartition): an upper bound of what each costs (it
    /// includes any growth of the worker's buffer pools).
    worker_bytes_per_partition: f64,
    worker_bytes_per_written_subpartition: f64,
    /// Connections this process held open to the worker at once, at most
    /// (counted every 5 ms), in each stage...
    connections_at_once_write: u64,
    connections_at_once_read: u64,
    /// ...and how many it opened in each (exact: the rpc layer counts them).
    connections_opened_write: u64,
    connections_opened_read: u64,
    /// Producer tasks: from the task's start to its agent ready to write
    /// (connected, partition created), median and slowest, in ms.
    producer_setup_ms_median: f64,
    producer_setup_ms_max: f64,
    /// Consumer tasks: from the task's start to its first data buffer.
    consumer_first_buffer_ms_median: f64,
    consumer_first_buffer_ms_max: f64,
}

/// Runs the scale mode.
pub fn run(args: ScaleArgs, dir: &Path) -> anyhow::Result<()> {
    ensure!(
        (1..=MAX_SLOTS).contains(&args.slots),
        "--scale-slots must be 1 to {MAX_SLOTS}"
    );
    ensure!(
        (1..=MAX_BUFFER).contains(&args.buffer.as_u64()),
        "--scale-buffer must be 1 byte to 1 MiB"
    );
    let cluster = Cluster::start(&dir.join("cluster"), 0, args.memory_budget)?;
    let worker = WorkerProcess::start(
        &dir.join("worker"),
        &cluster.master_address,
        args.memory_budget,
        args.write_on_push,
        "",
    )?;
    let factory = cluster.factory_for(&AgentConfig::default(), 1)?;
    let master = factory
        .create_master_agent()
        .context("create the master agent")?;
    let pool = Pool::new();
    let mut steps = Vec::new();
    for (i, &(producers, subpartitions)) in args.steps.iter().enumerate() {
        let label = format!("scale step {producers} x {subpartitions}");
        let step = progress::during(&label, || {
            run_step(
                &args,
                &factory,
                &master,
                &worker,
                &pool,
                i,
                producers,
                subpartitions,
            )
        })
        .with_context(|| format!("step {producers} x {subpartitions}"))?;
        steps.push(step);
    }
    master.close();
    worker.stop();
    cluster.stop()?;
    let per_buffer = |s: &Step| s.micros_per_buffer;
    let report = Report {
        memory_budget_bytes: args.memory_budget.as_u64(),
        buffer_bytes: args.buffer.as_u64(),
        slots: args.slots,
        time_per_buffer_largest_vs_smallest: largest(&steps).map_or(0.0, per_buffer)
            / smallest(&steps).map_or(1.0, per_buffer),
        steps,
        agent_process_peak_rss_bytes: peak_rss(std::process::id())?,
    };
    if args.json {
        return print_json(&report);
    }
    print_text(&report);
    Ok(())
}

fn largest(steps: &[Step]) -> Option<&Step> {
    steps.iter().max_by_key(|s| s.buffers)
}

fn smallest(steps: &[Step]) -> Option<&Step> {
    steps.iter().min_by_key(|s| s.buffers)
}

fn print_text(report: &Report) {
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "terrace bench --scale: one {} B buffer per (partition, subpartition), {} tasks at once, worker budget {:.0} MiB",
        report.buffer_bytes,
        report.slots,
        report.memory_budget_bytes as f64 / MIB
    );
    println!(
        "  {:>11} {:>14} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9}",
        "P x S",
        "places/s 1/N",
        "us/buf",
        "wCPU us",
        "aCPU us",
        "B/part",
        "B/subpart",
        "peak MiB",
        "limit",
        "conns",
        "setup ms",
        "1st buf"
    );
    for s in &report.steps {
        println!(
            "  {:>11} {:>14} {:>9.2} {:>9.2} {:>9.2} {:>9.0} {:>10.1} {:>10.0} {:>8} {:>9} {:>9.1} {:>9.1}",
            format!("{}x{}", s.producers, s.subpartitions),
            format!(
                "{:.0}/{:.0}",
                s.placements_per_second, s.concurrent_placements_per_second
            ),
            s.micros_per_buffer,
            s.worker_cpu_micros_per_buffer,
            s.agent_cpu_micros_per_buffer,
            s.worker_bytes_per_partition,
            s.worker_bytes_per_written_subpartition,
            s.worker_rss_peak_bytes as f64 / MIB,
            if s.worker_rss_within_limit {
                "within"
            } else {
                "OVER"
            },
            format!(
                "{}/{}",
                s.connections_at_once_write.max(s.connections_at_once_read),
                s.connections_opened_write + s.connections_opened_read
            ),
            s.producer_setup_ms_median,
            s.consumer_first_buffer_ms_median,
        );
    }
    println!(
        "  time per buffer, largest step over smallest: {:.2}; this process's peak RSS {:.0} MiB",
        report.time_per_buffer_largest_vs_smallest,
        report.agent_process_peak_rss_bytes as f64 / MIB
    );
    println!(
        "  (places/s: one caller / as many callers as slots; us/buf: write and read stage time per buffer; wCPU/aCPU: worker's and this process's CPU per buffer; B/part, B/subpart: worker RSS growth per partition and per written subpartition; conns: most open at once / opened)"
    );
}

#[allow(clippy::too_many_arguments)]
fn run_step(
    args: &ScaleArgs,
    factory: &TerraceTierFactory,
    master: &TerraceMasterAgent,
    worker: &WorkerProcess,
    pool: &Pool,
    index: usize,
    producers: u32,
    subpartitions: u32,
) -> anyhow::Result<Step> {
    let buffers = u64::from(producers) * u64::from(subpartitions);
    let params = ShuffleParams {
        producers,
        subpartitions,
        consumers: subpartitions,
        buffers_per_subpartition: 1,
        buffer_size: args.buffer.as_usize(),
        read_after_write: true,
        read_timeout: Duration::from_secs(600),
        cpu_of: None,
        verified: None,
    };
    let job = JobId::new(format!("terrace-bench-scale-{index}").into_bytes())?;
    master.register_job(&job, Arc::new(LogLosses))?;
    let pid = worker.pid();
    let rss_before = rss(pid)?;
    let peak_is_this_steps = reset_peak_rss(pid);
    let worker_cpu_before = cpu_seconds(pid)?;
    let agent_cpu_before = cpu_seconds(std::process::id())?;

    let start = clock::now();
    let mut descriptors = Vec::with_capacity(producers as usize);
    for p in 0..producers {
        let partition = PartitionId::new(format!("scale-{index}-{p}").into_bytes())?;
        descriptors.push(
            master
                .add_partition_and_get_shuffle_descriptor(&job, &partition, subpartitions)
                .context("place a partition")?,
        );
    }
    let place_seconds = clock::elapsed(start).as_secs_f64();
    // What the master sustains: as many callers as slots placing as many
    // partitions again (nothing is written to them; released at once).
    let probe_start = clock::now();
    let probes = run_tasks(args.slots, producers, |p| {
        let partition = PartitionId::new(format!("scale-{index}-probe-{p}").into_bytes())?;
        master
            .add_partition_and_get_shuffle_descriptor(&job, &partition, subpartitions)
            .context("place a partition")
    })?;
    let concurrent_place_seconds = clock::elapsed(probe_start).as_secs_f64();
    release_all(master, &probes)?;
    let address = descriptors
        .first()
        .context("a step places at least one partition")?
        .worker_address
        .clone();

    let mut sampler = Sampler::start(&address);
    let write_start = clock::now();
    let setups = run_tasks(args.slots, producers, |p| {
        produce(factory, &descriptors, p, &params, pool)
    })?;
    let write_seconds = clock::elapsed(write_start).as_secs_f64();
    let (connections_at_once_write, connections_opened_write) = sampler.take();
    let rss_sealed = rss(pid)?;

    let partitions: Vec<PartitionId> = descriptors
        .iter()
        .map(|d| d.key().map(|k| k.partition))
        .collect::<Result<_, _>>()?;
    let read_start = clock::now();
    let firsts = run_tasks(args.slots, subpartitions, |s| {
        consume(factory, &descriptors, &partitions, s, &params, pool)
    })?;
    let read_seconds = clock::elapsed(read_start).as_secs_f64();
    let (connections_at_once_read, connections_opened_read) = sampler.stop();
    let verified: u64 = firsts.iter().map(|(bytes, _)| bytes).sum();
    verify(verified == params.payload_bytes(), || {
        format!(
            "verified {verified} bytes of {} written",
            params.payload_bytes()
        )
    })?;

    let worker_cpu = cpu_seconds(pid)? - worker_cpu_before;
    let agent_cpu = cpu_seconds(std::process::id())? - agent_cpu_before;
    let rss_peak = peak_rss(pid)?;
    release_all(master, &descriptors)?;
    master.unregister_job(&job)?;
    crate::cmd::bench::wait_until_idle(pid)?;

    let limit = args.memory_budget.as_u64() + RSS_ALLOWANCE + BYTES_PER_PAIR * buffers;
    let growth = rss_sealed.saturating_sub(rss_before) as f64;
    let micros = |seconds: f64| seconds * 1e6 / buffers as f64;
    let mut setups: Vec<f64> = setups.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let mut first_buffers: Vec<f64> = firsts
        .iter()
        .filter_map(|(_, first)| *first)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    Ok(Step {
        producers,
        subpartitions,
        buffers,
        payload_bytes: params.payload_bytes(),
        place_seconds,
        placements_per_second: f64::from(producers) / place_seconds.max(1e-9),
        concurrent_placements_per_second: f64::from(producers) / concurrent_place_seconds.max(1e-9),
        write_seconds,
        read_seconds,
        micros_per_buffer: micros(write_seconds + read_seconds),
        worker_cpu_seconds: worker_cpu,
        worker_cpu_micros_per_buffer: micros(worker_cpu),
        agent_cpu_micros_per_buffer: micros(agent_cpu),
        worker_rss_before_bytes: rss_before,
        worker_rss_sealed_bytes: rss_sealed,
        worker_rss_peak_bytes: rss_peak,
        worker_rss_peak_is_this_steps: peak_is_this_steps,
        worker_rss_limit_bytes: limit,
        worker_rss_within_limit: rss_peak <= limit,
        worker_bytes_per_partition: growth / f64::from(producers),
        worker_bytes_per_written_subpartition: growth / buffers as f64,
        connections_at_once_write,
        connections_at_once_read,
        connections_opened_write,
        connections_opened_read,
        producer_setup_ms_median: median(&mut setups),
        producer_setup_ms_max: setups.last().copied().unwrap_or_default(),
        consumer_first_buffer_ms_median: median(&mut first_buffers),
        consumer_first_buffer_ms_max: first_buffers.last().copied().unwrap_or_default(),
    })
}

/// Sorts `values` and returns the middle one (0 for none).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Runs `task(0..count)` on `slots` threads, each taking the next index
/// when it is free; returns the results in index order, or the first error.
fn run_tasks<T: Send>(
    slots: u32,
    count: u32,
    task: impl Fn(u32) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    let next = AtomicU32::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<(u32, T)>> = Mutex::new(Vec::with_capacity(count as usize));
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    thread::scope(|scope| {
        for _ in 0..slots.min(count) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    match task(i) {
                        Ok(result) => results.lock().expect("results lock").push((i, result)),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().expect("error lock").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("error lock") {
        return Err(e);
    }
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// One producer task: its agent, one buffer per subpartition, sealed.
/// Returns how long the agent took to be ready to write.
fn produce(
    factory: &TerraceTierFactory,
    descriptors: &[ShuffleDescriptor],
    p: u32,
    params: &ShuffleParams,
    pool: &Pool,
) -> anyhow::Result<Duration> {
    let start = clock::now();
    let agent = factory
        .create_producer_agent(ProducerSpec {
            descriptor: descriptors[p as usize].clone(),
            num_subpartitions: params.subpartitions,
            broadcast_only: false,
            end_of_segment_payload: Bytes::from_static(b"terrace-scale-eos"),
        })
        .context("create a producer agent")?;
    let setup = clock::elapsed(start);
    let acked = Mutex::new(None::<Instant>);
    write_partition(agent, p, params, pool, &acked)?;
    Ok(setup)
}

/// One consumer task: subpartition `s` of every partition, verified.
/// Returns the bytes verified and how long the first data buffer took.
fn consume(
    factory: &TerraceTierFactory,
    descriptors: &[ShuffleDescriptor],
    partitions: &[PartitionId],
    s: u32,
    params: &ShuffleParams,
    pool: &Pool,
) -> anyhow::Result<(u64, Option<Duration>)> {
    let start = clock::now();
    let specs = partitions
        .iter()
        .enumerate()
        .map(|(p, partition)| ConsumerSpec {
            partition: partition.clone(),
            input_channel: InputChannelId(p as u32),
            subpartitions: s..=s,
        })
        .collect();
    let mut consumer = factory
        .create_consumer_agent(specs, descriptors.iter().cloned().map(Some).collect())
        .context("create a consumer agent")?;
    let wakeup = Arc::new(Wakeup::default());
    consumer.register_availability_notifier(Arc::clone(&wakeup) as _);
    consumer.start()?;
    let (verified, first) = read_range(&consumer, &wakeup, partitions, s..=s, params, pool)?;
    consumer.close()?;
    Ok((verified, first.map(|at| at.duration_since(start))))
}

/// The worker's resident memory now (`VmRSS`), in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("/proc/{pid}/status has no VmRSS line"))
}

/// Resets the kernel's record of `pid`'s peak resident memory (writing 5 to
/// its `clear_refs`); false when that is not allowed here.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Watches, every [`SAMPLE_EVERY`], how many connections this process holds
/// open to an address (the rpc layer counts them), on a thread of its own.
struct Sampler {
    address: String,
    stop: Arc<AtomicBool>,
    most: Arc<AtomicU64>,
    opened_before: u64,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(address: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, most, address) = (Arc::clone(&stop), Arc::clone(&most), address.to_string());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    most.fetch_max(connections_to(&address).0, Ordering::Relaxed);
                    // A sampling thread of a command-line benchmark.
                    #[allow(clippy::disallowed_methods)]
                    thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Sampler {
            address: address.to_string(),
            stop,
            most,
            opened_before: connections_to(address).1,
            thread: Some(thread),
        }
    }

    /// The most connections open at once since the last take, and how many
    /// were opened.
    fn take(&mut self) -> (u64, u64) {
        let opened = connections_to(&self.address).1;
        let most = self.most.swap(0, Ordering::Relaxed);
        let new = opened - self.opened_before;
        self.opened_before = opened;
        (most, new)
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.take()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_are_bounded() {
        assert_eq!(
            parse_steps("10x10, 100X100,1000x1000").unwrap(),
            vec![(10, 10), (100, 100), (1000, 1000)]
        );
        for bad in [
            "",
            "10",
            "0x10",
            "10x0",
            "10x",
            "x10",
            "10001x1",
            "5000x5000",
            "ax1",
        ] {
            assert!(parse_steps(bad).is_err(), "{bad:?} was taken");
        }
        let nine = ["1x1"; 9].join(",");
        assert!(parse_steps(&nine).is_err());
    }
}
