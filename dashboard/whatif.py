"""What-if for the dashboard: "the next 30 minutes with and without these measures, from the
live state". The computation is the measures engine's own (the twin behind
``control.twin.Twin``, unknown zones at their worst plausible count); this module is the thin
HTTP shell: ``GET /api/measures`` (what can be picked) and ``POST /api/whatif``.

The twin is the site simulator of the scenario in ``CROWDFLOW_TWIN`` (default
``mayday-evening``); without a scenario the endpoint answers 503 and says why.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, create_model

from crowdflow.site import Site

MAX_MEASURES = 20


class WhatIfRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "recommended": 0 is refused, not coerced

    measures: list[str] = Field(default_factory=list, max_length=MAX_MEASURES)
    recommended: bool = False  # add what the pending recommendations switch on
    horizon_min: float = Field(30, ge=5, le=60)


def _loads(series) -> list[float]:
    return [round(float(x), 3) for x in series]


class WhatIfService:
    """Pure apart from the clock: live zone/plan state in, curves out."""

    def __init__(self, site: Site, twin_factory: Callable[[], object] | None):
        self.site = site
        self._factory = twin_factory
        self._twin = None
        self._lock = threading.Lock()
        from control.dispatch import StaffBook

        self._staff = StaffBook(site)  # travel times from the reserve's base: when a picked measure acts
        fixed = os.environ.get("CROWDFLOW_TWIN_TOD")  # drills / demo: plan from this time of day
        if fixed:
            from sim.scenario import hhmm_to_s

            self.fixed_tod = hhmm_to_s(fixed)
        else:
            self.fixed_tod = None

    def twin(self):
        with self._lock:
            if self._twin is None and self._factory is not None:
                self._twin = self._factory()
            return self._twin

    def measures(self) -> list[dict]:
        return [{"id": m.id, "name": m.name.model_dump(), "level": m.level, "stage": m.stage, "plans": m.plans,
                 "relieves": m.relieves, "types": sorted({a.type for a in m.actions})} for m in self.site.measures]

    def run(self, req: WhatIfRequest, zones: dict, plans: dict, recs: dict, now: float, holds=()) -> dict:
        """``holds``: the holding areas' published counts (HoldState as shown now); the fresh
        ones start the twin's queues, as they start the planner's."""
        from control.holds import reported_queues, start_queues
        from control.measures import order_delay_min
        from control.optimizer import GRACE_MIN, Candidate, Optimizer, plausible_counts, tod_of
        from control.twin import TwinStart, start_flows

        twin = self.twin()
        if twin is None:
            raise HTTPException(503, "no twin: set CROWDFLOW_TWIN to a scenario (e.g. mayday-evening)")
        known = self.site.measure_by_id
        bad = [m for m in req.measures if m not in known]
        if bad:
            # the route's model refuses these already; a direct caller gets the same answer
            raise HTTPException(422, f"measures: unknown measure {bad[0]!r}")
        in_force = sorted({m for p in plans.values() for m in ((p.measures or {}) if p.measures else {})})
        picked = set(req.measures)
        if req.recommended:
            picked |= {m for r in recs.values() if r.status == "pending" for m in (r.measures_on or [])}
        picked -= set(in_force)
        counts, unknown = plausible_counts(self.site, zones, now)
        tod = self.fixed_tod if self.fixed_tod is not None else tod_of(now, self.site.site.timezone)
        queues = start_queues(reported_queues(holds, self.site), getattr(twin, "queue_keys", ()) or ())
        start = TwinStart(tod, counts, queues, start_flows(zones))
        # as the engine rolls them: what is in force acts once it is on the ground (now, or when
        # its officers are in place and set up: the published ``PlanState.in_effect``), a picked
        # measure once its staff have walked from the reserve and set it up (``order_delay_min``)
        since = {m: t for p in plans.values() for m, t in (p.measures or {}).items()}
        on_ground = {m: t for p in plans.values() for m, t in (p.in_effect or {}).items()}
        opt = Optimizer(self.site, twin)
        both = set(in_force) | picked
        cands = {m: Candidate(known[m], active=m in in_force, since=since.get(m), in_effect_at=on_ground.get(m),
                              delay_min=order_delay_min(self._staff, known[m]))
                 for m in both}
        acts_at = {m: round(cands[m].delay_min, 1) for m in sorted(picked)}
        # in force, still being set up: minutes from now until it acts
        acts_at.update({m: round((on_ground[m] - now) / 60.0, 1) for m in in_force if on_ground.get(m, now) > now})
        t0 = time.perf_counter()
        without = twin.rollout(start, opt.schedule(cands, in_force, [], now), req.horizon_min, 1.0)
        with_ = twin.rollout(start, opt.schedule(cands, both, [], now), req.horizon_min, 1.0) if picked else without
        elapsed = time.perf_counter() - t0
        targets = opt.targets
        elements = twin.elements()
        relieved = {z for m in picked for z in known[m].relieves}
        curves = []
        for eid, el in elements.items():
            w, o = with_.load[eid], without.load[eid]
            change = float(abs(w - o).max())
            if not (change >= 0.02 or eid in relieved or (eid in unknown)):
                continue
            pw, tw = with_.peak(eid, GRACE_MIN)
            po, to = without.peak(eid, GRACE_MIN)
            curves.append({"element": eid, "name": el.name.model_dump(), "kind": el.kind, "capacity": el.capacity,
                           "target": targets.get(eid), "unknown": eid in unknown, "with": _loads(w), "without": _loads(o),
                           "peak_with": [round(pw, 3), tw], "peak_without": [round(po, 3), to], "change": round(change, 3)})
        # the zones the picked measures relieve first (the ones a commander asked about), then
        # the largest changes (queue waits and holding areas a measure builds included)
        curves.sort(key=lambda c: (c["element"] not in relieved, -c["change"]))
        return {"at": now, "tod_s": tod, "horizon_min": req.horizon_min, "minutes": [float(x) for x in without.minutes],
                "in_force": in_force, "measures": sorted(picked), "acts_at_min": acts_at, "unknown": unknown,
                "queues": queues,
                "curves": curves[:8],
                "elapsed_s": round(elapsed, 3)}


def request_model(site: Site) -> type[WhatIfRequest]:
    """:class:`WhatIfRequest` with ``measures`` limited to this site's measure ids, so the
    OpenAPI lists them and an unknown one is refused by validation (422, FastAPI's format)."""
    ids = tuple(m.id for m in site.measures)
    if not ids:
        return WhatIfRequest
    return create_model("WhatIfRequest", __base__=WhatIfRequest,
                        measures=(list[Literal[ids]], Field(default_factory=list, max_length=MAX_MEASURES)))


def default_twin_factory(site: Site):
    name = os.environ.get("CROWDFLOW_TWIN", "mayday-evening")
    if not name or not site.measures:
        return None

    def make():
        from sim.plantwin import ModelTwin
        from sim.scenario import load_scenario

        sc, _ = load_scenario(name, site)
        return ModelTwin(site, sc)

    return make


def mount(app: FastAPI, site: Site, state, viewer, twin_factory=None) -> WhatIfService:
    """Add ``GET /api/measures`` and ``POST /api/whatif`` to the dashboard app."""
    svc = WhatIfService(site, twin_factory if twin_factory is not None else default_twin_factory(site))
    Request = request_model(site)

    @app.get("/api/measures", tags=["read"])
    def get_measures(s=viewer) -> list[dict]:
        """The site's measures (what the what-if panel can pick), cheapest lever (stage) first."""
        return sorted(svc.measures(), key=lambda m: (m["stage"], m["id"]))

    def post_whatif(body, s=viewer) -> dict:
        """The next ``horizon_min`` minutes from the live state, with the measures in force and
        with the picked ones (or the pending recommendations') added: load per affected zone."""
        zones = {z.zone_id: z for z in state.zones.all(time.time())}
        now = time.time()
        return svc.run(body, zones, dict(state.plans), dict(state.recs), now, state.all_holds(now))

    post_whatif.__annotations__["body"] = Request  # the site's own model (this module defers annotations)
    app.post("/api/whatif", tags=["read"])(post_whatif)
    return svc
