"""`crowdflow adapt`: fit the density head to one camera view, once per preset.

A head trained on other views reads a new view's clutter (railings, machines, lamps) as a few
people, and its people (seen steeply from above, far away) a little off. An installer records
a few minutes of the view at a quiet-to-normal time and runs

    crowdflow adapt --camera cam-cangbai-plaza --preset home --source view.mp4 [--hand-counts c.csv]

1. Frames are sampled evenly over the source (``--frames``). The first three quarters are for
   fitting, the last quarter (later in time, so not near-duplicates of the fitted ones) is
   held back for the before/after figures.
2. Pseudo-labels: frames the shipped head sees as sparse (fewer than ``dense_count`` people,
   where detection is right) are labelled by the tiled detector, a head point 10 % down each
   box. Hand counts (``frame,count`` CSV) label their frames too: the shipped head's density
   map there, rescaled to the hand count; they count before/after on their own as well.
3. Too sparse to learn — fewer than ``min_people`` people in all fitting frames, or fewer than
   ``min_frames`` frames with anybody — is refused with the reason, nothing stored.
4. Fine-tuning starts from the shipped head, on features computed once per frame (and its
   mirror image), within ``max_minutes`` on the CPU, with a progress bar.
5. The head is stored only if it is no worse than the shipped one on the held-back frames:
   ``<config dir>/adapted/<camera>/<preset>/head.pt`` with ``card.json`` and ``README.md``
   (frames, people, figures before and after). The edge agent uses it for that preset.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .density import HEAD_SCALE, FeatureDensityModel, density_target, feature_input


class AdaptRefused(ValueError):
    """The view cannot be learned from this footage; the message says why and what to do."""


def adapted_dir(config_dir: str | Path, camera_id: str, preset_id: str) -> Path:
    return Path(config_dir) / "adapted" / camera_id / preset_id


def adapted_head(config_dir: str | Path, camera_id: str, preset_id: str, counter) -> FeatureDensityModel | None:
    """The preset's adapted head on the counter's detector features, or None."""
    path = adapted_dir(config_dir, camera_id, preset_id) / "head.pt"
    base = getattr(counter, "density", None)
    if not path.exists() or not isinstance(base, FeatureDensityModel):
        return None
    return FeatureDensityModel(path, base.features.model, features=base.features)


@dataclass
class AdaptSettings:
    frames: int = 120  # frames sampled over the source
    held_back: float = 0.25  # the last share of them, for before/after figures
    min_people: int = 40  # pseudo-labelled people needed in the fitting frames
    min_frames: int = 8  # fitting frames with anybody in them
    max_minutes: float = 10.0
    epochs: int = 40
    batch: int = 8
    lr: float = 3e-4
    sigma: float = 4.0


@dataclass
class AdaptReport:
    camera: str
    preset: str
    frames_fit: int
    frames_held: int
    people_fit: int
    hand_counted: int
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    stored: Path | None = None
    seconds: float = 0.0

    def text(self) -> str:
        def fig(d):
            return ", ".join(f"{k} MAE {v['mae']:.2f} ({v['mean_rel_error'] * 100:.0f} %)" for k, v in d.items())

        return (f"{self.camera}/{self.preset}: fitted on {self.frames_fit} frames ({self.people_fit} people, "
                f"{self.hand_counted} hand-counted), held back {self.frames_held}\n"
                f"  before: {fig(self.before)}\n  after:  {fig(self.after)}\n"
                + (f"  stored {self.stored}" if self.stored else "  NOT stored: no better than the shipped head"))


def sample_frames(source: str, n: int, also: set[int] = frozenset()) -> list[tuple[int, np.ndarray]]:
    """``n`` frames evenly spread over a video, folder or image, and the frames ``also`` names
    (index, BGR)."""
    from .offline import iter_frames

    total, it = iter_frames(source)
    if not total:
        return [(k, img) for k, (_, _, img) in zip(range(n), it)]
    want = set(np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist()) | set(also)
    return [(k, img) for k, (_, _, img) in enumerate(it) if k in want]


def read_hand_counts(path: str | None) -> dict[int, float]:
    if not path:
        return {}
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out[int(row["frame"])] = float(row["count"])
    return out


def adapt(counter, layout_for, source: str, camera_id: str, preset_id: str, config_dir: str | Path,
          hand_counts: dict[int, float] | None = None, s: AdaptSettings = AdaptSettings(),
          progress: bool = True) -> AdaptReport:
    """Fine-tune ``counter``'s density head to the view in ``source``; store it when it helps.

    ``layout_for(frame)`` gives the view's :class:`edge.counter.ZoneLayout` (calibrated person
    size per row) for the pseudo-labelling detector."""
    import torch
    from torch.nn import functional as F
    from tqdm import tqdm

    base = counter.density
    if not isinstance(base, FeatureDensityModel):
        raise AdaptRefused("adaptation needs the density head on the detector's features (edge.density_model)")
    hand_counts = hand_counts or {}
    t_start = time.time()
    frames = sample_frames(source, s.frames, set(hand_counts))
    if len(frames) < 4:
        raise AdaptRefused(f"{source}: only {len(frames)} frames; record a few minutes of the view")
    n_fit = max(1, int(round(len(frames) * (1 - s.held_back))))
    side = base.input_side
    bar = tqdm(total=len(frames), unit="frame", desc="pseudo-labels", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    samples = []  # (frame index, fit?, features, flipped features, target, flipped target, label, kind)
    people_fit, frames_with_people = 0, 0
    for k, (idx, img) in enumerate(frames):
        fit = k < n_fit
        x, f = feature_input(img, side)
        h, w = x.shape[2:]
        fe = base.features(x)  # one array per layer the head reads (strides 8, 16[, 32])
        with torch.inference_mode():
            dmap = base.net(*(torch.from_numpy(a) for a in fe))[0, 0].numpy() / HEAD_SCALE
        base_count = float(dmap.sum())
        if idx in hand_counts:
            label, kind = hand_counts[idx], "hand"
            tgt = dmap * (label / base_count) if base_count > 1e-6 else np.zeros_like(dmap)
            if base_count <= 1e-6 and label > 0:
                bar.update(1)
                continue  # no shape to give the hand count
        elif base_count < counter.s.dense_count:
            res = counter.count(img, layout=layout_for(img), mode="tiled")
            det = res.detections
            heads = [((x0 + x1) / 2 * f, (y0 + 0.1 * (y1 - y0)) * f) for x0, y0, x1, y1 in det.xyxy]
            label, kind = float(len(heads)), "pseudo"
            tgt = density_target(heads, h, w, s.sigma, base.stride)
        else:
            bar.update(1)
            continue  # too crowded for detection to be right: no label
        if fit:
            people_fit += int(round(label))
            frames_with_people += label >= 1
        fef = base.features(np.ascontiguousarray(x[..., ::-1]))
        h16 = np.float16  # features kept at half precision (~4 MB a frame and its mirror image)
        samples.append((idx, fit, tuple(a[0].astype(h16) for a in fe), tuple(a[0].astype(h16) for a in fef),
                        tgt, tgt[:, ::-1].copy(), label, kind))
        bar.update(1)
    bar.close()
    fit_s = [x for x in samples if x[1]]
    held = [x for x in samples if not x[1]]
    n_hand = sum(1 for x in samples if x[7] == "hand")
    if people_fit < s.min_people or frames_with_people < s.min_frames:
        raise AdaptRefused(
            f"the view is too sparse to learn from this footage: {people_fit} people in {frames_with_people} of "
            f"{len(fit_s)} fitting frames (needs ≥ {s.min_people} people in ≥ {s.min_frames} frames). Record at a "
            f"busier time, or give hand counts (--hand-counts frame,count CSV)")
    if not held:
        raise AdaptRefused("no labelled frame left to hold back for the before/after check; give a longer source")

    net = _clone(base)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr, weight_decay=1e-5)

    def figures(model, rows):
        out = {}
        for kind in ("pseudo", "hand"):
            sel = [r for r in rows if r[7] == kind]
            if not sel:
                continue
            with torch.inference_mode():
                c = np.array([float(model(*(torch.from_numpy(a[None].astype(np.float32)) for a in r[2])).sum())
                              / HEAD_SCALE for r in sel])
            gt = np.array([r[6] for r in sel])
            e = c - gt
            out[kind] = {"frames": len(sel), "mae": round(float(np.abs(e).mean()), 2),
                         "mean_rel_error": round(float((np.abs(e) / np.maximum(gt, 1)).mean()), 4),
                         "bias": round(float(e.mean()), 2)}
        return out

    before = figures(base.net, held)
    budget = s.max_minutes * 60 - (time.time() - t_start)
    rng = np.random.default_rng(0)
    bar = tqdm(total=s.epochs, unit="epoch", desc="fine-tuning", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    net.train()
    ch, cw = 40, 56  # crops of 40×56 cells (320×448 px at the head's input size), as in training
    levels = [2 ** i for i in range(len(base.channels))]  # each layer's stride ÷ the first's
    al = levels[-1]  # crops start on the coarsest layer's grid
    for _ep in range(s.epochs):
        order = rng.permutation(len(fit_s))
        for b in range(0, len(order), s.batch):
            ins, ts = [[] for _ in levels], []
            for i in order[b:b + s.batch]:
                r = fit_s[i]
                fe, tgt = (r[3], r[5]) if rng.integers(2) else (r[2], r[4])
                H, W = tgt.shape
                y = int(rng.integers(0, max(0, H - ch) // al + 1)) * al
                x = int(rng.integers(0, max(0, W - cw) // al + 1)) * al
                hh, ww = min(ch, H), min(cw, W)
                for lst, a, m in zip(ins, fe, levels):
                    lst.append(a[:, y // m:(y + hh) // m, x // m:(x + ww) // m])
                ts.append(tgt[y:y + hh, x:x + ww])
            if len({t.shape for t in ts}) > 1:  # frames of several sizes: one at a time
                ins, ts = [lst[:1] for lst in ins], ts[:1]
            pred = net(*(torch.from_numpy(np.stack(lst).astype(np.float32)) for lst in ins))
            t = torch.from_numpy(np.ascontiguousarray(np.stack(ts))[:, None] * HEAD_SCALE)
            loss = F.mse_loss(pred, t, reduction="sum") / len(ts)
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.update(1)
        if time.time() - t0 > budget:
            break
    bar.close()
    net.eval()
    after = figures(net, held)
    rep = AdaptReport(camera_id, preset_id, len(fit_s), len(held), people_fit, n_hand, before, after,
                      seconds=round(time.time() - t_start, 1))
    key = "hand" if "hand" in after else "pseudo"
    if after[key]["mae"] <= before[key]["mae"]:
        rep.stored = _store(base, net, rep, source, config_dir, s)
    return rep


def _clone(base: FeatureDensityModel):
    import copy

    return copy.deepcopy(base.net)


def _store(base: FeatureDensityModel, net, rep: AdaptReport, source: str, config_dir, s: AdaptSettings) -> Path:
    import torch

    d = adapted_dir(config_dir, rep.camera, rep.preset)
    d.mkdir(parents=True, exist_ok=True)
    card = {"camera": rep.camera, "preset": rep.preset, "source": str(source), "base_head": str(base.path),
            "frames_fit": rep.frames_fit, "frames_held_back": rep.frames_held, "people_fit": rep.people_fit,
            "hand_counted_frames": rep.hand_counted, "before": rep.before, "after": rep.after,
            "epochs": s.epochs, "lr": s.lr, "seconds": rep.seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    obj = {"arch": base.arch_name, "channels": base.channels, "hidden": net.p3.out_channels,
           "input_side": base.input_side, "state_dict": net.state_dict(),
           "meta": {**base.meta, "adapted": card}}
    torch.save(obj, d / "head.pt")
    (d / "card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False))
    (d / "README.md").write_text(
        f"# Adapted density head: {rep.camera} / {rep.preset}\n\n"
        f"Fine-tuned from `{Path(str(base.path)).name}` by `crowdflow adapt` on {card['created']}.\n\n"
        f"| | |\n|---|---|\n| source | `{source}` |\n| fitting frames | {rep.frames_fit} ({rep.people_fit} people; "
        f"pseudo-labelled by tiled detection where sparse, {rep.hand_counted} hand-counted in all) |\n"
        f"| held back | the last {rep.frames_held} labelled frames (later in time) |\n"
        + "".join(f"| {k} before → after | MAE {rep.before[k]['mae']} → {rep.after[k]['mae']}, mean rel. error "
                  f"{rep.before[k]['mean_rel_error']:.1%} → {rep.after[k]['mean_rel_error']:.1%} |\n" for k in rep.after)
        + f"| time | {rep.seconds:.0f} s on the CPU |\n\n"
        "Pseudo-labels come from the detector, so the pseudo figures say how close the head came to "
        "detection on sparse frames; hand-counted figures are the real check. Delete this folder to go back "
        "to the shipped head.\n", encoding="utf-8")
    return d / "head.pt"
