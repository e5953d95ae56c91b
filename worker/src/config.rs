//! Worker configuration (`terrace worker --config worker.toml`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use terrace_admin::AdminConfig;
use terrace_rpc::{SecurityConfig, ServerOptions};
use terrace_tier_api::{ByteSize, ConfigError};

/// Every key of the `[worker]` config file. All have defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address to listen on for producers, consumers and agents.
    pub listen: String,
    /// Address announced to the master (what clients connect to). Defaults to
    /// the bound listen address.
    pub advertise_address: Option<String>,
    /// Stable worker id reported to the master. Defaults to the advertised address.
    pub worker_id: Option<String>,
    /// Directories for partition data files; partitions are spread over them.
    pub data_dirs: Vec<PathBuf>,
    /// Start even when a data directory listed in another one's marker (so
    /// in use before) is missing or unmarked, e.g. an unmounted disk. The
    /// worker then serves what the other directories and the object store
    /// hold, and deletes nothing whose owner it cannot see. Off: it refuses
    /// to start and names the directory.
    pub allow_missing_data_dirs: bool,
    /// Bytes of data files each directory may hold. Default: the
    /// filesystem's free space less `dir_reserve` (never more than that).
    pub dir_capacity: Option<ByteSize>,
    /// Free space left untouched on each directory's filesystem.
    pub dir_reserve: ByteSize,
    /// The object-store tier (cold and overflow data). Absent: none.
    pub object_store: Option<ObjectStoreConfig>,
    /// What a sealed partition must reach before its seal is acknowledged:
    /// `"local"`, this worker's disks (lost with the worker for good), or
    /// `"object-store"`, the object store (data and index), from which
    /// another worker adopts it when this one is lost. Needs `object_store`.
    pub durability: Durability,
    /// With `durability = "object-store"`: the seal waits for the upload
    /// (true), or is acknowledged at once and the part made durable right
    /// after, within `object_store.migration_interval` (false: faster seals;
    /// a worker lost in between loses the part, and its producer re-runs).
    pub durable_before_ack: bool,
    /// Bytes of pushed data held in memory at most; pushes wait beyond it.
    pub memory_budget: ByteSize,
    /// When memory use passes this fraction of the budget, the flusher writes
    /// partitions' in-memory data to their files, largest first...
    pub flush_high_watermark: f64,
    /// ...until use falls under this fraction. Sealing always flushes.
    pub flush_low_watermark: f64,
    /// Write each push's data to its local file as soon as it is stored, on
    /// the thread that received it (while the bytes are in that core's
    /// caches), instead of holding it in memory until the flusher or a seal
    /// writes it. Memory then holds pushes only until they are written;
    /// reads come from the page cache.
    pub write_on_push: bool,
    /// Largest frame accepted. Must not exceed half the memory budget.
    pub max_frame_size: ByteSize,
    /// Bytes of extents sent in one read frame (one credit) at most.
    pub read_batch_size: ByteSize,
    /// Bytes of read data the worker holds at once: read for readers and not
    /// yet sent. Reads wait while it is short. At least `read_batch_size`.
    pub read_memory: ByteSize,
    /// A partition whose part here passes this many stored bytes is split:
    /// its producer is asked to go on on another worker (at its next push).
    pub split_size: ByteSize,
    /// A decommissioning worker exits once its partitions are released, or
    /// after this long with whatever is left (its readers then get
    /// partition-not-found, and Flink reruns those producers).
    #[serde(with = "terrace_tier_api::duration")]
    pub decommission_timeout: Duration,
    /// How long a reader opening a partition that is not created yet waits for it.
    #[serde(with = "terrace_tier_api::duration")]
    pub partition_wait_timeout: Duration,
    /// Masters to register with and heartbeat to (`host:port`). Empty: run standalone.
    pub master_addresses: Vec<String>,
    /// Interval between heartbeats to each master.
    #[serde(with = "terrace_tier_api::duration")]
    pub heartbeat_interval: Duration,
    /// Bounds on what a peer may ask for (the `[limits]` table).
    pub limits: WorkerLimits,
    /// Connection limits and timeouts (the `[server]` table).
    pub server: ServerOptions,
    /// Cluster secret and TLS (`[security]`); `tls_ca_file` is for the
    /// connections to masters.
    pub security: SecurityConfig,
    /// The admin HTTP server (`[admin]`): metrics, health, readiness and
    /// the worker's JSON API. Off unless `admin.listen` is set.
    pub admin: AdminConfig,
}

/// Bounds on the values a peer sends, checked before they size anything. A
/// request past one gets a bad-request error naming the field and the limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerLimits {
    /// Subpartitions of one partition (`CreatePartition.num_subpartitions`)
    /// and of one read stream's range. Flink's largest parallelism is 32768.
    pub max_subpartitions: u32,
    /// Credits a read stream may hold (`OpenStream.initial_credit` plus every
    /// `AddCredit` not yet used): each is one read frame queued for the reader.
    pub max_stream_credits: u32,
    /// Read streams open at once on one connection.
    pub max_streams_per_connection: u32,
    /// Buffers in one push.
    pub max_buffers_per_push: u32,
    /// Partitions a worker holds (open and sealed).
    pub max_partitions: u32,
    /// Data files held open at once; more are opened on demand, the least
    /// recently used closed. Default: half the open-file limit (which the
    /// worker raises to its hard limit at start).
    pub max_open_data_files: Option<u32>,
    /// Partitions of one job a worker holds (open and sealed), so that one
    /// job cannot take the whole of `max_partitions`.
    pub max_partitions_per_job: u32,
    /// Bytes of metadata a worker holds at most: partitions' indexes
    /// (subpartitions, segments, extents), per-partition and per-job state,
    /// read streams and their waiting commands, released keys. Charged
    /// before it is taken; a request past it gets an `Unavailable` error
    /// naming this key.
    pub metadata_memory: ByteSize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            max_subpartitions: 32_768,
            max_stream_credits: 1024,
            max_streams_per_connection: 1024,
            max_buffers_per_push: 65_536,
            max_partitions: 1_000_000,
            max_open_data_files: None,
            max_partitions_per_job: 100_000,
            metadata_memory: ByteSize::mib(512),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: "127.0.0.1:9871".into(),
            advertise_address: None,
            worker_id: None,
            data_dirs: vec![PathBuf::from("./terrace-data")],
            allow_missing_data_dirs: false,
            dir_capacity: None,
            dir_reserve: ByteSize::gib(1),
            object_store: None,
            durability: Durability::Local,
            durable_before_ack: true,
            memory_budget: ByteSize::gib(1),
            flush_high_watermark: 0.75,
            flush_low_watermark: 0.5,
            write_on_push: true,
            max_frame_size: ByteSize::mib(16),
            read_batch_size: ByteSize::kib(512),
            read_memory: ByteSize::mib(256),
            split_size: ByteSize::gib(1),
            decommission_timeout: Duration::from_secs(6 * 3600),
            partition_wait_timeout: Duration::from_secs(30),
            master_addresses: Vec::new(),
            heartbeat_interval: Duration::from_secs(1),
            limits: WorkerLimits::default(),
            server: ServerOptions::default(),
            security: SecurityConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl WorkerConfig {
    /// Checks relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        if self.data_dirs.is_empty() {
            return Err(ConfigError::new(
                "data_dirs",
                "data_dirs must name at least one directory",
            ));
        }
        if self.max_frame_size.as_u64() * 2 > self.memory_budget.as_u64() {
            return Err(ConfigError::new(
                "max_frame_size",
                format!(
                    "max_frame_size ({}) must be at most half of memory_budget ({}): a compressed push and its decompressed copy must both fit",
                    self.max_frame_size, self.memory_budget
                ),
            ));
        }
        if self.read_memory < self.read_batch_size
            || self.read_memory.as_u64() > u64::from(u32::MAX)
        {
            return Err(ConfigError::new(
                "read_memory",
                format!(
                    "read_memory ({}) must be at least read_batch_size ({}) and at most 4GiB",
                    self.read_memory, self.read_batch_size
                ),
            ));
        }
        if self.read_batch_size.as_u64() == 0 {
            return Err(ConfigError::new(
                "read_batch_size",
                "read_batch_size must be positive",
            ));
        }
        if self.split_size.as_u64() == 0 {
            return Err(ConfigError::new(
                "split_size",
                "split_size must be positive",
            ));
        }
        let (low, high) = (self.flush_low_watermark, self.flush_high_watermark);
        if !(0.0..=1.0).contains(&high) || !(0.0..=high).contains(&low) {
            return Err(ConfigError::new(
                "flush_low_watermark",
                format!(
                    "flush watermarks must satisfy 0 <= flush_low_watermark ({low}) <= flush_high_watermark ({high}) <= 1"
                ),
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::new(
                "heartbeat_interval",
                "heartbeat_interval must be positive",
            ));
        }
        if let Some(store) = &self.object_store {
            store.validate(self.max_frame_size)?;
        }
        if self.durability == Durability::ObjectStore && self.object_store.is_none() {
            return Err(ConfigError::new(
                "durability",
                "durability = \"object-store\" needs an [object_store] table",
            ));
        }
        let l = &self.limits;
        for (name, value) in [
            ("max_subpartitions", l.max_subpartitions),
            ("max_stream_credits", l.max_stream_credits),
            ("max_streams_per_connection", l.max_streams_per_connection),
            ("max_buffers_per_push", l.max_buffers_per_push),
            ("max_partitions", l.max_partitions),
            ("max_open_data_files", l.max_open_data_files.unwrap_or(1)),
            ("max_partitions_per_job", l.max_partitions_per_job),
        ] {
            if value == 0 {
                return Err(ConfigError::new(
                    format!("limits.{name}"),
                    format!("limits.{name} must be positive"),
                ));
            }
        }
        if l.metadata_memory.as_u64() < 1 << 20 {
            return Err(ConfigError::new(
                "limits.metadata_memory",
                format!(
                    "limits.metadata_memory ({}) must be at least 1MiB",
                    l.metadata_memory
                ),
            ));
        }
        Ok(())
    }
}

/// Where a sealed partition must be before its seal is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// This worker's data directories (or the object store for what
    /// overflowed): a worker lost for good loses its partitions.
    #[default]
    Local,
    /// The object store, data and index: a lost worker's sealed partitions
    /// are adopted by other workers.
    ObjectStore,
}

/// The `[object_store]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`, `file:///path` or `memory://`.
    pub url: String,
    /// Builder options, e.g. `aws_endpoint`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_region`, `aws_allow_http`. They override
    /// the `AWS_*` environment variables.
    pub options: BTreeMap<String, String>,
    /// One request, body included.
    #[serde(with = "terrace_tier_api::duration")]
    pub request_timeout: Duration,
    /// Retries of a failed request (after the first attempt).
    pub retries: u32,
    /// First wait before a retry; doubled each time, at most 10 s.
    #[serde(with = "terrace_tier_api::duration")]
    pub backoff: Duration,
    /// Largest overflow object, and the part size of migration uploads (S3
    /// needs at least 5 MiB).
    pub part_size: ByteSize,
    /// Bytes of object-store reads held at once.
    pub read_budget: ByteSize,
    /// Largest ranged GET a reader's stream makes ahead of what it was asked
    /// for (back-to-back extents of one object); 0 turns reading ahead off.
    pub read_ahead: ByteSize,
    /// Sealed partitions not read for this long move to the object store.
    #[serde(with = "terrace_tier_api::duration")]
    pub cold_after: Duration,
    /// Local use (fraction of the directories' capacity) above which the
    /// oldest sealed partitions move to the object store...
    pub local_high_watermark: f64,
    /// ...until it falls under this fraction.
    pub local_low_watermark: f64,
    /// How often the migrator looks.
    #[serde(with = "terrace_tier_api::duration")]
    pub migration_interval: Duration,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            url: String::new(),
            options: BTreeMap::new(),
            request_timeout: Duration::from_secs(30),
            retries: 4,
            backoff: Duration::from_millis(200),
            part_size: ByteSize::mib(16),
            read_budget: ByteSize::mib(64),
            read_ahead: ByteSize::mib(4),
            cold_after: Duration::from_secs(600),
            local_high_watermark: 0.9,
            local_low_watermark: 0.75,
            migration_interval: Duration::from_secs(1),
        }
    }
}

impl ObjectStoreConfig {
    fn validate(&self, max_frame_size: ByteSize) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return Err(ConfigError::new(
                "object_store.url",
                "object_store.url is required (s3://bucket/prefix, file:///path or memory://)",
            ));
        }
        if self.request_timeout.is_zero() || self.migration_interval.is_zero() {
            return Err(ConfigError::new(
                "object_store.request_timeout",
                "object_store.request_timeout and migration_interval must be positive",
            ));
        }
        if self.part_size.as_u64() < 5 << 20 {
            return Err(ConfigError::new(
                "object_store.part_size",
                format!(
                    "object_store.part_size ({}) must be at least 5MiB (S3's smallest multipart part)",
                    self.part_size
                ),
            ));
        }
        if self.read_budget.as_u64() < max_frame_size.as_u64() {
            return Err(ConfigError::new(
                "object_store.read_budget",
                format!(
                    "object_store.read_budget ({}) must hold one frame (max_frame_size {})",
                    self.read_budget, max_frame_size
                ),
            ));
        }
        let (low, high) = (self.local_low_watermark, self.local_high_watermark);
        if !(0.0..=1.0).contains(&high) || !(0.0..=high).contains(&low) {
            return Err(ConfigError::new(
                "object_store.local_low_watermark",
                format!(
                    "object_store watermarks must satisfy 0 <= local_low_watermark ({low}) <= local_high_watermark ({high}) <= 1"
                ),
            ));
        }
        Ok(())
    }
}
