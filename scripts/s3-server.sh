#!/usr/bin/env bash
# Installs the S3-compatible test server `s3s-fs` (pinned to 0.14.1: newer
# releases need a newer Rust than the project's 1.95) into a cache outside the
# repository, and prints the path of its binary as the last line of stdout.
# The install (a couple of minutes) is skipped when the binary is already there.
#
# Usage: BIN="$(scripts/s3-server.sh | tail -n1)"
# Cache: ${TERRACE_CACHE:-$HOME/.cache/terrace}/s3s-fs-0.14.1 (binary in bin/)
#
# What s3s-fs 0.14.1 is (read from `s3s-fs --help` and its source):
#   s3s-fs [--host HOST] [--port PORT] [--access-key AK --secret-key SK]
#          [--domain NAME]... ROOT
#   --host        address to listen on (default `localhost`; tests use 127.0.0.1)
#   --port        port (default 8014; there is no "0 = pick one and print it"
#                 contract, so tests pick a free port themselves)
#   --access-key / --secret-key
#                 must be given together. With them every request must be
#                 signed (SigV4 or V2): anonymous -> 403 AccessDenied "Signature
#                 is required", wrong secret -> 403 SignatureDoesNotMatch; the
#                 region in the signature is not checked; a signed payload
#                 hash (x-amz-content-sha256) is verified, UNSIGNED-PAYLOAD and
#                 aws-chunked streaming are accepted. WITHOUT them a signed
#                 request fails with 501 "This service has no authentication
#                 provider", so clients such as object_store need the keys.
#   --domain      enables virtual-hosted-style requests; without it only
#                 path-style URLs (http://host:port/bucket/key) work.
#   ROOT          existing directory (canonicalized at start; it fails if missing).
#   Logs go to stdout via tracing, filtered by RUST_LOG (default: errors only;
#   every S3 error reply, e.g. a 404 NoSuchKey, logs an ERROR line). It listens
#   until SIGINT (graceful) or SIGKILL; `server is running at http://ADDR` is
#   logged at INFO (RUST_LOG=error,s3s_fs=info).
# Storage layout: a bucket is the directory ROOT/<bucket> (CreateBucket is a
# mkdir; a directory made by hand is a bucket), an object is the plain file
# ROOT/<bucket>/<key> (`/` in keys are subdirectories). Everything internal is
# kept at the top of ROOT, never inside a bucket directory: per-object
# `.bucket-<b64>.object-<b64>.{metadata,internal}.json` sidecars (ETag,
# checksums, user metadata; not removed by DeleteObject), write temporaries
# `.tmp.<n>.internal.part` (every write goes there, then is renamed into place,
# so an object appears whole or not at all; leftovers are removed at the next
# start), and multipart state `.upload-<id>.json` + `.upload_id-<id>.part-<n>`
# (CompleteMultipartUpload concatenates the parts into a temporary and renames
# it into the bucket; parts but the last must be >= 5 MiB, else EntityTooSmall,
# which leaves the parts behind).
# Filesystem quirks: keys `a` and `a/b` cannot both exist (the second PUT is a
# 500 InternalError); DeleteObject leaves empty parent directories (not
# objects: ListObjects shows files only); a key ending in `/` is a directory;
# keys are normalized like paths (`a//b` is `a/b`); a PUT whose Content-MD5 or
# x-amz-checksum-* does not match is refused with BadDigest but the object has
# already been stored (a mismatching x-amz-content-sha256 stores nothing).
set -euo pipefail

VERSION=0.14.1
CACHE="${TERRACE_CACHE:-$HOME/.cache/terrace}/s3s-fs-$VERSION"
BIN="$CACHE/bin/s3s-fs"

installed() { [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; }

if ! installed; then
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required to install s3s-fs" >&2
    exit 1
  fi
  mkdir -p "$CACHE"
  # One install at a time when several runs share the cache.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE.lock"
    flock 9
  fi
  if ! installed; then
    echo "installing s3s-fs $VERSION into $CACHE (takes a few minutes)" >&2
    # Its own target dir, so the workspace's target/ and build lock are not used.
    CARGO_TARGET_DIR="$CACHE/build" \
      cargo install --locked "s3s-fs@$VERSION" --features binary --root "$CACHE" --force >&2
    rm -rf "$CACHE/build"
  fi
fi

echo "$BIN"
