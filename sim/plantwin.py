"""The site simulator as a planning twin for the optimiser (``control.twin.Twin``).

A rollout is the pedestrian model (:mod:`sim.model`) run from the fused zone counts at a
coarser step (default 15 s; a 30-minute rollout then costs ≈35 ms on one core) with one fixed
seed, so every candidate measure set of one decision sees the same arrivals (common random
numbers: the difference between two rollouts is the measures', not the dice's). Elements: every
zone (load = people ÷ LB/T 034 capacity, road ground freed by a cut included) and the holding
area behind every metered source gate (load = people waiting ÷ its area × ``HOLD_DENSITY``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from control.twin import Element, Rollout, Schedule, TwinStart
from crowdflow.site import MeteringAction, Site, Text

from .model import Model, Network
from .scenario import Scenario

HOLD_DENSITY = 2.0  # p/m²: a queue in a holding area is at its capacity at this density
MAX_WAIT_MIN = 15.0  # a holding queue is also "full" when the wait at the metered rate reaches this


class ModelTwin:
    def __init__(self, site: Site, scenario: Scenario, step_s: float = 15.0, seed: int = 7,
                 demand_scale: float | None = None):
        upd = {"model": scenario.model.model_copy(update={"step_s": step_s})}
        if demand_scale is not None:
            upd["demand_scale"] = demand_scale
        self.sc = scenario.model_copy(update=upd)
        self.site = site
        self.seed = seed
        self.net = Network.build(site, self.sc)
        self.apv = np.array([z.area_per_visitor_m2 for z in site.zones])
        self._elements: dict[str, Element] = {
            z.id: Element(z.id, z.name, float(z.capacity), "zone") for z in site.zones}
        gates = site.gate_by_id
        self._holding: dict[str, tuple[int, float]] = {}  # element id → (source index, area m²)
        for m in site.measures:
            for a in m.actions:
                if isinstance(a, MeteringAction) and a.holding_area_m2 and a.gate in self.net.source_gate:
                    s = self.net.source_gate.index(a.gate)
                    eid = f"hold:{a.gate}"
                    g = gates[a.gate]
                    self._holding[eid] = (s, a.holding_area_m2)
                    self._elements[eid] = Element(eid, Text(zh=f"{g.name.zh}候行区", en=f"{g.name.en} holding area"),
                                                  a.holding_area_m2 * HOLD_DENSITY, "holding")

    def elements(self) -> Mapping[str, Element]:
        return self._elements

    def _loads(self, m: Model) -> np.ndarray:
        """Zones: people ÷ capacity. Holding areas: the worse of people ÷ (area × HOLD_DENSITY)
        and the wait at the metered rate ÷ MAX_WAIT_MIN (the yardstick's p95 wait bound)."""
        zone = m.density * self.apv
        hold = []
        for s, area in self._holding.values():
            q = float(m.queue[s])
            rate_pm = float(m.limit[s]) * 60.0
            wait = q / rate_pm if rate_pm > 0 else (0.0 if q == 0 else np.inf)
            hold.append(max(q / (area * HOLD_DENSITY), min(wait, 1e3) / MAX_WAIT_MIN))
        return np.concatenate([zone, np.array(hold, dtype=float)])

    def rollout(self, start: TwinStart, schedule: Schedule, minutes: float, every_min: float = 1.0) -> Rollout:
        m = Model(self.site, self.sc, seed=self.seed, tod_s=start.tod_s, network=self.net)
        sched = sorted(schedule, key=lambda x: x[0])
        k_next = 0
        if sched and sched[0][0] <= 0:
            m.set_actions(list(sched[0][1]))
            k_next = 1
        m.set_counts({z: c for z, c in start.counts.items() if z in self.net.index})
        for eid, q in start.queues.items():
            if eid in self._holding:
                m.queue[self._holding[eid][0]] = int(round(q))
        n = int(round(minutes / every_min))
        out = np.zeros((n + 1, len(self._elements)))
        out[0] = self._loads(m)
        for i in range(1, n + 1):
            t_min = i * every_min
            while k_next < len(sched) and sched[k_next][0] < t_min:
                m.run_until(start.tod_s + sched[k_next][0] * 60)
                m.set_actions(list(sched[k_next][1]))
                k_next += 1
            m.run_until(start.tod_s + t_min * 60)
            out[i] = self._loads(m)
        ids = list(self._elements)
        return Rollout(np.arange(n + 1) * every_min, {e: out[:, j] for j, e in enumerate(ids)},
                       turned_away=float(m.totals.gave_up))
