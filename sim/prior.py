"""Who the people counted in a zone are: the planning twin's start from fused counts.

Cameras count people per zone; they do not say where each one is in their visit. The twin's
:meth:`sim.model.Model.set_counts` puts everyone found in a corridor on their way out by the
nearest exit and everyone at a place at that stop of the first chain that has it. Measured on
the yardstick (docs/mpc.md, "Start state"): from the same 19:30 state the twin started that way
lets ≈2,500 people leave in 5 minutes where the evening lets ≈1,100 — the forecast loses ≈10 %
of the crowd every 5 minutes, so the planner under-forecasts every corridor.

:class:`StartPrior` runs the scenario once at its nominal demand, without measures, through the
evening, and keeps every ``every_s`` the make-up of each zone: the share of its people in each
corridor cell and place, per class (chain stage). :meth:`StartPrior.place` spreads measured
counts by the make-up of the nearest earlier snapshot; a zone the prior had (nearly) empty falls
back to ``set_counts``' rule. Pure: the scenario in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .model import Model
from .scenario import Scenario

EVERY_S = 300.0
MIN_PEOPLE = 5.0  # a zone the prior holds fewer people in has no make-up worth copying


class StartPrior:
    def __init__(self, site, scenario: Scenario, network, every_s: float = EVERY_S, seed: int = 11):
        m = Model(site, scenario.model_copy(update={"demand_scale": 1.0}), seed=seed, network=network)
        net = m.net
        self.every_s = every_s
        self.t0 = float(m.t)
        self.cz = net.czone.copy()
        self.pz = net.place_zone.copy()
        self.snaps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        end = scenario.end_s
        t = m.t
        while True:
            st = m.state
            self.snaps.append((st.cell.copy(), st.act.copy(), st.rdy.copy()))
            t += every_s
            if t > end:
                break
            m.run_until(t)

    def snapshot(self, tod_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = int((tod_s - self.t0) // self.every_s)
        return self.snaps[min(max(i, 0), len(self.snaps) - 1)]

    def place(self, model: Model, counts: dict[str, float],
              makeup: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """Set ``model``'s people from zone ``counts`` (people on each zone's own ground) with
        the prior's make-up at the model's time of day, or with ``makeup`` ((cell, act, rdy) of
        a model of this network, e.g. the planning twin's nowcast) where that has the zone's
        people; the prior's where it does not."""
        net = model.net
        prior = self.snapshot(model.t)
        if makeup is None:
            makeup = prior
        model.set_counts(counts)  # the fallback for zones the prior cannot describe
        st = model.state
        area_scale = model.area / model.zone_area
        for z, c in counts.items():
            if z not in net.zi:
                continue
            zi = net.zi[z]
            cells = self.cz == zi
            places = self.pz == zi
            for cell0, act0, rdy0 in (makeup, prior):
                tot = float(cell0[cells].sum() + act0[places].sum() + rdy0[places].sum())
                if tot >= MIN_PEOPLE:
                    break
            else:
                continue
            f = c * area_scale[model.zones.index(z)] / tot
            st.cell[cells] = cell0[cells] * f
            st.act[places] = act0[places] * f
            st.rdy[places] = rdy0[places] * f
