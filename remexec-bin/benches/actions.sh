#!/usr/bin/env bash
# The cost of one action against the machine's own cost of one process, in one run: no-op
# Executes through `remexec serve` (each isolation backend this host has), beside `remexec
# bench spawn` (start /bin/true here and wait: fork+exec, no server).
#
#   remexec-bin/benches/actions.sh [REMEXEC_BINARY [BACKEND...]]   (default: target/release/remexec, process namespaces)
#
# BACKEND is process, namespaces or docker (docker needs the remexec-test:latest image). Prints
# a Markdown table of p50 latency at 1 client and throughput at 64 clients, each with its ratio
# to spawn's, then the phases of the 1-client runs (from the actions' ExecutedActionMetadata).
# Run it as root for the production set-up (actions as the unprivileged remexec-action user).
# CLIENT=BINARY runs the load from another remexec binary (an A/B of servers with one client).
# PACED=N (default 15) also times, for each backend, N single actions a second apart, as a
# build's actions come rather than back to back, and prints their p50.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/remexec}"
shift || true
BACKENDS=("$@")
(( ${#BACKENDS[@]} )) || BACKENDS=(process namespaces)
[[ -x "$BIN" ]] || { echo "build it first: cargo build --release -p remexec-bin" >&2; exit 1; }
TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$TMP"; }
trap cleanup EXIT
export REMEXEC_LOG=warn
ONE="${ONE:-500}"       # operations at 1 client
MANY="${MANY:-3000}"    # operations at 64 clients
EXECUTORS="${EXECUTORS:-32}"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print(r[\"$1\"])"; }

# bench WORKLOAD URL CONCURRENCY COUNT: the JSON report.
CLIENT="${CLIENT:-$BIN}"
bench() { "$CLIENT" bench "$1" --target "$2" --concurrency "$3" --count "$4" --json; }

start_serve() {
  local sp; sp="$(port)"; URL="grpc://127.0.0.1:$sp"
  "$BIN" serve --listen "127.0.0.1:$sp" --data-dir "$TMP/serve-$RANDOM" --no-fsync \
    --executors "$EXECUTORS" --isolation "$1" >"$TMP/serve-$1.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 100); do
    bench execute "$URL" 1 1 >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "serve --isolation $1 did not start: $(tail -3 "$TMP/serve-$1.log")" >&2; exit 1
}

# p50 of PACED single actions a second apart, in ms: "| BACKEND | P50 ms |".
paced() {
  local times=()
  for _ in $(seq "${PACED:-15}"); do
    sleep 1
    times+=("$(bench execute "$URL" 1 1 | field p50_s)")
  done
  python3 -c "import statistics,sys; print(f'| {sys.argv[1]} | {statistics.median(map(float, sys.argv[2:]))*1000:.1f} ms |')" \
    "$1" "${times[@]}"
}
PACED_ROWS=""

spawn1="$(bench spawn none 1 "$ONE")"
spawn64="$(bench spawn none 64 "$MANY")"
s_p50="$(field p50_s <<<"$spawn1")"; s_rate="$(field ops_per_s <<<"$spawn64")"
echo "| what | p50 at 1 client | ratio to spawn | ops/s at 64 clients | share of spawn's |"
echo "|---|---|---|---|---|"
printf '| spawn (/bin/true, no server) | %.3f ms | 1.00 | %.0f | 1.00 |\n' \
  "$(python3 -c "print($s_p50*1000)")" "$s_rate"
PHASES=""
for backend in "${BACKENDS[@]}"; do
  start_serve "$backend"
  one="$(bench execute "$URL" 1 "$ONE")"
  many_count="$MANY"
  if [[ "$backend" == docker ]]; then one="$(bench execute "$URL" 1 60)"; many_count=200; fi
  many="$(bench execute "$URL" 64 "$many_count")"
  python3 - "$backend" "$s_p50" "$s_rate" "$one" "$many" <<'PY'
import json, sys
backend, s_p50, s_rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
one, many = json.loads(sys.argv[4]), json.loads(sys.argv[5])
for r in (one, many):
    if r["errors"]:
        sys.exit(f"{backend}: {r['errors']} errors, first: {r.get('first_error')}")
print(f"| execute, {backend} | {one['p50_s']*1000:.3f} ms | {one['p50_s']/s_p50:.2f} | "
      f"{many['ops_per_s']:.0f} | {many['ops_per_s']/s_rate:.2f} |")
PY
  PHASES+="$backend $one"$'\n'
  PACED_ROWS+="$(paced "$backend")"$'\n'
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
done
echo
echo "Phases at 1 client, p50 in ms:"
echo
python3 - <<PY
import json
rows = [l.split(" ", 1) for l in """$PHASES""".strip().splitlines()]
reports = [(b, json.loads(r)) for b, r in rows]
names = [p["name"] for p in reports[0][1].get("phases", [])]
print("| phase | " + " | ".join(b for b, _ in reports) + " |")
print("|---|" + "---|" * len(reports))
for i, name in enumerate(names):
    print(f"| {name} | " + " | ".join(f"{r['phases'][i]['p50_s']*1000:.3f}" for _, r in reports) + " |")
PY
echo
echo "Single actions a second apart (PACED=${PACED:-15}), p50:"
echo
echo "| backend | p50 |"
echo "|---|---|"
printf '%s' "$PACED_ROWS"
