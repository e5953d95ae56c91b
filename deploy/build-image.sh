#!/usr/bin/env bash
# Builds the Terrace container image without any registry.
#
#   deploy/build-image.sh [--binary PATH] [--tag TAG] [--prometheus]
#
# 1. The base (terrace-base:local), unless an image of that name made from
#    the same files exists: a root filesystem assembled here from this
#    machine's own files and loaded with `docker import` -- the shared
#    libraries the binary (and, with --prometheus, Prometheus) links (ldd),
#    /etc/ssl/certs/ca-certificates.crt, a static busybox (a shell, wget,
#    cat, chmod, chown for health checks and init containers; Debian's
#    busybox-static), /etc/passwd and /etc/group with `terrace` (10001) and `nobody`, /tmp, and
#    /var/lib/terrace owned by terrace. Nothing is downloaded.
# 2. The image (terrace:local) from deploy/Dockerfile, with the binary
#    (debug info stripped when `strip` exists) and deploy/image/etc/terrace.
# 3. With --prometheus: terrace-prometheus:local from
#    deploy/prometheus/Dockerfile with this machine's `prometheus` binary
#    (Debian's package), for deploy/compose.
#
# The binary: --binary, else $TERRACE_BIN, else the release build, else the
# debug build under $CARGO_TARGET_DIR (or ./target). Prints the image tag last.
set -euo pipefail
cd "$(dirname "$0")/.."
# What this script writes must be readable by the image's unprivileged user,
# whatever the caller's umask (a checkout made under 077 has 0600 files).
umask 022

binary="${TERRACE_BIN:-}"
tag="${TERRACE_IMAGE:-terrace:local}"
base="${TERRACE_BASE_IMAGE:-terrace-base:local}"
prometheus_tag="${PROMETHEUS_IMAGE:-terrace-prometheus:local}"
with_prometheus=false
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --prometheus) with_prometheus=true; shift ;;
    *) echo "usage: $0 [--binary PATH] [--tag TAG] [--prometheus]" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  target="${CARGO_TARGET_DIR:-$PWD/target}"
  for candidate in "$target/release/terrace" "$target/debug/terrace"; do
    if [ -x "$candidate" ]; then binary="$candidate"; break; fi
  done
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
  echo "no terrace binary: build one (cargo build --release -p terrace-cli) or pass --binary" >&2
  exit 1
fi
for tool in docker ldd tar sha256sum; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
busybox="$(command -v busybox || true)"
if [ -z "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "a static busybox is required (apt-get install busybox-static)" >&2
  exit 1
fi
certs=/etc/ssl/certs/ca-certificates.crt
[ -r "$certs" ] || { echo "$certs is required (apt-get install ca-certificates)" >&2; exit 1; }
prometheus_bin=""
if $with_prometheus; then
  prometheus_bin="${PROMETHEUS_BIN:-$(command -v prometheus || true)}"
  [ -x "$prometheus_bin" ] || { echo "no prometheus binary (apt-get install prometheus)" >&2; exit 1; }
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The shared libraries of each binary, as ldd names them (the loader included).
libraries() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}
libs="$( { libraries "$binary"; [ -z "$prometheus_bin" ] || libraries "$prometheus_bin"; } | sort -u)"

# --- the base ---------------------------------------------------------------
# Its name says what it is for; a label says what it was made from, so a base
# made from other libraries (a newer libc) is made again.
base_version=1
base_hash="$( { echo "base $base_version"; sha256sum "$busybox" "$certs"; for lib in $libs; do
  echo "$lib $(sha256sum < "$lib")"; done; } | sha256sum | cut -c1-16)"
have_hash="$(docker image inspect -f '{{ index .Config.Labels "dev.terrace.base-hash" }}' "$base" 2>/dev/null || true)"
if [ "$have_hash" != "$base_hash" ]; then
  root="$work/root"
  mkdir -p "$root"/{bin,etc/ssl/certs,etc/terrace,root,tmp,usr/local/bin,var/lib/terrace}
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp -L "$busybox" "$root/bin/busybox"
  for applet in sh cat chmod chown cp env id ls mkdir rm sleep wget; do
    ln -s busybox "$root/bin/$applet"
  done
  cp -L "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
  cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
terrace:x:10001:10001:Terrace:/var/lib/terrace:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
  cat > "$root/etc/group" <<'GROUP'
root:x:0:
terrace:x:10001:
nogroup:x:65534:
GROUP
  echo "hosts: files dns" > "$root/etc/nsswitch.conf"
  chmod 0755 "$root" "$root"/{bin,etc,usr,var,var/lib}
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  chmod 0750 "$root/var/lib/terrace"
  tar --numeric-owner --owner=0 --group=0 --exclude=./var/lib/terrace \
    -C "$root" -cf "$work/base.tar" .
  tar --numeric-owner --owner=10001 --group=10001 \
    -C "$root" -rf "$work/base.tar" ./var/lib/terrace
  docker import \
    --change "LABEL dev.terrace.base-hash=$base_hash" \
    --change 'ENV PATH=/usr/local/bin:/bin' \
    "$work/base.tar" "$base" >/dev/null
  echo "built $base ($base_hash) from $(echo "$libs" | wc -w) libraries" >&2
fi

# --- the image --------------------------------------------------------------
context="$work/context"
mkdir -p "$context/etc"
cp -L "$binary" "$context/terrace"
if command -v strip >/dev/null; then
  strip --strip-debug "$context/terrace"
fi
cp -R deploy/image/etc/terrace "$context/etc/terrace"
chmod -R u=rwX,go=rX "$context/etc/terrace"
chmod 0755 "$context/terrace"
# The legacy builder warns about itself on stderr: shown only on failure.
build() {
  docker build --quiet "$@" >/dev/null 2>"$work/build.err" || { cat "$work/build.err" >&2; return 1; }
}
build --build-arg "BASE=$base" -f deploy/Dockerfile -t "$tag" "$context"
echo "built $tag from $binary" >&2

if $with_prometheus; then
  context="$work/prometheus"
  mkdir -p "$context/data"
  cp -L "$prometheus_bin" "$context/prometheus"
  touch "$context/data/.keep"
  build --build-arg "BASE=$base" -f deploy/prometheus/Dockerfile -t "$prometheus_tag" "$context"
  echo "built $prometheus_tag from $prometheus_bin" >&2
fi
echo "$tag"
