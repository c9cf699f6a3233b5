#!/usr/bin/env bash
# A thousand-action Bazel build (bazel_workspace.py: C++ libraries in a DAG of depth 10,
# genrules and tests), timed in one run, each build after `bazel clean`:
#   local       a sandboxed local build (`--spawn_strategy=sandboxed`), the yardstick;
#   disk fill   the same with `--disk_cache`, filling it; disk hits: again, every action a hit;
#   serve       remote execution on `remexec serve`; serve hits: again, every action a hit;
#   cluster     remote execution on 2 schedulers (--peer, --replicas 2) and 3 workers.
# Every build runs with Bazel's default --jobs (one per core, as the local build needs); the
# remote builds also run as a remote user would, with more jobs than cores: hits at --jobs=8
# (against --disk_cache hits at --jobs=8) and a cold build at --jobs=4
# (--noremote_accept_cached on the same server).
#
#   remexec-bin/benches/thousand-actions.sh [REMEXEC_BINARY [LEVELS WIDTH]]   (default: target/release/remexec, 10 18)
#
# Needs Bazel 4.2.3 (Debian's; .ci/test installs it) and the fixture's offline overrides.
# Prints the wall times (`bazel test //...`, analysis included) and the ratios of the targets:
# serve cold / local, serve hits / disk hits, cluster / serve.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${1:-target/release/remexec}")"
LEVELS="${2:-10}" WIDTH="${3:-18}"
[[ -x "$BIN" ]] || { echo "build it first: cargo build --release -p remexec-bin" >&2; exit 1; }
E2E_NAME=thousand-actions
# shellcheck source=../tests/fixtures/bazel/lib.sh
source remexec-bin/tests/fixtures/bazel/lib.sh
e2e_setup remexec-bazel-build grpc://unused
rm -rf "$WS"
python3 remexec-bin/benches/bazel_workspace.py "$WS" --levels "$LEVELS" --width "$WIDTH" >&2
e2e_common_flags
PIDS=()
stop() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; PIDS=(); }
trap 'stop; e2e_cleanup' EXIT
export REMEXEC_LOG=warn
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# timed NAME FLAGS...: `bazel clean`, then `bazel test //...` with FLAGS; prints the seconds.
timed() {
  local name="$1"; shift
  (cd "$WS" && "$BAZEL" "${STARTUP_FLAGS[@]}" clean >/dev/null 2>&1)
  local t0 t1; t0="$(date +%s.%N)"
  run_bazel "$name" test //... "$@" >&2
  t1="$(date +%s.%N)"
  python3 -c "print(f'{$t1 - $t0:.1f}')"
}
remote() { echo --spawn_strategy=remote "--remote_executor=$1" --remote_local_fallback=false; }

# Loading and analysis once, untimed, so that no build pays the server's warm-up.
run_bazel warmup build --nobuild //... >&2

LOCAL="$(timed local --spawn_strategy=sandboxed)"
DISK_FILL="$(timed disk-fill --spawn_strategy=sandboxed "--disk_cache=$TMP/disk-cache")"
DISK_HITS="$(timed disk-hits --spawn_strategy=sandboxed "--disk_cache=$TMP/disk-cache")"
DISK_HITS8="$(timed disk-hits-j8 --spawn_strategy=sandboxed "--disk_cache=$TMP/disk-cache" --jobs=8)"
log "local: $(processes_line "$LOGS/local.log"); disk hits: $(processes_line "$LOGS/disk-hits.log")"

sp="$(port)"
"$BIN" serve --listen "127.0.0.1:$sp" --data-dir "$TMP/serve" >"$TMP/serve.log" 2>&1 & PIDS+=($!); disown
for _ in $(seq 100); do "$BIN" cas upload --server "grpc://127.0.0.1:$sp" "$0" >/dev/null 2>&1 && break; sleep 0.1; done
read -r -a FLAGS <<< "$(remote "grpc://127.0.0.1:$sp")"
SERVE="$(timed serve "${FLAGS[@]}")"
assert_all_kind serve remote "executed remotely" >/dev/null
SERVE_HITS="$(timed serve-hits "${FLAGS[@]}")"
log "serve hits: $(assert_all_remote_hits serve-hits)"
SERVE_HITS8="$(timed serve-hits-j8 "${FLAGS[@]}" --jobs=8)"
SERVE4="$(timed serve-j4 "${FLAGS[@]}" --noremote_accept_cached --jobs=4)"
assert_all_kind serve-j4 remote "executed remotely" >/dev/null
stop

# 2 schedulers sharing the Action Cache, 3 workers holding the CAS with 2 copies of each blob.
s=("$(port)" "$(port)") w=("$(port)" "$(port)" "$(port)")
storage="" peers=() schedulers=""
for p in "${w[@]}"; do storage+="${storage:+,}grpc://127.0.0.1:$p"; done
for p in "${s[@]}"; do peers+=(--peer "grpc://127.0.0.1:$p"); schedulers+="${schedulers:+,}grpc://127.0.0.1:$p"; done
for i in 0 1; do
  "$BIN" scheduler --listen "127.0.0.1:${s[$i]}" --data-dir "$TMP/s$i" --replicas 2 --storage "$storage" \
    "${peers[@]}" --advertise "grpc://127.0.0.1:${s[$i]}" >"$TMP/s$i.log" 2>&1 & PIDS+=($!); disown
done
for i in 0 1 2; do
  "$BIN" worker --scheduler "$schedulers" --listen "127.0.0.1:${w[$i]}" --storage "$storage" --replicas 2 \
    --name "w$i" --data-dir "$TMP/w$i" >"$TMP/w$i.log" 2>&1 & PIDS+=($!); disown
done
URL="grpc://127.0.0.1:${s[0]}"
for _ in $(seq 150); do
  [[ "$("$BIN" cluster status --json --server "$URL" 2>/dev/null | python3 -c 'import json,sys; print(sum(m["state"]=="live" for m in json.load(sys.stdin)["members"]))' 2>/dev/null)" == 3 ]] && break
  sleep 0.2
done
read -r -a FLAGS <<< "$(remote "$URL")"
CLUSTER="$(timed cluster "${FLAGS[@]}")"
assert_all_kind cluster remote "executed remotely" >/dev/null
stop

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "| build | seconds |"
echo "|---|---|"
echo "| local, sandboxed | $LOCAL |"
echo "| local, filling --disk_cache | $DISK_FILL |"
echo "| local, --disk_cache hits | $DISK_HITS |"
echo "| remote on serve, cold | $SERVE |"
echo "| remote on serve, hits | $SERVE_HITS |"
echo "| local, --disk_cache hits, --jobs=8 | $DISK_HITS8 |"
echo "| remote on serve, hits, --jobs=8 | $SERVE_HITS8 |"
echo "| remote on serve, cold, --jobs=4 | $SERVE4 |"
echo "| remote on a cluster (2 schedulers, 3 workers), cold | $CLUSTER |"
echo
echo "default --jobs: serve cold / local $(ratio "$SERVE" "$LOCAL") (target <= 1.0); serve hits / disk hits $(ratio "$SERVE_HITS" "$DISK_HITS") (target <= 1.05); cluster / serve $(ratio "$CLUSTER" "$SERVE") (target <= 1.1)"
echo "remote --jobs: serve cold at 4 / local $(ratio "$SERVE4" "$LOCAL"); serve hits at 8 / disk hits at 8 $(ratio "$SERVE_HITS8" "$DISK_HITS8")"
