//! The producer agent: segment rules and batching.

use terrace_rpc::clock;
use terrace_rpc::{Client, ClientOptions, Peer, Pool, io_runtime};
use terrace_tier_api::protocol::{
    AllocatePartition, CreatePartition, LocatePartition, PartitionMetrics, SealPartition,
    SplitPartition, WorkerAt,
};
use terrace_tier_api::{
    AgentConfig, Buffer, DataType, ErrorKind, PartitionKey, ProducerSpec, SegmentId,
    SubpartitionId, TierError, TierProducerAgent, TierResult, WorkerId, WriteOutcome,
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
    /// `segment_ended` because the partition was split: the next write
    /// answers "segment full" so the engine starts the next segment, on the
    /// next worker.
    ended_by_split: bool,
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
    /// Connection settings for workers and masters (with the job's token).
    options: ClientOptions,
    /// Connections to the workers holding the partition's parts.
    workers: Pool,
    /// Ids of the workers holding the partition's parts, first to current.
    parts: Vec<String>,
    /// A split that could not be carried out is not tried again before this.
    next_split_attempt: Option<std::time::Instant>,
    /// Some push was sent (on any part).
    pushed: bool,
    /// The address of the current part's worker.
    current_address: String,
}

/// How long a producer keeps writing to its worker after a split it could
/// not carry out (no other worker, a master unreachable) before it tries again.
const SPLIT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a producer that has not pushed yet waits for a worker the
/// masters say is restarting, at most.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(180);
const RESTART_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a worker that refused pushes as it stops is given to close its
/// connection when no master confirms that it is restarting.
const REFUSED_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// One attempt to reach a worker that may be back from a restart.
const RECONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Restarts of its worker one flush or seal waits through, at most.
const RESTARTS_WAITED: usize = 3;

impl ProducerAgent {
    /// Connects to the partition's worker and creates the partition there.
    pub fn new(config: AgentConfig, spec: ProducerSpec) -> TierResult<Self> {
        config.validate()?;
        let key = spec.descriptor.key()?;
        if spec.num_subpartitions == 0 {
            return Err(TierError::bad_input(format!(
                "{key}: a partition needs at least one subpartition"
            )));
        }
        let options = ClientOptions::for_agent(&config, format!("producer {}", key.partition))?
            .with_job_token(&spec.descriptor)?;
        let address = spec.descriptor.worker_address.clone();
        let workers = Pool::new(options.clone());
        let (client, first_worker, current_address) = io_runtime()
            .block_on(async {
                let peer = Peer::at(&address);
                let client = match workers.client(&peer).await {
                    Ok(client) => client,
                    Err(e) => {
                        // Nothing reached the worker. Reported so that
                        // nothing else is placed there until it heartbeats
                        // again (not after the master's worker timeout).
                        if e.kind() == ErrorKind::Unavailable {
                            report_unreachable(
                                &config,
                                &options,
                                &key,
                                &spec.descriptor.worker_id,
                                &e,
                            )
                            .await;
                            return relocate(&config, &options, &workers, &key, &spec, e)
                                .await
                                .map(|(c, id)| {
                                    let address = c.peer().to_string();
                                    (c, id, address)
                                });
                        }
                        return Err(e);
                    }
                };
                match create_on(&client, &key, &spec, Part::First).await {
                    Ok(()) => Ok((
                        client.clone(),
                        spec.descriptor.worker_id.clone(),
                        client.peer().to_string(),
                    )),
                    // The worker refused (decommissioning, at its partition
                    // limit) and created nothing. A lost connection is not
                    // taken as a refusal: the partition may exist there.
                    Err(e) if e.kind().is_transient() && !client.is_closed() => {
                        workers.forget(&peer, &client);
                        relocate(&config, &options, &workers, &key, &spec, e)
                            .await
                            .map(|(c, id)| {
                                let address = c.peer().to_string();
                                (c, id, address)
                            })
                    }
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| e.context(format!("create {key} on worker {address}")))?;
        let stored_subs = spec.num_subpartitions as usize;
        let pusher = Pusher::new(client, key.clone(), config.max_bytes_in_flight.as_u64());
        Ok(ProducerAgent {
            key,
            subs: (0..stored_subs)
                .map(|_| SubpartitionState::default())
                .collect(),
            batch: PushBatch::new(
                stored_subs,
                config.push_size.as_usize() + 64 * 1024,
                config.compression,
            ),
            pusher,
            closed: false,
            options,
            workers,
            parts: vec![first_worker],
            next_split_attempt: None,
            pushed: false,
            current_address,
            spec,
            config,
        })
    }

    /// Carries out a split the worker asked for: places the next part with a
    /// master, creates it there, ends every open segment on the current
    /// worker, and points the current part at the next. Later writes go to
    /// the next worker. A split that cannot be placed is put off (the
    /// partition stays where it is) and tried again later.
    fn split_if_asked(&mut self) -> TierResult<()> {
        if !self.pusher.split_requested() {
            return Ok(());
        }
        let now = clock::now();
        if self.next_split_attempt.is_some_and(|at| now < at) {
            return Ok(());
        }
        let next = io_runtime().block_on(async {
            let next = self.place_next_part().await?;
            let client = create_part(
                &self.workers,
                &next.address,
                &self.key,
                &self.spec,
                Part::Continuation,
            )
            .await?;
            Ok::<_, TierError>((next, client))
        });
        let (next, client) = match next {
            Ok(next) => next,
            Err(e) => {
                if self.wait_out_restart(&e)? {
                    return Ok(());
                }
                tracing::warn!(partition = %self.key, error = %e,
                    "the worker asked for a split that cannot be placed now; writing on where the partition is");
                self.pusher.clear_split_request();
                self.next_split_attempt = Some(now + SPLIT_RETRY);
                return Ok(());
            }
        };
        // A segment never spans parts: end every open one here.
        for sub in 0..self.subs.len() {
            let state = &self.subs[sub];
            if let (Some(segment), false) = (state.segment, state.segment_ended) {
                self.append_end_of_segment(sub, segment);
                let state = &mut self.subs[sub];
                state.segment_ended = true;
                state.ended_by_split = true;
            }
        }
        self.push_batch()?;
        let old = self.pusher.client().clone();
        let split = SplitPartition {
            key: self.key.clone(),
            next: next.clone(),
        };
        io_runtime()
            .block_on(async {
                self.pusher.drain().await?;
                old.call(split).await?;
                Ok::<_, TierError>(())
            })
            .map_err(|e| {
                e.context(format!(
                    "split {} from worker {} to {} at {}",
                    self.key,
                    self.parts.last().map_or("?", String::as_str),
                    next.id,
                    next.address
                ))
            })?;
        self.workers.forget(&Peer::at(old.peer()), &old);
        tracing::debug!(partition = %self.key, from = ?self.parts.last(), to = %next.id, "partition split");
        self.parts.push(next.id.into_string());
        self.current_address = next.address.clone();
        self.pusher = Pusher::new(
            client,
            self.key.clone(),
            self.config.max_bytes_in_flight.as_u64(),
        );
        Ok(())
    }

    /// Asks the masters (in order) for a worker holding no part of the
    /// partition yet.
    async fn place_next_part(&self) -> TierResult<WorkerAt> {
        let allocate = AllocatePartition {
            key: self.key.clone(),
            num_subpartitions: self.spec.num_subpartitions,
            exclude: worker_ids(&self.parts),
            relocated_from: None,
        };
        let allocated = Client::ask_first(&self.config.master_addresses, &self.options, allocate)
            .await
            .map_err(|e| e.context("place the next part"))?;
        Ok(allocated.worker)
    }

    pub fn key(&self) -> &PartitionKey {
        &self.key
    }

    /// Workers holding the partition's parts, first to current.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    fn check_open(&self) -> TierResult<()> {
        if self.closed {
            return Err(TierError::closed(format!(
                "producer of {} is closed",
                self.key
            )));
        }
        // Pushes cut by a restart are sent again (`reattach_if_cut`).
        if self.pusher.cut() {
            return Ok(());
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
        self.split_if_asked()?;
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
        if state.segment_ended && state.ended_by_split {
            // The engine starts the next segment, on the next part.
            return Ok(false);
        }
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
        self.reattach_if_cut()?;
        self.pushed = true;
        let (chunks, num_buffers) = self.batch.take();
        io_runtime().block_on(self.pusher.push(chunks, num_buffers))
    }

    /// Nothing was pushed yet and the connection to the partition's worker
    /// is gone: nothing is lost. The worker may be restarting (it keeps an
    /// empty open partition across its restart): wait for it while the
    /// masters say so, and create the partition there again (a create of a
    /// partition that is there is accepted); if it does not come back,
    /// place the partition on another worker, as for a worker unreachable
    /// at the first create.
    fn reattach_if_cut(&mut self) -> TierResult<()> {
        if !self.pusher.client().is_closed() && !self.pusher.cut() {
            return Ok(());
        }
        if self.pushed || self.parts.len() != 1 {
            return self.push_on_after_restart();
        }
        let lost = self.pusher.check().err().unwrap_or_else(|| {
            TierError::unavailable(format!(
                "the connection to worker {} closed before the first push",
                self.current_address
            ))
        });
        let first = self.parts[0].clone();
        let part = if first == self.spec.descriptor.worker_id {
            Part::First
        } else {
            Part::Relocated
        };
        let (client, worker_id) = io_runtime()
            .block_on(async {
                if let Some(client) = self.back_from_restart(&first, Some(part)).await {
                    return Ok((client, first));
                }
                relocate(
                    &self.config,
                    &self.options,
                    &self.workers,
                    &self.key,
                    &self.spec,
                    lost,
                )
                .await
            })
            .map_err(|e| e.context(format!("place {} again before its first push", self.key)))?;
        tracing::info!(partition = %self.key, worker = %worker_id,
            "the partition's worker went away before the first push; created it again");
        self.current_address = client.peer().to_string();
        self.parts[0] = worker_id;
        self.pusher = Pusher::new(
            client,
            self.key.clone(),
            self.config.max_bytes_in_flight.as_u64(),
        );
        Ok(())
    }

    /// The worker asked for a split that cannot be placed (`unplaced`: every
    /// other worker holds a part already, say). When it asks because it is
    /// restarting, pushing on would only be refused once it stops: this
    /// producer stops pushing instead (so the worker keeps the partition
    /// open), waits until every push is acknowledged and the worker has
    /// stopped, and pushes on once it is back. False when the worker is not
    /// restarting.
    fn wait_out_restart(&mut self, unplaced: &TierError) -> TierResult<bool> {
        let worker_id = self.parts.last().cloned().unwrap_or_default();
        if !self.masters_say_restarting(&worker_id) {
            return Ok(false);
        }
        tracing::info!(partition = %self.key, worker = %worker_id, error = %unplaced,
            "the worker is restarting and the partition cannot split away; waiting for it");
        // A push refused as the worker stops is sent again after it.
        if let Err(e) = io_runtime().block_on(self.pusher.drain()) {
            if !self.pusher.cut() {
                return Err(e);
            }
        }
        self.wait_until_stopped(&worker_id)?;
        self.push_on_after_restart()?;
        self.pusher.clear_split_request();
        Ok(true)
    }

    /// The connection to the current part's worker is gone after pushes
    /// (`pushed`): the worker may have stopped for a restart, keeping the
    /// partition open with every push it acknowledged. Goes on there once
    /// it is back, if no push failed and it holds exactly the bytes it
    /// acknowledged; otherwise the partition is lost (the engine re-runs
    /// this producer).
    /// Whether the masters say worker `worker_id` is restarting.
    fn masters_say_restarting(&self, worker_id: &str) -> bool {
        let ask = LocatePartition {
            key: self.key.clone(),
            worker: WorkerId::new(worker_id.to_string()).ok(),
        };
        io_runtime().block_on(async {
            Client::ask_first(&self.config.master_addresses, &self.options, ask)
                .await
                .is_ok_and(|located| located.restarting)
        })
    }

    /// Whether the connection to the current part's worker closes within
    /// `wait`.
    fn closes_within(&self, wait: std::time::Duration) -> bool {
        let deadline = clock::now() + wait;
        while !self.pusher.client().is_closed() {
            if clock::now() >= deadline {
                return false;
            }
            // Made inside the runtime: a timer needs its reactor.
            io_runtime().block_on(async { clock::sleep(RESTART_POLL / 4).await });
        }
        true
    }

    /// Waits (at most [`RESTART_WAIT`]) until the connection to the
    /// current part's worker `worker_id`, which is restarting, closes.
    fn wait_until_stopped(&self, worker_id: &str) -> TierResult<()> {
        let deadline = clock::now() + RESTART_WAIT;
        while !self.pusher.client().is_closed() {
            if clock::now() >= deadline {
                return Err(TierError::unavailable(format!(
                    "{}: worker {worker_id} said it was restarting and still runs after {RESTART_WAIT:?}",
                    self.key
                )));
            }
            // Made inside the runtime: a timer needs its reactor.
            io_runtime().block_on(async { clock::sleep(RESTART_POLL / 4).await });
        }
        Ok(())
    }

    /// The connection to the current part's worker is gone, or it refused
    /// pushes as it stopped: once it is back from its restart holding every
    /// push it acknowledged, goes on there, sending again the pushes it did
    /// not store. An error when it does not come back, holds something else,
    /// or a push failed for another reason.
    fn push_on_after_restart(&mut self) -> TierResult<()> {
        self.go_on_after_restart(false)
    }

    /// [`ProducerAgent::push_on_after_restart`]; `sealing`: the partition
    /// was being sealed, and a worker that sealed it before it stopped (the
    /// answer was cut) holds it sealed with every push.
    fn go_on_after_restart(&mut self, sealing: bool) -> TierResult<()> {
        // Every push has completed (acknowledged, failed or refused).
        let drained = io_runtime().block_on(self.pusher.drain());
        if drained.is_err() && !self.pusher.cut() {
            return drained;
        }
        let worker_id = self.parts.last().cloned().unwrap_or_default();
        if !self.pusher.client().is_closed() {
            // Refused while the worker stops: it must be restarting, as the
            // masters say, or (none answering in time, as on a loaded
            // machine) as its connection closing soon after shows.
            if !self.masters_say_restarting(&worker_id) && !self.closes_within(REFUSED_CLOSE_WAIT) {
                return self.pusher.check();
            }
            self.wait_until_stopped(&worker_id)?;
        }
        let acked = self.pusher.acked();
        let unacked = self.pusher.take_unacked();
        let lost = |why: String| {
            TierError::unavailable(format!(
                "{}: the connection to worker {worker_id} at {} is gone and {why}",
                self.key, self.current_address
            ))
        };
        let (client, metrics) = io_runtime()
            .block_on(async {
                let client = self.back_from_restart(&worker_id, None).await?;
                let metrics = client
                    .call(PartitionMetrics {
                        key: self.key.clone(),
                    })
                    .await
                    .ok()?;
                Some((client, metrics))
            })
            .ok_or_else(|| {
                // What cut it (a hung worker, a reset) says more than this.
                match self.pusher.check() {
                    Err(e) => e.context("its worker did not come back from a restart"),
                    Ok(()) => {
                        lost("it did not come back from a restart holding the partition".into())
                    }
                }
            })?;
        let stored: u64 = if self.spec.broadcast_only {
            metrics.subpartition_bytes.first().copied().unwrap_or(0)
        } else {
            metrics.subpartition_bytes.iter().sum()
        };
        // The worker stores pushes in order: those it stored without the
        // acknowledgement reaching here come first; the rest go again.
        let mut held = acked;
        let mut again = Vec::new();
        for sent in unacked {
            if again.is_empty() && held + u64::from(sent.len) <= stored {
                held += u64::from(sent.len);
            } else {
                again.push(sent);
            }
        }
        let sealed_ok = sealing && again.is_empty();
        if (metrics.sealed && !sealed_ok) || stored != held {
            return Err(lost(format!(
                "after its restart it holds {stored} bytes of the partition (sealed: {}), not the {acked} it acknowledged (and {} more it stored unacknowledged)",
                metrics.sealed,
                held - acked
            )));
        }
        tracing::info!(partition = %self.key, worker = %worker_id, bytes = stored,
            resent = again.len(), "the partition's worker is back from a restart holding every acknowledged push; pushing on");
        self.current_address = client.peer().to_string();
        self.pusher = Pusher::continuing(
            client,
            self.key.clone(),
            self.config.max_bytes_in_flight.as_u64(),
            stored,
        );
        for sent in again {
            io_runtime().block_on(self.pusher.push(sent.chunks, sent.num_buffers))?;
        }
        Ok(())
    }

    /// A connection to the current part's worker `worker_id` (with the
    /// partition created there again when `create` says how), once it is
    /// back from a restart (while the masters say it is restarting, at most
    /// [`RESTART_WAIT`]); `None` when it neither answers nor is restarting.
    async fn back_from_restart(&self, worker_id: &str, create: Option<Part>) -> Option<Client> {
        let peer = Peer::at(&self.current_address);
        let ask = LocatePartition {
            key: self.key.clone(),
            worker: WorkerId::new(worker_id).ok(),
        };
        let deadline = clock::now() + RESTART_WAIT;
        // A worker back from its restart serves before its first heartbeat
        // tells the masters it no longer restarts: once they say it is not
        // restarting, it is tried once more before it is given up.
        let mut last_try = false;
        loop {
            if let Ok(Ok(client)) =
                clock::timeout(RECONNECT_TIMEOUT, self.workers.client(&peer)).await
            {
                let Some(part) = create else {
                    return Some(client);
                };
                match create_on(&client, &self.key, &self.spec, part).await {
                    Ok(()) => return Some(client),
                    Err(e) => {
                        tracing::warn!(partition = %self.key, error = %e,
                            "creating the partition again on its restarted worker failed");
                        self.workers.forget(&peer, &client);
                        return None;
                    }
                }
            }
            if last_try || clock::now() >= deadline {
                return None;
            }
            let restarting =
                Client::ask_first(&self.config.master_addresses, &self.options, ask.clone())
                    .await
                    .is_ok_and(|located| located.restarting);
            if restarting {
                clock::sleep(RESTART_POLL).await;
            } else {
                last_try = true;
            }
        }
    }

    /// Waits until every push is acknowledged, and seals the partition's
    /// last part. A worker that stops for a restart meanwhile (pushes
    /// refused, the connection cut) is waited for, and what it did not store
    /// is sent again ([`ProducerAgent::push_on_after_restart`]); a seal is
    /// idempotent, so one cut before its answer is asked again.
    fn seal_through_restart(&mut self) -> TierResult<()> {
        let seal = SealPartition {
            key: self.key.clone(),
        };
        for _ in 0..RESTARTS_WAITED {
            let sealed = io_runtime().block_on(async {
                self.pusher.drain().await?;
                self.pusher.client().call(seal.clone()).await?;
                Ok::<_, TierError>(())
            });
            match sealed {
                Err(e) if e.kind() == ErrorKind::Unavailable && self.worker_stopping() => {
                    tracing::info!(partition = %self.key, error = %e,
                        "the worker stopped while the partition was sealed; sealing once it is back");
                    self.go_on_after_restart(true)?;
                }
                other => return other,
            }
        }
        Err(TierError::unavailable(format!(
            "{}: its worker restarted {RESTARTS_WAITED} times while it was sealed",
            self.key
        )))
    }

    /// Whether the current part's worker is stopping for a restart: its
    /// pushes were refused or cut, or its connection is gone.
    fn worker_stopping(&self) -> bool {
        self.pusher.cut() || self.pusher.client().is_closed()
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
        for _ in 0..RESTARTS_WAITED {
            match io_runtime().block_on(self.pusher.drain()) {
                Err(e) if e.kind() == ErrorKind::Unavailable && self.worker_stopping() => {
                    self.push_on_after_restart()?;
                }
                other => return other,
            }
        }
        Err(TierError::unavailable(format!(
            "{}: its worker restarted {RESTARTS_WAITED} times during one flush",
            self.key
        )))
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
        self.split_if_asked()?;
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
        self.reattach_if_cut()?;
        self.check_open()?;
        self.push_batch()?;
        self.closed = true;
        let result = self.seal_through_restart();
        self.pusher.client().close();
        self.workers.close();
        result.map_err(|e| e.context(format!("close producer of {}", self.key)))
    }
}

impl Drop for ProducerAgent {
    fn drop(&mut self) {
        self.pusher.client().close();
        self.workers.close();
    }
}

/// The ids of `parts` (the workers holding the partition's parts), as a
/// master takes them (any that is not a valid id could not be one).
fn worker_ids(parts: &[String]) -> Vec<WorkerId> {
    parts
        .iter()
        .filter_map(|id| WorkerId::new(id.clone()).ok())
        .collect()
}

/// What a `CreatePartition` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The partition, on the worker its descriptor names.
    First,
    /// The next part of a split partition.
    Continuation,
    /// The whole partition, on another worker than its descriptor names
    /// (that one was unreachable).
    Relocated,
}

/// Connects to a worker and creates the partition (or its next part) there.
async fn create_part(
    workers: &Pool,
    address: &str,
    key: &PartitionKey,
    spec: &ProducerSpec,
    part: Part,
) -> TierResult<Client> {
    let client = workers.client(&Peer::at(address)).await?;
    create_on(&client, key, spec, part).await?;
    Ok(client)
}

async fn create_on(
    client: &Client,
    key: &PartitionKey,
    spec: &ProducerSpec,
    part: Part,
) -> TierResult<()> {
    client
        .call(CreatePartition {
            key: key.clone(),
            num_subpartitions: spec.num_subpartitions,
            broadcast_only: spec.broadcast_only,
            continuation: part == Part::Continuation,
            relocated: part == Part::Relocated,
        })
        .await?;
    Ok(())
}

/// Workers a producer tries after its placed one was unreachable.
const RELOCATION_ATTEMPTS: usize = 3;

/// The partition's placed worker was unreachable before anything was pushed
/// (`unreachable`): asks a master for another worker (telling it where the
/// partition moved, so consumers can locate it) and creates the whole
/// partition there. Returns the connection and the worker's id, or the first
/// error when no master or no other worker can take it.
async fn relocate(
    config: &AgentConfig,
    options: &ClientOptions,
    workers: &Pool,
    key: &PartitionKey,
    spec: &ProducerSpec,
    unreachable: TierError,
) -> TierResult<(Client, String)> {
    if config.master_addresses.is_empty() {
        return Err(unreachable);
    }
    let from = spec.descriptor.worker_id.clone();
    let mut tried = vec![from.clone()];
    let mut last = unreachable.clone();
    for _ in 0..RELOCATION_ATTEMPTS {
        let allocate = AllocatePartition {
            key: key.clone(),
            num_subpartitions: spec.num_subpartitions,
            exclude: worker_ids(&tried),
            relocated_from: WorkerId::new(from.clone()).ok(),
        };
        let placed = Client::ask_first(&config.master_addresses, options, allocate).await;
        let (worker_id, address) = match placed {
            Ok(allocated) => (allocated.worker.id.into_string(), allocated.worker.address),
            Err(e) => {
                return Err(TierError::new(
                    unreachable.kind(),
                    format!(
                        "{}; no other worker: {}",
                        unreachable.message(),
                        e.message()
                    ),
                ));
            }
        };
        let peer = Peer::at(&address);
        let client = match workers.client(&peer).await {
            Ok(client) => client,
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                report_unreachable(config, options, key, &worker_id, &e).await;
                tried.push(worker_id);
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        match create_on(&client, key, spec, Part::Relocated).await {
            Ok(()) => {
                tracing::warn!(partition = %key, from = %from, to = %worker_id,
                    "the partition's worker was unreachable; created the partition on another worker");
                return Ok((client, worker_id));
            }
            // Refused, nothing created: try another.
            Err(e) if e.kind().is_transient() && !client.is_closed() => {
                workers.forget(&peer, &client);
                tried.push(worker_id);
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.context(format!(
        "relocating {key} away from unreachable worker {from}: {RELOCATION_ATTEMPTS} other workers failed too"
    )))
}

/// Tells a master that `key`'s producer cannot reach `worker_id`.
async fn report_unreachable(
    config: &AgentConfig,
    options: &ClientOptions,
    key: &PartitionKey,
    worker_id: &str,
    error: &TierError,
) {
    let Ok(worker) = WorkerId::new(worker_id) else {
        return;
    };
    Client::report_unreachable(&config.master_addresses, options, &key.job, &worker, error).await;
}
