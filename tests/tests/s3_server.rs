//! The s3s-fs test server of `terrace_tests::s3`: it starts on loopback,
//! answers as an S3 server with authentication on, lists what is on disk,
//! freezes and resumes, and comes back on the same port after a SIGKILL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use terrace_tests::logs;

use terrace_tests::s3::{self, S3Server};

/// Sends an unsigned (so refused) GET of `path`.
fn send_get(stream: &mut TcpStream, port: u16, path: &str) {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
}

/// The whole raw reply, or the read error (a timeout when nothing answers
/// within `timeout`).
fn read_reply(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

fn connect(server: &S3Server) -> std::io::Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", server.port()))
}

#[test]
fn starts_on_loopback_and_lists_what_is_on_disk() {
    let _logs = logs::capture();
    let server = S3Server::start();
    assert_eq!(
        server.endpoint(),
        format!("http://127.0.0.1:{}", server.port())
    );
    assert_eq!(server.bucket(), s3::BUCKET);
    assert_eq!(server.url("a/b"), format!("s3://{}/a/b", s3::BUCKET));
    let env = server.env();
    for (key, value) in [
        ("AWS_ENDPOINT", server.endpoint().as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
    ] {
        assert!(
            env.iter().any(|(k, v)| k == key && v == value),
            "{key}={value} in {env:?}"
        );
    }

    // It speaks S3 with authentication on: an unsigned request is refused.
    let mut stream = connect(&server).expect("server accepts TCP connections");
    send_get(&mut stream, server.port(), &format!("/{}/x", s3::BUCKET));
    let reply = read_reply(&mut stream, Duration::from_secs(5)).expect("a reply");
    assert!(reply.starts_with("HTTP/1.1 403"), "reply: {reply}");
    assert!(reply.contains("AccessDenied"), "reply: {reply}");

    // The bucket is a directory under the root; objects are files in it.
    assert!(server.root().join(s3::BUCKET).is_dir());
    assert!(server.objects("").is_empty());
    assert!(server.internal_files().is_empty());
    assert!(server.open_uploads().is_empty());
    let dir = server.root().join(s3::BUCKET).join("x");
    std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
    std::fs::write(dir.join("y"), b"bytes").expect("write object file");
    assert_eq!(server.objects("x/"), vec!["x/y".to_string()]);
    assert_eq!(server.objects(""), vec!["x/y".to_string()]);
    assert_eq!(server.objects("x/y"), vec!["x/y".to_string()]);
    assert!(server.objects("x/z").is_empty());
    assert!(server.objects("y").is_empty());

    // Internal files at the top of the root are reported apart.
    let upload = "0b3c9d4e-0000-4000-8000-000000000001";
    std::fs::write(
        server.root().join(format!(".upload_id-{upload}.part-1")),
        b"part",
    )
    .expect("write part file");
    assert_eq!(server.objects(""), vec!["x/y".to_string()]);
    assert_eq!(server.open_uploads(), vec![upload.to_string()]);
    assert_eq!(server.internal_files().len(), 1);
}

#[test]
fn kill_and_restart_on_the_same_port_and_root() {
    let _logs = logs::capture();
    let mut server = S3Server::start();
    let port = server.port();
    let object = server.root().join(s3::BUCKET).join("kept");
    std::fs::write(&object, b"kept").expect("write object file");

    server.kill();
    assert!(server.pid().is_none());
    assert!(connect(&server).is_err(), "nothing listens after a kill");
    server.kill(); // killing twice is harmless

    server.restart();
    assert_eq!(server.port(), port);
    assert!(server.pid().is_some());
    connect(&server).expect("accepts connections again after restart");
    assert_eq!(server.objects(""), vec!["kept".to_string()]);

    // restart() of a running server kills it first.
    let pid = server.pid();
    server.restart();
    assert_ne!(server.pid(), pid);
    assert_eq!(server.port(), port);
    connect(&server).expect("accepts connections after a second restart");
}

#[test]
fn stop_freezes_and_cont_resumes() {
    let _logs = logs::capture();
    let mut server = S3Server::start();
    server.stop();
    // The kernel still completes the connect, but nothing answers.
    let mut stream = connect(&server).expect("connect to a stopped server");
    send_get(&mut stream, server.port(), "/");
    let err = read_reply(&mut stream, Duration::from_millis(300))
        .expect_err("a stopped server does not answer");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    server.cont();
    let reply = read_reply(&mut stream, Duration::from_secs(5)).expect("answered after SIGCONT");
    assert!(reply.starts_with("HTTP/1.1 403"), "reply: {reply}");

    // Dropping a stopped server does not hang.
    server.stop();
    drop(server);
}

#[test]
fn a_given_root_outlives_the_server() {
    let _logs = logs::capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s3");
    let first = S3Server::start_on(&root);
    std::fs::create_dir_all(root.join(s3::BUCKET).join("a")).expect("mkdir");
    std::fs::write(root.join(s3::BUCKET).join("a/b"), b"b").expect("write");
    drop(first);
    assert!(root.join(s3::BUCKET).join("a/b").is_file());

    let second = S3Server::start_on(&root);
    assert_eq!(second.root(), root.as_path());
    assert_eq!(second.objects("a/"), vec!["a/b".to_string()]);
}
