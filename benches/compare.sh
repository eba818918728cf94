#!/usr/bin/env bash
# Baton next to Redis on the same machine, in one run: durable writes and reads at 50 clients.
#
#   benches/compare.sh
#
# Starts Baton (cargo build --release) on a temporary data dir and port and, if `redis-server` and
# `redis-benchmark` are on PATH, a Redis with `--appendonly yes --appendfsync always --save ""` (every
# write on disk before the reply, as Baton does) on another temporary dir and port. Then:
#
#   durable write  Baton `load --scenario processed` (RecordProcessed)  vs  redis-benchmark -t set
#   read           Baton `load --scenario get`       (GetRecord)        vs  redis-benchmark -t get
#
# and prints, for each side, requests/s, p50 and p99 in ms, `server CPU` (the server's CPU time in ms
# per 1,000 requests) and `client CPU` (the same for its load generator), then the ratios Baton/Redis
# of each column (for `server CPU`: how much more CPU a Baton request costs the server than a Redis
# one). It installs nothing: without Redis it says so and prints Baton's figures alone. Both servers
# are stopped on exit.
#
# CPU time is user + system of a whole process (all its threads), taken over the measured phase
# only and divided by the requests counted in requests/s, so that neither server is judged by its
# client, which shares the machine:
#   server CPU  utime + stime from /proc/PID/stat (clock ticks, normally 10 ms). Baton: read by
#               `baton load --server-pid` when its timed requests start (desktops logged in, records
#               handed out) and when the last is answered. Redis: read here just before and just
#               after the redis-benchmark run that gives requests/s (its whole run is measured).
#   client CPU  `baton load` reads its own /proc/self/stat over the same phase; redis-benchmark's
#               is the rusage the kernel reports for it when it exits (microseconds).
#
# Sizes can be changed through the environment:
#   CLIENTS (50), BATON_PROCESSED (20000 records), BATON_GETS (200000 requests),
#   REDIS_REQUESTS (100000), REDIS_DATA_BYTES (redis-benchmark -d, default 3: its own default).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-50}
BATON_PROCESSED=${BATON_PROCESSED:-20000}
BATON_GETS=${BATON_GETS:-200000}
REDIS_REQUESTS=${REDIS_REQUESTS:-100000}
REDIS_DATA_BYTES=${REDIS_DATA_BYTES:-3}

command -v python3 >/dev/null || { echo "compare.sh needs python3 to read the results" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/baton-compare.XXXXXX")
BATON_PID=""
REDIS_PID=""

cleanup() {
    local pid
    for pid in "$BATON_PID" "$REDIS_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID NAME LOG: until PORT accepts connections, failing if PID dies or 30 s pass.
wait_port() {
    local port=$1 pid=$2 name=$3 log=$4
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before accepting connections; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name did not accept connections on port $port within 30 s; its log:" >&2
    cat "$log" >&2
    exit 1
}

# ----- Baton -----------------------------------------------------------------------------------

echo "building Baton (cargo build --release)..." >&2
cargo build --release --quiet
BATON=target/release/baton

BATON_PORT=$(free_port)
mkdir -p "$TMP/baton-data"
CONFIG="$TMP/baton.toml"
cat >"$CONFIG" <<EOF
listen = "127.0.0.1:$BATON_PORT"
http_listen = ""
data_dir = "$TMP/baton-data"
max_connections = 10000
EOF

"$BATON" serve --config "$CONFIG" >"$TMP/baton.log" 2>&1 &
BATON_PID=$!
wait_port "$BATON_PORT" "$BATON_PID" "baton" "$TMP/baton.log"

# baton_load SCENARIO COUNT OUTFILE: runs the load tool, keeps its JSON summary.
baton_load() {
    local scenario=$1 count=$2 out=$3
    echo "baton load --scenario $scenario --agents $CLIENTS --records $count ..." >&2
    if ! "$BATON" load --config "$CONFIG" --scenario "$scenario" --agents "$CLIENTS" \
        --records "$count" --server-pid "$BATON_PID" --json --quiet >"$out" 2>"$out.err"; then
        echo "warning: baton load --scenario $scenario reported a problem:" >&2
        cat "$out.err" >&2
    fi
}
baton_load processed "$BATON_PROCESSED" "$TMP/baton-processed.json"
baton_load get "$BATON_GETS" "$TMP/baton-get.json"

# ----- Redis -----------------------------------------------------------------------------------

HAVE_REDIS=0
REDIS_VERSION=""
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    HAVE_REDIS=1
    REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
    REDIS_PORT=$(free_port)
    mkdir -p "$TMP/redis-data"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP/redis-data" \
        --appendonly yes --appendfsync always --save "" --daemonize no \
        >"$TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_port "$REDIS_PORT" "$REDIS_PID" "redis-server" "$TMP/redis.log"

    # cpu_of SERVER_PID OUT -- COMMAND...: runs COMMAND (its output goes where this function's
    # goes) and writes to OUT, as JSON, the CPU time in ms SERVER_PID used while it ran
    # (/proc/PID/stat, before the start and after the exit) and the CPU time COMMAND itself used
    # (its rusage at exit, all its threads). Exits with COMMAND's status.
    cpu_of() {
        python3 -c '
import json, os, sys

server_pid, out, cmd = sys.argv[1], sys.argv[2], sys.argv[4:]

def server_cpu_ms():
    try:
        with open(f"/proc/{server_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime (fields 14 and 15), in clock ticks; fields[0] is field 3.
        return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None

before = server_cpu_ms()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
after = server_cpu_ms()
with open(out, "w") as f:
    json.dump({
        "server_cpu_ms": after - before if before is not None and after is not None else None,
        "client_cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000.0,
    }, f)
sys.exit(os.waitstatus_to_exitcode(status))
' "$@"
    }

    # redis_bench TEST OUTPREFIX: --csv for requests/s (and percentiles on Redis >= 7) and the CPU
    # times of the run, plus the full report, whose latency distribution gives percentiles on older
    # versions.
    redis_bench() {
        local test=$1 out=$2
        local args=(-h 127.0.0.1 -p "$REDIS_PORT" -c "$CLIENTS" -n "$REDIS_REQUESTS" -d "$REDIS_DATA_BYTES" -t "$test")
        echo "redis-benchmark ${args[*]} --csv ..." >&2
        cpu_of "$REDIS_PID" "$out.cpu.json" -- redis-benchmark "${args[@]}" --csv >"$out.csv" 2>"$out.err" || true
        if ! grep -qi 'p50' "$out.csv"; then
            echo "redis-benchmark ${args[*]} --precision 3 (for percentiles) ..." >&2
            redis-benchmark "${args[@]}" --precision 3 >"$out.txt" 2>/dev/null || true
        fi
    }
    redis_bench set "$TMP/redis-set"
    redis_bench get "$TMP/redis-get"
else
    echo >&2
    echo "Redis is not installed (redis-server and redis-benchmark must be on PATH);" >&2
    echo "printing Baton's figures alone. On Debian/Ubuntu: sudo apt-get install redis-server" >&2
fi

# ----- Report ----------------------------------------------------------------------------------

python3 - "$TMP" "$HAVE_REDIS" "$CLIENTS" "$REDIS_VERSION" "$REDIS_REQUESTS" <<'PY'
import csv, json, os, re, sys

tmp, have_redis, clients, redis_version = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
redis_requests = int(sys.argv[5])
notes = []

def baton(name, request):
    path = os.path.join(tmp, f"baton-{name}.json")
    try:
        with open(path) as f:
            summary = json.load(f)
        t = summary["requests"][request]
    except (OSError, ValueError, KeyError) as e:
        notes.append(f"Baton {request}: no figures ({e})")
        return None
    if summary.get("errors"):
        notes.append(f"Baton {request}: errors during the run: {summary['errors']}")
    # CPU per 1,000 requests of the measured phase, as `baton load` reports it; its requests are
    # those counted in requests/s (the scenario sends one type only).
    if summary.get("measured_requests") != t["count"]:
        notes.append(f"Baton {request}: CPU divided by {summary.get('measured_requests')} "
                     f"requests, requests/s counts {t['count']}")
    if summary.get("server_cpu_ms_per_1k") is None:
        notes.append(f"Baton {request}: the load tool could not read the server's CPU time")
    return {"rps": t["per_second"], "p50": t["p50_us"] / 1000.0, "p99": t["p99_us"] / 1000.0,
            "server_cpu": summary.get("server_cpu_ms_per_1k"),
            "client_cpu": summary.get("client_cpu_ms_per_1k")}

def redis(prefix, test):
    res = {"rps": None, "p50": None, "p99": None, "server_cpu": None, "client_cpu": None}
    # CPU of the --csv run, whose requests/s is shown: ms in all, per 1,000 of its requests.
    try:
        with open(os.path.join(tmp, f"redis-{prefix}.cpu.json")) as f:
            cpu = json.load(f)
        for side in ("server", "client"):
            if cpu[f"{side}_cpu_ms"] is not None:
                res[f"{side}_cpu"] = cpu[f"{side}_cpu_ms"] * 1000.0 / redis_requests
    except (OSError, ValueError, KeyError) as e:
        notes.append(f"Redis {test}: no CPU figures ({e})")
    try:
        with open(os.path.join(tmp, f"redis-{prefix}.csv")) as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError:
        rows = []
    header = None
    for row in rows:
        if row[0].lower() == "test":
            header = [h.lower() for h in row]
        elif row[0].upper().startswith(test):
            if header:
                rec = dict(zip(header, row))
                res["rps"] = float(rec.get("rps", "nan"))
                if "p50_latency_ms" in rec:
                    res["p50"] = float(rec["p50_latency_ms"])
                if "p99_latency_ms" in rec:
                    res["p99"] = float(rec["p99_latency_ms"])
            elif len(row) > 1:
                res["rps"] = float(row[1])
    txt = os.path.join(tmp, f"redis-{prefix}.txt")
    if res["p50"] is None and os.path.exists(txt):
        with open(txt) as f:
            text = f.read()
        # Redis 6: "50.000% <= 0.303 milliseconds (cumulative count 50321)"
        # Redis <= 5: "50.00% <= 1 milliseconds" (cumulative; the first line at or over a percentile)
        points = [(float(p), float(ms)) for p, ms in
                  re.findall(r"^\s*([0-9.]+)% <= ([0-9.]+) milliseconds", text, re.M)]
        def at(q):
            return next((ms for p, ms in points if p >= q), None)
        if points:
            res["p50"], res["p99"] = at(50.0), at(99.0)
            notes.append(f"Redis {test} percentiles read from the latency distribution "
                         "(upper bounds of its buckets)")
        if res["rps"] is None:
            m = re.search(r"([0-9.]+) requests per second", text)
            if m:
                res["rps"] = float(m.group(1))
    if res["rps"] is None:
        notes.append(f"Redis {test}: redis-benchmark output could not be parsed")
    elif res["p50"] is None:
        notes.append(f"Redis {test}: this redis-benchmark prints no parseable percentiles; "
                     "only requests/s shown")
    return res

def fmt(v, spec):
    return format(v, spec) if v is not None else "n/a"

def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "n/a"

# One line of the table: label, then requests/s, p50, p99, server and client CPU per 1k requests,
# each already a string.
def line(label, rps, p50, p99, server_cpu, client_cpu):
    text = f"{label:<34} {rps:>11} {p50:>9} {p99:>9} {server_cpu:>11} {client_cpu:>11}"
    print(text.rstrip())

def figures(label, x):
    line(label, fmt(x["rps"], ".0f"), fmt(x["p50"], ".3f"), fmt(x["p99"], ".3f"),
         fmt(x["server_cpu"], ".2f"), fmt(x["client_cpu"], ".2f"))

rows = [
    ("durable write", "Baton RecordProcessed", baton("processed", "RecordProcessed"),
     "Redis SET (appendfsync always)", "set", "SET"),
    ("read", "Baton GetRecord", baton("get", "GetRecord"), "Redis GET", "get", "GET"),
]
print()
print(f"{clients} clients each side" + (f", Redis {redis_version}" if redis_version else ""))
line("", "requests/s", "p50 ms", "p99 ms", "server CPU", "client CPU")
line("", "", "", "", "ms/1k req", "ms/1k req")
for title, bname, b, rname, prefix, test in rows:
    print(f"-- {title}")
    if b:
        figures(bname, b)
    else:
        line(bname, "n/a", "", "", "", "")
    if have_redis:
        r = redis(prefix, test)
        figures(rname, r)
        if b:
            line("  Baton/Redis", *(ratio(b[k], r[k])
                                   for k in ("rps", "p50", "p99", "server_cpu", "client_cpu")))
if not have_redis:
    notes.append("Redis not installed: no comparison (sudo apt-get install redis-server)")
for n in notes:
    print(f"note: {n}")
PY
