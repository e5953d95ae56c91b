#!/usr/bin/env bash
# Fetch Apache Spark's jars of one Spark version without a Maven repository, and lay them out as a
# SPARK_HOME that `local-cluster` executors can be launched from.
#
#   scripts/fetch-spark.sh [VERSION]   # 3.5.9 (default), 4.0.5, 4.1.4, 4.2.1 or 4.3.0
#
# Source: PyPI's `pyspark` source archive (sdist, 318-456 MB), whose deps/jars/ holds Spark's
# binary distribution jars. Each archive's sha256 is pinned below, so pip refuses anything else.
# Only deps/jars/ is extracted, into <cache>/spark-VERSION/jars (SPARK_HOME is <cache>/spark-VERSION).
#
# Idempotent: a second run only checks the marker and prints SPARK_HOME.
# Non-interactive (works with CI=true and no stdin).
#
# Env:
#   TERRACE_CACHE        cache root (default: $HOME/.cache/terrace)
#   SPARK_KEEP_SDIST=0   delete the downloaded archive after extraction (default: keep)
#
# Last line of stdout: SPARK_HOME (<cache>/spark-VERSION), whose jars/ holds the jars.
set -euo pipefail

SPARK_VERSION="${1:-3.5.9}"
case "$SPARK_VERSION" in
  3.5.9) SHA256=ea27adc39ddac9413b8951e45aa748cbed6c785971b81386efc41938f6243d93 ;;
  4.0.5) SHA256=a0d44b0e7faf0458ad83b7aa664e7ed8b96beed8a55d66ce3b0dfac2309dfca6 ;;
  4.1.4) SHA256=bcbd5e18690cf79d438e97210ad06fb8d451a251bb77becc2b0418868d2acd73 ;;
  4.2.1) SHA256=d79b7c8ee41e66a9202fe6f600ca90b931ca571ae9dbdf31c58d2672e5102da0 ;;
  4.3.0) SHA256=e8c517948eff7088a7aa07449aa8eafa4a15a8d50319de2525a6fd26622476c6 ;;
  *)
    echo "fetch-spark: unsupported Spark version '$SPARK_VERSION' (supported: 3.5.9, 4.0.5, 4.1.4, 4.2.1, 4.3.0)" >&2
    exit 2
    ;;
esac
CACHE_ROOT="${TERRACE_CACHE:-$HOME/.cache/terrace}"
HOME_DIR="$CACHE_ROOT/spark-$SPARK_VERSION"
JARS="$HOME_DIR/jars"
MARKER="$JARS/.complete"
ARCHIVE="$HOME_DIR/download/pyspark-$SPARK_VERSION.tar.gz"

log() { echo "fetch-spark: $*" >&2; }

if [[ -f "$MARKER" ]] && ls "$JARS"/spark-core_*.jar >/dev/null 2>&1; then
  log "already present: $HOME_DIR"
  echo "$HOME_DIR"
  exit 0
fi

mkdir -p "$HOME_DIR/download"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for c in python3.11 python3 python; do command -v "$c" >/dev/null && { PY="$c"; break; }; done
fi
[[ -n "$PY" ]] || { log "no python found"; exit 1; }

if [[ -f "$ARCHIVE" ]] && echo "$SHA256  $ARCHIVE" | sha256sum -c --status; then
  log "archive already downloaded: $ARCHIVE"
else
  rm -f "$ARCHIVE"
  req="$(mktemp)"; trap 'rm -f "$req"' EXIT
  echo "pyspark==$SPARK_VERSION --hash=sha256:$SHA256" >"$req"
  log "downloading pyspark-$SPARK_VERSION.tar.gz (~300-460 MB) ..."
  start=$(date +%s)
  # pip prepares the sdist's metadata (a setuptools build step) in an isolated environment; the
  # package's setup.py needs `wheel` there, which isolation provides.
  "$PY" -m pip download --no-deps --no-binary :all: --require-hashes -r "$req" \
      -d "$HOME_DIR/download" --progress-bar off --no-input --disable-pip-version-check </dev/null >&2
  log "downloaded in $(( $(date +%s) - start ))s"
fi
[[ -f "$ARCHIVE" ]] || { log "expected $ARCHIVE, got: $(ls "$HOME_DIR/download")"; exit 1; }
echo "$SHA256  $ARCHIVE" | sha256sum -c --status || { log "sha256 mismatch on $ARCHIVE"; exit 1; }

tmp="$(mktemp -d "$HOME_DIR/extract.XXXXXX")"
tar -xzf "$ARCHIVE" -C "$tmp" --no-same-owner --wildcards --no-anchored "deps/jars/*.jar"
rm -rf "$JARS"
mv "$tmp"/*/deps/jars "$JARS"
rm -rf "$tmp"
(cd "$JARS" && sha256sum ./*.jar >.complete)
if [[ "${SPARK_KEEP_SDIST:-1}" == 0 ]]; then rm -f "$ARCHIVE"; fi

log "$(ls "$JARS"/*.jar | wc -l) jars, $(du -sh "$JARS" | cut -f1)"
echo "$HOME_DIR"
