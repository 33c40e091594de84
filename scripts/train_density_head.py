"""Train the density head that reads the detector's neck features (edge.density.FeatureDensityModel).

    YOLO_OFFLINE=1 .venv/bin/python scripts/train_density_head.py \
        --video ../shared/data/vtest.avi --out models/yolo11n-density-head.pt

1. Features: every photo of ShanghaiTech B train (and its mirror image) goes once through the
   detector's layers 16 and 19 at full resolution (edge.density.DetectorFeatures, the code the
   agent runs); they are kept in memory as float16 (~2 GB for 400 photos).
2. Targets: each head point spread by a Gaussian (σ = ``--sigma`` px) and summed into 8×8
   cells, so a map sums to the photo's count.
3. Footage of a fixed view (``--video``, optional): frames ``--video-frames`` pseudo-labelled
   by the tiled detector (a head point 10 % down each box). Use footage where detection is
   right — sparse, separated people — so the head learns that view's clutter is no one.
   Check it on hand-counted frames outside that range (tests/data/vtest_hand_counts.csv).
4. Training: the tuning part only (not every 5th photo, as scripts/eval_counting.py splits)
   plus the video frames; random 448×320-pixel crops, pixel MSE on density × 100, Adam with
   a cosine schedule, a moving average of the weights. The epoch is picked by count MAE on a
   tenth of the tuning part held aside; the validation part is never seen, and its figures
   are printed at the end.

The detector was never trained on ShanghaiTech, so the validation figures are honest ones.
Runs on 2 CPU cores in about 5 minutes (features 40 s, pseudo-labels ~1 min, 80 epochs ~3 min).
"""

from __future__ import annotations

import argparse
import json
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

from edge.density import HEAD_SCALE, HEADS, DetectorFeatures, _build_head, feature_input  # noqa: E402


def split(names):
    return {n: ("val" if i % 5 == 0 else "tune") for i, n in enumerate(sorted(names))}


def target(points, h, w, sigma, stride=8, flip=False):
    m = np.zeros((h, w), np.float32)
    for x, y in points:
        x = w - 1 - x if flip else x
        m[min(h - 1, max(0, int(y))), min(w - 1, max(0, int(x)))] += 1
    if sigma > 0 and len(points):
        m = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        m *= len(points) / max(float(m.sum()), 1e-9)
    hh, ww = h // stride, w // stride
    return m[: hh * stride, : ww * stride].reshape(hh, stride, ww, stride).sum(axis=(1, 3))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(SHARED / "data" / "shtech_b_train"))
    ap.add_argument("--model", default=str(SHARED / "models" / "yolo11n_int8_openvino_model"),
                    help="the detector whose features the head reads")
    ap.add_argument("--out", default="models/yolo11n-density-head.pt")
    ap.add_argument("--arch", default="yolo-neck-head", choices=sorted(HEADS))
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ema", type=float, default=0.99, help="decay of the weights' moving average, per step")
    ap.add_argument("--video", action="append", default=[],
                    help="footage of a sparse fixed view to add, pseudo-labelled by tiled detection (repeatable)")
    ap.add_argument("--video-frames", default="0:400:4", help="start:stop:step of the video frames used")
    ap.add_argument("--input-side", type=int, default=1280,
                    help="every photo and frame is scaled to this long side, in training and in use (0: as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from torch.nn import functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = Path(args.data)
    pts = json.loads((data / "points.json").read_text())
    names = sorted(pts)
    parts = split(names)
    spec = HEADS[args.arch]
    feats = DetectorFeatures(args.model, spec["layers"], args.threads)
    t0 = time.time()
    F3, F4, T = [], [], []  # sample 2k: a photo or frame, 2k + 1: its mirror image

    def add(img, points):
        x, f = feature_input(img, args.input_side)
        h, w = x.shape[2:]
        points = [(px * f, py * f) for px, py in points]
        for flip in (False, True):
            a3, a4 = feats(x[..., ::-1].copy() if flip else x)
            F3.append(a3[0].astype(np.float16))
            F4.append(a4[0].astype(np.float16))
            # a mirrored padded input has its padding on the left: mirror within the padded width
            T.append(target(points, h, w, args.sigma, spec["stride"], flip))

    for n in names:
        add(cv2.imread(str(data / "images" / n)), pts[n])
    print(f"features of {len(names)} photos ×2 in {time.time() - t0:.0f} s", flush=True)
    extra = []  # sample pairs from --video: pseudo-labelled frames, for training only
    if args.video:
        from edge.counter import CrowdCounter
        from edge.detector import PersonDetector

        counter = CrowdCounter(PersonDetector(args.model), None)
        start, stop, step = (int(v) for v in args.video_frames.split(":"))
        for video in args.video:
            cap = cv2.VideoCapture(video)
            for k in range(stop):
                ok, frame = cap.read()
                if not ok:
                    break
                if k < start or (k - start) % step:
                    continue
                det = counter.count(frame, mode="tiled").detections
                heads = [((x0 + x1) / 2, y0 + 0.1 * (y1 - y0)) for x0, y0, x1, y1 in det.xyxy]
                extra.append(len(T))
                add(frame, heads)
            cap.release()
        print(f"{len(extra)} pseudo-labelled frames from {len(args.video)} video(s)", flush=True)
    channels = [F3[0].shape[0], F4[0].shape[0]]
    gt = np.array([len(pts[n]) for n in names], float)
    val = [i for i, n in enumerate(names) if parts[n] == "val"]
    tune = [i for i, n in enumerate(names) if parts[n] == "tune"]
    hold = tune[::10]
    train = [2 * i for i in tune if i not in set(hold)] + extra  # first sample of each pair

    net = _build_head(channels, args.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    # The count of a small training set swings from step to step; an exponential moving average
    # of the weights is what gets evaluated and kept.
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))

    def counts(ids):
        with torch.no_grad():
            out = [float(ema.module(torch.from_numpy(F3[2 * i][None].astype(np.float32)),
                             torch.from_numpy(F4[2 * i][None].astype(np.float32))).sum()) / HEAD_SCALE for i in ids]
        return np.array(out)

    def mae(ids):
        return float(np.mean(np.abs(counts(ids) - gt[ids])))

    ch, cw = 40, 56  # crop in stride-8 cells (320×448 px: fits a padded 480×360 frame too)
    if min(t.shape[0] for t in T) < ch or min(t.shape[1] for t in T) < cw:
        raise SystemExit(f"--input-side {args.input_side} makes maps smaller than the {cw * 8}×{ch * 8} crops")
    best = (float("inf"), 0, None)
    t0 = time.time()
    for ep in range(1, args.epochs + 1):
        rng.shuffle(train)
        for k in range(0, len(train), args.batch):
            ids = train[k:k + args.batch]
            j = [i + int(f) for i, f in zip(ids, rng.integers(0, 2, len(ids)))]
            ys = [int(rng.integers(0, (T[q].shape[0] - ch) // 2 + 1)) * 2 for q in j]
            xs = [int(rng.integers(0, (T[q].shape[1] - cw) // 2 + 1)) * 2 for q in j]
            a3 = np.stack([F3[q][:, y:y + ch, x:x + cw] for q, y, x in zip(j, ys, xs)]).astype(np.float32)
            a4 = np.stack([F4[q][:, y // 2:(y + ch) // 2, x // 2:(x + cw) // 2] for q, y, x in zip(j, ys, xs)]).astype(np.float32)
            t = np.stack([T[q][y:y + ch, x:x + cw] for q, y, x in zip(j, ys, xs)])[:, None] * HEAD_SCALE
            loss = F.mse_loss(net(torch.from_numpy(a3), torch.from_numpy(a4)), torch.from_numpy(t), reduction="sum") / len(ids)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update_parameters(net)
        sched.step()
        if ep % 5 == 0 or ep == args.epochs:
            h = mae(hold)
            if h < best[0]:
                best = (h, ep, {k: v.detach().clone() for k, v in ema.module.state_dict().items()})
            print(f"epoch {ep}: hold-out MAE {h:.2f} (best {best[0]:.2f} @ {best[1]}) {time.time() - t0:.0f} s", flush=True)
    ema.module.load_state_dict(best[2])

    def figures(ids):
        c = counts(ids)
        e = c - gt[ids]
        return {"photos": len(ids), "mae": round(float(np.abs(e).mean()), 2),
                "mean_rel_error": round(float((np.abs(e) / gt[ids]).mean()), 4), "bias": round(float(e.mean()), 2)}

    meta = {"backbone": f"{Path(args.model).name} (ultralytics YOLO11n, COCO)", "input_side": args.input_side, "data":
            "ShanghaiTech B train, tuning part (photos not every 5th by name); validation part never seen",
            "epochs": args.epochs, "best_epoch": best[1], "sigma": args.sigma, "lr": args.lr, "batch": args.batch,
            "seed": args.seed, "tune": figures(tune), "val": figures(val),
            "command": "python scripts/train_density_head.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": args.arch, "channels": channels, "hidden": args.hidden, "input_side": args.input_side or None,
                "state_dict": ema.module.state_dict(), "meta": meta}, out)
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
