#!/usr/bin/env python3
"""Benchmark crowdflow on a real Redis Cluster (3 masters + 3 replicas, scripts/redis_cluster.py).

A synthetic site of C cameras (one zone each) split into P partitions (plan areas), so that
each partition's keys share one hash slot and the partitions spread over the three masters.

1. **Ingest throughput, same payloads, same run.** M observations (C cameras) are loaded into
   the partitions' streams with pipelined XADD batches (timed: the raw producer rate), once per
   consumer under test, then consumed from full streams:
   - raw: the fastest redis-py does it: one reader process per shard (master), XREADGROUP
     COUNT 1000 + XACK over the partition streams that master serves;
   - control with 1 and with 2 worker processes (control/workers.py): decode, check, dedupe,
     fuse, publish zone states and ack, in one fenced MULTI/EXEC per partition and cycle.
   Rate = M ÷ (start → every group drained). Ratio = control ÷ raw (target ≥ 0.5).
2. **Camera → browser latency** at 1,000 and 10,000 cameras × 1 Hz: a producer process
   publishes each camera once a second (pipelined per 50 ms tick), one `crowdflow control`
   worker and one `crowdflow dashboard` run as real processes on the cluster, a WebSocket client
   logged in to the dashboard records, per zone message, receive time − the observation's
   capture time (ZoneState.updated_at). p50/p99 (target p99 < 250 ms at 1,000 cameras).

Usage:
  python scripts/bench_cluster.py [--cameras 10000] [--partitions 12] [--messages 60000]
        [--latency-cameras 1000,10000] [--seconds 20] [--rounds 3]
        [--cluster redis+cluster://127.0.0.1:7601 | --base-port 7601] [--port 7690]
Without --cluster a cluster is started on base-port … base-port+5 and stopped afterwards.
With --rounds N the throughput part (raw, then control, same payloads) runs N times and the
medians are printed. Every figure in
docs/scaling.md comes from this script; it says there what the shared 2-core machine limited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench_control import payload, synthetic_site  # noqa: E402
from crowdflow.bus import Keys, connect  # noqa: E402
from crowdflow.site import parse_site  # noqa: E402

GROUP_RAW = "raw"


def partitioned_site(n_cameras: int, n_parts: int) -> dict:
    """The synthetic site with its zones in ``n_parts`` plan areas, one partition each."""
    d = synthetic_site(n_cameras)
    plan = d["plans"][0]
    zones = [z["id"] for z in d["zones"]]
    size = -(-len(zones) // n_parts)
    d["plans"] = [{**plan, "id": f"area{i}", "zones": zones[i * size:(i + 1) * size]} for i in range(n_parts)
                  if zones[i * size:(i + 1) * size]]
    d["control"] = {"partitions": {f"p{i}": [p["id"]] for i, p in enumerate(d["plans"])}}
    return d


def cam_partition(site_dict: dict) -> dict[int, str]:
    part_of_plan = {plan[0]: pid for pid, plan in site_dict["control"]["partitions"].items()}
    out = {}
    for p in site_dict["plans"]:
        for z in p["zones"]:
            out[int(z[1:])] = part_of_plan[p["id"]]
    return out


def cleanup(r, prefix: str, pids) -> None:
    base = Keys(prefix)
    for pid in pids:
        for k in r.scan_iter(match=base.partition(pid).all_keys_pattern(), count=1000):
            r.delete(k)
    r.delete(base.workers)


# ----------------------------------------------------------------------------- throughput


def preload(r, prefix: str, by_part: dict[str, list[str]], batch: int = 1000) -> float:
    """Pipelined XADD batches into every partition's stream; returns entries/s."""
    base = Keys(prefix)
    n = sum(len(v) for v in by_part.values())
    t = time.perf_counter()
    for pid, msgs in by_part.items():
        stream = base.partition(pid).obs
        for i in range(0, len(msgs), batch):
            pipe = r.pipeline(transaction=False)
            for m in msgs[i:i + batch]:
                pipe.xadd(stream, {"rec": m})
            pipe.execute()
    return n / (time.perf_counter() - t)


def raw_reader(url: str, streams: list[str], ready, go, out: mp.Queue) -> None:
    """One shard's reader: XREADGROUP COUNT 1000 + XACK over its streams until all are empty."""
    r = connect(url, decode_responses=False)
    r.ping()
    ready.release()
    go.wait()
    cpu0 = time.process_time()
    n, live = 0, list(streams)
    while live:
        for s in list(live):
            resp = r.xreadgroup(GROUP_RAW, "raw", {s: ">"}, count=1000)
            entries = resp[0][1] if resp else []
            if not entries:
                live.remove(s)
                continue
            r.xack(s, GROUP_RAW, *[i for i, _ in entries])
            n += len(entries)
    out.put((n, time.time(), time.process_time() - cpu0))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_raw(url: str, prefix: str, by_part: dict[str, list[str]]) -> tuple[float, float, float]:
    r = connect(url)
    base = Keys(prefix)
    xadd_rate = preload(r, prefix, by_part)
    shards: dict[str, list[str]] = {}
    for pid in by_part:
        stream = base.partition(pid).obs
        r.xgroup_create(stream, GROUP_RAW, id="0")
        node = r.get_node_from_key(stream)
        shards.setdefault(node.name, []).append(stream)
    ctx = mp.get_context("spawn")
    q, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=raw_reader, args=(url, s, ready, go, q)) for s in shards.values()]
    for p in procs:
        p.start()
    for p in procs:  # started, imported, connected: only the reading is timed
        ready.acquire(timeout=300)
    go_at = time.time()
    go.set()
    res = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    n = sum(x[0] for x in res)
    rate = n / (max(x[1] for x in res) - go_at)
    cleanup(r, prefix, by_part)
    return xadd_rate, rate, sum(x[2] for x in res) / n * 1e6


def control_worker(url: str, prefix: str, site_dict: dict, wid: str, ready, go, stop_at: float) -> None:
    import logging
    import threading

    from control.workers import Worker

    logging.basicConfig(level=logging.WARNING)
    site = parse_site(site_dict, "synthetic")
    w = Worker(site, connect(url), Keys(prefix), worker_id=wid, stale_after_s=3600)
    from control.service import tune_gc

    tune_gc()  # as `crowdflow control` does
    ready.release()
    go.wait()
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    while time.time() < stop_at:
        time.sleep(0.1)
    stop.set()
    t.join(15)


def drained(r, prefix: str, pids) -> tuple[bool, int]:
    """(every partition's control group has read and acknowledged everything, entries left)."""
    base = Keys(prefix)
    left, ok = 0, True
    for pid in pids:
        groups = {g["name"]: g for g in r.xinfo_groups(base.partition(pid).obs)}
        g = groups.get("control")
        if g is None:
            ok = False
            continue
        lag = g.get("lag")
        left += (lag or 0) + g["pending"]
        if lag is None or lag or g["pending"]:
            ok = False
    return ok, left


def led(r, prefix: str, pids) -> dict[str, str | None]:
    base = Keys(prefix)
    return {pid: r.get(base.partition(pid).leader) for pid in pids}


def bench_control(url: str, prefix: str, site_dict: dict, by_part: dict[str, list[str]], n_workers: int,
                  timeout_s: float = 300) -> tuple[float, float, float]:
    """(observations/s, seconds from the workers' start until every partition was led and
    balanced: the takeover, not timed in the rate, µs of the workers' CPU per observation).

    The streams are loaded first, with the control group created at their end, so the workers
    start, take and balance their partitions with nothing to read; the clock starts when the
    group is set back to the streams' start (XGROUP SETID 0): as for the raw readers, only the
    ingest is timed, not the start-up."""
    import math

    r = connect(url)
    preload(r, prefix, by_part)
    base = Keys(prefix)
    for pid in by_part:
        r.xgroup_create(base.partition(pid).obs, "control", id="$")
    n = sum(len(v) for v in by_part.values())
    ctx = mp.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    stop_at = time.time() + 300 + timeout_s
    procs = [ctx.Process(target=control_worker, args=(url, prefix, site_dict, f"w{i}", ready, go, stop_at))
             for i in range(n_workers)]
    for p in procs:
        p.start()
    for p in procs:  # each has parsed the site and built its services
        ready.acquire(timeout=300)
    t_start = time.time()
    go.set()
    share = math.ceil(len(by_part) / n_workers)
    while True:  # every partition led, none of the workers above its share, and stable for 1 s
        holders = led(r, prefix, by_part)
        counts = [list(holders.values()).count(f"w{i}") for i in range(n_workers)]
        if None not in holders.values() and max(counts) <= share:
            time.sleep(1.0)
            if led(r, prefix, by_part) == holders:
                break
        if time.time() > stop_at - timeout_s:
            raise RuntimeError(f"control workers did not take the partitions: {holders}")
        time.sleep(0.1)
    takeover_s = time.time() - t_start - 1.0
    cpu0 = sum(cpu_s(p.pid) for p in procs)
    go_at = time.time()
    for pid in by_part:
        r.xgroup_setid(base.partition(pid).obs, "control", id="0")
    end = None
    while time.time() < stop_at:
        ok, left = drained(r, prefix, by_part)
        if ok:
            end = time.time()
            cpu = sum(cpu_s(p.pid) for p in procs) - cpu0
            break
        time.sleep(0.05)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(15)
    cleanup(r, prefix, by_part)
    if end is None:
        raise RuntimeError(f"control did not drain {n} entries in {timeout_s} s")
    return n / (end - go_at), takeover_s, cpu / n * 1e6


# ----------------------------------------------------------------------------- latency


def producer_1hz(url: str, prefix: str, n_cameras: int, parts: dict[int, str], seconds: float,
                 start_at: float) -> None:
    """Each camera once a second, spread over 20 ticks of 50 ms, one pipeline per tick."""
    r = connect(url)
    base = Keys(prefix)
    streams = {pid: base.partition(pid).obs for pid in set(parts.values())}
    rng = np.random.default_rng(2)
    seq = int(time.time() * 1000)
    ticks = 20
    per_tick = [list(range(i, n_cameras, ticks)) for i in range(ticks)]
    while time.time() < start_at:
        time.sleep(0.001)
    t_next, k = start_at, 0
    while time.time() < start_at + seconds:
        pipe = r.pipeline(transaction=False)
        now = time.time()
        for cam in per_tick[k % ticks]:
            seq += 1
            pipe.xadd(streams[parts[cam]], {"rec": payload(cam, seq, now, rng)}, maxlen=50_000, approximate=True)
        pipe.execute()
        k += 1
        t_next += 1.0 / ticks
        time.sleep(max(0.0, t_next - time.time()))


def events_listener(url: str, prefix: str, pids: list[str], seconds: float, start_at: float, out) -> None:
    """Control's share of the latency: receive time of each zone event in the partitions' event
    streams − the observation's capture time (one blocking XREAD per partition, each in a
    thread: a cluster refuses one XREAD across slots)."""
    import threading

    r = connect(url)
    base = Keys(prefix)
    lat: list[float] = []
    end = start_at + seconds

    def follow(stream: str) -> None:
        last = r.xinfo_stream(stream)["last-generated-id"] if r.exists(stream) else "0-0"
        while time.time() < end:
            resp = r.xread({stream: last}, count=2000, block=500)
            now = time.time()
            for _, entries in resp or []:
                for eid, f in entries:
                    last = eid
                    if f.get("type") == "zone" and now > start_at + 2:
                        rec = json.loads(f["rec"])
                        if rec["status"] == "ok" and rec.get("updated_at"):
                            lat.append(now - rec["updated_at"])

    threads = [threading.Thread(target=follow, args=(base.partition(p).events,)) for p in pids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(lat)


async def ws_listen(base: str, token: str, seconds: float, start_at: float) -> tuple[list[float], int]:
    """Zone message latencies; a client the dashboard drops as too slow reconnects (as the page
    does) and the drops are counted."""
    import websockets

    lat, drops = [], 0
    url = base.replace("http", "ws") + "/ws"
    end = start_at + seconds
    while time.time() < end:
        try:
            async with websockets.connect(url, additional_headers={"Cookie": f"cf_session={token}", "Origin": base},
                                          max_size=None, open_timeout=120) as ws:
                while time.time() < end:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    now = time.time()
                    msg = json.loads(raw)
                    for m in msg["items"] if msg.get("type") == "batch" else [msg]:  # what queued up together
                        if m.get("type") == "zone" and now > start_at + 2:  # skip the warm-up
                            st = m["state"]
                            if st["status"] == "ok" and st.get("updated_at"):
                                lat.append(now - st["updated_at"])
        except websockets.exceptions.ConnectionClosed:
            drops += 1
    return lat, drops


def bench_latency(url: str, n_cameras: int, n_parts: int, seconds: float, port: int, workers: int = 1) -> dict:
    import httpx

    from dashboard.auth import hash_password

    site_dict = partitioned_site(n_cameras, min(n_parts, n_cameras))
    parts = cam_partition(site_dict)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    cfg = tmp / "site.yaml"
    cfg.write_text(yaml.safe_dump(site_dict, allow_unicode=True), encoding="utf-8")
    env = dict(os.environ, REDIS_URL=url, CROWDFLOW_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1",
               CROWDFLOW_DATA_DIR=str(tmp / "var"), CROWDFLOW_AUDIT_DIR="none",
               CROWDFLOW_USERS=json.dumps([{"name": "bench", "role": "viewer",
                                            "password_hash": hash_password("bench-pass-1")}]))
    logs = [open(tmp / f"{n}.log", "w") for n in [f"control-{i}" for i in range(workers)] + ["dashboard"]]
    procs = [subprocess.Popen([sys.executable, "-m", "crowdflow.cli", "control", "--config", str(cfg),
                               "--consumer", f"bench-w{i}"], cwd=REPO, env=env, stdout=logs[i],
                              stderr=subprocess.STDOUT) for i in range(workers)]
    procs.append(subprocess.Popen([sys.executable, "-m", "crowdflow.cli", "dashboard", "--config", str(cfg), "--port",
                                   str(port)], cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    r = connect(url)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120 + n_cameras / 30  # a 10,000-zone site takes minutes to load on a busy box
        while True:
            try:
                res = httpx.post(base + "/api/login", json={"username": "bench", "password": "bench-pass-1"},
                                 headers={"Origin": base}, timeout=5)
                if res.status_code == 200:
                    token = res.json()["token"]
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("dashboard did not start; see " + str(tmp))
            time.sleep(0.5)
        pk = Keys(prefix)
        def leaders():
            return [r.get(pk.partition(p).leader) for p in site_dict["control"]["partitions"]]

        # every partition led, and (with several workers) spread over all of them: taken, then balanced
        held = leaders()
        while not all(held) or len(set(held)) < workers:
            if time.time() > deadline:
                raise RuntimeError("control did not take (or balance) its partitions; see " + str(tmp))
            time.sleep(0.2)
            held = leaders()
        start_at = time.time() + 3.0
        ctx = mp.get_context("spawn")
        prod = ctx.Process(target=producer_1hz, args=(url, prefix, n_cameras, parts, seconds, start_at))
        q = ctx.Queue()
        ev = ctx.Process(target=events_listener, args=(url, prefix, list(site_dict["control"]["partitions"]),
                                                      seconds, start_at, q))
        prod.start()
        ev.start()
        while time.time() < start_at:
            time.sleep(0.01)
        cpu0, t0 = [cpu_s(p.pid) for p in procs], time.time()
        lat, drops = asyncio.run(ws_listen(base, token, seconds, start_at))
        cpu = [(cpu_s(p.pid) - c) / (time.time() - t0) for p, c in zip(procs, cpu0)]  # cores used
        lat = np.array(lat) * 1000
        ev_lat = np.array(q.get(timeout=120)) * 1000
        prod.join()
        ev.join()
        return {"cameras": n_cameras, "partitions": len(site_dict["control"]["partitions"]), "workers": workers,
                "n": len(lat),
                "drops": drops,
                "p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "p99": float(np.percentile(lat, 99)) if len(lat) else None,
                "max": float(lat.max()) if len(lat) else None, "expected": int(n_cameras * (seconds - 2)),
                "control_cores": sum(cpu[:workers]), "dashboard_cores": cpu[-1],
                "control_n": len(ev_lat),
                "control_p50": float(np.percentile(ev_lat, 50)) if len(ev_lat) else None,
                "control_p99": float(np.percentile(ev_lat, 99)) if len(ev_lat) else None}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        cleanup(r, prefix, site_dict["control"]["partitions"])


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=10000)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--messages", type=int, default=60000)
    ap.add_argument("--workers", default="1,2", help="control worker counts to measure")
    ap.add_argument("--latency-cameras", default="1000,10000")
    ap.add_argument("--latency-workers", type=int, default=1, help="control processes in the latency run")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--cluster", default=None, help="redis+cluster://host:port (default: start one on 7601)")
    ap.add_argument("--port", type=int, default=7690, help="dashboard port for the latency run")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--rounds", type=int, default=1, help="throughput rounds (raw + control each); medians printed")
    ap.add_argument("--base-port", type=int, default=7601, help="where to start the cluster without --cluster")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    cluster = None
    url = args.cluster
    if url is None:
        from redis_cluster import Cluster

        cluster = Cluster(args.base_port).start()
        url = cluster.url
    out: dict = {"cameras": args.cameras, "partitions": args.partitions, "messages": args.messages,
                 "cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
    try:
        r = connect(url)
        if not args.skip_throughput:
            site_dict = partitioned_site(args.cameras, args.partitions)
            parts = cam_partition(site_dict)
            rng = np.random.default_rng(1)
            now = time.time()  # captured now: well within control's freshness window when consumed
            by_part: dict[str, list[str]] = {}
            for i in range(args.messages):
                cam = i % args.cameras
                by_part.setdefault(parts[cam], []).append(payload(cam, i, now + i * 1e-5, rng))
            print(f"site: {args.cameras} cameras in {len(by_part)} partitions over "
                  f"{len({r.get_node_from_key(Keys('x').partition(p).obs).name for p in by_part})} masters; "
                  f"{args.messages} observations")
            workers = [int(x) for x in args.workers.split(",") if x]
            rounds: list[dict] = []
            for k in range(args.rounds):  # each round: raw, then control, on the same payloads
                rd: dict = {}
                xadd_rate, raw, raw_cpu = bench_raw(url, f"bench-{uuid.uuid4().hex[:6]}", by_part)
                rd.update(xadd_pipelined=xadd_rate, raw=raw, raw_cpu_us=raw_cpu)
                print(f"round {k + 1}/{args.rounds}, load {os.getloadavg()[0]:.1f}")
                print(f"raw  pipelined XADD (1 producer):                      {xadd_rate:8.0f} obs/s")
                print(f"raw  XREADGROUP COUNT 1000 + XACK, one reader per shard: {raw:8.0f} obs/s   "
                      f"({raw_cpu:.1f} µs of the readers' CPU per entry)")
                for n_workers in workers:
                    rate, takeover, cpu = bench_control(url, f"bench-{uuid.uuid4().hex[:6]}", site_dict, by_part,
                                                        n_workers)
                    rd[f"control_{n_workers}w"] = rate
                    rd[f"takeover_{n_workers}w_s"] = takeover
                    rd[f"control_{n_workers}w_cpu_us"] = cpu
                    rd[f"ratio_{n_workers}w"] = rate / raw
                    print(f"control, {n_workers} worker process(es):                       {rate:8.0f} obs/s   "
                          f"ratio control/raw {rate / raw:.2f} (target ≥ 0.5); partitions taken in {takeover:.1f} s; "
                          f"{cpu:.1f} µs of the workers' CPU per observation (raw/control CPU {raw_cpu / cpu:.2f})")
                rounds.append(rd)
            out["rounds"] = rounds
            med = {key: float(np.median([rd[key] for rd in rounds])) for key in rounds[0]}
            out.update(med)
            if args.rounds > 1:
                print(f"median of {args.rounds} rounds: raw {med['raw']:.0f} obs/s ({med['raw_cpu_us']:.1f} µs/entry); "
                      + "; ".join(f"control {n}w {med[f'control_{n}w']:.0f} obs/s, ratio {med[f'ratio_{n}w']:.2f}, "
                                  f"{med[f'control_{n}w_cpu_us']:.1f} µs/obs" for n in workers))
        for n in [int(x) for x in args.latency_cameras.split(",") if x]:
            res = bench_latency(url, n, args.partitions, args.seconds, args.port, args.latency_workers)
            out[f"latency_{n}"] = res
            if not res["n"]:
                print(f"camera → browser at {n} cameras × 1 Hz: NO live zone message reached the browser in "
                      f"{args.seconds:g} s (saturated); client dropped as too slow {res['drops']}×")
                continue
            print(f"camera → browser at {n} cameras × 1 Hz ({res['partitions']} partitions, {res['workers']} worker(s), 1 dashboard): "
                  f"{res['n']} zone messages of ~{res['expected']} observations, p50 {res['p50']:.0f} ms, "
                  f"p99 {res['p99']:.0f} ms, max {res['max']:.0f} ms; client dropped as too slow {res['drops']}×")
            print(f"    CPU used: control worker {res['control_cores']:.2f} cores, dashboard {res['dashboard_cores']:.2f} "
                  f"cores (of {os.cpu_count()}, load {os.getloadavg()[0]:.1f})")
            if res["control_n"]:
                print(f"    of which control (capture → zone event in Redis, {res['control_n']} events): "
                      f"p50 {res['control_p50']:.0f} ms, p99 {res['control_p99']:.0f} ms")
        out["load_at_end"] = os.getloadavg()
        print(f"load average at start {out['load_at_start'][0]:.1f}, at end {out['load_at_end'][0]:.1f} "
              f"on {out['cpus']} CPUs")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
