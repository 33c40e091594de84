"""Virtual cameras: the simulated site seen through the site's real cameras. Pure, seeded.

Each configured camera reports only the zones it is configured for, on the walkable ground
its calibrated preset actually sees: the visible areas come from the edge's own geometry
(:class:`edge.geometry.CameraGeometry`: homography footprint ∩ zone polygon, cut at
``edge.max_range_m``, scaled by the walkable share), so the control service fuses a virtual
camera exactly as it fuses a real one.

What a virtual camera says is what a real counter would: the people on the visible ground
(the cell's density × visible area) with counting noise (relative, plus a floor), a
confidence that falls with density (occlusion), now and then a lost window (no record) and
now and then a camera that goes offline for a while (``health: camera_offline``, no counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crowdflow.records import GateFlow, Observation, ZoneCount
from crowdflow.site import Site


def camera_views(site: Site, camera_ids: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Camera id → {zone id: visible walkable m²} from each camera's first preset, as the
    real edge agent computes it."""
    from edge.geometry import CameraGeometry  # OpenCV: the edge extra

    out = {}
    for cam in site.cameras:
        if camera_ids is not None and cam.id not in camera_ids:
            continue
        geo = CameraGeometry(site, cam)
        out[cam.id] = {z: v.visible_area_m2 for z, v in geo.zones.items()}
    return out


@dataclass
class Faults:
    """How imperfect the virtual cameras are (defaults: a decent real deployment)."""

    noise_rel: float = 0.08  # relative counting noise (1 σ)
    noise_abs: float = 0.7  # persons, noise floor
    dropout: float = 0.02  # chance that one window's record is lost
    offline_per_h: float = 2.0  # outages per camera-hour (of the caller's clock) …
    offline_mean_s: float = 45.0  # … lasting this long on average


@dataclass
class VirtualCameras:
    site: Site
    views: dict[str, dict[str, float]]  # camera → zone → visible m²
    seed: int = 0
    agent_id: str = "sim"
    faults: Faults = field(default_factory=Faults)
    seq_start: int = 0

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.seq = {cid: self.seq_start for cid in self.views}
        self.offline_until = {cid: -math.inf for cid in self.views}
        self.gates = {cid: [g.id for g in self.site.gates if g.camera == cid] for cid in self.views}
        self.presets = {cid: self.site.camera(cid).preset().id for cid in self.views}

    def observe(self, now: float, zone_counts: dict[str, float], gate_flows: dict[str, tuple[int, int]],
                window_s: float = 1.0) -> list[Observation]:
        """One record per camera (fewer when a window is lost) for the window ending at
        ``now``. Outages are timed on the caller's clock (wall time in the demo)."""
        f = self.faults
        out = []
        for cid, zones in self.views.items():
            self.seq[cid] += 1
            base = dict(camera_id=cid, agent_id=self.agent_id, seq=self.seq[cid], captured_at=now,
                        window_s=window_s, preset=self.presets[cid])
            if now >= self.offline_until[cid] and self.rng.random() < f.offline_per_h * window_s / 3600:
                self.offline_until[cid] = now + self.rng.exponential(f.offline_mean_s)
            if now < self.offline_until[cid]:
                out.append(Observation(health="camera_offline", frames=0, **base))
                continue
            if self.rng.random() < f.dropout:
                continue  # this window's record never arrives
            counts = []
            for zid, vis in zones.items():
                zone = self.site.zone_by_id[zid]
                density = zone_counts.get(zid, 0.0) / zone.walkable_area_m2
                expected = density * vis
                seen = expected * (1 + f.noise_rel * self.rng.standard_normal()) + f.noise_abs * self.rng.standard_normal()
                conf = max(0.3, min(0.95, 0.95 - 0.1 * density))
                counts.append(ZoneCount(zone_id=zid, count=round(max(0.0, seen), 2), visible_area_m2=round(vis, 2),
                                        method="sim", confidence=round(conf, 3)))
            gates = [GateFlow(gate_id=g, inflow=gate_flows.get(g, (0, 0))[0], outflow=gate_flows.get(g, (0, 0))[1])
                     for g in self.gates[cid]]
            out.append(Observation(frames=max(1, round(10 * window_s)), zones=counts, gates=gates, **base))
        return out
