#!/usr/bin/env bash
# GetActionResult hits with and without the completeness check, alternating, in one run: what
# validating an entry and referencing its outputs costs a hit. Each hit returns the result of a
# compile (an object file, a dependency file and stderr, stored in the CAS by `remexec bench`).
#
#   remexec-bin/benches/ac-hits.sh [REMEXEC_BINARY [ROUNDS]]   (default: target/release/remexec, 3)
#
# Prints a Markdown table: p50 and ops/s at 1 client, ops/s at 64 clients.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/remexec}"
ROUNDS="${2:-3}"
[[ -x "$BIN" ]] || { echo "build it first: cargo build --release -p remexec-bin" >&2; exit 1; }
TMP="$(mktemp -d)"
PID=""
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
export REMEXEC_LOG=warn
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# field EXPR: EXPR of the JSON report `r`.
field() { python3 -c "import json,sys; r=json.load(sys.stdin); assert not r['errors'], r; print($1)"; }

echo "| round | check_completeness | 1 client p50 µs | 1 client ops/s | 64 clients ops/s |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for check in true false; do
    p="$(port)"; d="$TMP/$round-$check"; mkdir -p "$d"
    printf '[action_cache]\ncheck_completeness = %s\n' "$check" > "$d/config.toml"
    "$BIN" serve --config "$d/config.toml" --listen "127.0.0.1:$p" --data-dir "$d/data" >/dev/null 2>&1 & PID=$!
    for _ in $(seq 100); do "$BIN" bench find-missing --target "grpc://127.0.0.1:$p" --count 1 >/dev/null 2>&1 && break; sleep 0.2; done
    one="$("$BIN" bench ac-get --target "grpc://127.0.0.1:$p" --concurrency 1 --count 20000 --json | field "'%.0f | %.0f' % (r['p50_s'] * 1e6, r['ops_per_s'])")"
    many="$("$BIN" bench ac-get --target "grpc://127.0.0.1:$p" --concurrency 64 --count 100000 --json | field "'%.0f' % r['ops_per_s']")"
    echo "| $round | $check | $one | $many |"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  done
done
