//! The shuffle descriptor: everything a producer or consumer needs to find a
//! partition's data. It is created once by the master agent and never changes.

use serde::{Deserialize, Serialize};

use crate::error::TierError;
use crate::ids::{JobId, PartitionId, PartitionKey};

/// Where a partition's data lives. Small, serializable (JSON here; the Flink
/// adapter carries the same fields in a Java-serializable class).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ShuffleDescriptor {
    /// Hex of the job id.
    pub job: String,
    /// Hex of the partition id.
    pub partition: String,
    /// The worker that holds (the first region of) the partition.
    pub worker_id: String,
    /// `host:port` of that worker's data port.
    pub worker_address: String,
    /// Hex of the job's token, which producers and consumers present to the
    /// worker; empty when the cluster has no secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl ShuffleDescriptor {
    pub fn new(
        key: &PartitionKey,
        worker_id: impl Into<String>,
        worker_address: impl Into<String>,
    ) -> Self {
        ShuffleDescriptor {
            job: key.job.to_hex(),
            partition: key.partition.to_hex(),
            worker_id: worker_id.into(),
            worker_address: worker_address.into(),
            token: String::new(),
        }
    }

    /// The descriptor with the job's token (hex).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// The partition key, validated.
    pub fn key(&self) -> Result<PartitionKey, TierError> {
        Ok(PartitionKey {
            job: JobId::from_hex(&self.job)?,
            partition: PartitionId::from_hex(&self.partition)?,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a descriptor always serializes")
    }

    pub fn from_json(json: &str) -> Result<Self, TierError> {
        let d: ShuffleDescriptor = serde_json::from_str(json)
            .map_err(|e| TierError::bad_input(format!("shuffle descriptor does not parse: {e}")))?;
        d.key()?;
        Ok(d)
    }
}
