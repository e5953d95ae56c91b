#!/usr/bin/env bash
# Fetch the Apache Flink 1.20.3 jars (flink-dist & co.) without a Maven repository.
#
# Source: PyPI's `apache-flink-libraries==1.20.3` *source archive* (sdist, ~232 MB),
# which ships Flink's binary distribution jars under deps/lib/. The archive's
# sha256 is pinned below, so pip refuses anything else.
#
# Idempotent: a second run only checks the marker and prints the lib dir.
# Non-interactive (works with CI=true and no stdin).
#
# Env:
#   TERRACE_CACHE        cache root (default: $HOME/.cache/terrace)
#   FLINK_FETCH_OPT=1    also extract deps/opt/*.jar into <cache>/flink-1.20.3/opt/
#   FLINK_KEEP_SDIST=0   delete the downloaded archive after extraction (default: keep)
#
# Last line of stdout: the directory holding the jars (<cache>/flink-1.20.3/lib).
set -euo pipefail

FLINK_VERSION=1.20.3
SDIST_SHA256=f07f07a46bb272c1e851379ed92105928367019db31240091a5367fc92800289
CACHE_ROOT="${TERRACE_CACHE:-$HOME/.cache/terrace}"
DIR="$CACHE_ROOT/flink-$FLINK_VERSION"
LIB="$DIR/lib"
OPT="$DIR/opt"
MARKER="$LIB/.complete"
SDIST="$DIR/download/apache-flink-libraries-$FLINK_VERSION.tar.gz"

log() { echo "fetch-flink: $*" >&2; }

if [[ -f "$MARKER" && -f "$LIB/flink-dist-$FLINK_VERSION.jar" ]] \
   && { [[ "${FLINK_FETCH_OPT:-0}" != 1 ]] || [[ -f "$OPT/.complete" ]]; }; then
  log "already present: $LIB"
  echo "$LIB"
  exit 0
fi

mkdir -p "$DIR/download"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for c in python3.11 python3 python; do command -v "$c" >/dev/null && { PY="$c"; break; }; done
fi
[[ -n "$PY" ]] || { log "no python found"; exit 1; }

if [[ -f "$SDIST" ]] && echo "$SDIST_SHA256  $SDIST" | sha256sum -c --status; then
  log "archive already downloaded: $SDIST"
else
  rm -f "$SDIST"
  req="$(mktemp)"; trap 'rm -f "$req"' EXIT
  echo "apache-flink-libraries==$FLINK_VERSION --hash=sha256:$SDIST_SHA256" >"$req"
  log "downloading apache-flink-libraries==$FLINK_VERSION sdist (~232 MB) ..."
  start=$(date +%s)
  # pip prepares the sdist's metadata (a setuptools build step). If the isolated
  # build environment cannot be set up, retry using the current environment.
  if ! "$PY" -m pip download --no-deps --no-binary :all: --require-hashes -r "$req" \
        -d "$DIR/download" --progress-bar off --no-input --disable-pip-version-check </dev/null >&2; then
    log "retrying with --no-build-isolation"
    "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation --require-hashes -r "$req" \
        -d "$DIR/download" --progress-bar off --no-input --disable-pip-version-check </dev/null >&2
  fi
  log "downloaded in $(( $(date +%s) - start ))s"
fi
[[ -f "$SDIST" ]] || { log "expected $SDIST, got: $(ls "$DIR/download")"; exit 1; }
echo "$SDIST_SHA256  $SDIST" | sha256sum -c --status || { log "sha256 mismatch on $SDIST"; exit 1; }

extract() { # <member-glob-dir> <dest>
  local sub="$1" dest="$2" tmp
  tmp="$(mktemp -d "$DIR/extract.XXXXXX")"
  tar -xzf "$SDIST" -C "$tmp" --no-same-owner --wildcards --no-anchored "deps/$sub/*.jar"
  rm -rf "$dest"; mkdir -p "$dest"
  mv "$tmp"/apache-flink-libraries-$FLINK_VERSION/deps/"$sub"/*.jar "$dest"/
  rm -rf "$tmp"
  (cd "$dest" && sha256sum ./*.jar >.complete)
}

log "extracting deps/lib/*.jar -> $LIB"
extract lib "$LIB"
if [[ "${FLINK_FETCH_OPT:-0}" == 1 ]]; then
  log "extracting deps/opt/*.jar -> $OPT"
  extract opt "$OPT"
fi
if [[ "${FLINK_KEEP_SDIST:-1}" == 0 ]]; then rm -f "$SDIST"; fi

log "$(ls "$LIB" | wc -l) jars, $(du -sh "$LIB" | cut -f1)"
echo "$LIB"
