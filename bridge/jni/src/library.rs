//! Library-level entry points: the ABI version check and native logging.

use std::sync::Once;

use jni::JNIEnv;
use jni::objects::JClass;
use jni::sys::jint;

/// Must equal `NativeBridge.ABI_VERSION` on the Java side; bump both when a
/// native signature, an error-kind ordinal or an encoding changes.
pub const ABI_VERSION: i32 = 5;

/// Sends the agents' `tracing` output to stderr (the TaskManager's .out/.err
/// or the test's console), filtered by `terrace.log`. The first agent opened
/// in the process decides the filter.
pub(crate) fn init_logging(filter: &str) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // Fails only if the host process already installed a subscriber: keep theirs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    });
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_abiVersion(
    _env: JNIEnv<'_>,
    _class: JClass<'_>,
) -> jint {
    ABI_VERSION
}
