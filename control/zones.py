"""Per-zone state from camera observations. Pure: no I/O, time is passed in.

Several cameras may see parts of one zone. Each camera reports, per zone, the people it saw
and the walkable area it saw them on: the density of the ground it sees. Each preset's
footprint on the ground (:mod:`control.ground`) splits the zone into parts seen by none, one
or several cameras, and :func:`control.fusion.fuse` turns the readings into the zone's count:
averaged where views overlap, as measured where one camera sees, estimated (history, then
neighbours) with a wider noise and a lower confidence where none does. Gate crossings move
occupancy between zones between measurements. A zone with no fresh, healthy camera is
``unknown`` with a reason — never zero.

Level of service is the worse of Fruin's space table (density) and his flow table; the
flow per metre is measured at the zone's gates where they report, else taken from the
fundamental diagram on the density.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from crowdflow import crowd
from crowdflow.records import CameraView as CameraViewRecord
from crowdflow.records import LastKnown, Observation, ZoneState, built
from crowdflow.site import LEVELS, Site, TrafficCutoffAction

from .forecast import forecasts, minutes_to_ratio
from .fusion import Fused, OccupancyFilter, Reading, aged, fuse, fuse_many, reading_variance
from .ground import ground_of

FLOW_WINDOW_S = 60.0
FUTURE_TOLERANCE_S = 5.0  # a view dated further ahead of control's clock is not trusted as fresh
FUSE_MANY_MIN = 32  # fewer zones to fuse at once: one by one (fuse_many costs ≈ 0.1–0.3 ms whatever the size; fuse ≈ 10–20 µs a zone)


@dataclass
class CameraView:
    """The newest thing one camera said about one zone. Never changed once made (not frozen:
    a frozen dataclass costs 4× as much to make, and one is made per observation and zone)."""

    captured_at: float
    health: str
    count: float | None = None
    visible_area_m2: float | None = None
    method: str | None = None
    confidence: float | None = None
    preset: str | None = None


def site_problem(obs: Observation, site: Site) -> str | None:
    """Why this observation does not fit the site, or None. Names the field."""
    cam = site.camera_by_id.get(obs.camera_id)
    if cam is None:
        return f"camera_id: unknown camera {obs.camera_id!r}"
    for i, zc in enumerate(obs.zones):
        if zc.zone_id not in cam.zones:
            return f"zones[{i}].zone_id: zone {zc.zone_id!r} is not configured for camera {obs.camera_id}"
    gates = {g.id for g in site.gates}
    for i, gf in enumerate(obs.gates):
        if gf.gate_id not in gates:
            return f"gates[{i}].gate_id: unknown gate {gf.gate_id!r}"
    return None


def level_thresholds(site: Site) -> dict[str, dict[str, float]]:
    """Zone → level → the lowest capacity-ratio trigger of that level over the plans holding it."""
    out: dict[str, dict[str, float]] = {z.id: {} for z in site.zones}
    for plan in site.plans:
        for lv in plan.levels:
            t = lv.triggers.capacity_ratio
            if t is None:
                continue
            for zid in plan.zones:
                prev = out[zid].get(lv.level)
                out[zid][lv.level] = t if prev is None else min(prev, t)
    return out


class ZoneBook:
    def __init__(self, site: Site, stale_after_s: float):
        self.site = site
        self.stale_after_s = stale_after_s
        self._views: dict[str, dict[str, CameraView]] = {z.id: {} for z in site.zones}
        self._filters: dict[str, OccupancyFilter] = {}
        self._pending_flow: dict[str, float] = {z.id: 0.0 for z in site.zones}
        self._flows: dict[str, deque] = {z.id: deque() for z in site.zones}  # (t, in, out)
        self._has_gates = {zid for g in site.gates for zid in (g.inside_zone, g.outside_zone) if zid}
        self._last_known: dict[str, LastKnown] = {}
        self._dirty: set[str] = set()  # zones whose memory (control/snapshot.py) changed since take_dirty()
        self._covering: dict[str, list[str]] = {z.id: [] for z in site.zones}
        for c in site.cameras:
            for zid in c.zones:
                self._covering[zid].append(c.id)
        self._outlook: dict[str, tuple[float, list, dict]] = {}  # zone → (when, forecast, minutes_to_level)
        self._thresholds = level_thresholds(site)
        self._gates = {g.id: g for g in site.gates}
        self._extra_area: dict[str, float] = {}
        self.ground = ground_of(site)
        self._last_ok: dict[str, dict[str, CameraView]] = {z.id: {} for z in site.zones}
        self._std: dict[str, float] = {}
        self._readings: dict[tuple[str, str], tuple[CameraView, Reading]] = {}  # (zone, camera) → (view, its reading)
        self._parts_of: dict[str, tuple] = {}  # zone → (views, ground.parts(zone, views)) last asked
        # Gate widths (m) and the crossings each gate reported: measured flow per metre.
        proj = site.projection
        self._gate_width = {g.id: max(0.5, _dist(*proj.to_metric(list(g.line)))) for g in site.gates}
        self._gate_flows: dict[str, deque] = {g.id: deque() for g in site.gates}  # (t, crossings)
        self._zone_gates: dict[str, list[str]] = {z.id: [] for z in site.zones}
        for g in site.gates:
            for zid in (g.inside_zone, g.outside_zone):
                if zid:
                    self._zone_gates[zid].append(g.id)

    def set_actions(self, actions) -> None:
        """The actions in force. A cut road's pedestrian area joins the zones beside it
        (roads[].frees): people spread onto it, so the zone's count covers that ground too,
        at the density its cameras see, and its capacity grows with it."""
        self._extra_area = self.site.freed_area(a.road for a in actions if isinstance(a, TrafficCutoffAction))

    def take_dirty(self) -> set[str]:
        """The zones whose working memory changed (an observation, a state computed) since the
        last call: what an incremental memory snapshot has to write."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    # ------------------------------------------------------------------ input

    def apply(self, obs: Observation, now: float | None = None) -> set[str]:
        """Take one observation (already checked with :func:`site_problem`).

        Returns the zones whose inputs changed. An observation older than what this camera
        already reported for a zone (a late replay) does not overwrite the newer view. With
        ``now``, a view dated in the future moves no filter past ``now``, so a camera with a
        fast clock cannot freeze a zone for the others."""
        return self.apply_many((obs,), now)

    def apply_many(self, observations, now: float | None = None) -> set[str]:
        """:meth:`apply` for each observation, in the order given (control: capture time),
        with the fusion batched: the result is the one-by-one result (tests/test_fusion_batch.py).

        Zones are independent between measurements (a gate's crossings reach its zones'
        pending flow, a camera's view its zones), so the observations are first split into
        each zone's events in order; then, round by round, every zone takes its next event and
        the zones that measure in that round are fused together (:func:`fuse_many`), each
        filter stepping once per observation as before."""
        events: dict[str, list] = {}  # zone → its events in order: a pending-flow delta or a view
        newest: dict[tuple[str, str], float] = {}  # (zone, camera) → newest view time taken here
        touched = set()
        views = self._views
        for obs in observations:
            cid = obs.camera_id
            cam = self.site.camera_by_id[cid]
            t_use = obs.captured_at if now is None else min(obs.captured_at, now + FUTURE_TOLERANCE_S)
            for gf in obs.gates:
                g = self._gates[gf.gate_id]
                self._gate_flows[g.id].append((obs.captured_at, gf.inflow + gf.outflow))
                for zid, sign in ((g.inside_zone, 1), (g.outside_zone, -1)):
                    if zid is None:
                        continue
                    zin, zout = (gf.inflow, gf.outflow) if sign > 0 else (gf.outflow, gf.inflow)
                    self._flows[zid].append((obs.captured_at, zin, zout))
                    events.setdefault(zid, []).append(float(zin - zout))
                    touched.add(zid)
            reported = {zc.zone_id: zc for zc in obs.zones}
            for zid in cam.zones:
                prev_t = newest.get((zid, cid))
                if prev_t is None:
                    prev = views[zid].get(cid)
                    prev_t = prev.captured_at if prev is not None else None
                if prev_t is not None and prev_t > obs.captured_at:
                    continue
                newest[(zid, cid)] = obs.captured_at
                zc = reported.get(zid)
                if obs.health == "ok" and zc is not None:
                    view = CameraView(obs.captured_at, "ok", zc.count, zc.visible_area_m2, zc.method, zc.confidence,
                                      obs.preset)
                elif obs.health == "ok":
                    view = CameraView(obs.captured_at, "out_of_view", preset=obs.preset)  # healthy, zone not in view
                else:
                    view = CameraView(obs.captured_at, obs.health, preset=obs.preset)
                events.setdefault(zid, []).append((cid, view, t_use))
                touched.add(zid)
        self._dirty |= touched
        pos = dict.fromkeys(events, 0)
        active = list(events)
        while active:
            measure, later = [], []
            for zid in active:
                evs, i = events[zid], pos[zid]
                while i < len(evs) and type(evs[i]) is float:
                    self._pending_flow[zid] += evs[i]
                    i += 1
                if i == len(evs):
                    continue
                cid, view, t = evs[i]
                pos[zid] = i = i + 1
                if view.health == "ok":
                    self._last_ok[zid][cid] = view
                views[zid][cid] = view
                if view.health == "ok" or zid in self._filters:
                    measure.append((zid, t, self._predict(zid, t)))
                if i < len(evs):
                    later.append(zid)
            for (zid, t, f), (fz, n_fresh) in zip(measure, self._fuse_zones(measure)):
                self._correct(zid, t, f, fz, n_fresh)
            active = later
        return touched

    def _fresh(self, v: CameraView, now: float) -> bool:
        return v.health == "ok" and -FUTURE_TOLERANCE_S <= now - v.captured_at <= self.stale_after_s

    def _reading(self, zid: str, cid: str, v: CameraView, area_per_visitor_m2: float) -> Reading:
        """The camera's reading of its view (cached per view: a view is read once per
        observation and once per zone state, never changed)."""
        hit = self._readings.get((zid, cid))
        if hit is not None and hit[0] is v:
            return hit[1]
        r = _reading(v, area_per_visitor_m2)
        self._readings[(zid, cid)] = (v, r)
        return r

    def _inputs(self, zid: str, now: float, prior: OccupancyFilter | None):
        """(:func:`fuse`'s arguments for the zone with the views fresh at ``now``, the number
        of fresh readings)."""
        zone = self.site.zone_by_id[zid]
        readings: dict[str, Reading] = {}
        history: dict[str, Reading] = {}
        views: list[tuple[str, str | None]] = []
        apv = zone.area_per_visitor_m2
        cache = self._readings
        lo, hi = -FUTURE_TOLERANCE_S, self.stale_after_s
        for cid, v in self._views[zid].items():
            if v.health == "ok" and lo <= now - v.captured_at <= hi:  # _fresh(), inlined: the hot path
                hit = cache.get((zid, cid))
                readings[cid] = hit[1] if hit is not None and hit[0] is v else self._reading(zid, cid, v, apv)
                views.append((cid, v.preset))
        for cid, v in self._last_ok[zid].items():
            if cid in readings:
                continue
            h = aged(self._reading(zid, cid, v, apv), now - v.captured_at)
            if h is not None:
                history[cid] = h
                views.append((cid, v.preset))
        views = tuple(views)
        last = self._parts_of.get(zid)  # the zone's views rarely change: the last answer first
        if last is not None and last[0] == views:
            parts, unplaced_ids = last[1]
        else:
            parts, unplaced_ids = self.ground.parts(zid, views)
            self._parts_of[zid] = (views, (parts, unplaced_ids))
        unplaced = {}
        for cid in unplaced_ids:
            v = self._views[zid].get(cid)
            if cid in readings and v is not None and v.visible_area_m2:
                unplaced[cid] = v.visible_area_m2 / zone.walkable_area_m2
            history.pop(cid, None)
        w = zone.walkable_area_m2
        prior_d = prior.n / w if prior is not None else None
        prior_v = prior.p_nn / (w * w) if prior is not None else 0.0
        return (parts, readings, history, prior_d, prior_v, unplaced), len(readings)

    def fused(self, zid: str, now: float, prior: OccupancyFilter | None = None):
        """The zone's count fused on the ground from the views fresh at ``now``."""
        args, n_fresh = self._inputs(zid, now, prior)
        return fuse(*args), n_fresh

    def _fuse_zones(self, jobs) -> list[tuple[Fused | None, int]]:
        """(fused count, fresh readings) for each ``(zone, time, prior)``: vectorised over the
        zones (:func:`fuse_many`) when there are many, one by one when few. A zone with no
        fresh reading is not fused (None): nothing uses a count nobody measured."""
        inputs = [self._inputs(zid, t, f) for zid, t, f in jobs]
        live = [a for a, n in inputs if n]
        if len(live) < FUSE_MANY_MIN:
            return [(fuse(*a) if n else None, n) for a, n in inputs]
        m = fuse_many(live)
        rows = iter(map(Fused, m.count.tolist(), m.variance.tolist(), m.estimated_variance.tolist(),
                        m.seen_m2.tolist(), m.estimated_m2.tolist(), m.confidence.tolist()))
        return [(next(rows) if n else None, n) for _, n in inputs]

    def _predict(self, zid: str, t: float) -> OccupancyFilter | None:
        """The zone's filter moved to ``t`` with the gate flows pending (None: none, or stale)."""
        f = self._filters.get(zid)
        if f is not None and t - f.t > self.stale_after_s:
            f = None
        if f is not None and t > f.t:
            # The filter counts people at the zone's density over its normal walkable area.
            zone = self.site.zone_by_id[zid]
            scale = zone.walkable_area_m2 / (zone.walkable_area_m2 + self._extra_area.get(zid, 0.0))
            f.predict(t, self._pending_flow[zid] * scale)
            self._pending_flow[zid] = 0.0
        return f

    def _correct(self, zid: str, t: float, f: OccupancyFilter | None, fz: Fused | None, n_fresh: int) -> None:
        """The filter's measurement update with the zone's fused count (``f`` from :meth:`_predict`)."""
        if n_fresh == 0:
            return  # nothing measured now: the filter coasts on its prediction
        # The filter weighs only the cameras' counting noise. The error of an estimated part
        # (history, neighbours) does not average out from one update to the next, so it is
        # not measurement noise: it is added to the count's ± when the state is read, and it
        # must not slow the filter down. Every reading takes part in each of the zone's
        # updates until it is replaced: its noise is spread over those updates.
        var = max(fz.variance - fz.estimated_variance, 1.0) * n_fresh
        if f is None:
            self._filters[zid] = OccupancyFilter.start(fz.count, max(fz.variance, 1.0), t)  # all of it: a first belief
            self._pending_flow[zid] = 0.0
            return
        # An out-of-order view (t < f.t) still counts, at the filter's time: the filter does
        # not go back, and no other camera's newer view is held up by it.
        f.update(fz.count, var)

    # ------------------------------------------------------------------ output

    def measured_flow_ppm(self, zid: str, now: float) -> float | None:
        """Persons per metre of width per minute through the zone's busiest gate over the
        last minute, where its gates report; None where nothing measures it."""
        best = None
        for gid in self._zone_gates[zid]:
            q = self._gate_flows[gid]
            while q and q[0][0] < now - 2 * FLOW_WINDOW_S:
                q.popleft()
            recent = [n for t, n in q if t > now - FLOW_WINDOW_S]
            if not recent:
                continue
            ppm = sum(recent) * 60.0 / FLOW_WINDOW_S / self._gate_width[gid]
            best = ppm if best is None else max(best, ppm)
        return best

    def flows_pm(self, zid: str, now: float) -> tuple[float, float] | None:
        if zid not in self._has_gates:
            return None
        q = self._flows[zid]
        while q and q[0][0] < now - 2 * FLOW_WINDOW_S:
            q.popleft()
        fin = sum(i for t, i, _ in q if t > now - FLOW_WINDOW_S)
        fout = sum(o for t, _, o in q if t > now - FLOW_WINDOW_S)
        scale = 60.0 / FLOW_WINDOW_S
        return fin * scale, fout * scale

    def state(self, zone_id: str, now: float, fz: Fused | None = None) -> ZoneState:
        """The zone's state at ``now`` (``fz``: its fused count at ``now``, when the caller
        has it: :meth:`states` fuses all its zones at once)."""
        zone = self.site.zone_by_id[zone_id]
        self._dirty.add(zone_id)  # flows are pruned, the last known value moves
        views = self._views[zone_id]
        fresh = {cid: v for cid, v in views.items() if self._fresh(v, now)}
        cap_now = crowd.capacity(zone.walkable_area_m2 + self._extra_area.get(zone_id, 0.0), zone.area_per_visitor_m2)
        base = dict(zone_id=zone_id, capacity=cap_now, computed_at=now, cameras=self.camera_views(zone_id, now))
        flows = self.flows_pm(zone_id, now)
        if not fresh or zone_id not in self._filters:
            # Gate flows are measured on their own; they stay visible while the count is unknown.
            return ZoneState(status="unknown", reason=self._unknown_reason(zone_id, views, now),
                             last_known=self._last_known.get(zone_id),
                             inflow_pm=round(flows[0], 2) if flows else None,
                             outflow_pm=round(flows[1], 2) if flows else None, **base)
        f = self._filters[zone_id]
        density = f.n / zone.walkable_area_m2
        eff_area = zone.walkable_area_m2 + self._extra_area.get(zone_id, 0.0)
        count = density * eff_area
        if fz is None:
            fz, _ = self.fused(zone_id, now, f)
        # The filter follows what is measured; parts nobody sees now add their own noise
        # (it grows with the age of their last reading), so a camera going offline widens
        # the zone's uncertainty instead of zeroing its part.
        std = (f.p_nn + fz.estimated_variance) ** 0.5 * eff_area / zone.walkable_area_m2
        trend_pm = f.r * 60.0 * eff_area / zone.walkable_area_m2
        net_pm = trend_pm + ((flows[0] - flows[1]) if flows else 0.0)
        measured_q = self.measured_flow_ppm(zone_id, now)
        q = measured_q if measured_q is not None else crowd.flow_ppm(density)
        cap = crowd.capacity(eff_area, zone.area_per_visitor_m2)
        updated = max(v.captured_at for v in fresh.values())
        self._last_known[zone_id] = built(LastKnown, count=count, density=density, at=updated)
        fc, to_level = self._forecast(zone_id, now, count, net_pm, cap)
        # Built from validated inputs on the hot path: construct without re-validating.
        return built(
            ZoneState,
            v=1,
            status="ok",
            reason=None,
            last_known=None,
            count=round(count, 2),
            density=round(density, 4),
            capacity_ratio=round(count / cap, 4) if cap else None,
            count_std=round(std, 2),
            coverage=round(min(1.0, fz.seen_m2 / zone.walkable_area_m2), 3),
            estimated_share=round(min(1.0, fz.estimated_m2 / zone.walkable_area_m2), 3),
            method="+".join(sorted({v.method for v in fresh.values()})),
            confidence=round(fz.confidence, 3),
            sources=sorted(fresh),
            updated_at=updated,
            flow_ppm=round(q, 2),
            flow_measured=measured_q is not None,
            los=crowd.level_of_service(density, q),
            inflow_pm=round(flows[0], 2) if flows else None,
            outflow_pm=round(flows[1], 2) if flows else None,
            trend_pm=round(trend_pm, 2),
            forecast=fc,
            minutes_to_level=to_level,
            **base,
        )

    def camera_views(self, zone_id: str, now: float) -> list[CameraViewRecord]:
        """Every configured camera's view of the zone, as structured health."""
        out = []
        for cid in self._covering[zone_id]:
            v = self._views[zone_id].get(cid)
            if v is None:
                out.append(built(CameraViewRecord, camera_id=cid, state="no_data", at=None, preset=None, used=False))
                continue
            if v.health == "ok":
                used = self._fresh(v, now)
                state = "ok" if used else "stale"
            else:
                used, state = False, v.health
            out.append(built(CameraViewRecord, camera_id=cid, state=state, at=v.captured_at, preset=v.preset,
                                                        used=used))
        return out

    def _forecast(self, zone_id: str, now: float, count: float, net_pm: float, cap: int):
        """Forecasts move slowly: recomputed at most once a second per zone."""
        cached = self._outlook.get(zone_id)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1], cached[2]
        to_level = {}
        for level in LEVELS:
            t = self._thresholds[zone_id].get(level)
            if t is not None:
                m = minutes_to_ratio(count, net_pm, cap, t)
                if m is not None:
                    to_level[level] = m
        fc = forecasts(count, net_pm, cap)
        self._outlook[zone_id] = (now, fc, to_level)
        return fc, to_level

    def states(self, now: float, zone_ids=None) -> dict[str, ZoneState]:
        """Every given zone's state (all zones by default); the live ones fused together."""
        ids = list(zone_ids if zone_ids is not None else self._views.keys())
        live = [zid for zid in ids if zid in self._filters and
                any(self._fresh(v, now) for v in self._views[zid].values())]
        fused = {zid: fz for zid, (fz, _) in zip(live, self._fuse_zones([(z, now, self._filters[z]) for z in live]))}
        return {zid: self.state(zid, now, fused.get(zid)) for zid in ids}

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


def _reading(v: CameraView, area_per_visitor_m2: float) -> Reading:
    conf = v.confidence if v.confidence is not None else 1.0
    return Reading(v.count / v.visible_area_m2, reading_variance(v.visible_area_m2, area_per_visitor_m2, conf), conf)


def _dist(a, b) -> float:
    return ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5
