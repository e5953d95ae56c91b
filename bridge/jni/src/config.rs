//! The `terrace.*` keys of the Flink configuration, parsed into the agents'
//! [`AgentConfig`]. Every key has a default; unknown `terrace.*` keys are an
//! error, so a typo does not silently fall back to a default.

use std::time::Duration;

use terrace_tier_api::{AgentConfig, ByteSize};

use crate::error::{NativeError, NativeResult};

/// Every key: name, default, meaning. The README's "Use with Flink" table and
/// `TerraceConfig` on the Java side list the same keys.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "terrace.master.address",
        "127.0.0.1:9870",
        "Terrace masters, host:port, comma-separated; any of them can answer",
    ),
    (
        "terrace.segment-size",
        "8MiB",
        "bytes of buffers per segment of a subpartition before the producer closes it with END_OF_SEGMENT",
    ),
    (
        "terrace.push-size",
        "512KiB",
        "a producer pushes to its worker once this many bytes are batched",
    ),
    (
        "terrace.max-bytes-in-flight",
        "8MiB",
        "pushed but unacknowledged bytes per producer; writes wait beyond it",
    ),
    (
        "terrace.max-buffer-size",
        "4MiB",
        "largest single engine buffer accepted (a Flink buffer; a piece of a Spark chunk)",
    ),
    (
        "terrace.compression",
        "true",
        "lz4-compress each data buffer in the producer agent (Flink 1.20 hands external tiers uncompressed buffers; the Spark plug-in sets it false unless given, as Spark compresses with its own codec)",
    ),
    (
        "terrace.read-credits",
        "8",
        "read batches a worker may send ahead per consumer stream",
    ),
    (
        "terrace.max-frame-size",
        "16MiB",
        "largest wire frame sent or accepted",
    ),
    (
        "terrace.connect-timeout",
        "5s",
        "connecting to a master or worker",
    ),
    (
        "terrace.request-timeout",
        "120s",
        "one request to a master or worker, including a push waiting for worker memory",
    ),
    (
        "terrace.liveness-timeout",
        "10s",
        "a connection to a worker or master that waits for a reply or read data and hears nothing checks that the peer answers a new connection's handshake; when neither happens within this long the peer is taken for hung and the connection fails (its pushes and reads fail as if it had died)",
    ),
    (
        "terrace.master.poll-interval",
        "1s",
        "how often the coordinator's agent (Flink's JobManager, Spark's driver) checks the master for lost workers",
    ),
    (
        "terrace.job-renew-interval",
        "10s",
        "how often the coordinator's agent (Flink's JobManager, Spark's driver) renews its jobs' leases on every master (keep it several times shorter than the masters' job_lease)",
    ),
    (
        "terrace.secret-file",
        "",
        "the coordinator (Flink's JobManager, Spark's driver) only: file holding the cluster secret (else TERRACE_SECRET_FILE); its master agent proves it to masters and workers and gets each job's token, which task processes present instead",
    ),
    (
        "terrace.tls.ca-file",
        "",
        "PEM CA certificates: when set, agents connect to masters and workers over TLS and trust the servers these sign",
    ),
    (
        "terrace.event-poll-interval-ms",
        "200",
        "Flink, Java: how long an event thread blocks in one native wait",
    ),
    (
        "terrace.native.library",
        "",
        "Java: path of libterrace_jni.so to load instead of the copy bundled in the jar",
    ),
    (
        "terrace.spark.chunk-size",
        "1MiB",
        "Spark: serialized bytes of one reduce partition a map task buffers before it compresses and pushes them as one chunk (1KiB to 64MiB)",
    ),
    (
        "terrace.spark.writer-buffer-size",
        "64MiB",
        "Spark: serialized bytes one map task buffers across all its reduce partitions; past it the largest buffers are pushed",
    ),
    (
        "terrace.spark.reader-streams",
        "16",
        "Spark: map outputs one reduce task reads at once, one stream each; a stream holds up to terrace.read-credits read batches (the workers' read_batch_size, 512KiB by default), so 16 streams hold at most 64MiB by default",
    ),
    (
        "terrace.log",
        "warn",
        "filter for the native library's log lines on stderr (tracing env-filter syntax)",
    ),
];

/// The parsed configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeConfig {
    pub agent: AgentConfig,
    pub master_poll_interval: Duration,
    pub log_filter: String,
}

fn parse_size(key: &str, value: &str) -> NativeResult<ByteSize> {
    value
        .parse::<ByteSize>()
        .map_err(|e| NativeError::invalid(format!("{key}: {e}")))
}

/// A duration as the Rust configs write it ([`terrace_tier_api::parse_duration`]:
/// `"500ms"`, `"5s"`, `"30 s"`, `"2min"`, `"1 min"`, `"1h"`); a bare whole
/// number is milliseconds, as in Flink.
fn parse_duration(key: &str, value: &str) -> NativeResult<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| NativeError::invalid(format!("{key}: duration {value:?} is too large")));
    }
    terrace_tier_api::parse_duration(v).map_err(|e| NativeError::invalid(format!("{key}: {e}")))
}

fn non_empty_path(value: &str) -> Option<std::path::PathBuf> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.into())
}

fn parse_bool(key: &str, value: &str) -> NativeResult<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(NativeError::invalid(format!(
            "{key}: expected true or false, got {value:?}"
        ))),
    }
}

/// Parses `key, value` pairs (the `terrace.*` part of the Flink configuration).
pub fn parse_config<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> NativeResult<NativeConfig> {
    let mut agent = AgentConfig::default();
    let mut master_poll_interval = Duration::from_secs(1);
    let mut log_filter = "warn".to_string();
    for (key, value) in pairs {
        match key {
            "terrace.master.address" => {
                let addresses: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect();
                if addresses.is_empty() || addresses.iter().any(|a| !a.contains(':')) {
                    return Err(NativeError::invalid(format!(
                        "{key}: expected host:port[,host:port...], got {value:?}"
                    )));
                }
                agent.master_addresses = addresses;
            }
            "terrace.segment-size" => agent.segment_size = parse_size(key, value)?,
            "terrace.push-size" => agent.push_size = parse_size(key, value)?,
            "terrace.max-bytes-in-flight" => agent.max_bytes_in_flight = parse_size(key, value)?,
            "terrace.max-buffer-size" => agent.max_buffer_size = parse_size(key, value)?,
            "terrace.max-frame-size" => agent.max_frame_size = parse_size(key, value)?,
            "terrace.compression" => agent.compression = parse_bool(key, value)?,
            "terrace.read-credits" => {
                agent.read_credits = value.trim().parse().map_err(|_| {
                    NativeError::invalid(format!("{key}: expected a whole number, got {value:?}"))
                })?;
            }
            "terrace.connect-timeout" => agent.connect_timeout = parse_duration(key, value)?,
            "terrace.request-timeout" => agent.request_timeout = parse_duration(key, value)?,
            "terrace.liveness-timeout" => agent.liveness_timeout = parse_duration(key, value)?,
            "terrace.job-renew-interval" => agent.job_renew_interval = parse_duration(key, value)?,
            "terrace.secret-file" => agent.secret_file = non_empty_path(value),
            "terrace.tls.ca-file" => agent.tls_ca_file = non_empty_path(value),
            "terrace.master.poll-interval" => {
                master_poll_interval = parse_duration(key, value)?;
                if master_poll_interval.is_zero() {
                    return Err(NativeError::invalid(format!("{key} must be positive")));
                }
            }
            "terrace.log" => log_filter = value.to_string(),
            // Read by the Java side.
            "terrace.event-poll-interval-ms" | "terrace.native.library" => {}
            "terrace.spark.chunk-size" | "terrace.spark.writer-buffer-size" => {
                parse_size(key, value)?;
            }
            "terrace.spark.reader-streams" => {
                value.trim().parse::<u32>().map_err(|_| {
                    NativeError::invalid(format!("{key}: expected a whole number, got {value:?}"))
                })?;
            }
            other if other.starts_with("terrace.") => {
                let known: Vec<&str> = KEYS.iter().map(|(k, _, _)| *k).collect();
                return Err(NativeError::invalid(format!(
                    "unknown configuration key {other:?}; known keys: {}",
                    known.join(", ")
                )));
            }
            // Not ours (Java passes only terrace.* keys, but be lenient).
            _ => {}
        }
    }
    agent
        .validate()
        .map_err(|e| NativeError::invalid(format!("terrace.* configuration: {e}")))?;
    Ok(NativeConfig {
        agent,
        master_poll_interval,
        log_filter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::NativeErrorKind;
    use std::path::Path;

    #[test]
    fn defaults_match_the_documented_table() {
        let defaults = parse_config([]).expect("defaults are valid");
        let documented = parse_config(
            KEYS.iter()
                .filter(|(k, _, _)| *k != "terrace.native.library")
                .map(|(k, v, _)| (*k, *v)),
        )
        .expect("documented defaults parse");
        assert_eq!(defaults, documented);
        assert_eq!(defaults.agent, AgentConfig::default());
    }

    /// Every key of the agents' config can be set from Flink: a new
    /// `AgentConfig` field needs its `terrace.*` key in [`KEYS`] (and so in
    /// the README's table and `TerraceConfig`), else this fails naming it.
    #[test]
    fn every_agent_config_key_has_a_flink_key() {
        let agent = serde_json::to_value(AgentConfig::default()).expect("serialize");
        let fields = agent.as_object().expect("a struct");
        assert!(fields.contains_key("job_renew_interval"), "{fields:?}");
        let flink: Vec<&str> = KEYS.iter().map(|(k, _, _)| *k).collect();
        for field in fields.keys() {
            let key = match field.as_str() {
                "master_addresses" => "terrace.master.address".to_string(),
                "tls_ca_file" => "terrace.tls.ca-file".to_string(),
                other => format!("terrace.{}", other.replace('_', "-")),
            };
            assert!(
                flink.contains(&key.as_str()),
                "AgentConfig.{field} has no Flink key {key}"
            );
        }
    }

    /// docs/configuration.md's engine table lists every key, under its Flink
    /// name (unless Spark-only) and its Spark name (unless Flink-only), with
    /// its default; and no key that does not exist.
    #[test]
    fn the_engine_key_table_lists_every_key() {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
        )
        .expect("read docs/configuration.md");
        let table: Vec<&str> = doc
            .split("<!-- keys: engine -->")
            .nth(1)
            .expect("an engine key table")
            .lines()
            .skip(3)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(
            table.len(),
            KEYS.len(),
            "one row per key:\n{}",
            table.join("\n")
        );
        for (key, default, _) in KEYS {
            let flink = if key.starts_with("terrace.spark.") {
                "—".to_string()
            } else {
                format!("`{key}`")
            };
            let spark = if *key == "terrace.event-poll-interval-ms" {
                "—".to_string()
            } else {
                format!("`spark.{key}`")
            };
            let row = table
                .iter()
                .find(|l| l.starts_with(&format!("| {flink} | {spark} |")))
                .unwrap_or_else(|| panic!("no row for {key} ({flink}, {spark})"));
            if !default.is_empty() {
                assert!(
                    row.contains(&format!("`{default}`")),
                    "{key}: default {default} in {row}"
                );
            }
        }
    }

    #[test]
    fn spark_keys_are_checked() {
        let e = parse_config([("terrace.spark.chunk-size", "lots")]).expect_err("not a size");
        assert!(e.to_string().contains("terrace.spark.chunk-size"), "{e}");
        let e = parse_config([("terrace.spark.reader-streams", "-1")]).expect_err("negative");
        assert!(
            e.to_string().contains("terrace.spark.reader-streams"),
            "{e}"
        );
        parse_config([
            ("terrace.spark.chunk-size", "2MiB"),
            ("terrace.spark.writer-buffer-size", "128MiB"),
            ("terrace.spark.reader-streams", "16"),
        ])
        .expect("valid Spark keys");
    }

    #[test]
    fn keys_parse() {
        let c = parse_config([
            ("terrace.master.address", " a:1, b:2 "),
            ("terrace.segment-size", "1MiB"),
            ("terrace.push-size", "256KiB"),
            ("terrace.compression", "false"),
            ("terrace.read-credits", "3"),
            ("terrace.request-timeout", "30s"),
            ("terrace.connect-timeout", "1500"),
            ("terrace.master.poll-interval", "2min"),
        ])
        .expect("valid");
        assert_eq!(
            c.agent.master_addresses,
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(c.agent.segment_size, ByteSize::mib(1));
        assert_eq!(c.agent.push_size, ByteSize::kib(256));
        assert!(!c.agent.compression);
        assert_eq!(c.agent.read_credits, 3);
        assert_eq!(c.agent.request_timeout, Duration::from_secs(30));
        assert_eq!(c.agent.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.master_poll_interval, Duration::from_secs(120));
    }

    /// The Flink adapter reads durations with the Rust configs' parser, and
    /// still takes everything it took with its own: a bare number of
    /// milliseconds, and `ms`, `s`, `sec`, `m`, `min`, `h` with or without
    /// a space.
    #[test]
    fn durations_take_the_rust_config_syntax_and_the_flink_forms() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (text, expected) in [
            ("1500", ms(1500)),
            (" 250 ", ms(250)),
            ("0", ms(0)),
            ("500ms", ms(500)),
            ("500 ms", ms(500)),
            ("30s", s(30)),
            ("30 s", s(30)),
            ("30sec", s(30)),
            ("30 sec", s(30)),
            ("2m", s(120)),
            ("2min", s(120)),
            ("1 min", s(60)),
            ("1h", s(3600)),
            ("1 h", s(3600)),
            ("  45s  ", s(45)),
            // Wider than before: what the TOML configs also accept.
            ("1.5s", ms(1500)),
            ("1h 30m", s(5400)),
            ("30 seconds", s(30)),
            ("1 minute", s(60)),
            ("2d", s(2 * 86_400)),
        ] {
            let parsed = parse_duration("terrace.request-timeout", text)
                .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(parsed, expected, "{text:?}");
            // The same text in a TOML config (bare numbers aside) means the same.
            if !text.trim().bytes().all(|b| b.is_ascii_digit()) {
                assert_eq!(
                    terrace_tier_api::parse_duration(text),
                    Ok(expected),
                    "{text:?}"
                );
            }
        }
        for text in [
            "",
            "s",
            "5 fortnights",
            "-5s",
            "5x",
            "1e3",
            "18446744073709551616",
        ] {
            let e = parse_duration("terrace.request-timeout", text).expect_err(text);
            assert_eq!(e.kind, NativeErrorKind::InvalidArgument, "{text:?}");
            assert!(e.message.contains("terrace.request-timeout"), "{e:?}");
        }
    }

    #[test]
    fn sizes_take_the_rust_config_syntax() {
        for (text, expected) in [
            ("1MiB", ByteSize::mib(1)),
            ("1 MiB", ByteSize::mib(1)),
            ("512k", ByteSize::kib(512)),
            ("2MB", ByteSize(2_000_000)),
            ("4096", ByteSize(4096)),
        ] {
            assert_eq!(
                parse_size("terrace.push-size", text).ok(),
                Some(expected),
                "{text:?}"
            );
            assert_eq!(text.parse::<ByteSize>(), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn bad_values_and_unknown_keys_are_rejected() {
        for pair in [
            ("terrace.segmentsize", "1MiB"),
            ("terrace.segment-size", "lots"),
            ("terrace.compression", "yes"),
            ("terrace.read-credits", "0"),
            ("terrace.master.address", "nohostport"),
            ("terrace.master.address", ""),
            ("terrace.request-timeout", "5 fortnights"),
            ("terrace.master.poll-interval", "0s"),
        ] {
            let e = parse_config([pair]).expect_err("invalid");
            assert_eq!(e.kind, NativeErrorKind::InvalidArgument, "{pair:?}");
        }
    }
}
