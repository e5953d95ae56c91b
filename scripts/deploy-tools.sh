#!/usr/bin/env bash
# Installs what the deployment tests need (tests/tests/deploy.rs, and the
# compose cluster test in tests/tests/flink_e2e/compose.rs) when it is
# missing, and prints the path of kubernetes-validate as the last line of
# stdout.
#
#   Debian packages (apt-get): prometheus (promtool, and the Prometheus the
#     compose cluster runs), busybox-static (the image base's shell),
#     docker-compose (the v1 binary), systemd (systemd-analyze), python3-venv.
#   kubernetes-validate, pinned with its dependencies (scripts/
#     kubernetes-validate.txt), into a virtual environment under
#     ${TERRACE_CACHE:-~/.cache/terrace}, made again when the pins change.
#   Required and not installed: kubectl >= 1.27 (Debian's kubernetes-client
#     is 1.20, whose kustomize lacks components and `labels`), and a running
#     Docker Engine.
#
# Usage: TERRACE_KUBERNETES_VALIDATE="$(scripts/deploy-tools.sh | tail -n1)"
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "deploy-tools: $*" >&2; }

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
{ command -v busybox >/dev/null && ! ldd "$(command -v busybox)" >/dev/null 2>&1; } || missing+=(busybox-static)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v systemd-analyze >/dev/null || missing+=(systemd)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v kubectl >/dev/null || { log "kubectl (>= 1.27, with kustomize) is required"; exit 1; }
docker info >/dev/null 2>&1 || { log "a running Docker Engine is required (docker info failed)"; exit 1; }

cache="${TERRACE_CACHE:-$HOME/.cache/terrace}"
pins="scripts/kubernetes-validate.txt"
hash="$(sha256sum "$pins" | cut -c1-12)"
venv="$cache/kubernetes-validate-$hash"
# .complete is written last: an interrupted install is made again.
if [ ! -e "$venv/.complete" ]; then
  log "installing kubernetes-validate into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$pins" >&2 \
    || { rm -rf "$venv"; exit 1; }
  touch "$venv/.complete"
fi
echo "$venv/bin/kubernetes-validate"
