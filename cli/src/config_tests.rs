//! Tests of config loading: the layers, and that every key is documented
//! and in the example files.
use std::collections::BTreeSet;
use std::ffi::OsString;

use terrace_master::MasterConfig;
use terrace_tier_api::ByteSize;
use terrace_worker::{ObjectStoreConfig, WorkerConfig};

use super::{EnvSpec, Override, load_layered};

/// The documented examples parse, and say exactly the defaults (except the
/// worker's master address, which the example sets).
#[test]
fn example_configs_parse_to_the_defaults() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let master: MasterConfig = super::load_layered(Some(&root.join("master.toml")), Vec::new())
        .expect("master example parses");
    assert_eq!(master, MasterConfig::default());
    let worker: WorkerConfig = super::load_layered(Some(&root.join("worker.toml")), Vec::new())
        .expect("worker example parses");
    assert_eq!(
        worker,
        WorkerConfig {
            master_addresses: vec!["127.0.0.1:9870".into()],
            ..WorkerConfig::default()
        }
    );
    // The commented-out `[limits]` and `[server]` tables, uncommented, say the defaults.
    let text = std::fs::read_to_string(root.join("worker.toml")).expect("read example");
    for (table, key) in [("limits", "max_partitions"), ("server", "shutdown_grace")] {
        let header = format!("# [{table}]");
        let uncommented: String = text
            .lines()
            .skip_while(|l| *l != header)
            .take_while(|l| !l.is_empty())
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        assert!(uncommented.contains(key), "{uncommented}");
        let parsed: WorkerConfig = toml::from_str(&uncommented).expect("the example table parses");
        assert_eq!(parsed, WorkerConfig::default(), "[{table}]");
    }
    let typo = toml::from_str::<WorkerConfig>("memory_budgte = \"1GiB\"");
    assert!(typo.is_err(), "unknown keys are refused");
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every key of a config serialized to JSON, as dotted paths (`listen`,
/// `object_store.part_size`). `None` keys are kept (JSON `null`); a
/// map with no default entries (`object_store.options`) is one key.
fn keys_of(config: &impl serde::Serialize) -> BTreeSet<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(
        "",
        &serde_json::to_value(config).expect("configs serialize"),
        &mut out,
    );
    out
}

/// The worker's keys: its `[object_store]` table is present, so that
/// its keys are listed too.
fn worker_keys() -> BTreeSet<String> {
    keys_of(&WorkerConfig {
        object_store: Some(ObjectStoreConfig::default()),
        ..WorkerConfig::default()
    })
}

/// The first-column names of the key table after each `<!-- keys: NAME -->`
/// marker of docs/configuration.md.
fn documented(doc: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut sections = std::collections::BTreeMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- keys: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let mut rows = BTreeSet::new();
        for row in lines
            .by_ref()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
        {
            let first = row.trim_start_matches('|').split('|').next().unwrap_or("");
            if let Some(key) = first
                .trim()
                .strip_prefix('`')
                .and_then(|k| k.strip_suffix('`'))
            {
                rows.insert(key.to_string());
            }
        }
        let previous = sections.insert(name.to_string(), rows);
        assert!(previous.is_none(), "two key tables for {name}");
    }
    sections
}

/// The keys an example file shows, set or commented out (`# key = ...`,
/// `# [table]`), as dotted paths; table headers count as keys too.
fn shown(example: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut table = String::new();
    for line in example.lines() {
        let line = line.trim_start_matches(['#', ' ']).trim_end();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            {
                table = name.to_string();
                out.insert(table.clone());
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            out.insert(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    out
}

/// What `keys` lacks against `documented` for `section` (keys under
/// `prefix`, with it stripped), and what the doc lists that is no key.
fn compare_section(
    what: &str,
    keys: &BTreeSet<String>,
    prefix: &str,
    tables: &BTreeSet<String>,
    doc: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    let wanted: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| {
            let rest = if prefix.is_empty() {
                Some(k.as_str())
            } else {
                k.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
            }?;
            (!tables.iter().any(|t| rest.starts_with(&format!("{t}.")))).then(|| rest.to_string())
        })
        .collect();
    for key in wanted.difference(doc) {
        problems.push(format!("{what}: key `{key}` is not in its table"));
    }
    for row in doc.difference(&wanted) {
        let is_table = row
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|t| tables.contains(t));
        if !is_table {
            problems.push(format!("{what}: `{row}` is listed but is no key"));
        }
    }
}

/// Adding a key means adding it to its struct (with a doc comment),
/// docs/configuration.md and the example file: every key of every
/// config struct is in the docs' table for it and in its example, and
/// neither lists a key the structs do not have.
#[test]
fn every_config_key_is_documented_and_in_the_examples() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).expect("read docs");
    let sections = documented(&doc);
    let worker = worker_keys();
    let master = keys_of(&MasterConfig::default());
    let agent = keys_of(&terrace_tier_api::AgentConfig::default());
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
    let worker_tables = set(&["limits", "server", "security", "object_store", "admin"]);
    let master_tables = set(&["limits", "server", "security", "admin"]);
    let none = BTreeSet::new();
    let mut problems = Vec::new();
    let section = |name: &str| {
        sections
            .get(name)
            .unwrap_or_else(|| panic!("no `<!-- keys: {name} -->` table"))
    };
    for (what, keys, prefix, tables, doc) in [
        ("worker", &worker, "", &worker_tables, section("worker")),
        (
            "worker [limits]",
            &worker,
            "limits",
            &none,
            section("worker.limits"),
        ),
        (
            "worker [object_store]",
            &worker,
            "object_store",
            &none,
            section("object_store"),
        ),
        (
            "worker [server]",
            &worker,
            "server",
            &none,
            section("server"),
        ),
        (
            "worker [security]",
            &worker,
            "security",
            &none,
            section("security"),
        ),
        ("worker [admin]", &worker, "admin", &none, section("admin")),
        ("master", &master, "", &master_tables, section("master")),
        (
            "master [limits]",
            &master,
            "limits",
            &none,
            section("master.limits"),
        ),
        (
            "master [server]",
            &master,
            "server",
            &none,
            section("server"),
        ),
        (
            "master [security]",
            &master,
            "security",
            &none,
            section("security"),
        ),
        ("master [admin]", &master, "admin", &none, section("admin")),
        ("agent", &agent, "", &none, section("agent")),
    ] {
        compare_section(what, keys, prefix, tables, doc, &mut problems);
    }
    for (file, keys) in [
        ("examples/worker.toml", &worker),
        ("examples/master.toml", &master),
    ] {
        let text = std::fs::read_to_string(root().join(file)).expect("read example");
        let shown = shown(&text);
        for key in keys.difference(&shown) {
            problems.push(format!("{file}: key `{key}` is not shown"));
        }
        for key in shown.difference(keys) {
            // Tables and the entries of a free-form table (`[object_store.options]`).
            let inside = keys
                .iter()
                .any(|k| key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}.")));
            if !inside {
                problems.push(format!("{file}: `{key}` is no key"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "config keys out of step:\n{}",
        problems.join("\n")
    );
    // The walk sees what it must: keys that are `None` by default, and nested tables.
    for key in [
        "advertise_address",
        "dir_capacity",
        "object_store.read_ahead",
        "limits.max_open_data_files",
        "security.tls_ca_file",
        "server.keepalive",
    ] {
        assert!(worker.contains(key), "{key} in {worker:?}");
    }
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

const WORKER_ENV: EnvSpec = EnvSpec {
    prefix: "TERRACE_WORKER",
    named: &[
        ("TERRACE_WORKER_MEMORY_BUDGET", "memory_budget", false),
        ("TERRACE_MASTERS", "master_addresses", true),
    ],
};

fn worker_from(file: &str, env: &[(&str, &str)], sets: &[&str]) -> anyhow::Result<WorkerConfig> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, file).expect("write config");
    let mut overrides = WORKER_ENV.overrides(vars(env))?;
    for set in sets {
        overrides.push(Override::from_set(set)?);
    }
    load_layered(Some(&path), overrides)
}

#[test]
fn the_file_then_the_environment_then_flags() {
    let file = "memory_budget = \"1GiB\"\nsplit_size = \"2GiB\"\nread_memory = \"128MiB\"\n[limits]\nmax_partitions = 10\n";
    let only_file = worker_from(file, &[], &[]).expect("file");
    assert_eq!(only_file.memory_budget, ByteSize::gib(1));
    let env = [
        ("TERRACE_WORKER__MEMORY_BUDGET", "64MiB"),
        ("TERRACE_WORKER__SPLIT_SIZE", "3GiB"),
        ("TERRACE_WORKER__LIMITS__MAX_PARTITIONS", "20"),
        ("TERRACE_WORKER__OBJECT_STORE__URL", "memory://"),
        (
            "TERRACE_WORKER__OBJECT_STORE__OPTIONS__AWS_ALLOW_HTTP",
            "true",
        ),
        ("UNRELATED", "x"),
    ];
    let layered = worker_from(
        file,
        &env,
        &["split_size=4GiB", "limits.max_partitions=30", "worker_id=7"],
    )
    .expect("layers");
    // Environment over the file...
    assert_eq!(layered.memory_budget, ByteSize::mib(64));
    // ...flags over both.
    assert_eq!(layered.split_size, ByteSize::gib(4));
    assert_eq!(layered.limits.max_partitions, 30);
    // The file where nothing else says otherwise; defaults elsewhere.
    assert_eq!(layered.read_memory, ByteSize::mib(128));
    assert_eq!(layered.dir_reserve, WorkerConfig::default().dir_reserve);
    // A table is made when a layer sets a key in it; numbers and
    // booleans go in as strings where the key takes one.
    let store = layered
        .object_store
        .expect("object store set from the environment");
    assert_eq!(store.url, "memory://");
    assert_eq!(
        store.options.get("aws_allow_http").map(String::as_str),
        Some("true")
    );
    assert_eq!(store.part_size, ObjectStoreConfig::default().part_size);
    assert_eq!(layered.worker_id.as_deref(), Some("7"));
    // The environment alone, over the file.
    let env_only = worker_from(file, &env, &[]).expect("env");
    assert_eq!(
        (env_only.split_size, env_only.limits.max_partitions),
        (ByteSize::gib(3), 20)
    );
    // A named variable is in the environment layer, before the generic ones.
    let named = worker_from(
        file,
        &[
            ("TERRACE_WORKER_MEMORY_BUDGET", "32MiB"),
            ("TERRACE_MASTERS", "a:1, b:2"),
        ],
        &[],
    )
    .expect("named");
    assert_eq!(named.memory_budget, ByteSize::mib(32));
    assert_eq!(
        named.master_addresses,
        vec!["a:1".to_string(), "b:2".to_string()]
    );
    let both = worker_from(
        file,
        &[
            ("TERRACE_WORKER_MEMORY_BUDGET", "32MiB"),
            ("TERRACE_WORKER__MEMORY_BUDGET", "48MiB"),
        ],
        &["memory_budget=96MiB"],
    )
    .expect("both");
    assert_eq!(both.memory_budget, ByteSize::mib(96));
    let both = worker_from(
        file,
        &[
            ("TERRACE_WORKER_MEMORY_BUDGET", "32MiB"),
            ("TERRACE_WORKER__MEMORY_BUDGET", "48MiB"),
        ],
        &[],
    )
    .expect("both");
    assert_eq!(both.memory_budget, ByteSize::mib(48));
    // TOML values: arrays, quoted strings.
    let arrays = worker_from(
        "",
        &[],
        &[
            "data_dirs=[\"/a\", \"/b\"]",
            "advertise_address=\"10.0.0.1:1\"",
        ],
    )
    .expect("arrays");
    assert_eq!(
        arrays.data_dirs,
        vec![std::path::PathBuf::from("/a"), "/b".into()]
    );
    assert_eq!(arrays.advertise_address.as_deref(), Some("10.0.0.1:1"));
}

#[test]
fn an_unknown_key_or_bad_value_from_any_layer_is_an_error_naming_it() {
    for (env, sets, names) in [
        (
            vec![("TERRACE_WORKER__MEMORY_BUDGTE", "64MiB")],
            vec![],
            vec![
                "TERRACE_WORKER__MEMORY_BUDGTE",
                "memory_budgte",
                "unknown field",
            ],
        ),
        (
            vec![("TERRACE_WORKER__LIMITS__MAX_PARTITION", "5")],
            vec![],
            vec![
                "TERRACE_WORKER__LIMITS__MAX_PARTITION",
                "limits.max_partition",
                "unknown field",
            ],
        ),
        (
            vec![],
            vec!["memory_budgte=64MiB"],
            vec!["--set memory_budgte=64MiB", "unknown field"],
        ),
        (
            vec![],
            vec!["object_store.urll=memory://"],
            vec!["object_store.urll", "unknown field `urll`"],
        ),
        (
            vec![],
            vec!["limits.max_partitions=lots"],
            vec!["limits.max_partitions", "lots"],
        ),
        (
            vec![],
            vec!["memory_budget=64 parsecs"],
            vec!["memory_budget", "parsecs"],
        ),
        (
            vec![],
            vec!["heartbeat_interval=30"],
            vec![
                "heartbeat_interval",
                "expected a string",
                "time unit needed",
            ],
        ),
        (
            vec![],
            vec!["heartbeat_interval=5 fortnights"],
            vec!["heartbeat_interval", "fortnights"],
        ),
        (
            vec![],
            vec!["listen.port=1"],
            vec!["listen.port", "invalid type: map"],
        ),
        (
            vec![("TERRACE_WORKER__LISTEN", "a:1")],
            vec!["listen.port=1"],
            vec!["--set listen.port=1", "`listen` is not a table"],
        ),
        (
            vec![],
            vec!["no_equals_sign"],
            vec!["--set no_equals_sign", "KEY=VALUE"],
        ),
        (vec![], vec!["=5"], vec!["dotted path"]),
        (
            vec![("TERRACE_WORKER_MEMORY_BUDGET", "lots")],
            vec![],
            vec!["TERRACE_WORKER_MEMORY_BUDGET", "memory_budget"],
        ),
    ] {
        let e = worker_from("", &env, &sets).expect_err("refused");
        let text = format!("{e:#}");
        for name in names {
            assert!(text.contains(name), "{name:?} in {text}");
        }
    }
    // The file's own errors still point at the line.
    let e = worker_from("listen = \"a\"\nmemory_budgte = 1\n", &[], &[]).expect_err("typo in file");
    assert!(format!("{e:#}").contains("line 2"), "{e:#}");
}
