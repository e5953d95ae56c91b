//! The producer agent: segment rules and batching.

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions, io_runtime};
use terrace_tier_api::{
    AgentConfig, BatchBuilder, Buffer, PartitionKey, SegmentId, ShuffleDescriptor, SubpartitionId,
    TierError, TierProducerAgent, TierResult, WriteOutcome,
};

use crate::pusher::Pusher;

/// What the engine tells a producer agent about its partition.
#[derive(Debug, Clone)]
pub struct ProducerSpec {
    pub descriptor: ShuffleDescriptor,
    pub num_subpartitions: u32,
    /// All data goes to subpartition 0 and every reader reads it (Flink `isBroadcastOnly`).
    pub broadcast_only: bool,
    /// Payload of the END_OF_SEGMENT buffers this agent appends (Flink: the
    /// serialized `EndOfSegmentEvent`).
    pub end_of_segment_payload: Bytes,
}

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
    batch: Vec<BatchBuilder>,
    batch_bytes: usize,
    batch_buffers: u32,
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
        let options = ClientOptions {
            name: format!("producer {}", key.partition),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_frame_bytes: config.max_frame_size.as_usize(),
        };
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
            batch: (0..stored_subs).map(|_| BatchBuilder::default()).collect(),
            batch_bytes: 0,
            batch_buffers: 0,
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

    fn append(&mut self, sub: usize, segment: u32, buffer: &Buffer) {
        self.batch[sub].push(SubpartitionId(sub as u32), SegmentId(segment), buffer);
        self.batch_bytes += terrace_tier_api::BUFFER_HEADER_LEN + buffer.len();
        self.batch_buffers += 1;
    }

    /// Pushes the batched buffers, in subpartition order.
    fn push_batch(&mut self) -> TierResult<()> {
        if self.batch_buffers == 0 {
            return Ok(());
        }
        let chunks: Vec<Bytes> = self
            .batch
            .iter_mut()
            .filter(|b| !b.is_empty())
            .map(|b| std::mem::take(b).finish().bytes)
            .collect();
        let num_buffers = self.batch_buffers;
        self.batch_bytes = 0;
        self.batch_buffers = 0;
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
                let marker = Buffer::end_of_segment(self.spec.end_of_segment_payload.clone());
                self.append(sub, current, &marker);
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
        self.check_open()?;
        let sub = self.sub_index(subpartition)?;
        if buffer.len() as u64 > self.config.max_buffer_size.as_u64() {
            return Err(TierError::bad_input(format!(
                "{}: buffer of {} bytes exceeds max_buffer_size {}",
                self.key,
                buffer.len(),
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
            (buffer.len() as u64).max(1) * (1 + u64::from(num_remaining_consecutive_buffers));
        if state.buffers_in_segment > 0
            && state.bytes_in_segment + needed > self.config.segment_size.as_u64()
        {
            let marker = Buffer::end_of_segment(self.spec.end_of_segment_payload.clone());
            self.append(sub, segment, &marker);
            self.subs[sub].segment_ended = true;
            if self.batch_bytes >= self.config.push_size.as_usize() {
                self.push_batch()?;
            }
            return Ok(WriteOutcome::SegmentFull(buffer));
        }
        self.append(sub, segment, &buffer);
        let state = &mut self.subs[sub];
        state.bytes_in_segment += buffer.len() as u64;
        state.buffers_in_segment += 1;
        if self.batch_bytes >= self.config.push_size.as_usize() {
            self.push_batch()?;
        }
        Ok(WriteOutcome::Written)
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
