//! The producer agent: segment rules and batching.

use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions, io_runtime};
use terrace_tier_api::{
    AgentConfig, Buffer, DataType, PartitionKey, ProducerSpec, SegmentId, SubpartitionId,
    TierError, TierProducerAgent, TierResult, WriteOutcome,
};

use crate::batch::PushBatch;
use crate::pusher::Pusher;

#[derive(Debug, Default)]
struct SubpartitionState {
    /// The segment being written, if one was started.
    segment: Option<u32>,
    /// END_OF_SEGMENT was appended to `segment`: a new segment must start.
    segment_ended: bool,
    bytes_in_segment: u64,
    buffers_in_segment: u32,
}

/// Writes one partition to its worker. Methods block the calling thread on
/// the shared I/O runtime; do not call them from an async runtime's worker
/// threads.
#[derive(Debug)]
pub struct ProducerAgent {
    key: PartitionKey,
    spec: ProducerSpec,
    config: AgentConfig,
    subs: Vec<SubpartitionState>,
    /// Buffers batched for the next push, one run per subpartition.
    batch: PushBatch,
    pusher: Pusher,
    closed: bool,
}

impl ProducerAgent {
    /// Connects to the partition's worker and creates the partition there.
    pub fn new(config: AgentConfig, spec: ProducerSpec) -> TierResult<Self> {
        config.validate().map_err(TierError::bad_input)?;
        let key = spec.descriptor.key()?;
        if spec.num_subpartitions == 0 {
            return Err(TierError::bad_input(format!(
                "{key}: a partition needs at least one subpartition"
            )));
        }
        let options = ClientOptions::for_agent(&config, format!("producer {}", key.partition))?
            .with_job_token(&spec.descriptor)?;
        let address = spec.descriptor.worker_address.clone();
        let create = pb::CreatePartition {
            request_id: 0,
            key: Some(pb::PartitionKey::from(&key)),
            num_subpartitions: spec.num_subpartitions,
            broadcast_only: spec.broadcast_only,
        };
        let client = io_runtime()
            .block_on(async {
                let client = Client::connect(&address, &options).await?;
                client
                    .request(|request_id| {
                        Message::CreatePartition(pb::CreatePartition {
                            request_id,
                            ..create
                        })
                    })
                    .await?;
                Ok::<_, TierError>(client)
            })
            .map_err(|e| e.context(format!("create {key} on worker {address}")))?;
        let stored_subs = spec.num_subpartitions as usize;
        let pusher = Pusher::new(
            client,
            key.clone(),
            config.compression,
            config.max_bytes_in_flight.as_u64(),
        );
        Ok(ProducerAgent {
            key,
            subs: (0..stored_subs)
                .map(|_| SubpartitionState::default())
                .collect(),
            batch: PushBatch::new(stored_subs, config.push_size.as_usize() + 64 * 1024),
            pusher,
            closed: false,
            spec,
            config,
        })
    }

    pub fn key(&self) -> &PartitionKey {
        &self.key
    }

    fn check_open(&self) -> TierResult<()> {
        if self.closed {
            return Err(TierError::closed(format!(
                "producer of {} is closed",
                self.key
            )));
        }
        self.pusher.check()
    }

    fn sub_index(&self, subpartition: SubpartitionId) -> TierResult<usize> {
        if subpartition.0 >= self.spec.num_subpartitions {
            return Err(TierError::bad_input(format!(
                "{}: subpartition {} out of range ({} subpartitions)",
                self.key, subpartition.0, self.spec.num_subpartitions
            )));
        }
        if self.spec.broadcast_only && subpartition.0 != 0 {
            return Err(TierError::bad_input(format!(
                "{}: broadcast-only partitions are written to subpartition 0 only, got {}",
                self.key, subpartition.0
            )));
        }
        Ok(subpartition.0 as usize)
    }

    fn append_end_of_segment(&mut self, sub: usize, segment: u32) {
        let marker = self.spec.end_of_segment_payload.clone();
        self.batch
            .push(sub, segment, DataType::EndOfSegment, false, &marker);
    }

    /// [`TierProducerAgent::try_write`] for a borrowed payload: copies it into
    /// the push batch (the only copy) and returns true, or returns false if the
    /// segment was full and has been closed (nothing was taken; start the next
    /// segment and write again). For callers that recycle their memory as soon
    /// as the call returns, such as the Flink adapter.
    pub fn try_write_slice(
        &mut self,
        subpartition: SubpartitionId,
        data_type: DataType,
        compressed: bool,
        payload: &[u8],
        num_remaining_consecutive_buffers: u32,
    ) -> TierResult<bool> {
        self.check_open()?;
        let sub = self.sub_index(subpartition)?;
        if payload.len() as u64 > self.config.max_buffer_size.as_u64() {
            return Err(TierError::bad_input(format!(
                "{}: buffer of {} bytes exceeds max_buffer_size {}",
                self.key,
                payload.len(),
                self.config.max_buffer_size
            )));
        }
        let state = &self.subs[sub];
        let (Some(segment), false) = (state.segment, state.segment_ended) else {
            return Err(TierError::bad_input(format!(
                "{}: subpartition {sub} has no open segment; call try_start_new_segment first",
                self.key
            )));
        };
        let needed =
            (payload.len() as u64).max(1) * (1 + u64::from(num_remaining_consecutive_buffers));
        let full = state.buffers_in_segment > 0
            && state.bytes_in_segment + needed > self.config.segment_size.as_u64();
        if full {
            self.append_end_of_segment(sub, segment);
            self.subs[sub].segment_ended = true;
        } else {
            self.batch
                .push(sub, segment, data_type, compressed, payload);
            let state = &mut self.subs[sub];
            state.bytes_in_segment += payload.len() as u64;
            state.buffers_in_segment += 1;
        }
        if self.batch.len() >= self.config.push_size.as_usize() {
            self.push_batch()?;
        }
        Ok(!full)
    }

    /// Pushes the batched buffers, in subpartition order.
    fn push_batch(&mut self) -> TierResult<()> {
        if self.batch.num_buffers() == 0 {
            return Ok(());
        }
        let (chunks, num_buffers) = self.batch.take();
        io_runtime().block_on(self.pusher.push(chunks, num_buffers))
    }

    /// Pushes what is batched without waiting for a full push (lower latency
    /// for readers that consume while the producer runs).
    pub fn flush(&mut self) -> TierResult<()> {
        self.check_open()?;
        self.push_batch()
    }

    /// Pushes what is batched and waits until the worker acknowledged every
    /// push (the data is in the worker's memory or files, not yet sealed).
    pub fn flush_and_wait(&mut self) -> TierResult<()> {
        self.flush()?;
        io_runtime().block_on(self.pusher.drain())
    }
}

impl TierProducerAgent for ProducerAgent {
    fn try_start_new_segment(
        &mut self,
        subpartition: SubpartitionId,
        segment: SegmentId,
        _min_num_buffers: u32,
    ) -> TierResult<bool> {
        self.check_open()?;
        let sub = self.sub_index(subpartition)?;
        let state = &mut self.subs[sub];
        let expected = state.segment.map_or(0, |s| s + 1);
        if segment.0 != expected {
            return Err(TierError::bad_input(format!(
                "{}: subpartition {sub} must start segment {expected} next, not {}",
                self.key, segment.0
            )));
        }
        if let Some(current) = state.segment {
            if !state.segment_ended {
                // The engine moves on without the segment being full: close it.
                self.append_end_of_segment(sub, current);
            }
        }
        let state = &mut self.subs[sub];
        *state = SubpartitionState {
            segment: Some(segment.0),
            ..SubpartitionState::default()
        };
        // This tier is the only one: it always accepts a new segment.
        Ok(true)
    }

    fn try_write(
        &mut self,
        subpartition: SubpartitionId,
        buffer: Buffer,
        num_remaining_consecutive_buffers: u32,
    ) -> TierResult<WriteOutcome> {
        let written = self.try_write_slice(
            subpartition,
            buffer.data_type,
            buffer.compressed,
            &buffer.payload,
            num_remaining_consecutive_buffers,
        )?;
        Ok(if written {
            WriteOutcome::Written
        } else {
            WriteOutcome::SegmentFull(buffer)
        })
    }

    fn close(&mut self) -> TierResult<()> {
        if self.closed {
            return Ok(());
        }
        self.pusher.check()?;
        self.push_batch()?;
        self.closed = true;
        let key = pb::PartitionKey::from(&self.key);
        let result = io_runtime().block_on(async {
            self.pusher.drain().await?;
            self.pusher
                .client()
                .request(|request_id| {
                    Message::SealPartition(pb::SealPartition {
                        request_id,
                        key: Some(key),
                    })
                })
                .await?;
            Ok::<_, TierError>(())
        });
        self.pusher.client().close();
        result.map_err(|e| e.context(format!("close producer of {}", self.key)))
    }
}

impl Drop for ProducerAgent {
    fn drop(&mut self) {
        self.pusher.client().close();
    }
}
