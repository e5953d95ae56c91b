//! The one clock: every service and agent reads the time, sleeps, ticks and
//! times out through here, never through `Instant::now`, `tokio::time::sleep`
//! or `std::thread::sleep` directly (clippy's `disallowed-methods` in
//! `clippy.toml` enforces it; this module is the only place allowed).
//!
//! It is tokio's clock, so a test that pauses time
//! (`#[tokio::test(start_paused = true)]` or `tokio::time::pause()`, with
//! tokio's `test-util` feature) controls every timer, lease, heartbeat and
//! deadline built on it, and moves them with `tokio::time::advance` instead
//! of waiting. Outside a runtime, or when time is not paused, it is the
//! machine's monotonic clock.
//!
//! One instant type throughout: [`std::time::Instant`] (tokio's instant is
//! converted at this seam), so a deadline read here can be stored anywhere.
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

pub use tokio::time::error::Elapsed;
pub use tokio::time::{Interval, MissedTickBehavior};

/// The current monotonic time (paused time in tests that pause it).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How long since `since` (an instant [`now`] returned), on this clock.
pub fn elapsed(since: Instant) -> Duration {
    now().saturating_duration_since(since)
}

/// The wall-clock time, for stamps that must mean something outside this
/// process (file names, ages across restarts). Not paused by tests; never
/// use it to measure an interval.
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// Waits `duration`.
pub fn sleep(duration: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(duration)
}

/// Waits until `deadline`; returns at once if it has passed.
pub fn sleep_until(deadline: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
}

/// Runs `future` for at most `duration`.
pub fn timeout<F: Future>(duration: Duration, future: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(duration, future)
}

/// Runs `future` until `deadline` at most.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), future)
}

/// Ticks every `period`, the first tick at once.
pub fn interval(period: Duration) -> Interval {
    tokio::time::interval(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_only_when_advanced_and_drives_every_timer() {
        let start = now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(elapsed(start), Duration::from_secs(3600));

        // A timeout fires exactly at its deadline on the paused clock.
        let never = std::future::pending::<()>();
        let before = now();
        assert!(timeout(Duration::from_secs(30), never).await.is_err());
        assert_eq!(now() - before, Duration::from_secs(30));

        // sleep_until takes the same instants now() returns.
        let at = now() + Duration::from_millis(1500);
        sleep_until(at).await;
        assert_eq!(now(), at);

        let mut ticks = interval(Duration::from_secs(10));
        let first = now();
        ticks.tick().await;
        ticks.tick().await;
        ticks.tick().await;
        assert_eq!(now() - first, Duration::from_secs(20));

        // A future that finishes in time is not cut short.
        let done = timeout_at(
            now() + Duration::from_secs(1),
            sleep(Duration::from_millis(999)),
        );
        assert!(done.await.is_ok());
    }
}
