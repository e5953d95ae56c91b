//! Errors as Java sees them: a kind whose ordinal is `TerraceNativeException.Kind`
//! on the Java side, and a message naming what failed.

use std::fmt;

use terrace_tier_api::{ErrorKind, TierError};

/// `dev.terrace.bridge.TerraceNativeException.Kind`, by ordinal. Part of the
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

impl NativeErrorKind {
    /// Every kind, by ordinal.
    pub const ALL: [NativeErrorKind; 6] = [
        NativeErrorKind::Internal,
        NativeErrorKind::PartitionNotFound,
        NativeErrorKind::DataCorruption,
        NativeErrorKind::Io,
        NativeErrorKind::InvalidArgument,
        NativeErrorKind::Closed,
    ];

    /// The name of the `TerraceNativeException.Kind` constant at this ordinal.
    pub fn java_name(self) -> &'static str {
        match self {
            NativeErrorKind::Internal => "INTERNAL",
            NativeErrorKind::PartitionNotFound => "PARTITION_NOT_FOUND",
            NativeErrorKind::DataCorruption => "DATA_CORRUPTION",
            NativeErrorKind::Io => "IO",
            NativeErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            NativeErrorKind::Closed => "CLOSED",
        }
    }

    /// The kind a [`TierError`] of `kind` is thrown as: its `java_kind` in
    /// [`terrace_tier_api::ERROR_TABLE`].
    pub fn of(kind: ErrorKind) -> NativeErrorKind {
        let java = kind.row().java_kind;
        Self::ALL
            .into_iter()
            .find(|native| native.java_name() == java)
            .unwrap_or(NativeErrorKind::Internal)
    }
}

impl From<TierError> for NativeError {
    fn from(e: TierError) -> Self {
        NativeError::new(NativeErrorKind::of(e.kind()), e.to_string())
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
    use std::path::Path;

    use terrace_tier_api::ERROR_TABLE;

    use super::*;

    /// The constants of `enum Kind` in `TerraceNativeException.java`, in
    /// declaration (ordinal) order.
    fn java_kinds() -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../java/dev/terrace/bridge/TerraceNativeException.java");
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            source.contains("public class TerraceNativeException extends IOException"),
            "{} declares TerraceNativeException",
            path.display()
        );
        let body = source
            .split_once("public enum Kind {")
            .expect("TerraceNativeException declares enum Kind")
            .1;
        let body = &body[..body.find('}').expect("enum Kind ends")];
        body.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("/*") && !line.starts_with('*'))
            .map(|line| line.trim_end_matches(',').to_string())
            .collect()
    }

    #[test]
    fn native_kinds_are_the_java_enum_by_ordinal() {
        let java = java_kinds();
        assert_eq!(java.len(), NativeErrorKind::ALL.len(), "{java:?}");
        for (ordinal, native) in NativeErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(native as usize, ordinal);
            assert_eq!(java[ordinal], native.java_name(), "ordinal {ordinal}");
        }
    }

    #[test]
    fn every_tier_error_kind_is_thrown_as_its_table_row_says() {
        let java = java_kinds();
        for row in &ERROR_TABLE {
            // The table names a constant the Java enum has ...
            assert!(
                java.iter().any(|k| k == row.java_kind),
                "{:?} -> {} is not a TerraceNativeException.Kind",
                row.kind,
                row.java_kind
            );
            // ... and a TierError of that kind is thrown as it.
            let native = NativeError::from(TierError::new(row.kind, "x"));
            assert_eq!(native.kind.java_name(), row.java_kind, "{:?}", row.kind);
            assert_eq!(java[native.kind as usize], row.java_kind);
        }
        // What the agents rely on.
        assert_eq!(
            NativeErrorKind::of(ErrorKind::PartitionNotFound),
            NativeErrorKind::PartitionNotFound
        );
        assert_eq!(
            NativeErrorKind::of(ErrorKind::StorageFull),
            NativeErrorKind::Io
        );
        assert_eq!(
            NativeErrorKind::of(ErrorKind::Closed),
            NativeErrorKind::Closed
        );
    }

    #[test]
    fn the_thrown_class_exists() {
        let class = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../java")
            .join(format!("{}.java", crate::boundary::EXCEPTION_CLASS));
        assert!(class.is_file(), "{}", class.display());
    }
}
