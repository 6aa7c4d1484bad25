#!/usr/bin/env bash
# WebSocket fan-out per engine node on the local RabbitMQ cluster
# (docs/SCALE-OUT.md, "Measured per-node figures"): runs `movewatch demo
# --cluster --nodes 2` with a simulated fleet, then, for each K in CLIENTS,
# connects K WebSocket clients to ONE node's /ws with the control-room token,
# subscribed to `fleet`, and counts over a window what they receive: frames/s
# per client and in total, the share of `position` frames of vans the OTHER
# node owns (they reach this node over the live exchange), the node's RSS
# before and with the clients, its CPU, and the gateway's metrics
# (movewatch_live_dropped_total, movewatch_ws_conflated_total), and for the
# first client an estimate of owner's receipt -> client. The points the
# nodes stored in the same window (positions.received_at) are the frames a
# fleet client should get. One JSON line per K; the results and caveats are
# in docs/SCALE-OUT.md.
#
#   bash scripts/cluster-fanout.sh BIN [CLIENTS] [VEHICLES] [INTERVAL] [WARMUP_S] [WINDOW_S] [NODE]
#   e.g. bash scripts/cluster-fanout.sh target/debug/movewatch "1 100 500" 300 1s 20 30 n1
#
# Environment: MW_CLUSTER_BASE_PORT (the cluster's base port, as for
# scripts/cluster.sh; passed to the demo as --cluster-base-port; default
# 5800), MW_FANOUT_DB (the demo's database, dropped and re-created at start;
# default postgres://postgres@127.0.0.1:5432/movewatch_fanout).
#
# Needs `bash scripts/cluster.sh up`, PostgreSQL, python3 (standard library
# only: the client speaks the WebSocket protocol itself, so a client costs
# little CPU beside the server on the same machine).
set -euo pipefail
BIN=${1:?movewatch binary}
CLIENTS=${2:-1 100 500}
VEHICLES=${3:-300}
INTERVAL=${4:-1s}
WARMUP=${5:-20}
WINDOW=${6:-30}
NODE=${7:-n1}
BASE=${MW_CLUSTER_BASE_PORT:-5800}
DB_URL=${MW_FANOUT_DB:-postgres://postgres@127.0.0.1:5432/movewatch_fanout}
OUT=$(mktemp -d)
count() { psql "$DB_URL" -X -q -t -A -c 'SELECT count(*) FROM position_keys'; }

cat >"$OUT/fanout.py" <<'PY'
"""K WebSocket clients on one node's `fleet` channel, counted over a window."""
import asyncio, base64, json, os, resource, statistics, subprocess, sys, time, urllib.request
from datetime import datetime, timezone

addr, token, node, pid, k, window, db, partitions = sys.argv[1:9]
pid, k, window, partitions = int(pid), int(k), float(window), int(partitions)
host, port = addr.rsplit(":", 1)
TICK = os.sysconf("SC_CLK_TCK")


def partition_of(vehicle: bytes) -> int:
    """engine::partition_of: FNV-1a 64 of the registration, mod the partitions."""
    h = 0xCBF29CE484222325
    for b in vehicle:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % partitions


def get(path):
    req = urllib.request.Request(f"http://{addr}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def owners():
    body = json.loads(get("/api/cluster"))
    return {p: n["id"] for n in body["nodes"] for p in n["partitions"]}


def metric(text, name):
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.split("{")[0].split(" ")[0] == name)


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) // 1024  # MiB
    return out


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class State:
    counting = False
    remote = {}  # vehicle bytes -> owned by another node
    owner = {}
    latencies = []  # (remote, seconds) for client 0


class Client(asyncio.Protocol):
    def __init__(self, idx, ready):
        self.idx, self.ready = idx, ready
        self.buf = bytearray()
        self.open = False
        self.frames = self.positions = self.remote = 0
        self.types = {}
        self.closed = None

    def connection_made(self, transport):
        self.t = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def send(self, opcode, payload: bytes):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
        self.t.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def data_received(self, data):
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buf[: buf.find(b"\r\n")]:
                self.fail(bytes(buf[:end]).decode(errors="replace"))
                return
            del buf[: end + 4]
            self.open = True
            self.send(1, b'{"type":"subscribe","channel":"fleet"}')
        i, n = 0, len(buf)
        while n - i >= 2:
            b1 = buf[i + 1]
            ln, h = b1 & 0x7F, 2
            if ln == 126:
                if n - i < 4:
                    break
                ln, h = (buf[i + 2] << 8) | buf[i + 3], 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln, h = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            start, end = i + h, i + h + ln
            if end > n:
                break
            op = buf[i] & 0x0F
            if op == 1:
                self.text(buf, start, end)
            elif op == 9:
                self.send(0xA, bytes(buf[start:end]))
            elif op == 8:
                self.closed = bytes(buf[start + 2 : end]).decode(errors="replace")
            i = end
        if i:
            del buf[:i]

    def text(self, buf, start, end):
        if buf.startswith(b'{"type":"position"', start):
            if not State.counting:
                return
            self.frames += 1
            self.positions += 1
            j = buf.find(b'"vehicle":"', start, end) + 11
            v = bytes(buf[j : buf.find(b'"', j, end)])
            r = State.remote.get(v)
            if r is None:
                r = State.remote[v] = State.owner.get(partition_of(v)) != node
            self.remote += r
            if self.idx == 0:
                j = buf.find(b'"ts":"', start, end) + 6
                ts = bytes(buf[j : buf.find(b'"', j, end)]).decode()
                State.latencies.append((r, time.time() - datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()))
            return
        kind = bytes(buf[start + 9 : buf.find(b'"', start + 9, end)]).decode()
        if kind == "snapshot" and not self.ready.done():
            self.ready.set_result(True)
        if State.counting:
            self.frames += 1
            self.types[kind] = self.types.get(kind, 0) + 1

    def fail(self, why):
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"client {self.idx}: {why}"))
        self.t.close()

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"client {self.idx}: connection lost {exc}"))


async def main():
    loop = asyncio.get_running_loop()
    State.owner = owners()
    m0 = get("/metrics")
    rss0 = rss(pid)
    clients, gate = [], asyncio.Semaphore(25)

    async def connect(i):
        async with gate:
            ready = loop.create_future()
            _, c = await loop.create_connection(lambda: Client(i, ready), host, int(port))
            clients.append(c)
            await asyncio.wait_for(ready, 120)

    t_conn = time.monotonic()
    await asyncio.gather(*(connect(i) for i in range(k)))
    t_conn = time.monotonic() - t_conn
    await asyncio.sleep(3)
    m1 = get("/metrics")
    cpu0, ru0 = cpu_ticks(pid), resource.getrusage(resource.RUSAGE_SELF)
    w0 = datetime.now(timezone.utc)
    State.counting = True
    t0 = time.monotonic()
    await asyncio.sleep(window)
    State.counting = False
    el = time.monotonic() - t0
    w1 = datetime.now(timezone.utc)
    cpu1, ru1 = cpu_ticks(pid), resource.getrusage(resource.RUSAGE_SELF)
    rss1 = rss(pid)
    m2 = get("/metrics")
    owner_after = owners()
    for c in clients:
        c.t.abort()

    # What the owners stored in the window: one position frame each, at most.
    rows = subprocess.run(
        ["psql", db, "-X", "-q", "-t", "-A", "-F", " ", "-c",
         f"SELECT vehicle, count(*) FROM positions WHERE received_at >= '{w0.isoformat()}' "
         f"AND received_at < '{w1.isoformat()}' GROUP BY vehicle"],
        check=True, capture_output=True, text=True).stdout.split("\n")
    # The simulator stamps its fixes from its plan's start, which comes a
    # while before its fleet publishes, so fix time -> client is not a
    # latency. positions.received_at - ts (when the owner took the point)
    # per group, local and remote vans, is subtracted from it: what is left
    # estimates owner's receipt -> this client.
    groups = {False: [], True: []}
    for row in filter(None, subprocess.run(
            ["psql", db, "-X", "-q", "-t", "-A", "-F", " ", "-c",
             "SELECT vehicle, extract(epoch FROM received_at - ts) FROM positions "
             f"WHERE received_at >= '{w0.isoformat()}' AND received_at < '{w1.isoformat()}'"],
            check=True, capture_output=True, text=True).stdout.split("\n")):
        v, d = row.rsplit(" ", 1)
        groups[State.owner.get(partition_of(v.encode())) != node].append(float(d))
    offset = {r: (statistics.median(xs) if xs else float("nan")) for r, xs in groups.items()}
    stored = stored_remote = 0
    for row in filter(None, rows):
        v, n = row.rsplit(" ", 1)
        stored += int(n)
        stored_remote += int(n) * (State.owner.get(partition_of(v.encode())) != node)

    per = sorted(c.frames / el for c in clients)
    total = sum(c.frames for c in clients)
    pos = sum(c.positions for c in clients)
    rem = sum(c.remote for c in clients)
    types = {}
    for c in clients:
        for t, n in c.types.items():
            types[t] = types.get(t, 0) + n
    lat = {}
    for r in (False, True):
        xs = sorted(s for rr, s in State.latencies if rr == r)
        if xs:
            lat["remote" if r else "local"] = {
                "n": len(xs), "p50": round(xs[len(xs) // 2] - offset[r], 3),
                "p99": round(xs[int(len(xs) * 0.99)] - offset[r], 3), "max": round(xs[-1] - offset[r], 3)}
    client_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / el
    mine = sorted(p for p, o in State.owner.items() if o == node)
    print(json.dumps({
        "node": node, "clients": k, "window_s": round(el, 1),
        "owns_partitions": mine, "ownership_unchanged": owner_after == State.owner,
        "connect_s": round(t_conn, 1),
        "closed_by_server": sum(c.closed is not None for c in clients),
        "frames_per_s_total": round(total / el),
        "frames_per_s_per_client": {"min": round(per[0], 1), "median": round(statistics.median(per), 1),
                                    "max": round(per[-1], 1),
                                    "under_half_median": sum(p < statistics.median(per) / 2 for p in per)},
        "position_frames_per_s_total": round(pos / el),
        "other_frames": types,
        "remote_share_of_positions": round(rem / pos, 3) if pos else None,
        "stored_points_per_s": round(stored / el, 1),
        "stored_remote_share": round(stored_remote / stored, 3) if stored else None,
        "delivered_per_client_vs_stored": round(pos / k / stored, 3) if stored else None,
        "stored_fix_to_receipt_p50_s": {"local": round(offset[False], 3), "remote": round(offset[True], 3)},
        "receipt_to_client0_s_est": lat,
        "node_rss_mib_before": rss0.get("VmRSS"), "node_rss_mib_with_clients": rss1.get("VmRSS"),
        "node_hwm_mib": rss1.get("VmHWM"),
        "node_cpu_pct": round(100 * (cpu1 - cpu0) / TICK / el),
        "client_process_cpu_pct": round(100 * client_cpu),
        "live_dropped_total": [metric(m, "movewatch_live_dropped_total") for m in (m0, m1, m2)],
        "live_rejected_total": metric(m2, "movewatch_live_rejected_total"),
        "ws_conflated_in_window": metric(m2, "movewatch_ws_conflated_total") - metric(m1, "movewatch_ws_conflated_total"),
        "ws_clients_gauge": metric(m2, "movewatch_ws_clients"),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }))


asyncio.run(main())
PY

RUST_LOG=warn "$BIN" demo --cluster --nodes 2 --cluster-base-port "$BASE" --vehicles "$VEHICLES" \
  --interval "$INTERVAL" --http-listen 127.0.0.1:0 --data-dir "$OUT" \
  --database-url "$DB_URL" >"$OUT/demo.out" 2>"$OUT/demo.err" &
DEMO=$!
trap 'kill -TERM $DEMO 2>/dev/null || true; wait $DEMO 2>/dev/null || true' EXIT
until grep -q '^Press Ctrl-C' "$OUT/demo.out"; do
  kill -0 $DEMO 2>/dev/null || { cat "$OUT/demo.out" "$OUT/demo.err" >&2; exit 1; }
  sleep 1
done
ADDR=$(sed -n "s|^  node $NODE *control room: http://\([^/]*\)/control.*|\1|p" "$OUT/demo.out")
PID=$(sed -n "s/^  node $NODE *pid \([0-9]*\).*/\1/p" "$OUT/demo.out")
TOKEN=$(sed -n 's/^  control-room token: *//p' "$OUT/demo.out")
[ -n "$ADDR" ] && [ -n "$PID" ] && [ -n "$TOKEN" ] || { cat "$OUT/demo.out" >&2; exit 1; }
grep -E '^  (node .*pid|partitions:)' "$OUT/demo.out"
# The demo registers the day's moves before its fleet publishes: wait for
# the first points, then the warm-up.
for _ in $(seq 1 240); do [ "$(count 2>/dev/null || echo 0)" -ge 1000 ] && break; sleep 1; done
sleep "$WARMUP"
echo "load: $VEHICLES vans, a fix every $INTERVAL, 2 engine nodes; clients on $NODE ($ADDR, pid $PID)"
# A node whose heartbeats are not heard for 4 s loses its partitions to the
# other (docs/SCALE-OUT.md): counted per run from the nodes' logs.
flaps() { cat "$OUT"/cluster-demo/n*.log | grep -c 'taking its share' || true; }
for K in ${CLIENTS//,/ }; do
  f0=$(flaps)
  python3 "$OUT/fanout.py" "$ADDR" "$TOKEN" "$NODE" "$PID" "$K" "$WINDOW" "$DB_URL" 8
  echo "clients=$K: 'node not heard from; taking its share' during the run (connect + window): $(($(flaps) - f0))"
  sleep 5
done
for n in 1 2 3; do
  pid=$(cat "${MW_CLUSTER_DIR:-$(dirname "$0")/../.cluster}/n$n/pid" 2>/dev/null || true)
  [ -n "$pid" ] && echo "broker node $n pid $pid $(grep VmRSS /proc/$pid/status | tr -s ' \t' ' ')"
done
uptime
