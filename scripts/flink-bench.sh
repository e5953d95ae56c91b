#!/usr/bin/env bash
# Job-level benchmark: the same Flink 1.20.3 batch job three ways in one run, with wall times and
# ratios:
#   default   Flink's default hybrid shuffle (memory + disk tiers)
#   remote    Flink's own remote tier as the only tier (RemoteTierFactory, remote.path on a local dir)
#   terrace   Terrace as the external remote tier (a master and a worker started here), with the
#             worker process's CPU seconds per run (user + system, /proc/<pid>/stat)
# plus the machine's yardstick measured in the same run: raw sequential write (fdatasync) and
# read of the shuffle volume on the disk that holds the data directories.
#
#   scripts/flink-bench.sh [parallelism] [records] [payloadBytes]
#
# Jobs (env JOB):
#   keyed          flink-plugin/e2e KeyedAggregationJob: two keyed shuffles, payloads verified; the
#                  second shuffle carries only the per-key sums
#                  (default: 4 4000000 256, ~1.1 GiB through shuffle 1)
#   shuffle-heavy  flink-plugin/e2e ShuffleHeavyJob: one all-to-all shuffle of byte[] records, about
#                  half incompressible, summed on the other side, little CPU per record
#                  (default: 4 2200000 1024, ~2.1 GiB; the third argument is the record size)
#   bytes          flink-plugin/e2e CompressibleBytesJob: one all-to-all shuffle, parallelism to
#                  parallelism, of compressible byte[] records (log lines; LZ4 makes them ~3.7x
#                  smaller), each checked against its source and summed on the other side
#                  (default: 4 2400000 1000, 2.4 GB = ~2.2 GiB; the third argument is the record size)
#   two-shuffle    flink-plugin/e2e TwoShuffleJob: small records through two all-to-all shuffles on
#                  independent keys, every record through both (unlike keyed); log-line byte[]
#                  records (LZ4 ~3.2x) checked after each shuffle
#                  (default: 4 6000000 250, 1.5 GB = ~1.4 GiB through each shuffle; the third
#                  argument is the record size)
#   sql            flink-plugin/e2e SqlJoinAggregationJob: Flink SQL (Table API, batch mode) over
#                  generated tables: orders joined with 1,000 products (BROADCAST hint) and 200,000
#                  customers (SHUFFLE_HASH hint: orders, notes included, hash-partitioned on the
#                  customer), then two group-by aggregations, one of them two-level, each reading the
#                  shuffled orders and customers; the job fails unless its plan has both join
#                  strategies and every result row equals the figure plain Java computes
#                  (default: 4 3000000 100, 3 million orders, ~0.4 GB through the orders shuffle; the
#                  third argument is the note's length in characters)
#   all            each job above in turn, at its default sizes (records times SCALE; only
#                  [parallelism] may be given), each with its own services and yardstick, then one
#                  table of job times and ratios, a row per job
#
# Env:
#   JOB         keyed (default), shuffle-heavy, bytes, two-shuffle, sql or all
#   SCALE       factor on the job's default record count, when no [records] is given (default 1;
#               e.g. JOB=all SCALE=0.01 for a quick pass over every job)
#   BUSY        1: keep one core busy while the variants run, with `stress-ng --cpu 1` (installed with
#               apt-get if missing and this runs as root), else with a bash busy loop; `loop`: the
#               bash busy loop even where stress-ng is installed. Started before the first round,
#               killed at exit; the header line says which ran (default: none)
#   ROUNDS      runs per variant, the variants taking turns round by round; the median job time
#               is reported (default 1)
#   BENCH_DIR   working directory for data and outputs (default: a fresh mktemp -d, removed at exit)
#   JAVA_HEAP   JVM heap of the MiniCluster (default 4g)
#   TERRACE_EXTRA  extra Flink config for the Terrace run, space-separated key=value
#   WORKER_TOML    extra worker config (TOML lines, e.g. "write_on_push = true"; see
#                  docs/configuration.md)
#   DURABILITY  1: measure what durability = "object-store" costs instead of the remote tier: an
#               S3-compatible server (s3s-fs, scripts/s3-server.sh) is started here, the Terrace
#               worker gets it as its object store, and a second master and worker with the same
#               store and durability = "object-store" run the variant `durable`; reported: job time
#               against `terrace`, and bytes uploaded to the store per byte pushed (the durable
#               worker's terrace_worker_durable_bytes + durable_index_bytes + migrated_bytes +
#               overflowed_bytes, from its /metrics)
#
# Each job's result file is compared with the default run's (cmp): a mismatch fails the script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
JOB="${JOB:-keyed}"
ALL_JOBS=(keyed shuffle-heavy bytes two-shuffle sql)
case "$JOB" in
  keyed) export JOB_CLASS=dev.terrace.e2e.KeyedAggregationJob; N_DEFAULT=4000000; S_DEFAULT=256 ;;
  shuffle-heavy) export JOB_CLASS=dev.terrace.e2e.ShuffleHeavyJob; N_DEFAULT=2200000; S_DEFAULT=1024 ;;
  bytes) export JOB_CLASS=dev.terrace.e2e.CompressibleBytesJob; N_DEFAULT=2400000; S_DEFAULT=1000 ;;
  two-shuffle) export JOB_CLASS=dev.terrace.e2e.TwoShuffleJob; N_DEFAULT=6000000; S_DEFAULT=250 ;;
  sql) export JOB_CLASS=dev.terrace.e2e.SqlJoinAggregationJob; N_DEFAULT=3000000; S_DEFAULT=100 ;;
  all) ;;
  *) echo "flink-bench: JOB must be one of ${ALL_JOBS[*]} or all, not $JOB" >&2; exit 2 ;;
esac
case "${BUSY:-0}" in
  0 | 1 | loop) ;;
  *) echo "flink-bench: BUSY must be 1, loop or 0, not $BUSY" >&2; exit 2 ;;
esac
ROUNDS="${ROUNDS:-1}"

log() { echo "flink-bench: $*" >&2; }
calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }
ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }

VARIANTS=(default remote terrace)
BASE=remote
if [[ "${DURABILITY:-}" == 1 ]]; then VARIANTS=(default terrace durable); BASE=terrace; fi
label() { # <variant>
  case $1 in
    default) echo "Flink default hybrid (memory+disk)" ;;
    remote) echo "Flink RemoteTierFactory (local dir)" ;;
    terrace) echo "Terrace (1 master + 1 worker)" ;;
    durable) echo "Terrace, durability = object-store" ;;
  esac
}

# JOB=all: this script once per job, then one summary table read from their tables (the rows
# start with the variant's label; from the end: job/default, job/BASE, worker cpu).
if [[ "$JOB" == all ]]; then
  if [[ $# -gt 1 ]]; then
    echo "flink-bench: JOB=all takes only [parallelism]; each job runs at its default sizes (times SCALE)" >&2
    exit 2
  fi
  declare -A TABLE
  for j in "${ALL_JOBS[@]}"; do
    log "JOB=all: $j"
    TABLE[$j]="$(JOB="$j" BENCH_DIR="${BENCH_DIR:+$BENCH_DIR/$j}" "$ROOT/scripts/flink-bench.sh" "$@")"
    printf '%s\n' "${TABLE[$j]}"
  done
  echo
  busy=""
  if [[ "${BUSY:-0}" != 0 ]]; then busy="; machine busy: one core kept busy during each job's runs (its header says by what)"; fi
  echo "Flink 1.20.3, all jobs: parallelism ${1:-4}, default sizes x ${SCALE:-1}, median of $ROUNDS$busy"
  printf '%-14s' job
  for v in "${VARIANTS[@]}"; do printf ' %11s' "$v s"; done
  for v in "${VARIANTS[@]:1}"; do printf ' %16s' "$v/default"; done
  for v in "${VARIANTS[@]:1}"; do [[ "$v" == "$BASE" ]] || printf ' %16s' "$v/$BASE"; done
  echo
  row() { # <job> <variant> <field from the end>
    awk -v l="$(label "$2")" -v f="$3" 'index($0, l) == 1 { print $(NF - f) }' <<<"${TABLE[$1]}"
  }
  for j in "${ALL_JOBS[@]}"; do
    printf '%-14s' "$j"
    for v in "${VARIANTS[@]}"; do printf ' %11s' "$(row "$j" "$v" 4)"; done
    for v in "${VARIANTS[@]:1}"; do printf ' %16s' "$(row "$j" "$v" 2)"; done
    for v in "${VARIANTS[@]:1}"; do [[ "$v" == "$BASE" ]] || printf ' %16s' "$(row "$j" "$v" 1)"; done
    echo
  done
  exit 0
fi

P="${1:-4}"
N="${2:-$(awk -v n="$N_DEFAULT" -v s="${SCALE:-1}" 'BEGIN { r = int(n * s); print (r < 1) ? 1 : r }')}"
S="${3:-$S_DEFAULT}"

if [[ -n "${BENCH_DIR:-}" ]]; then
  WORK="$BENCH_DIR"; mkdir -p "$WORK"
else
  WORK="$(mktemp -d /tmp/terrace-flink-bench.XXXXXX)"
fi
PIDS=()
BURNER=""
cleanup() {
  if [[ -n "$BURNER" ]]; then
    # Its own process group (setsid): stress-ng's worker goes with it.
    kill -TERM -- "-$BURNER" 2>/dev/null || true; wait "$BURNER" 2>/dev/null || true
  fi
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [[ -z "${BENCH_DIR:-}" ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

log "building the jar and the terrace binary"
JAR="$("$ROOT/scripts/build-flink-jar.sh" </dev/null | tail -n 1)"
(cd "$ROOT" && cargo build --release --quiet -p terrace-cli </dev/null >&2)
TERRACE="$CARGO_TARGET_DIR/release/terrace"

# Starts `terrace <args>` in the background and sets ADDRESS once it listens. Runs in this shell
# (not in $(...)) so that the pid reaches PIDS and the exit trap kills it.
start_service() { # <name> <args...>
  local name="$1"; shift
  "$TERRACE" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PIDS+=("$!")
  for _ in $(seq 300); do
    if grep -q "listening on" "$WORK/$name.out" 2>/dev/null; then
      ADDRESS="$(sed -n 's/.*listening on //p' "$WORK/$name.out" | head -n 1)"
      return 0
    fi
    sleep 0.1
  done
  log "$name did not start:"; cat "$WORK/$name.err" >&2; return 1
}

# Runs the job; prints "<job seconds> <process seconds>".
run_job() { # <name> <flink k=v...>
  local name="$1"; shift
  local out="$WORK/$name.result" start end job
  start=$(date +%s.%N)
  if ! TERRACE_JAR="$JAR" JAVA_HEAP="${JAVA_HEAP:-4g}" "$ROOT/scripts/run-flink-job.sh" "$P" "$N" "$S" "$out" \
      execution.batch-shuffle-mode=ALL_EXCHANGES_HYBRID_FULL "$@" >"$WORK/$name.log" 2>&1; then
    log "$name failed:"; tail -n 40 "$WORK/$name.log" >&2; return 1
  fi
  end=$(date +%s.%N)
  job="$(sed -n 's/^wall time: \([0-9.]*\) s.*/\1/p' "$WORK/$name.log")"
  echo "$job $(calc "$end - $start")"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# CPU seconds (user + system, all threads) of process <pid> so far; USER_HZ is 100.
cpu_seconds() { # <pid>
  awk '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / 100 }' "/proc/$1/stat"
}

# One run of <variant>, round <r>; appends its figures to RUN_JOB/RUN_PROC/RUN_CPU[<variant>].
declare -A RUN_JOB RUN_PROC RUN_CPU JOB_S PROC WCPU
measure_once() { # <variant> <r> <flink k=v...>
  local variant="$1" r="$2"; shift 2
  local t c0=0 c1=0 cpu
  [[ "$variant" == remote ]] && rm -rf "$WORK/remote" && mkdir -p "$WORK/remote"
  [[ "$variant" == terrace ]] && c0="$(cpu_seconds "$WORKER_PID")"
  [[ "$variant" == durable ]] && c0="$(cpu_seconds "$DURABLE_PID")"
  t="$(run_job "$variant-$r" "$@")"
  [[ "$variant" == terrace ]] && c1="$(cpu_seconds "$WORKER_PID")"
  [[ "$variant" == durable ]] && c1="$(cpu_seconds "$DURABLE_PID")"
  cpu="$(calc "$c1 - $c0")"
  RUN_JOB[$variant]+="${t% *}"$'\n'; RUN_PROC[$variant]+="${t#* }"$'\n'; RUN_CPU[$variant]+="$cpu"$'\n'
  if [[ "$variant" != default ]] && ! cmp -s "$WORK/$variant-$r.result" "$WORK/default-1.result"; then
    log "$variant run $r: result differs from the default shuffle's"; exit 1
  fi
  log "$variant run $r: job ${t% *} s, process ${t#* } s, terrace worker CPU $cpu s"
}

log "working in $WORK; job $JOB: parallelism $P, $N records, size argument $S, $ROUNDS round(s)"
mkdir -p "$WORK/remote" "$WORK/terrace-data"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
STORE_TOML=""
if [[ "${DURABILITY:-}" == 1 ]]; then
  S3S="$("$ROOT/scripts/s3-server.sh" </dev/null | tail -n 1)"
  S3_PORT="$(free_port)"
  mkdir -p "$WORK/s3/bench"
  "$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key bench-key --secret-key bench-secret "$WORK/s3" \
    >"$WORK/s3s.log" 2>&1 </dev/null &
  PIDS+=("$!")
  # part_size: one PUT per part, as s3s-fs refuses multipart uploads of keys as long as
  # Flink's partition ids make (it names a file after the whole key); real S3 does not.
  STORE_TOML="[object_store]
url = \"s3://bench/terrace\"
part_size = \"2GiB\"
[object_store.options]
aws_endpoint = \"http://127.0.0.1:$S3_PORT\"
aws_access_key_id = \"bench-key\"
aws_secret_access_key = \"bench-secret\"
aws_region = \"us-east-1\"
aws_allow_http = \"true\""
fi
start_service master master --listen 127.0.0.1:0
MASTER="$ADDRESS"
printf '%s\n%s\n' "${WORKER_TOML:-}" "$STORE_TOML" > "$WORK/worker.toml"
start_service worker worker --config "$WORK/worker.toml" --listen 127.0.0.1:0 \
  --data-dir "$WORK/terrace-data" --master "$MASTER"
WORKER_PID="${PIDS[-1]}"
if [[ "${DURABILITY:-}" == 1 ]]; then
  mkdir -p "$WORK/durable-data"
  start_service durable-master master --listen 127.0.0.1:0
  DURABLE_MASTER="$ADDRESS"
  DURABLE_ADMIN="127.0.0.1:$(free_port)"
  printf 'durability = "object-store"\n%s\n%s\n[admin]\nlisten = "%s"\n' "${WORKER_TOML:-}" "$STORE_TOML" \
    "$DURABLE_ADMIN" > "$WORK/durable-worker.toml"
  start_service durable-worker worker --config "$WORK/durable-worker.toml" --listen 127.0.0.1:0 \
    --data-dir "$WORK/durable-data" --master "$DURABLE_MASTER"
  DURABLE_PID="${PIDS[-1]}"
fi

# BUSY: one core kept busy by another process while the variants run (the yardstick too).
# start_burner <command...>: runs it in its own process group (setsid), which the exit trap ends,
# and which ends itself within a second of this script's end if that trap never ran (kill -9).
start_burner() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c '"$@" & c=$!; trap "kill -TERM $c; wait $c; exit 0" TERM
    while kill -0 "$0" 2>/dev/null; do sleep 1; done; kill -TERM -- "-$$"' \
    "$$" "$@" </dev/null >"$WORK/burner.log" 2>&1 &
  BURNER="$!"
}
BUSY_NOTE=""
if [[ "${BUSY:-0}" != 0 ]]; then
  if [[ "$BUSY" == 1 ]] && ! command -v stress-ng >/dev/null && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "BUSY=1: installing stress-ng (apt-get install -y stress-ng)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng </dev/null >"$WORK/apt.log" 2>&1 \
      || log "could not install stress-ng (see $WORK/apt.log); a bash busy loop stands in"
  fi
  if [[ "$BUSY" == 1 ]] && command -v stress-ng >/dev/null; then
    start_burner stress-ng --cpu 1 --cpu-load 100
    BUSY_NOTE="one core kept busy by stress-ng --cpu 1 (stress-ng $(stress-ng --version 2>/dev/null | awk '{ print $3; exit }'))"
  else
    start_burner bash -c 'while :; do :; done'
    BUSY_NOTE="one core kept busy by a bash busy loop ($([[ "$BUSY" == loop ]] && echo BUSY=loop || echo "no stress-ng"))"
  fi
  log "BUSY=$BUSY: $BUSY_NOTE, process group $BURNER"
fi

# The variants take turns, round by round, so that a machine that slows down or speeds up during
# the benchmark (it is shared) weighs on all three alike. The idle Terrace services cost nothing
# meanwhile.
TERRACE_TIER=taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class=dev.terrace.flink.TerraceTierFactory
read -r -a EXTRA <<<"${TERRACE_EXTRA:-}"
for r in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    case $v in
      default) measure_once default "$r" ;;
      remote) measure_once remote "$r" \
        taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class=org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.remote.RemoteTierFactory \
        "taskmanager.network.hybrid-shuffle.remote.path=file://$WORK/remote" ;;
      terrace) measure_once terrace "$r" "$TERRACE_TIER" "terrace.master.address=$MASTER" "${EXTRA[@]}" ;;
      durable) measure_once durable "$r" "$TERRACE_TIER" "terrace.master.address=$DURABLE_MASTER" "${EXTRA[@]}" ;;
    esac
  done
done
for v in "${VARIANTS[@]}"; do
  JOB_S[$v]="$(printf '%s' "${RUN_JOB[$v]}" | median)"
  PROC[$v]="$(printf '%s' "${RUN_PROC[$v]}" | median)"
  WCPU[$v]="$(printf '%s' "${RUN_CPU[$v]}" | median)"
done
STATUS="$("$TERRACE" status --master "$MASTER" --json)"
PUSHED="$(echo "$STATUS" | sed -n 's/.*"bytes_pushed": \([0-9]*\).*/\1/p' | head -n 1)"
READ="$(echo "$STATUS" | sed -n 's/.*"bytes_read": \([0-9]*\).*/\1/p' | head -n 1)"
LEFT="$(echo "$STATUS" | sed -n 's/.*"partitions": \([0-9]*\).*/\1/p' | head -n 1)"

# Yardstick: raw sequential write + read of one round's shuffle volume on the same disk.
VOL_MB=$(( ${PUSHED:-0} / ROUNDS / 1048576 ))
[[ "$VOL_MB" -gt 0 ]] || VOL_MB=1024
sync
w0=$(date +%s.%N); dd if=/dev/zero of="$WORK/raw.bin" bs=1M count="$VOL_MB" conv=fdatasync status=none; w1=$(date +%s.%N)
r0=$(date +%s.%N); dd if="$WORK/raw.bin" of=/dev/null bs=1M status=none; r1=$(date +%s.%N)
if [[ "${DURABILITY:-}" == 1 ]]; then
  # The same bytes PUT to the same S3 server in one request (no Terrace code).
  u0=$(date +%s.%N)
  curl -sf -o /dev/null -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:us-east-1:s3" \
    --user bench-key:bench-secret -T "$WORK/raw.bin" "http://127.0.0.1:$S3_PORT/bench/raw.bin"
  u1=$(date +%s.%N)
  RAW_PUT="$(calc "$u1 - $u0")"
fi
rm -f "$WORK/raw.bin"
RAW_W="$(calc "$w1 - $w0")"; RAW_R="$(calc "$r1 - $r0")"

echo
busy=""
if [[ -n "$BUSY_NOTE" ]]; then busy="; machine busy: $BUSY_NOTE"; fi
case "$JOB" in
  keyed) echo "Flink 1.20.3 KeyedAggregationJob: parallelism $P, $N records x $S B payload (~$(calc "$N * ($S + 40) / 1073741824") GiB through shuffle 1), median of $ROUNDS$busy" ;;
  shuffle-heavy) echo "Flink 1.20.3 ShuffleHeavyJob: parallelism $P, $N records x $S B (~$(calc "$N * $S / 1073741824") GiB through the shuffle, about half incompressible), median of $ROUNDS$busy" ;;
  bytes) echo "Flink 1.20.3 CompressibleBytesJob: parallelism $P -> $P, $N records x $S B (~$(calc "$N * $S / 1073741824") GiB through the shuffle, log lines, LZ4 ~3.7x), median of $ROUNDS$busy" ;;
  two-shuffle) echo "Flink 1.20.3 TwoShuffleJob: parallelism $P, $N records x $S B (~$(calc "$N * $S / 1073741824") GiB through each of two shuffles, log lines, LZ4 ~3.2x), median of $ROUNDS$busy" ;;
  sql) echo "Flink 1.20.3 SqlJoinAggregationJob (SQL, batch): parallelism $P, $N orders with $S-char notes, broadcast join with 1000 products, shuffled hash join with 200000 customers, two group-bys, median of $ROUNDS$busy" ;;
esac
printf '%-40s %10s %10s %14s %14s %12s\n' variant "job s" "process s" "job/default" "job/$BASE" "worker cpu s"
for v in "${VARIANTS[@]}"; do
  cpu="-"; [[ "$v" == terrace || "$v" == durable ]] && cpu="${WCPU[$v]}"
  printf '%-40s %10.2f %10.2f %14s %14s %12s\n' "$(label "$v")" "${JOB_S[$v]}" "${PROC[$v]}" \
    "$(ratio "${JOB_S[$v]}" "${JOB_S[default]}")" "$(ratio "${JOB_S[$v]}" "${JOB_S[$BASE]}")" "$cpu"
done
if [[ "${DURABILITY:-}" == 1 ]]; then
  metric() { curl -s "http://$DURABLE_ADMIN/metrics" | awk -v m="$1" '$1 == m { s += $2 } END { printf "%.0f", s }'; }
  D_PUSHED="$(metric terrace_worker_pushed_bytes_total)"
  D_UP="$(( $(metric terrace_worker_durable_bytes_total) + $(metric terrace_worker_migrated_bytes_total) + $(metric terrace_worker_overflowed_bytes_total) + $(metric terrace_worker_durable_index_bytes_total) ))"
  D_PARTS="$(metric terrace_worker_durable_parts_total)"
  echo "durable worker, all $ROUNDS run(s) together: pushed $D_PUSHED B, uploaded $D_UP B to the object store ($(calc "$D_UP / $D_PUSHED") per byte pushed), $D_PARTS parts made durable"
fi
echo "terrace worker, all $ROUNDS terrace run(s) together: bytes_pushed $PUSHED, bytes_read $READ, partitions left $LEFT"
printf 'yardstick: raw disk write %d MiB (fdatasync) %.2f s (%.0f MiB/s), read back %.2f s (page cache likely)\n' \
  "$VOL_MB" "$RAW_W" "$(calc "$VOL_MB / $RAW_W")" "$RAW_R"
if [[ "${DURABILITY:-}" == 1 ]]; then
  printf 'yardstick: raw PUT of %d MiB to the same S3 server (curl, one request) %.2f s (%.0f MiB/s); durable job time minus terrace job time %.2f s = %.2fx the raw PUT\n' \
    "$VOL_MB" "$RAW_PUT" "$(calc "$VOL_MB / $RAW_PUT")" "$(calc "${JOB_S[durable]} - ${JOB_S[terrace]}")" \
    "$(calc "(${JOB_S[durable]} - ${JOB_S[terrace]}) / $RAW_PUT")"
fi
