//! The read-stream engine: one task per stream opened by `OpenStream`
//! (see `cmd::open_stream`), fed `RequireSegment` and `AddCredit` through
//! its [`StreamHandle`](crate::context::StreamHandle).
//!
//! A stream serves one partition's subpartition range to one reader. For each
//! subpartition the reader names the segment it wants next; the stream sends
//! that segment's extents in write order, one `ReadData` frame per credit,
//! and stops after the segment's END_OF_SEGMENT until the next segment is
//! required. A segment not written yet parks the stream until the partition
//! changes (pipelined reads); a segment that will never exist gets
//! `SubpartitionEnd`; a released partition gets `StreamError`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use object_store::path::Path as ObjectPath;
use terrace_rpc::FrameSender;
use terrace_rpc::clock;
use terrace_tier_api::protocol::{
    Extent, ReadData, StreamError, StreamId, StreamOpened, SubpartitionEnd, SubpartitionRedirect,
    Wire, WorkerAt,
};
use terrace_tier_api::{
    ErrorKind, PartitionKey, SegmentId, SubpartitionId, TierError, TierResult, WorkerId,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::context::{Shared, StreamInput};
use crate::store::counters::{Counters, ErrorClass, Occupancy, Occupied};
use crate::store::{Charge, Partition, ReadStep, Source, cost, single_object_range};

/// Smallest read-ahead window opened when the budget cannot take a full
/// `read_ahead` one.
const MIN_WINDOW: u64 = 1 << 20;

/// What a reader asked for in `OpenStream`, validated.
#[derive(Debug)]
pub(crate) struct Request {
    pub request_id: u64,
    pub stream_id: u64,
    pub key: PartitionKey,
    pub first: u32,
    pub last: u32,
    pub credits: u32,
}

/// Starts the task serving `request` over `sender` until its reader is done,
/// the partition fails, or `cancel` fires. `charge` is what the stream holds
/// of the metadata budget; `connection_reads` is its connection's share of
/// read memory; `inputs` brings the reader's later frames.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    sender: FrameSender,
    request: Request,
    charge: Charge,
    connection_reads: Arc<Semaphore>,
    inputs: mpsc::Receiver<(StreamInput, Charge)>,
    cancel: CancellationToken,
) {
    let stream = Stream {
        _open: Occupied::new(&shared.store.counters, Occupancy::Stream),
        shared,
        sender,
        stream_id: request.stream_id,
        key: request.key,
        first: request.first,
        last: request.last,
        credits: request.credits,
        subs: BTreeMap::new(),
        charge,
        cursor: 0,
        inflight: FuturesUnordered::new(),
        connection_reads,
        ready: None,
        wanting: None,
    };
    tokio::spawn(stream.run(request.request_id, inputs, cancel));
}

struct Stream {
    shared: Arc<Shared>,
    sender: FrameSender,
    stream_id: u64,
    key: PartitionKey,
    first: u32,
    last: u32,
    credits: u32,
    /// The subpartitions of the range with something going on (a segment
    /// required, a read under way or a window open), by their offset in the
    /// range: the stream holds state for what its reader asked for, never
    /// for the whole range.
    subs: BTreeMap<usize, Sub>,
    /// What the stream and `subs` take of the metadata budget.
    charge: Charge,
    /// Where the next round-robin look starts (an offset in the range).
    cursor: usize,
    /// Reads under way, at most one per subpartition (so each one's frames
    /// go out in order) and no more than the credits; reads from the object
    /// store of different subpartitions overlap.
    inflight: FuturesUnordered<BoxFuture<'static, Done>>,
    /// The connection's share of read memory (`server.max_send_queue`).
    connection_reads: Arc<Semaphore>,
    /// Read memory acquired after waiting for it, for the next read.
    ready: Option<ReadMemory>,
    /// Bytes of read memory the next read waits for.
    wanting: Option<u32>,
    /// Counts the stream in `terrace_worker_streams_open` while it lives.
    _open: Occupied,
}

/// What a stream holds for one subpartition of its range.
#[derive(Default)]
struct Sub {
    /// The segment wanted and the next extent in it.
    required: Option<(u32, usize)>,
    /// A read of it is under way.
    busy: bool,
    /// Object bytes fetched ahead of the reader.
    window: Option<Window>,
}

impl Sub {
    fn idle(&self) -> bool {
        self.required.is_none() && !self.busy && self.window.is_none()
    }
}

/// One read under way: counted in `terrace_worker_reads_in_flight` until
/// it is done, and timed into `terrace_worker_read_duration_seconds`.
struct ReadTimer {
    counters: Arc<Counters>,
    started: Instant,
    _in_flight: Occupied,
}

impl ReadTimer {
    fn start(counters: &Arc<Counters>) -> Self {
        ReadTimer {
            counters: Arc::clone(counters),
            started: clock::now(),
            _in_flight: Occupied::new(counters, Occupancy::Read),
        }
    }

    fn finish(self) {
        self.counters
            .read_seconds
            .observe(clock::now().saturating_duration_since(self.started));
    }
}

/// Most reads one stream has under way at once.
const MAX_INFLIGHT_READS: usize = 16;

/// Read memory held by one read body from before it is read until the
/// connection's writer has sent it: from the worker's `read_memory` and from
/// its connection's share (`server.max_send_queue`), so a reader that stops
/// reading holds at most its connection's share.
#[derive(Debug)]
struct ReadMemory {
    worker: OwnedSemaphorePermit,
    _connection: OwnedSemaphorePermit,
}

impl ReadMemory {
    fn try_take(worker: &Arc<Semaphore>, connection: &Arc<Semaphore>, n: u32) -> Option<Self> {
        let connection = Arc::clone(connection).try_acquire_many_owned(n).ok()?;
        let worker = Arc::clone(worker).try_acquire_many_owned(n).ok()?;
        Some(ReadMemory {
            worker,
            _connection: connection,
        })
    }

    async fn take(worker: Arc<Semaphore>, connection: Arc<Semaphore>, n: u32) -> Option<Self> {
        let connection = connection.acquire_many_owned(n).await.ok()?;
        let worker = worker.acquire_many_owned(n).await.ok()?;
        Some(ReadMemory {
            worker,
            _connection: connection,
        })
    }

    fn bytes(&self) -> usize {
        self.worker.num_permits()
    }
}

/// A read body and the read memory it holds until the connection's writer
/// has sent it (and dropped the last slice of it).
struct HeldBody {
    body: Bytes,
    _memory: ReadMemory,
}

impl AsRef<[u8]> for HeldBody {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

/// Object bytes of one subpartition fetched ahead: one ranged GET over the
/// back-to-back extents from the reader's position on (across segments, up
/// to `read_ahead` bytes), handed out batch by batch. Against a store whose
/// every GET costs a round trip of milliseconds, this turns one GET per
/// batch into one per window, and the next segment is on its way while the
/// reader still asks for it.
struct Window {
    key: ObjectPath,
    range: Range<u64>,
    body: WindowBody,
}

enum WindowBody {
    Fetching(tokio::task::JoinHandle<TierResult<Bytes>>),
    Ready(Bytes),
}

impl Window {
    fn covers(&self, key: &ObjectPath, range: &Range<u64>) -> bool {
        &self.key == key && self.range.start <= range.start && range.end <= self.range.end
    }

    /// The bytes of `range` (which the window covers), and the window back
    /// unless `range` was its end.
    async fn take(self, range: Range<u64>) -> (TierResult<Bytes>, Option<Window>) {
        let body = match self.body {
            WindowBody::Ready(body) => body,
            WindowBody::Fetching(handle) => match handle.await {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => return (Err(e), None),
                Err(e) => {
                    let e = TierError::internal(format!("read-ahead task failed: {e}"));
                    return (Err(e), None);
                }
            },
        };
        // `read_ahead` checked that the body has the window's length.
        let from = (range.start - self.range.start) as usize;
        let to = (range.end - self.range.start) as usize;
        let slice = body.slice(from..to);
        let rest = (range.end < self.range.end).then(|| Window {
            key: self.key,
            range: self.range,
            body: WindowBody::Ready(body),
        });
        (Ok(slice), rest)
    }
}

/// A finished read of one batch.
struct Done {
    index: usize,
    segment: u32,
    position: usize,
    extents: Vec<crate::store::Extent>,
    /// The body's chunks, sent back to back.
    body: TierResult<Vec<Bytes>>,
    /// What is left of the window the batch came from.
    window: Option<Window>,
    /// The read memory the body is counted against.
    memory: ReadMemory,
}

/// What a command may have made ready.
enum Touched {
    Nothing,
    One(usize),
    All,
}

/// Which subpartitions a step looks at.
#[derive(Default)]
struct Look {
    all: bool,
    /// Named by commands since the last step (when not `all`); at most the
    /// stream's command queue.
    some: Vec<usize>,
}

impl Look {
    fn add(&mut self, touched: Touched) {
        match touched {
            Touched::Nothing => {}
            Touched::All => {
                self.all = true;
                self.some = Vec::new();
            }
            Touched::One(_) if self.all => {}
            Touched::One(index) => self.some.push(index),
        }
    }
}

enum Step {
    /// Something was sent or changed; look again.
    Progress,
    /// Nothing to do until a command or a partition change.
    Idle,
    /// The stream is over.
    Finished,
}

impl Stream {
    async fn run(
        mut self,
        request_id: u64,
        mut rx: mpsc::Receiver<(StreamInput, Charge)>,
        cancel: CancellationToken,
    ) {
        // A decommissioning worker takes no new partitions: one it does not
        // hold now will never come (its producer went elsewhere).
        let wait = if self.shared.decommission.is_started() {
            Duration::ZERO
        } else {
            self.shared.config.partition_wait_timeout
        };
        let partition = tokio::select! {
            _ = cancel.cancelled() => return,
            p = self.shared.store.get_or_wait(&self.key, wait) => p,
        };
        let partition = match partition {
            Ok(p) => p,
            Err(e) => {
                self.shared.store.counters.errors.count(&e);
                self.sender.send(e.to_reply(request_id), Bytes::new());
                return;
            }
        };
        let num_subpartitions = partition.meta().num_subpartitions;
        if self.last >= num_subpartitions {
            let e = TierError::bad_input(format!(
                "subpartition {} out of range: {} has {num_subpartitions}",
                self.last, self.key
            ));
            self.shared.store.counters.errors.count(&e);
            self.sender.send(e.to_reply(request_id), Bytes::new());
            return;
        }
        self.send(
            StreamOpened {
                stream_id: StreamId(self.stream_id),
                num_subpartitions,
            },
            request_id,
        );
        let mut version = partition.subscribe();
        // What the next step looks at: every subpartition with a segment
        // required (after a change of the partition, a credit, a finished
        // read), or only those a RequireSegment just named, so that a reader
        // naming subpartitions one by one costs O(each), not O(all so far).
        let mut look = Look {
            all: true,
            some: Vec::new(),
        };
        loop {
            while let Ok((command, _charge)) = rx.try_recv() {
                match self.apply(command) {
                    Ok(touched) => look.add(touched),
                    Err(e) => {
                        self.fail(&e);
                        return;
                    }
                }
            }
            if version.has_changed().unwrap_or(true) {
                version.borrow_and_update();
                look.all = true;
            }
            match self.step(&partition, &look).await {
                Step::Progress => continue,
                Step::Finished => return,
                Step::Idle => look = Look::default(),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                command = rx.recv() => match command {
                    Some((command, _charge)) => match self.apply(command) {
                        Ok(touched) => look.add(touched),
                        Err(e) => {
                            self.fail(&e);
                            return;
                        }
                    },
                    None => return,
                },
                changed = version.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    look.all = true;
                }
                memory = ReadMemory::take(
                    Arc::clone(&self.shared.read_budget),
                    Arc::clone(&self.connection_reads),
                    self.wanting.unwrap_or(0),
                ), if self.wanting.is_some() => {
                    let Some(memory) = memory else { return };
                    self.wanting = None;
                    self.ready = Some(memory);
                    look.all = true;
                }
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                    if !self.finish_read(&partition, done) {
                        return;
                    }
                    look.all = true;
                }
                // A safety net against a missed wake-up; cheap when idle.
                _ = clock::sleep(Duration::from_secs(5)) => look.all = true,
            }
        }
    }

    /// Applies a command; returns the subpartition it named (`None`: it
    /// may make any of them ready).
    fn apply(&mut self, command: StreamInput) -> TierResult<Touched> {
        match command {
            StreamInput::Credit(0) => Ok(Touched::Nothing),
            StreamInput::Credit(n) => {
                let max = self.shared.config.limits.max_stream_credits;
                let credits = u64::from(self.credits) + u64::from(n);
                if credits > u64::from(max) {
                    return Err(TierError::bad_input(format!(
                        "AddCredit {n} would give stream {} {credits} credits, more than {max} (limits.max_stream_credits)",
                        self.stream_id
                    )));
                }
                self.credits = credits as u32;
                Ok(Touched::All)
            }
            StreamInput::Require {
                subpartition,
                segment,
            } => {
                if subpartition < self.first || subpartition > self.last {
                    return Err(TierError::bad_input(format!(
                        "subpartition {subpartition} is outside this stream's range {}..={}",
                        self.first, self.last
                    )));
                }
                let index = (subpartition - self.first) as usize;
                if !self.subs.contains_key(&index) {
                    self.charge.grow(
                        cost::STREAM_SUBPARTITION,
                        &format!(
                            "subpartition {subpartition} of read stream {}",
                            self.stream_id
                        ),
                    )?;
                }
                self.subs.entry(index).or_default().required = Some((segment, 0));
                Ok(Touched::One(index))
            }
        }
    }

    /// The state of subpartition `index` (an offset in the range), if any.
    fn sub(&mut self, index: usize) -> Option<&mut Sub> {
        self.subs.get_mut(&index)
    }

    /// Forgets subpartition `index` once nothing goes on there.
    fn tidy(&mut self, index: usize) {
        if self.subs.get(&index).is_some_and(Sub::idle) {
            self.subs.remove(&index);
            self.charge.shrink(cost::STREAM_SUBPARTITION);
        }
    }

    /// Sets what is required of subpartition `index` (it has state).
    fn set_required(&mut self, index: usize, required: Option<(u32, usize)>) {
        if let Some(sub) = self.sub(index) {
            sub.required = required;
        }
        self.tidy(index);
    }

    /// Ends the stream with `e` (counted in the worker's errors).
    fn fail(&self, e: &TierError) {
        self.shared.store.counters.errors.count(e);
        self.send_error(e);
    }

    fn send_error(&self, e: &TierError) {
        self.send(
            StreamError {
                stream_id: StreamId(self.stream_id),
                error: e.clone(),
            },
            0,
        );
    }

    /// Queues a typed frame (its body's chunks as they are); false when the
    /// connection is gone.
    fn send(&self, frame: impl Wire, request_id: u64) -> bool {
        let (message, body) = frame.into_frame(request_id);
        self.sender.send_chunks(message, body.into_chunks())
    }

    /// Sends a finished read (or fails the stream); false when the stream is over.
    fn finish_read(&mut self, partition: &Arc<Partition>, done: Done) -> bool {
        let index = done.index;
        let Some(sub) = self.sub(index) else {
            return true;
        };
        sub.busy = false;
        sub.window = done.window;
        if sub.required != Some((done.segment, done.position)) {
            // The reader moved on (a new RequireSegment): drop the stale batch.
            self.tidy(index);
            return true;
        }
        let subpartition = self.first + index as u32;
        let body = match done.body {
            Ok(body) => body,
            Err(e) => {
                // Counted as what went wrong, not as what the reader is told.
                let class = ErrorClass::of(&e);
                // Data this worker cannot read (a failing disk, a truncated
                // file, an object store that failed every retry) is lost to
                // the reader: the engine must run its producer again, which
                // is what partition-not-found tells it.
                let e = match e.kind() {
                    ErrorKind::PartitionNotFound => e.context(format!("read {}", self.key)),
                    _ => TierError::not_found(format!(
                        "read {}: its data could not be read: {}",
                        self.key,
                        e.message()
                    )),
                };
                tracing::error!(partition = %self.key, subpartition, segment = done.segment, error = %e, "read failed");
                self.shared.store.counters.errors.add(class);
                self.send_error(&e);
                return false;
            }
        };
        let mut body = body;
        let bytes: usize = body.iter().map(Bytes::len).sum();
        // The last chunk is sent last: it holds the read memory until then.
        if let Some(last) = body.pop() {
            body.push(Bytes::from_owner(HeldBody {
                body: last,
                _memory: done.memory,
            }));
        }
        self.credits = self.credits.saturating_sub(1);
        self.set_required(
            index,
            Some((done.segment, done.position + done.extents.len())),
        );
        self.cursor = index + 1;
        let num_buffers: u32 = done.extents.iter().map(|e| e.num_buffers).sum();
        let counters = &self.shared.store.counters;
        counters
            .bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
        counters
            .buffers_read
            .fetch_add(u64::from(num_buffers), Ordering::Relaxed);
        let sent = self.send(
            ReadData {
                stream_id: StreamId(self.stream_id),
                subpartition: SubpartitionId(subpartition),
                segment: SegmentId(done.segment),
                extents: done
                    .extents
                    .iter()
                    .map(|e| Extent {
                        len: e.len,
                        crc32c: e.crc32c,
                    })
                    .collect(),
                num_buffers,
                stored_subpartition: SubpartitionId(if partition.meta().broadcast_only {
                    0
                } else {
                    subpartition
                }),
                body: body.into(),
            },
            0,
        );
        if sent {
            self.prefetch_next_segment(
                partition,
                index,
                done.segment,
                done.position + done.extents.len(),
            );
        }
        sent
    }

    /// When the batch just sent ended its segment and no window covers what
    /// follows, opens one at the next segment if it starts in the object
    /// store: the reader asks for it only after handing out this batch, a
    /// round trip later.
    fn prefetch_next_segment(
        &mut self,
        partition: &Arc<Partition>,
        index: usize,
        segment: u32,
        position: usize,
    ) {
        if self.subs.get(&index).is_none_or(|s| s.window.is_some()) {
            return;
        }
        let subpartition = self.first + index as u32;
        let max_bytes = self.shared.config.read_batch_size.as_usize();
        if matches!(
            partition.next_read(subpartition, segment, position, max_bytes),
            ReadStep::SegmentDone
        ) {
            let window = self.open_window(partition, index, segment + 1, 0, 0);
            if let Some(sub) = self.sub(index) {
                sub.window = window;
            }
        }
    }

    /// Starts a GET of the object run at (`segment`, `position`) of
    /// subpartition `index`, at least `min_bytes` long when the run is;
    /// `None` when that data is not in the object store, reading ahead is
    /// off, or the read-ahead budget is taken.
    fn open_window(
        &self,
        partition: &Arc<Partition>,
        index: usize,
        segment: u32,
        position: usize,
        min_bytes: u64,
    ) -> Option<Window> {
        let tiers = self.shared.store.tiers();
        if tiers.read_ahead == 0 {
            return None;
        }
        let subpartition = self.first + index as u32;
        // A window of `read_ahead` at most, and of half the free read-ahead
        // budget, so that many streams at once share it in windows rather
        // than a few take it all and the rest fall back to batch-sized GETs;
        // where even that is short, halves down to `MIN_WINDOW`.
        let mut want = tiers
            .read_ahead
            .min(tiers.ahead_free() / 2)
            .max(MIN_WINDOW)
            .max(min_bytes);
        let (key, range, permit) = loop {
            let (key, range) = partition.object_run(subpartition, segment, position, want)?;
            if let Some(permit) = tiers.try_reserve_ahead(range.end - range.start) {
                break (key, range, permit);
            }
            let smaller = (range.end - range.start).min(want) / 2;
            if smaller < MIN_WINDOW.max(min_bytes) {
                return None;
            }
            want = smaller;
        };
        let shared = Arc::clone(&self.shared);
        let (k, r) = (key.clone(), range.clone());
        let handle =
            tokio::spawn(async move { shared.store.tiers().read_ahead(&k, r, permit).await });
        Some(Window {
            key,
            range,
            body: WindowBody::Fetching(handle),
        })
    }

    /// A window holding exactly the object range of `sources`: the
    /// subpartition's current one, or a new one.
    fn window_for(
        &mut self,
        partition: &Arc<Partition>,
        index: usize,
        segment: u32,
        position: usize,
        sources: &[Source],
    ) -> Option<(Window, Range<u64>)> {
        let (key, range) = single_object_range(sources)?;
        if let Some(window) = self.sub(index).and_then(|s| s.window.take()) {
            if window.covers(&key, &range) {
                return Some((window, range));
            }
        }
        let window =
            self.open_window(partition, index, segment, position, range.end - range.start)?;
        window.covers(&key, &range).then_some((window, range))
    }

    /// Read memory for a `len`-byte read: what was acquired after a wait, or
    /// taken at once; `None` (and the wait set up) when it is short.
    fn take_read_memory(&mut self, len: u64) -> Option<ReadMemory> {
        // One extent can be larger than a whole budget (a push's data for one
        // subpartition): it then takes all of it.
        let share = self.shared.config.server.max_send_queue.as_u64();
        let n = len.clamp(1, self.shared.config.read_memory.as_u64().min(share)) as u32;
        if let Some(ready) = self.ready.take() {
            if ready.bytes() >= n as usize {
                return Some(ready);
            }
        }
        let memory = ReadMemory::try_take(&self.shared.read_budget, &self.connection_reads, n);
        if memory.is_none() {
            self.wanting = Some(n);
        }
        memory
    }

    /// Looks at every subpartition once, from the round-robin cursor; sends at
    /// most one data frame.
    async fn step(&mut self, partition: &Arc<Partition>, look: &Look) -> Step {
        let max_bytes = self.shared.config.read_batch_size.as_usize();
        let mut progressed = false;
        // The subpartitions with a segment required, from the cursor on.
        let wanted: Vec<(usize, u32, usize)> = if look.all {
            self.subs
                .range(self.cursor..)
                .chain(self.subs.range(..self.cursor))
                .filter_map(|(&index, sub)| sub.required.map(|(g, p)| (index, g, p)))
                .collect()
        } else {
            look.some
                .iter()
                .filter_map(|index| {
                    let sub = self.subs.get(index)?;
                    sub.required.map(|(g, p)| (*index, g, p))
                })
                .collect()
        };
        for (index, segment, position) in wanted {
            let subpartition = self.first + index as u32;
            match partition.next_read(subpartition, segment, position, max_bytes) {
                ReadStep::Wait => {}
                ReadStep::SegmentDone => {
                    self.set_required(index, None);
                }
                ReadStep::End => {
                    self.set_required(index, None);
                    self.send(
                        SubpartitionEnd {
                            stream_id: StreamId(self.stream_id),
                            subpartition: SubpartitionId(subpartition),
                            segment: SegmentId(segment),
                        },
                        0,
                    );
                    progressed = true;
                }
                ReadStep::Redirect(next) => {
                    self.set_required(index, None);
                    // The forward was validated when the handover named it.
                    let to = match WorkerId::new(next.worker_id) {
                        Ok(id) => WorkerAt::new(id, next.address),
                        Err(e) => {
                            self.fail(&e.context(format!("redirect {}", self.key)));
                            return Step::Finished;
                        }
                    };
                    self.send(
                        SubpartitionRedirect {
                            stream_id: StreamId(self.stream_id),
                            subpartition: SubpartitionId(subpartition),
                            segment: SegmentId(segment),
                            to,
                        },
                        0,
                    );
                    progressed = true;
                }
                ReadStep::Failed(e) => {
                    self.fail(&e);
                    return Step::Finished;
                }
                ReadStep::Batch { extents, sources } => {
                    if self.subs.get(&index).is_none_or(|s| s.busy)
                        || self.credits as usize <= self.inflight.len()
                        || self.inflight.len() >= MAX_INFLIGHT_READS
                        || self.wanting.is_some()
                    {
                        continue;
                    }
                    let len: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
                    let Some(memory) = self.take_read_memory(len) else {
                        continue;
                    };
                    if let Some((window, range)) =
                        self.window_for(partition, index, segment, position, &sources)
                    {
                        if let Some(sub) = self.sub(index) {
                            sub.busy = true;
                        }
                        let timer = ReadTimer::start(&self.shared.store.counters);
                        self.inflight.push(Box::pin(async move {
                            let (body, window) = window.take(range).await;
                            timer.finish();
                            let body = body.map(|b| vec![b]);
                            Done {
                                index,
                                segment,
                                position,
                                extents,
                                body,
                                window,
                                memory,
                            }
                        }));
                        progressed = true;
                        continue;
                    }
                    // Object data, no window to be had (the read-ahead budget
                    // is taken): while this stream has reads in flight, whose
                    // bodies free budget as they go out, the subpartition
                    // waits for a window instead of fetching a batch-sized
                    // range of its own.
                    if !self.inflight.is_empty()
                        && self.shared.store.tiers().read_ahead > 0
                        && sources.iter().all(|s| matches!(s, Source::Object { .. }))
                    {
                        self.ready = Some(memory);
                        continue;
                    }
                    if let Some(sub) = self.sub(index) {
                        sub.busy = true;
                    }
                    let shared = Arc::clone(&self.shared);
                    let timer = ReadTimer::start(&shared.store.counters);
                    self.inflight.push(Box::pin(async move {
                        let body = shared.store.tiers().read(sources).await;
                        timer.finish();
                        Done {
                            index,
                            segment,
                            position,
                            extents,
                            body,
                            window: None,
                            memory,
                        }
                    }));
                    progressed = true;
                }
            }
        }
        if progressed {
            Step::Progress
        } else {
            Step::Idle
        }
    }
}
