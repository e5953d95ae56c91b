//! Log hygiene for tests (neon's habit): ERROR means a person must look, so a
//! test fails on any ERROR line it did not declare as expected.
//!
//! [`capture`] installs, once per test binary, a global tracing subscriber
//! that prints every line (`RUST_LOG`, default `info`, through the test
//! writer) and records every INFO, WARN and ERROR event of the process: the
//! in-process workers, masters and agents the tests run, on whatever thread
//! or runtime. The [`LogCheck`] it returns fails the test when dropped if an
//! ERROR line was logged that no [`LogCheck::expect_error`] covers.
//!
//! The tests of one binary run in parallel in one process, so the record is
//! shared: an expectation declared by one test covers matching lines of every
//! test in the binary, and an unexpected ERROR fails whichever test checks
//! first after it. Declare expectations narrowly (a phrase of the message
//! that names what the test provokes). Subprocess services (real `terrace`
//! binaries) log to their own output and are not seen here.
//!
//! The record also lets a test wait on a log line ([`wait_for_line`]) where
//! a line is the only sign that something was decided.

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter::LevelFilter};

/// A log line as recorded: `LEVEL target: message key=value ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub level: Level,
    pub text: String,
}

#[derive(Debug, Default)]
struct Record {
    lines: Vec<Line>,
    /// Substrings that make an ERROR line expected.
    expected: Vec<String>,
    /// How many ERROR lines have been checked already (and found expected).
    checked: usize,
}

fn record() -> MutexGuard<'static, Record> {
    static RECORD: OnceLock<Mutex<Record>> = OnceLock::new();
    RECORD
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records events into the shared [`Record`].
struct Recorder;

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let text = format!(
            "{} {}: {}{}",
            meta.level(),
            meta.target(),
            fields.message,
            fields.rest
        );
        record().lines.push(Line {
            level: *meta.level(),
            text,
        });
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let print = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
            );
        // Another subscriber set by the binary itself wins; then nothing is
        // recorded and the checks below see no lines (they cannot pass
        // wrongly by that: `capture` asserts the install took).
        let _ = tracing_subscriber::registry()
            .with(print)
            .with(Recorder.with_filter(LevelFilter::INFO))
            .try_init();
        tracing::info!(target: "terrace_tests::logs", "log capture installed");
        report_panics_at_once();
    });
    assert!(
        lines_matching("log capture installed").len() == 1,
        "the log capture is not the process's subscriber"
    );
}

/// Writes each test's panic to the process's real standard error the moment
/// it happens, besides the report the test harness prints at the end: a
/// CI log that keeps only the head and tail of a long run still shows why
/// an early test failed. The message is cut at 4 KiB. Panics a test provokes
/// and catches are written too; the line says so.
fn report_panics_at_once() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let mut message: String = payload.chars().take(4096).collect();
        if message.len() < payload.len() {
            message.push_str(" [...]");
        }
        let location = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        // Not eprintln!: the harness captures that; this must reach the log now.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "test {}: panic{location} (if the test is reported ok, it caught this on purpose): {message}\n",
                thread.name().unwrap_or("(unnamed thread)")
            )
            .as_bytes(),
        );
        previous(info);
    }));
}

/// Installs the capture (once per binary) and returns the check that fails
/// the test, when dropped, on an unexpected ERROR line.
#[must_use = "the check runs when the returned LogCheck is dropped"]
pub fn capture() -> LogCheck {
    install();
    LogCheck { _private: () }
}

/// Fails the test on an unexpected ERROR line when dropped (see the module).
#[derive(Debug)]
pub struct LogCheck {
    _private: (),
}

impl LogCheck {
    /// Declares ERROR lines containing `substring` expected.
    pub fn expect_error(&self, substring: &str) -> &Self {
        record().expected.push(substring.to_string());
        self
    }

    /// The ERROR lines logged so far that no expectation covers (each is
    /// reported once).
    pub fn unexpected_errors(&self) -> Vec<String> {
        unexpected_errors()
    }
}

fn unexpected_errors() -> Vec<String> {
    let mut record = record();
    let Record {
        lines,
        expected,
        checked,
    } = &mut *record;
    let errors: Vec<&Line> = lines.iter().filter(|l| l.level == Level::ERROR).collect();
    let fresh = &errors[(*checked).min(errors.len())..];
    let out = fresh
        .iter()
        .filter(|l| !expected.iter().any(|e| l.text.contains(e.as_str())))
        .map(|l| l.text.clone())
        .collect();
    *checked = errors.len();
    out
}

impl Drop for LogCheck {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let unexpected = unexpected_errors();
        assert!(
            unexpected.is_empty(),
            "ERROR lines no test declared expected (ERROR means a person must look; \
             declare with LogCheck::expect_error or log at a lower level):\n{}",
            unexpected.join("\n")
        );
    }
}

/// The recorded lines (INFO and above, of the whole binary) containing `substring`.
pub fn lines_matching(substring: &str) -> Vec<Line> {
    record()
        .lines
        .iter()
        .filter(|l| l.text.contains(substring))
        .cloned()
        .collect()
}

/// Waits (at most `within`) until a recorded line contains every one of
/// `parts`; returns it. For a decision whose only sign is its log line.
pub fn wait_for_line(within: Duration, parts: &[&str]) -> Line {
    let what = format!("a log line with {parts:?}");
    crate::wait_for(within, &what, || {
        record()
            .lines
            .iter()
            .find(|l| parts.iter().all(|p| l.text.contains(p)))
            .cloned()
    })
    .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undeclared_error_fails_and_a_declared_one_does_not() {
        let check = capture();
        tracing::error!(job = "j1", "logs self-test: the disk is on fire");
        tracing::warn!("logs self-test: a warning is never a failure");
        let unexpected = check.unexpected_errors();
        assert_eq!(unexpected.len(), 1, "{unexpected:?}");
        assert!(
            unexpected[0].starts_with(
                "ERROR terrace_tests::logs::tests: logs self-test: the disk is on fire job=j1"
            ),
            "{unexpected:?}"
        );

        check.expect_error("logs self-test: expected");
        tracing::error!("logs self-test: expected and declared");
        assert_eq!(check.unexpected_errors(), Vec::<String>::new());

        // The drop check itself panics on an undeclared ERROR.
        let dropped = std::panic::catch_unwind(|| {
            let check = capture();
            tracing::error!("logs self-test: undeclared at drop");
            drop(check);
        });
        assert!(dropped.is_err(), "an undeclared ERROR fails the test");
        assert_eq!(
            lines_matching("logs self-test: undeclared at drop").len(),
            1
        );
    }
}
