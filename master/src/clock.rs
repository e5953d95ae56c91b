//! The master's time seam: the registry reads "now" through a [`Clock`] so
//! tests can move its time by hand. [`SystemClock`] is a thin use of the one
//! clock, [`terrace_rpc::clock`], so a test that pauses tokio's time controls
//! the master too; [`ManualClock`] moves only when told.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use terrace_rpc::clock;

/// A source of monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// The process's clock ([`terrace_rpc::clock::now`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        clock::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Self {
        ManualClock {
            start: clock::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().expect("manual clock lock poisoned") += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().expect("manual clock lock poisoned")
    }
}
