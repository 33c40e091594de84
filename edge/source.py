"""Video sources: files, RTSP/HTTP streams and local devices through OpenCV."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np


STREAM_TIMEOUT_MS = 5000  # open/read timeout of network streams (then the grabber reconnects)


class SourceError(RuntimeError):
    pass


def is_file_source(uri: str) -> bool:
    return "://" not in uri and not uri.isdigit()


class VideoSource:
    """Frames with their capture time.

    A file plays at its own frame rate when ``realtime`` (as a live camera would) or as fast as
    it can be read otherwise; ``loop`` restarts it at the end. Streams and devices are read
    as they come."""

    def __init__(self, uri: str, realtime: bool = True, loop: bool = False):
        self.uri = uri
        self.realtime = realtime
        self.loop = loop
        if is_file_source(uri) and not Path(uri).exists():
            raise SourceError(f"video not found: {uri}")
        self.cap = self._open()
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not (0 < self.fps < 1000):
            self.fps = 25.0

    def _open(self) -> cv2.VideoCapture:
        if "://" in self.uri:  # a stream: do not hang for minutes on a dead link
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                              cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
        else:
            cap = cv2.VideoCapture(int(self.uri) if self.uri.isdigit() else self.uri)
        if not cap.isOpened():
            raise SourceError(f"cannot open video source {self.uri}")
        return cap

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        pace = self.realtime and is_file_source(self.uri)
        next_t = time.monotonic()
        while True:
            ok, frame = self.cap.read()
            if not ok:
                if self.loop and is_file_source(self.uri):
                    self.cap.release()
                    self.cap = self._open()
                    continue
                return
            if pace:
                next_t += 1.0 / self.fps
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_t = time.monotonic()  # fell behind: do not try to catch up
            yield time.time(), frame

    def close(self) -> None:
        self.cap.release()
