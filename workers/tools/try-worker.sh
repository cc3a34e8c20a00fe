#!/usr/bin/env bash
# Tries one worker command by hand on a fresh local backbone, until `rig verify` does it:
# `rig up`, a seeded plan's workload published (produce.py), the worker started in its own
# process group, an optional event-store freeze, a clean stop, the stores read back
# (collect.py) and rig-verify's checker run offline on the files.
#
#   workers/tools/try-worker.sh OUT_DIR 'WORKER COMMAND' [SEED [EVENTS [CLAIM_PERMILLE]]]
#   env: RUN_SECONDS (30), FREEZE_AT / FREEZE_FOR (seconds after the worker starts: SIGSTOP
#        the event store, then SIGCONT), KILL_AT (SIGKILL the worker then start it again)
#
# The history holds the producer's publishes and the fault windows only (the deliveries, acks
# and nacks come with our Pub/Sub service's history recording), so `liveness` reports every
# message as never delivered: judge the other properties.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="$1" worker="$2" seed="${3:-7}" events="${4:-300}" claim="${5:-30}"
mkdir -p "$out"
cargo build -q --release --bin rig
cargo build -q -p rig-verify --examples

rig_pid="" worker_pid=""
cleanup() {
    [ -n "$worker_pid" ] && kill -KILL -- "-$worker_pid" 2>/dev/null || true
    if [ -n "$rig_pid" ]; then kill -TERM "$rig_pid" 2>/dev/null || true; wait "$rig_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

rm -f "$out/backbone.env"
target/release/rig up --env-file "$out/backbone.env" >/dev/null 2>"$out/rig-up.err" &
rig_pid=$!
until [ -s "$out/backbone.env" ]; do
    kill -0 "$rig_pid" 2>/dev/null || { tail "$out/rig-up.err" >&2; exit 2; }
    sleep 0.2
done
# shellcheck disable=SC1091
. "$out/backbone.env"
export BACKBONE_RAW_SUBSCRIPTION=events.raw.worker BACKBONE_MERGED_TOPIC=events.merged \
    BACKBONE_DEAD_LETTER_TOPIC=events.dlq BACKBONE_MAX_DELIVERY_ATTEMPTS=5 \
    RIG_VERIFY_RUN="try" RIG_VERIFY_WORKER="$worker"
store_pid="$(sed -n 's/^ *event-store-db *pid \([0-9]*\).*/\1/p' "$out/rig-up.err")"

target/debug/examples/plan "$seed" "$out/plan.json" "$events" 12 "$claim" >&2
python3 workers/tools/produce.py "$out/plan.json" "$out"

fault() { # id kind edge: appends a planned fault's edge to the history
    python3 - "$out/history.jsonl" "$1" "$2" "$3" <<'PY'
import json, sys, time
path, fault, kind, edge = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seq = sum(1 for _ in open(path))
with open(path, "a") as h:
    h.write(json.dumps({"seq": seq, "at_ms": int(time.time() * 1000), "kind": edge,
                        "fault": fault, "fault_kind": kind, "target": "event_store" if kind.startswith("event") else "worker"}) + "\n")
PY
}

start_worker() {
    setsid bash -c "exec $worker" >>"$out/worker.out" 2>>"$out/worker.err" &
    worker_pid=$!
}
start_worker
elapsed=0
while [ "$elapsed" -lt "${RUN_SECONDS:-30}" ]; do
    sleep 1
    elapsed=$((elapsed + 1))
    if [ "$elapsed" = "${FREEZE_AT:-}" ]; then
        fault 1 event_store_freeze fault_start; kill -STOP "$store_pid"
        sleep "${FREEZE_FOR:-5}"; kill -CONT "$store_pid"; fault 1 event_store_freeze fault_end
    fi
    if [ "$elapsed" = "${KILL_AT:-}" ]; then
        fault 2 worker_kill fault_start; kill -KILL -- "-$worker_pid"; wait "$worker_pid" 2>/dev/null || true
        start_worker; fault 2 worker_kill fault_end
    fi
done
kill -TERM -- "-$worker_pid" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL -- "-$worker_pid" 2>/dev/null || true
wait "$worker_pid" 2>/dev/null || true
worker_pid=""
python3 workers/tools/collect.py "$out"
target/debug/examples/check "$out" "workers/tools/try-worker.sh $out '$worker' $seed $events $claim" || true
