#!/usr/bin/env bash
# Fetch the Apache Flink jars (flink-dist & co.) of one Flink version without a Maven repository.
#
#   scripts/fetch-flink.sh [VERSION]   # 1.20.3 (default), 2.0.1, 2.1.3, 2.2.1 or 2.3.0
#
# Source: PyPI's `apache-flink-libraries`, which ships Flink's binary distribution jars. Up to
# 2.1 it is a source archive (sdist, ~230-300 MB) with them under deps/lib/; from 2.2 a wheel
# (~313 MB) with them under pyflink/lib/. Each archive's sha256 is pinned below, so pip refuses
# anything else.
#
# Idempotent: a second run only checks the marker and prints the lib dir.
# Non-interactive (works with CI=true and no stdin).
#
# Env:
#   TERRACE_CACHE        cache root (default: $HOME/.cache/terrace)
#   FLINK_FETCH_OPT=1    also extract the opt/ jars into <cache>/flink-VERSION/opt/
#   FLINK_KEEP_SDIST=0   delete the downloaded archive (sdist or wheel) after extraction (default: keep)
#
# Last line of stdout: the directory holding the jars (<cache>/flink-VERSION/lib).
set -euo pipefail

FLINK_VERSION="${1:-1.20.3}"
case "$FLINK_VERSION" in
  1.20.3)
    ARCHIVE_NAME="apache-flink-libraries-$FLINK_VERSION.tar.gz"
    ARCHIVE_SHA256=f07f07a46bb272c1e851379ed92105928367019db31240091a5367fc92800289
    ;;
  2.0.1)
    ARCHIVE_NAME="apache_flink_libraries-$FLINK_VERSION.tar.gz"
    ARCHIVE_SHA256=23e20e76083b4501a530b3678bdfaee9f2615ae4e4f7aedfe79bb5e36ffd990b
    ;;
  2.1.3)
    ARCHIVE_NAME="apache_flink_libraries-$FLINK_VERSION.tar.gz"
    ARCHIVE_SHA256=b48d3944755b9303f99d205ea1a9bcb798fc563a872c782393fb466f16d4f91c
    ;;
  2.2.1)
    ARCHIVE_NAME="apache_flink_libraries-$FLINK_VERSION-py2.py3-none-any.whl"
    ARCHIVE_SHA256=74dc5546fbd9add8fbcdf1222a237e09491f9b80296241aef8676ec56f8e686e
    ;;
  2.3.0)
    ARCHIVE_NAME="apache_flink_libraries-$FLINK_VERSION-py2.py3-none-any.whl"
    ARCHIVE_SHA256=38ece876553286b3a285cf344c2d2038f8a7ca10da5df54d5107250386d64151
    ;;
  *)
    echo "fetch-flink: unsupported Flink version '$FLINK_VERSION' (supported: 1.20.3, 2.0.1, 2.1.3, 2.2.1, 2.3.0)" >&2
    exit 2
    ;;
esac
CACHE_ROOT="${TERRACE_CACHE:-$HOME/.cache/terrace}"
DIR="$CACHE_ROOT/flink-$FLINK_VERSION"
LIB="$DIR/lib"
OPT="$DIR/opt"
MARKER="$LIB/.complete"
ARCHIVE="$DIR/download/$ARCHIVE_NAME"

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

if [[ -f "$ARCHIVE" ]] && echo "$ARCHIVE_SHA256  $ARCHIVE" | sha256sum -c --status; then
  log "archive already downloaded: $ARCHIVE"
else
  rm -f "$ARCHIVE"
  req="$(mktemp)"; trap 'rm -f "$req"' EXIT
  echo "apache-flink-libraries==$FLINK_VERSION --hash=sha256:$ARCHIVE_SHA256" >"$req"
  log "downloading $ARCHIVE_NAME (~300 MB) ..."
  start=$(date +%s)
  if [[ "$ARCHIVE_NAME" == *.whl ]]; then
    "$PY" -m pip download --no-deps --only-binary :all: --require-hashes -r "$req" \
        -d "$DIR/download" --progress-bar off --no-input --disable-pip-version-check </dev/null >&2
  # pip prepares an sdist's metadata (a setuptools build step). If the isolated
  # build environment cannot be set up, retry using the current environment.
  elif ! "$PY" -m pip download --no-deps --no-binary :all: --require-hashes -r "$req" \
        -d "$DIR/download" --progress-bar off --no-input --disable-pip-version-check </dev/null >&2; then
    log "retrying with --no-build-isolation"
    "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation --require-hashes -r "$req" \
        -d "$DIR/download" --progress-bar off --no-input --disable-pip-version-check </dev/null >&2
  fi
  log "downloaded in $(( $(date +%s) - start ))s"
fi
[[ -f "$ARCHIVE" ]] || { log "expected $ARCHIVE, got: $(ls "$DIR/download")"; exit 1; }
echo "$ARCHIVE_SHA256  $ARCHIVE" | sha256sum -c --status || { log "sha256 mismatch on $ARCHIVE"; exit 1; }

extract() { # <lib|opt> <dest>
  local sub="$1" dest="$2" tmp src
  tmp="$(mktemp -d "$DIR/extract.XXXXXX")"
  if [[ "$ARCHIVE_NAME" == *.whl ]]; then
    # A wheel is a zip; Python reads it (no unzip needed on the machine).
    "$PY" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[3], [n for n in z.namelist() if n.startswith(sys.argv[2]) and n.endswith(".jar")])' \
      "$ARCHIVE" "pyflink/$sub/" "$tmp"
    src="$tmp/pyflink/$sub"
  else
    tar -xzf "$ARCHIVE" -C "$tmp" --no-same-owner --wildcards --no-anchored "deps/$sub/*.jar"
    # The archive's top directory is spelt with '-' or '_' depending on the release.
    src="$(echo "$tmp"/*/deps/"$sub")"
  fi
  rm -rf "$dest"; mkdir -p "$dest"
  mv "$src"/*.jar "$dest"/
  rm -rf "$tmp"
  (cd "$dest" && sha256sum ./*.jar >.complete)
}

log "extracting the lib/ jars -> $LIB"
extract lib "$LIB"
if [[ "${FLINK_FETCH_OPT:-0}" == 1 ]]; then
  log "extracting the opt/ jars -> $OPT"
  extract opt "$OPT"
fi
if [[ "${FLINK_KEEP_SDIST:-1}" == 0 ]]; then rm -f "$ARCHIVE"; fi

log "$(ls "$LIB" | wc -l) jars, $(du -sh "$LIB" | cut -f1)"
echo "$LIB"
