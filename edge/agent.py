"""The edge agent: newest frame → view check → people per zone and gate crossings → one
observation per camera per interval (a heartbeat even when nothing changed) → Redis, or the
disk spool while Redis is away.

Health of each observation:

* ``ok``              zone counts (method, confidence) and gate flows;
* ``camera_offline``  the source gives no frames (the grabber is reconnecting);
* ``view_moved``      the camera does not show a calibrated preset: no densities are
                      published until it does again;
* ``degraded``        frames arrive, but none was processed in the window.

Only numbers leave the device: frames stay in memory here unless ``edge.snapshots`` is on.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from crowdflow.records import Observation
from crowdflow.site import Site

from .counter import CrowdCounter, PersonScale, confidence, plan_tiles, zone_masks
from .gates import GateCounter, GateLine
from .geometry import CameraGeometry, foot_points
from .grabber import FrameGrabber
from .metrics import EdgeMetrics
from .spool import Publisher
from .viewcheck import ViewChecker
from .window import ObservationWindow

log = logging.getLogger("crowdflow.edge")

# The once-a-second "which zones are dense" check looks at the frame with a 640-px long side:
# a quarter of the density head's work at its own 1280 px, enough to tell dense from sparse
# though it reads ~14 % low (ShanghaiTech B validation: MAE 23.6, bias −17, against 13.3 and
# −6 at full size). Dense zones are then counted at full size every frame.
CHECK_SIDE = 640


class EdgeAgent:
    def __init__(self, site: Site, camera_id: str, grabber: FrameGrabber, counter: CrowdCounter,
                 publisher: Publisher | None, preset: str | None = None, agent_id: str | None = None,
                 metrics: EdgeMetrics | None = None, config_dir: str | Path | None = None):
        self.site = site
        self.camera = site.camera(camera_id)
        self.grabber = grabber
        self.counter = counter
        self.publisher = publisher
        self.metrics = metrics or EdgeMetrics(self.camera.id)
        self.config_dir = Path(config_dir) if config_dir else Path(".")
        self.min_period = 1.0 / site.edge.max_fps
        self.check_interval = site.edge.check_interval_s
        self.geometries: dict[str, CameraGeometry] = {}
        self.views = ViewChecker(site.edge.view_tolerance)
        for p in self.camera.presets:
            if p.reference_image:
                img = cv2.imread(str(self.config_dir / p.reference_image))
                if img is None:
                    raise FileNotFoundError(f"cameras[{self.camera.id}].presets[{p.id}].reference_image: "
                                            f"cannot read {self.config_dir / p.reference_image}")
                self.views.set_reference(p.id, img)
        self.my_gates = [g for g in site.gates if g.camera == self.camera.id]
        self.window = ObservationWindow(
            camera_id=self.camera.id,
            agent_id=agent_id or f"edge-{socket.gethostname()}",
            visible_area_m2={},
            interval_s=site.edge.publish_interval_s,
            seq_start=int(time.time() * 1000),
            gates=[g.id for g in self.my_gates],
        )
        self._use_preset(self.camera.preset(preset).id)
        self.view_ok = True
        self.view_reason = ""
        self.frames_done = 0
        self.published: list[Observation] = []  # the last few, for tests and the log
        self.observations = 0
        self._last_check = -1e18
        self._last_t = -1e18
        self._k = 1.0  # observed ÷ calibrated person height
        self._k_n = 0
        self._k_tried = False
        self._k_planned = 1.0
        self._frame_size: tuple[int, int] | None = None
        self._seen = 0  # frames looked at in this window (counted or not)
        self._last = None  # (frame, detections) for a snapshot, only when snapshots are on

    # -- geometry per preset

    def _use_preset(self, preset_id: str) -> None:
        if preset_id not in self.geometries:
            self.geometries[preset_id] = CameraGeometry(self.site, self.camera, self.camera.preset(preset_id))
        self.geometry = self.geometries[preset_id]
        self.window.set_areas({z: v.visible_area_m2 for z, v in self.geometry.zones.items()}, preset_id)
        proj = self.site.projection
        self.gate_counters = {
            g.id: GateCounter(GateLine(g.id, *np.array(proj.to_metric(g.line)), band_m=self.site.edge.gate_band_m))
            for g in self.my_gates
        }
        self._frame_size = None  # tile plan and masks are rebuilt on the next frame
        self.dense: set[str] = set()
        self.zone_density: dict[str, float] = {}

    def _prepare(self, w: int, h: int) -> None:
        self._frame_size = (w, h)
        self.base_scale = PersonScale.from_geometry(self.geometry, (w, h))
        self.scale = self.base_scale.scaled(self._k)
        self._k_planned = self._k
        # Rows above the highest zone need no people found: tiles start there.
        pw, ph = self.geometry.image_size
        top = min((float(v.image_polygon[:, 1].min()) * h / ph for v in self.geometry.zones.values()), default=0.0)
        self.scale.horizon = max(self.scale.horizon or 0.0, min(max(top, 0.0), h - 1.0))
        self.tiles = plan_tiles(w, h, self.scale, self.counter.detector.imgsz, self.counter.s)
        stride = self.counter.density.stride if self.counter.density is not None else 4
        self.masks = zone_masks(self.geometry, (w, h), stride)

    # -- per frame

    def _checks(self, frame: np.ndarray) -> None:
        """Once per check interval: is the view still the preset's, and which zones are dense."""
        pid = self.geometry.preset.id
        if pid not in self.views.refs:
            self.views.set_reference(pid, frame)
            log.info("camera %s: reference view for preset %s taken from the first frame", self.camera.id, pid)
        m = self.views.check(pid, frame)
        if not m.ok:
            other = self.views.which(frame)
            if other is not None and other != pid:
                log.info("camera %s moved to calibrated preset %s", self.camera.id, other)
                self.flush(time.time())
                self._use_preset(other)
                self._prepare(frame.shape[1], frame.shape[0])
                m = self.views.check(other, frame)
        if not m.ok and self.view_ok:
            self.window.discard_counts()  # frames since the last check may show the moved view
        if m.ok != self.view_ok:
            log.warning("camera %s view %s%s", self.camera.id, "back at its preset" if m.ok else "moved: ",
                        m.reason, extra={"camera": self.camera.id, "shift_px": round(m.shift_px, 1)})
        self.view_ok, self.view_reason = m.ok, m.reason
        self.metrics.view_ok.set(1 if m.ok else 0)
        if not m.ok or self.counter.density is None:
            return
        dm = self.counter.density(frame, side=CHECK_SIDE).density
        self.zone_density = {z: float(dm[mk[: dm.shape[0], : dm.shape[1]]].sum()) for z, mk in self.masks.items()}
        s = self.counter.s
        self.dense = {z for z, d in self.zone_density.items()
                      if d >= s.dense_min_count and d / max(self.geometry.zones[z].visible_area_m2, 1) >= self.site.edge.dense_per_m2}

    def process(self, t: float, frame: np.ndarray) -> dict[str, float] | None:
        t0 = time.perf_counter()
        self._seen += 1
        h, w = frame.shape[:2]
        if self._frame_size != (w, h):
            self._prepare(w, h)
        now = time.monotonic()
        if now - self._last_check >= self.check_interval or not self.view_ok:
            self._last_check = now
            self._checks(frame)
            if self._frame_size != (w, h):
                self._prepare(w, h)
        if not self.view_ok:
            return None
        zones = list(self.geometry.zones)
        dense = self.dense & set(zones)
        est_method, est_conf = {}, {}
        det = None
        tracked = None
        whole = None
        if self.gate_counters:
            whole, tracked = self.counter.detector.track(frame)
        if len(dense) < len(zones):
            if not self._k_tried and len(self.tiles) > 1:  # first frame: check the calibrated person size
                self._k_tried = True
                whole = whole if whole is not None else self.counter.detector(frame)
                self._learn_scale(whole, w, h)
            if len(self.tiles) == 1:
                det = whole if whole is not None else self.counter.detector(frame)
            else:
                det, _ = self.counter.detect_tiled(frame, self.scale)
        counts: dict[str, float] = {z: 0.0 for z in zones}
        if det is not None:
            if len(det):
                feet = self.geometry.scale_to_preset(foot_points(det.xyxy), (w, h))
                counts.update(self.geometry.assign(feet))
            method = "tiled" if len(self.tiles) > 1 else "detect"
            for z in zones:
                est_method[z] = method
                est_conf[z] = confidence(method, counts[z])
            self._learn_scale(det, w, h)
        if dense:
            dm = self.counter.density(frame).density
            for z in dense:
                counts[z] = round(float(dm[self.masks[z][: dm.shape[0], : dm.shape[1]]].sum()), 2)
                est_method[z] = "density"
                est_conf[z] = confidence("density", counts[z])
        if tracked is not None and tracked.ids is not None and len(tracked):
            feet = self.geometry.scale_to_preset(foot_points(tracked.xyxy), (w, h))
            ground = self.geometry.homography.to_ground(feet)
            for gid, gc in self.gate_counters.items():
                gc.update(t, tracked.ids, ground)
                i, o = gc.take()
                self.window.add_crossings(gid, i, o)
        self.window.add(t, counts, est_method, est_conf)
        if self.site.edge.snapshots:
            self._last = (frame, det)  # kept only for the snapshot of this interval
        self.frames_done += 1
        self.metrics.frame_done((time.perf_counter() - t0) * 1000, time.time() - t)
        return counts

    def _learn_scale(self, det, w: int, h: int) -> None:
        """People may look larger or smaller than the calibration says (a wrong camera height,
        a zoomed lens): follow the observed box heights (first estimate, then a slow average,
        within 0.5–4×) and re-plan the tiles when the factor has moved by a quarter."""
        r = self.base_scale.observed_ratio(det, h)
        if r is None:
            return
        k = float(np.clip(r if self._k_n == 0 else 0.95 * self._k + 0.05 * r, 0.5, 4.0))
        self._k_n += 1
        if abs(k / self._k_planned - 1) > 0.25:
            log.info("camera %s: people look %.2f× the calibrated size; re-planning tiles", self.camera.id, k)
            self._k = k
            self._prepare(w, h)
        self._k = k

    # -- publishing

    def health(self) -> str:
        if not self.grabber.online and self._seen == 0 and self.window.frames == 0:
            return "camera_offline"
        if not self.view_ok:
            return "view_moved"
        if self.window.frames == 0:
            return "degraded"
        return "ok"

    def flush(self, now: float) -> Observation:
        obs = self.window.flush(now, health=self.health())
        self._seen = 0
        self.observations += 1
        self.published = (self.published + [obs])[-50:]
        self.metrics.published.labels(self.camera.id, obs.health).inc()
        if self.publisher is not None:
            self.publisher.publish(obs)
            self.metrics.spool_depth.set(len(self.publisher.spool))
            if self.site.edge.snapshots and self._last is not None:
                self._snapshot(*self._last)
                self._last = None
        self.metrics.dropped.set(self.grabber.dropped)
        self.metrics.reconnects.set(self.grabber.reconnects)
        self.metrics.online.set(1 if self.grabber.online else 0)
        return obs

    def _snapshot(self, frame: np.ndarray, det) -> None:
        """Only with ``edge.snapshots: true``: the newest frame, 640 px wide, with the zones and
        boxes drawn, to ``<p>:snap:<camera>`` (expires after 30 s; never spooled)."""
        import redis

        h, w = frame.shape[:2]
        s = 640 / w
        img = cv2.resize(frame, (640, round(h * s)))
        pw, ph = self.geometry.image_size
        for v in self.geometry.zones.values():
            poly = np.round(v.image_polygon * [w / pw * s, h / ph * s]).astype(np.int32)
            cv2.polylines(img, [poly], True, (0, 200, 255), 2)
        if det is not None:
            for x0, y0, x1, y1 in np.round(det.xyxy * s).astype(int):
                cv2.rectangle(img, (x0, y0), (x1, y1), (0, 255, 0), 1)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])
        try:
            self.publisher.r.set(self.publisher.keys.snapshot(self.camera.id), jpg.tobytes(), ex=30)
        except redis.RedisError as e:
            log.debug("snapshot not sent: %s", e)

    def run(self, stop: threading.Event, max_frames: int | None = None) -> None:
        log.info("edge %s: %s, zones in view %s, gates %s", self.camera.id, self.grabber.uri,
                 {z: round(v.visible_area_m2) for z, v in self.geometry.zones.items()},
                 [g.id for g in self.my_gates])
        self.grabber.start()
        interval = self.window.interval_s
        self.window.start = time.time()
        next_flush = self.window.start + interval
        try:
            while not stop.is_set():
                wait = max(0.0, min(next_flush - time.time(), 0.5))
                got = self.grabber.latest(timeout=wait)
                if got is not None:
                    t, frame = got
                    if t - self._last_t >= 0.8 * self.min_period or not self.grabber.realtime:
                        self._last_t = t
                        self.process(t, frame)
                now = time.time()
                if now >= next_flush:  # the heartbeat: one observation per interval, always
                    self.flush(now)
                    next_flush = max(next_flush + interval, now + 0.2 * interval)
                if max_frames is not None and self.frames_done >= max_frames:
                    break
                if self.grabber.finished and got is None:
                    break
        finally:
            self.grabber.stop()
            if self.window.frames:
                self.flush(time.time())
            if self.publisher is not None:
                self.publisher.drain()
            log.info("edge %s stopped: %d frames, %d observations, %d spooled", self.camera.id,
                     self.frames_done, self.observations, len(self.publisher.spool) if self.publisher else 0)

