//! Progress of a command's long phases, on stderr and only when stderr is a
//! terminal: a person watching sees that something moves, while a file, a
//! pipe or a log collector reading stderr gets nothing from it (stdout
//! carries the report either way).
//!
//! A phase shows its label, a bar when the bytes it moves are counted
//! (a shared counter the work adds to), and the seconds it has taken,
//! redrawn in place ten times a second by a thread of its own, and erased
//! when the phase ends.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use terrace_rpc::clock;

/// How often a phase's line is redrawn.
const REDRAW: Duration = Duration::from_millis(100);
/// Characters of a bar between its brackets.
const BAR_WIDTH: usize = 30;

/// Bytes a phase's work has moved so far, which the phase's bar shows.
pub type Counter = Arc<AtomicU64>;

/// A new counter at zero.
pub fn counter() -> Counter {
    Arc::new(AtomicU64::new(0))
}

/// Whether progress is shown: stderr is a terminal that can redraw a line.
fn enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Runs `work` while its progress shows as `label` with the seconds it
/// has taken.
pub fn during<T>(label: &str, work: impl FnOnce() -> T) -> T {
    let _phase = Phase::start(label, None);
    work()
}

/// [`during`], with a bar of `counter` (reset to zero first) against `total` bytes.
pub fn during_bytes<T>(label: &str, counter: &Counter, total: u64, work: impl FnOnce() -> T) -> T {
    counter.store(0, Ordering::Relaxed);
    let _phase = Phase::start(label, Some((Arc::clone(counter), total)));
    work()
}

/// A phase being shown; its line is erased when it is dropped.
struct Phase {
    stop: Option<mpsc::Sender<()>>,
    drawer: Option<JoinHandle<()>>,
}

impl Phase {
    fn start(label: &str, bytes: Option<(Counter, u64)>) -> Phase {
        if !enabled() {
            return Phase {
                stop: None,
                drawer: None,
            };
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let label = label.to_string();
        let drawer = std::thread::Builder::new()
            .name("terrace-progress".into())
            .spawn(move || {
                let start = clock::now();
                let mut stderr = std::io::stderr();
                loop {
                    let seconds = clock::elapsed(start).as_secs_f64();
                    let done = bytes
                        .as_ref()
                        .map(|(counter, total)| (counter.load(Ordering::Relaxed), *total));
                    // A failed write to a terminal is no reason to stop the work.
                    let _ = write!(stderr, "\r\x1b[2K{}", line(&label, done, seconds));
                    let _ = stderr.flush();
                    // Woken by the phase's end (a message or the sender dropped).
                    if !matches!(
                        stopped.recv_timeout(REDRAW),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    ) {
                        break;
                    }
                }
                let _ = write!(stderr, "\r\x1b[2K");
                let _ = stderr.flush();
            })
            .ok();
        Phase {
            stop: Some(stop),
            drawer,
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(drawer) = self.drawer.take() {
            let _ = drawer.join();
        }
    }
}

/// The text of a phase's line: `label [=====>    ]  42%  12.0/28.6 MiB  3.1 s`
/// with counted bytes, else `label ...  3.1 s`.
fn line(label: &str, bytes: Option<(u64, u64)>, seconds: f64) -> String {
    let Some((done, total)) = bytes else {
        return format!("{label} ...  {seconds:.1} s");
    };
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    let bar = match filled {
        BAR_WIDTH => "=".repeat(BAR_WIDTH),
        n => format!("{}>{}", "=".repeat(n), " ".repeat(BAR_WIDTH - n - 1)),
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "{label} [{bar}] {:>3.0}%  {:.1}/{:.1} MiB  {seconds:.1} s",
        fraction * 100.0,
        mib(done.min(total)),
        mib(total)
    )
}

#[cfg(test)]
mod tests {
    use super::line;

    #[test]
    fn a_line_shows_the_bar_the_share_and_the_time() {
        assert_eq!(
            line("shuffling", Some((3 << 20, 12 << 20)), 1.3),
            format!(
                "shuffling [{}>{}]  25%  3.0/12.0 MiB  1.3 s",
                "=".repeat(7),
                " ".repeat(22)
            )
        );
        assert_eq!(
            line("shuffling", Some((13 << 20, 12 << 20)), 2.0),
            format!("shuffling [{}] 100%  12.0/12.0 MiB  2.0 s", "=".repeat(30))
        );
        assert_eq!(
            line("shuffling", Some((0, 0)), 0.0),
            format!("shuffling [{}] 100%  0.0/0.0 MiB  0.0 s", "=".repeat(30))
        );
        assert_eq!(
            line("measuring raw TCP", None, 0.5),
            "measuring raw TCP ...  0.5 s"
        );
    }
}
