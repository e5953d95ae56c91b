//! Agent configuration, and the human-readable sizes (`"64MiB"`, `"512KiB"`,
//! `1048576`) and durations (`"500ms"`, `"30s"`, `"5m"`) of every Terrace
//! config: the TOML files, the CLI's overrides and the Flink adapter's
//! `terrace.*` keys all parse them here.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ErrorKind, TierError};

/// A size in bytes, written in config files as an integer or a string with a
/// binary (`KiB`, `MiB`, `GiB`, `TiB`) or decimal (`KB`, `MB`, `GB`) unit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024 * 1024)
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Self, ParseSizeError> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| ParseSizeError::NotANumber(s.to_string()))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => {
                return Err(ParseSizeError::UnknownUnit {
                    input: s.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| ParseSizeError::Overflow(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a duration as every Terrace config writes it: whole or decimal
/// numbers each followed by a unit, spaces allowed (`"500ms"`, `"30s"`,
/// `"30 s"`, `"1 min"`, `"1h 30m"`, `"1.5s"`). Units: `ns`, `us`, `ms`,
/// `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`, `h`/`hr`/`hour(s)`,
/// `d`/`day(s)`, `w`/`week(s)` (humantime's syntax). A number without a unit
/// is an error: callers that give bare numbers a meaning (Flink's
/// milliseconds) decide that themselves.
pub fn parse_duration(s: &str) -> Result<Duration, ParseDurationError> {
    humantime_serde::re::humantime::parse_duration(s.trim()).map_err(|source| ParseDurationError {
        input: s.to_string(),
        source,
    })
}

/// Writes `d` the way [`parse_duration`] reads it (`"1h 30m"`, `"500ms"`).
pub fn format_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// `#[serde(with = "terrace_tier_api::duration")]`: a [`Duration`] field
/// written as a string [`parse_duration`] reads.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Settings shared by the producer, consumer and master agents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Masters to talk to, `host:port`; any of them can answer.
    pub master_addresses: Vec<String>,
    /// Largest segment a producer writes before it closes the segment with END_OF_SEGMENT.
    pub segment_size: ByteSize,
    /// A producer pushes once it has this many bytes of buffers batched.
    pub push_size: ByteSize,
    /// Pushed but not yet acknowledged bytes per producer; `try_write` waits beyond it.
    pub max_bytes_in_flight: ByteSize,
    /// Largest single engine buffer accepted.
    pub max_buffer_size: ByteSize,
    /// lz4-compress each data buffer in the producer agent (kept only when
    /// smaller); the consumer agent decompresses, workers never do.
    pub compression: bool,
    /// Read batches a consumer lets a worker send ahead per stream (credits).
    pub read_credits: u32,
    /// Largest frame sent or accepted.
    pub max_frame_size: ByteSize,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// A connection to a master or worker that waits for a reply or a
    /// stream's data and hears nothing from its peer checks that the peer
    /// answers a new connection's handshake; when neither happens within
    /// this long, the peer is taken for hung and the connection fails (its
    /// pushes and reads get an unavailable error), as if it had been reset.
    #[serde(with = "duration")]
    pub liveness_timeout: Duration,
    /// A master agent renews its jobs' leases on every master this often;
    /// keep it several times shorter than the masters' `job_lease`.
    #[serde(with = "duration")]
    pub job_renew_interval: Duration,
    /// File holding the cluster secret (else `TERRACE_SECRET_FILE`). Only the
    /// master agent reads it: it proves to masters and workers that it is a
    /// member. Producers and consumers present their job's token from the
    /// shuffle descriptor instead.
    pub secret_file: Option<PathBuf>,
    /// PEM CA certificates: when set, agents connect to masters and workers
    /// over TLS and trust the servers these sign.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            master_addresses: vec!["127.0.0.1:9870".to_string()],
            segment_size: ByteSize::mib(8),
            push_size: ByteSize::kib(512),
            max_bytes_in_flight: ByteSize::mib(8),
            max_buffer_size: ByteSize::mib(4),
            compression: true,
            read_credits: 8,
            max_frame_size: ByteSize::mib(16),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            liveness_timeout: Duration::from_secs(10),
            job_renew_interval: Duration::from_secs(10),
            secret_file: None,
            tls_ca_file: None,
        }
    }
}

/// A configuration value out of range, or at odds with another: `key` is
/// the one to change (`limits.max_jobs`, `server.idle_timeout`), the message
/// says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    key: String,
    message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The configuration key to change.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A configuration error is bad input: nothing works until it changes.
impl From<ConfigError> for TierError {
    fn from(e: ConfigError) -> Self {
        TierError::from_cause(ErrorKind::BadInput, e)
    }
}

/// A size that does not parse (see [`ByteSize`]'s `FromStr`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseSizeError {
    #[error("size {0:?} does not start with a whole number")]
    NotANumber(String),
    #[error("size {input:?} has unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB)")]
    UnknownUnit { input: String, unit: String },
    #[error("size {0:?} overflows 64 bits")]
    Overflow(String),
}

/// A duration that does not parse (see [`parse_duration`]); the parser's
/// reason is its source.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("duration {input:?}: {source} (write e.g. \"500ms\", \"30s\", \"5m\")")]
pub struct ParseDurationError {
    pub input: String,
    #[source]
    pub source: humantime_serde::re::humantime::DurationError,
}

/// The shortest `liveness_timeout` accepted.
pub const MIN_LIVENESS_TIMEOUT: Duration = Duration::from_millis(500);

impl AgentConfig {
    /// Checks the relations between fields; call after loading.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.segment_size.0 == 0 || self.push_size.0 == 0 || self.max_buffer_size.0 == 0 {
            return Err(ConfigError::new(
                "segment_size",
                "segment_size, push_size and max_buffer_size must be positive",
            ));
        }
        if self.max_bytes_in_flight < self.push_size {
            return Err(ConfigError::new(
                "max_bytes_in_flight",
                format!(
                    "max_bytes_in_flight ({}) must be at least push_size ({})",
                    self.max_bytes_in_flight, self.push_size
                ),
            ));
        }
        // A push holds at most push_size plus one maximal buffer, plus headers and lz4 overhead.
        let worst_push =
            self.push_size.0 + self.max_buffer_size.0 + self.max_buffer_size.0 / 200 + 64 * 1024;
        if worst_push > self.max_frame_size.0 {
            return Err(ConfigError::new(
                "push_size",
                format!(
                    "push_size ({}) + max_buffer_size ({}) does not fit in max_frame_size ({})",
                    self.push_size, self.max_buffer_size, self.max_frame_size
                ),
            ));
        }
        if self.read_credits == 0 {
            return Err(ConfigError::new(
                "read_credits",
                "read_credits must be at least 1",
            ));
        }
        if self.job_renew_interval.is_zero() {
            return Err(ConfigError::new(
                "job_renew_interval",
                "job_renew_interval must be positive",
            ));
        }
        if self.liveness_timeout < MIN_LIVENESS_TIMEOUT {
            return Err(ConfigError::new(
                "liveness_timeout",
                format!(
                    "liveness_timeout ({:?}) must be at least {MIN_LIVENESS_TIMEOUT:?}: a shorter one would take a briefly busy peer for hung",
                    self.liveness_timeout
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("64MiB".parse::<ByteSize>(), Ok(ByteSize::mib(64)));
        assert_eq!("64 MiB".parse::<ByteSize>(), Ok(ByteSize::mib(64)));
        assert_eq!("512k".parse::<ByteSize>(), Ok(ByteSize::kib(512)));
        assert_eq!("1000".parse::<ByteSize>(), Ok(ByteSize(1000)));
        assert_eq!("2MB".parse::<ByteSize>(), Ok(ByteSize(2_000_000)));
        assert_eq!(
            "12 parsecs".parse::<ByteSize>(),
            Err(ParseSizeError::UnknownUnit {
                input: "12 parsecs".into(),
                unit: "parsecs".into()
            })
        );
        assert_eq!(
            "MiB".parse::<ByteSize>(),
            Err(ParseSizeError::NotANumber("MiB".into()))
        );
        assert_eq!(
            "17000000TiB".parse::<ByteSize>(),
            Err(ParseSizeError::Overflow("17000000TiB".into()))
        );
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }

    #[test]
    fn durations_parse_and_print() {
        let s = Duration::from_secs;
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", s(30)),
            (" 30 s ", s(30)),
            ("5m", s(300)),
            ("1 min", s(60)),
            ("1h 30m", s(5400)),
            ("6h", s(6 * 3600)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
            assert_eq!(parse_duration(&format_duration(expected)), Ok(expected));
        }
        for text in ["", "30", "5 fortnights", "-1s"] {
            let e = parse_duration(text).expect_err(text);
            // The error keeps the text it refused, and says so.
            assert_eq!(e.input, text);
            assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
        }
    }

    #[test]
    fn default_config_is_valid() {
        AgentConfig::default()
            .validate()
            .expect("defaults are consistent");
        let bad = AgentConfig {
            max_bytes_in_flight: ByteSize(1),
            ..AgentConfig::default()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.key().to_string()),
            Err("max_bytes_in_flight".to_string())
        );
    }
}
