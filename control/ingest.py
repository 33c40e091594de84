"""The ingest boundary: is an observation physically plausible and from the right camera?

Pure (no I/O; the receiver's clock is passed in). :func:`check` answers, for one decoded
:class:`~crowdflow.records.Observation`, either the observation to apply (its capture time
corrected for a gateway clock that is off, when the gateway said when it sent it) or the
reason it is refused, in the decoder's ``field.path: message`` form, which the service writes
into the dead letter. Limits and why:

=========================  ==========================================================================
check                      limit
=========================  ==========================================================================
record size                :data:`MAX_RECORD_BYTES` (64 KiB; a real observation is < 2 KiB)
camera                     configured in the site
zones[i].zone_id           a zone the camera covers (``cameras[].zones``), each zone at most once
zones[i] density           count ÷ visible area ≤ :data:`MAX_DENSITY` (10 p/m²: above any crowd
                           that can stand; crush conditions are 7–9 p/m²)
zones[i].visible_area_m2   ≥ :data:`MIN_VISIBLE_M2` and ≤ 2 × the zone's walkable area (plus the
                           road area cut-offs can free) — a camera cannot see more ground than exists
gates[i].gate_id           a gate owned by this camera (``gates[].camera``), each gate at most once
gates[i] flow              in + out ≤ :data:`MAX_SPECIFIC_FLOW` × the gate's width × ``window_s``
                           + :data:`GATE_SLACK` (2 p/m/s is above the ~1.3 p/m/s capacity of a
                           walkway; the slack covers short gates and rounding)
captured_at                not after the receiver's clock + :data:`FUTURE_TOLERANCE_S`, not older
                           than :data:`MAX_AGE_S` (beyond it the (camera, seq) dedupe no longer
                           remembers the observation, so a replay could apply it twice)
sent_at (clock skew)       when present and off the receipt time by more than
                           :data:`SKEW_TOLERANCE_S`, the capture time is shifted by the skew
                           (the record is kept, the skew reported); capture after send is refused
preset                     one of the camera's presets
=========================  ==========================================================================
"""

from __future__ import annotations

import math
from typing import NamedTuple

from crowdflow.bus import SEEN_KEEP_S
from crowdflow.records import Observation
from crowdflow.site import Site

MAX_RECORD_BYTES = 64 * 1024
MAX_DENSITY = 10.0  # persons per m² of ground in view
MIN_VISIBLE_M2 = 1.0
MAX_VISIBLE_FACTOR = 2.0
MAX_SPECIFIC_FLOW = 2.0  # persons per metre of gate width per second
GATE_SLACK = 10
FUTURE_TOLERANCE_S = 10.0
SKEW_TOLERANCE_S = 2.0
MAX_AGE_S = SEEN_KEEP_S * 2 / 3  # 2 h: inside the 3 h dedupe window, with margin


class Verdict(NamedTuple):  # a tuple: one is made per observation (a frozen dataclass costs 3× as much)
    obs: Observation | None  # what to apply (capture time corrected), None when refused
    reason: str | None = None  # why refused (``field: message``)
    skew_s: float | None = None  # the gateway clock's offset, when it was corrected


def _metres(a, b) -> float:
    """Great-circle distance between two (lon, lat) points (a gate is a few metres long)."""
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(h)))


_TABLES: dict[int, tuple] = {}


def _limits(site: Site) -> tuple[dict, dict, dict, dict]:
    """Per-site tables: camera → zones, presets; gate → (owner, width); zone → max visible m²."""
    hit = _TABLES.get(id(site))
    if hit is not None and hit[0] is site:
        return hit[1]
    cam_zones = {c.id: frozenset(c.zones) for c in site.cameras}
    cam_presets = {c.id: frozenset(p.id for p in c.presets) for c in site.cameras}
    gates = {g.id: (g.camera, _metres(*g.line)) for g in site.gates}
    freed = site.freed_area(r.id for r in site.roads) if site.roads else {}
    max_area = {z.id: MAX_VISIBLE_FACTOR * (z.walkable_area_m2 + freed.get(z.id, 0.0)) for z in site.zones}
    tables = cam_zones, cam_presets, gates, max_area
    if len(_TABLES) > 16:
        _TABLES.clear()
    _TABLES[id(site)] = (site, tables)
    return tables


def check(obs: Observation, site: Site, now: float, received_at: float | None = None) -> Verdict:
    """Accept (possibly with a corrected capture time) or refuse one observation.

    ``now`` is the receiver's clock; ``received_at`` when Redis took the entry (its stream id),
    used to measure the gateway's clock skew from ``sent_at`` without counting queueing delay."""
    cam_zones, cam_presets, gates, max_area = _limits(site)
    cid = obs.camera_id
    if cid not in cam_zones:
        return Verdict(None, f"camera_id: unknown camera {cid!r}")
    if obs.preset is not None and obs.preset not in cam_presets[cid]:
        return Verdict(None, f"preset: {obs.preset[:64]!r} is not a preset of camera {cid}")
    seen_zones = set()
    for i, zc in enumerate(obs.zones):
        if zc.zone_id not in cam_zones[cid]:
            return Verdict(None, f"zones[{i}].zone_id: zone {zc.zone_id!r} is not configured for camera {cid}")
        if zc.zone_id in seen_zones:
            return Verdict(None, f"zones[{i}].zone_id: zone {zc.zone_id!r} reported twice")
        seen_zones.add(zc.zone_id)
        if zc.visible_area_m2 < MIN_VISIBLE_M2:
            return Verdict(None, f"zones[{i}].visible_area_m2: {zc.visible_area_m2:.3g} m² is below {MIN_VISIBLE_M2:g} m²")
        if zc.visible_area_m2 > max_area[zc.zone_id]:
            return Verdict(None, f"zones[{i}].visible_area_m2: {zc.visible_area_m2:.4g} m² is more than the zone's "
                                 f"ground ({max_area[zc.zone_id] / MAX_VISIBLE_FACTOR:.4g} m²) allows")
        density = zc.count / zc.visible_area_m2
        if density > MAX_DENSITY:
            return Verdict(None, f"zones[{i}].count: {density:.3g} persons/m² is above the physical limit "
                                 f"{MAX_DENSITY:g}/m²")
    seen_gates = set()
    for i, gf in enumerate(obs.gates):
        g = gates.get(gf.gate_id)
        if g is None:
            return Verdict(None, f"gates[{i}].gate_id: unknown gate {gf.gate_id!r}")
        owner, width = g
        if owner != cid:
            return Verdict(None, f"gates[{i}].gate_id: gate {gf.gate_id} is counted by {owner or 'no camera'}, "
                                 f"not {cid}")
        if gf.gate_id in seen_gates:
            return Verdict(None, f"gates[{i}].gate_id: gate {gf.gate_id} reported twice")
        seen_gates.add(gf.gate_id)
        limit = MAX_SPECIFIC_FLOW * width * obs.window_s + GATE_SLACK
        if gf.inflow + gf.outflow > limit:
            return Verdict(None, f"gates[{i}]: {gf.inflow + gf.outflow} crossings in {obs.window_s:g} s exceed "
                                 f"{limit:.0f} ({MAX_SPECIFIC_FLOW:g} persons/m/s over {width:.1f} m)")
    skew = None
    captured = obs.captured_at
    if obs.sent_at is not None:
        if obs.captured_at > obs.sent_at + SKEW_TOLERANCE_S:
            return Verdict(None, f"captured_at: {obs.captured_at - obs.sent_at:.0f} s after sent_at")
        ref = received_at if received_at is not None and abs(received_at - now) < MAX_AGE_S else now
        off = obs.sent_at - ref
        if abs(off) > SKEW_TOLERANCE_S:
            skew = off
            captured = obs.captured_at - off
    if captured > now + FUTURE_TOLERANCE_S:
        return Verdict(None, f"captured_at: {captured - now:.0f} s ahead of the receiver's clock "
                             f"(tolerance {FUTURE_TOLERANCE_S:g} s)")
    if captured < now - MAX_AGE_S:
        return Verdict(None, f"captured_at: {now - captured:.0f} s old (limit {MAX_AGE_S:g} s)")
    if skew is not None:
        return Verdict(obs.model_copy(update={"captured_at": captured}), None, skew)
    return Verdict(obs)


def entry_time(entry_id: str) -> float | None:
    """When Redis took a stream entry (the milliseconds of its id), or None if it is not one."""
    try:
        return int(entry_id.split("-", 1)[0]) / 1000.0
    except ValueError:
        return None
