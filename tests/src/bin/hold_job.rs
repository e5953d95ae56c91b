//! Test helper for job leases: a master agent (an engine's coordinator, as
//! far as Terrace can tell) that registers a job, places a partition, writes
//! and seals it, prints `ready <worker address>`, then renews the job's lease
//! until it is killed.
//!
//! Usage: `hold_job MASTER RENEW_INTERVAL_MS`

use std::sync::Arc;
use std::time::Duration;

use terrace_master_agent::MasterAgent;
use terrace_tier_api::{PartitionId, TierError, TierMasterAgent, TierShuffleHandler};

#[derive(Debug)]
struct Ignore;

impl TierShuffleHandler for Ignore {
    fn on_release_partitions(&self, _partitions: Vec<PartitionId>) {}
    fn on_fatal_error(&self, error: TierError) {
        eprintln!("hold_job: fatal error: {error}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(master), Some(renew)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: hold_job MASTER RENEW_INTERVAL_MS");
        std::process::exit(2);
    };
    let renew: u64 = renew.parse().expect("RENEW_INTERVAL_MS is a number");
    let config = terrace_tier_api::AgentConfig {
        master_addresses: vec![master.clone()],
        job_renew_interval: Duration::from_millis(renew),
        ..terrace_tests::small_agent_config()
    };
    let agent = MasterAgent::new(config.clone()).expect("master agent");
    let key = terrace_tests::key(42, 1);
    agent
        .register_job(&key.job, Arc::new(Ignore))
        .expect("register the job");
    let descriptor = agent
        .add_partition_and_get_shuffle_descriptor(&key.job, &key.partition, 2)
        .expect("place a partition");
    let address = descriptor.worker_address.clone();
    terrace_tests::write_partition(&config, descriptor, 1, 2, 20, 2000);
    println!("ready {address}");
    // Holds the job (the agent renews its lease) until the test kills this
    // process; the main thread has nothing else to do.
    loop {
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_secs(1));
    }
}
