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
#   WORKER_HOSTS    instead of local-cluster (whose executors all share one host), a standalone
#                   Spark cluster: a master JVM and one worker JVM per address listed (loopback
#                   addresses such as "127.0.0.2 127.0.0.3"), each worker running one executor on
#                   its own host; Spark then tells the executors' hosts apart, as speculation needs
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
log4j="-Dlog4j2.configurationFile=$ROOT/spark-plugin/e2e/log4j2.properties"
if [[ -z "${WORKER_HOSTS:-}" ]]; then
  exec java "${flags[@]}" "-Xmx${DRIVER_HEAP:-1g}" -cp "$CP" "${confs[@]}" \
    "-Dspark.master=local-cluster[${EXECUTORS:-2},${EXECUTOR_CORES:-1},${EXECUTOR_MIB:-1024}]" \
    "$log4j" dev.terrace.spark.e2e.ShuffleJobs "$@"
fi

# A standalone cluster: its master and workers live as long as this script.
daemons=()
stop_daemons() {
  for pid in "${daemons[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${WORK_DIR:-}" ]] || rm -rf "$work"
}
trap stop_daemons EXIT
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
java "${flags[@]}" -Xmx256m -cp "$SPARK_HOME/jars/*" "$log4j" \
  org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$port" --webui-port 0 \
  >"$work/spark-master.log" 2>&1 &
daemons+=("$!")
for host in $WORKER_HOSTS; do
  SPARK_LOCAL_IP="$host" java "${flags[@]}" -Xmx256m -cp "$SPARK_HOME/jars/*" "$log4j" \
    org.apache.spark.deploy.worker.Worker --host "$host" --cores "${EXECUTOR_CORES:-1}" \
    --memory "${EXECUTOR_MIB:-1024}m" --work-dir "$work/worker-$host" --webui-port 0 \
    "spark://127.0.0.1:$port" >"$work/spark-worker-$host.log" 2>&1 &
  daemons+=("$!")
done
java "${flags[@]}" "-Xmx${DRIVER_HEAP:-1g}" -cp "$CP" "${confs[@]}" \
  "-Dspark.master=spark://127.0.0.1:$port" "$log4j" dev.terrace.spark.e2e.ShuffleJobs "$@"
