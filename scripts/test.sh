#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine,
# then runs every test of the workspace (unit, property, integration over
# loopback TCP, process-level SIGKILL tests, the deployment files checked by
# their tools, the Flink end-to-end tests on Flink 1.20 and 2.x, which
# build the adapter jars themselves, one of them through the container image
# and the compose cluster of deploy/, and the Spark end-to-end tests on Spark
# 3.5 and 4.0 to 4.3, which build the plug-in jars). Everything runs with no arguments;
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
# for an install already in progress), the Flink and Spark releases the
# end-to-end tests run (scripts/fetch-flink.sh and scripts/fetch-spark.sh,
# 230-460 MB each from PyPI, cached), and the
# deployment tests' tools: promtool, kubernetes-validate (pinned, in a cached
# virtual environment), docker-compose, busybox-static for the image base,
# systemd-analyze (scripts/deploy-tools.sh; needs kubectl and Docker).
setup_log="$(mktemp -d)"
trap 'rm -rf "$setup_log"' EXIT
scripts/s3-server.sh >"$setup_log/s3s" 2>"$setup_log/s3s.err" </dev/null &
s3s_install=$!
(for version in 1.20.3 2.0.1 2.1.3 2.2.1 2.3.0; do
  scripts/fetch-flink.sh "$version" </dev/null >/dev/null
done
for version in 3.5.9 4.0.5 4.1.4 4.2.1 4.3.0; do
  scripts/fetch-spark.sh "$version" </dev/null >/dev/null
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
  wait "$flink_fetch" || { cat "$setup_log/flink" >&2; echo "fetching Flink or Spark failed" >&2; exit 1; }
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

# Every test target, built once: the `terrace` binary the process tests run
# comes with them (cli/tests/binary.rs needs it), with the same features.
# The test binaries are then run directly, not by further `cargo test` runs
# on a subset of packages, which would resolve features anew and rebuild
# dozens of crates.
tests="$setup_log/tests"
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics \
  | python3 -c 'import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], os.path.dirname(m["manifest_path"]), m["executable"], sep="\t")' \
  | sort -u >"$tests"
[ -s "$tests" ] || { echo "the test build listed no test binaries" >&2; exit 1; }
finish_setup

# A test binary runs from its package's directory, as under cargo.
run_test() { # name dir executable
  echo "== $1 ($3)"
  (cd "$2" && exec "$3")
}

# The Flink end-to-end tests (tests/tests/flink_e2e.rs: about 550 of the
# ~800 seconds of tests on 2 cores, mostly Flink's JVM and its jobs) run
# beside all the others: they share no ports, files or processes with them.
# Their output is held until the others end. The tests that check timing
# under load wait on conditions, not fixed sleeps, so the two can share the
# cores.
flink_line="$(awk -F'\t' '$1 == "flink_e2e"' "$tests")"
[ -n "$flink_line" ] || { echo "the test build has no flink_e2e binary" >&2; exit 1; }
IFS=$'\t' read -r name dir exe <<<"$flink_line"
run_test "$name" "$dir" "$exe" >"$setup_log/flink_e2e" 2>&1 &
flink_pid=$!

status=0
failed=()
while IFS=$'\t' read -r name dir exe; do
  [ "$name" = flink_e2e ] && continue
  run_test "$name" "$dir" "$exe" </dev/null || { status=1; failed+=("$name"); }
done <"$tests"
# No crate has doc tests today; this keeps any added later in the run.
cargo test --workspace --locked --doc || { status=1; failed+=(doc-tests); }

flink_status=0
wait "$flink_pid" || flink_status=$?
echo "== tests/tests/flink_e2e.rs (ran beside the others)"
cat "$setup_log/flink_e2e"
if [ "$flink_status" -ne 0 ]; then
  status=1
  failed+=(flink_e2e)
fi
if [ "$status" -ne 0 ]; then
  echo "test binaries that failed: ${failed[*]}" >&2
fi
exit "$status"
