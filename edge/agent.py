"""The edge agent: newest frame → view check → zone counter → gates → window → one
observation per camera per interval (a heartbeat even when nothing changed) → Redis, or the
disk spool while Redis is away.

Health of each observation (``crowdflow.vocab.HEALTH_STATES``):

* ``ok``               zone counts (method, confidence) and gate flows;
* ``camera_offline``   the source gives no frames (the grabber is reconnecting);
* ``view_moved``       the camera does not show a calibrated preset: no densities are
                       published until it does again;
* ``view_unverified``  the picture has too little texture to tell whether the camera shows its
                       preset (black, fog, a covered lens, night against a day reference): no
                       densities either — a dark frame with nobody detected is not "empty";
* ``frozen``           the picture has not changed for ``edge.frozen_after_s`` (a hung encoder);
* ``degraded``         frames arrive, but none was processed in the window.

How many people stand in each zone is decided by one policy, :class:`edge.counter.CrowdCounter`
(the same one ``crowdflow count`` runs); the agent only feeds it frames and the view's layout.
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

from .counter import CrowdCounter, FrameCount, ZoneLayout
from .gates import GateCounter, GateLine
from .geometry import CameraGeometry, foot_points
from .grabber import FrameGrabber
from .metrics import EdgeMetrics
from .spool import Publisher
from .viewcheck import FrozenDetector, ViewChecker, ViewUnverifiable
from .window import ObservationWindow

log = logging.getLogger("crowdflow.edge")

# The once-a-second "which zones are dense" look runs the density model at a 640-px long side:
# a quarter of its work at 1280 px, enough to tell dense from sparse. Dense zones are then
# counted at full size every frame.
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
        self.views = ViewChecker(site.edge.view_tolerance)
        for p in self.camera.presets:
            for ref in p.references:
                img = cv2.imread(str(self.config_dir / ref))
                if img is None:
                    raise FileNotFoundError(f"cameras[{self.camera.id}].presets[{p.id}].reference_image: "
                                            f"cannot read {self.config_dir / ref}")
                try:
                    self.views.set_reference(p.id, img, add=True)
                except ViewUnverifiable as e:
                    raise ValueError(f"cameras[{self.camera.id}].presets[{p.id}].reference_image {ref}: {e}") from e
        self.frozen = FrozenDetector(site.edge.frozen_after_s)
        self.my_gates = [g for g in site.gates if g.camera == self.camera.id]
        self.window = ObservationWindow(
            camera_id=self.camera.id,
            agent_id=agent_id or f"edge-{socket.gethostname()}",
            visible_area_m2={},
            interval_s=site.edge.publish_interval_s,
            seq_start=int(time.time() * 1000),
            gates=[g.id for g in self.my_gates],
        )
        self.geometries: dict[str, CameraGeometry] = {}
        self.counters: dict[str, CrowdCounter] = {}  # per preset: the shared one or a view-adapted head
        self.layouts: dict[tuple[str, int, int], ZoneLayout] = {}
        self.state, self.state_reason = "ok", ""  # the view: ok | view_moved | view_unverified | frozen
        self._use_preset(self.camera.preset(preset).id)
        self.frames_done = 0
        self.published: list[Observation] = []  # the last few, for tests and the log
        self.observations = 0
        self._last_check = -1e18
        self._last_t = -1e18
        self._seen = 0  # frames looked at in this window (counted or not)
        self._skip_looks = 0
        self._last: tuple[np.ndarray, FrameCount] | None = None  # for a snapshot, only when snapshots are on

    @property
    def view_ok(self) -> bool:
        return self.state == "ok"

    # -- preset: geometry, counter and layout

    def _use_preset(self, preset_id: str) -> None:
        if preset_id not in self.geometries:
            self.geometries[preset_id] = CameraGeometry(self.site, self.camera, self.camera.preset(preset_id))
            self.counters[preset_id] = self._counter_for(preset_id)
        self.geometry = self.geometries[preset_id]
        self.preset_counter = self.counters[preset_id]
        self.window.set_areas({z: v.visible_area_m2 for z, v in self.geometry.zones.items()}, preset_id)
        proj = self.site.projection
        self.gate_counters = {
            g.id: GateCounter(GateLine(g.id, *np.array(proj.to_metric(g.line)), band_m=self.site.edge.gate_band_m))
            for g in self.my_gates
        }
        self.dense: set[str] = set()
        self._skip_looks = 0

    def _counter_for(self, preset_id: str) -> CrowdCounter:
        """The preset's own density head when `crowdflow adapt` made one, else the shared counter."""
        from .adapt import adapted_head

        head = adapted_head(self.config_dir, self.camera.id, preset_id, self.counter)
        if head is None:
            return self.counter
        log.info("camera %s preset %s: adapted density head %s", self.camera.id, preset_id, head.path)
        return CrowdCounter(self.counter.detector, head, self.counter.s)

    def _layout(self, frame: np.ndarray) -> ZoneLayout:
        h, w = frame.shape[:2]
        key = (self.geometry.preset.id, w, h)
        if key not in self.layouts:
            self.layouts[key] = self.preset_counter.layout(self.geometry, (w, h))
        return self.layouts[key]

    # -- per frame

    def process(self, t: float, frame: np.ndarray) -> dict[str, float] | None:
        """One frame: view check → zone counter → gates → window. None when the view is not
        one whose zones can be counted (moved, unverified, frozen)."""
        t0 = time.perf_counter()
        self._seen += 1
        # Once per check interval of capture time (a clock stepped back also re-checks): at the
        # agent's frame rate the same frames are checked however busy the machine is.
        due = not 0 <= t - self._last_check < self.check_interval
        # A frozen picture is looked for in frames a check interval apart (live footage changes
        # more in a second than between two frames), frame by frame once a repeat was seen.
        if (due or self.frozen.since is not None) and self.frozen.update(t, frame):
            self._set_state("frozen", f"the picture has not changed for {t - self.frozen.since:.0f} s")
            return None
        if due or self.state != "ok":
            self._last_check = t
            self._check_view(frame)
        if self.state != "ok":
            return None
        layout = self._layout(frame)
        whole, tracked = self.preset_counter.detector.track(frame) if self.gate_counters else (None, None)
        res = self.preset_counter.count(frame, layout=layout, dense=self.dense, whole=whole)
        counts = {z: e.count for z, e in res.zones.items()}
        self._cross_gates(t, tracked, frame.shape)
        self.window.add(t, counts, {z: e.method for z, e in res.zones.items()},
                        {z: e.confidence for z, e in res.zones.items()})
        if self.site.edge.snapshots:
            self._last = (frame, res)  # kept only for the snapshot of this interval
        self.frames_done += 1
        self.metrics.frame_done((time.perf_counter() - t0) * 1000, time.time() - t)
        return counts

    def _check_view(self, frame: np.ndarray) -> None:
        """Once per check interval (every frame while not ok): is the view still the preset's
        (or another calibrated one), and which zones are dense."""
        pid = self.geometry.preset.id
        if pid not in self.views.refs:
            try:
                self.views.set_reference(pid, frame)
                log.warning("camera %s: no stored reference view for preset %s; this frame is used "
                            "(store one with `crowdflow calibrate --save-reference`)", self.camera.id, pid)
            except ViewUnverifiable as e:
                self._set_state("view_unverified", str(e))
                return
        m = self.views.check(pid, frame)
        if not m.ok and m.verifiable:
            other = self.views.which(frame)
            if other is not None and other != pid:
                log.info("camera %s moved to calibrated preset %s", self.camera.id, other)
                self.flush(time.time())
                self._use_preset(other)
                m = self.views.check(other, frame)
        self._set_state("ok" if m.ok else "view_moved" if m.verifiable else "view_unverified", m.reason,
                        shift_px=m.shift_px)
        if m.ok:
            self._look(frame)

    def _look(self, frame: np.ndarray) -> None:
        """Which zones are dense. A view far from dense everywhere (under half of
        ``dense_count`` in every zone) is looked at again only every third check."""
        self._skip_looks -= 1
        if self._skip_looks > 0 and not self.dense:
            return
        layout = self._layout(frame)
        sums = self.preset_counter.look(frame, layout, CHECK_SIDE)
        self.dense = self.preset_counter.dense_zones(sums, layout)
        quiet = sums is not None and max(sums.values(), default=0.0) < 0.5 * self.preset_counter.s.dense_count
        self._skip_looks = 3 if quiet else 0

    def _set_state(self, state: str, reason: str = "", **extra) -> None:
        if state != "ok" and self.state == "ok":
            self.window.discard_counts()  # frames since the last check may show the changed view
        if state != self.state:
            level = logging.INFO if state == "ok" else logging.WARNING
            log.log(level, "camera %s view: %s%s", self.camera.id, state, f" ({reason})" if reason else "",
                    extra={"camera": self.camera.id, "health": state,
                           **{k: round(v, 1) for k, v in extra.items() if np.isfinite(v)}})
        self.state, self.state_reason = state, reason
        self.metrics.view_ok.set(1 if state == "ok" else 0)

    def _cross_gates(self, t: float, tracked, shape) -> None:
        if tracked is None or tracked.ids is None or not len(tracked):
            return
        h, w = shape[:2]
        feet = self.geometry.scale_to_preset(foot_points(tracked.xyxy), (w, h))
        ground = self.geometry.homography.to_ground(feet)
        for gid, gc in self.gate_counters.items():
            gc.update(t, tracked.ids, ground)
            i, o = gc.take()
            self.window.add_crossings(gid, i, o)

    # -- publishing

    def health(self) -> str:
        if not self.grabber.online and self._seen == 0 and self.window.frames == 0:
            return "camera_offline"
        if self.state != "ok":
            return self.state  # view_moved, view_unverified or frozen
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
            self.metrics.resent.set(self.publisher.resent)
            self.metrics.unapplied.set(self.publisher.unapplied)
            if self.site.edge.snapshots and self._last is not None:
                self._snapshot(*self._last)
                self._last = None
        self.metrics.dropped.set(self.grabber.dropped)
        self.metrics.reconnects.set(self.grabber.reconnects)
        self.metrics.online.set(1 if self.grabber.online else 0)
        return obs

    def _snapshot(self, frame: np.ndarray, res: FrameCount) -> None:
        """Only with ``edge.snapshots: true``: the newest frame, 640 px wide, annotated as
        ``crowdflow count --annotate`` draws it (zones, boxes or density), to
        ``<p>:snap:<camera>`` (expires after 30 s; never spooled)."""
        import redis

        from .offline import annotate

        h, w = frame.shape[:2]
        img = annotate(frame, res, self._layout(frame).zone_polygons_px())
        img = cv2.resize(img, (640, round(h * 640 / w)), interpolation=cv2.INTER_AREA)
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

