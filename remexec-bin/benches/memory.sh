#!/usr/bin/env bash
# Server memory: RSS of an idle `remexec serve`, and its peak RSS (VmHWM) while 10 GiB of blobs
# stream through it (5 GiB written, then 5 GiB read, as 64 MiB ByteStream blobs from 4 clients).
#
# Usage: remexec-bin/benches/memory.sh [GIB]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
GIB="${1:-10}"
cargo build --release -q -p remexec-bin
REMEXEC="$PWD/target/release/remexec"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/remexec-memory.XXXXXX")"
"$REMEXEC" serve --listen 127.0.0.1:0 --data-dir "$TMP/data" --disk-budget "$((GIB + 1))GiB" >"$TMP/out" 2>"$TMP/err" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$TMP/out" 2>/dev/null && break; sleep 0.1; done
URL="grpc://$(sed -n 's/^remexec: listening on //p' "$TMP/out")"
sleep 2
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
echo "idle: VmRSS $(( $(kib VmRSS) / 1024 )) MiB"
count=$(( GIB * 1024 / 64 / 2 ))
"$REMEXEC" bench cas-write --target "$URL" --size 64MiB --concurrency 4 --count "$count"
"$REMEXEC" bench cas-read --target "$URL" --size 64MiB --concurrency 4 --blobs 8 --count "$count"
echo "after ${GIB} GiB streamed: VmHWM (peak RSS) $(( $(kib VmHWM) / 1024 )) MiB, VmRSS now $(( $(kib VmRSS) / 1024 )) MiB"
