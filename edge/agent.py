"""The edge agent: video → people → zones → one observation per camera per interval."""

from __future__ import annotations

import logging
import socket
import threading
import time

import redis

from crowdflow.bus import OBS_MAXLEN, Keys
from crowdflow.records import Observation
from crowdflow.site import Site

from .detector import PersonDetector
from .geometry import CameraGeometry, foot_points
from .source import VideoSource
from .window import ObservationWindow

log = logging.getLogger("crowdflow.edge")


class EdgeAgent:
    def __init__(self, site: Site, camera_id: str, source: VideoSource, detector: PersonDetector,
                 r: redis.Redis, keys: Keys, preset: str | None = None, agent_id: str | None = None):
        self.site = site
        self.camera = site.camera(camera_id)
        self.geometry = CameraGeometry(site, self.camera, self.camera.preset(preset))
        self.source = source
        self.detector = detector
        self.r = r
        self.keys = keys
        self.min_period = 1.0 / site.edge.max_fps
        self.window = ObservationWindow(
            camera_id=self.camera.id,
            agent_id=agent_id or f"edge-{socket.gethostname()}",
            visible_area_m2={z: v.visible_area_m2 for z, v in self.geometry.zones.items()},
            interval_s=site.edge.publish_interval_s,
            seq_start=int(time.time() * 1000),
            preset=self.geometry.preset.id,
        )
        self.published = 0
        self.frames_done = 0

    def process(self, t: float, frame) -> dict[str, int]:
        det = self.detector(frame)
        h, w = frame.shape[:2]
        feet = self.geometry.scale_to_preset(foot_points(det.xyxy), (w, h))
        counts = self.geometry.assign(feet)
        self.window.add(t, counts)
        self.frames_done += 1
        return counts

    def publish(self, obs: Observation) -> None:
        try:
            self.r.xadd(self.keys.obs, {"rec": obs.encode()}, maxlen=OBS_MAXLEN, approximate=True)
            self.published += 1
        except redis.RedisError as e:
            log.error("publish failed for %s seq %d: %s", obs.camera_id, obs.seq, e)

    def run(self, stop: threading.Event, max_frames: int | None = None) -> None:
        log.info("edge %s: %s, zones in view %s", self.camera.id, self.source.uri,
                 {z: round(v.visible_area_m2) for z, v in self.geometry.zones.items()})
        last = 0.0
        for t, frame in self.source.frames():
            if stop.is_set():
                break
            if self.source.realtime and t - last < 0.8 * self.min_period:
                continue  # over max_fps: skip this frame (the newest frame wins; work never queues)
            last = t
            self.process(t, frame)
            if self.window.due(t):
                self.publish(self.window.flush(t))
            if max_frames is not None and self.frames_done >= max_frames:
                break
        if self.window.frames:
            self.publish(self.window.flush(time.time()))
