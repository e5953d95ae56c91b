//! Helpers shared by the store's integration tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use terrace_tier_api::ByteSize;
use terrace_tier_api::{
    BatchBuilder, Buffer, JobId, PartitionId, PartitionKey, SegmentId, SubpartitionId, TierResult,
};
use terrace_worker::{ObjectStoreConfig, ReadStep, Store, WorkerConfig, WorkerLimits};

/// Two data directories under `dir` of `dir_capacity` each, and an
/// in-memory object store (unless the test's hooks pass another), with
/// small objects and an eager migrator; no limits on partitions or metadata.
pub fn options(dir: &std::path::Path, dir_capacity: u64) -> WorkerConfig {
    WorkerConfig {
        data_dirs: vec![dir.join("a"), dir.join("b")],
        dir_capacity: Some(ByteSize(dir_capacity)),
        dir_reserve: ByteSize(0),
        memory_budget: ByteSize::mib(64),
        flush_high_watermark: 0.75,
        flush_low_watermark: 0.5,
        write_on_push: false,
        object_store: Some(ObjectStoreConfig {
            url: "memory://".into(),
            options: Default::default(),
            request_timeout: Duration::from_secs(5),
            retries: 1,
            backoff: Duration::from_millis(10),
            part_size: ByteSize::kib(64),
            read_budget: ByteSize::mib(16),
            read_ahead: ByteSize::mib(4),
            cold_after: Duration::ZERO,
            local_high_watermark: 0.5,
            local_low_watermark: 0.25,
            migration_interval: Duration::from_millis(10),
        }),
        allow_missing_data_dirs: false,
        limits: unlimited(),
        ..WorkerConfig::default()
    }
}

/// Limits no store test reaches (tests of a limit set the one they test).
pub fn unlimited() -> WorkerLimits {
    WorkerLimits {
        max_partitions: u32::MAX,
        max_open_data_files: None,
        max_partitions_per_job: u32::MAX,
        metadata_memory: ByteSize(u64::MAX),
        ..WorkerLimits::default()
    }
}

pub fn key(job: u8, partition: u32) -> PartitionKey {
    PartitionKey {
        job: JobId::new(vec![job; 8]).expect("job id"),
        partition: PartitionId::new(partition.to_be_bytes().to_vec()).expect("partition id"),
    }
}

/// Two subpartitions, each `segments` closed segments of `buffers` buffers.
/// Returns the batches to push (one per segment round) and what each
/// subpartition must read back (payloads, END_OF_SEGMENT included).
pub fn data(seed: u32, segments: u32, buffers: u32) -> (Vec<Bytes>, HashMap<u32, Vec<Bytes>>) {
    let mut batches = Vec::new();
    let mut expected: HashMap<u32, Vec<Bytes>> = HashMap::new();
    for g in 0..segments {
        let mut batch = BatchBuilder::default();
        for sub in 0..2u32 {
            for i in 0..buffers {
                let len = 100 + ((seed * 7919 + g * 31 + i * 17 + sub) % 3000) as usize;
                let payload = Bytes::from(vec![(seed + g + i + sub) as u8; len]);
                batch.push(
                    SubpartitionId(sub),
                    SegmentId(g),
                    &Buffer::data(payload.clone()),
                );
                expected.entry(sub).or_default().push(payload);
            }
            let eos = Bytes::from_static(b"eos");
            batch.push(
                SubpartitionId(sub),
                SegmentId(g),
                &Buffer::end_of_segment(eos.clone()),
            );
            expected.entry(sub).or_default().push(eos);
        }
        batches.push(batch.finish().bytes);
    }
    (batches, expected)
}

/// Reads every segment of `sub` through the tiers; returns the payloads.
pub async fn read_sub(store: &Store, key: &PartitionKey, sub: u32) -> TierResult<Vec<Bytes>> {
    let partition = store.get(key)?;
    let mut out = Vec::new();
    let mut segment = 0;
    loop {
        let mut position = 0;
        loop {
            match partition.next_read(sub, segment, position, 64 << 10) {
                ReadStep::Batch { extents, sources } => {
                    position += extents.len();
                    // Every chunk holds whole extents, so whole buffers.
                    for chunk in store.tiers().read(sources).await? {
                        let mut reader = terrace_tier_api::BatchReader::new(chunk);
                        while let Some((_, buffer)) = reader.next_buffer()? {
                            out.push(buffer);
                        }
                    }
                }
                ReadStep::SegmentDone => break,
                ReadStep::End => return Ok(out),
                ReadStep::Wait => panic!("a sealed partition never waits"),
                ReadStep::Redirect(next) => panic!("an unsplit partition redirected to {next:?}"),
                ReadStep::Failed(e) => return Err(e),
            }
        }
        segment += 1;
    }
}
