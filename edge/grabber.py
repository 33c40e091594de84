"""Latest-frame grabber: a thread reads the source and keeps only the newest frame.

Processing never queues behind capture: a frame the agent has not taken before the next one
arrives is dropped (and counted). When the source fails (stream drops, device unplugged, file
missing) the grabber reconnects with exponential backoff (``backoff_s`` doubling up to
``max_backoff_s``) and reports itself offline meanwhile; the agent turns that into
``camera_offline`` heartbeats.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from .source import SourceError, VideoSource, is_file_source

log = logging.getLogger("crowdflow.edge.grabber")


class FrameGrabber:
    def __init__(self, uri: str, realtime: bool = True, loop: bool = False, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, open_source=VideoSource):
        self.uri = uri
        self.realtime = realtime
        self.loop = loop
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._open_source = open_source
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._t = 0.0
        self._n = 0  # frames grabbed
        self._taken = 0  # index of the last frame handed out
        self.dropped = 0
        self.reconnects = 0
        self.online = False
        self.finished = False  # a file ended (without loop)
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grab-{uri}", daemon=True)

    def start(self) -> FrameGrabber:
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = self.backoff_s
        while not self._stop.is_set():
            try:
                src = self._open_source(self.uri, realtime=self.realtime, loop=self.loop)
            except SourceError as e:
                self._offline(str(e))
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.max_backoff_s)
                self.reconnects += 1
                continue
            self.online = True
            got_any = False
            try:
                for t, frame in src.frames():
                    if self._stop.is_set():
                        break
                    got_any = True
                    delay = self.backoff_s  # a healthy stream resets the backoff
                    with self._cond:
                        if self._n > self._taken:
                            self.dropped += 1  # the previous frame was never processed
                        self._frame, self._t = frame, t
                        self._n += 1
                        self._cond.notify_all()
            finally:
                src.close()
            if self._stop.is_set():
                break
            if is_file_source(self.uri) and not self.loop and got_any:
                self.finished = True
                self.online = False
                with self._cond:
                    self._cond.notify_all()
                return
            self._offline("stream ended" if got_any else "no frames")
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff_s)
            self.reconnects += 1
        self.online = False

    def _offline(self, why: str) -> None:
        if self.online or why != self.last_error:
            log.warning("camera source %s offline: %s", self.uri, why)
        self.online = False
        self.last_error = why

    def latest(self, timeout: float) -> tuple[float, np.ndarray] | None:
        """The newest frame not handed out before, waiting up to ``timeout`` s; None if none came."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._n > self._taken or self.finished or self._stop.is_set(), timeout):
                return None
            if self._n <= self._taken:
                return None
            self._taken = self._n
            return self._t, self._frame

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
