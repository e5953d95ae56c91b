//! Errors as Java sees them: a kind whose ordinal is `TerraceNativeException.Kind`
//! on the Java side, and a message naming what failed.

use std::fmt;

use terrace_tier_api::{ErrorKind, TierError};

/// `dev.terrace.flink.TerraceNativeException.Kind`, by ordinal. Part of the
/// JNI ABI: reorder only together with the Java enum and `ABI_VERSION`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i32)]
pub enum NativeErrorKind {
    /// A bug or an unexpected state (including a caught panic).
    Internal = 0,
    /// The partition is gone (lost worker, released, never created): Flink
    /// must re-run its producer.
    PartitionNotFound = 1,
    /// Stored or transferred bytes fail their checksum.
    DataCorruption = 2,
    /// A worker or master is unreachable or overloaded, after retries.
    Io = 3,
    /// Bad configuration or arguments from Java.
    InvalidArgument = 4,
    /// The handle was closed (or never valid), or the agent is shutting down.
    Closed = 5,
}

/// An error to be thrown into Java.
#[derive(Clone, PartialEq, Eq)]
pub struct NativeError {
    pub kind: NativeErrorKind,
    pub message: String,
}

impl NativeError {
    pub fn new(kind: NativeErrorKind, message: impl Into<String>) -> Self {
        NativeError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(NativeErrorKind::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(NativeErrorKind::Internal, message)
    }

    pub fn closed(message: impl Into<String>) -> Self {
        Self::new(NativeErrorKind::Closed, message)
    }

    /// A failure of a JNI call itself (a Java exception may already be pending).
    pub fn jni(doing: &str, error: jni::errors::Error) -> Self {
        Self::internal(format!("{doing}: JNI call failed: {error}"))
    }

    /// Prefixes the message with what was being done.
    pub fn context(self, doing: impl fmt::Display) -> Self {
        NativeError {
            kind: self.kind,
            message: format!("{doing}: {}", self.message),
        }
    }
}

impl From<TierError> for NativeError {
    fn from(e: TierError) -> Self {
        let kind = match e.kind() {
            ErrorKind::PartitionNotFound => NativeErrorKind::PartitionNotFound,
            ErrorKind::DataCorruption => NativeErrorKind::DataCorruption,
            ErrorKind::Unavailable | ErrorKind::NoWorkers | ErrorKind::PermissionDenied => {
                NativeErrorKind::Io
            }
            ErrorKind::BadInput | ErrorKind::PartitionSealed => NativeErrorKind::InvalidArgument,
            ErrorKind::Closed => NativeErrorKind::Closed,
            ErrorKind::Internal => NativeErrorKind::Internal,
        };
        NativeError::new(kind, e.to_string())
    }
}

impl fmt::Display for NativeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl fmt::Debug for NativeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NativeError {}

pub type NativeResult<T> = Result<T, NativeError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_error_kinds_map_to_java_kinds() {
        let cases = [
            (
                TierError::not_found("x"),
                NativeErrorKind::PartitionNotFound,
                1,
            ),
            (
                TierError::corruption("x"),
                NativeErrorKind::DataCorruption,
                2,
            ),
            (TierError::unavailable("x"), NativeErrorKind::Io, 3),
            (
                TierError::bad_input("x"),
                NativeErrorKind::InvalidArgument,
                4,
            ),
            (TierError::closed("x"), NativeErrorKind::Closed, 5),
            (TierError::internal("x"), NativeErrorKind::Internal, 0),
        ];
        for (tier, kind, ordinal) in cases {
            let native = NativeError::from(tier);
            assert_eq!(native.kind, kind);
            assert_eq!(native.kind as i32, ordinal);
        }
    }
}
