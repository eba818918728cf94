#!/usr/bin/env bash
# Cluster mode next to a single node, in one run on this machine:
#   1. durable RecordProcessed throughput and p99 through `baton load`, single node on sled, then
#      the active node of a cluster (three etcd members on loopback, two Baton nodes);
#   2. etcd's database before and after, per decision, and after a compaction and defragmentation;
#   3. takeover time over KILLS kill -9 of the active node: from the kill to the first answered
#      admin request on the new active node.
# Needs `bash .ci/install-cluster-deps` and `cargo build --release --features cluster` first.
#   benches/cluster.sh [RECORDS] [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-20000}
KILLS=${2:-20}
BATON=target/release/baton
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- single node -------------------------------------------------------------------------------
P=$(port)
cat > "$WORK/single.toml" <<EOF
listen = "127.0.0.1:$P"
http_listen = ""
data_dir = "$WORK/single"
EOF
$BATON serve --config "$WORK/single.toml" 2>"$WORK/single.log" &
SINGLE=$!; PIDS+=($SINGLE)
until $BATON status --config "$WORK/single.toml" >/dev/null 2>&1; do sleep 0.1; done
echo "== single node on sled: durable RecordProcessed, 50 desktops x $RECORDS records"
$BATON load --config "$WORK/single.toml" --quiet --server-pid $SINGLE --transport tcp \
    --scenario processed --agents 50 --records "$RECORDS"
kill $SINGLE; wait $SINGLE 2>/dev/null || true

# --- three etcd members ------------------------------------------------------------------------
declare -a CP PP
for i in 0 1 2; do CP[$i]=$(port); PP[$i]=$(port); done
INITIAL="e0=http://127.0.0.1:${PP[0]},e1=http://127.0.0.1:${PP[1]},e2=http://127.0.0.1:${PP[2]}"
for i in 0 1 2; do
    etcd --name e$i --data-dir "$WORK/etcd$i" \
        --listen-client-urls http://127.0.0.1:${CP[$i]} --advertise-client-urls http://127.0.0.1:${CP[$i]} \
        --listen-peer-urls http://127.0.0.1:${PP[$i]} --initial-advertise-peer-urls http://127.0.0.1:${PP[$i]} \
        --initial-cluster "$INITIAL" --initial-cluster-state new --initial-cluster-token bench \
        --max-txn-ops 4096 --max-request-bytes 10485760 --logger zap --log-level error 2>/dev/null &
    PIDS+=($!); disown $!
done
ENDPOINTS="[\"http://127.0.0.1:${CP[0]}\", \"http://127.0.0.1:${CP[1]}\", \"http://127.0.0.1:${CP[2]}\"]"
dbsize() { curl -s -X POST "http://127.0.0.1:${CP[0]}/v3/maintenance/status" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["dbSize"])'; }
revision() { curl -s -X POST "http://127.0.0.1:${CP[0]}/v3/kv/range" -d '{"key":"AA=="}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'; }
until curl -s -X POST "http://127.0.0.1:${CP[0]}/v3/maintenance/status" -d '{}' | grep -q leader; do sleep 0.2; done

# --- two Baton nodes ---------------------------------------------------------------------------
declare -a BP NODEPID
for i in 0 1; do
    BP[$i]=$(port)
    cat > "$WORK/node$i.toml" <<EOF
listen = "127.0.0.1:${BP[$i]}"
http_listen = ""
data_dir = "$WORK/node$i"
[cluster]
etcd = $ENDPOINTS
node_id = "node$i"
advertise = "127.0.0.1:${BP[$i]}"
EOF
done
start_node() { $BATON serve --config "$WORK/node$1.toml" 2>>"$WORK/node$1.log" & NODEPID[$1]=$!; PIDS+=(${NODEPID[$1]}); disown "${NODEPID[$1]}"; }
start_node 0; start_node 1
NODES="127.0.0.1:${BP[0]},127.0.0.1:${BP[1]}"
until $BATON status --config "$WORK/node0.toml" --nodes "$NODES" >/dev/null 2>&1; do sleep 0.1; done
active() { $BATON cluster status --config "$WORK/node0.toml" --json | python3 -c 'import json,sys; a=json.load(sys.stdin)["active"]; print(a["node"][4:] if a else "")'; }

DB0=$(dbsize); REV0=$(revision)
A=$(active)
echo "== cluster (3 etcd members, 2 nodes; node$A active): durable RecordProcessed, 50 desktops x $RECORDS records"
$BATON load --config "$WORK/node0.toml" --nodes "$NODES" --quiet --server-pid ${NODEPID[$A]} --transport tcp \
    --scenario processed --agents 50 --records "$RECORDS"
DB1=$(dbsize); REV1=$(revision)
DECISIONS=$((RECORDS * 4))   # attach, two events, RecordProcessed: four acknowledged changes a record
echo "== etcd database: $DB0 -> $DB1 bytes over $((REV1 - REV0)) revisions: $(( (DB1 - DB0) / RECORDS )) bytes per record worked, $(( (DB1 - DB0) / DECISIONS )) per acknowledged change"
curl -s -X POST "http://127.0.0.1:${CP[0]}/v3/kv/compaction" -d "{\"revision\":\"$REV1\",\"physical\":true}" >/dev/null
for i in 0 1 2; do curl -s -X POST "http://127.0.0.1:${CP[$i]}/v3/maintenance/defragment" -d '{}' >/dev/null; done
echo "== after compaction to revision $REV1 and defragmentation: $(dbsize) bytes (the live state and audit log)"

# --- takeover times ----------------------------------------------------------------------------
echo "== $KILLS takeovers (kill -9 of the active node to the first answered Status on the new one)"
TIMES=()
for k in $(seq 1 "$KILLS"); do
    A=$(active)
    [ -n "$A" ] || { sleep 0.5; A=$(active); }
    T0=$(date +%s%N)
    kill -9 "${NODEPID[$A]}"
    until $BATON status --config "$WORK/node0.toml" --nodes "$NODES" >/dev/null 2>&1; do sleep 0.02; done
    T1=$(date +%s%N)
    MS=$(( (T1 - T0) / 1000000 )); TIMES+=($MS)
    echo "kill $k: node$A killed, new active after $MS ms"
    start_node "$A"
    # Wait until the restarted node reports itself a standby with every write.
    until $BATON cluster status --config "$WORK/node0.toml" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s["nodes"])==2 and all(n["caught_up"] for n in s["nodes"]) else 1)'; do sleep 0.2; done
done
printf '%s\n' "${TIMES[@]}" | sort -n | awk '{a[NR]=$1} END {printf "takeover over %d kills: median %d ms, worst %d ms\n", NR, a[int((NR+1)/2)], a[NR]}'
