//! `terrace master --admin-listen`: the real binary serves its admin HTTP
//! server on the address given, prints it, and stops it last on SIGTERM.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use terrace_tests::{ServiceProcess, terrace_bin};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn terrace_master_serves_admin_http_on_the_address_of_admin_listen() {
    let mut child = Command::new(terrace_bin())
        .args([
            "master",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--set",
            "worker_timeout=300ms",
        ])
        .env("TERRACE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn terrace master");
    let stdout = child.stdout.take().expect("piped stdout");
    // Killed on drop, whatever happens below.
    let mut master = ServiceProcess {
        child,
        address: String::new(),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = || rx.recv_timeout(WAIT).expect("a line on stdout");
    let rpc = line();
    let admin = line();
    assert!(
        rpc.starts_with("terrace master listening on 127.0.0.1:"),
        "{rpc}"
    );
    let admin = admin
        .strip_prefix("terrace master admin listening on ")
        .unwrap_or_else(|| panic!("not the admin line: {admin}"))
        .to_string();
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let get = |path: &str| {
        runtime
            .block_on(terrace_admin::client::get(&admin, path, None, WAIT))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    assert_eq!(get("/healthz").status, 200);
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("\nterrace_master_jobs 0\n"),
        "{}",
        metrics.body
    );
    // Ready once its worker list settles (300 ms after start).
    let ready = runtime.block_on(async {
        terrace_rpc::clock::timeout(WAIT, async {
            loop {
                let reply = terrace_admin::client::get(&admin, "/readyz", None, WAIT)
                    .await
                    .expect("GET /readyz");
                if reply.status == 200 {
                    return reply;
                }
                assert_eq!(reply.status, 503, "{}", reply.body);
                terrace_rpc::clock::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    });
    assert_eq!(ready.expect("ready within the bound").body, "ready\n");

    // SIGTERM: the master stops, the admin server with it, and it exits 0.
    let pid = master.pid().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let (exit, _) = terrace_tests::wait::wait_for(WAIT, "the master exits after SIGTERM", || {
        master.child.try_wait().expect("wait")
    });
    assert!(exit.success(), "{exit:?}");
    assert!(
        runtime
            .block_on(terrace_admin::client::get(&admin, "/healthz", None, WAIT))
            .is_err(),
        "the admin server stopped"
    );
}
