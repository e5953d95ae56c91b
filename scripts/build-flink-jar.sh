#!/usr/bin/env bash
# Build target/flink/terrace-flink-1.20.jar: Terrace's Flink 1.20 adapter (dev.terrace.flink.*)
# with the linux-x86_64 native library bundled at /native/linux-x86_64/libterrace_flink.so,
# which the adapter extracts and loads itself. Drop the jar into Flink's lib/; nothing else is
# needed on Flink's classpath.
#
#   scripts/build-flink-jar.sh
#
# Steps: fetch the Flink 1.20.3 jars (scripts/fetch-flink.sh, cached outside the repo), build the
# JNI crate (cargo build --release -p terrace-flink-jni), javac the adapter against the Flink jars,
# pack the jar. Idempotent and non-interactive (CI=true, no stdin); an unchanged tree only re-runs
# cargo's no-op check and rewrites nothing.
#
# Env:
#   CARGO_TARGET_DIR  cargo's target directory (default: <repo>/target); the jar goes to
#                     <repo>/target/flink/ either way
#   FLINK_LIB         directory of the Flink 1.20.3 jars (default: output of fetch-flink.sh)
#   CARGO             cargo binary (default: cargo)
#
# Last line of stdout: the jar's path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$ROOT/target/flink"
JAR="$OUT/terrace-flink-1.20.jar"
SRC="$ROOT/flink-plugin/src/main/java"
CARGO="${CARGO:-cargo}"

log() { echo "build-flink-jar: $*" >&2; }

if [[ -z "${FLINK_LIB:-}" ]]; then
  FLINK_LIB="$("$ROOT/scripts/fetch-flink.sh" </dev/null | tail -n 1)"
fi
[[ -f "$FLINK_LIB/flink-dist-1.20.3.jar" ]] || { log "no flink-dist-1.20.3.jar in $FLINK_LIB"; exit 1; }
command -v javac >/dev/null && command -v jar >/dev/null || { log "javac and jar (a JDK 11+) are required"; exit 1; }

log "cargo build --release -p terrace-flink-jni"
(cd "$ROOT" && "$CARGO" build --release --quiet -p terrace-flink-jni </dev/null >&2)
SO="$CARGO_TARGET_DIR/release/libterrace_flink.so"
[[ -f "$SO" ]] || { log "expected $SO after the build"; exit 1; }

mkdir -p "$OUT"
STAMP="$OUT/.jar-inputs"
# What the jar is made of: the sources, the library, the script itself.
inputs="$( (find "$SRC" -name '*.java' -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum "$SO" "${BASH_SOURCE[0]}") | sha256sum | cut -d' ' -f1)"
if [[ -f "$JAR" && -f "$STAMP" && "$(cat "$STAMP")" == "$inputs" ]]; then
  log "up to date: $JAR"
  echo "$JAR"
  exit 0
fi

STAGE="$(mktemp -d "$OUT/stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/classes/native/linux-x86_64"
log "javac $(find "$SRC" -name '*.java' | wc -l) files against Flink 1.20.3"
find "$SRC" -name '*.java' -type f | sort >"$STAGE/sources.txt"
javac -nowarn -Xlint:-options -encoding UTF-8 --release 11 -cp "$FLINK_LIB/*" \
  -d "$STAGE/classes" @"$STAGE/sources.txt" >&2
cp "$SO" "$STAGE/classes/native/linux-x86_64/libterrace_flink.so"
cat >"$STAGE/MANIFEST.MF" <<MF
Implementation-Title: Terrace tier for Apache Flink 1.20
Implementation-Vendor: Terrace
Built-For: Flink 1.20.x, linux-x86_64
MF
jar --create --file "$STAGE/terrace-flink-1.20.jar" --manifest "$STAGE/MANIFEST.MF" -C "$STAGE/classes" . >&2
mv -f "$STAGE/terrace-flink-1.20.jar" "$JAR"
echo "$inputs" >"$STAMP"
log "wrote $JAR ($(du -h "$JAR" | cut -f1))"
echo "$JAR"
