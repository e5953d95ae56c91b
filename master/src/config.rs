//! The master's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use terrace_admin::AdminConfig;
use terrace_rpc::{SecurityConfig, ServerOptions};
use terrace_tier_api::{ByteSize, ConfigError};

/// Settings of the master service. Every field has a default, so an empty
/// file is a valid configuration:
///
/// ```toml
/// listen = "0.0.0.0:9870"
/// worker_timeout = "10s"
/// max_frame_size = "1MiB"
/// released_job_memory = "5m"
/// partition_size_estimate = "64MiB"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasterConfig {
    /// `host:port` to listen on. [`run`](crate::run) takes a listener that is
    /// already bound, so this is read by whoever binds it (the CLI).
    pub listen: String,
    /// A worker whose last heartbeat is older than this is lost: it gets no
    /// new partitions and leaves the worker list, so master agents report the
    /// partitions it held as lost. Several heartbeat intervals long.
    #[serde(with = "terrace_tier_api::duration")]
    pub worker_timeout: Duration,
    /// Largest frame the master accepts from a peer. Master requests carry no
    /// body and take a few hundred bytes, so 1MiB leaves ample room while
    /// bounding what a hostile peer can make the master allocate. (It does not
    /// bound the master's replies: a `WorkerList` is limited by its reader.)
    pub max_frame_size: ByteSize,
    /// How long an unregistered job is remembered and listed in heartbeat
    /// replies, so that every worker learns to drop its data. Must be longer
    /// than the workers' heartbeat interval.
    #[serde(with = "terrace_tier_api::duration")]
    pub released_job_memory: Duration,
    /// A job not renewed by its master agent for this long is released: its
    /// agent (the engine's coordinator) is taken for dead, and workers drop
    /// its data. Agents renew every `job_renew_interval` (several per lease).
    #[serde(with = "terrace_tier_api::duration")]
    pub job_lease: Duration,
    /// Bytes a newly placed partition is assumed to add to its worker's load,
    /// until the worker's next heartbeat reports what it really stores.
    pub partition_size_estimate: ByteSize,
    /// How long the master waits for a worker that a peer reported
    /// unreachable to answer its own handshake before it stops placing
    /// partitions there for every job.
    #[serde(with = "terrace_tier_api::duration")]
    pub probe_timeout: Duration,
    /// How long a lost worker (silent past `worker_timeout` without having
    /// been decommissioning) is still counted as lost in the metrics and
    /// listed by the admin API, unless it heartbeats again first.
    #[serde(with = "terrace_tier_api::duration")]
    pub lost_worker_memory: Duration,
    /// How long a worker that said it is restarting (its last heartbeat
    /// said so) may stay silent before it is taken for lost, instead of
    /// `worker_timeout`. Meanwhile it gets no partitions and consumers wait
    /// for it.
    #[serde(with = "terrace_tier_api::duration")]
    pub restart_grace: Duration,
    /// Bounds on what peers may make the master remember (`[limits]`).
    pub limits: MasterLimits,
    /// Connection limits and timeouts (`[server]`).
    pub server: ServerOptions,
    /// Cluster secret and TLS (`[security]`).
    pub security: SecurityConfig,
    /// Admin HTTP server: metrics, health, readiness, JSON API (`[admin]`).
    pub admin: AdminConfig,
}

/// Bounds on the state peers can make a master hold. Past one, a request
/// gets an error naming the limit (released jobs: the oldest is forgotten).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasterLimits {
    /// Live workers.
    pub max_workers: u32,
    /// Registered jobs.
    pub max_jobs: u32,
    /// Released jobs remembered (and listed in every heartbeat reply) for
    /// `released_job_memory`; past it the oldest is forgotten early.
    pub max_released_jobs: u32,
    /// Relocated partitions remembered per job (placed elsewhere because
    /// their descriptor's worker was unreachable); past it a relocation of
    /// that job is not recorded (logged) and its consumers fail with
    /// partition-not-found, so the engine re-runs the producer.
    pub max_relocations_per_job: u32,
    /// Later parts of split partitions remembered per job (for master
    /// agents' `ListParts`); past it a part of that job is not recorded
    /// (logged), and losing its worker is found by the partition's readers
    /// instead of being reported.
    pub max_parts_per_job: u32,
}

impl Default for MasterLimits {
    fn default() -> Self {
        MasterLimits {
            max_workers: 10_000,
            max_jobs: 100_000,
            max_released_jobs: 10_000,
            max_relocations_per_job: 16_384,
            max_parts_per_job: 65_536,
        }
    }
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            listen: "127.0.0.1:9870".to_string(),
            worker_timeout: Duration::from_secs(10),
            max_frame_size: ByteSize::mib(1),
            released_job_memory: Duration::from_secs(5 * 60),
            job_lease: Duration::from_secs(60),
            partition_size_estimate: ByteSize::mib(64),
            probe_timeout: Duration::from_secs(3),
            lost_worker_memory: Duration::from_secs(15 * 60),
            restart_grace: Duration::from_secs(60),
            limits: MasterLimits::default(),
            server: ServerOptions::default(),
            security: SecurityConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

/// Smallest `max_frame_size` that still fits every master request: a
/// worker's heartbeat carries up to 48 KiB of job ids and relocated
/// partitions besides its load.
const MIN_FRAME_SIZE: ByteSize = ByteSize::kib(64);

impl MasterConfig {
    /// Checks the fields; call after loading.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.worker_timeout.is_zero() {
            return Err(ConfigError::new(
                "worker_timeout",
                "worker_timeout must be positive",
            ));
        }
        if self.probe_timeout.is_zero() {
            return Err(ConfigError::new(
                "probe_timeout",
                "probe_timeout must be positive",
            ));
        }
        if self.job_lease.is_zero() {
            return Err(ConfigError::new("job_lease", "job_lease must be positive"));
        }
        if self.max_frame_size < MIN_FRAME_SIZE {
            return Err(ConfigError::new(
                "max_frame_size",
                format!(
                    "max_frame_size ({}) must be at least {MIN_FRAME_SIZE}",
                    self.max_frame_size
                ),
            ));
        }
        let l = &self.limits;
        for (name, value) in [
            ("max_workers", l.max_workers),
            ("max_jobs", l.max_jobs),
            ("max_released_jobs", l.max_released_jobs),
            ("max_relocations_per_job", l.max_relocations_per_job),
            ("max_parts_per_job", l.max_parts_per_job),
        ] {
            if value == 0 {
                return Err(ConfigError::new(
                    format!("limits.{name}"),
                    format!("limits.{name} must be positive"),
                ));
            }
        }
        self.server.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let config: MasterConfig = toml::from_str("").expect("empty config parses");
        assert_eq!(config, MasterConfig::default());
        assert_eq!(config.listen, "127.0.0.1:9870");
        assert_eq!(config.worker_timeout, Duration::from_secs(10));
        assert_eq!(config.max_frame_size, ByteSize(1024 * 1024));
        assert_eq!(config.released_job_memory, Duration::from_secs(300));
        assert_eq!(config.partition_size_estimate, ByteSize(64 * 1024 * 1024));
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn human_readable_values_parse_and_unknown_fields_are_refused() {
        let config: MasterConfig = toml::from_str(
            "listen = \"0.0.0.0:1\"\nworker_timeout = \"300ms\"\nmax_frame_size = \"64KiB\"\n\
             released_job_memory = \"1m\"\npartition_size_estimate = 0\n\
             [server]\nmax_connections = 3\nframe_timeout = \"2s\"\n\
             [security]\nsecret_file = \"/etc/terrace/secret\"\n\
             [admin]\nlisten = \"127.0.0.1:9880\"\n",
        )
        .expect("config parses");
        assert_eq!(
            config,
            MasterConfig {
                listen: "0.0.0.0:1".into(),
                worker_timeout: Duration::from_millis(300),
                max_frame_size: ByteSize(65536),
                released_job_memory: Duration::from_secs(60),
                job_lease: Duration::from_secs(60),
                partition_size_estimate: ByteSize(0),
                probe_timeout: Duration::from_secs(3),
                lost_worker_memory: Duration::from_secs(900),
                restart_grace: Duration::from_secs(60),
                limits: MasterLimits::default(),
                server: ServerOptions {
                    max_connections: 3,
                    frame_timeout: Duration::from_secs(2),
                    ..ServerOptions::default()
                },
                security: SecurityConfig {
                    secret_file: Some("/etc/terrace/secret".into()),
                    ..SecurityConfig::default()
                },
                admin: AdminConfig {
                    listen: Some("127.0.0.1:9880".into()),
                    token_file: None,
                },
            }
        );
        let err = toml::from_str::<MasterConfig>("listn = \"x\"").expect_err("typo is refused");
        assert!(err.to_string().contains("unknown field `listn`"), "{err}");
    }

    #[test]
    fn validate_refuses_zero_timeout_and_tiny_frames() {
        let zero = MasterConfig {
            worker_timeout: Duration::ZERO,
            ..MasterConfig::default()
        };
        assert_eq!(
            zero.validate(),
            Err(ConfigError::new(
                "worker_timeout",
                "worker_timeout must be positive"
            ))
        );
        let tiny = MasterConfig {
            max_frame_size: ByteSize(100),
            ..MasterConfig::default()
        };
        assert_eq!(
            tiny.validate(),
            Err(ConfigError::new(
                "max_frame_size",
                "max_frame_size (100B) must be at least 64KiB"
            ))
        );
    }
}
