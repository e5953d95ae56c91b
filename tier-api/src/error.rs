//! The public error of every Terrace library: a kind that tells the caller
//! what to do, a message that names what failed, and the cause underneath
//! (an I/O error, an object store error, a crate's own error enum) as
//! [`std::error::Error::source`].
//!
//! [`ERROR_TABLE`] is the one place that says how each kind travels: its wire
//! code (and the finer `detail` code beside it, see `ErrorReply` in
//! `terrace.proto`) and the `TerraceNativeException.Kind` the Flink adapter
//! throws for it.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use terrace_proto::pb::{self, ErrorCode};

/// Longest error message taken from a peer, in bytes.
pub const MAX_WIRE_MESSAGE_BYTES: usize = 4096;

/// What the caller should do about an error.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorKind {
    /// A peer is unreachable or overloaded: retry later or elsewhere.
    Unavailable,
    /// A worker has no room left for the bytes (no local directory can take
    /// them and no object store can): retry on another worker, or later.
    StorageFull,
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

impl ErrorKind {
    /// Every kind, in [`ERROR_TABLE`] order.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Unavailable,
        ErrorKind::StorageFull,
        ErrorKind::PartitionNotFound,
        ErrorKind::DataCorruption,
        ErrorKind::BadInput,
        ErrorKind::PartitionSealed,
        ErrorKind::Closed,
        ErrorKind::NoWorkers,
        ErrorKind::PermissionDenied,
        ErrorKind::Internal,
    ];

    /// Whether another attempt, later or on another peer, may succeed
    /// (`Unavailable`, `StorageFull`).
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::StorageFull)
    }

    /// This kind's row of [`ERROR_TABLE`].
    pub fn row(self) -> &'static ErrorRow {
        ERROR_TABLE
            .iter()
            .find(|row| row.kind == self)
            .expect("ERROR_TABLE has a row for every kind (tested)")
    }
}

/// How one [`ErrorKind`] travels.
#[derive(Debug, PartialEq, Eq)]
pub struct ErrorRow {
    pub kind: ErrorKind,
    /// `ErrorReply.code` / `StreamError.code`: what every version-3 peer acts on.
    pub code: ErrorCode,
    /// `ErrorReply.detail` / `StreamError.detail`: the finer code for kinds an
    /// older version-3 peer has no code for (`ERROR_CODE_UNSPECIFIED` when
    /// `code` says all). Older peers ignore the field and act on `code`.
    pub detail: ErrorCode,
    /// The `dev.terrace.flink.TerraceNativeException.Kind` constant the Flink
    /// adapter throws this kind as (the exception class is always
    /// `TerraceNativeException`).
    pub java_kind: &'static str,
}

/// Kind → wire code → Java exception kind, for every kind. Decoding a wire
/// code that is no row's `code` (PROTOCOL, VERSION_MISMATCH, ALREADY_EXISTS,
/// an unknown one) is [`ErrorKind::from_wire`]'s business.
pub const ERROR_TABLE: [ErrorRow; 10] = [
    ErrorRow {
        kind: ErrorKind::Unavailable,
        code: ErrorCode::Unavailable,
        detail: ErrorCode::Unspecified,
        java_kind: "IO",
    },
    ErrorRow {
        kind: ErrorKind::StorageFull,
        code: ErrorCode::Unavailable,
        detail: ErrorCode::StorageFull,
        java_kind: "IO",
    },
    ErrorRow {
        kind: ErrorKind::PartitionNotFound,
        code: ErrorCode::PartitionNotFound,
        detail: ErrorCode::Unspecified,
        java_kind: "PARTITION_NOT_FOUND",
    },
    ErrorRow {
        kind: ErrorKind::DataCorruption,
        code: ErrorCode::DataCorruption,
        detail: ErrorCode::Unspecified,
        java_kind: "DATA_CORRUPTION",
    },
    ErrorRow {
        kind: ErrorKind::BadInput,
        code: ErrorCode::BadRequest,
        detail: ErrorCode::Unspecified,
        java_kind: "INVALID_ARGUMENT",
    },
    ErrorRow {
        kind: ErrorKind::PartitionSealed,
        code: ErrorCode::PartitionSealed,
        detail: ErrorCode::Unspecified,
        java_kind: "INVALID_ARGUMENT",
    },
    ErrorRow {
        kind: ErrorKind::Closed,
        code: ErrorCode::Unavailable,
        detail: ErrorCode::Closed,
        java_kind: "CLOSED",
    },
    ErrorRow {
        kind: ErrorKind::NoWorkers,
        code: ErrorCode::NoWorkers,
        detail: ErrorCode::Unspecified,
        java_kind: "IO",
    },
    ErrorRow {
        kind: ErrorKind::PermissionDenied,
        code: ErrorCode::PermissionDenied,
        detail: ErrorCode::Unspecified,
        java_kind: "IO",
    },
    ErrorRow {
        kind: ErrorKind::Internal,
        code: ErrorCode::Internal,
        detail: ErrorCode::Unspecified,
        java_kind: "INTERNAL",
    },
];

impl ErrorKind {
    /// The kind of an error a peer sent as `code` with `detail` (raw enum
    /// values: a newer peer may send codes this build does not know). A
    /// known `detail` wins; an unknown or unspecified one is ignored and
    /// `code` decides; an unknown `code` is `Internal`.
    pub fn from_wire(code: i32, detail: i32) -> ErrorKind {
        let decode = |code: ErrorCode| match code {
            ErrorCode::Unspecified => None,
            ErrorCode::Protocol
            | ErrorCode::BadRequest
            | ErrorCode::VersionMismatch
            | ErrorCode::AlreadyExists => Some(ErrorKind::BadInput),
            ErrorCode::PartitionSealed => Some(ErrorKind::PartitionSealed),
            ErrorCode::PartitionNotFound => Some(ErrorKind::PartitionNotFound),
            ErrorCode::DataCorruption => Some(ErrorKind::DataCorruption),
            ErrorCode::Unavailable => Some(ErrorKind::Unavailable),
            ErrorCode::StorageFull => Some(ErrorKind::StorageFull),
            ErrorCode::Closed => Some(ErrorKind::Closed),
            ErrorCode::NoWorkers => Some(ErrorKind::NoWorkers),
            ErrorCode::PermissionDenied => Some(ErrorKind::PermissionDenied),
            ErrorCode::Internal => Some(ErrorKind::Internal),
        };
        let known = |raw: i32| ErrorCode::try_from(raw).ok().and_then(decode);
        known(detail)
            .or_else(|| known(code))
            .unwrap_or(ErrorKind::Internal)
    }
}

/// The cause under a [`TierError`]. Shared, so a failure handed to several
/// waiters (one failed flush, every push that waited on it) keeps its cause.
type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// An error from a Terrace library.
#[derive(Clone)]
pub struct TierError {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

/// Result alias for Terrace libraries.
pub type TierResult<T> = Result<T, TierError>;

impl TierError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TierError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` that `message` describes, caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        TierError {
            kind,
            message: message.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// An error of `kind` whose message is `cause`'s own text and whose
    /// source is `cause` (so callers can downcast to it): how a crate's
    /// error enum becomes the public error.
    pub fn from_cause(kind: ErrorKind, cause: impl StdError + Send + Sync + 'static) -> Self {
        TierError {
            kind,
            message: cause.to_string(),
            source: Some(Arc::new(cause)),
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

    pub fn storage_full(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::StorageFull, message)
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

    /// What failed, without the kind and without the causes underneath
    /// (`Display` shows all three).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by the text of each cause underneath it, as a
    /// peer sees it on the wire.
    pub fn full_message(&self) -> String {
        let mut text = self.message.clone();
        append_causes(
            &mut text,
            self.source
                .as_deref()
                .map(|s| s as &(dyn StdError + 'static)),
        );
        text
    }

    /// Prefixes the message with what was being done; the cause stays.
    pub fn context(self, doing: impl fmt::Display) -> Self {
        TierError {
            kind: self.kind,
            message: format!("{doing}: {}", self.message),
            source: self.source,
        }
    }

    /// The wire code for this error ([`ERROR_TABLE`]).
    pub fn code(&self) -> ErrorCode {
        self.kind.row().code
    }

    /// The finer wire code sent beside [`Self::code`] ([`ERROR_TABLE`]).
    pub fn detail(&self) -> ErrorCode {
        self.kind.row().detail
    }

    /// This error as the reply to request `request_id`.
    pub fn to_reply(&self, request_id: u64) -> terrace_proto::Message {
        terrace_proto::Message::ErrorReply(pb::ErrorReply {
            request_id,
            code: self.code() as i32,
            message: self.full_message(),
            detail: self.detail() as i32,
        })
    }

    /// This error as the end of stream `stream_id`.
    pub fn to_stream_error(&self, stream_id: u64) -> pb::StreamError {
        pb::StreamError {
            stream_id,
            code: self.code() as i32,
            message: self.full_message(),
            detail: self.detail() as i32,
        }
    }

    /// An error a peer reported as `code` and `detail` (see
    /// [`ErrorKind::from_wire`]). Its message is cut at
    /// [`MAX_WIRE_MESSAGE_BYTES`]: a peer's text is logged and carried on.
    pub fn from_wire(code: i32, detail: i32, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_WIRE_MESSAGE_BYTES {
            let mut end = MAX_WIRE_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("... (truncated)");
        }
        Self::new(ErrorKind::from_wire(code, detail), message)
    }
}

/// `error`'s text followed by the text of each cause underneath it, joined
/// with `": "` (what a log line or a peer should see of a crate's error).
pub fn error_text(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    append_causes(&mut text, error.source());
    text
}

fn append_causes(text: &mut String, mut next: Option<&(dyn StdError + 'static)>) {
    let mut last = text.clone();
    while let Some(cause) = next {
        let piece = cause.to_string();
        // A cause whose text is what came before it (an enum turned into a
        // TierError by `from_cause`) is not repeated.
        if !piece.is_empty() && !last.ends_with(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        last = piece;
        next = cause.source();
    }
}

/// Two errors are equal when kind and message are; causes are not compared
/// (most error types underneath are not comparable).
impl PartialEq for TierError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for TierError {}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.full_message())
    }
}

impl fmt::Debug for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl StdError for TierError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_long_message_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_WIRE_MESSAGE_BYTES);
        let e = TierError::from_wire(ErrorCode::Internal as i32, 0, long);
        assert!(e.message().len() <= MAX_WIRE_MESSAGE_BYTES + "... (truncated)".len());
        assert!(e.message().ends_with("... (truncated)"));
        let short = TierError::from_wire(ErrorCode::Internal as i32, 0, "disk full");
        assert_eq!(short.message(), "disk full");
    }

    #[test]
    fn the_table_has_one_row_per_kind_in_order() {
        let kinds: Vec<ErrorKind> = ERROR_TABLE.iter().map(|row| row.kind).collect();
        assert_eq!(kinds, ErrorKind::ALL);
        for kind in ErrorKind::ALL {
            assert_eq!(kind.row().kind, kind);
        }
    }

    #[test]
    fn every_kind_survives_the_wire() {
        for kind in ErrorKind::ALL {
            let e = TierError::new(kind, "x");
            let (code, detail) = (e.code() as i32, e.detail() as i32);
            assert_eq!(ErrorKind::from_wire(code, detail), kind, "{kind:?}");
            // Through the reply frame, as a peer decodes it.
            let terrace_proto::Message::ErrorReply(reply) = e.to_reply(7) else {
                panic!("an error reply")
            };
            let back = TierError::from_wire(reply.code, reply.detail, reply.message);
            assert_eq!(back, e, "{kind:?}");
            let stream = e.to_stream_error(3);
            assert_eq!(ErrorKind::from_wire(stream.code, stream.detail), kind);
        }
    }

    #[test]
    fn every_code_decodes_to_a_kind_that_encodes_back_to_it_or_its_class() {
        let mut raw = 0;
        while let Ok(code) = ErrorCode::try_from(raw) {
            let kind = ErrorKind::from_wire(raw, 0);
            let row = kind.row();
            let expected = match code {
                // Codes no kind is sent as: what a Terrace peer decodes them to.
                ErrorCode::Unspecified => ErrorKind::Internal,
                ErrorCode::Protocol | ErrorCode::VersionMismatch | ErrorCode::AlreadyExists => {
                    ErrorKind::BadInput
                }
                _ => {
                    // A code some kind is sent as comes back as that kind, in
                    // `code` or (for the finer ones) in `detail`.
                    assert!(
                        row.code == code || row.detail == code,
                        "{code:?} -> {kind:?}"
                    );
                    kind
                }
            };
            assert_eq!(kind, expected, "{code:?}");
            // The same code sent as `detail` beside UNAVAILABLE.
            if code != ErrorCode::Unspecified {
                assert_eq!(
                    ErrorKind::from_wire(ErrorCode::Unavailable as i32, raw),
                    kind,
                    "detail {code:?}"
                );
            }
            raw += 1;
        }
        assert_eq!(
            raw, 14,
            "a new ErrorCode needs a line here and in ERROR_TABLE"
        );
    }

    #[test]
    fn an_older_peer_sees_the_coarse_code_and_a_newer_peers_unknown_detail_is_ignored() {
        // What a version-3 peer without `detail` decodes: only `code`.
        assert_eq!(
            ErrorKind::from_wire(TierError::storage_full("x").code() as i32, 0),
            ErrorKind::Unavailable
        );
        assert_eq!(
            ErrorKind::from_wire(TierError::closed("x").code() as i32, 0),
            ErrorKind::Unavailable
        );
        // A detail this build does not know leaves `code` in charge; an
        // unknown code with nothing else is Internal.
        assert_eq!(
            ErrorKind::from_wire(ErrorCode::PartitionNotFound as i32, 999),
            ErrorKind::PartitionNotFound
        );
        assert_eq!(ErrorKind::from_wire(999, 0), ErrorKind::Internal);
    }

    #[test]
    fn the_cause_is_the_source_and_shows_once_in_the_text() {
        let io = std::io::Error::other("No space left on device");
        let e = TierError::with_source(ErrorKind::StorageFull, "write /d/f", io);
        assert_eq!(e.message(), "write /d/f");
        assert_eq!(
            e.source().map(|s| s.to_string()),
            Some("No space left on device".to_string())
        );
        assert_eq!(e.full_message(), "write /d/f: No space left on device");
        assert_eq!(
            e.to_string(),
            "StorageFull: write /d/f: No space left on device"
        );
        let e = e.context("push");
        assert_eq!(
            e.full_message(),
            "push: write /d/f: No space left on device"
        );
        assert!(e.source().is_some());

        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("open /d")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = TierError::from_cause(
            ErrorKind::Internal,
            Wrapper(std::io::Error::other("denied")),
        );
        assert_eq!(e.message(), "open /d");
        assert_eq!(e.full_message(), "open /d: denied");
        assert!(
            e.source()
                .is_some_and(|s| s.downcast_ref::<Wrapper>().is_some())
        );
    }
}
