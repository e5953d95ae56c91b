#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine,
# then runs every test of the workspace (unit, property, integration over
# loopback TCP, process-level SIGKILL tests, the deployment files checked by
# their tools, and the Flink end-to-end tests, which fetch Flink 1.20.3 and
# build the adapter jar themselves, one of them through the container image
# and the compose cluster of deploy/).
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

# The S3-compatible server the object-store tests run on loopback (s3s-fs,
# installed once into a cache outside the repository).
TERRACE_S3S_FS="$(scripts/s3-server.sh | tail -n1)"
export TERRACE_S3S_FS

# The deployment tests' tools: promtool, kubernetes-validate (pinned, in a
# cached virtual environment), docker-compose, busybox-static for the image
# base, systemd-analyze (scripts/deploy-tools.sh; needs kubectl and Docker).
TERRACE_KUBERNETES_VALIDATE="$(scripts/deploy-tools.sh | tail -n1)"
export TERRACE_KUBERNETES_VALIDATE

# No module of these crates imports one that imports it back (issue 19).
python3 scripts/import-cycles.py worker master proto rpc tier-api admin

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# Build every test target first, and the `terrace` binary the process tests
# run, so the two runs below build nothing.
cargo test --workspace --locked --no-run "$@"
cargo build --locked -p terrace-cli --bin terrace

# The Flink end-to-end tests (tests/tests/flink_e2e.rs: about 500 of the ~830
# seconds of tests, mostly spent in Flink's JVM) run beside all the others,
# which they share nothing with: their binary is started directly (a second
# `cargo test` would wait on the first one's lock on the target directory),
# from the package directory as cargo would, its output kept until the end.
flink_e2e="$(cargo test --locked -p terrace-tests --test flink_e2e --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "flink_e2e" and m.get("executable"):
        print(m["executable"])')"
flink_log="$(mktemp)"
(cd tests && "$flink_e2e") > "$flink_log" 2>&1 &
flink_pid=$!

status=0
others=()
for test in tests/tests/*.rs; do
  name="$(basename "$test" .rs)"
  [ "$name" = flink_e2e ] || others+=(--test "$name")
done
cargo test --workspace --exclude terrace-tests --locked "$@" || status=$?
cargo test -p terrace-tests --locked --lib --bins "${others[@]}" "$@" || status=$?

flink_status=0
wait "$flink_pid" || flink_status=$?
echo "== tests/tests/flink_e2e.rs (ran beside the others)"
cat "$flink_log"
rm -f "$flink_log"
if [ "$flink_status" -ne 0 ]; then
  echo "flink_e2e failed (exit $flink_status)" >&2
  status=$flink_status
fi
exit "$status"
