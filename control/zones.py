"""Per-zone state from camera observations. Pure: no I/O, time is passed in.

Several cameras may see parts of one zone. Each camera reports, per zone, the people it saw
and the walkable area it saw them on. The zone's density is the pooled ratio
Σ count / Σ visible area over fresh, healthy cameras, so two cameras seeing the same ground
average rather than add (no double counting), and the zone count is that density over the
zone's whole walkable area.
"""

from __future__ import annotations

from dataclasses import dataclass

from crowdflow.records import LastKnown, Observation, ZoneState
from crowdflow.site import Site


@dataclass(frozen=True)
class CameraView:
    """The newest thing one camera said about one zone."""

    captured_at: float
    health: str
    count: float | None = None
    visible_area_m2: float | None = None
    method: str | None = None
    confidence: float | None = None


def site_problem(obs: Observation, site: Site) -> str | None:
    """Why this observation does not fit the site, or None. Names the field."""
    cam = site.camera_by_id.get(obs.camera_id)
    if cam is None:
        return f"camera_id: unknown camera {obs.camera_id!r}"
    for i, zc in enumerate(obs.zones):
        if zc.zone_id not in cam.zones:
            return f"zones[{i}].zone_id: zone {zc.zone_id!r} is not configured for camera {obs.camera_id}"
    return None


class ZoneBook:
    def __init__(self, site: Site, stale_after_s: float):
        self.site = site
        self.stale_after_s = stale_after_s
        self._views: dict[str, dict[str, CameraView]] = {z.id: {} for z in site.zones}
        self._last_known: dict[str, LastKnown] = {}
        self._covering = {z.id: [c.id for c in site.cameras if z.id in c.zones] for z in site.zones}

    def apply(self, obs: Observation) -> set[str]:
        """Take one observation (already checked with :func:`site_problem`).

        Returns the zones whose inputs changed. An observation older than what this camera
        already reported for a zone (a late replay) does not overwrite the newer view."""
        cam = self.site.camera_by_id[obs.camera_id]
        reported = {zc.zone_id: zc for zc in obs.zones}
        touched = set()
        for zid in cam.zones:
            prev = self._views[zid].get(obs.camera_id)
            if prev is not None and prev.captured_at > obs.captured_at:
                continue
            zc = reported.get(zid)
            if obs.health == "ok" and zc is not None:
                view = CameraView(
                    obs.captured_at, "ok", zc.count, zc.visible_area_m2, zc.method, zc.confidence
                )
            elif obs.health == "ok":
                # Healthy camera, but this zone is out of its current view.
                view = CameraView(obs.captured_at, "out_of_view")
            else:
                view = CameraView(obs.captured_at, obs.health)
            self._views[zid][obs.camera_id] = view
            touched.add(zid)
        return touched

    def state(self, zone_id: str, now: float) -> ZoneState:
        zone = self.site.zone_by_id[zone_id]
        views = self._views[zone_id]
        fresh = {
            cid: v
            for cid, v in views.items()
            if v.health == "ok" and now - v.captured_at <= self.stale_after_s
        }
        base = dict(zone_id=zone_id, capacity=zone.capacity, computed_at=now)
        if not fresh:
            return ZoneState(
                status="unknown",
                reason=self._unknown_reason(zone_id, views, now),
                last_known=self._last_known.get(zone_id),
                **base,
            )
        area = sum(v.visible_area_m2 for v in fresh.values())
        seen = sum(v.count for v in fresh.values())
        density = seen / area
        count = density * zone.walkable_area_m2
        updated = max(v.captured_at for v in fresh.values())
        confidence = sum(v.confidence * v.visible_area_m2 for v in fresh.values()) / area
        coverage = min(1.0, area / zone.walkable_area_m2)
        self._last_known[zone_id] = LastKnown(count=count, density=density, at=updated)
        return ZoneState(
            status="ok",
            count=round(count, 2),
            density=round(density, 4),
            capacity_ratio=round(count / zone.capacity, 4) if zone.capacity else None,
            coverage=round(coverage, 3),
            method="+".join(sorted({v.method for v in fresh.values()})),
            confidence=round(confidence, 3),
            sources=sorted(fresh),
            updated_at=updated,
            **base,
        )

    def states(self, now: float) -> dict[str, ZoneState]:
        return {z.id: self.state(z.id, now) for z in self.site.zones}

    def _unknown_reason(self, zone_id: str, views: dict[str, CameraView], now: float) -> str:
        if not self._covering[zone_id]:
            return "no camera covers this zone"
        if not views:
            return "no observation yet"
        unhealthy = sorted(f"{cid} {v.health}" for cid, v in views.items() if v.health not in ("ok", "out_of_view"))
        if unhealthy:
            return "; ".join(unhealthy)
        if all(v.health == "out_of_view" for v in views.values()):
            return "zone out of every camera's current view"
        newest = max(v.captured_at for v in views.values())
        return f"stale: newest observation {now - newest:.0f} s old (limit {self.stale_after_s:g} s)"
