"""People detection with ultralytics YOLO (COCO class 0 = person)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "yolo11n.pt"  # ultralytics downloads it on a machine with internet


def resolve_model(configured: str | None = None, override: str | None = None) -> str:
    """``--model`` beats ``CROWDFLOW_MODEL`` beats the config beats ultralytics' default."""
    return override or os.environ.get("CROWDFLOW_MODEL") or configured or DEFAULT_MODEL


def _ultralytics_logs_to_stderr() -> None:
    """ultralytics logs to stdout; our stdout carries data (`crowdflow count --json`)."""
    import logging
    import sys

    from ultralytics.utils import LOGGER

    for h in LOGGER.handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
            h.setStream(sys.stderr)


@dataclass
class Detections:
    xyxy: np.ndarray  # N×4 pixels
    conf: np.ndarray  # N
    ids: np.ndarray | None = None  # N track ids (ByteTrack), when tracked

    def __len__(self) -> int:
        return len(self.conf)


class PersonDetector:
    def __init__(self, model: str, imgsz: int = 448, conf: float = 0.25, device: str | None = None):
        from ultralytics import YOLO  # edge extra

        _ultralytics_logs_to_stderr()

        # A bare "*.pt" name is ultralytics' to download; anything else must exist here.
        if not Path(model).exists() and ("/" in model or os.sep in model or not model.endswith(".pt")):
            raise FileNotFoundError(f"model not found: {model} (set CROWDFLOW_MODEL or edge.model)")
        self.model_name = str(model)
        self.model = YOLO(str(model), task="detect")
        self.imgsz = imgsz
        self.conf = conf
        self.device = device
        self._tracker = None

    def __call__(self, frame: np.ndarray) -> Detections:
        return self.detect_many([frame])[0]

    def detect_many(self, frames: list[np.ndarray], conf: float | None = None) -> list[Detections]:
        if not frames:
            return []
        res = self.model.predict(
            frames, imgsz=self.imgsz, conf=conf or self.conf, classes=[0], verbose=False, device=self.device
        )
        return [_to_detections(r) for r in res]

    def track(self, frame: np.ndarray) -> tuple[Detections, Detections]:
        """(all detections, confirmed tracks with ids) from one inference.

        The tracks come from ultralytics' ByteTrack (``bytetrack.yaml``), whose state is kept
        between calls, as ``model.track(..., persist=True)`` keeps it. Unlike that call, the
        untracked detections are kept too: counting needs everyone in the frame now, while a
        new track is only confirmed on its second frame."""
        res = self.model.predict(frame, imgsz=self.imgsz, conf=self.conf, classes=[0], verbose=False,
                                 device=self.device)[0]
        if self._tracker is None:
            from ultralytics.trackers.byte_tracker import BYTETracker
            from ultralytics.utils import YAML, IterableSimpleNamespace
            from ultralytics.utils.checks import check_yaml

            self._tracker = BYTETracker(IterableSimpleNamespace(**YAML.load(check_yaml("bytetrack.yaml"))))
        tracks = self._tracker.update(res.boxes.cpu().numpy(), frame)
        if len(tracks):
            tracked = Detections(tracks[:, :4].astype(np.float64), tracks[:, 5].astype(np.float64),
                                 tracks[:, 4].astype(np.int64))
        else:
            tracked = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
        return _to_detections(res), tracked

    def reset_tracks(self) -> None:
        self._tracker = None


def _to_detections(res) -> Detections:
    boxes = res.boxes
    ids = boxes.id.cpu().numpy().astype(np.int64) if boxes.id is not None else None
    return Detections(boxes.xyxy.cpu().numpy().astype(np.float64), boxes.conf.cpu().numpy().astype(np.float64),
                      ids if ids is not None else None)
