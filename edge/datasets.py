"""The annotated development sets in ``../shared/data`` and how they are split.

Never split near-duplicate frames at random: a CCTV view seen in training says little about
views never seen. The Beijing-BRT frames are split by (camera prefix, recording date) group,
as its MANIFEST asks; the groups below were chosen once, by looking at one frame per group,
so that the held-back groups show platform layouts that differ from the training ones.

* ``train``: fitted on (the density head; pseudo-labels never come from here);
* ``pick``:  used only to choose the training epoch (a view not trained on either);
* ``val``:   held back, never trained on, never used to choose anything: the figures we report.

ShanghaiTech B (street photos): every 5th photo by sorted name is ``val``; of the rest every
10th is ``pick`` and the others ``train`` (the split ``scripts/eval_counting.py`` always used).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

BRT_VAL_GROUPS = ("1-20160620", "1-20170419", "2-20170506", "2-20170507")
BRT_PICK_GROUPS = ("2-20170419",)


@dataclass
class Sample:
    name: str
    path: Path
    count: int  # annotated people (as the dataset's counts.csv says)
    points: list[tuple[float, float]] = field(repr=False)  # head points inside the image
    group: str
    part: str  # train | pick | val


def shtech_b(root: str | Path) -> list[Sample]:
    root = Path(root)
    pts = json.loads((root / "points.json").read_text())
    out = []
    for i, n in enumerate(sorted(pts)):
        tune_i = i - (i // 5 + 1)  # index among the non-val photos
        part = "val" if i % 5 == 0 else ("pick" if tune_i % 10 == 0 else "train")
        out.append(Sample(n, root / "images" / n, len(pts[n]), [tuple(p) for p in pts[n]], "shtech-b", part))
    return out


def brt_cctv(root: str | Path) -> list[Sample]:
    root = Path(root)
    pts = json.loads((root / "points.json").read_text())
    out = []
    with open(root / "meta.csv", newline="") as f:
        for row in csv.DictReader(f):
            n = row["image_file"]
            g = f"{row['camera']}-{row['timestamp'][:8]}"
            part = "val" if g in BRT_VAL_GROUPS else "pick" if g in BRT_PICK_GROUPS else "train"
            inside = [(x - 1.0, y - 1.0) for x, y in pts[n] if 0 <= x - 1 < 360 and 0 <= y - 1 < 640]  # 1-based
            out.append(Sample(n, root / "frames" / n, int(row["count"]), inside, g, part))
    return out


def load(name: str, shared: str | Path) -> list[Sample]:
    shared = Path(shared)
    if name in ("shtech", "shtech-b"):
        return shtech_b(shared / "data" / "shtech_b_train")
    if name in ("brt", "beijing-brt"):
        return brt_cctv(shared / "data" / "beijing_brt_cctv")
    raise ValueError(f"unknown dataset {name!r} (shtech, brt)")
