"""The site twin (:mod:`sim.model` over :mod:`sim.twin`) as the optimiser's planning twin
(``control.twin.Twin``).

A rollout starts a model at the time of day from the fused zone counts, puts the measures in
effect on the ground now (the schedule's first set; ``in_effect``: staffed and set up) and then
*orders* the candidate set (its last set), each new measure acting from its first minute in the
schedule — the optimiser's staff travel and set-up, and for a measure in force whose officers
are still on their way, when they will be in place. Released roads stay cut through their
tear-down.
One fixed seed for every candidate of a decision (common random numbers); the step is
``PLAN_STEP_S`` (the twin sizes its cells to it).

Elements:
* every zone: people ÷ LB/T 034 capacity (road ground freed by a cut included);
* ``local:<zone>``: the zone's highest local density (cells, bottleneck queues, holding areas)
  ÷ ``LOCAL_TARGET`` p/m² — the yardstick counts minutes above 4 p/m²;
* ``hold:<gate>`` for each metered source gate: the worse of people waiting ÷ (area ×
  ``HOLD_DENSITY``) and the wait at the metered rate ÷ ``MAX_WAIT_MIN``;
* ``wait:<zone>``: the longest wait in any queue of the zone — a bottleneck's queue (Little:
  length ÷ its rate now, signal green share and metering included) or arrivals held at a source
  there — of at least ``QUEUE_MIN`` people, ÷ ``MAX_WAIT_MIN``: the yardstick's p95 wait counts
  every such queue.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from control.twin import SURGE_MIN, Element, Rollout, Schedule, TwinStart
from crowdflow import crowd
from crowdflow.records import PEN_FULL_DENSITY
from crowdflow.site import MeteringAction, Site, Text

from .model import Model, build_network
from .prior import StartPrior
from .scenario import Scenario

HOLD_DENSITY = PEN_FULL_DENSITY  # p/m²: a holding queue is at its capacity at this density
MAX_WAIT_MIN = 12.0  # … or when the wait reaches this (the yardstick's p95 bound is 15 min)
QUEUE_MIN = 20.0  # people: a shorter queue's wait is not planned for
LOCAL_TARGET = crowd.PLAN_DENSITY  # p/m²: highest local density the engine plans for (danger is 4)
# Planning step: a 30-min rollout at 5 s costs ≈2.7× one at 15 s. From the yardstick evening's
# states (scripts/bench_plan_step.py, docs/mpc.md) the 15-s twin is within 0.05 of capacity
# (mean abs. zone load) of the 5-s twin from the same start and its 沧白路 sidewalk peak within
# ≈1.5 %, while both miss what the yardstick then does by ≈0.14–0.16: the start from zone
# counts, not the step, is the forecast's larger error. (From an artificial start, every zone at
# 0.6, coarser cells over-forecast that corridor: 2.11 at 15 s against 1.72 at 5 s.)
PLAN_STEP_S = 15.0
# A corridor's measured inflow (its entry gate's count) is held as a floor on the twin's own
# flow through that gate for this long — the whole planning horizon: the twin routes the people of
# the place before it as on an average evening, and under measures elsewhere (a one-way on the
# other walkway) the evening sends more this way. Held 10 min: ×1.3 1.3 zone-minutes on ten
# seeds; 30 min: 0.3 (docs/mpc.md, "The walkway's measured inflow").
INFLOW_HOLD_MIN = 30.0
# The nowcast (``carry``): a start this long after the last one is carried forward; a longer gap
# (or a clock going back) starts again from the prior.
CARRY_MAX_S = 600.0


class ModelTwin:
    def __init__(self, site: Site, scenario: Scenario, seed: int = 7, demand_scale: float | None = None,
                 step_s: float | None = PLAN_STEP_S, carry: bool = False):
        upd = {}
        if demand_scale is not None:
            upd["demand_scale"] = demand_scale
        if step_s is not None:
            upd["model"] = scenario.model.model_copy(update={"step_s": step_s})
        self.sc = scenario.model_copy(update=upd) if upd else scenario
        self.site = site
        self.seed = seed
        self.net = build_network(site, self.sc)
        # who the counted people are: the evening's make-up at ×1 (≈1–3 CPU-s, once, here so
        # that no decision's time budget pays for it)
        self._prior = StartPrior(site, self.sc, self.net)
        # ``carry``: a live planner's twin keeps a nowcast — the twin carried from one start to the
        # next under the measures in force and corrected to each start's counts — whose make-up
        # inside each zone (a jam at a walkway's narrow span, a queue at a way) seeds the
        # rollouts instead of the prior's evening without measures (docs/mpc.md, "Nowcast").
        self.carry = carry
        self._nc: Model | None = None
        self._nc_key: tuple | None = None
        self.apv = np.array([z.area_per_visitor_m2 for z in site.zones])
        self._elements: dict[str, Element] = {z.id: Element(z.id, z.name, float(z.capacity), "zone") for z in site.zones}
        for z in site.zones:
            self._elements[f"local:{z.id}"] = Element(
                f"local:{z.id}", Text(zh=f"{z.name.zh}（局部密度）", en=f"{z.name.en} (local density)"), 0.0, "bottleneck")
        metered = {a.gate for m in site.measures for a in m.actions if isinstance(a, MeteringAction)}
        hold_zone = {h.gate: h.zone for h in site.holding_areas if h.queue == "arrivals"}
        self._holding: dict[str, int] = {}
        for s, g in enumerate(self.net.src_gate):
            if g and g in metered and self.net.src_hold[s] > 0:
                gate = site.gate_by_id[g]
                eid = f"hold:{g}"
                self._holding[eid] = s
                self._elements[eid] = Element(eid, Text(zh=f"{gate.name.zh}候行区", en=f"{gate.name.en} holding area"),
                                              float(self.net.src_hold[s] * HOLD_DENSITY), "holding",
                                              zone=hold_zone.get(g))

        net = self.net
        # every metered gate's queue: arrivals held at its sources, and people ready at the
        # place before its inbound ways (a metered bottleneck, e.g. the bridge walkway's entry)
        self._qgates = sorted(metered)
        self._qsrc = {g: [s for s, sg in enumerate(net.src_gate) if sg == g] for g in self._qgates}
        self._qport = {g: [k for k in range(net.P) if net.pgate[k] == g and net.pgdir[k] == "in"] for g in self._qgates}
        self._qkeys = [f"{kind}:{g}" for g in self._qgates for kind, idx in (("hold", self._qsrc[g]), ("port", self._qport[g]))
                       if idx]  # queue_now's keys, in its order
        self._entries = self._gated_entries(site)
        zi = {z: i for i, z in enumerate(net.zones)}
        self._wait_zones = [z.id for z in site.zones if z.id in zi]
        col = {z: j for j, z in enumerate(self._wait_zones)}
        pz = net.place_zone[net.pfrom]
        self._port_col = np.array([col.get(net.zones[k], -1) if k >= 0 else -1 for k in pz], int)
        sz = net.place_zone[net.src_place]
        self._src_col = np.array([col.get(net.zones[k], -1) if k >= 0 else -1 for k in sz], int)
        # the zone of each queue of Twin.queues: ports, held arrivals at sources, pens outside limited
        # exits (metro_inbound: the zone of the exit's port)
        self._queue_cols = (self._port_col, self._src_col, self._port_col[net.exit_port])
        for zid in self._wait_zones:
            z = site.zone_by_id[zid]
            self._elements[f"wait:{zid}"] = Element(
                f"wait:{zid}", Text(zh=f"{z.name.zh}（排队等候）", en=f"{z.name.en} (queue wait)"), 0.0, "queue")

    def _waits(self, m: Model) -> np.ndarray:
        """Longest queue wait (minutes) per zone of ``_wait_zones``."""
        out = np.zeros(len(self._wait_zones))
        for (q, rate), col in zip(m.twin.queues(m.state, m.ctl), self._queue_cols):
            w = np.where(q >= QUEUE_MIN, np.minimum(q / np.maximum(rate, 1e-3) / 60.0, 1e3), 0.0)
            ok = col >= 0
            np.maximum.at(out, col[ok], w[ok])
        return out

    def elements(self) -> Mapping[str, Element]:
        return self._elements

    # the demand the rollouts run at: the planner scales it by its online estimate (control/demand.py)
    @property
    def demand_scale(self) -> float:
        return float(self.sc.demand_scale)

    @demand_scale.setter
    def demand_scale(self, scale: float) -> None:
        self.sc = self.sc.model_copy(update={"demand_scale": float(scale)})

    def nominal_arrivals(self, tod0_s: float, tod1_s: float) -> float:
        """People the scenario's arrival curves bring between two times of day, at ×1."""
        ts = np.arange(tod0_s, tod1_s, 15.0)
        return float(sum(self.net.arrival_rate(t, 1.0).sum() for t in ts) * 15.0)

    def _loads(self, m: Model) -> np.ndarray:
        zone = m.density * self.apv
        local = m.peak_density_array() / LOCAL_TARGET
        held = m.queue
        hold = []
        for s in self._holding.values():
            q = float(held[s])
            rate_pm = float(m.ctl.src_rate[s]) * 60.0
            wait = q / rate_pm if 0 < rate_pm < np.inf else (0.0 if q < 1 or rate_pm == np.inf else 1e3)
            hold.append(max(q / (self.net.src_hold[s] * HOLD_DENSITY), min(wait, 1e3) / MAX_WAIT_MIN))
        return np.concatenate([zone, local, np.array(hold, dtype=float), self._waits(m) / MAX_WAIT_MIN])

    def _start(self, start: TwinStart, schedule: Schedule) -> tuple[Model, tuple]:
        """A model at the start with the schedule's first set in effect on the ground and its
        last ordered, each ordered measure acting from its first minute in the schedule; and the
        key of the measures in effect when the counts were placed (the start state is a function
        of it: the ground freed by a cut). The counts are placed on the ground as it is now: a
        cut in force whose officers are still on their way has not freed its carriageway yet."""
        m = Model(self.site, self.sc, seed=self.seed, tod_s=start.tod_s, network=self.net)
        sched = sorted(schedule, key=lambda x: x[0])
        now_set = list(sched[0][1]) if sched else []
        ordered = list(sched[-1][1]) if sched else []
        m.set_actions(now_set, in_effect=True)
        self._prior.place(m, dict(start.counts), self._nowcast(start, now_set) if self.carry else None)
        self._place_queues(m, start.queues)
        key0 = m.effective_key
        if ordered != now_set:
            placed = set(m.measures)
            m.set_actions(ordered)
            first: dict[str, float] = {}
            for t_min, acts in sched:
                for a in acts:
                    first.setdefault(Model.measure_key(a), t_min)
            for key, ms in m.measures.items():
                if key not in placed and key in first:
                    # on the ground at its minute in the schedule (staff travel and set-up as the
                    # optimiser counts them: ``Candidate.delay_min`` / ``in_effect_at``)
                    ms.staffed_at = start.tod_s + first[key] * 60.0 - ms.setup_s
            m.update_measures(0.0)
        return m, key0

    def _nowcast(self, start: TwinStart, now_set: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The make-up of each zone now, by the nowcast: the twin of the last start run on to
        this one under the measures then in force, then given this start's counts and queues
        (each zone's people scaled to its count, its shape kept). A first start, or one
        ``CARRY_MAX_S`` or more after the last (or before it), begins from the prior. Once per
        start: every rollout of a decision reads the same make-up. Returns the nowcast's (cell,
        act, rdy), to be read (``StartPrior.place`` does not write them)."""
        key = (start.tod_s, tuple(sorted(start.counts.items())), tuple(sorted(start.queues.items())))
        nc = self._nc
        if key != self._nc_key:
            counts = dict(start.counts)
            if nc is None or not (0.0 <= start.tod_s - nc.t < CARRY_MAX_S):
                nc = Model(self.site, self.sc, seed=self.seed + 1, tod_s=start.tod_s, network=self.net)
                nc.set_actions(now_set, in_effect=True)
                self._prior.place(nc, counts)
            else:
                nc.sc = self.sc  # the demand estimate of now
                nc.run_until(start.tod_s)
                nc.set_actions(now_set, in_effect=True)
                st = nc.state
                self._prior.place(nc, counts, (st.cell.copy(), st.act.copy(), st.rdy.copy()))
            self._place_queues(nc, start.queues)
            self._nc, self._nc_key = nc, key
        st = nc.state
        return st.cell, st.act, st.rdy

    def _gated_entries(self, site: Site) -> dict[str, int]:
        """Corridor zone → the port by which its one gate lets people in from the place at the
        corridor's end (a lane entry): where a measured inflow can be held."""
        net = self.net
        gates = {}
        for g in site.gates:
            for z in (g.inside_zone, g.outside_zone):
                if z is not None:
                    gates.setdefault(z, []).append(g)
        out = {}
        for z, gs in gates.items():
            if len(gs) != 1 or gs[0].inside_zone != z or z in net.pi or z not in net.zi:
                continue
            ks = [k for k in range(net.P) if net.pgate[k] == gs[0].id and net.pgdir[k] == "in" and net.pkind[k] == 0]
            if len(ks) == 1:
                out[z] = ks[0]
        return out

    def _inflow_floor(self, start: TwinStart) -> tuple[float, list[tuple[int, float]]]:
        """(until when, [(entry port, people a minute the gate counted in)]) for a start."""
        return (start.tod_s + INFLOW_HOLD_MIN * 60.0,
                [(k, float(start.flows[z][0])) for z, k in self._entries.items() if z in start.flows])

    def _hold_inflow(self, m: Model, floor: tuple[float, list[tuple[int, float]]]) -> None:
        """After a step within ``INFLOW_HOLD_MIN`` of the start: where the twin let fewer
        through a gated corridor entry than the gate measured (and its measures allow), move the
        difference from the place before it onto the corridor's first cell, as far as both have
        them and room. People are moved, not made: the zone counts stay what the cameras saw."""
        until, ports = floor
        if not ports or m.t > until:
            return
        st, net, ctl, dt = m.state, self.net, m.ctl, m.step_s
        for k, rate_pm in ports:
            if not ctl.port_open[k] or not ctl.lane_open[net.port_lane[k]]:  # a lane entry: its lane
                continue
            want = min(rate_pm / 60.0, float(ctl.port_rate[k])) * dt - float(st.last_port[k])
            if want <= 0.5:
                continue
            P, c = net.pfrom[k], net.pcell[k]
            room = max(0.0, m.twin.fd.rho_jam * net.clen[c] * net.cwidth[c] * 0.5 - float(st.cell[c].sum()))
            _cid, _frm, _to, first, last = net.lanes[net.clane[c]]
            mix = st.cell[c] if st.cell[c].sum() > 1e-9 else st.cell[first:last + 1].sum(0)
            have = float(st.act[P].sum())
            x = min(want, room, have)
            if x <= 0.5 or mix.sum() <= 1e-9:
                continue
            st.act[P] *= 1.0 - x / have
            st.cell[c] += x * mix / mix.sum()

    def _place_queues(self, m: Model, queues: Mapping[str, float]) -> None:
        """People already waiting behind each metered gate (``TwinStart.queues``). Without them
        the twin starts every queue empty — the prior spreads a zone's people as on an evening
        without measures — so releasing a metering never shows its queue discharging onto the
        ground beyond the gate (docs/mpc.md, "Release and flaps"). Held arrivals of a metered
        source wait at the source; at a metered bottleneck the queue is people of the place
        before it who are ready to take its way (moved from visiting to ready there: the zone's
        count is kept, and the queue is capped by who is there)."""
        st, net = m.state, self.net
        ported = False
        for g in self._qgates:
            q = float(queues.get(f"hold:{g}", 0.0))
            srcs = self._qsrc[g]
            if q > 0 and srcs:
                for s in srcs:
                    st.held[s] = q / len(srcs) * net.src_mix[s]
            q = float(queues.get(f"port:{g}", 0.0))
            if q <= 0 or not self._qport[g]:
                continue
            if not ported:
                m.twin.route(st, m.ctl)  # who takes which way from here (kept: the first step damps against it)
                ported = True
            for k in self._qport[g]:
                self._queue_at_port(m, k, q / len(self._qport[g]))

    def _queue_at_port(self, m: Model, k: int, q: float) -> None:
        """Make ``q`` people of the zone before port ``k`` its queue: ready at its place, of
        the classes that take it (in proportion to how many of the zone's people of each class
        would), taken evenly from the zone's other people — the zone's count is what the
        cameras saw and stays; a queue is capped at half the zone's people."""
        st, net = m.state, self.net
        P = net.pfrom[k]
        zi = self.net.place_zone[P]
        if zi < 0:
            return
        sp = st.split[k]
        short = q - float((st.rdy[P] * sp).sum())
        if short <= 0:
            return
        cells, places = net.czone == zi, net.place_zone == zi
        mix = st.cell[cells].sum(0) + st.act[places].sum(0) + st.rdy[places].sum(0)  # [K]
        total = float(mix.sum())
        w = mix * sp
        if w.sum() <= 0 or total <= 0:
            return
        add = short * (w / w.sum()) / np.maximum(sp, 1e-9)  # ready people per class giving ``short`` queued
        add = np.where(sp > 1e-9, add, 0.0)
        x = float(add.sum())
        if x > 0.5 * total:
            add *= 0.5 * total / x
            x = 0.5 * total
        f = 1.0 - x / total
        st.cell[cells] *= f
        st.act[places] *= f
        st.rdy[places] *= f
        st.rdy[P] += add

    @property
    def queue_keys(self) -> list[str]:
        """The queues a start can set (``TwinStart.queues``): ``hold:<gate>``, ``port:<gate>``."""
        return list(self._qkeys)

    def queue_now(self, m: Model) -> dict[str, float]:
        """People queued behind each metered gate: ``hold:<gate>`` arrivals held at its sources
        (not on any zone's ground), ``port:<gate>`` people ready at the place before its inbound
        ways (counted in that zone)."""
        st = m.state
        pq = m.twin.port_queue(st)
        held = st.held.sum(1)
        out = {}
        for g in self._qgates:
            if self._qsrc[g]:
                out[f"hold:{g}"] = float(held[self._qsrc[g]].sum())
            if self._qport[g]:
                out[f"port:{g}"] = float(pq[self._qport[g]].sum())
        return out

    def rollout(self, start: TwinStart, schedule: Schedule, minutes: float, every_min: float = 1.0) -> Rollout:
        return self.rollouts(start, [schedule], minutes, every_min)[0]

    def rollouts(self, start: TwinStart, schedules: Sequence[Schedule], minutes: float,
                 every_min: float = 1.0) -> list[Rollout]:
        """Several schedules from one start, stepped together. The physics depends on the
        measures only through those in effect on the ground (``Model.effective_key`` →
        ``Controls``), and every model draws the same random arrivals (one seed), so schedules
        whose effective measures agree share one state: it is stepped once and copied (its
        random stream forked at the same point) when their effective sets first differ — a new
        measure waits for its staff and set-up, so candidates share that prefix. Each
        schedule's staff and measure bookkeeping runs on its own. The result is identical to
        rolling each schedule alone."""
        floor = self._inflow_floor(start)
        surge = self._surge(start)
        models, shared = [], {}
        for sched in schedules:
            m, key0 = self._start(start, sched)
            if key0 in shared:
                m.state = shared[key0]  # the same start state (same counts, ground and seed)
            else:
                shared[key0] = m.state
            models.append(m)
        n = int(round(minutes / every_min))
        out = np.zeros((len(models), n + 1, len(self._elements)))
        qkeys = self._qkeys
        qout = np.zeros((len(models), n + 1, len(qkeys)))
        self._sample(models, out, 0, qout)
        for i in range(1, n + 1):
            until = start.tod_s + i * every_min * 60
            while models[0].t < until - 1e-9:
                self._step(models, floor, surge)
            self._sample(models, out, i, qout)
        ids = list(self._elements)
        return [Rollout(np.arange(n + 1) * every_min, {e: out[b, :, j] for j, e in enumerate(ids)},
                        turned_away=float(m.totals.gave_up), queues={g: qout[b, :, j] for j, g in enumerate(qkeys)})
                for b, m in enumerate(models)]

    @staticmethod
    def _groups(models: list[Model]) -> dict[tuple, list[int]]:
        """Models (by index) that share a state and have the same measures in effect."""
        groups: dict[tuple, list[int]] = {}
        for b, m in enumerate(models):
            groups.setdefault((id(m.state), m.effective_key), []).append(b)
        return groups

    def _surge(self, start: TwinStart) -> tuple[float, list[tuple[int, np.ndarray]]]:
        """(until when, [(source, people a minute by class)]) for a start's measured surge: the
        extra arrivals at a gate's held sources, split over them and their classes as the
        start's queues are (``_place_queues``)."""
        out = []
        for key, per_min in start.surge.items():
            srcs = self._qsrc.get(key.split(":", 1)[1], []) if key.startswith("hold:") else []
            for s in srcs:
                out.append((s, per_min / len(srcs) * self.net.src_mix[s]))
        return start.tod_s + SURGE_MIN * 60.0, out

    @staticmethod
    def _add_surge(m: Model, surge: tuple[float, list[tuple[int, np.ndarray]]]) -> None:
        """Before a step within ``SURGE_MIN`` of the start: the step's share of the surge joins
        its sources' held arrivals, which the step passes, holds or diverts (a metro station
        letting no one off rides them on) as the measures in force do its own arrivals."""
        until, srcs = surge
        if not srcs or m.t >= until:
            return
        held, f = m.state.held, m.step_s / 60.0
        for s, per_min in srcs:
            held[s] += per_min * f

    def _step(self, models: list[Model], floor: tuple[float, list[tuple[int, float]]] = (0.0, []),
              surge: tuple[float, list[tuple[int, np.ndarray]]] = (0.0, [])) -> None:
        """One step of every model: measures first (each its own), then the physics once per
        distinct state, a shared state forked where its models' effective measures part."""
        for m in models:
            m.update_measures(m.step_s)
        groups = self._groups(models)
        seen: set[int] = set()
        for members in groups.values():
            st = models[members[0]].state
            if id(st) in seen:  # the first part keeps the state, the others go on from a copy
                st = st.copy()
                for b in members:
                    models[b].state = st
            seen.add(id(st))
        for members in groups.values():
            m = models[members[0]]
            self._add_surge(m, surge)  # before the step: its sources pass, hold or divert them as arrivals
            m.twin.step(m.state, m.ctl)
            self._hold_inflow(m, floor)

    def _sample(self, models: list[Model], out: np.ndarray, i: int, qout: np.ndarray) -> None:
        for members in self._groups(models).values():
            m = models[members[0]]
            out[members, i] = self._loads(m)
            qout[members, i] = list(self.queue_now(m).values())
