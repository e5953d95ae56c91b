//! Worker configuration (`terrace worker --config worker.toml`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use terrace_tier_api::ByteSize;

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
    /// Bytes of pushed data held in memory at most; pushes wait beyond it.
    pub memory_budget: ByteSize,
    /// When memory use passes this fraction of the budget, the flusher writes
    /// partitions' in-memory data to their files, largest first...
    pub flush_high_watermark: f64,
    /// ...until use falls under this fraction. Sealing always flushes.
    pub flush_low_watermark: f64,
    /// Largest frame accepted. Must not exceed half the memory budget.
    pub max_frame_size: ByteSize,
    /// Bytes of extents sent in one read frame (one credit) at most.
    pub read_batch_size: ByteSize,
    /// How long a reader opening a partition that is not created yet waits for it.
    #[serde(with = "humantime_serde")]
    pub partition_wait_timeout: Duration,
    /// Masters to register with and heartbeat to (`host:port`). Empty: run standalone.
    pub master_addresses: Vec<String>,
    /// Interval between heartbeats to each master.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: "127.0.0.1:9871".into(),
            advertise_address: None,
            worker_id: None,
            data_dirs: vec![PathBuf::from("./terrace-data")],
            memory_budget: ByteSize::gib(1),
            flush_high_watermark: 0.75,
            flush_low_watermark: 0.5,
            max_frame_size: ByteSize::mib(16),
            read_batch_size: ByteSize::kib(512),
            partition_wait_timeout: Duration::from_secs(30),
            master_addresses: Vec::new(),
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

impl WorkerConfig {
    /// Checks relations between fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dirs.is_empty() {
            return Err("data_dirs must name at least one directory".into());
        }
        if self.max_frame_size.as_u64() * 2 > self.memory_budget.as_u64() {
            return Err(format!(
                "max_frame_size ({}) must be at most half of memory_budget ({}): a compressed push and its decompressed copy must both fit",
                self.max_frame_size, self.memory_budget
            ));
        }
        if self.read_batch_size.as_u64() == 0 {
            return Err("read_batch_size must be positive".into());
        }
        let (low, high) = (self.flush_low_watermark, self.flush_high_watermark);
        if !(0.0..=1.0).contains(&high) || !(0.0..=high).contains(&low) {
            return Err(format!(
                "flush watermarks must satisfy 0 <= flush_low_watermark ({low}) <= flush_high_watermark ({high}) <= 1"
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval must be positive".into());
        }
        Ok(())
    }
}
