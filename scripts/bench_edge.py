"""Edge benchmark: the bare model loop against the full agent loop on the same frames, in one
process, and the counter's ms per 1024×768 frame in dense and sparse street scenes.

    YOLO_OFFLINE=1 .venv/bin/python scripts/bench_edge.py [--frames 100] [--photos 20]

* sparse: vtest.avi frames (decoded once, in memory) through (a) ``EdgeAgent.process`` for
  cam-cangbai-plaza + one observation per 10 frames published to Redis (or the spool when none
  answers): view check and density regime look once a second of frame time, the zone counter
  (tracking pass for the gate, tiled detection where the calibration says people are small),
  gates, window; and (b) the bare library: exactly the model calls the agent made on that frame
  (same inputs, same batches: ultralytics predict + ByteTrack, the density model), recorded
  through a thin wrapper and replayed on a second detector with its own tracker. Frames carry
  timestamps 1/``edge.max_fps`` apart, as from a live camera at the agent's rate, so the
  once-a-second checks fall on the same frames however loaded the machine is. The two loops
  alternate frame by frame, and which goes first alternates too, so both share the machine's
  noise and neither always finds the other's data in the caches; a round is one pass over the
  frames; the figure is the median round's ratio agent/bare (target ≥ 0.9), every round printed.
  Batching the tracking pass with the tiles into one predict call gains nothing here (the
  OpenVINO model is fixed at batch 1; ultralytics runs a batch image by image: 78–80 ms either
  way), so the agent's own calls are the best the library does for this work.
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


class Recorded:
    """A detector or density model that notes each model call it passes on (kind, input,
    setting) and the time spent in it, so the bare loop can make exactly the same calls."""

    def __init__(self, inner, calls: list[tuple], spent: list[float]):
        self._inner, self._calls, self._spent = inner, calls, spent

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _timed(self, fn, *a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            self._spent[0] += time.perf_counter() - t0

    def __call__(self, frame, side=None):
        if hasattr(self._inner, "track"):  # a detector: one image through detect_many
            return self.detect_many([frame])[0]
        self._calls.append(("density", frame, side))
        return self._timed(self._inner, frame, side=side)

    def detect_many(self, frames, conf=None):
        self._calls.append(("detect_many", list(frames), conf))
        return self._timed(self._inner.detect_many, frames, conf=conf)

    def track(self, frame):
        self._calls.append(("track", frame, None))
        return self._timed(self._inner.track, frame)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--density", help="density weights (default: as the agent resolves them, the shipped "
                    "head models/yolo11n-density-head.pt); e.g. ../shared/models/mcnn_shtechB_110.h5")
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--prefix", help="Redis key prefix (default bench-<pid>; its keys are deleted at the end)")
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
    det = PersonDetector(model, site.edge.imgsz, site.edge.conf)  # the counter's for the photos below
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

    keys = Keys(args.prefix or f"bench-{os.getpid()}")
    try:
        r = connect(args.redis)
        r.ping()
        where = args.redis
    except redis.RedisError:
        r, where = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), "spool (no redis)"
    tmp = tempfile.mkdtemp()
    spool = Spool(Path(tmp) / "spool.sqlite")
    # Two detectors on the same weights, one per loop: each keeps its own ByteTrack state, so
    # both track the same frame sequence. The density model keeps no state: one for both.
    calls: list[tuple] = []
    in_model = [0.0]  # seconds the agent spent inside its model calls
    adet = Recorded(PersonDetector(model, site.edge.imgsz, site.edge.conf), calls, in_model)
    adm = Recorded(dm, calls, in_model) if dm is not None else None
    bdet = PersonDetector(model, site.edge.imgsz, site.edge.conf)
    counter = CrowdCounter(adet, adm, CounterSettings(target_px=site.edge.tile_target_px))
    agent = EdgeAgent(site, "cam-cangbai-plaza", FrameGrabber("bench"), counter, Publisher(r, keys, spool))
    agent.grabber.online = True
    period = 1.0 / site.edge.max_fps  # frames arrive as from a live camera at the agent's frame rate
    clock = [time.time()]

    def tick() -> float:
        clock[0] += period
        return clock[0]

    def replay(f, made: list[tuple]) -> None:
        """The agent's model calls for this frame, made straight to the library."""
        for kind, arg, extra in made:
            if kind == "track":
                bdet.track(f)
            elif kind == "detect_many":
                bdet.detect_many(arg, conf=extra)
            else:
                dm(arg, side=extra)

    made: list[list[tuple]] = [[] for _ in frames]  # the agent's calls on each frame, last pass

    def round_() -> tuple[float, float, int, int, float]:
        """One pass over the frames, interleaved frame by frame: the agent (view check,
        counter, gates, window, a publish every 10 frames) and the same model calls bare. Who
        goes first alternates: on odd frames the bare loop goes first, replaying the calls the
        agent made on that frame in the previous pass (they repeat: same tiles, checks on the
        same frames; both loops' calls are counted)."""
        ta = tb = 0.0
        n_agent = n_bare = 0
        in_model[0] = 0.0
        for i, f in enumerate(frames):
            t = tick()
            for bare_loop in ((True, False) if i % 2 else (False, True)):
                if bare_loop:
                    t0 = time.perf_counter()
                    replay(f, made[i])
                    tb += time.perf_counter() - t0
                    n_bare += images(made[i])
                    continue
                calls.clear()
                t0 = time.perf_counter()
                agent.process(t, f)
                if i % 10 == 9:
                    agent.flush(t)
                ta += time.perf_counter() - t0
                made[i] = list(calls)
                n_agent += images(made[i])
        return len(frames) / tb, len(frames) / ta, n_agent, n_bare, (ta - in_model[0]) / len(frames)

    def images(cs: list[tuple]) -> int:
        return sum(len(a) if k == "detect_many" else 1 for k, a, _ in cs)

    round_()  # warm-up of both paths; records the agent's calls for the first bare-first frames
    agent.window.discard_counts()

    bs, fs, own = [], [], []
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        b, a, n_agent, n_bare, o = round_()
        bs.append(b)
        fs.append(a)
        own.append(o)
    load1 = os.getloadavg()[0]
    ratios = [a / b for a, b in zip(fs, bs)]
    fb, fa = statistics.median(bs), statistics.median(fs)
    tiles = agent._layout(frames[0]).tiles or []
    print(f"sparse (vtest, {len(frames)} frames × {args.rounds} rounds at {site.edge.max_fps} fps frame times, "
          f"{len(tiles)} tile(s), publishing to {where}; load average {load0:.1f} → {load1:.1f}):")
    print(f"  model images per frame   agent {n_agent / len(frames):.2f}, bare {n_bare / len(frames):.2f}  (last round)")
    print(f"  bare model calls         {fb:6.1f} fps  {1000 / fb:6.1f} ms/frame")
    print(f"  full agent loop          {fa:6.1f} fps  {1000 / fa:6.1f} ms/frame")
    print(f"  agent's own work         {1000 * statistics.median(own):6.2f} ms/frame  (outside its model calls; "
          f"rounds {' '.join(f'{1000 * x:.2f}' for x in own)})")
    print(f"  ratio agent/bare         {statistics.median(ratios):6.2f}  (median round; target ≥ 0.9)")
    print(f"  per round                {' '.join(f'{x:.2f}' for x in ratios)}")
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
