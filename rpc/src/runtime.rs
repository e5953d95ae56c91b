//! The process-wide I/O runtime of the synchronous agents.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// A multi-threaded runtime shared by every agent in the process, created on
/// first use. Agents block on it from engine threads.
pub fn io_runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("terrace-io")
            .enable_all()
            .build()
            .expect("the agent I/O runtime must start (threads available)")
    })
}
