#!/usr/bin/env bash
# Stops a Terrace service started by terrace-start.sh.
#
#   terrace-stop.sh master|worker [--name NAME] [--decommission ADDR]
#
# Without --decommission: SIGTERM. The service stops accepting, lets each
# connection finish for server.shutdown_grace and exits; a worker keeps its
# data and serves its sealed partitions again when started on the same
# directories. Past TERRACE_STOP_TIMEOUT seconds (default 60) it is
# SIGKILLed and the script fails.
#
# With --decommission ADDR (a worker's data address, host:port): the worker
# leaves the cluster for good -- `terrace worker decommission ADDR --wait`
# (the cluster secret from TERRACE_SECRET_FILE when the cluster has one):
# no new partitions, its partitions handed over (with an object store) or
# released by their jobs, then it exits by itself. Past
# TERRACE_DECOMMISSION_TIMEOUT seconds (default 21600, the worker's own
# decommission_timeout default) the script stops waiting and fails; the
# worker goes on decommissioning.
#
# RUN_DIR, TERRACE_BIN: as for terrace-start.sh.
set -euo pipefail

usage() { echo "usage: $0 master|worker [--name NAME] [--decommission ADDR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
role="$1"; shift
case "$role" in master|worker) ;; *) usage ;; esac
name="$role"
decommission=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --decommission) decommission="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[ -z "$decommission" ] || [ "$role" = worker ] || usage

bin="${TERRACE_BIN:-terrace}"
if [ "$(id -u)" -eq 0 ]; then
  run_dir="${TERRACE_RUN_DIR:-/run/terrace}"
else
  run_dir="${TERRACE_RUN_DIR:-${XDG_RUNTIME_DIR:-/tmp}/terrace}"
fi
# Whether the process still runs (an exited one nobody reaped yet, a
# zombie, does not).
running() {
  local stat
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

# Waits up to $1 seconds for the process to exit.
wait_exit() {
  for _ in $(seq $(($1 * 10))); do
    running || return 0
    sleep 0.1
  done
  ! running
}

pid_file="$run_dir/$name.pid"
if [ ! -s "$pid_file" ]; then
  echo "$name: no pid file $pid_file" >&2
  exit 1
fi
pid="$(cat "$pid_file")"
case "$pid" in *[!0-9]*|'') echo "$name: bad pid file $pid_file" >&2; exit 1 ;; esac
if ! running; then
  echo "$name (pid $pid) is not running" >&2
  rm -f "$pid_file"
  exit 0
fi

if [ -n "$decommission" ]; then
  timeout="${TERRACE_DECOMMISSION_TIMEOUT:-21600}"
  if ! timeout "$timeout" "$bin" worker decommission "$decommission" --wait; then
    echo "$name: decommission did not finish within ${timeout}s; the worker goes on" >&2
    exit 1
  fi
  # The worker has stopped answering; give the process a moment to end.
  if ! wait_exit 30; then
    echo "$name (pid $pid) still runs after its decommission" >&2
    exit 1
  fi
else
  timeout="${TERRACE_STOP_TIMEOUT:-60}"
  kill -TERM "$pid"
  if ! wait_exit "$timeout"; then
    echo "$name (pid $pid) did not stop within ${timeout}s of SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    exit 1
  fi
fi
rm -f "$pid_file"
echo "$name (pid $pid) stopped" >&2
