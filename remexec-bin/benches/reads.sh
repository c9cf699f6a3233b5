#!/usr/bin/env bash
# Large reads against the machine's own loopback, in one run: ByteStream reads of 64 MiB blobs
# from `remexec serve` (one client), beside iperf3's TCP throughput on loopback (one stream).
#
#   remexec-bin/benches/reads.sh [REMEXEC_BINARY [ROUNDS]]   (default: target/release/remexec, 3)
#
# Needs iperf3 (Debian: apt-get install iperf3). Prints a Markdown table, one row per round
# (iperf3 and the reads alternate), and the median ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/remexec}"
ROUNDS="${2:-3}"
[[ -x "$BIN" ]] || { echo "build it first: cargo build --release -p remexec-bin" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "needs iperf3: apt-get install iperf3" >&2; exit 1; }
TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$TMP"; }
trap cleanup EXIT
export REMEXEC_LOG=warn
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ip="$(port)"; iperf3 -s -B 127.0.0.1 -p "$ip" >/dev/null 2>&1 & PIDS+=($!)
sp="$(port)"; URL="grpc://127.0.0.1:$sp"
"$BIN" serve --listen "127.0.0.1:$sp" --data-dir "$TMP/serve" --no-fsync >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do "$BIN" bench find-missing --target "$URL" --count 1 >/dev/null 2>&1 && break; sleep 0.2; done
sleep 0.5
echo "| round | iperf3 loopback MB/s | ByteStream read 64 MiB MB/s | ratio |"
echo "|---|---|---|---|"
RATIOS=()
for round in $(seq "$ROUNDS"); do
  tcp="$(iperf3 -c 127.0.0.1 -p "$ip" -t 5 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e6)')"
  read="$("$BIN" bench cas-read --target "$URL" --size 64MiB --blobs 4 --concurrency 1 --count 40 --json \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); assert not r["errors"], r; print(r["throughput_bytes_per_s"]/1e6)')"
  ratio="$(python3 -c "print(f'{$read/$tcp:.2f}')")"
  RATIOS+=("$ratio")
  printf '| %s | %.0f | %.0f | %s |\n' "$round" "$tcp" "$read" "$ratio"
done
echo
echo "median ratio: $(printf '%s\n' "${RATIOS[@]}" | sort -n | sed -n "$(( (${#RATIOS[@]} + 1) / 2 ))p")"
