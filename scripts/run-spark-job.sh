#!/usr/bin/env bash
# Compile and run one of Terrace's Spark e2e jobs (spark-plugin/e2e) on a local-cluster Spark:
# a driver JVM plus EXECUTORS executor JVMs, each its own process, as on a real cluster.
#
#   scripts/run-spark-job.sh <job> <outputFile> [job args ...]
#
#   <job>: rdd | sql | big MIB | heavy MIB | failed-attempt | reduce-gate GATE | two-jobs GATE
#          (see spark-plugin/e2e/.../ShuffleJobs.java)
#
# Examples:
#   # Spark's own sort shuffle
#   SHUFFLE=sort scripts/run-spark-job.sh rdd /tmp/out-sort.txt
#   # Terrace (a master running at 127.0.0.1:9870)
#   SHUFFLE=terrace SPARK_CONF='spark.terrace.master.address=127.0.0.1:9870' \
#     scripts/run-spark-job.sh rdd /tmp/out-terrace.txt
#
# Env:
#   SPARK_VERSION   the Spark to run: 3.5.9 (default), 4.0.5, 4.1.4, 4.2.1 or 4.3.0
#   SHUFFLE         sort (Spark's own, default) or terrace (the jar of build-spark-jar.sh)
#   SPARK_CONF      extra Spark settings, key=value, one per line
#   EXECUTORS       executor processes (default 2), each with EXECUTOR_CORES cores (default 1)
#                   and EXECUTOR_MIB MiB (default 1024)
#   DRIVER_HEAP     the driver JVM's heap (default 1g)
#   WORK_DIR        where executors' work directories and logs go (default: a temporary one,
#                   removed at the end; set it to keep them)
# The job's classes are compiled once per change and Spark line into <repo>/target/spark/.
# Last line of stdout: the job's "TERRACE-E2E <job> done in N ms" line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/target/spark"
SPARK_VERSION="${SPARK_VERSION:-3.5.9}"
SHUFFLE="${SHUFFLE:-sort}"
case "$SPARK_VERSION" in
  3.5.*) LINE=3.5; SCALA=2.12; RELEASE=11 ;;
  4.*) LINE=4.x; SCALA=2.13; RELEASE=17 ;;
  *) echo "run-spark-job: unsupported Spark $SPARK_VERSION" >&2; exit 2 ;;
esac
SPARK_HOME="$("$ROOT/scripts/fetch-spark.sh" "$SPARK_VERSION" </dev/null | tail -n 1)"
export SPARK_HOME SPARK_SCALA_VERSION="$SCALA"

# The e2e job, compiled per Spark version.
APP="$BUILD/e2e-$SPARK_VERSION.jar"
SRC="$ROOT/spark-plugin/e2e/src"
mkdir -p "$BUILD"
if [[ ! -f "$APP" ]] || [[ -n "$(find "$SRC" -name '*.java' -newer "$APP")" ]]; then
  classes="$(mktemp -d "$BUILD/e2e-classes.XXXXXX")"
  # shellcheck disable=SC2046
  javac -nowarn -Xlint:-options -encoding UTF-8 --release "$RELEASE" -cp "$SPARK_HOME/jars/*" \
    -d "$classes" $(find "$SRC" -name '*.java' | sort) >&2
  jar --create --file "$APP.tmp" -C "$classes" . >&2
  mv "$APP.tmp" "$APP"
  rm -rf "$classes"
fi

confs=(
  "-Dspark.master=local-cluster[${EXECUTORS:-2},${EXECUTOR_CORES:-1},${EXECUTOR_MIB:-1024}]"
  "-Dspark.jars=$APP"
  "-Dspark.executor.memory=$(( ${EXECUTOR_MIB:-1024} * 3 / 4 ))m"
  "-Dspark.ui.enabled=false"
  "-Dspark.driver.host=127.0.0.1"
  "-Dspark.driver.bindAddress=127.0.0.1"
)
CP="$SPARK_HOME/jars/*:$APP"
if [[ "$SHUFFLE" == terrace ]]; then
  # The jar of the line, compiled against the Spark build-spark-jar.sh picks for it.
  PLUGIN="$(env -u SPARK_HOME "$ROOT/scripts/build-spark-jar.sh" "$LINE" </dev/null | tail -n 1)"
  CP="$CP:$PLUGIN"
  manager=dev.terrace.spark.TerraceShuffleManager
  [[ "$SPARK_VERSION" == 4.[3-9]* ]] && manager=dev.terrace.spark.TerraceBlockingShuffleManager
  confs+=("-Dspark.shuffle.manager=$manager" "-Dspark.executor.extraClassPath=$PLUGIN")
elif [[ "$SHUFFLE" != sort ]]; then
  echo "run-spark-job: SHUFFLE must be sort or terrace" >&2; exit 2
fi
while IFS= read -r kv; do
  [[ -n "$kv" ]] && confs+=("-D$kv")
done <<<"${SPARK_CONF:-}"

work="${WORK_DIR:-}"
if [[ -z "$work" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
# local-cluster puts executors' work directories (their logs, copied jars) in $SPARK_HOME/work:
# a SPARK_HOME of this run's own, whose jars/ is the cached Spark's, keeps them in $work.
mkdir -p "$work/spark-home"
ln -sfn "$SPARK_HOME/jars" "$work/spark-home/jars"
export SPARK_HOME="$work/spark-home"
# Everything on loopback: the driver, the local-cluster master and workers, the executors.
export SPARK_WORKER_DIR="$work/worker" SPARK_LOCAL_DIRS="$work/local" SPARK_LOCAL_IP=127.0.0.1

# The module flags Spark's own launcher adds on Java 17.
opens=(java.lang java.lang.invoke java.lang.reflect java.io java.net java.nio java.util
  java.util.concurrent java.util.concurrent.atomic jdk.internal.ref sun.nio.ch sun.nio.cs
  sun.security.action sun.util.calendar)
flags=(-XX:+IgnoreUnrecognizedVMOptions -Djdk.reflect.useDirectMethodHandle=false
  --add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED)
for p in "${opens[@]}"; do flags+=("--add-opens=java.base/$p=ALL-UNNAMED"); done

cd "$work"
exec java "${flags[@]}" "-Xmx${DRIVER_HEAP:-1g}" -cp "$CP" "${confs[@]}" \
  -Dlog4j2.configurationFile="$ROOT/spark-plugin/e2e/log4j2.properties" \
  dev.terrace.spark.e2e.ShuffleJobs "$@"
