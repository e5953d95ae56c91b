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

# What a log reader needs to judge a failure: the machine's size, the umask
# files are made with, and the room on the file systems tests write to.
echo "test.sh: $(nproc) cores, umask $(umask), available: $(df -h --output=target,avail / /tmp /dev/shm 2>/dev/null | tail -n +2 | tr -s ' ' | tr '\n' ';')" >&2

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
cargo test --workspace --locked "$@"
