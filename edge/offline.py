"""`crowdflow count`: count people in an image, a folder of images or a video."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class InputError(ValueError):
    pass


def iter_frames(path: str) -> tuple[int | None, Iterator[tuple[str, int, np.ndarray]]]:
    """(total or None, iterator of (source, frame index, BGR image))."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {path}")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT)
        if not files:
            raise InputError(f"no images ({', '.join(sorted(IMAGE_EXT))}) in {path}")

        def gen():
            for f in files:
                img = cv2.imread(str(f))
                if img is None:
                    print(f"warning: cannot read image {f}; skipped", file=sys.stderr)
                    continue
                yield str(f), 0, img

        return len(files), gen()
    if p.suffix.lower() in IMAGE_EXT:
        img = cv2.imread(str(p))
        if img is None:
            raise InputError(f"cannot read image {path}")
        return 1, iter([(str(p), 0, img)])
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise InputError(f"not an image, folder or readable video: {path}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None

    def vgen():
        i = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield str(p), i, frame
                i += 1
        finally:
            cap.release()

    return total, vgen()


def run_count(path: str, detector, as_json: bool, out=sys.stdout, progress: bool | None = None,
              limit: int | None = None) -> int:
    from tqdm import tqdm  # edge extra

    total, frames = iter_frames(path)
    if limit is not None:
        total = min(total, limit) if total else limit
    show = progress if progress is not None else (total or 0) > 1
    bar = tqdm(total=total, unit="frame", file=sys.stderr, disable=not show, dynamic_ncols=True)
    n_out = 0
    for source, idx, img in frames:
        t0 = time.perf_counter()
        det = detector(img)
        ms = (time.perf_counter() - t0) * 1000
        rec = {"source": source, "frame": idx, "count": len(det), "ms": round(ms, 1)}
        if as_json:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            out.write(f"{source}\t{idx}\t{len(det)}\n")
        n_out += 1
        bar.update(1)
        if limit is not None and n_out >= limit:
            break
    bar.close()
    out.flush()
    return n_out
