#!/usr/bin/env bash
# Runs the same `remexec bench` CAS and Action Cache workloads against remexec and against
# BuildGrid 0.9.1 (disk CAS, in-memory action cache), side by side in one run on loopback, and
# writes the table into docs/BENCHMARKS.md between the compare markers.
#
# Usage: remexec-bin/benches/compare.sh [--quick]
# Needs: BuildGrid's bgd (BGD=..., default: the venv .ci/test installs), a release build of remexec
# (built here if missing). BuildGrid ships no worker, so Execute is measured on remexec only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
QUICK=0; [[ "${1:-}" == "--quick" ]] && QUICK=1
BGD="${BGD:-${REMEXEC_BGD_VENV:-$HOME/.cache/remexec-test/bgd-venv}/bin/bgd}"
[[ -x "$BGD" ]] || { echo "compare: bgd not found at $BGD (run .ci/test once, or set BGD)" >&2; exit 2; }
cargo build --release -q -p remexec-bin
REMEXEC="$ROOT/target/release/remexec"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/remexec-compare.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# remexec: the cache daemon with its defaults (disk CAS with fsync, disk action cache).
"$REMEXEC" scheduler --listen 127.0.0.1:0 --data-dir "$TMP/remexec" >"$TMP/remexec.out" 2>"$TMP/remexec.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "listening on" "$TMP/remexec.out" 2>/dev/null && break; sleep 0.1; done
RX_URL="grpc://$(sed -n 's/^remexec: listening on //p' "$TMP/remexec.out")"

# BuildGrid: disk CAS and in-memory (LRU) action cache, no authentication, loopback only.
BG_PORT="$(free_port)"
mkdir -p "$TMP/bgd-cas"
cat >"$TMP/bgd.yml" <<YAML
server:
  - !channel
    address: "127.0.0.1:$BG_PORT"
    insecure-mode: true
authorization:
  method: none
storages:
  - !disk-storage &cas
    path: $TMP/bgd-cas
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 1000000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 20
YAML
"$BGD" server start "$TMP/bgd.yml" >"$TMP/bgd.log" 2>&1 &
PIDS+=($!)
BG_URL="grpc://127.0.0.1:$BG_PORT"
for _ in $(seq 300); do "$BGD" capabilities --remote "$BG_URL" >/dev/null 2>&1 && break; sleep 0.2; done

scale() { if (( QUICK )); then echo "$2"; else echo "$1"; fi; }
# name | remexec bench arguments
WORKLOADS=(
  "ByteStream write 1 MiB, 8 clients|cas-write --size 1MiB --concurrency 8 --count $(scale 400 40)"
  "ByteStream write 64 MiB, 1 client|cas-write --size 64MiB --concurrency 1 --count $(scale 6 2)"
  "ByteStream read 1 MiB, 8 clients|cas-read --size 1MiB --concurrency 8 --count $(scale 800 40)"
  "ByteStream read 64 MiB, 1 client|cas-read --size 64MiB --concurrency 1 --blobs 2 --count $(scale 8 2)"
  "BatchUpdateBlobs 64 KiB, 8 clients|cas-write --batch --size 64KiB --concurrency 8 --count $(scale 2000 100)"
  "FindMissingBlobs 1,000 digests, 8 clients|find-missing --batch-size 1000 --concurrency 8 --count $(scale 400 20)"
  "FindMissingBlobs 10,000 digests, 1 client|find-missing --batch-size 10000 --concurrency 1 --count $(scale 40 4)"
  "GetActionResult hit, 64 clients|ac-get --concurrency 64 --count $(scale 20000 500)"
  "GetActionResult miss, 64 clients|ac-get --miss --concurrency 64 --count $(scale 20000 500)"
)

measure() { # URL ARGS... -> "ops_per_s throughput p50 p99 errors"
  local url="$1"; shift
  "$REMEXEC" bench "$@" --target "$url" --json 2>/dev/null | python3 -c '
import json,sys
r=json.load(sys.stdin)
print(r["ops_per_s"], r["throughput_bytes_per_s"], r["p50_s"], r["p99_s"], r["errors"])'
}

TABLE="$TMP/table.md"
{
  echo "| workload | remexec ops/s | BuildGrid ops/s | ratio | remexec p50 / p99 | BuildGrid p50 / p99 | remexec MiB/s | BuildGrid MiB/s |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$TABLE"
for entry in "${WORKLOADS[@]}"; do
  name="${entry%%|*}"; args="${entry#*|}"
  echo "compare: $name" >&2
  # shellcheck disable=SC2086
  read -r r_ops r_tp r_p50 r_p99 r_err <<<"$(measure "$RX_URL" $args)"
  # shellcheck disable=SC2086
  read -r b_ops b_tp b_p50 b_p99 b_err <<<"$(measure "$BG_URL" $args || echo "0 0 0 0 -1")"
  python3 - "$name" "$r_ops" "$r_tp" "$r_p50" "$r_p99" "$r_err" "$b_ops" "$b_tp" "$b_p50" "$b_p99" "$b_err" >>"$TABLE" <<'PY'
import sys
name, r_ops, r_tp, r_p50, r_p99, r_err, b_ops, b_tp, b_p50, b_p99, b_err = sys.argv[1:]
f = float
ms = lambda s: f"{f(s)*1000:.2f} ms"
mib = lambda b: f"{f(b)/1048576:.0f}" if f(b) > 0 else "-"
ratio = f"{f(r_ops)/f(b_ops):.1f}x" if f(b_ops) > 0 else "n/a"
note = lambda e: "" if e == "0" else f" ({e} errors)"
print(f"| {name} | {f(r_ops):.0f}{note(r_err)} | {f(b_ops):.0f}{note(b_err)} | {ratio} | {ms(r_p50)} / {ms(r_p99)} | {ms(b_p50)} / {ms(b_p99)} | {mib(r_tp)} | {mib(b_tp)} |")
PY
done
cat "$TABLE"

DOC="$ROOT/docs/BENCHMARKS.md"
python3 - "$DOC" "$TABLE" "$QUICK" <<'PY'
import sys, datetime, platform, os
doc, table, quick = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3] == "1"
cpu = next((l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
block = (f"<!-- compare:begin -->\n"
         f"Measured {datetime.date.today()} on {os.cpu_count()} vCPU ({cpu}), {platform.system()} {platform.release()}, "
         f"loopback, with `remexec-bin/benches/compare.sh{' --quick' if quick else ''}`. Both servers and the load tool share the machine; "
         f"remexec runs `remexec scheduler` with its defaults (disk CAS with fsync, disk action cache), BuildGrid 0.9.1 "
         f"a disk CAS and an in-memory LRU action cache, 20 threads. Each row is one `remexec bench` run per server, same arguments.\n\n"
         f"{table}<!-- compare:end -->")
text = open(doc).read()
start, end = text.find("<!-- compare:begin -->"), text.find("<!-- compare:end -->")
if start >= 0 and end >= 0:
    text = text[:start] + block + text[end+len("<!-- compare:end -->"):]
else:
    text += "\n## remexec against BuildGrid\n\n" + block + "\n"
open(doc, "w").write(text)
PY
echo "compare: table written to docs/BENCHMARKS.md" >&2
