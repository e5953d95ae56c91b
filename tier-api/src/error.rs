//! The public error of every Terrace library: a kind that tells the caller
//! what to do, and a message that names what failed.

use std::fmt;

use terrace_proto::pb::ErrorCode;

/// Longest error message taken from a peer, in bytes.
pub const MAX_WIRE_MESSAGE_BYTES: usize = 4096;

/// What the caller should do about an error.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorKind {
    /// A peer is unreachable or overloaded: retry later or elsewhere.
    Unavailable,
    /// The partition does not exist (never created, released, or lost with its
    /// worker): the engine must re-run its producer.
    PartitionNotFound,
    /// Stored or transferred bytes fail their checksum: the data is lost.
    DataCorruption,
    /// The request is invalid (bad ids, a broken frame): a bug in the caller.
    BadInput,
    /// A write to a partition that is already sealed: a bug in the caller.
    PartitionSealed,
    /// The object was closed or the service is shutting down.
    Closed,
    /// No worker is registered with the master.
    NoWorkers,
    /// The peer did not prove it holds the cluster secret, or the job's
    /// token: a configuration error (`secret_file`), or a peer that may not
    /// do this.
    PermissionDenied,
    /// Something that should not happen; see the message.
    Internal,
}

/// An error from a Terrace library.
#[derive(Clone, PartialEq, Eq)]
pub struct TierError {
    kind: ErrorKind,
    message: String,
}

/// Result alias for Terrace libraries.
pub type TierResult<T> = Result<T, TierError>;

impl TierError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TierError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadInput, message)
    }

    pub fn corruption(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::DataCorruption, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PartitionNotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn closed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Closed, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done.
    pub fn context(self, doing: impl fmt::Display) -> Self {
        TierError {
            kind: self.kind,
            message: format!("{doing}: {}", self.message),
        }
    }

    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            ErrorKind::PartitionNotFound => ErrorCode::PartitionNotFound,
            ErrorKind::DataCorruption => ErrorCode::DataCorruption,
            ErrorKind::BadInput => ErrorCode::BadRequest,
            ErrorKind::PartitionSealed => ErrorCode::PartitionSealed,
            ErrorKind::Closed => ErrorCode::Unavailable,
            ErrorKind::NoWorkers => ErrorCode::NoWorkers,
            ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            ErrorKind::Internal => ErrorCode::Internal,
        }
    }

    /// An error received from a peer as `code` and `message`.
    /// An error a peer reported. Its message is cut at
    /// [`MAX_WIRE_MESSAGE_BYTES`]: a peer's text is logged and carried on.
    pub fn from_wire(code: i32, message: impl Into<String>) -> Self {
        let kind = match ErrorCode::try_from(code).unwrap_or(ErrorCode::Unspecified) {
            ErrorCode::Protocol | ErrorCode::BadRequest => ErrorKind::BadInput,
            ErrorCode::PartitionSealed => ErrorKind::PartitionSealed,
            ErrorCode::VersionMismatch | ErrorCode::AlreadyExists => ErrorKind::BadInput,
            ErrorCode::PartitionNotFound => ErrorKind::PartitionNotFound,
            ErrorCode::DataCorruption => ErrorKind::DataCorruption,
            ErrorCode::Unavailable => ErrorKind::Unavailable,
            ErrorCode::NoWorkers => ErrorKind::NoWorkers,
            ErrorCode::PermissionDenied => ErrorKind::PermissionDenied,
            ErrorCode::Internal | ErrorCode::Unspecified => ErrorKind::Internal,
        };
        let mut message = message.into();
        if message.len() > MAX_WIRE_MESSAGE_BYTES {
            let mut end = MAX_WIRE_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("... (truncated)");
        }
        Self::new(kind, message)
    }
}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl fmt::Debug for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for TierError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_long_message_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_WIRE_MESSAGE_BYTES);
        let e = TierError::from_wire(ErrorCode::Internal as i32, long);
        assert!(e.message().len() <= MAX_WIRE_MESSAGE_BYTES + "... (truncated)".len());
        assert!(e.message().ends_with("... (truncated)"));
        let short = TierError::from_wire(ErrorCode::Internal as i32, "disk full");
        assert_eq!(short.message(), "disk full");
    }
}
