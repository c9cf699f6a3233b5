#!/usr/bin/env bash
# Small blobs against the machine's own disk, in one run: `remexec serve` with fsync on, small
# blobs packed (the default) and with a file each (`[cas] pack_up_to = 0`), beside `dd`.
#
#   remexec-bin/benches/small-writes.sh [REMEXEC_BINARY [ROUNDS]]   (default: target/release/remexec, 3)
#
# Per round, alternating, on the file system of the data directories:
#   - dd bs=4k oflag=dsync: one synchronous 4 KiB write at a time (writes/s);
#   - dd bs=64k oflag=dsync: the disk's fsynced bandwidth for 64 KiB writes (MB/s; a 1 MiB
#     `conv=fdatasync` swings from 0.7 to 2.5 GB/s here as the host absorbs it);
#   - 4 KiB ByteStream writes from 8 clients, to each server (writes/s), and their ratio to dd's;
#     packed from 32 clients too (group commit takes in as many writers as wait);
#   - 64 KiB writes from 8 clients (MB/s), their ratio to dd's bandwidth and packed / files;
#   - FindMissingBlobs (1,000 digests) and 4 KiB reads, packed against files.
# Prints a Markdown table, one row per round, and the median ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/remexec}"
ROUNDS="${2:-3}"
[[ -x "$BIN" ]] || { echo "build it first: cargo build --release -p remexec-bin" >&2; exit 1; }
TMP="$(mktemp -d "${TMPDIR:-/tmp}/small-writes.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$TMP"; }
trap cleanup EXIT
export REMEXEC_LOG=warn
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # NAME CONFIG_TEXT -> prints the URL
  local p; p="$(port)"
  printf '%b' "$2" > "$TMP/$1.toml"
  "$BIN" serve --config "$TMP/$1.toml" --listen "127.0.0.1:$p" --data-dir "$TMP/$1" >"$TMP/$1.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 100); do "$BIN" bench find-missing --target "grpc://127.0.0.1:$p" --count 1 >/dev/null 2>&1 && break; sleep 0.2; done
  echo "grpc://127.0.0.1:$p"
}
PACKED="$(start packed '[cas]\n')"
FILES="$(start files '[cas]\npack_up_to = "0 B"\n')"

bench() { # WORKLOAD URL FIELD ARGS... -> prints the field of the JSON report
  local workload="$1" url="$2" field="$3"; shift 3
  "$BIN" bench "$workload" --target "$url" --json "$@" \
    | python3 -c "import json,sys; r=json.load(sys.stdin); assert not r['errors'], r; print(r['$field'])"
}
dd_rate() { # dd's last line -> bytes/s
  python3 -c '
import re,sys
line=sys.stdin.read().strip().splitlines()[-1]
n=int(line.split()[0]); s=float(re.search(r", ([0-9.e-]+) s,", line).group(1)); print(n/s)'
}

echo "| round | dd 4k dsync writes/s | packed 4 KiB writes/s | files 4 KiB writes/s | packed / dd | files / dd | packed at 32 clients / dd | dd 64k dsync MB/s | packed 64 KiB MB/s | packed 64 KiB / dd | 64 KiB packed / files | find-missing packed / files | 4 KiB reads packed / files |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
R4=(); R64=(); RFM=(); RRD=()
for round in $(seq "$ROUNDS"); do
  dd4="$(dd if=/dev/zero of="$TMP/dd4" bs=4k count=2000 oflag=dsync 2>&1 | dd_rate)"
  dd4="$(python3 -c "print($dd4/4096)")"
  # The same blobs go to both servers, so that their indexes stay the same size.
  p4="$(bench cas-write "$PACKED" ops_per_s --size 4KiB --concurrency 8 --count 8000)"
  f4="$(bench cas-write "$FILES" ops_per_s --size 4KiB --concurrency 8 --count 8000)"
  p32="$(bench cas-write "$PACKED" ops_per_s --size 4KiB --concurrency 32 --count 16000)"
  bench cas-write "$FILES" ops_per_s --size 4KiB --concurrency 32 --count 16000 >/dev/null
  ddm="$(dd if=/dev/zero of="$TMP/ddm" bs=64k count=2000 oflag=dsync 2>&1 | dd_rate)"
  p64="$(bench cas-write "$PACKED" throughput_bytes_per_s --size 64KiB --concurrency 8 --count 4000)"
  f64="$(bench cas-write "$FILES" throughput_bytes_per_s --size 64KiB --concurrency 8 --count 4000)"
  pfm="$(bench find-missing "$PACKED" ops_per_s --batch-size 1000 --count 8000)"
  ffm="$(bench find-missing "$FILES" ops_per_s --batch-size 1000 --count 8000)"
  prd="$(bench cas-read "$PACKED" ops_per_s --size 4KiB --blobs 1000 --count 40000)"
  frd="$(bench cas-read "$FILES" ops_per_s --size 4KiB --blobs 1000 --count 40000)"
  rm -f "$TMP/dd4" "$TMP/ddm"
  r4="$(python3 -c "print(f'{$p4/$dd4:.2f}')")"; R4+=("$r4")
  r64="$(python3 -c "print(f'{$p64/$ddm:.2f}')")"; R64+=("$r64")
  rfm="$(python3 -c "print(f'{$pfm/$ffm:.2f}')")"; RFM+=("$rfm")
  rrd="$(python3 -c "print(f'{$prd/$frd:.2f}')")"; RRD+=("$rrd")
  printf '| %s | %.0f | %.0f | %.0f | %s | %.2f | %.2f | %.0f | %.0f | %s | %.2f | %s | %s |\n' "$round" "$dd4" "$p4" "$f4" "$r4" \
    "$(python3 -c "print($f4/$dd4)")" "$(python3 -c "print($p32/$dd4)")" "$(python3 -c "print($ddm/1e6)")" "$(python3 -c "print($p64/1e6)")" "$r64" \
    "$(python3 -c "print($p64/$f64)")" "$rfm" "$rrd"
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
echo
echo "median ratios: 4 KiB writes / dd dsync $(median "${R4[@]}") (target >= 3); 64 KiB writes / dd 64k dsync $(median "${R64[@]}") (target >= 0.7); find-missing packed / files $(median "${RFM[@]}"); reads packed / files $(median "${RRD[@]}") (targets >= 1)"
