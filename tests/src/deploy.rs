//! Running the deployment files under `deploy/` for real: the tools that
//! check them (found on `PATH` or where `scripts/deploy-tools.sh` installed
//! them), commands under a deadline, a small HTTP client for admin endpoints
//! and Prometheus, and the compose cluster of `deploy/compose` as a guard
//! that takes its containers, volumes and network down when dropped, even
//! when the test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use terrace_rpc::clock;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

/// A checking tool: `$env` when set, else `name` on `PATH`. Panics, telling
/// how to install it, when neither is there.
pub fn tool(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        assert!(
            path.is_file(),
            "{env}={} is not a file: run the tests with scripts/test.sh, which installs {name}",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (nor {env} set): run the tests with scripts/test.sh, \
                 or scripts/deploy-tools.sh, which install it"
            )
        })
}

/// `kubernetes-validate`, which `scripts/deploy-tools.sh` installs (pinned)
/// into a cached virtual environment, and that environment's Python (which
/// has PyYAML, a dependency of kubernetes-validate).
pub fn kubernetes_validate() -> (PathBuf, PathBuf) {
    let validate = tool("kubernetes-validate", "TERRACE_KUBERNETES_VALIDATE");
    let python = validate.with_file_name("python3");
    assert!(
        python.is_file(),
        "{} has no python3 beside it: install it with scripts/deploy-tools.sh",
        validate.display()
    );
    (validate, python)
}

/// Output of a command that ran to its end.
#[derive(Debug)]
pub struct Ran {
    pub output: Output,
    pub took: Duration,
}

impl Ran {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// Both outputs, for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "{:?} after {:.1?}\n--- stdout\n{}\n--- stderr\n{}",
            self.output.status,
            self.took,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Runs `command` (stdin closed) to its end; past `limit` it is killed and
/// the test fails naming `what`.
pub fn run(mut command: Command, limit: Duration, what: &str) -> Ran {
    let started = clock::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut status = None;
    let ended = crate::wait::poll_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: {command:?} did not end within {limit:?}");
    }
    Ran {
        output: Output {
            status: status.expect("ended"),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        },
        took: clock::elapsed(started),
    }
}

/// [`run`], failing the test unless the command succeeds.
pub fn run_ok(command: Command, limit: Duration, what: &str) -> Ran {
    let ran = run(command, limit, what);
    assert!(ran.success(), "{what} failed: {}", ran.report());
    ran
}

/// An HTTP reply: status code and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// Largest reply [`http_get`] reads (a Prometheus query result, a metrics page).
const MAX_REPLY: u64 = 16 << 20;

/// `GET path` on `address` over HTTP/1.0 (so the reply is never chunked),
/// connect, send and receive each within `timeout`.
pub fn http_get(address: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<HttpReply> {
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_REPLY).read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of the reply's header"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok(HttpReply {
        status,
        body: body.to_string(),
    })
}

/// `value` with every `%`-unsafe byte of a URL query escaped.
pub fn url_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The images of one test run, built by `deploy/build-image.sh` under tags of
/// their own (so concurrent runs do not replace each other's), removed when
/// dropped. The base is shared and kept: it is made again only when the
/// files it is made from change.
#[derive(Debug)]
pub struct Images {
    pub terrace: String,
    pub prometheus: String,
    pub took: Duration,
}

impl Images {
    /// Builds the Terrace image around `binary` and the Prometheus image.
    pub fn build(binary: &Path) -> Images {
        let id = std::process::id();
        let terrace = format!("terrace-test:{id}");
        let prometheus = format!("terrace-prometheus-test:{id}");
        let mut command = Command::new("bash");
        command
            .arg(repo_root().join("deploy/build-image.sh"))
            .arg("--binary")
            .arg(binary)
            .arg("--tag")
            .arg(&terrace)
            .arg("--prometheus")
            .env("PROMETHEUS_IMAGE", &prometheus)
            .current_dir(repo_root());
        // Dropped (the images removed) if the build fails.
        let mut images = Images {
            terrace,
            prometheus,
            took: Duration::ZERO,
        };
        let ran = run_ok(command, Duration::from_secs(300), "deploy/build-image.sh");
        eprintln!("deploy: images built in {:.1?}: {}", ran.took, ran.stderr());
        images.took = ran.took;
        images
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.terrace, &self.prometheus])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The members of `deploy/compose/docker-compose.yml`: service name, last
/// octet of its address, admin port (`None`: Prometheus).
pub const COMPOSE_MEMBERS: [(&str, u8, Option<u16>); 6] = [
    ("master1", 11, Some(9460)),
    ("master2", 12, Some(9460)),
    ("worker1", 21, Some(9461)),
    ("worker2", 22, Some(9461)),
    ("worker3", 23, Some(9461)),
    ("prometheus", 30, None),
];

/// The compose cluster of `deploy/compose`, under a project name of its own
/// on a /24 no other Docker network uses. Dropping it runs `down` (containers,
/// volumes, network), after printing the members' last log lines when the
/// test is failing.
#[derive(Debug)]
pub struct Compose {
    project: String,
    /// The compose file, in a copy of `deploy/` (see [`stage_compose`]).
    file: PathBuf,
    _staged: std::sync::Arc<tempfile::TempDir>,
    /// The network's first three octets (`TERRACE_NET`).
    pub net: String,
    env: Vec<(String, String)>,
}

/// How long `docker-compose up`, `down` or `logs` may take.
const COMPOSE_COMMAND_LIMIT: Duration = Duration::from_secs(180);

impl Compose {
    /// Starts the cluster on `images` (`up -d`), trying another subnet when
    /// the chosen one turns out to be taken.
    pub fn up(images: &Images) -> Compose {
        remove_abandoned_projects();
        let staged = std::sync::Arc::new(stage_compose());
        let file = staged.path().join("compose/docker-compose.yml");
        let taken = docker_subnets();
        let start = std::process::id() % 200;
        let mut last = String::new();
        for attempt in 0..3 {
            let net = (0..200)
                .map(|i| format!("172.31.{}", 20 + (start + i + attempt * 37) % 200))
                .find(|net| !taken.iter().any(|s| s.starts_with(&format!("{net}."))))
                .expect("a free 172.31.x.0/24 for the compose network");
            let compose = Compose {
                project: format!("terrace-test-{}-{attempt}", std::process::id()),
                file: file.clone(),
                _staged: std::sync::Arc::clone(&staged),
                net,
                env: vec![
                    ("TERRACE_IMAGE".into(), images.terrace.clone()),
                    ("PROMETHEUS_IMAGE".into(), images.prometheus.clone()),
                    ("PROMETHEUS_PORT".into(), String::new()),
                ],
            };
            let ran = run(
                compose.command(&["up", "-d", "--no-build"]),
                COMPOSE_COMMAND_LIMIT,
                "docker-compose up",
            );
            if ran.success() {
                eprintln!(
                    "deploy: compose cluster {} up on {}.0/24 in {:.1?}",
                    compose.project, compose.net, ran.took
                );
                return compose;
            }
            last = ran.report();
            // `compose` drops here and takes down whatever was created.
            if !last.contains("overlap") {
                break;
            }
        }
        panic!("docker-compose up failed: {last}");
    }

    /// `docker-compose -p PROJECT -f <staged docker-compose.yml> ARGS`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(&self.file)
            .args(args)
            .env("TERRACE_NET", &self.net)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Cuts `service` off the cluster's network (`docker network disconnect
    /// --force`): the container keeps running and its peers' packets to it
    /// go nowhere, as when a host's link fails. Not undone: the cluster's
    /// `down` removes it.
    pub fn disconnect(&self, service: &str) {
        let id = run_ok(
            self.command(&["ps", "-q", service]),
            COMPOSE_COMMAND_LIMIT,
            "docker-compose ps -q",
        )
        .stdout()
        .trim()
        .to_string();
        assert!(!id.is_empty(), "{service} has a container");
        let mut inspect = Command::new("docker");
        inspect.args([
            "inspect",
            "--format",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
            &id,
        ]);
        let networks = run_ok(inspect, COMPOSE_COMMAND_LIMIT, "docker inspect").stdout();
        for network in networks.split_whitespace() {
            let mut cut = Command::new("docker");
            cut.args(["network", "disconnect", "--force", network, &id]);
            run_ok(cut, COMPOSE_COMMAND_LIMIT, "docker network disconnect");
        }
    }

    /// The address of member `octet` on the network, at `port`.
    pub fn address(&self, octet: u8, port: u16) -> SocketAddr {
        format!("{}.{octet}:{port}", self.net)
            .parse()
            .expect("an IPv4 socket address")
    }

    /// The masters' service addresses, as a client lists them.
    pub fn master_addresses(&self) -> String {
        format!("{0}.11:9870,{0}.12:9870", self.net)
    }

    /// Prometheus's address on the network.
    pub fn prometheus(&self) -> SocketAddr {
        self.address(30, 9090)
    }

    /// Docker's health status of a service's container ("healthy", ...).
    pub fn health(&self, service: &str) -> String {
        let id = run(
            self.command(&["ps", "-q", service]),
            Duration::from_secs(30),
            "docker-compose ps",
        )
        .stdout();
        let id = id.trim();
        if id.is_empty() {
            return "no container".into();
        }
        let mut inspect = Command::new("docker");
        inspect.args(["inspect", "-f", "{{.State.Health.Status}}", id]);
        run(inspect, Duration::from_secs(30), "docker inspect")
            .stdout()
            .trim()
            .to_string()
    }

    /// A Prometheus instant query's result vector, as JSON values.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", url_escape(promql));
        let reply = http_get(self.prometheus(), &path, Duration::from_secs(5))
            .map_err(|e| format!("query {promql}: {e}"))?;
        let json: serde_json::Value = serde_json::from_str(&reply.body)
            .map_err(|e| format!("query {promql}: status {}: {e}", reply.status))?;
        if json["status"] != "success" {
            return Err(format!("query {promql}: {json}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value of a query whose result is one sample.
    pub fn query_value(&self, promql: &str) -> Result<f64, String> {
        let result = self.query(promql)?;
        match result.as_slice() {
            [sample] => sample["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("query {promql}: no value in {sample}")),
            _ => Err(format!("query {promql}: {} samples", result.len())),
        }
    }

    /// The last `lines` log lines of every member.
    pub fn logs(&self, lines: u32) -> String {
        let tail = lines.to_string();
        let ran = run(
            self.command(&["logs", "--no-color", "--tail", &tail]),
            COMPOSE_COMMAND_LIMIT,
            "docker-compose logs",
        );
        ran.stdout() + &ran.stderr()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // To the real standard error (eprintln! is held by the test
            // harness until the end): a CI log cut to its head and tail
            // still shows the members' last words next to the failure.
            let _ = std::io::stderr().write_all(
                format!(
                    "deploy: the compose cluster's last log lines:\n{}\n",
                    self.logs(40)
                )
                .as_bytes(),
            );
        }
        let down = run(
            self.command(&["down", "--volumes", "--remove-orphans", "--timeout", "10"]),
            COMPOSE_COMMAND_LIMIT,
            "docker-compose down",
        );
        if !down.success() {
            eprintln!("deploy: docker-compose down failed: {}", down.report());
        }
    }
}

/// A copy of `deploy/` whose files every user may read. The compose file
/// mounts config files (its own, and `deploy/prometheus/alerts.yml`) into
/// containers that run as unprivileged users, so in a checkout made under a
/// umask of 077 (files 0600) the members could not read them; the copy holds
/// the same bytes at 0644 (0755 for directories), as an operator's
/// deployment would.
fn stage_compose() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), &target)?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
            }
        }
        Ok(())
    }
    let staged = tempfile::tempdir().expect("a directory for the deployment files");
    copy(&repo_root().join("deploy"), staged.path())
        .unwrap_or_else(|e| panic!("copy deploy/ to {}: {e}", staged.path().display()));
    staged
}

/// Whether the test process `pid` is gone.
fn dead(pid: &str) -> bool {
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Takes down what test processes that died without dropping it (SIGKILLed
/// at a CI timeout) left: compose projects named `terrace-test-<pid>-<n>`
/// and images tagged `terrace-test:<pid>` and `terrace-prometheus-test:<pid>`
/// whose process is gone.
fn remove_abandoned_projects() {
    let mut images = Command::new("docker");
    images.args(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let images = run_ok(images, Duration::from_secs(30), "docker images").stdout();
    let stale: Vec<&str> = images
        .lines()
        .filter(|image| {
            image
                .strip_prefix("terrace-test:")
                .or_else(|| image.strip_prefix("terrace-prometheus-test:"))
                .is_some_and(dead)
        })
        .collect();
    if !stale.is_empty() {
        let mut rmi = Command::new("docker");
        rmi.args(["rmi", "--force"]).args(&stale);
        run(rmi, Duration::from_secs(60), "docker rmi (abandoned)");
    }

    let mut list = Command::new("docker");
    list.args([
        "ps",
        "--all",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ]);
    let projects = run_ok(list, Duration::from_secs(30), "docker ps").stdout();
    let abandoned: std::collections::BTreeSet<&str> = projects
        .lines()
        .filter(|project| {
            project
                .strip_prefix("terrace-test-")
                .and_then(|rest| rest.split('-').next())
                .is_some_and(dead)
        })
        .collect();
    for project in abandoned {
        let mut down = Command::new("docker-compose");
        down.args(["--project-name", project, "--file"])
            .arg(repo_root().join("deploy/compose/docker-compose.yml"))
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        let ran = run(
            down,
            COMPOSE_COMMAND_LIMIT,
            "docker-compose down (abandoned)",
        );
        eprintln!(
            "deploy: took down the abandoned compose project {project}: {:?}",
            ran.output.status
        );
    }
}

/// The subnets of every Docker network on this machine.
fn docker_subnets() -> Vec<String> {
    let mut list = Command::new("docker");
    list.args(["network", "ls", "-q"]);
    let ids = run_ok(list, Duration::from_secs(30), "docker network ls").stdout();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut inspect = Command::new("docker");
    inspect
        .args([
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        ])
        .args(&ids);
    run_ok(inspect, Duration::from_secs(30), "docker network inspect")
        .stdout()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}
