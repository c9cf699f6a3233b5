#!/usr/bin/env bash
# Benchmarks of a cluster whose CAS is on its workers, as real processes on loopback: a
# scheduler with --replicas R and 3 workers with --listen, driven by `remexec bench`.
#
#   remexec-bin/benches/cluster.sh [REMEXEC_BINARY [SECTION...]]   (default: target/release/remexec, all)
#
# Prints Markdown tables, one per SECTION:
#   writes        ByteStream writes for R = 1, 2, 3 beside a scheduler that keeps blobs itself;
#   find-missing  FindMissingBlobs of 10,000 digests across 3 workers, beside `remexec serve`;
#   input-check   no-op Executes of actions with 64 nested input directories, on `serve` and on
#                 the cluster with and without the scheduler's small-blob cache;
#   repair        the time to re-replicate 1 GiB after a worker is SIGKILLed;
#   bazel         with BAZEL set (or bazel on PATH), the fixture build's wall time on the
#                 cluster beside `remexec serve`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/remexec}"
shift || true
SECTIONS=("$@")
(( ${#SECTIONS[@]} )) || SECTIONS=(writes find-missing input-check repair bazel)
want() { [[ " ${SECTIONS[*]} " == *" $1 "* ]]; }
[[ -x "$BIN" ]] || { echo "build it first: cargo build --release -p remexec-bin" >&2; exit 1; }
TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
export REMEXEC_LOG=warn

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_cluster R [SCHEDULER_FLAGS...]: a scheduler (--replicas R, or none for R=0) and 3
# workers; sets URL, WPIDS.
start_cluster() {
  local r="$1" sp; shift; sp="$(port)"; URL="grpc://127.0.0.1:$sp"; WPIDS=()
  local dir="$TMP/c$r-$RANDOM"; mkdir -p "$dir"
  local cas=("$(port)" "$(port)" "$(port)") seeds=""
  for p in "${cas[@]}"; do seeds+="${seeds:+,}grpc://127.0.0.1:$p"; done
  local flags=(--listen "127.0.0.1:$sp" --data-dir "$dir/s" --no-fsync)
  [[ "$r" != 0 ]] && flags+=(--replicas "$r" --storage "$seeds")
  "$BIN" scheduler "${flags[@]}" "$@" >/dev/null & PIDS+=($!)
  sleep 0.5
  printf '[cas]\nfsync = false\n[cluster]\nrepair_bandwidth = "%s"\n' "${REPAIR_BANDWIDTH:-0 B}" > "$dir/w.toml"
  for i in 1 2 3; do
    local wflags=(--scheduler "$URL" --name "w$i" --executors 1 --data-dir "$dir/w$i")
    [[ "$r" != 0 ]] && wflags+=(--listen "127.0.0.1:${cas[$((i-1))]}" --storage "$seeds" --replicas "$r" --disk-budget 8GiB)
    REMEXEC_CONFIG="$dir/w.toml" "$BIN" worker "${wflags[@]}" >/dev/null & PIDS+=($!); WPIDS+=($!)
  done
  if [[ "$r" != 0 ]]; then
    for _ in $(seq 100); do
      [[ "$("$BIN" cluster status --json --server "$URL" | python3 -c 'import json,sys; print(sum(m["state"]=="live" for m in json.load(sys.stdin)["members"]))')" == 3 ]] && return
      sleep 0.2
    done
    echo "cluster did not form" >&2; exit 1
  fi
}

# start_serve [FLAGS...]: `remexec serve` on its own; sets URL.
start_serve() {
  local sp; sp="$(port)"; URL="grpc://127.0.0.1:$sp"
  "$BIN" serve --listen "127.0.0.1:$sp" --data-dir "$TMP/serve-$RANDOM" --no-fsync "$@" >/dev/null & PIDS+=($!)
  for _ in $(seq 100); do "$BIN" cas upload --server "$URL" "$0" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "serve did not start" >&2; exit 1
}

stop_cluster() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; PIDS=(); }

bench() { "$BIN" bench "$@" --target "$URL" --json; }
row() { python3 -c 'import json,sys; r=json.load(sys.stdin); print("| %s | %d | %d | %.0f | %.1f MiB/s | %.2f | %.2f |" % (sys.argv[1], r["ops"], r["errors"], r["ops_per_s"], r.get("throughput_bytes_per_s",0)/1048576, r["p50_s"]*1000, r["p99_s"]*1000))' "$1"; }

if want writes; then
echo "| ByteStream write, 1 MiB blobs, 8 clients | ops | errors | ops/s | throughput | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
for r in 0 1 2 3; do
  start_cluster "$r"
  label="R = $r"; [[ "$r" == 0 ]] && label="scheduler keeps blobs (no cluster)"
  bench cas-write --size 1MiB --concurrency 8 --count 800 | row "$label"
  stop_cluster
done
echo
fi

if want find-missing; then
echo "| FindMissingBlobs, 10,000 digests, half present, 1 client | ops | errors | ops/s | | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
start_serve
bench find-missing --batch-size 10000 --hit-ratio 0.5 --count 40 --concurrency 1 | row "remexec serve"
bench find-missing --batch-size 10000 --hit-ratio 0.5 --count 200 --concurrency 1 | row "remexec serve (200)"
stop_cluster
start_cluster 2
bench find-missing --batch-size 10000 --hit-ratio 0.5 --count 40 --concurrency 1 | row "cluster: R = 2, 3 workers"
bench find-missing --batch-size 10000 --hit-ratio 0.5 --count 200 --concurrency 1 | row "cluster: R = 2, 3 workers (200)"
bench find-missing --batch-size 10000 --hit-ratio 0 --count 200 --concurrency 1 | row "cluster: none present (200)"
bench find-missing --batch-size 10000 --hit-ratio 1 --count 200 --concurrency 1 | row "cluster: all present (200)"
stop_cluster
echo
fi

if want input-check; then
# An Execute's input check alone: each action's input root is 64 nested directories whose
# deepest file is missing, so the scheduler walks it all and answers FAILED_PRECONDITION.
check() { bench execute --input-dirs 64 --missing-input --count 300 --concurrency 1 | row "$1"; }
echo "| Execute's input check, 64 nested input directories, 1 client | ops | errors | ops/s | | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
start_serve
check "remexec serve"
stop_cluster
printf '[cluster]\nsmall_blob_cache = 0\n' > "$TMP/no-cache.toml"
start_cluster 2 --config "$TMP/no-cache.toml"
check "cluster, no small-blob cache"
stop_cluster
start_cluster 2
check "cluster, small-blob cache (64 MiB)"
stop_cluster
echo
fi

if want repair; then
start_cluster 2
# 1 GiB in 1 MiB blobs, then a worker lost: time until nothing is below R.
bench cas-write --size 1MiB --concurrency 8 --count 1024 >/dev/null
kill -9 "${WPIDS[0]}"
start=$(date +%s.%N)
sleep 1
while :; do
  below="$("$BIN" cluster status --json --server "$URL" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["below_replicas"], sum(m["state"]=="live" for m in s["members"]))')"
  [[ "$below" == "0 2" ]] && break
  sleep 0.1
done
end=$(date +%s.%N)
echo "Re-replication after a worker holding about 2/3 of 1 GiB (R = 2) was SIGKILLed: $(python3 -c "print(round($end-$start,2))") s until no blob is below R (repair_bandwidth ${REPAIR_BANDWIDTH:-unlimited})."
stop_cluster
fi

BAZEL="${BAZEL:-$(command -v bazel || true)}"
if want bazel && [[ -n "$BAZEL" ]]; then
  echo
  echo "| fixture build (//... //gen:slow), cold cache | wall time |"
  echo "|---|---|"
  sp="$(port)"; "$BIN" serve --listen "127.0.0.1:$sp" --data-dir "$TMP/serve" --executors 3 --no-fsync >/dev/null & PIDS+=($!)
  sleep 1
  t="$( { BAZEL="$BAZEL" bash remexec-bin/tests/fixtures/bazel/cluster_build.sh "grpc://127.0.0.1:$sp" "$TMP/log1.json" 2>&1 || true; } | grep -o 'Elapsed time: [0-9.]*s' | head -1)"
  echo "| remexec serve, 3 executors | ${t#Elapsed time: } |"
  stop_cluster
  start_cluster 2
  t="$( { BAZEL="$BAZEL" bash remexec-bin/tests/fixtures/bazel/cluster_build.sh "$URL" "$TMP/log2.json" 2>&1 || true; } | grep -o 'Elapsed time: [0-9.]*s' | head -1)"
  echo "| cluster: scheduler + 3 workers × 1 executor, R = 2 | ${t#Elapsed time: } |"
  stop_cluster
fi
