"""Train the density head that reads the detector's neck features (edge.density.FeatureDensityModel).

    YOLO_OFFLINE=1 .venv/bin/python scripts/train_density_head.py \
        --video ../shared/data/vtest.avi --out models/yolo11n-density-head.pt

1. Features: every training photo/frame (its mirror image with ``--flip 1``, and ``--augment``
   night/weather versions) goes once through the detector's neck layers (16, 19; and 22 for
   ``--arch yolo-neck-head-p5``) at the head's input size (edge.density.DetectorFeatures, the
   code the agent runs). They are stored as float16 .npy files in ``--cache`` (one per sample
   and layer, keyed by detector, input side and variant) and memory-mapped: a second run with
   other training settings skips the extraction (on the shared 2 cores it is most of the time).
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
import hashlib
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
from edge.density import density_target as target  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="shtech,brt", help="annotated sets (edge.datasets): shtech, brt; their "
                    "train parts are fitted, their pick parts choose the epoch, their val parts are only reported")
    ap.add_argument("--model", default=str(SHARED / "models" / "yolo11n_int8_openvino_model"),
                    help="the detector whose features the head reads")
    ap.add_argument("--out", default="models/yolo11n-density-head.pt")
    ap.add_argument("--arch", default="yolo-neck-head", choices=sorted(HEADS))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ema", type=float, default=0.99, help="decay of the weights' moving average, per step")
    ap.add_argument("--augment", type=int, default=1,
                    help="night/weather versions (edge.augment: low light, floodlight, rain) per training frame")
    ap.add_argument("--zoom", type=float, default=1.3,
                    help="the night/weather versions are also scaled by a random factor in [1/zoom, zoom]")
    ap.add_argument("--video", action="append", default=[],
                    help="footage of a sparse fixed view to add, pseudo-labelled by tiled detection (repeatable)")
    ap.add_argument("--video-frames", default="0:400:4", help="start:stop:step of the video frames used")
    ap.add_argument("--input-side", type=int, default=1280,
                    help="every photo and frame is scaled to this long side, in training and in use (0: as is)")
    ap.add_argument("--init", help="start from this head file (fine-tuning, as `crowdflow adapt` does)")
    ap.add_argument("--limit", type=int, help="use every n-th frame of each set only (a quick smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-pick", action="store_true",
                    help="fit the BRT pick groups too (more views; the epoch is then chosen by --select)")
    ap.add_argument("--select", default="pick", choices=("pick", "last"),
                    help="keep the epoch with the best pick-part error, or the last one (the schedule's end)")
    ap.add_argument("--flip", type=int, default=1, help="add each training frame's mirror image (1) or not (0)")
    ap.add_argument("--every", default="", help="fit every n-th training frame of a set only, e.g. shtech=2")
    ap.add_argument("--val", type=int, default=1,
                    help="also compute the held-back parts' figures for the file's card (0: leave them to eval_counting.py)")
    ap.add_argument("--eval-every", type=int, default=5, help="epochs between pick-part checks (the best is saved)")
    ap.add_argument("--cap-group", type=int, default=0,
                    help="frames of one CCTV camera/date group (or video) drawn per epoch at most (0: all)")
    ap.add_argument("--cache", default="var/head-features", help="feature cache folder ('' for none)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from torch.nn import functional as F

    from edge import augment, datasets

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    spec = HEADS[args.arch]
    feats = DetectorFeatures(args.model, spec["layers"], args.threads)
    cache = Path(args.cache) if args.cache else None
    t0 = time.time()
    # One feature sample per (frame, variant); variants of one frame are grouped so an epoch
    # draws one of them per training frame. Features live in a disk cache (memory-mapped
    # float16 .npy, one file per sample and layer) keyed by the detector, the layers, the input
    # side and the variant; a variant's randomness comes from its own seed (seed, frame,
    # variant), so a second run reuses the first one's features.
    FE, T = [], []
    groups: dict[str, list[list[int]]] = {"train": []}
    group_of: list[str] = []  # each training frame's (set, camera/date group)
    evals: dict[str, list[tuple[int, float]]] = {}  # "<set>/<part>" -> (sample, annotated count)
    tag = hashlib.sha1(f"{Path(args.model).resolve()}|{args.input_side}".encode()).hexdigest()[:10]

    def add(key: str, load, points, flip=False, zoom=1.0) -> int:
        """``load()`` gives the (possibly degraded) image; it is called only on a cache miss
        (the image's size is needed either way, for the target)."""
        img = None
        files = [cache / tag / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.L{i}.npy" for i in spec["layers"]] \
            if cache else []
        if files and all(f.exists() for f in files):
            arrs = [np.load(f, mmap_mode="r") for f in files]
        else:
            img = load()
            x, _ = feature_input(img, round(args.input_side * zoom) if args.input_side else None)
            arrs = [a[0].astype(np.float16) for a in feats(x[..., ::-1].copy() if flip else x)]
            if files:
                files[0].parent.mkdir(parents=True, exist_ok=True)
                for f, a in zip(files, arrs):
                    np.save(f, a)
        h, w = arrs[0].shape[1] * spec["stride"], arrs[0].shape[2] * spec["stride"]
        size = sizes.get(key.split("|")[0])
        if size is None:
            img = img if img is not None else load()
            size = sizes[key.split("|")[0]] = img.shape[:2]
        f = (round(args.input_side * zoom) if args.input_side else max(size)) / max(size)
        if not args.input_side:
            f = min(1.0, 1280 / max(size))
        pts = [(px * f, py * f) for px, py in points]
        FE.append(arrs)
        # a mirrored padded input has its padding on the left: mirror within the padded width
        T.append(target(pts, h, w, args.sigma, spec["stride"], flip))
        return len(T) - 1

    sizes: dict[str, tuple[int, int]] = {}

    def add_train(name: str, read, points) -> None:
        ids = [add(name, read, points)] + ([add(f"{name}|flip", read, points, flip=True)] if args.flip else [])
        for k in range(args.augment):
            r = np.random.default_rng([args.seed, k, int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)])
            kind = augment.KINDS[int(r.integers(len(augment.KINDS)))]
            zoom = float(np.exp(r.uniform(-np.log(args.zoom), np.log(args.zoom))))  # people nearer or farther
            flip = bool(r.integers(2))
            ids.append(add(f"{name}|{kind}|{zoom:.4f}|{int(flip)}|{args.seed}.{k}", lambda: augment.degrade(read(), kind, r),
                           points, flip=flip, zoom=zoom))
        groups["train"].append(ids)

    fit_parts = {"train", "pick"} if args.fit_pick else {"train"}
    for name in args.sets.split(","):
        every = dict(kv.split("=") for kv in args.every.split(",") if kv).get(name, "1")
        fit = [s for s in datasets.load(name, SHARED) if s.part in fit_parts and not (name == "shtech" and s.part == "pick")]
        fit = set(s.name for s in fit[:: int(every)])
        for s in datasets.load(name, SHARED)[:: args.limit or 1]:
            def read(p=s.path):
                return cv2.imread(str(p))
            if s.name in fit:
                add_train(f"{name}/{s.name}", read, s.points)
                group_of.append(f"{name}/{s.group}")
            elif s.part in fit_parts and not (name == "shtech" and s.part == "pick"):
                continue  # a training frame left out by --every
            elif s.part == "val" and not args.val:
                continue
            else:
                evals.setdefault(f"{name}/{s.part}", []).append((add(f"{name}/{s.name}", read, s.points), float(s.count)))
        print(f"{name}: features in {time.time() - t0:.0f} s ({len(T)} samples)", flush=True)
    n_video = 0
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
                key = f"video/{Path(video).name}/{k}"
                groups["train"].append([add(key, lambda fr=frame: fr, heads)]
                                       + ([add(f"{key}|flip", lambda fr=frame: fr, heads, flip=True)] if args.flip else []))
                n_video += 1
                group_of.append(f"video/{video}")
            cap.release()
        print(f"{n_video} pseudo-labelled frames from {len(args.video)} video(s)", flush=True)
    channels = [a.shape[0] for a in FE[0]]
    levels = [1] + [2 ** (i + 1) for i in range(len(channels) - 1)]  # each layer's stride ÷ the first
    train = groups["train"]

    net = _build_head(channels, args.hidden)
    if args.init:
        net.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True)["state_dict"])
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    # The count of a small training set swings from step to step; an exponential moving average
    # of the weights is what gets evaluated and kept.
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))

    def counts(ids):
        with torch.no_grad():
            return np.array([float(ema.module(*(torch.from_numpy(a[None].astype(np.float32)) for a in FE[i])).sum())
                             / HEAD_SCALE for i in ids])

    def figures(key):
        ids, gt = zip(*evals[key])
        e = counts(list(ids)) - np.array(gt)
        return {"frames": len(ids), "mae": round(float(np.abs(e).mean()), 2),
                "mean_rel_error": round(float((np.abs(e) / np.array(gt)).mean()), 4), "bias": round(float(e.mean()), 2)}

    picks = [k for k in evals if k.endswith("/pick")]

    def pick_score():  # mean relative error, each set's pick part weighing the same
        return float(np.mean([figures(k)["mean_rel_error"] for k in picks]))

    ch, cw = 40, 56  # crop in stride-8 cells (320×448 px: fits a padded 480×360 frame too)
    if min(t.shape[0] for t in T) < ch or min(t.shape[1] for t in T) < cw:
        raise SystemExit(f"--input-side {args.input_side} makes maps smaller than the {cw * 8}×{ch * 8} crops")
    best = (float("inf"), 0, None)

    def save(best) -> dict:
        ema_state = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}
        ema.module.load_state_dict(best[2])
        meta = {"backbone": f"{Path(args.model).name} (ultralytics YOLO11n, COCO)", "input_side": args.input_side,
                "data": {"sets": args.sets, "train_frames": len(train) - n_video, "video_frames": n_video,
                         "fit_pick": args.fit_pick, "select": args.select, "zoom": args.zoom, "flip": args.flip,
                         "every": args.every, "cap_group": args.cap_group, "augment": args.augment, "brt_val_groups": list(datasets.BRT_VAL_GROUPS),
                         "brt_pick_groups": list(datasets.BRT_PICK_GROUPS)},
                "epochs": args.epochs, "best_epoch": best[1], "sigma": args.sigma, "lr": args.lr, "batch": args.batch,
                "seed": args.seed, **{k: figures(k) for k in sorted(evals)},
                "command": "python scripts/train_density_head.py " + " ".join(sys.argv[1:])}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"arch": args.arch, "channels": channels, "hidden": args.hidden, "input_side": args.input_side or None,
                    "state_dict": best[2], "meta": meta}, out)
        ema.module.load_state_dict(ema_state)
        return meta

    t0 = time.time()
    order = list(range(len(train)))
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(group_of):
        by_group.setdefault(g, []).append(i)
    for ep in range(1, args.epochs + 1):
        if args.cap_group:  # a view filmed for hours weighs no more than cap_group frames an epoch
            order = [i for g, ids in by_group.items() for i in
                     (ids if g.startswith("shtech") or len(ids) <= args.cap_group
                      else rng.choice(ids, args.cap_group, replace=False).tolist())]
        rng.shuffle(order)
        for k in range(0, len(order), args.batch):
            j = [train[g][int(rng.integers(len(train[g])))] for g in order[k:k + args.batch]]
            al = levels[-1]  # crops start on the coarsest layer's grid
            ys = [int(rng.integers(0, (T[q].shape[0] - ch) // al + 1)) * al for q in j]
            xs = [int(rng.integers(0, (T[q].shape[1] - cw) // al + 1)) * al for q in j]
            ins = [torch.from_numpy(np.stack([FE[q][i][:, y // m:(y + ch) // m, x // m:(x + cw) // m]
                                              for q, y, x in zip(j, ys, xs)]).astype(np.float32))
                   for i, m in enumerate(levels)]
            t = np.stack([T[q][y:y + ch, x:x + cw] for q, y, x in zip(j, ys, xs)])[:, None] * HEAD_SCALE
            loss = F.mse_loss(net(*ins), torch.from_numpy(t), reduction="sum") / len(j)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update_parameters(net)
        sched.step()
        if ep % args.eval_every == 0 or ep == args.epochs:
            h = pick_score() if picks and args.select == "pick" else -ep
            if h < best[0]:
                best = (h, ep, {k: v.detach().clone() for k, v in ema.module.state_dict().items()})
                meta = save(best)  # the best so far is on disk: a run stopped early still leaves a head
            print(f"epoch {ep}: pick mean rel. error {h:.4f} (best {best[0]:.4f} @ {best[1]}) {time.time() - t0:.0f} s "
                  + " ".join(f"{k} {figures(k)['mean_rel_error']:.3f}" for k in picks), flush=True)
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
