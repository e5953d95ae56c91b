#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine,
# then runs every test of the workspace (unit, property, integration over
# loopback TCP, process-level SIGKILL tests, the deployment files checked by
# their tools, and the Flink end-to-end tests on Flink 1.20 and 2.x, which
# build the adapter jars themselves, one of them through the container image
# and the compose cluster of deploy/). Everything runs with no arguments;
# arguments are passed to one `cargo test` (e.g. `-p terrace-tests --test
# cli`), after the same set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v javac >/dev/null 2>&1; then
  echo "installing a JDK (javac is needed by the Flink adapter tests)" >&2
  apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (the machine's Rust toolchain)" >&2
  exit 1
fi

# What a log reader needs to judge a failure: the machine's size, the umask
# files are made with, and the room on the file systems tests write to.
echo "test.sh: $(nproc) cores, umask $(umask), available: $(df -h --output=target,avail / /tmp /dev/shm 2>/dev/null | tail -n +2 | tr -s ' ' | tr '\n' ';')" >&2

# Set-up runs in the background while the tests build, its output shown if
# it fails: the S3-compatible server the object-store tests run on loopback
# (s3s-fs, built once into a cache outside the repository; the script waits
# for an install already in progress), the Flink releases the end-to-end
# tests run (scripts/fetch-flink.sh, ~300 MB each from PyPI, cached), and the
# deployment tests' tools: promtool, kubernetes-validate (pinned, in a cached
# virtual environment), docker-compose, busybox-static for the image base,
# systemd-analyze (scripts/deploy-tools.sh; needs kubectl and Docker).
setup_log="$(mktemp -d)"
trap 'rm -rf "$setup_log"' EXIT
scripts/s3-server.sh >"$setup_log/s3s" 2>"$setup_log/s3s.err" </dev/null &
s3s_install=$!
(for version in 1.20.3 2.0.1 2.1.3 2.2.1 2.3.0; do
  scripts/fetch-flink.sh "$version" </dev/null >/dev/null
done) 2>"$setup_log/flink" &
flink_fetch=$!
scripts/deploy-tools.sh >"$setup_log/deploy" 2>"$setup_log/deploy.err" </dev/null &
deploy_tools=$!

# No module of these crates imports one that imports it back (issue 19).
python3 scripts/import-cycles.py worker master proto rpc tier-api admin

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

finish_setup() {
  wait "$s3s_install" || { cat "$setup_log/s3s.err" >&2; echo "scripts/s3-server.sh failed" >&2; exit 1; }
  TERRACE_S3S_FS="$(tail -n1 "$setup_log/s3s")"
  export TERRACE_S3S_FS
  wait "$flink_fetch" || { cat "$setup_log/flink" >&2; echo "fetching Flink failed" >&2; exit 1; }
  wait "$deploy_tools" || { cat "$setup_log/deploy.err" >&2; echo "scripts/deploy-tools.sh failed" >&2; exit 1; }
  TERRACE_KUBERNETES_VALIDATE="$(tail -n1 "$setup_log/deploy")"
  export TERRACE_KUBERNETES_VALIDATE
}

# With arguments (a package, a test, a filter): one cargo test run of them.
if [ $# -gt 0 ]; then
  finish_setup
  cargo test --locked "$@"
  exit
fi

# Every test target, and the `terrace` binary the process tests run, built
# first, so that the runs below build nothing.
cargo test --workspace --locked --no-run
cargo build --locked -p terrace-cli --bin terrace
finish_setup

# The Flink end-to-end tests (tests/tests/flink_e2e.rs: about 600 of the ~940
# seconds of tests on 2 cores, mostly Flink's JVM and its jobs) run beside all
# the others: they share no ports, files or processes with them. Their binary
# is started directly, from the package directory as cargo does, and its
# output held until the others end. The tests that check timing under load
# wait on conditions, not fixed sleeps, so the two runs can share the cores.
flink_e2e="$(cargo test --locked -p terrace-tests --test flink_e2e --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "flink_e2e" and m.get("executable"):
        print(m["executable"])')"
[ -x "$flink_e2e" ] || { echo "cannot find the flink_e2e test binary" >&2; exit 1; }
(cd tests && exec "$flink_e2e") >"$setup_log/flink_e2e" 2>&1 &
flink_pid=$!

status=0
others=()
for test in tests/tests/*.rs; do
  name="$(basename "$test" .rs)"
  [ "$name" = flink_e2e ] || others+=(--test "$name")
done
cargo test --workspace --exclude terrace-tests --locked || status=$?
cargo test -p terrace-tests --locked --lib --bins "${others[@]}" || status=$?

flink_status=0
wait "$flink_pid" || flink_status=$?
echo "== tests/tests/flink_e2e.rs (ran beside the others)"
cat "$setup_log/flink_e2e"
if [ "$flink_status" -ne 0 ]; then
  echo "flink_e2e failed (exit $flink_status)" >&2
  status=$flink_status
fi
exit "$status"
