#!/usr/bin/env python3
"""Benchmark the control service's ingest against raw redis-py, on identical payloads.

1. Throughput, M observations from C cameras, the same payloads for both sides, loaded first
   with pipelined XADD batches of 1,000 (that rate is printed too), then consumed from the full
   stream:
   - baseline: the fastest redis-py reads them: XREADGROUP COUNT 1000 + XACK;
   - control:  ControlService.step() applies them and publishes the zone states.
   Throughput = M ÷ consumption time. Printed with the ratio control ÷ raw (target ≥ 0.5).
   (Before, both sides waited on one producer's XADD round trips, so "raw" measured that
   producer and the ratio came out at 1.70: a baseline that was itself throttled.)
2. Latency at C cameras × 1 Hz: a producer process publishes each camera once a second
   (spread evenly), control runs its normal loop, a listener process follows ``<p>:events``
   and records, per zone state, receive time − the observation's capture time.
   Printed as p50/p99 (target p99 < 50 ms).

Usage: python scripts/bench_control.py [--cameras 1000] [--messages 20000] [--seconds 20]
       [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from control.service import GROUP, ControlService  # noqa: E402
from crowdflow.bus import Keys, connect  # noqa: E402
from crowdflow.records import Observation, ZoneCount  # noqa: E402
from crowdflow.site import parse_site  # noqa: E402


def synthetic_site(n_cameras: int) -> dict:
    """A grid of n zones near Hongyadong, one camera each, one plan over all of them."""
    zones, cameras = [], []
    side = int(np.ceil(np.sqrt(n_cameras)))
    d = 0.0002  # ≈ 20 m
    for i in range(n_cameras):
        lon = 106.57 + (i % side) * d
        lat = 29.56 + (i // side) * d
        zid = f"z{i}"
        zones.append({"id": zid, "name": {"zh": f"区{i}", "en": f"zone {i}"}, "kind": "plaza",
                      "polygon": [[lon, lat], [lon + d * 0.9, lat], [lon + d * 0.9, lat + d * 0.9], [lon, lat + d * 0.9]],
                      "walkable_area_m2": 200, "area_per_visitor_m2": 1.0})
        cameras.append({"id": f"c{i}", "name": {"zh": f"机{i}", "en": f"cam {i}"}, "position": [lon, lat],
                        "height_m": 6, "zones": [zid],
                        "presets": [{"id": "home", "image_size": [640, 480], "points": [
                            {"pixel": [0, 480], "lonlat": [lon, lat]}, {"pixel": [640, 480], "lonlat": [lon + d, lat]},
                            {"pixel": [600, 100], "lonlat": [lon + d, lat + d]}, {"pixel": [40, 100], "lonlat": [lon, lat + d]}]}]})
    levels = [{"level": lv, "triggers": {"capacity_ratio": t}, "sustain_s": 30, "actions": []}
              for lv, t in (("IV", 0.6), ("III", 0.8), ("II", 0.9), ("I", 0.95))]
    return {"version": 1, "site": {"id": "bench", "name": {"zh": "基准", "en": "bench"}, "center": [106.575, 29.565]},
            "zones": zones, "cameras": cameras,
            "plans": [{"id": "all", "name": {"zh": "全部", "en": "all"}, "zones": [z["id"] for z in zones], "levels": levels}]}


def payload(cam: int, seq: int, t: float, rng) -> str:
    return Observation(camera_id=f"c{cam}", agent_id="bench", seq=seq, captured_at=t, frames=10,
                       zones=[ZoneCount(zone_id=f"z{cam}", count=float(rng.integers(0, 60)), visible_area_m2=150.0)]).encode()


def cleanup(r, keys: Keys) -> None:
    for k in r.scan_iter(match=keys.all_keys_pattern(), count=1000):
        r.delete(k)


def preload(r, keys: Keys, msgs: list[str], batch: int = 1000) -> float:
    """Pipelined XADD batches (the fastest redis-py publishes); returns entries/s."""
    t = time.perf_counter()
    for i in range(0, len(msgs), batch):
        pipe = r.pipeline(transaction=False)
        for m in msgs[i:i + batch]:
            pipe.xadd(keys.obs, {"rec": m})
        pipe.execute()
    return len(msgs) / (time.perf_counter() - t)


def bench_pipeline(url: str, site, msgs: list[str], with_control: bool) -> tuple[float, float]:
    """(pipelined XADD rate, observations/s consumed from the full stream)."""
    r = connect(url)
    raw_r = connect(url, decode_responses=False)  # as control reads: bytes
    keys = Keys(f"bench-{uuid.uuid4().hex[:6]}")
    n = len(msgs)
    try:
        xadd_rate = preload(r, keys, msgs)
        svc = None
        if with_control:
            svc = ControlService(site, r, keys, consumer="bench", stale_after_s=3600)
            svc.start()
        else:
            r.xgroup_create(keys.obs, GROUP, id="0")
        t = time.perf_counter()
        done = 0
        while done < n:
            if svc is not None:
                svc.step(block_ms=100)
                done = svc.applied + svc.rejected + svc.duplicates
            else:
                resp = raw_r.xreadgroup(GROUP, "raw", {keys.obs: ">"}, count=1000, block=100)
                entries = resp[0][1] if resp else []
                if entries:
                    raw_r.xack(keys.obs, GROUP, *[i for i, _ in entries])
                    done += len(entries)
        elapsed = time.perf_counter() - t
        if svc is not None and svc.rejected:
            raise RuntimeError(f"control rejected {svc.rejected} benchmark observations: {dict(svc.rejected_by)}")
        return xadd_rate, n / elapsed
    finally:
        cleanup(r, keys)


def producer(url: str, prefix: str, n_cameras: int, seconds: float, start_at: float) -> None:
    r = connect(url)
    keys = Keys(prefix)
    rng = np.random.default_rng(2)
    seq = 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    interval = 1.0 / n_cameras
    next_t = time.time()
    cam = 0
    while time.time() < end:
        now = time.time()
        if now < next_t:
            time.sleep(min(next_t - now, 0.002))
            continue
        r.xadd(keys.obs, {"rec": payload(cam, seq, time.time(), rng)})
        seq += 1
        cam = (cam + 1) % n_cameras
        next_t += interval


def listener(url: str, prefix: str, seconds: float, start_at: float, out: mp.Queue) -> None:
    r = connect(url)
    keys = Keys(prefix)
    last = "$"
    lat = []
    end = start_at + seconds + 2
    while time.time() < end:
        resp = r.xread({keys.events: last}, count=2000, block=200)
        now = time.time()
        for _, entries in resp or []:
            for eid, f in entries:
                last = eid
                if f.get("type") == "zone" and now > start_at + 1:  # skip the warm-up second
                    rec = json.loads(f["rec"])
                    if rec["status"] == "ok" and rec["updated_at"]:
                        lat.append(now - rec["updated_at"])
    out.put(lat)


def bench_latency(url: str, site, n_cameras: int, seconds: float) -> tuple[np.ndarray, int, np.ndarray]:
    r = connect(url)
    keys = Keys(f"bench-{uuid.uuid4().hex[:6]}")
    svc = ControlService(site, r, keys, consumer="bench-lat", stale_after_s=10)
    step, durations = svc.step, []

    def timed_step(block_ms: int = 100) -> int:  # where the time goes: control's own cycle
        t = time.perf_counter()
        n = step(block_ms)
        if n:
            durations.append(time.perf_counter() - t)
        return n

    svc.step = timed_step
    stop = threading.Event()
    th = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    th.start()
    start_at = time.time() + 2.0
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    lp = ctx.Process(target=listener, args=(url, keys.prefix, seconds, start_at, q))
    pp = ctx.Process(target=producer, args=(url, keys.prefix, n_cameras, seconds, start_at))
    lp.start()
    pp.start()
    pp.join()
    lat = np.array(q.get(timeout=seconds + 30))
    lp.join()
    stop.set()
    th.join()  # the loop ends within one read (100 ms); nothing may write after the clean-up
    applied = svc.applied
    cleanup(r, keys)
    return lat, applied, np.array(durations)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cameras", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    site = parse_site(synthetic_site(args.cameras), "synthetic")
    print(f"site: {args.cameras} cameras, {len(site.zones)} zones, 1 plan")
    rng = np.random.default_rng(1)
    now = time.time()
    msgs = [payload(i % args.cameras, i, now + i * 1e-5, rng) for i in range(args.messages)]
    xadd, raw = bench_pipeline(args.redis, site, msgs, with_control=False)
    _, ctl = bench_pipeline(args.redis, site, msgs, with_control=True)
    print(f"throughput  pipelined XADD (batches of 1000):          {xadd:7.0f} obs/s")
    print(f"throughput  raw redis-py XREADGROUP COUNT 1000 + XACK: {raw:7.0f} obs/s")
    print(f"throughput  control ingest → zone state → ack:         {ctl:7.0f} obs/s")
    print(f"ratio control/raw: {ctl / raw:.2f}  (target ≥ 0.5)")
    lat, applied, steps = bench_latency(args.redis, site, args.cameras, args.seconds)
    rate = applied / args.seconds
    ms = lat * 1000
    print(f"latency at {args.cameras} cameras × 1 Hz ({rate:.0f} obs/s applied, {len(ms)} zone states): "
          f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms  (target p99 < 50 ms)")
    st = steps * 1000
    print(f"control cycle (read→apply→publish→ack, {len(st)} busy cycles): p50 {np.percentile(st, 50):.1f} ms, "
          f"p99 {np.percentile(st, 99):.1f} ms, max {st.max():.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
