//! The consumer agent: streams, credits and segment requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_rpc::{Client, ClientOptions, StreamEvent, StreamReceiver, io_runtime};
use terrace_tier_api::{
    AgentConfig, AvailabilityNotifier, BatchReader, Buffer, ConsumerSpec, DataType, ErrorKind,
    InputChannelId, PartitionId, PartitionKey, SegmentId, ShuffleDescriptor, SubpartitionId,
    SubpartitionRange, TierConsumerAgent, TierError, TierResult,
};

use crate::queues::{Received, State, SubQueue};

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// One stream: a spec and, once known, where its partition lives.
#[derive(Debug)]
struct StreamSlot {
    spec: ConsumerSpec,
    descriptor: Option<ShuffleDescriptor>,
    /// Set once the stream is open.
    open: Option<OpenStream>,
}

#[derive(Debug, Clone)]
struct OpenStream {
    client: Client,
    stream_id: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    notifier: Mutex<Option<Arc<dyn AvailabilityNotifier>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("consumer state lock poisoned")
    }

    fn notify(&self, partition: &PartitionId, channels: &[InputChannelId]) {
        if channels.is_empty() {
            return;
        }
        let notifier = self
            .notifier
            .lock()
            .expect("notifier lock poisoned")
            .clone();
        if let Some(notifier) = notifier {
            for channel in channels {
                notifier.notify_available(partition, *channel);
            }
        }
    }

    fn fail(&self, partition: &PartitionId, error: TierError) {
        let channels = self.lock().fail(partition, error);
        self.notify(partition, &channels);
    }
}

/// Reads one input gate. Methods block the calling thread on the shared I/O
/// runtime; do not call them from an async runtime's worker threads.
#[derive(Debug)]
pub struct ConsumerAgent {
    config: AgentConfig,
    streams: Vec<StreamSlot>,
    /// By worker address and job token.
    clients: HashMap<(String, String), Client>,
    shared: Arc<Shared>,
    started: bool,
}

impl ConsumerAgent {
    /// `descriptors[i]` belongs to `specs[i]`; `None` when not known yet (see
    /// [`TierConsumerAgent::update_tier_shuffle_descriptor`]).
    pub fn new(
        config: AgentConfig,
        specs: Vec<ConsumerSpec>,
        descriptors: Vec<Option<ShuffleDescriptor>>,
    ) -> TierResult<Self> {
        config.validate().map_err(TierError::bad_input)?;
        if specs.len() != descriptors.len() {
            return Err(TierError::bad_input(format!(
                "{} consumer specs but {} descriptors",
                specs.len(),
                descriptors.len()
            )));
        }
        let mut state = State::default();
        for (index, spec) in specs.iter().enumerate() {
            if spec.subpartitions.is_empty() {
                return Err(TierError::bad_input(format!(
                    "empty subpartition range for {:?}",
                    spec.partition
                )));
            }
            for sub in spec.subpartitions.clone() {
                let queue = SubQueue {
                    channel: spec.input_channel,
                    stream: index,
                    buffers: Default::default(),
                    requested: 0,
                    ended_at: None,
                };
                if state
                    .queues
                    .insert((spec.partition.clone(), sub), queue)
                    .is_some()
                {
                    return Err(TierError::bad_input(format!(
                        "subpartition {sub} of {:?} is read by two input channels",
                        spec.partition
                    )));
                }
            }
        }
        let streams = specs
            .into_iter()
            .zip(descriptors)
            .map(|(spec, descriptor)| StreamSlot {
                spec,
                descriptor,
                open: None,
            })
            .collect();
        Ok(ConsumerAgent {
            config,
            streams,
            clients: HashMap::new(),
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                notifier: Mutex::new(None),
            }),
            started: false,
        })
    }

    /// Whether the worker said `segment` of `subpartition` will never exist
    /// (the partition is sealed and has no more data for it).
    pub fn is_finished(&self, partition: &PartitionId, subpartition: SubpartitionId) -> bool {
        let state = self.shared.lock();
        state
            .queues
            .get(&(partition.clone(), subpartition.0))
            .is_some_and(|q| q.buffers.is_empty() && q.ended_at.is_some())
    }

    /// The connection to the worker of `descriptor`, authenticated with its
    /// job's token: one per worker and token.
    fn client_for(&mut self, descriptor: &ShuffleDescriptor) -> TierResult<Client> {
        let route = (descriptor.worker_address.clone(), descriptor.token.clone());
        if let Some(client) = self.clients.get(&route) {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let options =
            ClientOptions::for_agent(&self.config, "consumer")?.with_job_token(descriptor)?;
        let client = io_runtime().block_on(Client::connect(&route.0, &options))?;
        self.clients.insert(route, client.clone());
        Ok(client)
    }

    /// Opens stream `index`; failures are recorded for its partition.
    fn open_stream(&mut self, index: usize) {
        let slot = &self.streams[index];
        let Some(descriptor) = slot.descriptor.clone() else {
            return;
        };
        if slot.open.is_some() {
            return;
        }
        let spec = slot.spec.clone();
        let result = descriptor.key().and_then(|key| {
            let client = self.client_for(&descriptor)?;
            let stream_id = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
            let receiver = client.register_stream(stream_id)?;
            let open = OpenStream { client, stream_id };
            self.start_stream(&key, &spec, open.clone(), receiver)?;
            Ok(open)
        });
        match result {
            Ok(open) => self.streams[index].open = Some(open),
            Err(e) => {
                let error = if e.kind() == ErrorKind::Unavailable {
                    TierError::not_found(format!(
                        "worker {} of partition {} is unreachable: {}",
                        descriptor.worker_address,
                        spec.partition,
                        e.message()
                    ))
                } else {
                    e
                };
                tracing::warn!(partition = %spec.partition, error = %error, "cannot open stream");
                self.shared.fail(&spec.partition, error);
            }
        }
    }

    fn start_stream(
        &self,
        key: &PartitionKey,
        spec: &ConsumerSpec,
        open: OpenStream,
        receiver: StreamReceiver,
    ) -> TierResult<()> {
        let first = *spec.subpartitions.start();
        let last = *spec.subpartitions.end();
        let pending = open.client.start_request(
            |request_id| {
                Message::OpenStream(pb::OpenStream {
                    request_id,
                    stream_id: open.stream_id,
                    key: Some(pb::PartitionKey::from(key)),
                    first_subpartition: first,
                    last_subpartition: last,
                    initial_credit: self.config.read_credits,
                })
            },
            Vec::new(),
        )?;
        for sub in first..=last {
            open.client
                .send(Message::RequireSegment(pb::RequireSegment {
                    stream_id: open.stream_id,
                    subpartition: sub,
                    segment_id: 0,
                }))?;
        }
        let shared = Arc::clone(&self.shared);
        let partition = spec.partition.clone();
        let worker = open.client.peer().to_string();
        io_runtime().spawn(async move {
            if let Err(e) = pending.wait().await {
                let e = if e.kind() == ErrorKind::Unavailable {
                    TierError::not_found(format!(
                        "worker {worker} of partition {partition} is gone: {}",
                        e.message()
                    ))
                } else {
                    e.context(format!("open stream of partition {partition} on {worker}"))
                };
                shared.fail(&partition, e);
                return;
            }
            receive(shared, partition, worker, receiver).await;
        });
        Ok(())
    }

    fn stream_control(&self, stream: usize) -> Option<OpenStream> {
        self.streams.get(stream).and_then(|s| s.open.clone())
    }
}

/// Routes a stream's frames into the queues until it ends.
async fn receive(
    shared: Arc<Shared>,
    partition: PartitionId,
    worker: String,
    mut receiver: StreamReceiver,
) {
    while let Some(event) = receiver.recv().await {
        let (message, body) = match event {
            StreamEvent::Frame(message, body) => (message, body),
            StreamEvent::Lost(e) => {
                shared.fail(
                    &partition,
                    TierError::not_found(format!(
                        "lost the connection to worker {worker} holding partition {partition}: {}",
                        e.message()
                    )),
                );
                return;
            }
        };
        match message {
            Message::ReadData(m) => match decode_read(&partition, &m, body) {
                Ok(buffers) => {
                    let mut state = shared.lock();
                    let Some(queue) = state.queues.get_mut(&(partition.clone(), m.subpartition))
                    else {
                        continue;
                    };
                    let was_empty = queue.buffers.is_empty();
                    let count = buffers.len();
                    for (i, buffer) in buffers.into_iter().enumerate() {
                        queue.buffers.push_back(Received {
                            segment: m.segment_id,
                            buffer,
                            returns_credit: i + 1 == count,
                        });
                    }
                    let channel = queue.channel;
                    drop(state);
                    if was_empty && count > 0 {
                        shared.notify(&partition, &[channel]);
                    }
                }
                Err(e) => {
                    tracing::error!(%partition, subpartition = m.subpartition, segment = m.segment_id, %worker, error = %e, "read data rejected");
                    shared.fail(&partition, e);
                    return;
                }
            },
            Message::SubpartitionEnd(m) => {
                let mut state = shared.lock();
                if let Some(queue) = state.queues.get_mut(&(partition.clone(), m.subpartition)) {
                    queue.ended_at = Some(m.segment_id);
                    let channel = queue.channel;
                    drop(state);
                    shared.notify(&partition, &[channel]);
                }
            }
            Message::StreamError(m) => {
                shared.fail(
                    &partition,
                    TierError::from_wire(
                        m.code,
                        format!("worker {worker}, partition {partition}: {}", m.message),
                    ),
                );
                return;
            }
            _ => {}
        }
    }
}

/// Checks every extent's CRC32C and decodes the buffers.
fn decode_read(partition: &PartitionId, m: &pb::ReadData, body: Bytes) -> TierResult<Vec<Buffer>> {
    if m.extent_lengths.len() != m.extent_crc32cs.len() {
        return Err(TierError::bad_input(
            "read data with mismatched extent lists",
        ));
    }
    let total: u64 = m.extent_lengths.iter().map(|l| u64::from(*l)).sum();
    if total != body.len() as u64 {
        return Err(TierError::bad_input(format!(
            "read data body has {} bytes, extents say {total}",
            body.len()
        )));
    }
    let mut at = 0usize;
    for (len, crc) in m.extent_lengths.iter().zip(&m.extent_crc32cs) {
        let extent = &body[at..at + *len as usize];
        let actual = crc32c::crc32c(extent);
        if actual != *crc {
            return Err(TierError::corruption(format!(
                "partition {partition} subpartition {} segment {}: checksum mismatch (stored {crc:#010x}, read {actual:#010x})",
                m.subpartition, m.segment_id
            )));
        }
        at += *len as usize;
    }
    let mut reader = BatchReader::new(body);
    let mut buffers = Vec::with_capacity(m.num_buffers as usize);
    while let Some((header, payload)) = reader
        .next_buffer()
        .map_err(|e| TierError::corruption(format!("partition {partition}: {}", e.message())))?
    {
        if header.subpartition.0 != m.stored_subpartition || header.segment.0 != m.segment_id {
            return Err(TierError::corruption(format!(
                "partition {partition}: buffer of subpartition {} segment {} in a read of subpartition {} (stored as {}) segment {}",
                header.subpartition.0,
                header.segment.0,
                m.subpartition,
                m.stored_subpartition,
                m.segment_id
            )));
        }
        buffers.push(Buffer {
            data_type: header.data_type,
            compressed: header.compressed,
            payload,
        });
    }
    Ok(buffers)
}

impl TierConsumerAgent for ConsumerAgent {
    fn start(&mut self) -> TierResult<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        for index in 0..self.streams.len() {
            self.open_stream(index);
        }
        Ok(())
    }

    fn peek_next_buffer_subpartition_id(
        &self,
        partition: &PartitionId,
        subpartitions: &SubpartitionRange,
    ) -> TierResult<Option<SubpartitionId>> {
        let state = self.shared.lock();
        if let Some(e) = state.failures.get(partition) {
            return Err(e.clone());
        }
        for sub in subpartitions.clone() {
            if let Some(queue) = state.queues.get(&(partition.clone(), sub)) {
                if !queue.buffers.is_empty() {
                    return Ok(Some(SubpartitionId(sub)));
                }
            }
        }
        Ok(None)
    }

    fn get_next_buffer(
        &self,
        partition: &PartitionId,
        subpartition: SubpartitionId,
        segment: SegmentId,
    ) -> TierResult<Option<Buffer>> {
        let mut state = self.shared.lock();
        if let Some(e) = state.failures.get(partition) {
            return Err(e.clone());
        }
        let Some(queue) = state.queues.get_mut(&(partition.clone(), subpartition.0)) else {
            return Ok(None);
        };
        let mut require = None;
        if segment.0 > queue.requested {
            queue.requested = segment.0;
            require = Some(segment.0);
        }
        let front_matches = queue
            .buffers
            .front()
            .is_some_and(|r| r.segment == segment.0);
        let received = if front_matches {
            queue.buffers.pop_front()
        } else {
            None
        };
        let stream = queue.stream;
        if let Some(r) = &received {
            if r.buffer.data_type == DataType::EndOfSegment {
                // Ask for the next segment now, so it arrives while the engine
                // is still busy with this one.
                queue.requested = segment.0 + 1;
                require = Some(segment.0 + 1);
            }
        }
        drop(state);
        let Some(control) = self.stream_control(stream) else {
            return Ok(received.map(|r| r.buffer));
        };
        if let Some(next) = require {
            let _ = control
                .client
                .send(Message::RequireSegment(pb::RequireSegment {
                    stream_id: control.stream_id,
                    subpartition: subpartition.0,
                    segment_id: next,
                }));
        }
        if received.as_ref().is_some_and(|r| r.returns_credit) {
            let _ = control.client.send(Message::AddCredit(pb::AddCredit {
                stream_id: control.stream_id,
                credit: 1,
            }));
        }
        Ok(received.map(|r| r.buffer))
    }

    fn register_availability_notifier(&mut self, notifier: Arc<dyn AvailabilityNotifier>) {
        *self.shared.notifier.lock().expect("notifier lock poisoned") = Some(notifier);
    }

    fn update_tier_shuffle_descriptor(
        &mut self,
        partition: &PartitionId,
        input_channel: InputChannelId,
        _subpartition: SubpartitionId,
        descriptor: ShuffleDescriptor,
    ) -> TierResult<()> {
        let index = self
            .streams
            .iter()
            .position(|s| &s.spec.partition == partition && s.spec.input_channel == input_channel)
            .ok_or_else(|| {
                TierError::bad_input(format!(
                    "no input channel {input_channel:?} reads partition {partition}"
                ))
            })?;
        if self.streams[index].descriptor.is_none() {
            self.streams[index].descriptor = Some(descriptor);
            if self.started {
                self.open_stream(index);
            }
        }
        Ok(())
    }

    fn close(&mut self) -> TierResult<()> {
        for slot in &mut self.streams {
            if let Some(open) = slot.open.take() {
                let _ = open.client.send(Message::CloseStream(pb::CloseStream {
                    stream_id: open.stream_id,
                }));
                open.client.unregister_stream(open.stream_id);
            }
        }
        for (_, client) in self.clients.drain() {
            client.close();
        }
        Ok(())
    }
}

impl Drop for ConsumerAgent {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
