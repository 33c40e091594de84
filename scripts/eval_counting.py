"""Counting accuracy and speed on ShanghaiTech Part B (train split) with a fixed validation part.

    YOLO_OFFLINE=1 .venv/bin/python scripts/eval_counting.py [--limit N] [--out var/eval.csv]

Every 5th photo (sorted by name: IMG_1, IMG_10, …; 20 %) is the validation part; the rest
is for tuning. For each photo it records the plain 448-px detection count, the tiled count
(scales inferred from the image), the density-model count and the counter's choice, then
prints MAE, mean relative error and ms/frame per method on both parts, and the dense-count
threshold that minimises tuning-part MAE (to copy into CounterSettings.dense_count).

The default density model is the head on the detector's features, trained on the tuning part
only (scripts/train_density_head.py), so its validation figures are honest. The shared MCNN
weights (``--density ../shared/models/mcnn_shtechB_110.h5``) were trained on all of
ShanghaiTech B train: their figures on the validation part are optimistic.
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


def split(names: list[str]) -> dict[str, str]:
    return {n: ("val" if i % 5 == 0 else "tune") for i, n in enumerate(sorted(names))}


def stats(rows, key) -> tuple[float, float]:
    err = np.array([r[key] - r["gt"] for r in rows], dtype=float)
    rel = np.abs(err) / np.array([r["gt"] for r in rows], dtype=float)
    return float(np.abs(err).mean()), float(rel.mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(SHARED / "data" / "shtech_b_train"))
    ap.add_argument("--model", default=str(SHARED / "models" / "yolo11n_int8_openvino_model"))
    ap.add_argument("--density", help="density weights (default: as `crowdflow count` resolves them: the "
                    "shipped head models/yolo11n-density-head.pt); e.g. ../shared/models/mcnn_shtechB_110.h5")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="var/eval_counting.csv")
    ap.add_argument("--reuse", action="store_true", help="re-tune from --out without running the models")
    args = ap.parse_args()

    data = Path(args.data)
    gt = {}
    with open(data / "counts.csv") as f:
        for row in csv.DictReader(f):
            gt[row["image_file"]] = int(row["count"])
    parts = split(list(gt))
    out = Path(args.out)
    rows = []
    if args.reuse and out.exists():
        with open(out) as f:
            rows = [{k: (v if k in ("image", "part", "method") else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
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
        names = sorted(gt)[: args.limit] if args.limit else sorted(gt)
        for i, name in enumerate(names):
            img = cv2.imread(str(data / "images" / name))
            t0 = time.perf_counter()
            plain = det(img)
            t1 = time.perf_counter()
            scale = PersonScale.from_detections(plain, img.shape[0])
            tiled, tiles = counter.detect_tiled(img, scale)
            t2 = time.perf_counter()
            d = dm(img)
            t3 = time.perf_counter()
            res = counter.count(img)
            rows.append({"image": name, "part": parts[name], "gt": gt[name], "plain": len(plain),
                         "tiled": len(tiled), "tiles": len(tiles), "density": round(d.count, 2),
                         "auto": round(res.count, 2), "method": res.method, "confidence": res.confidence,
                         "ms_plain": round((t1 - t0) * 1000, 1), "ms_tiled": round((t2 - t1) * 1000 + (t1 - t0) * 1000, 1),
                         "ms_density": round((t3 - t2) * 1000, 1), "ms_auto": round(res.ms, 1)})
            if i % 20 == 0:
                print(f"{i}/{len(names)} {name}: gt {gt[name]} plain {len(plain)} tiled {len(tiled)} "
                      f"density {d.count:.0f} auto {res.count:.0f} ({res.method}) {res.ms:.0f} ms", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    for part in ("tune", "val"):
        sel = [r for r in rows if r["part"] == part]
        if not sel:
            continue
        print(f"\n{part}: {len(sel)} photos, mean count {np.mean([r['gt'] for r in sel]):.0f}")
        for key in ("plain", "tiled", "density", "auto"):
            mae, mre = stats(sel, key)
            ms = np.median([r[f"ms_{key}"] for r in sel])
            print(f"  {key:8s} MAE {mae:6.1f}  mean rel. error {mre * 100:5.1f} %  median {ms:5.0f} ms/frame")
        small = [r for r in sel if r["gt"] <= 50]
        if small:
            for key in ("tiled", "density", "auto"):
                mae, mre = stats(small, key)
                print(f"  ≤50 people ({len(small)}): {key:8s} MAE {mae:5.1f}  mean rel. error {mre * 100:5.1f} %")
        if "method" in sel[0]:
            ms = {m: sum(1 for r in sel if r["method"] == m) for m in ("detect", "tiled", "density")}
            print(f"  auto chose {ms}")
    tune = [r for r in rows if r["part"] == "tune"]
    if tune:
        print("\nconfidence table (1 − mean relative error on the tuning part; edge.counter.CONFIDENCE):")
        for method, key, sel, bins in (
            ("density", "density", tune, (20, 40, 80, 160, 320, float("inf"))),
            ("detect", "auto", [r for r in tune if r.get("method") != "density"], (10, 20, float("inf"))),
        ):
            lo, cells = 0.0, []
            for hi in bins:
                b = [r for r in sel if lo <= r[key] < hi]
                if b:
                    mre = np.mean([abs(r[key] - r["gt"]) / r["gt"] for r in b])
                    cells.append(f"<{hi:g}: {1 - mre:.2f} (n={len(b)})")
                lo = hi
            print(f"  {method:8s} " + ", ".join(cells))
        best = min(range(10, 301, 5), key=lambda t: np.mean(
            [abs((r["density"] if r["density"] >= t else r["tiled"]) - r["gt"]) for r in tune]))
        print(f"\nbest dense_count threshold on the tuning part: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
