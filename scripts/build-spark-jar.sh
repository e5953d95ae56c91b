#!/usr/bin/env bash
# Build Terrace's Spark plug-in jar for one Spark line, with the linux-x86_64 native library
# bundled at /native/linux-x86_64/libterrace_jni.so (the plug-in extracts and loads it itself).
#
#   scripts/build-spark-jar.sh [VERSION]
#
#   VERSION      line   jar (in <repo>/target/spark/)   compiled against      serves
#   3.5[.x]      3.5    terrace-spark-3.5.jar           Spark 3.5.9           3.5.x (Scala 2.12)
#   4[.x[.y]]    4.x    terrace-spark-4.x.jar           Spark 4.3.0           4.0 to 4.3 (Scala 2.13)
#
# One source tree: spark-plugin/src/main/java holds every class both lines share (with
# bridge/java, the Java side of the JNI bridge the Flink adapter uses too); spark-plugin/src/spark-4
# holds TerraceBlockingShuffleManager, which implements an interface only Spark 4.3 has (the 4.x
# jar's other classes load on 4.0 to 4.2; signatures that changed within 4.x are reached by
# reflection).
#
# Steps: fetch that Spark's jars (scripts/fetch-spark.sh, cached outside the repo), build the JNI
# crate (cargo build --release -p terrace-jni), javac the plug-in against the Spark jars, pack the
# jar. Idempotent and non-interactive (CI=true, no stdin).
#
# Env:
#   CARGO_TARGET_DIR  cargo's target directory (default: <repo>/target); the jar goes to
#                     <repo>/target/spark/ either way
#   SPARK_HOME        a Spark to compile against (default: fetch-spark.sh's for the line)
#   CARGO             cargo binary (default: cargo)
#
# Last line of stdout: the jar's path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTED="${1:-3.5}"
case "$REQUESTED" in
  3.5 | 3.5.*) LINE=3.5; SPARK_VERSION=3.5.9; EXTRA=(); RELEASE=11; SERVES="Spark 3.5.x" ;;
  4 | 4.*) LINE=4.x; SPARK_VERSION=4.3.0; EXTRA=("$ROOT/spark-plugin/src/spark-4/java"); RELEASE=17; SERVES="Spark 4.0 to 4.3" ;;
  *) echo "build-spark-jar: unsupported Spark version '$REQUESTED' (3.5[.x] or 4[.x])" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$ROOT/target/spark"
JAR="$OUT/terrace-spark-$LINE.jar"
SRC=("$ROOT/bridge/java" "$ROOT/spark-plugin/src/main/java" "${EXTRA[@]}")
CARGO="${CARGO:-cargo}"

log() { echo "build-spark-jar: $*" >&2; }

if [[ -z "${SPARK_HOME:-}" ]]; then
  SPARK_HOME="$("$ROOT/scripts/fetch-spark.sh" "$SPARK_VERSION" </dev/null | tail -n 1)"
fi
ls "$SPARK_HOME"/jars/spark-core_*.jar >/dev/null 2>&1 || { log "no spark-core jar in $SPARK_HOME/jars"; exit 1; }
command -v javac >/dev/null && command -v jar >/dev/null || { log "javac and jar (a JDK 17) are required"; exit 1; }

log "cargo build --release -p terrace-jni"
(cd "$ROOT" && "$CARGO" build --release --quiet -p terrace-jni </dev/null >&2)
SO="$CARGO_TARGET_DIR/release/libterrace_jni.so"
[[ -f "$SO" ]] || { log "expected $SO after the build"; exit 1; }

mkdir -p "$OUT"
STAMP="$OUT/.jar-inputs-$LINE"
inputs="$( (find "${SRC[@]}" -name '*.java' -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum "$SO" "${BASH_SOURCE[0]}"; echo "$SPARK_HOME") | sha256sum | cut -d' ' -f1)"
if [[ -f "$JAR" && -f "$STAMP" && "$(cat "$STAMP")" == "$inputs" ]]; then
  log "up to date: $JAR"
  echo "$JAR"
  exit 0
fi

STAGE="$(mktemp -d "$OUT/stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/classes/native/linux-x86_64"
find "${SRC[@]}" -name '*.java' -type f | sort >"$STAGE/sources.txt"
log "javac $(wc -l <"$STAGE/sources.txt") files against $SPARK_HOME/jars"
javac -nowarn -Xlint:-options -encoding UTF-8 --release "$RELEASE" -cp "$SPARK_HOME/jars/*" \
  -d "$STAGE/classes" @"$STAGE/sources.txt" >&2
cp "$SO" "$STAGE/classes/native/linux-x86_64/libterrace_jni.so"
cat >"$STAGE/MANIFEST.MF" <<MF
Implementation-Title: Terrace shuffle for Apache $SERVES
Implementation-Vendor: Terrace
Built-For: $SERVES (compiled against $SPARK_VERSION), linux-x86_64
MF
jar --create --file "$STAGE/out.jar" --manifest "$STAGE/MANIFEST.MF" -C "$STAGE/classes" . >&2
mv "$STAGE/out.jar" "$JAR"
echo "$inputs" >"$STAMP"
log "wrote $JAR ($(du -h "$JAR" | cut -f1))"
echo "$JAR"
