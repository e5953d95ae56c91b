#!/usr/bin/env bash
# Build Terrace's Flink adapter jar for one Flink line, with the linux-x86_64 native library
# bundled at /native/linux-x86_64/libterrace_jni.so (the adapter extracts and loads it itself).
# Drop the jar into Flink's lib/; nothing else is needed on Flink's classpath.
#
#   scripts/build-flink-jar.sh [VERSION]
#
#   VERSION      line   jar (in <repo>/target/flink/)   compiled against
#   1.20[.x]     1.20   terrace-flink-1.20.jar          Flink 1.20.3 (the default)
#   2[.x[.y]]    2.x    terrace-flink-2.x.jar           Flink 2.2.1
#
# One source tree: flink-plugin/src/main/java holds every class both lines share;
# flink-plugin/src/flink-1.20 and flink-plugin/src/flink-2 hold the thin classes whose Flink
# signatures differ (the TierFactory's createProducerAgent).
#
# Steps: fetch that Flink's jars (scripts/fetch-flink.sh, cached outside the repo), build the JNI
# crate (cargo build --release -p terrace-jni), javac the adapter against the Flink jars,
# pack the jar. Idempotent and non-interactive (CI=true, no stdin); an unchanged tree only re-runs
# cargo's no-op check and rewrites nothing.
#
# Env:
#   CARGO_TARGET_DIR  cargo's target directory (default: <repo>/target); the jar goes to
#                     <repo>/target/flink/ either way
#   FLINK_LIB         directory of the Flink jars to compile against (default: output of
#                     fetch-flink.sh for the line's version)
#   CARGO             cargo binary (default: cargo)
#
# Last line of stdout: the jar's path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTED="${1:-1.20}"
case "$REQUESTED" in
  1.20 | 1.20.*) LINE=1.20; FLINK_VERSION=1.20.3; LINE_SRC=flink-1.20; SERVES="Flink 1.20.x" ;;
  2 | 2.* ) LINE=2.x; FLINK_VERSION=2.2.1; LINE_SRC=flink-2; SERVES="Flink 2.x" ;;
  *) echo "build-flink-jar: unsupported Flink version '$REQUESTED' (1.20[.x] or 2[.x])" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$ROOT/target/flink"
JAR_NAME="terrace-flink-$LINE.jar"
JAR="$OUT/$JAR_NAME"
SRC=("$ROOT/bridge/java" "$ROOT/flink-plugin/src/main/java" "$ROOT/flink-plugin/src/$LINE_SRC/java")
CARGO="${CARGO:-cargo}"

log() { echo "build-flink-jar: $*" >&2; }

if [[ -z "${FLINK_LIB:-}" ]]; then
  FLINK_LIB="$("$ROOT/scripts/fetch-flink.sh" "$FLINK_VERSION" </dev/null | tail -n 1)"
fi
ls "$FLINK_LIB"/flink-dist-*.jar >/dev/null 2>&1 || { log "no flink-dist jar in $FLINK_LIB"; exit 1; }
command -v javac >/dev/null && command -v jar >/dev/null || { log "javac and jar (a JDK 11+) are required"; exit 1; }

log "cargo build --release -p terrace-jni"
(cd "$ROOT" && "$CARGO" build --release --quiet -p terrace-jni </dev/null >&2)
SO="$CARGO_TARGET_DIR/release/libterrace_jni.so"
[[ -f "$SO" ]] || { log "expected $SO after the build"; exit 1; }

mkdir -p "$OUT"
STAMP="$OUT/.jar-inputs-$LINE"
# What the jar is made of: the sources, the library, the script itself.
inputs="$( (find "${SRC[@]}" -name '*.java' -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum "$SO" "${BASH_SOURCE[0]}"; echo "$FLINK_LIB") | sha256sum | cut -d' ' -f1)"
if [[ -f "$JAR" && -f "$STAMP" && "$(cat "$STAMP")" == "$inputs" ]]; then
  log "up to date: $JAR"
  echo "$JAR"
  exit 0
fi

STAGE="$(mktemp -d "$OUT/stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/classes/native/linux-x86_64"
find "${SRC[@]}" -name '*.java' -type f | sort >"$STAGE/sources.txt"
log "javac $(wc -l <"$STAGE/sources.txt") files against $FLINK_LIB"
javac -nowarn -Xlint:-options -encoding UTF-8 --release 11 -cp "$FLINK_LIB/*" \
  -d "$STAGE/classes" @"$STAGE/sources.txt" >&2
cp "$SO" "$STAGE/classes/native/linux-x86_64/libterrace_jni.so"
cat >"$STAGE/MANIFEST.MF" <<MF
Implementation-Title: Terrace tier for Apache $SERVES
Implementation-Vendor: Terrace
Built-For: $SERVES (compiled against $FLINK_VERSION), linux-x86_64
MF
jar --create --file "$STAGE/$JAR_NAME" --manifest "$STAGE/MANIFEST.MF" -C "$STAGE/classes" . >&2
mv -f "$STAGE/$JAR_NAME" "$JAR"
echo "$inputs" >"$STAMP"
log "wrote $JAR ($(du -h "$JAR" | cut -f1))"
echo "$JAR"
