//! Waiting on a condition with a deadline instead of sleeping a fixed time:
//! a test polls what it waits for (a worker list, a file gone, a process
//! exited) and fails naming it if the deadline passes, so it takes as long
//! as the system needs and no longer.

use std::time::Duration;

use terrace_rpc::clock;

/// Polls `condition` until it holds, at most `within`; panics naming `what`
/// otherwise. Returns how long it took. Polls soon at first, then every 50 ms.
pub fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    wait_for(within, what, || condition().then_some(())).1
}

/// [`wait_until`] polling every `every`: to catch a state that lasts only a
/// moment (an upload in flight).
pub fn wait_until_every(
    within: Duration,
    every: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Duration {
    match poll(within, every, || condition().then_some(())) {
        Some(((), took)) => took,
        None => panic!("{what}: not within {within:?}"),
    }
}

/// Polls `probe` until it returns `Some`, at most `within`; panics naming
/// `what` otherwise. Returns the value and how long it took.
pub fn wait_for<T>(
    within: Duration,
    what: &str,
    probe: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    poll(within, MAX_PAUSE, probe).unwrap_or_else(|| panic!("{what}: not within {within:?}"))
}

/// Polls `condition` until it holds (true) or `within` passes (false), for
/// a caller that reports the failure itself with what it last saw.
pub fn poll_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    poll(within, MAX_PAUSE, || condition().then_some(())).is_some()
}

/// The longest pause between two polls.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Polls `probe` (pauses doubling from 2 ms up to `max_pause`) until it
/// returns `Some` or `within` has passed; the last poll is at or after the
/// deadline, so a condition that holds then is seen.
fn poll<T>(
    within: Duration,
    max_pause: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let started = clock::now();
    let mut pause = Duration::from_millis(2).min(max_pause);
    loop {
        let expired = clock::elapsed(started) >= within;
        if let Some(value) = probe() {
            return Some((value, clock::elapsed(started)));
        }
        if expired {
            return None;
        }
        poll_pause(pause);
        pause = (pause * 2).min(max_pause);
    }
}

/// Checks `check` every `every` for `window` (and once at its end): for a
/// test whose point is that something holds throughout a time (a worker
/// never silent, a job kept while a master is stopped). Returns how many
/// checks ran.
pub fn throughout(window: Duration, every: Duration, mut check: impl FnMut()) -> u32 {
    let started = clock::now();
    let mut checks = 0;
    loop {
        check();
        checks += 1;
        if clock::elapsed(started) >= window {
            return checks;
        }
        poll_pause(every.min(window.saturating_sub(clock::elapsed(started))));
    }
}

/// [`wait_until`] for async tests: the condition is polled between sleeps
/// on the clock (so it follows paused time too).
pub async fn wait_until_async<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) -> Duration {
    let started = clock::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if condition().await {
            return clock::now() - started;
        }
        assert!(
            clock::now() - started < within,
            "{what}: not within {within:?}"
        );
        clock::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The test thread's pause between two polls of a condition (the blocking
/// tests run on plain threads, not on the runtime, so a thread sleep is what
/// waiting is there). Public for polling loops with their own deadline that
/// do more than test a condition (restart a process on a taken port, ...).
#[allow(clippy::disallowed_methods)]
pub fn poll_pause(pause: Duration) {
    std::thread::sleep(pause);
}

/// Lets `duration` pass on the test's thread. Only for a test that must show
/// that something does NOT happen within a time (there is no condition to
/// wait on) or that paces a load on purpose; every caller says why.
#[allow(clippy::disallowed_methods)]
pub fn hold(duration: Duration) {
    std::thread::sleep(duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds_and_fails_past_the_deadline() {
        let mut polls = 0;
        let took = wait_until(Duration::from_secs(5), "third poll", || {
            polls += 1;
            polls == 3
        });
        assert_eq!(polls, 3);
        assert!(took < Duration::from_secs(1), "{took:?}");

        let failed = std::panic::catch_unwind(|| {
            wait_until(Duration::from_millis(30), "never", || false);
        });
        let message = *failed
            .expect_err("a condition that never holds fails the test")
            .downcast::<String>()
            .expect("a formatted panic");
        assert_eq!(message, "never: not within 30ms");

        // A condition that holds only at the deadline is still seen.
        let started = clock::now();
        let late = poll_until(Duration::from_millis(40), || {
            clock::elapsed(started) >= Duration::from_millis(40)
        });
        assert!(late);
    }
}
