//! An engine other than Flink or Spark using Terrace as a segment store,
//! through the one crate it links (`terrace-agents`):
//!
//! 1. the coordinator registers a job and places partitions (master agent);
//! 2. producers write each partition's subpartitions as segments of buffers
//!    and seal it (producer agent);
//! 3. another process reads every subpartition back (consumer agent) and
//!    checks each buffer;
//! 4. the coordinator releases the partitions and the job.
//!
//! Run it against a running cluster:
//!
//! ```text
//! terrace master --listen 127.0.0.1:9870 &
//! terrace worker --listen 127.0.0.1:0 --data-dir /tmp/terrace-w1 --master 127.0.0.1:9870 &
//! cargo run -p terrace-agents --example segment_store -- 127.0.0.1:9870
//! ```
//!
//! The reading process is this program started again as
//! `segment_store read FILE`, where FILE holds the shuffle descriptors (JSON,
//! one per line): descriptors are all a reader needs, wherever it runs.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use terrace_agents::api::{
    AgentConfig, AvailabilityNotifier, Buffer, ConsumerSpec, DataType, InputChannelId, JobId,
    PartitionId, ProducerSpec, SegmentId, ShuffleDescriptor, SubpartitionId, TierConsumerAgent,
    TierError, TierFactory, TierMasterAgent, TierProducerAgent, TierShuffleHandler, WriteOutcome,
};
use terrace_agents::{TerraceConsumerAgent, TerraceTierFactory};

const PARTITIONS: u32 = 3;
const SUBPARTITIONS: u32 = 4;
const BUFFERS_PER_SUBPARTITION: u32 = 50;
const BUFFER_BYTES: usize = 16 * 1024;

/// The bytes of buffer `i` of (`partition`, `sub`): what the reader checks.
fn payload(partition: u32, sub: u32, i: u32) -> Vec<u8> {
    let seed = partition * 1_000_003 + sub * 10_007 + i;
    (0..BUFFER_BYTES)
        .map(|j| (seed as usize * 31 + j) as u8)
        .collect()
}

/// Lost partitions are the engine's to recompute; this example only says so.
struct Handler;

impl TierShuffleHandler for Handler {
    fn on_release_partitions(&self, partitions: Vec<PartitionId>) {
        eprintln!(
            "segment_store: Terrace lost {} partition(s)",
            partitions.len()
        );
    }

    fn on_fatal_error(&self, error: TierError) {
        eprintln!("segment_store: fatal: {error}");
    }
}

fn config(master: &str) -> AgentConfig {
    AgentConfig {
        master_addresses: vec![master.to_string()],
        ..AgentConfig::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("read") => {
            let master = args.get(2).ok_or("read MASTER FILE")?;
            let file = args.get(3).ok_or("read MASTER FILE")?;
            read(master, &std::fs::read_to_string(file)?)
        }
        Some(master) => coordinate(master),
        None => coordinate("127.0.0.1:9870"),
    }
}

/// The coordinator and the producers (one process here; in an engine the
/// producers run wherever its tasks run, with the descriptors).
fn coordinate(master: &str) -> Result<(), Box<dyn std::error::Error>> {
    let factory = TerraceTierFactory::new(config(master))?;
    let coordinator = factory.create_master_agent()?;
    let job = JobId::new(b"segment-store-example".to_vec())?;
    coordinator.register_job(&job, Arc::new(Handler))?;

    let mut descriptors = Vec::new();
    for p in 0..PARTITIONS {
        let partition = PartitionId::new(format!("partition-{p}").into_bytes())?;
        let descriptor = coordinator.add_partition_and_get_shuffle_descriptor(
            &job,
            &partition,
            SUBPARTITIONS,
        )?;
        write_partition(&factory, &descriptor, p)?;
        descriptors.push(descriptor);
    }
    println!(
        "segment_store: wrote {PARTITIONS} partitions x {SUBPARTITIONS} subpartitions x {BUFFERS_PER_SUBPARTITION} buffers of {BUFFER_BYTES} bytes"
    );

    // Another process reads them back, knowing only the descriptors.
    let file = std::env::temp_dir().join(format!("segment-store-{}.json", std::process::id()));
    let lines: Vec<String> = descriptors.iter().map(ShuffleDescriptor::to_json).collect();
    std::fs::write(&file, lines.join("\n"))?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("read")
        .arg(master)
        .arg(&file)
        .status()?;
    std::fs::remove_file(&file)?;
    if !status.success() {
        return Err(format!("the reading process failed: {status}").into());
    }

    for descriptor in &descriptors {
        coordinator.release_partition(descriptor)?;
    }
    coordinator.unregister_job(&job)?;
    coordinator.close();
    println!("segment_store: released the partitions and the job");
    Ok(())
}

/// Writes every subpartition of one partition as segments, then seals it.
fn write_partition(
    factory: &TerraceTierFactory,
    descriptor: &ShuffleDescriptor,
    p: u32,
) -> Result<(), TierError> {
    let mut producer = factory.create_producer_agent(ProducerSpec {
        descriptor: descriptor.clone(),
        num_subpartitions: SUBPARTITIONS,
        broadcast_only: false,
        end_of_segment_payload: Vec::new().into(),
    })?;
    for sub in 0..SUBPARTITIONS {
        let id = SubpartitionId(sub);
        let mut segment = 0;
        producer.try_start_new_segment(id, SegmentId(segment), 1)?;
        for i in 0..BUFFERS_PER_SUBPARTITION {
            let mut buffer = Buffer::data(payload(p, sub, i));
            // A full segment is closed by the agent; the buffer goes to the next one.
            while let WriteOutcome::SegmentFull(back) = producer.try_write(id, buffer, 0)? {
                segment += 1;
                producer.try_start_new_segment(id, SegmentId(segment), 1)?;
                buffer = back;
            }
        }
    }
    producer.close()
}

/// Wakes the reader when a stream gets data.
#[derive(Default)]
struct Wakeup {
    seen: Mutex<u64>,
    changed: Condvar,
}

impl AvailabilityNotifier for Wakeup {
    fn notify_available(&self, _partition: &PartitionId, _channel: InputChannelId) {
        *self.seen.lock().expect("wakeup lock") += 1;
        self.changed.notify_all();
    }
}

/// Reads every subpartition of every described partition and checks it.
fn read(master: &str, descriptors: &str) -> Result<(), Box<dyn std::error::Error>> {
    let descriptors: Vec<ShuffleDescriptor> = descriptors
        .lines()
        .map(ShuffleDescriptor::from_json)
        .collect::<Result<_, _>>()?;
    let specs: Vec<ConsumerSpec> = descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Ok(ConsumerSpec {
                partition: d.key()?.partition,
                input_channel: InputChannelId(i as u32),
                subpartitions: 0..=SUBPARTITIONS - 1,
            })
        })
        .collect::<Result<_, TierError>>()?;
    let factory = TerraceTierFactory::new(config(master))?;
    let mut consumer: TerraceConsumerAgent = factory.create_consumer_agent(
        specs.clone(),
        descriptors.iter().cloned().map(Some).collect(),
    )?;
    let wakeup = Arc::new(Wakeup::default());
    consumer.register_availability_notifier(wakeup.clone());
    consumer.start()?;

    let mut bytes = 0usize;
    for (p, spec) in specs.iter().enumerate() {
        for sub in 0..SUBPARTITIONS {
            let (mut segment, mut next) = (0, 0);
            loop {
                let seen = *wakeup.seen.lock().expect("wakeup lock");
                match consumer.get_next_buffer(
                    &spec.partition,
                    SubpartitionId(sub),
                    SegmentId(segment),
                )? {
                    Some(b) if b.data_type == DataType::EndOfSegment => segment += 1,
                    Some(b) => {
                        if b.payload.as_ref() != payload(p as u32, sub, next).as_slice() {
                            return Err(format!(
                                "partition {p} subpartition {sub} buffer {next} differs"
                            )
                            .into());
                        }
                        bytes += b.payload.len();
                        next += 1;
                    }
                    None if consumer.is_finished(&spec.partition, SubpartitionId(sub)) => break,
                    None => {
                        let guard = wakeup.seen.lock().expect("wakeup lock");
                        if *guard == seen {
                            let _ = wakeup
                                .changed
                                .wait_timeout(guard, Duration::from_millis(100))
                                .expect("wakeup lock");
                        }
                    }
                }
            }
            if next != BUFFERS_PER_SUBPARTITION {
                return Err(format!("partition {p} subpartition {sub}: {next} buffers").into());
            }
        }
    }
    consumer.close()?;
    println!("segment_store: another process read back {bytes} bytes, every buffer as written");
    Ok(())
}
