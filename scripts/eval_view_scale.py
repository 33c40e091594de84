"""Per-view corrections of the density count for views never trained on, measured on the pick parts.

    YOLO_OFFLINE=1 .venv/bin/python scripts/eval_view_scale.py --set brt            # collect once (cached), then rules
    YOLO_OFFLINE=1 .venv/bin/python scripts/eval_view_scale.py --set shtech --parts pick,val
    YOLO_OFFLINE=1 .venv/bin/python scripts/eval_view_scale.py --set brt --report val   # held back, pick-chosen

Three ways to take a view's own bias out of the density head's count without hand counts, each
judged against the head as shipped (its own 1280-px side):

* ``size``: a person-size normaliser. The median height of confident full-frame detections (at
  the head's input scale) says how large people look in this view; the frame is fed to the head
  at ``1280 × (ref / size)^alpha`` px (within 896–1792) so people reach it at the size ``ref``.
* ``mass``: self-calibration. A confident detection with no other box near it is one person;
  the density mass inside its box should be 1. The count is divided by the median mass of a
  frame's isolated people (within 0.7–1.4).
* ``mass_view``: the same, the median over all frames of the view (a fixed camera's stream;
  here a camera/date group), as a running self-calibration would settle on.
* ``blend``: detection where the crowd is sparse. Cells whose neighbourhood (``win`` cells
  square) holds fewer than ``tau`` people take the detections whose head falls there; the
  density map keeps the rest.

Collection (cached in ``var/view-scale-<set>.json`` / ``.npz``): per frame the full-frame
detections (the detector at 448 px, as the counter's first pass), the head's count at each side
in :data:`SIDES` and its map at its own side. Settings are chosen on ``--choose`` (the pick
parts: views the head never fitted) by mean relative error; ``--report`` prints the parts named
with those settings only. Held-back parts are never used to choose.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("CROWDFLOW_SHARED", REPO.parent / "shared"))
os.environ.setdefault("YOLO_OFFLINE", "1")

SIDES = (896, 1088, 1280, 1536, 1792)
GRIDS = {
    "size": {"ref": (150, 200, 250, 300), "alpha": (0.5, 1.0)},
    "mass": {"conf": (0.4, 0.6), "pad": (0.1, 0.3)},
    "mass_view": {"conf": (0.4, 0.6), "pad": (0.1, 0.3)},
    "blend": {"win": (5, 9), "tau": (0.5, 1.0, 2.0), "conf": (0.25, 0.4)},
}


def samples(name: str, parts: set[str]):
    """(name, group, part, count, image) of a set: edge.datasets, or the vtest hand counts."""
    if name == "vtest":
        with open(REPO / "tests" / "data" / "vtest_hand_counts.csv") as f:
            truth = {int(r["frame"]): int(r["count"]) for r in csv.DictReader(f)}
        cap = cv2.VideoCapture(str(SHARED / "data" / "vtest.avi"))
        for i, n in truth.items():
            part = "val" if i >= 400 else "train"  # the head saw frames 0–399 (pseudo-labels)
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, img = cap.read()
            if ok and part in parts:
                yield f"vtest-{i}", "vtest", part, n, img
        cap.release()
        return
    from edge import datasets

    for s in datasets.load(name, SHARED):
        if s.part in parts:
            yield s.name, s.group, s.part, s.count, cv2.imread(str(s.path))


def collect(name: str, parts: set[str], model: str, threads: int,
            sides: tuple[int, ...] = SIDES) -> tuple[list[dict], dict]:
    """Per frame: its detections, the head's count at each of ``sides`` and its density map."""
    import torch

    torch.set_num_threads(threads)
    from edge.density import open_density_model
    from edge.detector import PersonDetector

    det = PersonDetector(model)
    dm = open_density_model(None, None, model, threads=threads)
    rows, maps = [], {}
    for i, (n, g, part, count, img) in enumerate(samples(name, parts)):
        d = det(img)
        r = {"name": n, "group": g, "part": part, "gt": count, "h": img.shape[0], "w": img.shape[1],
             "d448": np.c_[d.xyxy, d.conf].round(1).tolist()}
        for side in sides:
            r[f"c{side}"] = round(dm(img, side=side).count, 3)
        maps[n] = dm(img).density.astype(np.float32)
        rows.append(r)
        if i % 25 == 0:
            print(f"{i} {n}: gt {count} head {maps[n].sum():.1f}", file=sys.stderr)
    return rows, maps


def _boxes(r, conf: float = 0.0) -> np.ndarray:
    b = np.array(r["d448"], dtype=float).reshape(-1, 5)
    return b[b[:, 4] >= conf]


def person_size(r, conf: float = 0.4) -> float | None:
    """Median box height of confident people not cut by the bottom border, at the head's scale."""
    b = _boxes(r, conf)
    b = b[b[:, 3] < r["h"] - 2]
    return float(np.median(b[:, 3] - b[:, 1]) * 1280 / max(r["h"], r["w"])) if len(b) >= 2 else None


def rule_size(r, m, view, ref: float, alpha: float) -> float:
    s = person_size(r)
    side = 1280.0 if s is None else 1280 * float(np.clip((ref / s) ** alpha, SIDES[0] / 1280, SIDES[-1] / 1280))
    return float(np.interp(np.log(side), np.log(SIDES), [r[f"c{x}"] for x in SIDES]))


def isolated_mass(r, m, conf: float, pad: float) -> list[float]:
    """Density mass inside each confident box with no other box within ``pad`` of its size."""
    b = _boxes(r, conf)
    sy, sx = m.shape[0] / r["h"], m.shape[1] / r["w"]
    mass = []
    for i, (x0, y0, x1, y1, _) in enumerate(b):
        if y1 >= r["h"] - 2:
            continue
        X0, Y0, X1, Y1 = x0 - pad * (x1 - x0), y0 - pad * (y1 - y0), x1 + pad * (x1 - x0), y1 + pad * (y1 - y0)
        o = np.delete(b, i, 0)
        if len(o) and np.any((o[:, 0] < X1) & (o[:, 2] > X0) & (o[:, 1] < Y1) & (o[:, 3] > Y0)):
            continue  # not isolated
        a0, a1 = int(max(0, np.floor(Y0 * sy))), int(min(m.shape[0], np.ceil(Y1 * sy)))
        c0, c1 = int(max(0, np.floor(X0 * sx))), int(min(m.shape[1], np.ceil(X1 * sx)))
        mass.append(float(m[a0:a1, c0:c1].sum()))
    return mass


def _k(mass: list[float]) -> float:
    return float(np.clip(np.median(mass), 0.7, 1.4)) if mass else 1.0


def rule_mass(r, m, view, conf: float, pad: float) -> float:
    return float(m.sum()) / _k(isolated_mass(r, m, conf, pad))


def rule_mass_view(r, m, view, conf: float, pad: float) -> float:
    """As ``mass``, the median pooled over every frame of the view (a fixed camera's stream):
    ``view`` is (the view's frames, their maps)."""
    frames, maps = view
    return float(m.sum()) / _k([x for o in frames for x in isolated_mass(o, maps[o["name"]], conf, pad)])


def rule_blend(r, m, view, win: int, tau: float, conf: float) -> float:
    b = _boxes(r, conf)
    sparse = cv2.blur(m, (win, win)) * win * win < tau
    sy, sx = m.shape[0] / r["h"], m.shape[1] / r["w"]
    hx = ((b[:, 0] + b[:, 2]) / 2 * sx).astype(int).clip(0, m.shape[1] - 1)
    hy = ((b[:, 1] + 0.1 * (b[:, 3] - b[:, 1])) * sy).astype(int).clip(0, m.shape[0] - 1)
    return float(m[~sparse].sum()) + float(sparse[hy, hx].sum())


def rule_shipped(r, m, view) -> float:
    return r["c1280"]


RULES = {"size": rule_size, "mass": rule_mass, "mass_view": rule_mass_view, "blend": rule_blend}


def score(rows, maps, fn, kw) -> tuple[float, float, float]:
    """(MAE, mean relative error, bias) of rule ``fn`` with settings ``kw``; a view is a group."""
    gt = np.array([r["gt"] for r in rows], float)
    views = {g: ([r for r in rows if r["group"] == g], maps) for g in {r["group"] for r in rows}}
    c = np.array([fn(r, maps[r["name"]], views[r["group"]], **kw) for r in rows])
    return float(np.mean(np.abs(c - gt))), float(np.mean(np.abs(c - gt) / gt)), float(np.mean(c - gt))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="brt", help="brt, shtech or vtest")
    ap.add_argument("--parts", default="train,pick,val", help="parts to collect")
    ap.add_argument("--choose", default="pick", help="parts the settings are chosen on")
    ap.add_argument("--report", help="parts to report with the chosen settings (e.g. val), per group")
    ap.add_argument("--model", default=str(SHARED / "models" / "yolo11n_int8_openvino_model"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", help="default var/view-scale-<set>")
    args = ap.parse_args()

    cache = Path(args.cache or f"var/view-scale-{args.set}")
    if cache.with_suffix(".json").exists():
        rows = json.loads(cache.with_suffix(".json").read_text())
        maps = dict(np.load(cache.with_suffix(".npz")))
    else:
        rows, maps = collect(args.set, set(args.parts.split(",")), args.model, args.threads)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.with_suffix(".json").write_text(json.dumps(rows))
        np.savez_compressed(cache.with_suffix(".npz"), **maps)

    choose = [r for r in rows if r["part"] in args.choose.split(",")]
    mae, mre, bias = score(choose, maps, rule_shipped, {})
    print(f"{args.set}, chosen on {args.choose} ({len(choose)} frames)")
    print(f"  shipped head   MAE {mae:6.2f}  {mre * 100:5.1f} %  bias {bias:+6.2f}")
    chosen = {}
    for name, grid in GRIDS.items():
        fits = []
        for values in itertools.product(*grid.values()):
            kw = dict(zip(grid, values))
            fits.append((score(choose, maps, RULES[name], kw), kw))
        (mae, mre, bias), kw = min(fits, key=lambda f: f[0][1])
        chosen[name] = kw
        print(f"  {name:6s} best {kw}: MAE {mae:6.2f}  {mre * 100:5.1f} %  bias {bias:+6.2f}")
    if args.report:
        rep = [r for r in rows if r["part"] in args.report.split(",")]
        for g in ["all"] + sorted({r["group"] for r in rep}):
            sel = rep if g == "all" else [r for r in rep if r["group"] == g]
            cells = [("shipped", score(sel, maps, rule_shipped, {}))]
            cells += [(n, score(sel, maps, RULES[n], kw)) for n, kw in chosen.items()]
            print(f"  {args.report} {g:12s} {len(sel):3d} frames  " + "  ".join(
                f"{n} {mre * 100:5.1f} % ({bias:+5.2f})" for n, (mae, mre, bias) in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
