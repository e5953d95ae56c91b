//! A sample shuffle: P producers × S subpartitions × several segments, read by
//! C consumers that each own a subpartition range of every partition. Every
//! data buffer is a slice of a deterministic pool, so the readers verify
//! every byte with a memcmp. Used by `terrace demo` and `terrace bench`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use terrace_agents::{
    TerraceConsumerAgent as ConsumerAgent, TerraceProducerAgent as ProducerAgent,
    TerraceTierFactory,
};
use terrace_rpc::clock;
use terrace_tier_api::{
    AvailabilityNotifier, Buffer, ConsumerSpec, DataType, InputChannelId, JobId, PartitionId,
    ProducerSpec, SegmentId, ShuffleDescriptor, SubpartitionId, TierConsumerAgent, TierError,
    TierFactory, TierMasterAgent, TierProducerAgent, TierShuffleHandler, WriteOutcome,
};

const POOL_BYTES: usize = 64 * 1024 * 1024;
const END_EVENT: &[u8] = b"terrace-sample-end";
const EOS_PAYLOAD: &[u8] = b"terrace-sample-eos";

#[derive(Debug, Clone)]
pub struct ShuffleParams {
    pub producers: u32,
    pub subpartitions: u32,
    pub consumers: u32,
    pub buffers_per_subpartition: u32,
    pub buffer_size: usize,
    /// Start the readers only after every producer closed (measures reads alone).
    pub read_after_write: bool,
    pub read_timeout: Duration,
    /// A process whose CPU seconds are taken the moment every partition is
    /// sealed ([`ShuffleReport::cpu_seconds_at_seal`]): splits a benchmarked
    /// worker's CPU between writing and reading.
    pub cpu_of: Option<u32>,
    /// Bytes verified so far, added to by the readers (a progress bar shows it).
    pub verified: Option<crate::progress::Counter>,
}

impl ShuffleParams {
    /// Payload bytes of the shuffle.
    pub fn payload_bytes(&self) -> u64 {
        u64::from(self.producers)
            * u64::from(self.subpartitions)
            * u64::from(self.buffers_per_subpartition)
            * self.buffer_size as u64
    }
}

/// Runs `work` (a shuffle or a read of one, with `params`) while a progress
/// bar labelled `label` shows the bytes its readers have verified.
pub fn with_progress<T>(label: &str, params: &ShuffleParams, work: impl FnOnce() -> T) -> T {
    match &params.verified {
        Some(counter) => {
            crate::progress::during_bytes(label, counter, params.payload_bytes(), work)
        }
        None => crate::progress::during(label, work),
    }
}

/// Data read back was not the data written (bytes differ, are missing, or
/// are left behind where they should be gone): what `terrace demo` and
/// `terrace bench` exist to catch, so `terrace` exits with its own code.
#[derive(Debug)]
pub struct Unverified(pub String);

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "data did not verify: {}", self.0)
    }
}

impl std::error::Error for Unverified {}

/// Fails with [`Unverified`] saying `what` unless `holds`.
pub fn verify(holds: bool, what: impl FnOnce() -> String) -> anyhow::Result<()> {
    if holds {
        Ok(())
    } else {
        Err(Unverified(what()).into())
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShuffleReport {
    pub payload_bytes: u64,
    pub buffers: u64,
    pub segments: u64,
    /// Until every push of every producer was acknowledged.
    pub push_seconds: f64,
    /// Until every partition was sealed (flushed, fsynced, index persisted).
    pub write_seconds: f64,
    pub read_seconds: f64,
    pub total_seconds: f64,
    pub verified_bytes: u64,
    /// The CPU seconds of [`ShuffleParams::cpu_of`] when every partition was sealed.
    pub cpu_seconds_at_seal: Option<f64>,
}

/// The deterministic data every buffer is cut from.
#[derive(Debug, Clone)]
pub struct Pool(Bytes);

impl Pool {
    pub fn new() -> Pool {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut out = Vec::with_capacity(POOL_BYTES);
        while out.len() < POOL_BYTES {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        Pool(Bytes::from(out))
    }

    /// Buffer `index` of (`partition`, `sub`).
    fn slice(&self, partition: u32, sub: u32, index: u32, len: usize) -> Bytes {
        let mix = u64::from(partition)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(sub).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
            .wrapping_add(u64::from(index).wrapping_mul(0x1656_67b1_9e37_79f9));
        let span = (self.0.len() - len) as u64;
        let offset = ((mix >> 7) % span.max(1)) as usize & !7;
        self.0.slice(offset..offset + len)
    }
}

/// Runs one sample shuffle for `job`: `master` (from `factory`) places the
/// partitions, and producer and consumer agents from `factory` move the data.
pub fn run_shuffle(
    factory: &TerraceTierFactory,
    master: &dyn TierMasterAgent,
    job: &JobId,
    params: &ShuffleParams,
    pool: &Pool,
) -> anyhow::Result<ShuffleReport> {
    let (report, descriptors) = shuffle_and_keep(factory, master, job, params, pool)?;
    release_all(master, &descriptors)?;
    Ok(report)
}

/// Releases the partitions of a shuffle.
pub fn release_all(
    master: &dyn TierMasterAgent,
    descriptors: &[ShuffleDescriptor],
) -> anyhow::Result<()> {
    for descriptor in descriptors {
        master
            .release_partition(descriptor)
            .context("release a partition")?;
    }
    Ok(())
}

/// Reads every partition of a finished shuffle again and verifies every
/// byte; returns the bytes verified.
pub fn read_back(
    factory: &TerraceTierFactory,
    params: &ShuffleParams,
    pool: &Pool,
    descriptors: &[ShuffleDescriptor],
) -> anyhow::Result<u64> {
    let mut verified = 0;
    for reader in start_readers(factory, params, pool, descriptors)? {
        verified += reader
            .join()
            .map_err(|_| anyhow::anyhow!("a consumer thread panicked"))??;
    }
    Ok(verified)
}

/// [`run_shuffle`] without the release: returns the partitions' descriptors.
pub fn shuffle_and_keep(
    factory: &TerraceTierFactory,
    master: &dyn TierMasterAgent,
    job: &JobId,
    params: &ShuffleParams,
    pool: &Pool,
) -> anyhow::Result<(ShuffleReport, Vec<ShuffleDescriptor>)> {
    let start = clock::now();
    let mut descriptors = Vec::new();
    for p in 0..params.producers {
        let partition = PartitionId::new(format!("sample-partition-{p}").into_bytes())?;
        descriptors.push(
            master
                .add_partition_and_get_shuffle_descriptor(job, &partition, params.subpartitions)
                .context("place a partition")?,
        );
    }
    let readers = if params.read_after_write {
        Vec::new()
    } else {
        start_readers(factory, params, pool, &descriptors)?
    };
    let mut writers = Vec::new();
    // The moment the last producer had every push acknowledged.
    let acked: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    for (p, descriptor) in descriptors.iter().enumerate() {
        let agent = factory
            .create_producer_agent(ProducerSpec {
                descriptor: descriptor.clone(),
                num_subpartitions: params.subpartitions,
                broadcast_only: false,
                end_of_segment_payload: Bytes::from_static(EOS_PAYLOAD),
            })
            .context("create a producer agent")?;
        let params = params.clone();
        let pool = pool.clone();
        let acked = Arc::clone(&acked);
        writers.push(thread::spawn(move || {
            write_partition(agent, p as u32, &params, &pool, &acked)
        }));
    }
    let mut report = ShuffleReport::default();
    for writer in writers {
        let (segments, buffers) = writer
            .join()
            .map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
        report.segments += segments;
        report.buffers += buffers;
    }
    report.payload_bytes = params.payload_bytes();
    report.write_seconds = clock::elapsed(start).as_secs_f64();
    if let Some(pid) = params.cpu_of {
        report.cpu_seconds_at_seal = Some(crate::cmd::bench_process::cpu_seconds(pid)?);
    }
    report.push_seconds = acked
        .lock()
        .expect("acked lock")
        .map_or(report.write_seconds, |at| {
            at.duration_since(start).as_secs_f64()
        });
    let read_start = clock::now();
    let readers = if params.read_after_write {
        start_readers(factory, params, pool, &descriptors)?
    } else {
        readers
    };
    for reader in readers {
        report.verified_bytes += reader
            .join()
            .map_err(|_| anyhow::anyhow!("a consumer thread panicked"))??;
    }
    report.read_seconds = clock::elapsed(read_start).as_secs_f64();
    report.total_seconds = clock::elapsed(start).as_secs_f64();
    verify(report.verified_bytes == report.payload_bytes, || {
        format!(
            "verified {} bytes of {} written",
            report.verified_bytes, report.payload_bytes
        )
    })?;
    Ok((report, descriptors))
}

/// Writes one partition the way Flink's producer client does; returns
/// (segments, buffers written including END_OF_SEGMENT markers).
pub(crate) fn write_partition(
    mut agent: ProducerAgent,
    p: u32,
    params: &ShuffleParams,
    pool: &Pool,
    acked: &Mutex<Option<Instant>>,
) -> anyhow::Result<(u64, u64)> {
    let mut segment = vec![0u32; params.subpartitions as usize];
    for sub in 0..params.subpartitions {
        ensure!(
            agent.try_start_new_segment(SubpartitionId(sub), SegmentId(0), 1)?,
            "segment 0 refused"
        );
    }
    let mut buffers = 0u64;
    let mut write = |agent: &mut ProducerAgent, sub: u32, buffer: Buffer| -> anyhow::Result<()> {
        let mut buffer = buffer;
        loop {
            match agent.try_write(SubpartitionId(sub), buffer, 0)? {
                WriteOutcome::Written => {
                    buffers += 1;
                    return Ok(());
                }
                WriteOutcome::SegmentFull(back) => {
                    buffers += 1;
                    let s = &mut segment[sub as usize];
                    *s += 1;
                    ensure!(
                        agent.try_start_new_segment(SubpartitionId(sub), SegmentId(*s), 1)?,
                        "segment refused"
                    );
                    buffer = back;
                }
            }
        }
    };
    for i in 0..params.buffers_per_subpartition {
        for sub in 0..params.subpartitions {
            write(
                &mut agent,
                sub,
                Buffer::data(pool.slice(p, sub, i, params.buffer_size)),
            )?;
        }
    }
    for sub in 0..params.subpartitions {
        write(
            &mut agent,
            sub,
            Buffer::event(Bytes::from_static(END_EVENT)),
        )?;
    }
    agent
        .flush_and_wait()
        .context("wait for every push to be acknowledged")?;
    {
        let mut acked = acked.lock().expect("acked lock");
        let now = clock::now();
        *acked = Some(acked.map_or(now, |at| at.max(now)));
    }
    agent.close().context("close (seal) a partition")?;
    let segments: u64 = segment.iter().map(|s| u64::from(*s) + 1).sum();
    Ok((segments, buffers))
}

/// Prints a report as pretty JSON on stdout (`--json`).
pub fn print_json(report: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(report).context("encode report")?
    );
    Ok(())
}

/// The engine side of lost-partition reports in the demo and the benchmark:
/// nothing should be lost there, so a report is logged as an error.
#[derive(Debug)]
pub struct LogLosses;

impl TierShuffleHandler for LogLosses {
    fn on_release_partitions(&self, partitions: Vec<PartitionId>) {
        tracing::error!(?partitions, "partitions lost during the sample shuffle");
    }
    fn on_fatal_error(&self, error: TierError) {
        tracing::error!(%error, "fatal tier error during the sample shuffle");
    }
}

#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    count: Mutex<u64>,
    condvar: Condvar,
}

impl AvailabilityNotifier for Wakeup {
    fn notify_available(&self, _partition: &PartitionId, _channel: InputChannelId) {
        *self.count.lock().expect("wakeup lock") += 1;
        self.condvar.notify_all();
    }
}

type Reader = thread::JoinHandle<anyhow::Result<u64>>;

fn start_readers(
    factory: &TerraceTierFactory,
    params: &ShuffleParams,
    pool: &Pool,
    descriptors: &[ShuffleDescriptor],
) -> anyhow::Result<Vec<Reader>> {
    let per = params.subpartitions.div_ceil(params.consumers);
    let mut readers = Vec::new();
    for c in 0..params.consumers {
        let first = c * per;
        if first >= params.subpartitions {
            break;
        }
        let last = (first + per - 1).min(params.subpartitions - 1);
        let mut specs = Vec::new();
        let mut partitions = Vec::new();
        for (p, descriptor) in descriptors.iter().enumerate() {
            let partition = descriptor.key()?.partition;
            partitions.push(partition.clone());
            specs.push(ConsumerSpec {
                partition,
                input_channel: InputChannelId(p as u32),
                subpartitions: first..=last,
            });
        }
        let mut consumer = factory
            .create_consumer_agent(specs, descriptors.iter().cloned().map(Some).collect())?;
        let wakeup = Arc::new(Wakeup::default());
        consumer.register_availability_notifier(Arc::clone(&wakeup) as _);
        consumer.start()?;
        let params = params.clone();
        let pool = pool.clone();
        readers.push(thread::spawn(move || {
            read_range(
                &consumer,
                &wakeup,
                &partitions,
                first..=last,
                &params,
                &pool,
            )
            .map(|(verified, _)| verified)
        }));
    }
    Ok(readers)
}

/// Reads every (partition, subpartition) of the range to its end event and
/// verifies each data buffer; returns the verified payload bytes and when
/// the first data buffer arrived.
pub(crate) fn read_range(
    consumer: &ConsumerAgent,
    wakeup: &Wakeup,
    partitions: &[PartitionId],
    range: std::ops::RangeInclusive<u32>,
    params: &ShuffleParams,
    pool: &Pool,
) -> anyhow::Result<(u64, Option<Instant>)> {
    struct Cursor {
        p: u32,
        partition: PartitionId,
        sub: u32,
        segment: u32,
        data: u32,
        done: bool,
    }
    let mut cursors: Vec<Cursor> = partitions
        .iter()
        .enumerate()
        .flat_map(|(p, partition)| {
            range.clone().map(move |sub| Cursor {
                p: p as u32,
                partition: partition.clone(),
                sub,
                segment: 0,
                data: 0,
                done: false,
            })
        })
        .collect();
    let deadline = clock::now() + params.read_timeout;
    let mut verified = 0u64;
    let mut first = None;
    let mut left = cursors.len();
    while left > 0 {
        if clock::now() > deadline {
            bail!("reader timed out with {left} subpartitions unfinished");
        }
        let seen = *wakeup.count.lock().expect("wakeup lock");
        let mut progress = false;
        for cursor in cursors.iter_mut().filter(|c| !c.done) {
            // Drain what is there for this subpartition before moving on.
            while let Some(buffer) = consumer.get_next_buffer(
                &cursor.partition,
                SubpartitionId(cursor.sub),
                SegmentId(cursor.segment),
            )? {
                progress = true;
                match buffer.data_type {
                    DataType::EndOfSegment => cursor.segment += 1,
                    DataType::Data => {
                        first.get_or_insert_with(clock::now);
                        let want =
                            pool.slice(cursor.p, cursor.sub, cursor.data, params.buffer_size);
                        verify(buffer.payload == want, || {
                            format!(
                                "partition {} subpartition {} buffer {} differs",
                                cursor.p, cursor.sub, cursor.data
                            )
                        })?;
                        cursor.data += 1;
                        verified += buffer.payload.len() as u64;
                        if let Some(counter) = &params.verified {
                            counter.fetch_add(buffer.payload.len() as u64, Ordering::Relaxed);
                        }
                    }
                    _ if buffer.payload.as_ref() == END_EVENT => {
                        verify(cursor.data == params.buffers_per_subpartition, || {
                            format!(
                                "partition {} subpartition {} ended after {} of {} buffers",
                                cursor.p, cursor.sub, cursor.data, params.buffers_per_subpartition
                            )
                        })?;
                        cursor.done = true;
                        left -= 1;
                        break;
                    }
                    other => {
                        return Err(Unverified(format!(
                            "partition {} subpartition {}: unexpected buffer type {other:?}",
                            cursor.p, cursor.sub
                        ))
                        .into());
                    }
                }
            }
        }
        if !progress {
            let guard = wakeup.count.lock().expect("wakeup lock");
            let _ = wakeup
                .condvar
                .wait_timeout_while(guard, Duration::from_millis(20), |c| *c == seen)
                .expect("wakeup wait");
        }
    }
    Ok((verified, first))
}
