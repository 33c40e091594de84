"""`crowdflow count`: count people in an image, a folder of images or a video."""

from __future__ import annotations

import json
import sys
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


def annotate(img: np.ndarray, res, zones_px: list[np.ndarray] | None = None) -> np.ndarray:
    """Density heat map, tiles, boxes, zones and the count drawn on a copy of ``img``."""
    out = img.copy()
    h, w = out.shape[:2]
    if res.density is not None and res.method == "density":
        d = cv2.resize(res.density, (w, h), interpolation=cv2.INTER_LINEAR)
        d = np.clip(d / max(float(d.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
        heat = cv2.applyColorMap(d, cv2.COLORMAP_JET)
        out = cv2.addWeighted(out, 0.6, heat, 0.4, 0)
    for t in res.tiles if len(res.tiles) > 1 else []:
        cv2.rectangle(out, (t.x0, t.y0), (t.x1 - 1, t.y1 - 1), (255, 200, 0), 1)
    if res.detections is not None and res.method != "density":
        for x0, y0, x1, y1 in res.detections.xyxy.astype(int):
            cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), 2)
    for poly in zones_px or []:
        cv2.polylines(out, [np.round(poly).astype(np.int32)], True, (0, 200, 255), 2)
    label = f"{res.count:.0f} people  {res.method}  conf {res.confidence:.2f}"
    cv2.rectangle(out, (0, 0), (12 + 11 * len(label), 30), (0, 0, 0), -1)
    cv2.putText(out, label, (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class Annotator:
    """Writes annotated frames: a video file for a video input, else one image per input image."""

    def __init__(self, target: str, video_fps: float | None):
        self.target = Path(target)
        self.video_fps = video_fps
        self.writer = None

    def write(self, source: str, idx: int, img: np.ndarray) -> None:
        if self.video_fps:
            if self.writer is None:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                h, w = img.shape[:2]
                self.writer = cv2.VideoWriter(str(self.target), cv2.VideoWriter_fourcc(*"mp4v"), self.video_fps, (w, h))
                if not self.writer.isOpened():
                    raise InputError(f"cannot write video {self.target}")
            self.writer.write(img)
            return
        if self.target.suffix.lower() in IMAGE_EXT:  # one image in, one named image out
            self.target.parent.mkdir(parents=True, exist_ok=True)
            path = self.target
        else:
            self.target.mkdir(parents=True, exist_ok=True)
            path = self.target / Path(source).name
        if not cv2.imwrite(str(path), img):
            raise InputError(f"cannot write image {path}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


FIELDS = ["source", "frame", "count", "method", "confidence", "ms", "density_count", "tiles"]


def run_count(path: str, counter, as_json: bool, out=sys.stdout, progress: bool | None = None,
              limit: int | None = None, mode: str = "auto", csv_path: str | None = None,
              json_path: str | None = None, annotate_to: str | None = None, layout=None) -> list[dict]:
    """Count every image/frame of ``path`` with the crowd counter (the policy the edge agent
    runs); one record per image/frame.

    ``layout`` (an :class:`edge.counter.ZoneLayout` from a camera's calibration) counts that
    camera's zones with its person size per row, as its agent does, and adds them to each
    record; without it the whole image is one zone and the person size is inferred from it."""
    import csv

    from tqdm import tqdm  # edge extra

    total, frames = iter_frames(path)
    if limit is not None:
        total = min(total, limit) if total else limit
    show = progress if progress is not None else (total or 0) > 1
    bar = tqdm(total=total, unit="frame", file=sys.stderr, disable=not show, dynamic_ncols=True)
    fps = None
    if annotate_to and Path(path).is_file() and Path(path).suffix.lower() not in IMAGE_EXT:
        cap = cv2.VideoCapture(path)
        fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
        cap.release()
    ann = Annotator(annotate_to, fps) if annotate_to else None
    records = []
    try:
        for source, idx, img in frames:
            res = counter.count(img, mode=mode, layout=layout)
            rec = {"source": source, "frame": idx, "count": round(res.count, 1), "method": res.method,
                   "confidence": round(res.confidence, 3), "ms": round(res.ms, 1),
                   "density_count": None if res.density_count is None else round(res.density_count, 1),
                   "tiles": len(res.tiles) or 1}
            if layout is not None:
                rec["zones"] = {z: {"count": round(e.count, 1), "method": e.method, "confidence": round(e.confidence, 3)}
                                for z, e in res.zones.items()}
            records.append(rec)
            if as_json:
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            else:
                out.write(f"{source}\t{idx}\t{rec['count']:g}\t{res.method}\n")
            if ann is not None:
                ann.write(source, idx, annotate(img, res, layout.zone_polygons_px() if layout is not None else None))
            bar.update(1)
            if limit is not None and len(records) >= limit:
                break
    finally:
        bar.close()
        out.flush()
        if ann is not None:
            ann.close()
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(records)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(records, ensure_ascii=False, indent=1))
    return records
