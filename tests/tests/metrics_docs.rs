//! docs/operations.md lists every metric a service exports, with its type
//! and meaning, and nothing it does not export: each test here reads a
//! running service's `/metrics` and compares its metric families with the
//! table under the service's heading, both ways.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use terrace_admin::catalog;
use terrace_master::{Listeners, MasterConfig, SystemClock};
use terrace_rpc::clock;
use terrace_tests::logs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn operations_md() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Fails naming every difference between the families of `exposition`
/// and the table under `heading` of docs/operations.md.
fn assert_documented(heading: &str, exposition: &str) {
    let documented = catalog::documented(&operations_md(), heading)
        .unwrap_or_else(|e| panic!("docs/operations.md: {e}"));
    let exported: BTreeMap<String, String> = catalog::exported(exposition);
    assert!(!exported.is_empty(), "no metric exported:\n{exposition}");
    let differences = catalog::differences(&documented, &exported);
    assert!(
        differences.is_empty(),
        "docs/operations.md \"{heading}\" and the exported metrics differ:\n{}",
        differences.join("\n")
    );
}

#[tokio::test]
async fn every_master_metric_is_documented_and_every_documented_one_is_exported() {
    let _logs = logs::capture();
    let rpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin_addr = admin.local_addr().expect("bound").to_string();
    let shutdown = CancellationToken::new();
    let master = tokio::spawn(terrace_master::serve(
        MasterConfig::default(),
        Listeners {
            rpc,
            admin: Some(admin),
        },
        shutdown.clone(),
        Arc::new(SystemClock),
    ));
    let reply = terrace_admin::client::get(&admin_addr, "/metrics", None, WAIT)
        .await
        .expect("GET /metrics");
    assert_eq!(reply.status, 200);
    assert_documented("### Master metrics", &reply.body);
    // The contract's names are among them (alert rules and dashboards use them).
    let exported = catalog::exported(&reply.body);
    for name in [
        "terrace_master_workers",
        "terrace_master_workers_lost_total",
        "terrace_master_jobs",
        "terrace_master_placements_total",
        "terrace_master_placements_refused_total",
        "terrace_master_lease_expiries_total",
        "terrace_master_relocations_total",
    ] {
        assert!(exported.contains_key(name), "{name} is not exported");
    }
    shutdown.cancel();
    clock::timeout(WAIT, master)
        .await
        .expect("master stops")
        .expect("no panic")
        .expect("master ran");
}
