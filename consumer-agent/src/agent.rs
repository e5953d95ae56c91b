//! The consumer agent: streams, credits and segment requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions, Peer, Pool, StreamEvent, StreamReceiver, io_runtime};
use terrace_tier_api::protocol::{
    AddCredit, CloseStream, LocatePartition, OpenStream, PartitionLocated, ReadData,
    RequireSegment, StreamFrame, StreamId, SubpartitionRedirect,
};
use terrace_tier_api::{
    AgentConfig, AvailabilityNotifier, BatchReader, Buffer, ConsumerSpec, DataType, ErrorKind,
    InputChannelId, PartitionId, PartitionKey, SegmentId, ShuffleDescriptor, SubpartitionId,
    SubpartitionRange, TierConsumerAgent, TierError, TierResult, WorkerId, unlz4,
};

use crate::queues::{Received, State, SubQueue};

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// One stream: a spec and, once known, where its partition lives.
#[derive(Debug)]
struct StreamSlot {
    spec: ConsumerSpec,
    descriptor: Option<ShuffleDescriptor>,
    /// Its first stream was opened (or failed to open).
    opened: bool,
}

#[derive(Debug, Clone)]
struct OpenHop {
    client: Client,
    stream_id: StreamId,
    /// The worker it reads from (its id, as the masters know it).
    worker_id: String,
}

struct Shared {
    state: Mutex<State>,
    notifier: Mutex<Option<Arc<dyn AvailabilityNotifier>>>,
    /// Per stream slot, its open streams: hop 0 on the descriptor's worker,
    /// hop `i + 1` on the worker that hop `i` redirected to (the next part of
    /// a split partition).
    hops: Mutex<Vec<Vec<OpenHop>>>,
    /// Connections by worker address and job token.
    workers: Pool,
    read_credits: u32,
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

    /// Hop `hop` of stream slot `slot`, if open.
    fn hop(&self, slot: usize, hop: usize) -> Option<OpenHop> {
        self.hops
            .lock()
            .expect("hops lock poisoned")
            .get(slot)
            .and_then(|h| h.get(hop))
            .cloned()
    }

    /// A connection to `address` presenting `options`' credential, shared by
    /// every stream of this agent that reads from there with the same token.
    async fn client_for(&self, address: &str, options: &ClientOptions) -> TierResult<Client> {
        let peer = Peer::at(address).with_credential(options.credential.clone());
        self.workers.client(&peer).await
    }
}

/// What a stream slot's hops need to open the next one.
#[derive(Debug)]
struct HopContext {
    slot: usize,
    key: PartitionKey,
    spec: ConsumerSpec,
    options: ClientOptions,
    /// Masters to ask where the partition is when its descriptor's worker
    /// does not have it (see [`relocated_first_hop`]).
    masters: Vec<String>,
    /// The descriptor's worker (its id).
    first_worker: String,
    /// The largest buffer a producer may write (`max_buffer_size`): what an
    /// lz4 buffer may claim to decompress to.
    max_buffer: usize,
}

/// How long a consumer whose descriptor's worker is unreachable (or does not
/// hold the partition) asks masters whether the partition was relocated: its
/// producer may not have started yet. Polled every [`LOCATE_POLL`].
const LOCATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const LOCATE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Reads one input gate. Methods block the calling thread on the shared I/O
/// runtime; do not call them from an async runtime's worker threads.
#[derive(Debug)]
pub struct ConsumerAgent {
    config: AgentConfig,
    streams: Vec<StreamSlot>,
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
        config.validate()?;
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
                    hop: 0,
                    buffers: Default::default(),
                    requested: 0,
                    ended_at: None,
                    received: Default::default(),
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
                opened: false,
            })
            .collect::<Vec<_>>();
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            notifier: Mutex::new(None),
            hops: Mutex::new(vec![Vec::new(); streams.len()]),
            workers: Pool::new(ClientOptions::for_agent(&config, "consumer")?),
            read_credits: config.read_credits,
        });
        Ok(ConsumerAgent {
            config,
            streams,
            shared,
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

    /// Opens stream slot `index` on its descriptor's worker; failures are
    /// recorded for its partition.
    fn open_stream(&mut self, index: usize) {
        let slot = &self.streams[index];
        let Some(descriptor) = slot.descriptor.clone() else {
            return;
        };
        if slot.opened {
            return;
        }
        self.streams[index].opened = true;
        let spec = self.streams[index].spec.clone();
        let result = descriptor.key().and_then(|key| {
            let options =
                ClientOptions::for_agent(&self.config, "consumer")?.with_job_token(&descriptor)?;
            let context = Arc::new(HopContext {
                slot: index,
                key,
                spec: spec.clone(),
                options,
                masters: self.config.master_addresses.clone(),
                first_worker: descriptor.worker_id.clone(),
                max_buffer: self.config.max_buffer_size.as_usize(),
            });
            let shared = Arc::clone(&self.shared);
            io_runtime().block_on(async {
                match shared
                    .client_for(&descriptor.worker_address, &context.options)
                    .await
                {
                    Ok(client) => start_hop(
                        &shared,
                        &context,
                        0,
                        client,
                        descriptor.worker_id.clone(),
                        first_part(&spec),
                    ),
                    Err(e) if e.kind() == ErrorKind::Unavailable => {
                        // Perhaps relocated: look it up without holding up
                        // the caller.
                        let (shared, context) = (Arc::clone(&shared), Arc::clone(&context));
                        let from = descriptor.worker_address.clone();
                        let worker_id = descriptor.worker_id.clone();
                        io_runtime().spawn(async move {
                            // So that nothing new is placed there meanwhile.
                            if let Ok(worker) = WorkerId::new(worker_id) {
                                Client::report_unreachable(
                                    &context.masters,
                                    &context.options,
                                    &context.key.job,
                                    &worker,
                                    &e,
                                )
                                .await;
                            }
                            relocated_first_hop(&shared, &context, &from, e).await;
                        });
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            })
        });
        if let Err(e) = result {
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

/// The first part of a stream: every subpartition from segment 0.
fn first_part(spec: &ConsumerSpec) -> Vec<(u32, u32)> {
    spec.subpartitions.clone().map(|sub| (sub, 0)).collect()
}

/// The descriptor's worker (`from`) could not be reached or does not hold
/// the partition (`error`): asks the masters, for up to [`LOCATE_WAIT`],
/// whether the producer relocated it, and opens the first hop there. Fails
/// the partition with partition-not-found when it was not relocated (the
/// data died with the worker: the engine reruns the producer) or no master
/// answers.
async fn relocated_first_hop(
    shared: &Arc<Shared>,
    context: &Arc<HopContext>,
    from: &str,
    error: TierError,
) {
    let partition = context.spec.partition.clone();
    let not_found = |detail: String| {
        TierError::not_found(format!(
            "worker {from} of partition {partition} {detail}: {}",
            error.message()
        ))
    };
    let locate = LocatePartition {
        key: context.key.clone(),
        worker: WorkerId::new(context.first_worker.clone()).ok(),
    };
    let deadline = clock::now() + LOCATE_WAIT;
    let restart_deadline = clock::now() + RESTART_WAIT;
    let located = loop {
        let reply = Client::ask_first(&context.masters, &context.options, locate.clone()).await;
        match reply {
            Ok(PartitionLocated {
                worker: Some(at), ..
            }) if at.address != from => {
                break Some(at);
            }
            Ok(located) => {
                // Not relocated. A worker that could not be reached may be
                // back (from a restart); one that answered without the
                // partition is not asked again.
                let back = if error.kind() == ErrorKind::Unavailable {
                    clock::timeout(RECONNECT_TIMEOUT, shared.client_for(from, &context.options))
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                if let Some(client) = back {
                    shared.hops.lock().expect("hops lock poisoned")[context.slot].clear();
                    let opened = start_hop(
                        shared,
                        context,
                        0,
                        client,
                        context.first_worker.clone(),
                        first_part(&context.spec),
                    );
                    if let Err(e) = opened {
                        shared.fail(&partition, e);
                    }
                    return;
                }
                let waiting = if located.restarting {
                    restart_deadline
                } else {
                    deadline
                };
                if clock::now() >= waiting {
                    break None;
                }
                clock::sleep(LOCATE_POLL).await;
            }
            // No master answers.
            Err(_) => break None,
        }
    };
    let Some(at) = located else {
        shared.fail(
            &partition,
            not_found(
                "is unreachable or does not hold it, and no master knows it elsewhere".into(),
            ),
        );
        return;
    };
    let address = at.address.clone();
    tracing::info!(partition = %partition, from = %from, to = %address,
        "reading a partition relocated before its first push");
    // A hop 0 that failed on the old worker is replaced.
    shared.hops.lock().expect("hops lock poisoned")[context.slot].clear();
    let opened = match shared.client_for(&address, &context.options).await {
        Ok(client) => start_hop(
            shared,
            context,
            0,
            client,
            at.id.into_string(),
            first_part(&context.spec),
        ),
        Err(e) => Err(e),
    };
    if let Err(e) = opened {
        shared.fail(
            &partition,
            TierError::not_found(format!(
                "partition {partition} relocated to {address}, which failed too: {}",
                e.message()
            )),
        );
    }
}

/// Opens hop `hop` of a stream slot on `client`'s worker, asks it for the
/// `(subpartition, segment)`s in `require`, and routes its frames.
fn start_hop(
    shared: &Arc<Shared>,
    context: &Arc<HopContext>,
    hop: usize,
    client: Client,
    worker_id: String,
    require: Vec<(u32, u32)>,
) -> TierResult<()> {
    let stream_id = StreamId(NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed));
    let receiver = client.register_stream(stream_id)?;
    let pending = client.start_call(OpenStream {
        stream_id,
        key: context.key.clone(),
        first_subpartition: *context.spec.subpartitions.start(),
        last_subpartition: *context.spec.subpartitions.end(),
        initial_credit: shared.read_credits,
    })?;
    for (sub, segment) in require {
        client.send_stream(RequireSegment {
            stream_id,
            subpartition: SubpartitionId(sub),
            segment: SegmentId(segment),
        })?;
    }
    {
        let mut hops = shared.hops.lock().expect("hops lock poisoned");
        let slot = &mut hops[context.slot];
        if slot.len() != hop {
            return Err(TierError::internal(format!(
                "stream hop {hop} opened out of order ({} open)",
                slot.len()
            )));
        }
        slot.push(OpenHop {
            client: client.clone(),
            stream_id,
            worker_id,
        });
    }
    spawn_hop(shared, context, hop, &client, pending, receiver);
    Ok(())
}

/// Reopens hop `hop` of a stream slot, cut by its worker's restart, on
/// `client` (the worker back): each subpartition read there asks again for
/// the segment it was in (dropping the buffers it already has) or the one
/// it asked for last. Buffers queued from the cut stream return no credit
/// to the new one, which starts with its own.
fn reopen_hop(
    shared: &Arc<Shared>,
    context: &Arc<HopContext>,
    hop: usize,
    client: Client,
    worker_id: String,
) -> TierResult<()> {
    let stream_id = StreamId(NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed));
    let receiver = client.register_stream(stream_id)?;
    let pending = client.start_call(OpenStream {
        stream_id,
        key: context.key.clone(),
        first_subpartition: *context.spec.subpartitions.start(),
        last_subpartition: *context.spec.subpartitions.end(),
        initial_credit: shared.read_credits,
    })?;
    {
        // The state lock first, as `get_next_buffer` takes it: no segment
        // is asked for twice on the new stream.
        let mut state = shared.lock();
        let mut hops = shared.hops.lock().expect("hops lock poisoned");
        let Some(open) = hops[context.slot].get_mut(hop) else {
            return Err(TierError::internal(format!(
                "stream hop {hop} reopened but never opened"
            )));
        };
        open.client = client.clone();
        open.stream_id = stream_id;
        open.worker_id = worker_id;
        for sub in context.spec.subpartitions.clone() {
            let Some(queue) = state.queues.get_mut(&(context.spec.partition.clone(), sub)) else {
                continue;
            };
            if queue.hop != hop || queue.ended_at.is_some() {
                continue;
            }
            for r in queue.buffers.iter_mut().filter(|r| r.hop == hop) {
                r.returns_credit = false;
            }
            if let Some(segment) = queue.received.resume_at(queue.requested) {
                client.send_stream(RequireSegment {
                    stream_id,
                    subpartition: SubpartitionId(sub),
                    segment: SegmentId(segment),
                })?;
            }
        }
    }
    spawn_hop(shared, context, hop, &client, pending, receiver);
    Ok(())
}

/// How long a reader waits for a worker the masters say is restarting, at
/// most (the masters take it for lost after their `restart_grace`).
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(180);
/// Between looks at a restarting worker.
const RESTART_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// One attempt to reach a worker that may be back.
const RECONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Hop `hop`'s connection to `address` was lost (`lost`). When its worker
/// is back, or the masters say it is restarting, waits for it and reopens
/// the hop there; otherwise (it crashed or hangs) returns `lost`.
async fn resume_after_restart(
    shared: &Arc<Shared>,
    context: &Arc<HopContext>,
    hop: usize,
    address: &str,
    lost: &TierError,
) -> TierResult<()> {
    let worker_id = shared
        .hop(context.slot, hop)
        .map(|open| open.worker_id)
        .unwrap_or_default();
    let mut lost = lost.clone();
    // The process that answered may be the old one on its way out (it
    // listens until it exits): a reopen cut that way waits for the new one.
    for _ in 0..REOPENS {
        let (client, reached) =
            reach_through_restart(shared, context, &worker_id, address, &lost).await?;
        match reopen_hop(shared, context, hop, client, reached) {
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                tracing::info!(partition = %context.spec.partition, worker = %worker_id, %address,
                    error = %e, "the reopened stream was cut at once; waiting for the worker again");
                lost = e;
            }
            done => return done,
        }
    }
    Err(lost)
}

/// Reopens of one hop's stream after one loss, at most.
const REOPENS: usize = 3;

/// A connection to worker `worker_id` at `address`, which just failed
/// (`lost`), and the id of the worker it reaches: at once if it answers,
/// else, while the masters say it is restarting (or, durable, not counted
/// lost yet), once it is back or once a master names the worker that
/// adopted its part from the object store. `lost` when it neither answers
/// nor is waited for (it crashed or hangs, and nothing adopted its part).
async fn reach_through_restart(
    shared: &Arc<Shared>,
    context: &Arc<HopContext>,
    worker_id: &str,
    address: &str,
    lost: &TierError,
) -> TierResult<(Client, String)> {
    let ask = LocatePartition {
        key: context.key.clone(),
        worker: WorkerId::new(worker_id.to_string()).ok(),
    };
    let deadline = clock::now() + RESTART_WAIT;
    let mut waited = false;
    // A worker back from its restart serves before its first heartbeat
    // tells the masters it no longer restarts: once they stop saying to
    // wait, it is tried once more before it is given up.
    let mut last_try = false;
    loop {
        if let Ok(Ok(client)) = clock::timeout(
            RECONNECT_TIMEOUT,
            shared.client_for(address, &context.options),
        )
        .await
        {
            if waited {
                tracing::info!(partition = %context.spec.partition, worker = %worker_id, %address,
                    "worker back from its restart; resuming");
            }
            return Ok((client, worker_id.to_string()));
        }
        let located = Client::ask_first(&context.masters, &context.options, ask.clone()).await;
        let (wait, adopted_by) = match &located {
            Ok(located) => (
                located.restarting || located.recovering,
                located.adopted_by.clone(),
            ),
            Err(_) => (false, None),
        };
        if let Some(at) = adopted_by {
            let reached = clock::timeout(
                RECONNECT_TIMEOUT,
                shared.client_for(&at.address, &context.options),
            )
            .await;
            if let Ok(Ok(client)) = reached {
                tracing::info!(partition = %context.spec.partition, lost = %worker_id,
                    adopter = %at.address, "worker lost; its part was adopted from the object store; resuming there");
                return Ok((client, at.id.into_string()));
            }
        }
        if (!wait && last_try) || clock::now() >= deadline {
            tracing::info!(partition = %context.spec.partition, worker = %worker_id, %address,
                masters_said = ?located, "worker unreachable and not waited for");
            return Err(lost.clone());
        }
        if !wait {
            last_try = true;
            continue;
        }
        if !waited {
            tracing::info!(partition = %context.spec.partition, worker = %worker_id, %address,
                "worker restarting or being recovered; reading resumes when it is back or its part is adopted");
            waited = true;
        }
        clock::sleep(RESTART_POLL).await;
    }
}

/// Waits for hop `hop`'s stream to open, then routes its frames.
fn spawn_hop(
    shared: &Arc<Shared>,
    context: &Arc<HopContext>,
    hop: usize,
    client: &Client,
    pending: terrace_rpc::PendingCall<terrace_tier_api::protocol::StreamOpened>,
    receiver: StreamReceiver,
) {
    let shared = Arc::clone(shared);
    let context = Arc::clone(context);
    let worker = client.peer().to_string();
    io_runtime().spawn(async move {
        let partition = context.spec.partition.clone();
        if let Err(e) = pending.wait().await {
            // The descriptor's worker does not hold the partition (a
            // decommissioning worker says so at once): it may have been
            // relocated before its first push.
            if hop == 0 && e.kind() == ErrorKind::PartitionNotFound {
                relocated_first_hop(&shared, &context, &worker, e).await;
                return;
            }
            if e.kind() == ErrorKind::Unavailable
                && resume_after_restart(&shared, &context, hop, &worker, &e)
                    .await
                    .is_ok()
            {
                return;
            }
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
        receive(shared, context, hop, worker, receiver).await;
    });
}

/// Sends `subpartition` on to the next part of its split partition: the
/// hop after `hop`, opened on `address` if it is not open yet.
async fn follow_redirect(
    shared: &Arc<Shared>,
    context: &Arc<HopContext>,
    hop: usize,
    m: &SubpartitionRedirect,
) -> TierResult<()> {
    let next = hop + 1;
    let subpartition = m.subpartition.0;
    if !context.spec.subpartitions.contains(&subpartition) {
        return Err(TierError::bad_input(format!(
            "redirect for subpartition {subpartition} outside the stream"
        )));
    }
    match shared.hop(context.slot, next) {
        Some(open) => {
            if open.client.peer() != m.to.address {
                return Err(TierError::internal(format!(
                    "two redirects from one part: to {} and to {}",
                    open.client.peer(),
                    m.to.address
                )));
            }
            open.client.send_stream(RequireSegment {
                stream_id: open.stream_id,
                subpartition: m.subpartition,
                segment: m.segment,
            })?;
        }
        None => {
            let (client, worker_id) = match shared.client_for(&m.to.address, &context.options).await
            {
                Ok(client) => (client, m.to.id.to_string()),
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    reach_through_restart(shared, context, m.to.id.as_str(), &m.to.address, &e)
                        .await?
                }
                Err(e) => return Err(e),
            };
            start_hop(
                shared,
                context,
                next,
                client,
                worker_id,
                vec![(subpartition, m.segment.0)],
            )?;
        }
    }
    let mut state = shared.lock();
    if let Some(queue) = state
        .queues
        .get_mut(&(context.spec.partition.clone(), subpartition))
    {
        queue.hop = next;
    }
    Ok(())
}

/// Routes a stream's frames into the queues until it ends.
async fn receive(
    shared: Arc<Shared>,
    context: Arc<HopContext>,
    hop: usize,
    worker: String,
    mut receiver: StreamReceiver,
) {
    let partition = context.spec.partition.clone();
    while let Some(event) = receiver.recv().await {
        let frame = match event {
            StreamEvent::Frame(frame) => frame,
            StreamEvent::Invalid(e) => {
                tracing::error!(%partition, %worker, error = %e, "read stream frame rejected");
                shared.fail(&partition, e);
                return;
            }
            StreamEvent::Lost(e) => {
                // A worker that stops for a restart cuts its streams: they
                // resume on it once it is back.
                if let Err(e) = resume_after_restart(&shared, &context, hop, &worker, &e).await {
                    shared.fail(
                        &partition,
                        TierError::not_found(format!(
                            "lost the connection to worker {worker} holding partition {partition}: {}",
                            e.message()
                        )),
                    );
                }
                return;
            }
        };
        match frame {
            StreamFrame::ReadData(m) => match decode_read(&partition, &m, context.max_buffer) {
                Ok(mut buffers) => {
                    let mut state = shared.lock();
                    let Some(queue) = state.queues.get_mut(&(partition.clone(), m.subpartition.0))
                    else {
                        continue;
                    };
                    // A resumed stream sends the segment it was cut in
                    // again from its start: what came before is dropped.
                    let so_far = &mut queue.received;
                    if so_far.skip > 0 && so_far.segment == m.segment.0 {
                        let n = (so_far.skip as usize).min(buffers.len());
                        buffers.drain(..n);
                        so_far.skip -= n as u32;
                    }
                    let complete = buffers
                        .last()
                        .is_some_and(|b| b.data_type == DataType::EndOfSegment);
                    so_far.arrived(m.segment.0, buffers.len() as u32, complete);
                    if buffers.is_empty() {
                        // Nothing of the batch is handed out: its credit
                        // goes back now.
                        drop(state);
                        if let Some(open) = shared.hop(context.slot, hop) {
                            let _ = open.client.send_stream(AddCredit {
                                stream_id: open.stream_id,
                                credit: 1,
                            });
                        }
                        continue;
                    }
                    let was_empty = queue.buffers.is_empty();
                    let count = buffers.len();
                    for (i, buffer) in buffers.into_iter().enumerate() {
                        queue.buffers.push_back(Received {
                            segment: m.segment.0,
                            buffer,
                            returns_credit: i + 1 == count,
                            hop,
                        });
                    }
                    let channel = queue.channel;
                    drop(state);
                    if was_empty && count > 0 {
                        shared.notify(&partition, &[channel]);
                    }
                }
                Err(e) => {
                    tracing::error!(%partition, subpartition = m.subpartition.0, segment = m.segment.0, %worker, error = %e, "read data rejected");
                    shared.fail(&partition, e);
                    return;
                }
            },
            StreamFrame::End(m) => {
                let mut state = shared.lock();
                if let Some(queue) = state.queues.get_mut(&(partition.clone(), m.subpartition.0)) {
                    queue.ended_at = Some(m.segment.0);
                    let channel = queue.channel;
                    drop(state);
                    shared.notify(&partition, &[channel]);
                }
            }
            StreamFrame::Redirect(m) => {
                if let Err(e) = follow_redirect(&shared, &context, hop, &m).await {
                    let e = if e.kind() == ErrorKind::Unavailable {
                        TierError::not_found(format!(
                            "worker {} holding part of partition {partition} is unreachable: {}",
                            m.to.address,
                            e.message()
                        ))
                    } else {
                        e.context(format!("follow partition {partition} to {}", m.to.address))
                    };
                    shared.fail(&partition, e);
                    return;
                }
            }
            StreamFrame::Error(m) => {
                shared.fail(
                    &partition,
                    m.error
                        .context(format!("worker {worker}, partition {partition}")),
                );
                return;
            }
        }
    }
}

/// Checks every extent's CRC32C and decodes the buffers, decompressing
/// those the producer agent compressed (at most `max_buffer` bytes each).
/// (The frame's extents were checked to cover its body on receipt.)
fn decode_read(
    partition: &PartitionId,
    m: &ReadData,
    max_buffer: usize,
) -> TierResult<Vec<Buffer>> {
    let body = m.body.clone().into_bytes();
    let (subpartition, segment) = (m.subpartition.0, m.segment.0);
    let mut at = 0usize;
    for extent in &m.extents {
        let end = at + extent.len as usize;
        let bytes = body.get(at..end).ok_or_else(|| {
            TierError::bad_input(format!(
                "read data body has {} bytes, extents say more",
                body.len()
            ))
        })?;
        let actual = crc32c::crc32c(bytes);
        if actual != extent.crc32c {
            return Err(TierError::corruption(format!(
                "partition {partition} subpartition {subpartition} segment {segment}: checksum mismatch (stored {:#010x}, read {actual:#010x})",
                extent.crc32c
            )));
        }
        at = end;
    }
    // `num_buffers` is the worker's word: room is made for no more buffers
    // than the body can hold (each has a header), whatever it says.
    let room = body.len() / terrace_tier_api::BUFFER_HEADER_LEN;
    let mut reader = BatchReader::new(body);
    let mut buffers = Vec::with_capacity((m.num_buffers as usize).min(room));
    while let Some((header, payload)) = reader
        .next_buffer()
        .map_err(|e| TierError::corruption(format!("partition {partition}: {}", e.message())))?
    {
        if header.subpartition != m.stored_subpartition || header.segment != m.segment {
            return Err(TierError::corruption(format!(
                "partition {partition}: buffer of subpartition {} segment {} in a read of subpartition {subpartition} (stored as {}) segment {segment}",
                header.subpartition.0, header.segment.0, m.stored_subpartition.0
            )));
        }
        let payload = if header.lz4 {
            unlz4(&payload, max_buffer).map_err(|e| {
                TierError::corruption(format!(
                    "partition {partition} subpartition {subpartition} segment {segment}: {}",
                    e.message()
                ))
            })?
        } else {
            payload
        };
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
        let hop = queue.hop;
        if let Some(r) = &received {
            if r.buffer.data_type == DataType::EndOfSegment {
                // Ask for the next segment now, so it arrives while the engine
                // is still busy with this one.
                queue.requested = segment.0 + 1;
                require = Some(segment.0 + 1);
            }
        }
        // Sent under the state lock: a stream resumed meanwhile asks for
        // what `requested` says, and must not be asked twice.
        if let (Some(next), Some(control)) = (require, self.shared.hop(stream, hop)) {
            let _ = control.client.send_stream(RequireSegment {
                stream_id: control.stream_id,
                subpartition,
                segment: SegmentId(next),
            });
        }
        drop(state);
        // The credit goes back to the stream the buffer came on.
        if let Some(r) = received.as_ref().filter(|r| r.returns_credit) {
            if let Some(control) = self.shared.hop(stream, r.hop) {
                let _ = control.client.send_stream(AddCredit {
                    stream_id: control.stream_id,
                    credit: 1,
                });
            }
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
        let hops: Vec<OpenHop> = self
            .shared
            .hops
            .lock()
            .expect("hops lock poisoned")
            .iter_mut()
            .flat_map(std::mem::take)
            .collect();
        for open in hops {
            let _ = open.client.send_stream(CloseStream {
                stream_id: open.stream_id,
            });
            open.client.unregister_stream(open.stream_id);
        }
        self.shared.workers.close();
        Ok(())
    }
}

impl Drop for ConsumerAgent {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use terrace_tier_api::protocol::Extent;
    use terrace_tier_api::{BatchBuilder, SegmentId, SubpartitionId};

    /// A worker's reply whose `num_buffers` says 4 billion sizes nothing: the
    /// buffers the body really holds are decoded (an allocation of
    /// `u32::MAX` buffers would abort the process, and with it the engine's
    /// JVM).
    #[test]
    fn a_read_reply_claiming_u32_max_buffers_allocates_for_its_body_only() {
        let mut builder = BatchBuilder::default();
        builder.push(
            SubpartitionId(3),
            SegmentId(1),
            &Buffer::data(Bytes::from_static(b"first")),
        );
        builder.push(
            SubpartitionId(3),
            SegmentId(1),
            &Buffer::data(Bytes::from_static(b"second")),
        );
        let body = builder.finish().bytes;
        let reply = ReadData {
            stream_id: StreamId(1),
            subpartition: SubpartitionId(3),
            segment: SegmentId(1),
            extents: vec![Extent {
                len: body.len() as u32,
                crc32c: crc32c::crc32c(&body),
            }],
            num_buffers: u32::MAX,
            stored_subpartition: SubpartitionId(3),
            body: body.into(),
        };
        let partition = PartitionId::new(vec![1]).expect("id");
        let buffers = decode_read(&partition, &reply, 1 << 20).expect("decodes");
        assert_eq!(buffers.len(), 2);
        // Sized by the body (39 bytes: two 14-byte headers and 11 of payload).
        assert_eq!(buffers.capacity(), 2);
        assert_eq!(&buffers[0].payload[..], b"first");
        assert_eq!(&buffers[1].payload[..], b"second");
    }
}
