#!/usr/bin/env python3
"""Where control's CPU per observation goes, on a real Redis Cluster, phase by phase.

The partitioned synthetic site of scripts/bench_cluster.py (C cameras, one zone each, P
partitions); M observations are loaded into the partitions' streams first (pipelined XADD),
then one process drains them with one ``ControlService`` per partition, fenced by its lease,
as a worker does: each in its own thread (``--threads``, what ``control.workers.Worker``
runs) or stepped in turn in one thread. Printed: µs of this process's CPU per observation
(``time.process_time``), in total and per phase of the cycle (read, ingest = decode + checks +
dedupe + fusion, zone states, publish, the fenced write, the once-a-second pass), the cycles
run, and with ``--profile`` cProfile's top functions (one thread only).

``--trickle K``: the other regime, the latency run's (1,000 cameras × 1 Hz over 12 partitions
is ≈ 4 observations per partition and cycle): one partition's service, K observations added
before each of 400 cycles; prints the CPU per cycle (read, dedupe, fuse, publish, fenced write).

Usage:
  python scripts/profile_control_cluster.py --cluster redis+cluster://127.0.0.1:7300
        [--cameras 10000] [--partitions 12] [--messages 60000] [--threads] [--switch-s 0.005]
        [--profile] [--trickle 4]
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402

from bench_cluster import cam_partition, partitioned_site, preload  # noqa: E402
from bench_control import payload  # noqa: E402
from crowdflow.bus import Keys, connect, raw_client  # noqa: E402
from crowdflow.site import parse_site  # noqa: E402
from crowdflow.site.partitions import partition_keys, sub_site  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--cameras", type=int, default=10000)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--messages", type=int, default=60000)
    ap.add_argument("--threads", action="store_true", help="one thread per partition, as a worker runs them")
    ap.add_argument("--switch-s", type=float, default=None, help="sys.setswitchinterval (Python's default 0.005)")
    ap.add_argument("--profile", action="store_true", help="cProfile (without --threads)")
    ap.add_argument("--trickle", type=int, default=0, help="K observations per cycle, one partition, 400 cycles")
    args = ap.parse_args()
    import control.plans as plans
    import control.service as service
    import control.snapshot as snapshot
    import control.zones as zones
    import crowdflow.bus as bus
    from control.service import ControlService, tune_gc

    r = connect(args.cluster)
    d = partitioned_site(args.cameras, args.partitions)
    site = parse_site(d, "synthetic")
    parts = cam_partition(d)
    prefix = f"prof{uuid.uuid4().hex[:4]}"
    rng = np.random.default_rng(1)
    now = time.time()
    by_part: dict[str, list[str]] = {}
    for i in range(args.messages):
        cam = i % args.cameras
        by_part.setdefault(parts[cam], []).append(payload(cam, i, now - 30 + i * 1e-4, rng))
    keys = Keys(prefix)
    raw = raw_client(r)
    svcs = [ControlService(sub_site(site, pid), r, k, consumer="prof", stale_after_s=3600, raw=raw)
            for pid, k in partition_keys(site, keys).items()]
    if args.trickle:
        return trickle(r, svcs[0], d, parts, args.trickle)
    try:
        preload(r, prefix, by_part)
        for s in svcs:
            s.fenced = True
            assert s.lease.acquire()
            s.start()
        tune_gc()
        if args.switch_s:
            sys.setswitchinterval(args.switch_s)
        acc: dict[str, float] = {}
        lock = threading.Lock()

        def timed(obj, name: str, label: str) -> None:  # thread CPU time spent in obj.name
            f = getattr(obj, name)

            @functools.wraps(f)
            def g(*a, **kw):
                t = time.thread_time()
                try:
                    return f(*a, **kw)
                finally:
                    with lock:
                        acc[label] = acc.get(label, 0.0) + time.thread_time() - t
            setattr(obj, name, g)

        if not args.profile:
            for obj, name, label in [(bus.GroupReader, "read_together", "read"),
                                     (service.ControlService, "_ingest", "ingest (decode, check, dedupe, fuse)"),
                                     (zones.ZoneBook, "states", "zone states"),
                                     (service.ControlService, "_publish_zones", "publish (queue zone writes)"),
                                     (service.ControlService, "_flush", "fenced write (MULTI/EXEC)"),
                                     (plans.PlanEngine, "evaluate", "plan pass"),
                                     (snapshot, "dump", "working memory")]:
                timed(obj, name, label)
        m = args.messages
        cycles = [0]
        prof = None
        c0, w0 = time.process_time(), time.perf_counter()
        if args.threads:
            def loop(s):
                while sum(x.applied for x in svcs) < m:
                    s.step(block_ms=20)
                    with lock:
                        cycles[0] += 1
            ts = [threading.Thread(target=loop, args=(s,)) for s in svcs]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        else:
            if args.profile:
                import cProfile

                prof = cProfile.Profile(time.process_time)
                prof.enable()
            while sum(s.applied for s in svcs) < m:
                for s in svcs:
                    s.step(block_ms=1)
                    cycles[0] += 1
            if prof:
                prof.disable()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        n = sum(s.applied for s in svcs)
        print(f"{args.cameras} cameras, {len(svcs)} partitions, {n} observations, "
              f"{'a thread per partition' if args.threads else 'one thread'}, switch interval "
              f"{sys.getswitchinterval() * 1000:g} ms: {cpu / n * 1e6:.1f} µs of CPU per observation, "
              f"{n / wall:.0f} obs/s, {cycles[0]} cycles")
        for label, v in sorted(acc.items(), key=lambda x: -x[1]):
            print(f"  {label:40s} {v / n * 1e6:6.1f} µs/obs")
        if prof:
            import pstats

            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    finally:
        for k in r.scan_iter(match=f"{prefix}*", count=1000):
            r.delete(k)
    return 0


def trickle(r, svc, d: dict, parts: dict[int, str], k: int, cycles: int = 400) -> int:
    from control.service import tune_gc

    cams = [c for c, p in parts.items() if p == next(iter(d["control"]["partitions"]))]
    rng = np.random.default_rng(1)
    try:
        svc.fenced = True
        assert svc.lease.acquire()
        svc.start()
        tune_gc()
        cpu, seq = 0.0, 0
        for _ in range(cycles):
            pipe = r.pipeline(transaction=False)
            for _ in range(k):
                seq += 1
                pipe.xadd(svc.keys.obs, {"rec": payload(cams[seq % len(cams)], seq, time.time(), rng)})
            pipe.execute()
            t = time.process_time()
            svc.step(block_ms=10)
            cpu += time.process_time() - t
        print(f"one partition of {len(cams)} zones, {k} observations per cycle, {cycles} cycles: "
              f"{cpu / cycles * 1e3:.2f} ms of CPU per cycle ({cpu / cycles / k * 1e6:.0f} µs per observation); "
              f"applied {svc.applied}")
    finally:
        for key in r.scan_iter(match=f"{svc.keys.prefix}*", count=1000):
            r.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
