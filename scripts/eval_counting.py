"""Counting accuracy and speed of the counter `crowdflow count` runs, on an annotated set.

    YOLO_OFFLINE=1 .venv/bin/python scripts/eval_counting.py --set brt     [--limit N] [--out var/eval-brt.csv]
    YOLO_OFFLINE=1 .venv/bin/python scripts/eval_counting.py --set shtech  [--limit N] [--out var/eval-shtech.csv]

Sets and their parts are :mod:`edge.datasets`: the Beijing-BRT CCTV frames split by (camera,
date) group — ``val`` groups are held back, never trained on, never used to choose anything —
and ShanghaiTech B photos (every 5th by name is ``val``). For each frame it records the plain
448-px detection count, the tiled count (scales inferred from the image), the density-model
count and the counter's own choice (``auto``: the one policy, edge.counter.choose), and
prints per part: MAE, mean relative error, bias and median ms/frame per method; the MAE on the
densest fifth of the frames; the confidence table and the dense-count threshold that minimise
error on the *tuning* parts (train + pick) only, to copy into edge.counter.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("CROWDFLOW_SHARED", REPO.parent / "shared"))
os.environ.setdefault("YOLO_OFFLINE", "1")

KEYS = ("plain", "tiled", "density", "auto")


def stats(rows, key) -> tuple[float, float, float]:
    err = np.array([r[key] - r["gt"] for r in rows], dtype=float)
    rel = np.abs(err) / np.array([r["gt"] for r in rows], dtype=float)
    return float(np.abs(err).mean()), float(rel.mean()), float(err.mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="shtech", help="shtech or brt (edge.datasets)")
    ap.add_argument("--model", default=str(SHARED / "models" / "yolo11n_int8_openvino_model"))
    ap.add_argument("--density", help="density weights (default: as `crowdflow count` resolves them: the "
                    "shipped head models/yolo11n-density-head.pt); e.g. ../shared/models/mcnn_shtechB_110.h5")
    ap.add_argument("--parts", default="train,pick,val", help="which parts to run")
    ap.add_argument("--limit", type=int, help="every n-th frame only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="per-frame CSV (default var/eval-<set>.csv)")
    ap.add_argument("--quick", action="store_true", help="only the counter and its density pass (no detection-only runs)")
    ap.add_argument("--reuse", action="store_true", help="re-tune from --out without running the models")
    args = ap.parse_args()

    from edge import datasets

    out = Path(args.out or f"var/eval-{args.set}.csv")
    rows = []
    if args.reuse and out.exists():
        with open(out) as f:
            rows = [{k: (v if k in ("image", "group", "part", "method") else float(v)) for k, v in r.items()}
                    for r in csv.DictReader(f)]
    else:
        import torch

        torch.set_num_threads(args.threads)
        from edge.counter import CrowdCounter, PersonScale
        from edge.density import open_density_model
        from edge.detector import PersonDetector

        det = PersonDetector(args.model)
        dm = open_density_model(None, args.density, args.model, threads=args.threads)
        if dm is None:
            raise SystemExit("no density model: pass --density")
        print(f"density model: {dm.path}", file=sys.stderr)
        counter = CrowdCounter(det, dm)
        parts = set(args.parts.split(","))
        samples = [s for s in datasets.load(args.set, SHARED) if s.part in parts][:: args.limit or 1]
        for i, s in enumerate(samples):
            img = cv2.imread(str(s.path))
            res = counter.count(img)
            if args.quick:  # the counter's own density pass gives the density count; no detection-only runs
                nan = float("nan")
                plain, tiled, tiles, d = [], [], [], type("D", (), {"count": res.density_count})()
                t0 = t1 = t2 = 0.0
                t3 = res.ms / 1000
            else:
                t0 = time.perf_counter()
                plain = det(img)
                t1 = time.perf_counter()
                scale = PersonScale.from_detections(plain, img.shape[0])
                tiled, tiles = counter.detect_tiled(img, scale)
                t2 = time.perf_counter()
                d = dm(img)
                t3 = time.perf_counter()
            rows.append({"image": s.name, "group": s.group, "part": s.part, "gt": s.count,
                         "plain": nan if args.quick else len(plain), "tiled": nan if args.quick else len(tiled),
                         "tiles": len(tiles), "density": round(d.count, 2),
                         "auto": round(res.count, 2), "method": res.method, "confidence": round(res.confidence, 3),
                         "ms_plain": round((t1 - t0) * 1000, 1), "ms_tiled": round((t2 - t0) * 1000, 1),
                         "ms_density": round((t3 - t2) * 1000, 1), "ms_auto": round(res.ms, 1)})
            if i % 20 == 0:
                print(f"{i}/{len(samples)} {s.name}: gt {s.count} plain {len(plain)} tiled {len(tiled)} "
                      f"density {d.count:.0f} auto {res.count:.0f} ({res.method}) {res.ms:.0f} ms", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    print(f"set {args.set}; held-back groups: {sorted({r['group'] for r in rows if r['part'] == 'val'})}")
    for part in ("train", "pick", "val"):
        sel = [r for r in rows if r["part"] == part]
        if not sel:
            continue
        print(f"\n{part}: {len(sel)} frames, mean count {np.mean([r['gt'] for r in sel]):.1f}, groups "
              f"{sorted({r['group'] for r in sel})}")
        for key in KEYS:
            if any(np.isnan(r[key]) for r in sel):
                continue
            mae, mre, bias = stats(sel, key)
            ms = np.median([r[f"ms_{key}"] for r in sel])
            print(f"  {key:8s} MAE {mae:6.2f}  mean rel. error {mre * 100:5.1f} %  bias {bias:+6.2f}  "
                  f"median {ms:5.0f} ms/frame")
        for g in sorted({r["group"] for r in sel}):
            gs = [r for r in sel if r["group"] == g]
            if len(gs) > 1 and len({r["group"] for r in sel}) > 1:
                mae, mre, bias = stats(gs, "auto")
                print(f"    group {g:12s} {len(gs):3d} frames  auto MAE {mae:5.2f}  {mre * 100:5.1f} %  bias {bias:+5.2f}")
        dense = sorted(sel, key=lambda r: -r["gt"])[: max(1, len(sel) // 5)]
        mae, mre, bias = stats(dense, "auto")
        print(f"  densest fifth ({len(dense)} frames, {min(r['gt'] for r in dense):.0f}–{max(r['gt'] for r in dense):.0f} "
              f"people): auto MAE {mae:.2f}, {mre * 100:.1f} %, bias {bias:+.2f}, median "
              f"{np.median([r['ms_auto'] for r in dense]):.0f} ms")
        ms = {m: sum(1 for r in sel if r["method"] == m) for m in ("detect", "tiled", "density")}
        print(f"  auto chose {ms}")
    tune = [r for r in rows if r["part"] in ("train", "pick")]
    if tune:
        print("\nconfidence table (1 − mean relative error on the tuning parts; edge.counter.CONFIDENCE):")
        for method, key, sel, bins in (
            ("density", "density", tune, (20, 40, 80, 160, 320, float("inf"))),
            ("detect", "tiled", tune, (10, 20, float("inf"))),
        ):
            if any(np.isnan(r[key]) for r in sel):
                continue
            lo, cells = 0.0, []
            for hi in bins:
                b = [r for r in sel if lo <= r[key] < hi]
                if b:
                    mre = np.mean([abs(r[key] - r["gt"]) / r["gt"] for r in b])
                    cells.append(f"<{hi:g}: {1 - mre:.2f} (n={len(b)})")
                lo = hi
            print(f"  {method:8s} " + ", ".join(cells))
        if any(np.isnan(r["tiled"]) for r in tune):
            return 0
        best = min(range(0, 301, 2), key=lambda t: np.mean(
            [abs((r["density"] if r["density"] >= t else r["tiled"]) - r["gt"]) / r["gt"] for r in tune]))
        print(f"\nbest dense_count threshold on the tuning parts (mean rel. error): {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
