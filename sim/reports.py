"""Queue counts in the twin: who counts the holding areas, and how well. Pure, seeded.

The cameras see zones, not the pens behind a metering or a metro concourse. In the live
system the metro operator's station control reports its concourse and the staff at a pen
report their queue (command ``report_queue``, ``control.holds``). Here the same reports come
from the twin's true queues: a concourse every minute, a pen every two [estimate, to be agreed
with the operator and the posts], each count off by a lognormal error (σ 10 % [estimate]:
a head count of a packed pen by eye or the operator's gate arithmetic), and only while the
pen is in use (its gate held back by a measure, or people waiting there): nobody stands at an
empty pen whose gate runs free. The reports have their own random stream, so the evening's
arrivals and camera faults are the same with and without them.
"""

from __future__ import annotations

import numpy as np

from crowdflow.site import Site

METRO_EVERY_S = 60.0  # the operator's station control, for a concourse (a metro zone's pen)
PEN_EVERY_S = 120.0  # the staff at any other pen
COUNT_ERROR = 0.10  # lognormal σ of one count


class QueueReporters:
    def __init__(self, site: Site, net, seed: int, error: float = COUNT_ERROR):
        self.rng = np.random.default_rng(seed)
        self.error = error
        kinds = {z.id: z.kind for z in site.zones}
        # the twin's held arrivals are not capped by the pen; beyond its standing room they queue
        # out of it, and a counter counts the pen (control.holds refuses more than that)
        from control.holds import MAX_PEN_DENSITY

        self.room = {h.id: h.area_m2 * MAX_PEN_DENSITY for h in site.holding_areas}
        # (holding area, its sources, its gate's inbound ways, report every): arrivals held at a
        # source (an entrance, a metro exit), or people waiting before a metered way (the bridge's
        # south entry: no source, its queue is the zone's people ready to pass)
        self.pens: list[tuple[str, np.ndarray, np.ndarray, float]] = []
        for h in site.holding_areas:
            if h.queue != "arrivals":
                continue
            srcs = np.array([s for s, g in enumerate(net.src_gate) if g == h.gate], int)
            ports = np.array([] if len(srcs) else
                             [k for k in range(net.P) if net.pgate[k] == h.gate and net.pgdir[k] == "in"], int)
            if len(srcs) or len(ports):
                self.pens.append((h.id, srcs, ports, METRO_EVERY_S if kinds.get(h.zone) == "metro" else PEN_EVERY_S))
        self._next = {p[0]: 0.0 for p in self.pens}

    def due(self, t: float, model) -> list[tuple[str, int]]:
        """The counts reported at twin time ``t`` (seconds) of ``model`` (``sim.model.Model``):
        ``(holding area, people)``."""
        st, ctl, net = model.state, model.ctl, model.net
        held = st.held.sum(1)
        pq = None
        out = []
        for hid, srcs, ports, every in self.pens:
            if t < self._next[hid]:
                continue
            if len(srcs):
                q = float(held[srcs].sum())
                in_use = bool((ctl.src_rate[srcs] < net.src_cap[srcs]).any())
            else:
                if pq is None:
                    pq = model.twin.port_queue(st)
                q = float(pq[ports].sum())
                in_use = bool((np.isfinite(ctl.port_rate[ports]) | ~ctl.port_open[ports]).any())
            if q < 1.0 and not in_use:
                continue  # an empty pen at a gate running free: nobody there to count
            self._next[hid] = t + every
            people = int(round(q * self.rng.lognormal(0.0, self.error)))
            out.append((hid, min(people, int(self.room[hid]))))
        return out
