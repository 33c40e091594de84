"""Edge benchmark: the bare model loop against the full agent loop on the same frames, in one
process, and the counter's ms per 1024×768 frame in dense and sparse street scenes.

    YOLO_OFFLINE=1 .venv/bin/python scripts/bench_edge.py [--frames 100] [--photos 20]

* sparse: vtest.avi frames (decoded once, in memory) through (a) the bare model call the agent
  makes for this camera (detection + ultralytics' ByteTrack, as cam-cangbai-plaza has a gate) and
  (b) ``EdgeAgent.process`` + one observation per 10 frames published to Redis (or the spool
  when none answers): view check, density regime check once a second, zones, gates, window.
  Rounds are interleaved (bare, agent, bare, agent …) so both share the machine's noise; the
  figure is the ratio of the MEDIAN rounds (target ≥ 0.9), the per-round ratios are printed too.
* street photos: ShanghaiTech B photos (1024×768) through ``CrowdCounter.count`` (auto), ms/frame
  by the method it chose; and dense mode on the densest fifth of them (target ≤ 250 ms, 2 cores).

Timings on a shared machine: say in docs what else was running.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("CROWDFLOW_SHARED", REPO.parent / "shared"))
os.environ.setdefault("YOLO_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--density", help="density weights (default: as the agent resolves them, the shipped "
                    "head models/yolo11n-density-head.pt); e.g. ../shared/models/mcnn_shtechB_110.h5")
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()

    import redis
    import torch

    torch.set_num_threads(args.threads)
    from crowdflow.bus import Keys, connect
    from crowdflow.site import load_site
    from edge.agent import EdgeAgent
    from edge.counter import CounterSettings, CrowdCounter
    from edge.density import open_density_model
    from edge.detector import PersonDetector
    from edge.grabber import FrameGrabber
    from edge.spool import Publisher, Spool

    site = load_site(REPO / "configs" / "hongyadong.yaml")
    model = str(SHARED / "models" / "yolo11n_int8_openvino_model")
    det = PersonDetector(model, site.edge.imgsz, site.edge.conf)
    dm = open_density_model(None, args.density, model, threads=args.threads)
    print(f"density model: {dm.path if dm else None}")
    cap = cv2.VideoCapture(str(SHARED / "data" / "vtest.avi"))
    frames = []
    while len(frames) < args.frames:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()

    for f in frames[:5]:  # warm-up of both paths
        det.track(f)

    def bare() -> float:
        t0 = time.perf_counter()
        for f in frames:
            det.track(f)
        return len(frames) / (time.perf_counter() - t0)

    keys = Keys(f"bench-{os.getpid()}")
    try:
        r = connect(args.redis)
        r.ping()
        where = args.redis
    except redis.RedisError:
        r, where = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), "spool (no redis)"
    tmp = tempfile.mkdtemp()
    spool = Spool(Path(tmp) / "spool.sqlite")
    counter = CrowdCounter(det, dm, CounterSettings(target_px=site.edge.tile_target_px))
    agent = EdgeAgent(site, "cam-cangbai-plaza", FrameGrabber("bench"), counter, Publisher(r, keys, spool))
    agent.grabber.online = True
    for f in frames[:5]:
        agent.process(time.time(), f)
    agent.window.discard_counts()

    def full() -> float:
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            agent.process(time.time(), f)
            if i % 10 == 9:
                agent.flush(time.time())
        return len(frames) / (time.perf_counter() - t0)

    bs, fs = [], []
    for _ in range(args.rounds):  # interleaved, so both loops share the machine's noise
        bs.append(bare())
        fs.append(full())
    fb, fa = statistics.median(bs), statistics.median(fs)
    tiles = agent._layout(frames[0]).tiles or []
    print(f"sparse (vtest, {len(frames)} frames × {args.rounds} rounds, median round, {len(tiles)} tile(s), "
          f"publishing to {where}):")
    print(f"  bare model loop (track)  {fb:6.1f} fps  {1000 / fb:6.1f} ms/frame")
    print(f"  full agent loop          {fa:6.1f} fps  {1000 / fa:6.1f} ms/frame")
    print(f"  ratio agent/bare         {fa / fb:6.2f}  (median rounds; target ≥ 0.9)")
    print(f"  per round                {' '.join(f'{a / b:.2f}' for a, b in zip(fs, bs))}  "
          f"(best rounds {max(fs) / max(bs):.2f})")
    for k in r.scan_iter(match=keys.all_keys_pattern()):
        r.delete(k)
    spool.close()

    import csv

    data = SHARED / "data" / "shtech_b_train"
    with open(data / "counts.csv") as f:
        gt = {row["image_file"]: int(row["count"]) for row in csv.DictReader(f)}
    names = sorted(gt)[:: max(1, len(gt) // args.photos)][: args.photos]
    dense_names = sorted(gt, key=lambda n: -gt[n])[: max(1, len(gt) // 5)][:: max(1, len(gt) // 5 // args.photos)]
    dense_counter = CrowdCounter(det, dm)
    dense_counter.count(cv2.imread(str(data / "images" / names[0])))  # warm caches for this size once
    for title, sel, mode in (("street photos (ShanghaiTech B, 1024×768", names, "auto"),
                             ("densest fifth, dense mode (ShanghaiTech B, 1024×768", dense_names, "auto")):
        by_method: dict[str, list[float]] = {}
        for n in sel:
            res = dense_counter.count(cv2.imread(str(data / "images" / n)), mode=mode)
            by_method.setdefault(res.method, []).append(res.ms)
        print(f"{title}, {len(sel)} photos, {min(gt[n] for n in sel)}–{max(gt[n] for n in sel)} people, "
              f"{args.threads} threads):")
        for m, ms in sorted(by_method.items()):
            print(f"  {m:8s} n={len(ms):3d}  median {statistics.median(ms):6.1f} ms  max {max(ms):6.1f} ms")
        allms = [x for v in by_method.values() for x in v]
        print(f"  all      median {statistics.median(allms):6.1f} ms  p90 "
              f"{sorted(allms)[int(0.9 * (len(allms) - 1))]:6.1f} ms  (target ≤ 250 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
