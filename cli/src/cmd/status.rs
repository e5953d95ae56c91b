//! `terrace status`: what a master knows, and each worker's own counters,
//! with where its bytes are (memory, local data directories, object store).

use anyhow::Context;
use terrace_rpc::{
    Client, ClientOptions, ExpectedServer, Security, SecurityConfig, ServerIdentity,
};
use terrace_tier_api::protocol::{
    ListWorkers, TierStats, WorkerLoad, WorkerStats, WorkerStatsReply,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Master to ask.
    #[arg(long, env = "TERRACE_MASTER", default_value = "127.0.0.1:9870")]
    master: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// File holding the cluster secret, when the cluster has one.
    #[arg(long, env = "TERRACE_SECRET_FILE")]
    secret_file: Option<std::path::PathBuf>,
    /// PEM CA certificates, when the cluster serves TLS.
    #[arg(long, env = "TERRACE_TLS_CA_FILE")]
    tls_ca_file: Option<std::path::PathBuf>,
}

/// The version of `terrace status --json`'s shape: fields may be added
/// within a version; none is renamed, removed or changes its meaning or
/// type without a new one. docs/configuration.md documents every field (a
/// test compares the two).
const STATUS_FORMAT_VERSION: u32 = 1;

/// What `terrace status --json` prints.
#[derive(Debug, serde::Serialize)]
struct StatusReport<'a> {
    /// [`STATUS_FORMAT_VERSION`].
    format_version: u32,
    /// The master asked, as given.
    master: &'a str,
    /// The jobs the master knows, each id in hex.
    jobs: &'a [String],
    /// The live workers the master lists, in its order.
    workers: &'a [WorkerStatus],
}

#[derive(Debug, serde::Serialize)]
struct WorkerStatus {
    worker_id: String,
    address: String,
    millis_since_heartbeat: u64,
    stored_bytes: u64,
    memory_used_bytes: u64,
    memory_budget_bytes: u64,
    memory_peak_bytes: u64,
    partitions: u32,
    sealed_partitions: u32,
    bytes_pushed: u64,
    bytes_read: u64,
    /// What placement weighs, from the worker (or its last heartbeat).
    load: LoadStatus,
    error: Option<String>,
    /// Bytes per tier, data directories and object store: from the worker
    /// itself when it answered, else from its last heartbeat to the master.
    tiers: Option<TierStatus>,
    /// "worker" or "master": who reported `tiers`.
    tiers_from: Option<&'static str>,
}

#[derive(Debug, Default, serde::Serialize)]
struct LoadStatus {
    /// "serving", "full" (no room in any tier: producers are asked to split
    /// away, no new partitions) or "decommissioning".
    state: &'static str,
    /// Memory used as a fraction of the budget.
    memory_pressure: f64,
    memory_free_bytes: u64,
    local_free_bytes: u64,
    unhealthy_dirs: u32,
    /// Open partitions: one producer pushing each.
    push_streams: u32,
    read_streams: u32,
    push_bytes_per_sec: u64,
    read_bytes_per_sec: u64,
}

impl LoadStatus {
    fn from_load(l: &WorkerLoad) -> Self {
        LoadStatus {
            state: if l.decommissioning {
                "decommissioning"
            } else if l.full {
                "full"
            } else {
                "serving"
            },
            memory_pressure: if l.memory_budget_bytes == 0 {
                0.0
            } else {
                l.memory_used_bytes as f64 / l.memory_budget_bytes as f64
            },
            memory_free_bytes: l.memory_budget_bytes.saturating_sub(l.memory_used_bytes),
            local_free_bytes: l.local_free_bytes,
            unhealthy_dirs: l.unhealthy_dirs,
            push_streams: l.open_partitions,
            read_streams: l.read_streams,
            push_bytes_per_sec: l.push_bytes_per_sec,
            read_bytes_per_sec: l.read_bytes_per_sec,
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct TierStatus {
    memory_bytes: u64,
    local_bytes: u64,
    object_bytes: u64,
    dirs: Vec<DirStatus>,
    /// Absent when the worker has no object store.
    object_store: Option<ObjectStoreStatus>,
}

#[derive(Debug, serde::Serialize)]
struct DirStatus {
    path: String,
    used_bytes: u64,
    capacity_bytes: u64,
    healthy: bool,
    /// The write error that made it unhealthy.
    error: Option<String>,
    write_failures: u64,
}

#[derive(Debug, serde::Serialize)]
struct ObjectStoreStatus {
    url: String,
    bytes: u64,
    objects: u64,
    bytes_overflowed: u64,
    bytes_migrated: u64,
    partitions_migrated: u64,
    bytes_read: u64,
    gets: u64,
    bytes_compacted: u64,
    partitions_compacted: u64,
    failures: u64,
    available: bool,
    last_error: Option<String>,
}

impl TierStatus {
    fn from_stats(t: &TierStats) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        TierStatus {
            memory_bytes: t.memory_bytes,
            local_bytes: t.local_bytes,
            object_bytes: t.object_bytes,
            dirs: t
                .dirs
                .iter()
                .map(|d| DirStatus {
                    path: d.path.clone(),
                    used_bytes: d.used_bytes,
                    capacity_bytes: d.capacity_bytes,
                    healthy: d.healthy,
                    error: non_empty(&d.error),
                    write_failures: d.write_failures,
                })
                .collect(),
            object_store: t.object_store.as_ref().map(|o| ObjectStoreStatus {
                url: o.url.clone(),
                bytes: o.bytes,
                objects: o.objects,
                bytes_overflowed: o.bytes_overflowed,
                bytes_migrated: o.bytes_migrated,
                partitions_migrated: o.partitions_migrated,
                bytes_read: o.bytes_read,
                gets: o.gets,
                bytes_compacted: o.bytes_compacted,
                partitions_compacted: o.partitions_compacted,
                failures: o.failures,
                available: o.available,
                last_error: non_empty(&o.last_error),
            }),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let options = client_options("terrace status", args.secret_file, args.tls_ca_file)?;
    let (workers, jobs) = runtime.block_on(collect(&args.master, &options))?;
    if args.json {
        return crate::sample::print_json(&StatusReport {
            format_version: STATUS_FORMAT_VERSION,
            master: &args.master,
            jobs: &jobs,
            workers: &workers,
        });
    }
    println!(
        "master {}: {} worker(s), {} job(s)",
        args.master,
        workers.len(),
        jobs.len()
    );
    for job in &jobs {
        println!("  job {}", job_label(job));
    }
    println!(
        "{:<24} {:<22} {:>8} {:>12} {:>12} {:>12} {:>6} {:>6} {:>12} {:>12} {:>12}",
        "worker",
        "address",
        "hb ms",
        "stored",
        "mem used",
        "mem peak",
        "parts",
        "sealed",
        "in memory",
        "on local",
        "in object"
    );
    for w in &workers {
        let tier = |f: fn(&TierStatus) -> u64| {
            w.tiers
                .as_ref()
                .map_or_else(|| "-".to_string(), |t| f(t).to_string())
        };
        println!(
            "{:<24} {:<22} {:>8} {:>12} {:>12} {:>12} {:>6} {:>6} {:>12} {:>12} {:>12}{}",
            w.worker_id,
            w.address,
            w.millis_since_heartbeat,
            w.stored_bytes,
            w.memory_used_bytes,
            w.memory_peak_bytes,
            w.partitions,
            w.sealed_partitions,
            tier(|t| t.memory_bytes),
            tier(|t| t.local_bytes),
            tier(|t| t.object_bytes),
            w.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
        for line in tier_lines(w) {
            println!("    {line}");
        }
    }
    Ok(())
}

/// The lines under a worker's row: each data directory and the object store.
fn tier_lines(w: &WorkerStatus) -> Vec<String> {
    let l = &w.load;
    let mut out = vec![format!(
        "{}: memory {:.0}% used ({} free), {} free on local dirs, {} push stream(s), {} read stream(s), pushing {}/s, reading {}/s",
        l.state,
        l.memory_pressure * 100.0,
        human(l.memory_free_bytes),
        human(l.local_free_bytes),
        l.push_streams,
        l.read_streams,
        human(l.push_bytes_per_sec),
        human(l.read_bytes_per_sec),
    )];
    if l.state == "decommissioning" {
        out.push(format!(
            "decommission: {} partition(s) ({} sealed), {} left; exits when none is left",
            w.partitions,
            w.sealed_partitions,
            human(w.stored_bytes)
        ));
    }
    if w.tiers_from == Some("master") {
        out.push("tiers: as of the worker's last heartbeat to the master".to_string());
    }
    let Some(tiers) = &w.tiers else {
        out.push("tiers: not reported".to_string());
        return out;
    };
    for d in &tiers.dirs {
        let health = if d.healthy {
            "healthy".to_string()
        } else {
            format!(
                "UNHEALTHY ({})",
                d.error.as_deref().unwrap_or("no error reported")
            )
        };
        out.push(format!(
            "dir {}: {} used of {}, {health}, {} write failure(s)",
            d.path,
            human(d.used_bytes),
            human(d.capacity_bytes),
            d.write_failures
        ));
    }
    match &tiers.object_store {
        Some(o) => {
            let state = match (o.available, &o.last_error) {
                (true, None) => "available".to_string(),
                (true, Some(e)) => format!("available (last error: {e})"),
                (false, e) => format!(
                    "UNAVAILABLE ({})",
                    e.as_deref().unwrap_or("no error reported")
                ),
            };
            out.push(format!(
                "object store {}: {} in {} object(s), {} overflowed, {} migrated ({} partition(s)), {} compacted ({} partition(s)), {} read in {} GET(s), {} failure(s), {state}",
                o.url,
                human(o.bytes),
                o.objects,
                human(o.bytes_overflowed),
                human(o.bytes_migrated),
                o.partitions_migrated,
                human(o.bytes_compacted),
                o.partitions_compacted,
                human(o.bytes_read),
                o.gets,
                o.failures
            ));
        }
        None => out.push("object store: none".to_string()),
    }
    out
}

/// Bytes in the largest binary unit that keeps a whole part, e.g. "1.5 GiB".
fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {name}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

async fn collect(
    master: &str,
    options: &ClientOptions,
) -> anyhow::Result<(Vec<WorkerStatus>, Vec<String>)> {
    let to_master = options
        .clone()
        .expecting(ExpectedServer::Is(ServerIdentity::Master));
    let client = Client::connect(master, &to_master)
        .await
        .with_context(|| format!("connect to master {master}"))?;
    let list = client.call(ListWorkers).await.context("list workers")?;
    let jobs = list.jobs.iter().map(|j| j.to_hex()).collect();
    let mut out = Vec::new();
    for info in list.workers {
        let mut load = info.load;
        let master_tiers = load.tiers.take();
        let master_load = LoadStatus::from_load(&load);
        let mut status = WorkerStatus {
            worker_id: info.worker.id.to_string(),
            address: info.worker.address.clone(),
            millis_since_heartbeat: u64::try_from(info.since_heartbeat.as_millis())
                .unwrap_or(u64::MAX),
            stored_bytes: load.stored_bytes,
            memory_used_bytes: load.memory_used_bytes,
            memory_budget_bytes: 0,
            memory_peak_bytes: 0,
            partitions: load.open_partitions + load.sealed_partitions,
            sealed_partitions: load.sealed_partitions,
            bytes_pushed: 0,
            bytes_read: 0,
            load: master_load,
            error: None,
            tiers: None,
            tiers_from: None,
        };
        let mut tiers = None;
        // The master names the worker: it must prove it is that one.
        let to_worker = options
            .clone()
            .expecting(ExpectedServer::Is(ServerIdentity::Worker(
                status.worker_id.clone(),
            )));
        match worker_stats(&info.worker.address, &to_worker).await {
            Ok(stats) => {
                status.memory_budget_bytes = stats.memory_budget_bytes;
                status.memory_peak_bytes = stats.memory_peak_bytes;
                status.bytes_pushed = stats.bytes_pushed;
                status.bytes_read = stats.bytes_read;
                let load = stats.load;
                status.load = LoadStatus::from_load(&load);
                status.stored_bytes = load.stored_bytes;
                status.memory_used_bytes = load.memory_used_bytes;
                status.sealed_partitions = load.sealed_partitions;
                tiers = load.tiers.map(|t| (t, "worker"));
                status.partitions = stats.partitions;
            }
            Err(e) => status.error = Some(format!("{e:#}")),
        }
        if let Some((t, from)) = tiers.or_else(|| master_tiers.map(|t| (t, "master"))) {
            status.tiers = Some(TierStatus::from_stats(&t));
            status.tiers_from = Some(from);
        }
        out.push(status);
    }
    Ok((out, jobs))
}

/// Client options of an admin command given `--secret-file` and `--tls-ca-file`.
pub fn client_options(
    name: &str,
    secret_file: Option<std::path::PathBuf>,
    tls_ca_file: Option<std::path::PathBuf>,
) -> anyhow::Result<ClientOptions> {
    let security = Security::load(&SecurityConfig {
        secret_file,
        tls_ca_file,
        ..SecurityConfig::default()
    })
    .context("load --secret-file / --tls-ca-file")?;
    Ok(ClientOptions {
        name: name.into(),
        credential: security.credential(),
        tls: security.tls_client,
        ..ClientOptions::default()
    })
}

/// Asks one worker for its counters.
pub async fn worker_stats(
    address: &str,
    options: &ClientOptions,
) -> anyhow::Result<WorkerStatsReply> {
    let client = Client::connect(address, options)
        .await
        .with_context(|| format!("connect to worker {address}"))?;
    let stats = client
        .call(WorkerStats)
        .await
        .context("ask worker for stats")?;
    Ok(stats)
}

/// A job id for people: its hex, and its text when the id is printable
/// ASCII (Spark's plug-in names its jobs `spark/<application>/<run>/<shuffle>`;
/// Flink's job ids are 16 raw bytes, shown in hex only).
fn job_label(hex: &str) -> String {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    match bytes {
        Some(b) if !b.is_empty() && b.iter().all(|c| c.is_ascii_graphic()) => {
            format!("{hex} ({})", String::from_utf8_lossy(&b))
        }
        _ => hex.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use terrace_tier_api::protocol::{DirStats, ObjectStoreStats};

    fn worker(tiers: Option<TierStats>, from: &'static str) -> WorkerStatus {
        WorkerStatus {
            worker_id: "w".into(),
            address: "127.0.0.1:1".into(),
            millis_since_heartbeat: 0,
            stored_bytes: 0,
            memory_used_bytes: 0,
            memory_budget_bytes: 0,
            memory_peak_bytes: 0,
            partitions: 0,
            sealed_partitions: 0,
            bytes_pushed: 0,
            bytes_read: 0,
            load: LoadStatus::from_load(&WorkerLoad {
                memory_used_bytes: 1 << 30,
                memory_budget_bytes: 4 << 30,
                local_free_bytes: 5 << 30,
                unhealthy_dirs: 1,
                decommissioning: true,
                open_partitions: 2,
                read_streams: 3,
                push_bytes_per_sec: 10 << 20,
                ..Default::default()
            }),
            error: None,
            tiers: tiers.as_ref().map(TierStatus::from_stats),
            tiers_from: Some(from),
        }
    }

    /// Every field path of `value` (`workers[].load.state`): objects and
    /// arrays of objects are listed and walked (an array through its first
    /// element), other values are leaves.
    fn paths(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(path.clone());
                    paths(&path, v, out);
                }
            }
            serde_json::Value::Array(items) => {
                if let Some(first) = items.first().filter(|f| f.is_object()) {
                    paths(&format!("{prefix}[]"), first, out);
                }
            }
            _ => {}
        }
    }

    /// `terrace status --json` keeps its shape: the fields it prints (with
    /// every optional part present) are exactly those docs/configuration.md
    /// documents under `<!-- status-json -->`, and the version is 1.
    #[test]
    fn printable_job_ids_are_shown_as_text_too() {
        assert_eq!(
            super::job_label("737061726b2f612f30"),
            "737061726b2f612f30 (spark/a/0)"
        );
        assert_eq!(super::job_label("00ff10"), "00ff10");
    }

    #[test]
    fn the_json_shape_is_the_documented_one() {
        let stats = TierStats {
            dirs: vec![DirStats {
                error: "EIO".into(),
                ..Default::default()
            }],
            object_store: Some(ObjectStoreStats {
                last_error: "timed out".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut worker = worker(Some(stats), "worker");
        worker.error = Some("connect refused".into());
        let jobs = ["6a6f62".to_string()];
        let report = StatusReport {
            format_version: STATUS_FORMAT_VERSION,
            master: "127.0.0.1:9870",
            jobs: &jobs,
            workers: std::slice::from_ref(&worker),
        };
        let json = serde_json::to_value(&report).expect("encode");
        assert_eq!(json["format_version"], 1);
        let mut printed = BTreeSet::new();
        paths("", &json, &mut printed);

        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
        )
        .expect("read docs");
        let documented: BTreeSet<String> = doc
            .lines()
            .skip_while(|l| l.trim() != "<!-- status-json -->")
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|row| {
                let first = row.trim_start_matches('|').split('|').next()?.trim();
                Some(first.strip_prefix('`')?.strip_suffix('`')?.to_string())
            })
            .collect();
        assert!(!documented.is_empty(), "no status-json table in the docs");
        let undocumented: Vec<_> = printed.difference(&documented).collect();
        let unprinted: Vec<_> = documented.difference(&printed).collect();
        assert!(
            undocumented.is_empty() && unprinted.is_empty(),
            "printed but not documented: {undocumented:?}; documented but not printed: {unprinted:?}"
        );
    }

    #[test]
    fn lines_name_unhealthy_dirs_and_an_unavailable_store() {
        let stats = TierStats {
            memory_bytes: 1,
            local_bytes: 2 << 20,
            object_bytes: 3 << 30,
            dirs: vec![
                DirStats {
                    path: "/a".into(),
                    used_bytes: 2 << 20,
                    capacity_bytes: 1 << 30,
                    healthy: true,
                    error: String::new(),
                    write_failures: 0,
                },
                DirStats {
                    path: "/b".into(),
                    used_bytes: 0,
                    capacity_bytes: 1 << 30,
                    healthy: false,
                    error: "No space left on device".into(),
                    write_failures: 3,
                },
            ],
            object_store: Some(ObjectStoreStats {
                url: "s3://bucket/prefix".into(),
                bytes: 3 << 30,
                objects: 7,
                available: false,
                last_error: "timed out".into(),
                failures: 2,
                ..Default::default()
            }),
        };
        let w = worker(Some(stats), "master");
        let lines = tier_lines(&w);
        assert_eq!(
            lines,
            [
                "decommissioning: memory 25% used (3.0 GiB free), 5.0 GiB free on local dirs, 2 push stream(s), 3 read stream(s), pushing 10.0 MiB/s, reading 0 B/s",
                "decommission: 0 partition(s) (0 sealed), 0 B left; exits when none is left",
                "tiers: as of the worker's last heartbeat to the master",
                "dir /a: 2.0 MiB used of 1.0 GiB, healthy, 0 write failure(s)",
                "dir /b: 0 B used of 1.0 GiB, UNHEALTHY (No space left on device), 3 write failure(s)",
                "object store s3://bucket/prefix: 3.0 GiB in 7 object(s), 0 B overflowed, 0 B migrated (0 partition(s)), 0 B compacted (0 partition(s)), 0 B read in 0 GET(s), 2 failure(s), UNAVAILABLE (timed out)",
            ]
        );
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["tiers"]["dirs"][1]["error"], "No space left on device");
        assert_eq!(json["tiers"]["dirs"][0]["error"], serde_json::Value::Null);
        assert_eq!(json["tiers"]["object_store"]["available"], false);
        assert_eq!(json["tiers_from"], "master");
        assert_eq!(json["load"]["state"], "decommissioning");
        assert_eq!(json["load"]["unhealthy_dirs"], 1);
        assert_eq!(json["load"]["read_streams"], 3);
        assert_eq!(
            tier_lines(&worker(None, "worker"))[2],
            "tiers: not reported"
        );
    }
}
