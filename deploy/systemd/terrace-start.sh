#!/usr/bin/env bash
# Starts a Terrace master or worker in the background on a machine without
# systemd or containers, and waits until it listens.
#
#   terrace-start.sh master|worker [--name NAME] [--config FILE] [-- ARGS...]
#
# NAME (default: the role) names the instance's files, so one machine can
# run several: RUN_DIR/NAME.pid and LOG_DIR/NAME.log. ARGS go to
# `terrace master|worker` after --config (e.g. --listen, --data-dir,
# --master). Prints the address the service listens on.
#
# Environment: TERRACE_BIN (default: `terrace` on PATH), TERRACE_RUN_DIR
# (default /run/terrace, or $XDG_RUNTIME_DIR/terrace when not root),
# TERRACE_LOG_DIR (default /var/log/terrace, or ~/.local/state/terrace when
# not root), TERRACE_START_TIMEOUT (seconds to wait for "listening on",
# default 30), and TERRACE_LOG and TERRACE_* config variables as for
# `terrace` itself.
set -euo pipefail

usage() { echo "usage: $0 master|worker [--name NAME] [--config FILE] [-- ARGS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
role="$1"; shift
case "$role" in master|worker) ;; *) usage ;; esac
name="$role"
config="/etc/terrace/$role.toml"
config_given=false
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --config) config="$2"; config_given=true; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
case "$name" in *[!A-Za-z0-9._-]*|'') echo "bad instance name: $name" >&2; exit 2 ;; esac

bin="${TERRACE_BIN:-terrace}"
if [ "$(id -u)" -eq 0 ]; then
  run_dir="${TERRACE_RUN_DIR:-/run/terrace}"
  log_dir="${TERRACE_LOG_DIR:-/var/log/terrace}"
else
  run_dir="${TERRACE_RUN_DIR:-${XDG_RUNTIME_DIR:-/tmp}/terrace}"
  log_dir="${TERRACE_LOG_DIR:-$HOME/.local/state/terrace}"
fi
timeout="${TERRACE_START_TIMEOUT:-30}"
pid_file="$run_dir/$name.pid"
log_file="$log_dir/$name.log"
mkdir -p "$run_dir" "$log_dir"

# Whether process $1 still runs (an exited one nobody reaped yet, a zombie,
# does not).
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

if [ -s "$pid_file" ] && running "$(cat "$pid_file")"; then
  echo "$name is already running (pid $(cat "$pid_file"), $pid_file)" >&2
  exit 1
fi

args=("$role")
if [ -e "$config" ]; then
  args+=(--config "$config")
elif $config_given; then
  echo "no config file $config" >&2
  exit 1
fi
args+=("$@")
# What the log held before: only later lines are this start's.
touch "$log_file"
mark="$(wc -l < "$log_file")"
# A session of its own: the service outlives this shell and its terminal.
setsid "$bin" "${args[@]}" </dev/null >>"$log_file" 2>&1 &
pid=$!
echo "$pid" > "$pid_file"

# "terrace <role> listening on ADDR" on stdout, once bound.
for _ in $(seq $((timeout * 10))); do
  address="$(tail -n +"$((mark + 1))" "$log_file" | sed -n "s/^terrace $role listening on //p" | head -n1)"
  if [ -n "$address" ]; then
    echo "$name (pid $pid) listening on $address; log: $log_file" >&2
    echo "$address"
    exit 0
  fi
  if ! running "$pid"; then
    rm -f "$pid_file"
    echo "$name exited at start; the end of $log_file:" >&2
    tail -n 20 "$log_file" >&2
    exit 1
  fi
  sleep 0.1
done
echo "$name did not listen within ${timeout}s; stopping it (log: $log_file)" >&2
kill -TERM "$pid" 2>/dev/null || true
rm -f "$pid_file"
exit 1
