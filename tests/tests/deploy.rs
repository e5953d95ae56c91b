//! The deployment files under `deploy/`, checked by the tools that read them:
//! the alert rules by `promtool check rules` and their unit tests by
//! `promtool test rules`; every expression of the Grafana dashboard parsed by
//! promtool; each Kubernetes overlay rendered by `kubectl kustomize` and
//! validated against the Kubernetes schemas by `kubernetes-validate`, then
//! read for what the issue asks of it (probes, preStop, headless services,
//! claims, scrape settings); the systemd units by `systemd-analyze verify`;
//! every shipped config file parsed by the services' own config types; and
//! the start/stop scripts running a real master and worker, stopped by
//! SIGTERM and by decommission.
//!
//! The container image and the compose cluster run in `flink_e2e`
//! (`compose_cluster_runs_a_flink_job_with_the_exact_result`), since the
//! cluster's check is a Flink job.
//!
//! Tools come from `PATH` or the variables `scripts/test.sh` exports after
//! `scripts/deploy-tools.sh` installed them (promtool from Debian's
//! `prometheus` package, kubernetes-validate into ~/.cache/terrace).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use terrace_tests::deploy::{self, repo_root, run, run_ok};
use terrace_tests::logs;
use terrace_tier_api::protocol::ListWorkers;

/// A checking tool's run.
const TOOL_LIMIT: Duration = Duration::from_secs(120);

/// The metric names of the shared contract of issue 20 (the alert rules and
/// the dashboard may use these and nothing else). Histograms are listed by
/// their base name; `_bucket`, `_sum` and `_count` series come with them.
const CONTRACT_METRICS: &[&str] = &[
    "terrace_worker_pushed_bytes_total",
    "terrace_worker_pushed_buffers_total",
    "terrace_worker_read_bytes_total",
    "terrace_worker_read_buffers_total",
    "terrace_worker_stored_bytes",
    "terrace_worker_migrated_bytes_total",
    "terrace_worker_overflowed_bytes_total",
    "terrace_worker_pushes_in_flight",
    "terrace_worker_reads_in_flight",
    "terrace_worker_memory_budget_bytes",
    "terrace_worker_memory_used_bytes",
    "terrace_worker_memory_peak_bytes",
    "terrace_worker_read_budget_used_bytes",
    "terrace_worker_partitions",
    "terrace_worker_jobs",
    "terrace_worker_streams_open",
    "terrace_worker_connections_open",
    "terrace_worker_errors_total",
    "terrace_worker_push_duration_seconds",
    "terrace_worker_read_duration_seconds",
    "terrace_worker_disk_healthy",
    "terrace_worker_object_store_failures_total",
    "terrace_worker_splits_total",
    "terrace_worker_adoptions_total",
    "terrace_worker_draining",
    "terrace_master_workers",
    "terrace_master_workers_lost_total",
    "terrace_master_jobs",
    "terrace_master_placements_total",
    "terrace_master_placements_refused_total",
    "terrace_master_lease_expiries_total",
    "terrace_master_relocations_total",
];

/// The histograms of the contract.
const HISTOGRAMS: &[&str] = &[
    "terrace_worker_push_duration_seconds",
    "terrace_worker_read_duration_seconds",
];

/// Every `terrace_*` metric name in a PromQL text (or a rules file), with a
/// histogram's `_bucket`/`_sum`/`_count` series named by its base name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut at = 0;
    while let Some(found) = text[at..].find("terrace_") {
        let start = at + found;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        // Only a whole word: not `xterrace_...`.
        if start == 0 || !word(bytes[start - 1]) {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| HISTOGRAMS.contains(base))
                })
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        at = end.max(start + 1);
    }
    names
}

fn assert_contract_names(names: &BTreeSet<String>, what: &str) {
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !CONTRACT_METRICS.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} uses metric names outside the contract: {unknown:?}"
    );
}

fn promtool() -> PathBuf {
    deploy::tool("promtool", "TERRACE_PROMTOOL")
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let _logs = logs::capture();
    let dir = repo_root().join("deploy/prometheus");
    let mut check = Command::new(promtool());
    check
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir);
    let ran = run_ok(check, TOOL_LIMIT, "promtool check rules");
    let rules = fs::read_to_string(dir.join("alerts.yml")).expect("read alerts.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(
        ran.stdout()
            .contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "promtool found every rule: {}",
        ran.report()
    );
    // The alerts the issue names, each with a unit test that fires it.
    let tests = fs::read_to_string(dir.join("alerts_test.yml")).expect("read alerts_test.yml");
    for alert in [
        "TerraceWorkerLost",
        "TerraceDiskUnhealthy",
        "TerraceStorageFull",
        "TerraceObjectStoreFailing",
        "TerraceMemoryBudgetSaturated",
    ] {
        assert!(
            alerts.contains(&alert),
            "alerts.yml has {alert}: {alerts:?}"
        );
    }
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alerts_test.yml tests {alert}"
        );
    }
    let mut test = Command::new(promtool());
    test.args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir);
    let ran = run_ok(test, TOOL_LIMIT, "promtool test rules");
    assert!(ran.stdout().contains("SUCCESS"), "{}", ran.report());
    assert_contract_names(&metric_names(&rules), "alerts.yml");
}

/// Every non-row panel of the dashboard, rows' nested panels included.
fn dashboard_panels(panels: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in panels {
        if panel["type"] == "row" {
            let nested = panel["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            out.extend(dashboard_panels(nested));
        } else {
            out.push(panel);
        }
    }
    out
}

/// A dashboard expression as Prometheus would get it: Grafana's variables
/// replaced by what Grafana puts there (a range for `$__rate_interval`, the
/// "All" regex for the scrape-job and instance variables).
fn as_prometheus_gets_it(expr: &str) -> String {
    let mut expr = expr.replace("$__rate_interval", "1m");
    for variable in ["$master_job", "$worker_job", "$master", "$worker"] {
        expr = expr.replace(variable, ".+");
    }
    expr
}

#[test]
fn dashboard_is_grafana_json_and_every_expression_parses() {
    let _logs = logs::capture();
    let path = repo_root().join("deploy/grafana/terrace.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "terrace-cluster");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let panels = dashboard_panels(dashboard["panels"].as_array().expect("panels"));
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "panel ids are unique ({title})"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24),
            "{title}: its grid position fits the 24 columns: {grid}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has a query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for used in expr.split('$').skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name == "__rate_interval" || variables.contains(&name.as_str()),
                    "{title}: ${name} is a variable of the dashboard"
                );
            }
            exprs.push((title.to_string(), expr.to_string()));
        }
    }

    // promtool parses (and type-checks) each expression as a recording rule.
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(&as_prometheus_gets_it(expr)).expect("a JSON string");
        rules.push_str(&format!(
            "      - record: dashboard:expression_{i}\n        expr: {quoted}\n"
        ));
    }
    fs::write(dir.path().join("dashboard.yml"), &rules).expect("write the rules");
    let mut check = Command::new(promtool());
    check
        .args(["check", "rules", "dashboard.yml"])
        .current_dir(dir.path());
    let ran = run(check, TOOL_LIMIT, "promtool check rules (dashboard)");
    assert!(
        ran.success()
            && ran
                .stdout()
                .contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "every dashboard expression parses: {}",
        ran.report()
    );

    let all: String = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let names = metric_names(&all);
    assert_contract_names(&names, "the dashboard");
    // What the issue asks the dashboard to show.
    for needed in [
        "terrace_worker_pushed_bytes_total",
        "terrace_worker_read_bytes_total",
        "terrace_worker_stored_bytes",
        "terrace_worker_memory_budget_bytes",
        "terrace_worker_memory_used_bytes",
        "terrace_worker_partitions",
        "terrace_worker_errors_total",
        "terrace_master_workers",
    ] {
        assert!(names.contains(needed), "the dashboard shows {needed}");
    }
    for histogram in HISTOGRAMS {
        assert!(
            all.contains(&format!(
                "histogram_quantile(0.99, sum by (le) (rate({histogram}_bucket"
            )),
            "the dashboard shows quantiles of {histogram}"
        );
    }
    eprintln!(
        "deploy: {} panels, {} expressions checked",
        panels.len(),
        exprs.len()
    );
}

/// The rendered objects of an overlay, by kind and name (names of generated
/// ConfigMaps and Secrets carry a hash suffix).
struct Rendered {
    objects: Vec<serde_json::Value>,
}

impl Rendered {
    fn get(&self, kind: &str, name: &str) -> &serde_json::Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the overlay renders {kind} {name}"))
    }

    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for o in &self.objects {
            *kinds
                .entry(o["kind"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        kinds
    }
}

/// A duration as the configs write it ("90s", "55m", "6h").
fn seconds(text: &str) -> u64 {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a duration: {text}"));
    number
        * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => panic!("a duration in s, m or h: {text}"),
        }
}

/// `key = "value"` of a TOML text's top level, if set.
fn toml_string(text: &str, key: &str) -> Option<String> {
    let table: toml::Table = text.parse().expect("the config is TOML");
    table.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

#[test]
fn kubernetes_overlays_render_and_validate_against_the_schemas() {
    let _logs = logs::capture();
    let (validate, python) = deploy::kubernetes_validate();
    let kubectl = deploy::tool("kubectl", "TERRACE_KUBECTL");
    let overlays_dir = repo_root().join("deploy/kubernetes/overlays");
    let mut overlays: Vec<PathBuf> = fs::read_dir(&overlays_dir)
        .expect("list the overlays")
        .map(|e| e.expect("an overlay").path())
        .collect();
    overlays.sort();
    let names: Vec<String> = overlays
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["dev", "production"]);
    let dir = tempfile::tempdir().expect("temporary directory");
    for (overlay, name) in overlays.iter().zip(&names) {
        let mut render = Command::new(&kubectl);
        render.arg("kustomize").arg(overlay);
        let yaml = run_ok(render, TOOL_LIMIT, "kubectl kustomize").stdout();
        let file = dir.path().join(format!("{name}.yaml"));
        fs::write(&file, &yaml).expect("write the rendered manifests");

        // Kubernetes 1.32, as kubectl here; strict: no unknown field passes.
        let mut check = Command::new(&validate);
        check
            .args(["--strict", "--kubernetes-version", "1.32.0"])
            .arg(&file);
        let ran = run(check, TOOL_LIMIT, "kubernetes-validate");
        let output = ran.stdout() + &ran.stderr();
        assert!(ran.success(), "{name} validates: {}", ran.report());
        let passed = output
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed for resource "))
            .count();
        let unchecked: Vec<&str> = output
            .lines()
            .filter(|l| !(l.starts_with("INFO") && l.contains(" passed for resource ")))
            .filter(|l| !l.trim().is_empty())
            .collect();
        // The one kind without a schema here: the Prometheus Operator's CRD.
        assert!(
            unchecked
                .iter()
                .all(|l| l.contains("Couldn't find schema for kind PodMonitor")),
            "{name}: every object but a PodMonitor is checked against a schema: {unchecked:?}"
        );

        let mut to_json = Command::new(&python);
        to_json
            .arg("-c")
            .arg("import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)")
            .arg(&file);
        let json = run_ok(to_json, TOOL_LIMIT, "read the rendered YAML").stdout();
        let rendered = Rendered {
            objects: serde_json::from_str(&json).expect("the rendered objects as JSON"),
        };
        assert_eq!(
            passed + unchecked.len(),
            rendered.objects.len(),
            "{name}: kubernetes-validate saw every object: {output}"
        );
        check_rendered(name, &rendered);
        eprintln!(
            "deploy: overlay {name}: {:?}, {passed} validated",
            rendered.kinds()
        );
    }
}

/// What the issue asks of the manifests, read from one rendered overlay.
fn check_rendered(overlay: &str, rendered: &Rendered) {
    let config = rendered
        .objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("terrace-config"))
        })
        .expect("the config ConfigMap");
    for (role, admin_port, service_port) in [("master", 9460, 9870), ("worker", 9461, 9871)] {
        let set = rendered.get("StatefulSet", &format!("terrace-{role}"));
        let spec = &set["spec"];
        let pod = &spec["template"]["spec"];
        let what = format!("{overlay} {role}s");
        let service = rendered.get(
            "Service",
            spec["serviceName"].as_str().expect("serviceName"),
        );
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{what}: a headless service"
        );
        assert_eq!(
            service["spec"]["publishNotReadyAddresses"], true,
            "{what}: names resolve while not ready (draining workers serve readers)"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        let container = &pod["containers"][0];
        let ports: BTreeMap<&str, u64> = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().expect("port name"),
                    p["containerPort"].as_u64().expect("port"),
                )
            })
            .collect();
        assert_eq!(ports.get("admin"), Some(&admin_port), "{what}: {ports:?}");
        assert_eq!(
            ports.get("terrace"),
            Some(&service_port),
            "{what}: {ports:?}"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{what}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{what}"
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["port"], "admin",
                "{what}: {probe}"
            );
        }
        let annotations = &spec["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{what}");
        assert_eq!(
            annotations["prometheus.io/port"],
            admin_port.to_string(),
            "{what}"
        );
        assert_eq!(
            spec["template"]["metadata"]["labels"]["terrace.dev/scrape-job"],
            format!("terrace-{role}"),
            "{what}: the scrape job the alerts and dashboard expect"
        );

        // The config the pod mounts listens where the ports and probes say.
        let toml_text = config["data"][format!("{role}.toml")]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: the ConfigMap holds {role}.toml"));
        let table: toml::Table = toml_text.parse().expect("the config is TOML");
        assert_eq!(
            table["admin"]["listen"].as_str(),
            Some(format!("0.0.0.0:{admin_port}").as_str()),
            "{what}"
        );
        assert_eq!(
            toml_string(toml_text, "listen").as_deref(),
            Some(format!("0.0.0.0:{service_port}").as_str()),
            "{what}"
        );
        // Secrets: copied to mode 0400 by the init container, the only
        // container that runs as root.
        let secrets: BTreeSet<&str> = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(
            secrets.len(),
            2,
            "{what}: the cluster secret and the admin token: {secrets:?}"
        );
        for secret in &secrets {
            if overlay == "dev" {
                rendered.get("Secret", secret);
            } else {
                assert!(
                    ["terrace-secret", "terrace-admin-token"].contains(secret),
                    "{what}: production names the Secrets created out of band: {secret}"
                );
            }
        }
        assert_eq!(
            pod["initContainers"][0]["securityContext"]["runAsUser"], 0,
            "{what}"
        );
        assert!(
            container["securityContext"]["runAsUser"].is_null(),
            "{what}: the service runs as the pod's non-root user"
        );

        if role == "worker" {
            assert_eq!(
                container["lifecycle"]["preStop"]["exec"]["command"],
                serde_json::json!([
                    "/usr/local/bin/terrace",
                    "worker",
                    "decommission",
                    "127.0.0.1:9871",
                    "--wait"
                ]),
                "{what}: the preStop hook decommissions the worker"
            );
            // The worker gives up decommissioning before the kubelet kills it.
            let env: BTreeMap<&str, &str> = container["env"]
                .as_array()
                .expect("env")
                .iter()
                .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
                .collect();
            let timeout = env
                .get("TERRACE_WORKER__DECOMMISSION_TIMEOUT")
                .map(|s| s.to_string())
                .or_else(|| toml_string(toml_text, "decommission_timeout"))
                .expect("a decommission_timeout");
            let grace = pod["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("a grace period");
            assert!(
                seconds(&timeout) < grace,
                "{what}: decommission_timeout {timeout} is under the grace period {grace}s"
            );
            assert_eq!(
                env.get("TERRACE_SECRET_FILE"),
                Some(&"/run/terrace/secret"),
                "{what}: the hook proves the secret"
            );
            let claims = spec["volumeClaimTemplates"].as_array().expect("claims");
            assert_eq!(claims.len(), 1, "{what}");
            assert_eq!(claims[0]["metadata"]["name"], "data");
            let mount = container["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .find(|m| m["name"] == "data")
                .expect("the data claim is mounted");
            let dirs = table["data_dirs"].as_array().expect("data_dirs");
            let root = mount["mountPath"].as_str().expect("mountPath");
            assert!(
                dirs.iter().all(|d| d
                    .as_str()
                    .is_some_and(|d| d.starts_with(&format!("{root}/")))),
                "{what}: every data dir is on the claim ({root}): {dirs:?}"
            );
        }
    }
    if overlay == "production" {
        let monitor = rendered.get("PodMonitor", "terrace");
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["port"], "admin");
        assert_eq!(
            endpoint["authorization"]["credentials"]["name"],
            "terrace-admin-token"
        );
        assert_eq!(monitor["spec"]["jobLabel"], "terrace.dev/scrape-job");
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let _logs = logs::capture();
    let analyze = deploy::tool("systemd-analyze", "TERRACE_SYSTEMD_ANALYZE");
    // A root holding this machine's system units (the targets the units
    // name), the units, and an executable where ExecStart looks: verify
    // checks the unit, not the binary.
    let root = tempfile::tempdir().expect("temporary directory");
    let system = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .expect("this machine's systemd units");
    let units = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&units).expect("create the unit directory");
    for entry in fs::read_dir(system).expect("list the system units") {
        let entry = entry.expect("a unit");
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::copy(entry.path(), units.join(entry.file_name())).expect("copy a unit");
        }
    }
    let bin = root.path().join("usr/local/bin");
    fs::create_dir_all(&bin).expect("create usr/local/bin");
    fs::write(bin.join("terrace"), "#!/bin/sh\n").expect("write the stand-in binary");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(bin.join("terrace"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let etc = root.path().join("etc/systemd/system");
    fs::create_dir_all(&etc).expect("create etc/systemd/system");
    let ours = ["terrace-master.service", "terrace-worker.service"];
    for unit in ours {
        fs::copy(
            repo_root().join("deploy/systemd").join(unit),
            etc.join(unit),
        )
        .expect("copy our unit");
    }
    let mut verify = Command::new(analyze);
    verify
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("--man=no")
        .args(ours);
    let ran = run(verify, TOOL_LIMIT, "systemd-analyze verify");
    // verify exits 0 on an unknown key (it only warns): any output fails.
    assert!(
        ran.success() && ran.stdout().trim().is_empty() && ran.stderr().trim().is_empty(),
        "systemd-analyze verify accepts the units without a warning: {}",
        ran.report()
    );
    for unit in ours {
        let text = fs::read_to_string(etc.join(unit)).expect("read the unit");
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=\n",
            "User=terrace",
        ] {
            assert!(text.contains(hardening), "{unit} has {hardening:?}");
        }
    }
}

/// Services started by the start script, killed (by their pid files) when
/// dropped if a stop did not end them.
struct Started {
    run_dir: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        for entry in fs::read_dir(&self.run_dir).into_iter().flatten().flatten() {
            if let Some(pid) = fs::read_to_string(entry.path())
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn start_and_stop_scripts_run_a_master_and_a_worker_and_stop_them_by_sigterm_and_decommission() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("temporary directory");
    let run_dir = dir.path().join("run");
    let _started = Started {
        run_dir: run_dir.clone(),
    };
    let scripts = repo_root().join("deploy/systemd");
    let script = |name: &str, args: &[&str]| {
        let mut command = Command::new("bash");
        command
            .arg(scripts.join(name))
            .args(args)
            .env("TERRACE_BIN", terrace_tests::terrace_bin())
            .env("TERRACE_RUN_DIR", &run_dir)
            .env("TERRACE_LOG_DIR", dir.path().join("log"))
            .env("TERRACE_LOG", "warn")
            .env("TERRACE_STOP_TIMEOUT", "30")
            .env("TERRACE_DECOMMISSION_TIMEOUT", "60");
        command
    };
    let pid_of = |name: &str| -> u32 {
        fs::read_to_string(run_dir.join(format!("{name}.pid")))
            .expect("a pid file")
            .trim()
            .parse()
            .expect("a pid")
    };
    let master_config = dir.path().join("master.toml");
    fs::write(&master_config, "listen = \"127.0.0.1:0\"\n").expect("write the master config");
    let limit = Duration::from_secs(60);
    let master = run_ok(
        script(
            "terrace-start.sh",
            &["master", "--config", master_config.to_str().expect("utf-8")],
        ),
        limit,
        "terrace-start.sh master",
    )
    .stdout()
    .trim()
    .to_string();
    let master_pid = pid_of("master");
    assert_eq!(
        fs::read_link(format!("/proc/{master_pid}/exe")).expect("the master's executable"),
        fs::canonicalize(terrace_tests::terrace_bin()).expect("the binary"),
        "the pid file names the terrace process"
    );
    // A second start of a running instance is refused.
    let again = run(
        script(
            "terrace-start.sh",
            &["master", "--config", master_config.to_str().expect("utf-8")],
        ),
        limit,
        "terrace-start.sh master (again)",
    );
    assert!(
        !again.success() && again.stderr().contains("already running"),
        "{}",
        again.report()
    );

    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let start_worker = || {
        run_ok(
            script(
                "terrace-start.sh",
                &[
                    "worker",
                    "--name",
                    "w1",
                    "--",
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    &data_arg,
                    "--master",
                    &master,
                ],
            ),
            limit,
            "terrace-start.sh worker",
        )
        .stdout()
        .trim()
        .to_string()
    };
    let registered = |n: usize| {
        terrace_tests::wait_until(
            Duration::from_secs(20),
            &format!("{n} worker(s) registered"),
            || {
                matches!(
                    terrace_tests::call_with(&master, &terrace_tests::admin_options(), ListWorkers),
                    Ok(list) if list.workers.len() == n
                )
            },
        );
    };

    // SIGTERM: the worker stops and its pid file goes.
    let worker = start_worker();
    registered(1);
    let worker_pid = pid_of("w1");
    run_ok(
        script("terrace-stop.sh", &["worker", "--name", "w1"]),
        limit,
        "terrace-stop.sh worker",
    );
    assert!(!alive(worker_pid), "the worker stopped on SIGTERM");
    assert!(!run_dir.join("w1.pid").exists());
    let stopped = terrace_tests::call_with(
        &worker,
        &terrace_tests::admin_options(),
        terrace_tier_api::protocol::WorkerStats,
    );
    assert!(stopped.is_err(), "nothing answers at {worker}");

    // Decommission: the worker leaves by itself, the script waits for it.
    let worker = start_worker();
    let worker_pid = pid_of("w1");
    let ran = run_ok(
        script(
            "terrace-stop.sh",
            &["worker", "--name", "w1", "--decommission", &worker],
        ),
        limit,
        "terrace-stop.sh worker --decommission",
    );
    assert!(ran.stdout().contains("has exited"), "{}", ran.report());
    assert!(!alive(worker_pid), "the decommissioned worker exited");

    run_ok(
        script("terrace-stop.sh", &["master"]),
        limit,
        "terrace-stop.sh master",
    );
    assert!(!alive(master_pid), "the master stopped on SIGTERM");
    assert!(!run_dir.join("master.pid").exists());
}

/// Every config file under `deploy/` is one the services accept: no unknown
/// key, no value they refuse.
#[test]
fn every_shipped_config_parses_as_its_service_config() {
    let _logs = logs::capture();
    let root = repo_root().join("deploy");
    let mut checked = 0;
    for dir in ["image/etc/terrace", "compose/config", "kubernetes/base"] {
        for role in ["master", "worker"] {
            let path = root.join(dir).join(format!("{role}.toml"));
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let parsed = if role == "master" {
                toml::from_str::<terrace_master::MasterConfig>(&text).map(drop)
            } else {
                toml::from_str::<terrace_worker::WorkerConfig>(&text).map(drop)
            };
            if let Err(e) = parsed {
                panic!("{} is not a {role} config: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}
