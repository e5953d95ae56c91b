//! Object deletions in the background. Releasing a partition or dropping a
//! job takes it off the worker and deletes its local files at once; its
//! objects are deleted here, off every request and heartbeat path, so a
//! slow or hung object store never holds up control (DESIGN.md, "Failures").
//!
//! Bounded: at most [`MAX_QUEUED`] prefixes wait and [`CONCURRENCY`] are
//! deleted at a time, every store request under the store's
//! `request_timeout` (and its retries). A prefix whose deletion fails is
//! tried again with a doubling delay (up to [`MAX_RETRY_DELAY`]) until it
//! succeeds. Resumable: nothing is lost when the queue is full or the worker
//! restarts, because the sweep of the worker's whole root (every object no
//! partition refers to goes; [`super::Store::delete_orphan_objects`]) runs
//! at every start, and again whenever a prefix could not be queued, until
//! one sweep succeeds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::time::Instant;
use terrace_rpc::clock;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Store;

/// Most prefixes waiting for deletion; past it the next sweep covers them.
pub const MAX_QUEUED: usize = 4096;
/// Prefixes deleted at the same time.
pub const CONCURRENCY: usize = 4;
/// Longest wait before a failed deletion (or sweep) is tried again.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// First wait before a failed deletion is tried again.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// A prefix to delete.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub prefix: String,
    /// Failed attempts so far.
    pub failures: u32,
    /// Not tried again before this.
    pub not_before: Instant,
}

/// What waits to be deleted.
#[derive(Debug)]
pub struct Deletions {
    queue: Mutex<VecDeque<Pending>>,
    /// The whole root must be swept: set at start and when a prefix could
    /// not be queued; cleared by a sweep that succeeded.
    sweep: AtomicBool,
    /// Not swept again before this (after a failed sweep).
    sweep_not_before: Mutex<Instant>,
    sweep_failures: Mutex<u32>,
    /// Prefixes the background task is deleting now.
    running: std::sync::atomic::AtomicUsize,
    /// Which prefixes are being deleted now (taken from the queue and not
    /// yet done or put back): with the queue, what a partition created
    /// again under a released key must wait for ([`Deletions::is_pending`]).
    in_flight: Mutex<std::collections::HashSet<String>>,
    wake: Notify,
}

impl Default for Deletions {
    fn default() -> Self {
        Deletions {
            queue: Mutex::new(VecDeque::new()),
            sweep: AtomicBool::new(true),
            sweep_not_before: Mutex::new(clock::now()),
            sweep_failures: Mutex::new(0),
            running: std::sync::atomic::AtomicUsize::new(0),
            in_flight: Mutex::new(std::collections::HashSet::new()),
            wake: Notify::new(),
        }
    }
}

/// The delay after `failures` failed attempts: 1 s, 2 s, 4 s, ... up to
/// [`MAX_RETRY_DELAY`].
pub(crate) fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY)
}

impl Deletions {
    /// Queues `prefix` for deletion; returns at once. A prefix already
    /// waiting is not queued twice. When the queue is full the next sweep
    /// of the root deletes it instead.
    pub fn enqueue(&self, prefix: String) {
        {
            let mut queue = self.queue.lock().expect("deletions lock poisoned");
            if queue.iter().any(|p| p.prefix == prefix) {
                return;
            }
            if queue.len() >= MAX_QUEUED {
                drop(queue);
                tracing::debug!(%prefix, limit = MAX_QUEUED, "deletion queue full; the next sweep deletes it");
                self.sweep.store(true, Ordering::Release);
                self.wake.notify_one();
                return;
            }
            queue.push_back(Pending {
                prefix,
                failures: 0,
                not_before: clock::now(),
            });
        }
        self.wake.notify_one();
    }

    /// Prefixes waiting (or being deleted), and whether a sweep is due.
    pub fn backlog(&self) -> (usize, bool) {
        (
            self.queue.lock().expect("deletions lock poisoned").len(),
            self.sweep.load(Ordering::Acquire),
        )
    }

    /// Up to `n` prefixes due now, taken off the queue.
    pub(crate) fn take_due(&self, n: usize, now: Instant) -> Vec<Pending> {
        let mut queue = self.queue.lock().expect("deletions lock poisoned");
        let mut due = Vec::new();
        let mut i = 0;
        while i < queue.len() && due.len() < n {
            if queue[i].not_before <= now {
                due.extend(queue.remove(i));
            } else {
                i += 1;
            }
        }
        // Marked in flight under the queue's lock: never in neither.
        let mut in_flight = self.in_flight.lock().expect("deletions lock poisoned");
        in_flight.extend(due.iter().map(|p| p.prefix.clone()));
        due
    }

    /// Whether objects under `prefix` are queued for deletion or being
    /// deleted.
    pub fn is_pending(&self, prefix: &str) -> bool {
        let queue = self.queue.lock().expect("deletions lock poisoned");
        queue.iter().any(|p| p.prefix == prefix)
            || self
                .in_flight
                .lock()
                .expect("deletions lock poisoned")
                .contains(prefix)
    }

    /// A prefix taken by [`Deletions::take_due`] is deleted.
    pub(crate) fn done(&self, prefix: &str) {
        self.in_flight
            .lock()
            .expect("deletions lock poisoned")
            .remove(prefix);
    }

    /// Puts back a prefix whose deletion failed, to be tried after a delay.
    /// Failed prefixes always find room: they were in the queue.
    pub(crate) fn retry(&self, mut pending: Pending, now: Instant) {
        pending.failures = pending.failures.saturating_add(1);
        pending.not_before = now + retry_delay(pending.failures);
        let mut queue = self.queue.lock().expect("deletions lock poisoned");
        self.done(&pending.prefix);
        queue.push_back(pending);
    }

    /// When the earliest waiting prefix (or sweep, with `sweep`) is due, if any.
    pub(crate) fn next_due(&self, sweep: bool) -> Option<Instant> {
        let queued = self
            .queue
            .lock()
            .expect("deletions lock poisoned")
            .iter()
            .map(|p| p.not_before)
            .min();
        let sweep = (sweep && self.sweep.load(Ordering::Acquire)).then(|| {
            *self
                .sweep_not_before
                .lock()
                .expect("deletions lock poisoned")
        });
        queued.into_iter().chain(sweep).min()
    }

    /// Whether a sweep is due at `now`.
    pub(crate) fn sweep_due(&self, now: Instant) -> bool {
        self.sweep.load(Ordering::Acquire)
            && *self
                .sweep_not_before
                .lock()
                .expect("deletions lock poisoned")
                <= now
    }

    /// Records a sweep's outcome: a success clears the flag (unless a
    /// prefix was refused meanwhile, which the caller cannot tell, so the
    /// flag is cleared before the sweep starts: see [`Deletions::start_sweep`]).
    pub(crate) fn sweep_done(&self, ok: bool, now: Instant) {
        let mut failures = self.sweep_failures.lock().expect("deletions lock poisoned");
        if ok {
            *failures = 0;
        } else {
            *failures = failures.saturating_add(1);
            *self
                .sweep_not_before
                .lock()
                .expect("deletions lock poisoned") = now + retry_delay(*failures);
            self.sweep.store(true, Ordering::Release);
        }
    }

    /// Clears the sweep flag as a sweep starts: a prefix refused while it
    /// runs sets it again (the sweep's listing may predate that prefix's objects).
    pub(crate) fn start_sweep(&self) {
        self.sweep.store(false, Ordering::Release);
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}

impl Store {
    /// Objects waiting for deletion (see [`Deletions`]).
    pub fn deletions(&self) -> &Deletions {
        &self.deletions
    }

    /// Deletes every queued prefix now, one after another, whether or not
    /// its retry is due, and waits for those the background task is
    /// deleting (for a worker about to leave, and tests that run no
    /// [`Store::run_deletions`]). Returns how many objects it deleted; a
    /// failure puts the prefix back and stops. Callers bound the wait.
    pub async fn delete_queued_now(&self) -> terrace_tier_api::TierResult<usize> {
        let mut deleted = 0;
        loop {
            let all = self
                .deletions
                .take_due(usize::MAX, clock::now() + MAX_RETRY_DELAY * 2);
            let mut all = all.into_iter();
            while let Some(pending) = all.next() {
                match self.delete_unreferenced(&pending.prefix).await {
                    Ok(n) => {
                        self.deletions.done(&pending.prefix);
                        deleted += n;
                    }
                    Err(e) => {
                        let now = clock::now();
                        self.deletions.retry(pending, now);
                        all.for_each(|rest| self.deletions.retry(rest, now));
                        return Err(e);
                    }
                }
            }
            if self.deletions.running.load(Ordering::Acquire) == 0
                && self.deletions.backlog().0 == 0
            {
                return Ok(deleted);
            }
            clock::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deletes queued prefixes ([`CONCURRENCY`] at a time) and sweeps the
    /// root when due, until `cancel`. Without an object store, returns.
    pub async fn run_deletions(self: Arc<Self>, cancel: CancellationToken) {
        if self.tiers.object.is_none() {
            return;
        }
        let mut running = tokio::task::JoinSet::new();
        let mut sweeping = false;
        let mut warned = false;
        loop {
            let now = clock::now();
            if !sweeping && self.deletions.sweep_due(now) {
                sweeping = true;
                self.deletions.start_sweep();
                let store = Arc::clone(&self);
                running.spawn(async move { (None, store.delete_orphan_objects().await) });
            }
            let room = CONCURRENCY.saturating_sub(running.len());
            for pending in self.deletions.take_due(room, now) {
                let store = Arc::clone(&self);
                self.deletions.running.fetch_add(1, Ordering::AcqRel);
                running.spawn(async move {
                    let result = store.delete_unreferenced(&pending.prefix).await;
                    // Failures go back to the queue before this drops.
                    (Some(pending), result)
                });
            }
            let wake = self.deletions.notified();
            // With no room left only a finished deletion makes progress.
            let next = if running.len() < CONCURRENCY {
                self.deletions.next_due(!sweeping)
            } else {
                None
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    running.abort_all();
                    return;
                }
                Some(joined) = running.join_next() => {
                    let Ok((pending, result)) = joined else {
                        // A task panicked (logged by the panic hook): count again.
                        sweeping = false;
                        self.deletions.running.store(running.len(), Ordering::Release);
                        continue;
                    };
                    let now = clock::now();
                    let finished_prefix = pending.is_some();
                    match (pending, result) {
                        (None, Ok(n)) => {
                            sweeping = false;
                            self.deletions.sweep_done(true, now);
                            if n > 0 {
                                tracing::info!(objects = n, "deleted objects no partition refers to");
                            }
                        }
                        (None, Err(e)) => {
                            sweeping = false;
                            self.deletions.sweep_done(false, now);
                            tracing::warn!(error = %e, "cannot sweep objects no partition refers to; will try again");
                        }
                        (Some(pending), Ok(n)) => {
                            self.deletions.done(&pending.prefix);
                            if warned {
                                tracing::info!("object deletions work again");
                                warned = false;
                            }
                            tracing::debug!(prefix = %pending.prefix, objects = n, "deleted objects");
                        }
                        (Some(pending), Err(e)) => {
                            // Logged once per run of failures: a down store fails every one.
                            if !warned {
                                tracing::warn!(prefix = %pending.prefix, error = %e,
                                    "deleting objects failed; retrying in the background");
                                warned = true;
                            } else {
                                tracing::debug!(prefix = %pending.prefix, error = %e, "deleting objects failed again");
                            }
                            self.deletions.retry(pending, now);
                        }
                    }
                    // After a failure's retry is queued: never seen idle meanwhile.
                    if finished_prefix {
                        self.deletions.running.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                _ = wake => {}
                _ = sleep_until_due(next) => {}
            }
        }
    }
}

async fn sleep_until_due(next: Option<Instant>) {
    match next {
        Some(at) => clock::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_deduplicated_and_retries_with_a_growing_delay() {
        let d = Deletions::default();
        d.start_sweep();
        assert_eq!(d.backlog(), (0, false));
        for i in 0..MAX_QUEUED {
            d.enqueue(format!("root/job/p{i}"));
        }
        d.enqueue("root/job/p0".into());
        assert_eq!(
            d.backlog(),
            (MAX_QUEUED, false),
            "a queued prefix is not queued twice"
        );
        d.enqueue("root/job/one-too-many".into());
        assert_eq!(
            d.backlog(),
            (MAX_QUEUED, true),
            "past the bound the prefix is left to a sweep"
        );
        let now = clock::now();
        let due = d.take_due(CONCURRENCY, now);
        assert_eq!(
            due.iter().map(|p| p.prefix.as_str()).collect::<Vec<_>>(),
            ["root/job/p0", "root/job/p1", "root/job/p2", "root/job/p3"]
        );
        let failed = due.into_iter().next().expect("one due");
        d.retry(failed, now);
        // The retried prefix waits its delay; the others are due.
        let due = d.take_due(MAX_QUEUED, now);
        assert_eq!(due.len(), MAX_QUEUED - CONCURRENCY);
        assert!(due.iter().all(|p| p.prefix != "root/job/p0"));
        assert_eq!(d.take_due(1, now + Duration::from_millis(999)).len(), 0);
        let again = d.take_due(1, now + Duration::from_secs(1));
        assert_eq!(again[0].prefix, "root/job/p0");
        assert_eq!(again[0].failures, 1);
        assert_eq!(
            (1..=9).map(retry_delay).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 60, 60, 60].map(Duration::from_secs)
        );
    }

    #[test]
    fn a_failed_sweep_is_tried_again_after_a_delay() {
        let d = Deletions::default();
        let now = clock::now();
        assert!(d.sweep_due(now), "a sweep is due at start");
        d.start_sweep();
        assert!(!d.sweep_due(now));
        d.sweep_done(false, now);
        assert!(!d.sweep_due(now + Duration::from_millis(999)));
        assert!(d.sweep_due(now + Duration::from_secs(1)));
        d.start_sweep();
        d.sweep_done(true, now);
        assert!(!d.sweep_due(now + Duration::from_secs(3600)));
        assert_eq!(d.next_due(true), None);
    }
}
