//! The one crate an engine links to use Terrace as a tier: [`TerraceTierFactory`]
//! implements the contract's `TierFactory` and creates the master, producer
//! and consumer agents from one `AgentConfig`; the contract's types are
//! re-exported.
//!
//! It adds no behaviour of its own: everything happens in the agent crates.

use terrace_consumer_agent::ConsumerAgent;
use terrace_master_agent::MasterAgent;
use terrace_producer_agent::ProducerAgent;
use terrace_tier_api::{
    AgentConfig, ConsumerSpec, ProducerSpec, ShuffleDescriptor, TierFactory, TierResult,
};

pub use terrace_consumer_agent::ConsumerAgent as TerraceConsumerAgent;
pub use terrace_master_agent::MasterAgent as TerraceMasterAgent;
pub use terrace_producer_agent::ProducerAgent as TerraceProducerAgent;
pub use terrace_tier_api as api;

/// Creates Terrace's agents (Flink's `TierFactory`, with `setup` folded into
/// [`TerraceTierFactory::new`]).
#[derive(Debug, Clone)]
pub struct TerraceTierFactory {
    config: AgentConfig,
}

impl TerraceTierFactory {
    /// Checks `config` and keeps it for every agent this factory creates.
    pub fn new(config: AgentConfig) -> TierResult<Self> {
        config.validate()?;
        Ok(TerraceTierFactory { config })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }
}

impl TierFactory for TerraceTierFactory {
    type MasterAgent = MasterAgent;
    type ProducerAgent = ProducerAgent;
    type ConsumerAgent = ConsumerAgent;

    fn create_master_agent(&self) -> TierResult<MasterAgent> {
        MasterAgent::new(self.config.clone())
    }

    fn create_producer_agent(&self, spec: ProducerSpec) -> TierResult<ProducerAgent> {
        ProducerAgent::new(self.config.clone(), spec)
    }

    fn create_consumer_agent(
        &self,
        specs: Vec<ConsumerSpec>,
        descriptors: Vec<Option<ShuffleDescriptor>>,
    ) -> TierResult<ConsumerAgent> {
        ConsumerAgent::new(self.config.clone(), specs, descriptors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_tier_api::{ByteSize, ErrorKind};

    #[test]
    fn an_inconsistent_config_is_refused() {
        let bad = AgentConfig {
            push_size: ByteSize::mib(32),
            ..AgentConfig::default()
        };
        let err = TerraceTierFactory::new(bad).expect_err("push_size past max_bytes_in_flight");
        assert_eq!(err.kind(), ErrorKind::BadInput);
        // The message is the point: it names the limit to change.
        assert!(err.message().contains("max_bytes_in_flight"), "{err}");
    }

    #[test]
    fn a_master_agent_needs_a_master_address() {
        let factory = TerraceTierFactory::new(AgentConfig {
            master_addresses: Vec::new(),
            ..AgentConfig::default()
        })
        .expect("valid config");
        let err = factory
            .create_master_agent()
            .expect_err("no master to talk to");
        assert_eq!(err.kind(), ErrorKind::BadInput);
    }
}
