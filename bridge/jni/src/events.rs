//! Events that start on Rust threads and are fetched by Java threads blocked
//! in a `*WaitEvents` call: the master agent's lost partitions
//! ([`WaitQueue`]) and the consumer's "stream has data or failed"
//! ([`ReadySet`]). Rust never calls into the JVM; closing wakes the waiter.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use terrace_rpc::clock;
use terrace_tier_api::{JobId, PartitionId};

/// What a wait returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<T> {
    Events(T),
    TimedOut,
    Closed,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves the state consistent at each step.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Blocks on `wake` for up to `timeout` until `check` decides (returns
/// `Some`), checking once more after every wake-up; `TimedOut` otherwise.
fn wait_for<S, R>(
    state: &Mutex<S>,
    wake: &Condvar,
    timeout: Duration,
    mut check: impl FnMut(&mut S) -> Option<Waited<R>>,
) -> Waited<R> {
    let deadline = clock::now() + timeout;
    let mut guard = lock(state);
    loop {
        if let Some(decided) = check(&mut guard) {
            return decided;
        }
        let now = clock::now();
        if now >= deadline {
            return Waited::TimedOut;
        }
        guard = wake
            .wait_timeout(guard, deadline - now)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner().0);
    }
}

#[derive(Debug)]
struct QueueState<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// An unbounded FIFO of events with a blocking, timed drain. Events are rare
/// (a lost worker), so unbounded is fine.
#[derive(Debug)]
pub struct WaitQueue<T> {
    state: Mutex<QueueState<T>>,
    wake: Condvar,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }
}

impl<T> WaitQueue<T> {
    /// Queues `item`; dropped if the queue is closed.
    pub fn push(&self, item: T) {
        let mut state = lock(&self.state);
        if !state.closed {
            state.items.push_back(item);
            self.wake.notify_all();
        }
    }

    /// Waits up to `timeout` for events and takes all of them.
    pub fn wait(&self, timeout: Duration) -> Waited<Vec<T>> {
        wait_for(&self.state, &self.wake, timeout, |state| {
            if state.closed {
                Some(Waited::Closed)
            } else if state.items.is_empty() {
                None
            } else {
                Some(Waited::Events(state.items.drain(..).collect()))
            }
        })
    }

    /// Wakes every waiter; later waits return `Closed` at once.
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.items.clear();
        self.wake.notify_all();
    }
}

#[derive(Debug)]
struct ReadyState {
    flagged: Vec<bool>,
    order: Vec<usize>,
    closed: bool,
}

/// The set of consumer streams that became ready since the last wait, each
/// reported once however often it was flagged (so a Java array of one slot
/// per stream always has room).
#[derive(Debug)]
pub struct ReadySet {
    state: Mutex<ReadyState>,
    wake: Condvar,
}

impl ReadySet {
    pub fn new(streams: usize) -> Self {
        ReadySet {
            state: Mutex::new(ReadyState {
                flagged: vec![false; streams],
                order: Vec::with_capacity(streams),
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }

    pub fn flag(&self, stream: usize) {
        let mut state = lock(&self.state);
        if state.closed || stream >= state.flagged.len() || state.flagged[stream] {
            return;
        }
        state.flagged[stream] = true;
        state.order.push(stream);
        self.wake.notify_all();
    }

    /// Waits up to `timeout` for flagged streams; copies at most `out.len()` of
    /// them into `out` (the rest stay flagged) and returns how many.
    pub fn wait(&self, timeout: Duration, out: &mut [i32]) -> Waited<usize> {
        wait_for(&self.state, &self.wake, timeout, |state| {
            if state.closed {
                return Some(Waited::Closed);
            }
            if state.order.is_empty() || out.is_empty() {
                return None;
            }
            let n = state.order.len().min(out.len());
            let taken: Vec<usize> = state.order.drain(..n).collect();
            for (slot, stream) in out.iter_mut().zip(taken) {
                state.flagged[stream] = false;
                *slot = i32::try_from(stream).expect("stream indices come from a Java int");
            }
            Some(Waited::Events(n))
        })
    }

    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        self.wake.notify_all();
    }
}

/// An event of the master agent for the JobManager's Java thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostEvent {
    /// These partitions of `job` were lost: Flink must re-run their producers.
    Partitions {
        job: JobId,
        partitions: Vec<PartitionId>,
    },
    /// The tier cannot go on for `job`.
    Fatal { job: JobId, message: String },
}

const EVENT_PARTITIONS: u8 = 1;
const EVENT_FATAL: u8 = 2;

pub(crate) fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    // Ids are at most MAX_ID_BYTES (256) long; messages are cut to fit.
    let len = bytes.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&bytes[..len]);
}

/// Encodes events for `TerraceMasterAgent.dispatch` (big-endian):
/// `u8 1 | u16 len, job | u32 n | n × (u16 len, partition)` for lost partitions,
/// `u8 2 | u16 len, job | u16 len, UTF-8 message` for a fatal error.
pub fn encode_events(events: &[LostEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        match event {
            LostEvent::Partitions { job, partitions } => {
                out.push(EVENT_PARTITIONS);
                put_bytes16(&mut out, job.as_bytes());
                let n = u32::try_from(partitions.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&n.to_be_bytes());
                for partition in partitions.iter().take(n as usize) {
                    put_bytes16(&mut out, partition.as_bytes());
                }
            }
            LostEvent::Fatal { job, message } => {
                out.push(EVENT_FATAL);
                put_bytes16(&mut out, job.as_bytes());
                put_bytes16(&mut out, message.as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn queue_times_out_delivers_and_closes() {
        let q = Arc::new(WaitQueue::default());
        assert_eq!(q.wait(Duration::from_millis(10)), Waited::TimedOut);
        q.push(1);
        q.push(2);
        assert_eq!(q.wait(Duration::from_secs(5)), Waited::Events(vec![1, 2]));
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.wait(Duration::from_secs(30)))
        };
        // Lets the waiter thread block in `wait` before the close; if it has not yet,
        // `wait` sees the closed queue at once, so the outcome is the same either way.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
        q.close();
        assert_eq!(waiter.join().expect("waiter"), Waited::Closed);
        q.push(3);
        assert_eq!(q.wait(Duration::ZERO), Waited::Closed);
    }

    #[test]
    fn ready_set_reports_each_stream_once() {
        let set = ReadySet::new(3);
        set.flag(2);
        set.flag(0);
        set.flag(2);
        set.flag(7); // out of range: ignored
        let mut out = [0i32; 3];
        assert_eq!(set.wait(Duration::ZERO, &mut out), Waited::Events(2));
        assert_eq!(&out[..2], &[2, 0]);
        assert_eq!(
            set.wait(Duration::from_millis(5), &mut out),
            Waited::TimedOut
        );
        set.flag(1);
        set.flag(0);
        let mut small = [0i32; 1];
        assert_eq!(set.wait(Duration::ZERO, &mut small), Waited::Events(1));
        assert_eq!(small, [1]);
        assert_eq!(set.wait(Duration::ZERO, &mut small), Waited::Events(1));
        assert_eq!(small, [0]);
        set.close();
        assert_eq!(set.wait(Duration::from_secs(5), &mut out), Waited::Closed);
    }

    #[test]
    fn events_encode_as_documented() {
        let job = JobId::new(vec![0xAA, 0xBB]).expect("id");
        let p1 = PartitionId::new(vec![1]).expect("id");
        let p2 = PartitionId::new(vec![2, 3]).expect("id");
        let bytes = encode_events(&[
            LostEvent::Partitions {
                job: job.clone(),
                partitions: vec![p1, p2],
            },
            LostEvent::Fatal {
                job,
                message: "x".into(),
            },
        ]);
        assert_eq!(
            bytes,
            vec![
                1, 0, 2, 0xAA, 0xBB, 0, 0, 0, 2, 0, 1, 1, 0, 2, 2, 3, //
                2, 0, 2, 0xAA, 0xBB, 0, 1, b'x'
            ]
        );
    }
}
