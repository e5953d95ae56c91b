#!/usr/bin/env bash
# Compile and run the Terrace Flink e2e job (flink-plugin/e2e) in a local MiniCluster.
#
#   scripts/run-flink-job.sh <parallelism> <numRecords> <payloadBytes> <outputFile> [flink.key=value ...]
#
# Examples:
#   # Flink's default hybrid shuffle (memory + disk tiers)
#   scripts/run-flink-job.sh 4 100000 100 /tmp/out-hybrid.txt execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL
#   # Terrace as the external tier (jar from scripts/build-flink-jar.sh, a running master)
#   TERRACE_JAR=target/flink/terrace-flink-1.20.jar scripts/run-flink-job.sh 4 100000 100 /tmp/out-terrace.txt \
#     execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL \
#     taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class=dev.terrace.flink.TerraceTierFactory \
#     terrace.master.address=127.0.0.1:9870
#   # Flink's built-in remote (DFS) tier as the external tier
#   scripts/run-flink-job.sh 4 100000 100 /tmp/out-remote.txt execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL \
#     taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class=org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.remote.RemoteTierFactory \
#     taskmanager.network.hybrid-shuffle.remote.path=file:///tmp/flink-remote
#
# Env:
#   FLINK_VERSION  the Flink to run: 1.20.3 (default) or 2.2.1 (see scripts/fetch-flink.sh)
#   FLINK_LIB      directory of Flink jars (default: output of scripts/fetch-flink.sh FLINK_VERSION)
#   TERRACE_JAR    the Terrace plug-in jar to put on the classpath (scripts/build-flink-jar.sh
#                  FLINK_VERSION: terrace-flink-1.20.jar or terrace-flink-2.x.jar)
#   EXTRA_CP       extra classpath entries, ':'-separated
#   JAVA_HEAP      JVM heap for the MiniCluster process (default 4g)
#   JAVA_OPTS      extra JVM options (e.g. -Djava.library.path=...)
#   E2E_LOG_LEVEL  root log level (default WARN)
#   JOB_CLASS      the job's main class (default dev.terrace.e2e.KeyedAggregationJob;
#                  dev.terrace.e2e.ShuffleHeavyJob takes <records> and <record bytes> instead;
#                  dev.terrace.e2e.JobManagerFailoverJob, 2.x only, fails the JobManager over)
# The job's classes (one source for both lines) are compiled once per change and Flink version
# into <repo>/target/flink/e2e-classes-FLINK_VERSION.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLUGIN="$ROOT/flink-plugin"
BUILD="$ROOT/target/flink"

FLINK_VERSION="${FLINK_VERSION:-1.20.3}"
if [[ -z "${FLINK_LIB:-}" ]]; then
  FLINK_LIB="$("$ROOT/scripts/fetch-flink.sh" "$FLINK_VERSION" </dev/null | tail -n 1)"
fi
[[ -f "$FLINK_LIB/flink-dist-$FLINK_VERSION.jar" ]] || { echo "no flink-dist-$FLINK_VERSION.jar in $FLINK_LIB" >&2; exit 1; }
FLINK_CP="$FLINK_LIB/*"

compile() { # <src-dirs, space-separated> <out-dir> <classpath>
  local out="$2" cp="$3" stamp="$2.stamp" list
  local -a src
  read -r -a src <<<"$1"
  list="$(find "${src[@]}" -name '*.java' | sort)"
  [[ -n "$list" ]] || return 0
  if [[ -f "$stamp" ]] && [[ -z "$(find "${src[@]}" -name '*.java' -newer "$stamp")" ]]; then
    return 0
  fi
  rm -rf "$out"; mkdir -p "$out"
  # shellcheck disable=SC2086
  javac -nowarn -Xlint:-options -encoding UTF-8 --release 11 -cp "$cp" -d "$out" $list >&2
  touch "$stamp"
}

mkdir -p "$BUILD"
if [[ "$FLINK_VERSION" == 2.* ]]; then
  # e2e/src-2: what only Flink 2.x has (JobManagerFailoverJob).
  compile "$PLUGIN/e2e/src $PLUGIN/e2e/src-2" "$BUILD/e2e-classes-$FLINK_VERSION" "$FLINK_CP"
else
  compile "$PLUGIN/e2e/src" "$BUILD/e2e-classes-$FLINK_VERSION" "$FLINK_CP"
fi
CP="$BUILD/e2e-classes-$FLINK_VERSION:$FLINK_CP"
if [[ -n "${TERRACE_JAR:-}" ]]; then
  [[ -f "$TERRACE_JAR" ]] || { echo "TERRACE_JAR=$TERRACE_JAR does not exist" >&2; exit 1; }
  CP="$TERRACE_JAR:$CP"
fi
if [[ -n "${EXTRA_CP:-}" ]]; then CP="$EXTRA_CP:$CP"; fi

# Flink on Java 17 needs these (same list as Flink 1.20's env.java.opts.all default; 2.x runs
# with it too).
ADD_OPENS=(
  --add-exports=java.base/sun.net.util=ALL-UNNAMED
  --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED
  --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)

# shellcheck disable=SC2086
exec java -Xmx"${JAVA_HEAP:-4g}" "${ADD_OPENS[@]}" \
  -Dlog4j.configurationFile="$PLUGIN/e2e/log4j2-e2e.properties" \
  -De2e.log.level="${E2E_LOG_LEVEL:-WARN}" \
  ${JAVA_OPTS:-} \
  -cp "$CP" "${JOB_CLASS:-dev.terrace.e2e.KeyedAggregationJob}" "$@" </dev/null
