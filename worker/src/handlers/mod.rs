//! One module per command the worker serves.

pub mod create;
pub mod handoff;
pub mod push;
pub mod read;
pub mod release;
pub mod seal;
pub mod stats;

pub use read::StreamHandle;

use terrace_tier_api::{MAX_ID_BYTES, TierError, TierResult};

/// A non-empty worker id or address of at most `MAX_ID_BYTES`.
pub(crate) fn bounded(field: &str, value: String) -> TierResult<String> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(TierError::bad_input(format!(
            "{field} must have 1 to {MAX_ID_BYTES} bytes, not {}",
            value.len()
        )));
    }
    Ok(value)
}
