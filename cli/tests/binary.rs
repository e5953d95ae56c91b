//! The `terrace` binary as cargo builds it for tests. Besides checking its
//! command-line surface, this target is how the process tests get the
//! binary: `terrace_tests::terrace_bin` builds it with `cargo test
//! --workspace --no-run --test binary`, so the binary has the features of
//! the workspace's test build and building it again compiles nothing.

use std::process::Command;

fn terrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_terrace"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run the terrace binary")
}

#[test]
fn version_and_help_name_every_command() {
    let version = terrace(&["--version"]);
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("terrace {}", env!("CARGO_PKG_VERSION"))
    );

    let help = terrace(&["--help"]);
    assert!(help.status.success(), "{help:?}");
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["master", "worker", "demo", "bench", "bench-io", "status"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(&format!("{command} "))),
            "`terrace --help` lists {command}:\n{help}"
        );
    }
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = terrace(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-command"),
        "{out:?}"
    );
}
