"""The site twin on the real site: the network model (:mod:`sim.twin`) built from the site
and scenario files, the site's measures turned into physics with their staff and set-up
times, and the zone-level views the cameras, the evaluation and what-if read. Pure, no I/O.

Measures (the site's action records) take effect on the ground, not when ordered:

* each measure names the staff it needs at a post — a road cut: its closure points' officers;
  exit-only and metering: the gate's marshals; one-way: ``staff.one_way_staff`` at the post
  nearest the zone (:func:`crowdflow.site.measures.staff_needed`, the rule the engine and its
  dispatch count by); metro limiting: the metro operator's staff (none of ours);
* staff beyond a post's duty headcount (pre-positioned by a ``staffing`` action or left from an
  earlier measure) serve measures there at once; otherwise a team is sent from the reserve
  (``staff`` section): mobilise, walk base → post, stay at least ``min_block_min``;
* once staffed, a road cut closes the road to traffic (cutoff minutes start), and after the
  road's ``setup_min`` its pedestrian area joins the zones beside it; released, it stays cut
  for ``teardown_min``. Exit-only and metering take ``GATE_SETUP_S`` to set up.
* staff widen nothing: their effect is that measures happen (and when).
* a metro limit with ``divert`` (只上不下 / skip-stop: the passengers it does not let out ride on
  to a neighbouring station) holds nobody in the concourse: the twin carries them, by their
  class, to the walk-in source at ``divert.zone`` and lets them arrive ``extra_min`` later;
  it takes ``divert.setup_min`` (the metro operator) to start.
* a metro inbound limit (进站限流, ``metro_inbound``) lets at most ``per_min`` into the station by
  the exit; the queue stands in the gate's holding area for departures (a pen outside, own area,
  own density), not in the exit zone; the pen's marshals are the gate's.

``Model`` keeps the interface the runner, evaluation and what-if used before
(``step``, ``run_until``, ``set_actions``, ``zone_counts``, ``gate_flows``, ``totals`` …);
the predictive engine should use the twin directly: ``m.snapshot()`` and
``m.rollout(state, actions, minutes)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crowdflow.site import (
    ExitOnlyAction,
    MeteringAction,
    MetroInboundAction,
    MetroLimitAction,
    OneWayAction,
    Site,
    StaffingAction,
    TrafficCutoffAction,
)
from crowdflow.site.measures import staff_needed

from .scenario import Scenario
from .twin import (
    Chain,
    Connector,
    Controls,
    Corridor,
    Exit,
    Network,
    Params,
    Place,
    Segment,
    Source,
    Spec,
    State,
    Twin,
)

GATE_SETUP_S = 120.0  # barriers / queue lines at a gate [estimate]
METRO_SETUP_S = 120.0  # the metro operator's response to a limit request [estimate]
ONE_WAY_SETUP_S = 180.0  # signs and marshals for a one-way [estimate]


def build_spec(site: Site, sc: Scenario) -> Spec:
    """The network spec of the real site: places and corridors from the scenario, areas from
    the site file, holding areas from the site's ``holding_areas``."""
    zones = site.zone_by_id
    polys = site.zone_polygons_m
    places = [Place(zid, zones[zid].walkable_area_m2, ps.length_m or math.sqrt(polys[zid].area),
                    ps.dwell_min * 60.0, zid) for zid, ps in sc.places.items()]
    corridors = [Corridor(cid, c.a, c.b, [Segment(s.zone, s.length_m, s.width_m, s.speed_factor) for s in c.segments],
                          entry_cap_pps={end: e.capacity_pps for end, e in c.ends.items()}, gate=c.gate)
                 for cid, c in sc.corridors.items()]
    hold = {h.gate: h.area_m2 for h in site.holding_areas if h.queue == "arrivals"}
    connectors = [Connector(f"{ln.a}>{ln.b}", ln.a, ln.b, ln.capacity_pps, kind=ln.kind, width_m=ln.width_m,
                            cycle_s=ln.signal.cycle_s if ln.signal else 0.0, green_s=ln.signal.green_s if ln.signal else 0.0,
                            gate=ln.gate, approach_m2=hold.get(ln.gate, ln.approach_m2) if ln.gate else ln.approach_m2)
                  for ln in sc.links]
    pens = {site.gate_by_id[h.gate].inside_zone: h.area_m2 for h in site.holding_areas
            if h.queue == "departures" and h.gate in site.gate_by_id}
    exits = [Exit(eid, e.zone, e.capacity_pps, hold_m2=pens.get(e.zone, 0.0)) for eid, e in sc.exits.items()]
    sources = []
    for sid, s in sc.demand.items():
        ts, rs = s.curve()
        sources.append(Source(sid, s.zone, s.capacity_pps, ts, rs, dict(s.chains), gate=s.gate,
                              holding_m2=hold.get(s.gate, s.holding_m2) if s.gate else s.holding_m2))
    chains = [Chain(cid, list(c.stops)) for cid, c in sc.chains.items()]
    m = sc.model
    params = Params(dt=m.step_s, counterflow_factor=m.counterflow_factor, max_density=m.max_density,
                    patience_s=m.patience_min * 60, balk_w50_s=m.balk_w50_min * 60, balk_scale_s=m.balk_scale_min * 60,
                    balk_max_per_min=m.balk_max_per_min, route_every_s=m.route_every_s,
                    route_spread_s=m.route_spread_s, route_cutoff=m.route_cutoff, route_smoothing=m.route_smoothing)
    return Spec(places, corridors, connectors, exits, sources, chains, params)


def build_network(site: Site, sc: Scenario) -> Network:
    return Network(build_spec(site, sc))


@dataclass
class StepTotals:
    arrived: int = 0
    entered: int = 0
    exited: int = 0
    gave_up: int = 0


@dataclass
class Measure:
    action: object
    key: str
    post: str | None
    need: int
    setup_s: float
    requested_at: float
    staffed_at: float | None = None
    released_at: float | None = None
    teardown_s: float = 0.0

    def effective(self, t: float) -> bool:
        """In effect on the ground for pedestrians."""
        if self.staffed_at is None or t < self.staffed_at + self.setup_s:
            return False
        return self.released_at is None or t < self.released_at + self.teardown_s

    def holding(self, t: float) -> bool:
        """Holding staff (and, for a road, the road cut to traffic)."""
        if self.released_at is None:
            return True
        return self.staffed_at is not None and t < self.released_at + self.teardown_s


@dataclass
class Team:
    post: str
    size: int
    sent_at: float
    arrives_at: float
    travel_s: float
    leaving_at: float | None = None  # when it starts walking back


class StaffBoard:
    """Staff on duty at posts, teams sent from the reserve and back, and who serves which
    measure. Staff-hours of dispatched teams run from the order to their return."""

    def __init__(self, site: Site):
        self.site = site
        sp = site.staff
        self.duty = {p.id: p.headcount for p in site.posts}
        base = sp.base or site.site.center
        proj = site.projection
        b = proj.to_metric([base])[0]
        self.travel_s = {p.id: sp.mobilise_min * 60 + math.dist(b, proj.to_metric([p.position])[0]) / sp.speed_mps
                         for p in site.posts}
        self.pool = sp.pool
        self.min_block_s = sp.min_block_min * 60
        self.teams: list[Team] = []
        self.extra: dict[str, int] = {}  # rostered above the duty headcount (on duty, not sent)
        self.staff_seconds = 0.0  # dispatched teams, travel included
        self.dispatched = 0  # persons sent, ever

    def copy(self) -> "StaffBoard":
        out = StaffBoard.__new__(StaffBoard)
        out.__dict__.update(self.__dict__)
        out.teams = [Team(**t.__dict__) for t in self.teams]
        out.extra = dict(self.extra)
        return out

    def present(self, post: str, t: float) -> int:
        return self.duty.get(post, 0) + self.extra.get(post, 0) + sum(tm.size for tm in self.teams
                                            if tm.post == post and tm.arrives_at <= t and tm.leaving_at is None)

    def committed(self, post: str) -> int:
        """Duty plus teams there or on their way (not leaving)."""
        return self.duty.get(post, 0) + self.extra.get(post, 0) + sum(
            tm.size for tm in self.teams if tm.post == post and tm.leaving_at is None)

    def out(self) -> int:
        return sum(tm.size for tm in self.teams)

    def on_site(self, t: float) -> int:
        """Everyone on duty at the site now (roster + teams arrived and not gone)."""
        return sum(self.duty.values()) + sum(self.extra.values()) + sum(tm.size for tm in self.teams if tm.arrives_at <= t and tm.leaving_at is None)

    def update(self, t: float, dt: float, required: dict[str, int]) -> None:
        # teams back at base
        self.teams = [tm for tm in self.teams if tm.leaving_at is None or t < tm.leaving_at + tm.travel_s]
        for post, req in required.items():
            have = self.committed(post)
            if have < req:
                n = min(req - have, self.pool - self.out())
                if n > 0:
                    tr = self.travel_s.get(post, 600.0)
                    self.teams.append(Team(post, n, t, t + tr, tr))
                    self.dispatched += n
            elif have > req:
                surplus = have - req
                for tm in sorted((x for x in self.teams if x.post == post and x.leaving_at is None),
                                 key=lambda x: -x.sent_at):
                    if surplus <= 0:
                        break
                    if tm.size <= surplus and t - tm.sent_at >= self.min_block_s:
                        tm.leaving_at = t
                        surplus -= tm.size
        self.staff_seconds += self.out() * dt


class Model:
    """The twin of the site at one moment. ``step()`` advances it by the scenario's step."""

    def __init__(self, site: Site, scenario: Scenario, seed: int = 0, tod_s: float | None = None,
                 network: Network | None = None):
        self.site = site
        self.sc = scenario
        self.net = network or build_network(site, scenario)
        self.twin = Twin(self.net)
        self.state: State = self.twin.initial(seed=seed, t=scenario.start_s if tod_s is None else tod_s)
        self.staff_board = StaffBoard(site)
        self.measures: dict[str, Measure] = {}
        self.staffing: dict[str, int] = {}
        self.requested: list = []
        self.effective_key: tuple = ()  # ids of the measures in effect on the ground (the physics depends on these alone)
        self.ctl: Controls = self._controls(set())
        self.step_s = scenario.model.step_s
        self.max_density = scenario.model.max_density
        self.zones = [z.id for z in site.zones]
        self._zmap = np.array([self.net.zi.get(z, -1) for z in self.zones])
        self.zone_area = np.array([z.walkable_area_m2 for z in site.zones], float)
        self.capacity = np.array([z.capacity for z in site.zones], float)
        self.last_moved = np.zeros(self.net.P)
        self.last_entered = np.zeros(len(self.net.sources))
        self.cut_roads: set[str] = set()  # cut to traffic now (staffed, not yet reopened)
        self.roads_freed: set[str] = set()  # whose pedestrian area is in use now
        self._one_way_cache: dict = {}
        # exit → site zone index of the pen its queue stands in when limited (metro_inbound)
        zpos = {z: i for i, z in enumerate(self.zones)}
        self._pen_zone: dict[int, int] = {}
        for h in site.holding_areas:
            g = site.gate_by_id.get(h.gate)
            if h.queue == "departures" and g is not None:
                for e, pl in enumerate(self.net.exit_place):
                    if self.net.places[pl] == g.inside_zone and h.zone in zpos:
                        self._pen_zone[e] = zpos[h.zone]

    # ----------------------------------------------------------------------------- time

    @property
    def t(self) -> float:
        return self.state.t

    @property
    def totals(self) -> StepTotals:
        st = self.state
        return StepTotals(int(round(st.arrived)), int(round(float(st.src_in.sum()))), int(round(st.exited)),
                          int(round(st.gave_up)))

    @property
    def people(self) -> float:
        return self.state.people

    @property
    def actions(self) -> list:
        return list(self.requested)

    @property
    def staff(self) -> dict[str, int]:
        """Persons present at each post now."""
        return {p: self.staff_board.present(p, self.t) for p in self.staff_board.duty}

    # ----------------------------------------------------------------------------- measures

    @staticmethod
    def measure_key(a) -> str:
        """The key of the measure an action makes (``measures``, ``effective_key``)."""
        return a.model_dump_json()

    def _measure(self, a, t: float) -> Measure | None:
        key = self.measure_key(a)
        site = self.site
        if isinstance(a, TrafficCutoffAction):
            rd = site.road_by_id.get(a.road)
            if rd is None:
                return None
            posts: dict[str, int] = {}
            for cp in rd.closure_points:
                posts[cp.post] = posts.get(cp.post, 0) + cp.officers
            post = max(posts, key=posts.get) if posts else None
            return Measure(a, key, post, rd.officers, rd.setup_min * 60, t, teardown_s=rd.teardown_min * 60)
        if isinstance(a, (ExitOnlyAction, MeteringAction, MetroInboundAction)):
            g = site.gate_by_id.get(a.gate)
            if g is None:
                return None
            return Measure(a, key, g.post, g.staff if g.post else 0, GATE_SETUP_S, t)
        if isinstance(a, MetroLimitAction):
            setup = a.divert.setup_min * 60 if a.divert is not None else METRO_SETUP_S
            return Measure(a, key, None, 0, setup, t)
        if isinstance(a, OneWayAction):
            # marshals at the post nearest the zone, as the engine and its dispatch count them;
            # until 2026-12-04 the twin took the post the scenario maps to the zone, and a zone
            # without one (the west walkway's mid-span) went one-way at once with nobody
            # (docs/mpc.md, "The viewing span and the one-way's marshals")
            need = staff_needed(site, a)
            post = next(iter(need), None)
            return Measure(a, key, post, need.get(post, 0), ONE_WAY_SETUP_S, t)
        return None

    def set_actions(self, actions, in_effect: bool = False) -> None:
        """Make ``actions`` the ones ordered from now. Measures take effect once staffed and
        set up; released ones end (roads after their tear-down). ``in_effect``: they are
        already in force on the ground (a live state): staffed and set up, their teams there."""
        t = self.t
        self.requested = list(actions)
        wanted: dict[str, object] = {}
        self.staffing = {}
        for a in actions:
            if isinstance(a, StaffingAction):
                self.staffing[a.post] = max(self.staffing.get(a.post, 0), a.headcount)
            elif not isinstance(a, StaffingAction):
                m = self._measure(a, t)
                if m is not None:
                    wanted.setdefault(m.key, m)
        for key, m in list(self.measures.items()):
            if key in wanted:
                if m.released_at is not None:  # ordered again during tear-down
                    m.released_at = None
            elif m.released_at is None:
                m.released_at = t
                if m.staffed_at is None:
                    del self.measures[key]  # never started: nothing to tear down
        for key, m in wanted.items():
            if key not in self.measures:
                if in_effect:
                    m.staffed_at = t - m.setup_s
                    m.requested_at = t - m.setup_s
                self.measures[key] = m
        if in_effect:
            board = self.staff_board
            needs: dict[str, int] = {}
            for m in self.measures.values():
                if m.post:
                    needs[m.post] = needs.get(m.post, 0) + m.need
            for post in board.duty:
                want = max(self.staffing.get(post, 0), board.duty[post] + needs.get(post, 0)) - board.committed(post)
                if want > 0:
                    board.teams.append(Team(post, want, t - board.min_block_s, t, board.travel_s.get(post, 0.0)))
        self.update_measures(0.0)

    def update_measures(self, dt: float) -> None:
        """Staff and measures moved on by ``dt``: released ones leave, staffed ones take effect
        (``effective_key``, ``ctl``). :meth:`step` does this before the physics."""
        t = self.t
        for key in [k for k, m in self.measures.items() if m.released_at is not None and not m.holding(t)]:
            del self.measures[key]
        board = self.staff_board
        needs: dict[str, int] = {}
        for m in self.measures.values():
            if m.post and m.holding(t):
                needs[m.post] = needs.get(m.post, 0) + m.need
        required = {}
        for p in board.duty:
            required[p] = max(self.staffing.get(p, 0), board.duty[p] + needs.get(p, 0))
        board.update(t, dt, required)
        # serve measures in order of request from the staff present beyond duty
        spare = {p: board.present(p, t) - board.duty[p] for p in board.duty}
        for m in sorted(self.measures.values(), key=lambda m: m.requested_at):
            if not m.holding(t):
                continue
            if m.post is None or m.need == 0:
                if m.staffed_at is None:
                    m.staffed_at = t
                continue
            if spare.get(m.post, 0) >= m.need:
                spare[m.post] -= m.need
                if m.staffed_at is None:
                    m.staffed_at = t
        eff = tuple(sorted(k for k, m in self.measures.items() if m.effective(t)))
        self.cut_roads = {m.action.road for m in self.measures.values()
                          if isinstance(m.action, TrafficCutoffAction) and m.staffed_at is not None
                          and m.staffed_at <= t and m.holding(t)}
        if eff != self.effective_key:
            self.effective_key = eff
            self.ctl = self._controls(set(eff))

    def effective_actions(self) -> list:
        """The measures in effect on the ground now."""
        return [self.measures[k].action for k in self.effective_key if k in self.measures]

    def _controls(self, keys: set[str]) -> Controls:
        net, tw, sc, site = self.net, self.twin, self.sc, self.site
        ctl = tw.controls()
        ctl.demand_scale = sc.demand_scale
        acts = [self.measures[k].action for k in keys if k in getattr(self, "measures", {})]
        roads = {a.road for a in acts if isinstance(a, TrafficCutoffAction)}
        self.roads_freed = roads
        freed = site.freed_area(roads)
        for zid, m2 in freed.items():
            if zid in net.pi:
                ctl.place_area_add[net.pi[zid]] += m2
            elif zid in net.zi:
                cells = np.flatnonzero(net.czone == net.zi[zid])
                if len(cells):
                    # both lanes share the ground: widen every cell of the zone by area ÷ length
                    length = net.clen[cells].sum() / 2
                    ctl.cell_width_add[cells] += m2 / length
        for rid in roads:
            rs = sc.roads.get(rid)
            if rs is None:
                continue
            for key, w in rs.widen_m.items():
                a, _, b = key.partition(">")
                for name in (f"{a}>{b}", f"{b}>{a}"):
                    k = net.pidx.get(name)
                    if k is not None and net.pwidth[k] > 0:
                        ctl.port_cap_mult[k] *= (net.pwidth[k] + w) / net.pwidth[k]
            for key in rs.unsignal:
                a, _, b = key.partition(">")
                for name in (f"{a}>{b}", f"{b}>{a}"):
                    if name in net.pidx:
                        ctl.signal_on[net.pidx[name]] = False
        for a in acts:
            if isinstance(a, (ExitOnlyAction, MeteringAction, MetroLimitAction)):
                rate = 0.0 if isinstance(a, ExitOnlyAction) else (a.per_min if isinstance(a, MeteringAction) else a.max_per_min) / 60.0
                for k in range(net.P):
                    if net.pgate[k] == a.gate and net.pgdir[k] == "in":
                        if isinstance(a, ExitOnlyAction):
                            ctl.port_open[k] = False
                        elif isinstance(a, MeteringAction):
                            ctl.port_rate[k] = min(ctl.port_rate[k], rate)
                for s, g in enumerate(net.src_gate):
                    if g == a.gate:
                        ctl.src_rate[s] = min(ctl.src_rate[s], rate)
                        if isinstance(a, MetroLimitAction) and a.divert is not None:
                            ctl.src_divert[s] = self._walk_in_source(a.divert.zone)
                            ctl.src_divert_delay_s[s] = a.divert.extra_min * 60
            elif isinstance(a, MetroInboundAction):
                g = site.gate_by_id.get(a.gate)
                for e, pl in enumerate(net.exit_place):
                    if g is not None and net.places[pl] == g.inside_zone:
                        ctl.exit_rate[e] = min(ctl.exit_rate[e], a.per_min / 60.0)
            elif isinstance(a, OneWayAction):
                self._one_way(ctl, a.zone, a.toward)
        return ctl

    def _walk_in_source(self, zone: str) -> int:
        """The source by which people on foot reach ``zone`` (no gate): where passengers a metro
        diversion sends on come back."""
        net = self.net
        for s, g in enumerate(net.src_gate):
            if g is None and net.places[net.src_place[s]] == zone:
                return s
        raise ValueError(f"a metro diversion names zone {zone!r}, but the scenario has no arrivals on foot "
                         f"there (demand.*.zone {zone!r} without a gate)")

    def _hops(self, toward: str) -> np.ndarray:
        """Hops from each place to the zone ``toward`` (a place or a corridor's zone)."""
        net = self.net
        if toward in self._one_way_cache:
            return self._one_way_cache[toward]
        start = set()
        if toward in net.pi:
            start.add(net.pi[toward])
        else:
            for li, (cid, frm, to, first, last) in enumerate(net.lanes):
                if (net.czone[first:last + 1] == net.zi.get(toward, -2)).any():
                    start |= {net.pi[frm], net.pi[to]}
        hops = np.full(net.N, 1 << 20)
        for s in start:
            hops[s] = 0
        frontier = list(start)
        while frontier:
            nxt = []
            for u in frontier:
                for k in np.flatnonzero((net.phead == u)):
                    v = net.pfrom[k]
                    if hops[v] > hops[u] + 1:
                        hops[v] = hops[u] + 1
                        nxt.append(v)
            frontier = nxt
        self._one_way_cache[toward] = hops
        return hops

    def _one_way(self, ctl: Controls, zone: str, toward: str) -> None:
        net = self.net
        hops = self._hops(toward)
        if zone in net.pi:
            z = net.pi[zone]
            for k in range(net.P):
                if net.pfrom[k] == z and net.phead[k] < net.N and hops[net.phead[k]] >= hops[z]:
                    ctl.port_open[k] = False  # leave only toward `toward`
                if net.phead[k] == z and hops[net.pfrom[k]] < hops[z]:
                    ctl.port_open[k] = False  # nobody walks in against the flow
            for li, (cid, frm, to, first, last) in enumerate(net.lanes):
                if net.pi[to] == z and hops[net.pi[frm]] < hops[z]:
                    ctl.lane_open[li] = False
        elif zone in net.zi:
            for li, (cid, frm, to, first, last) in enumerate(net.lanes):
                if (net.czone[first:last + 1] == net.zi[zone]).any() and hops[net.pi[to]] > hops[net.pi[frm]]:
                    ctl.lane_open[li] = False  # the lane walking away from `toward`

    # ----------------------------------------------------------------------------- dynamics

    def step(self) -> StepTotals:
        st = self.state
        a0, e0, x0, g0 = st.arrived, float(st.src_in.sum()), st.exited, st.gave_up
        self.update_measures(self.step_s)
        self.twin.step(st, self.ctl)
        self.last_moved = st.last_port
        self.last_entered = st.last_src
        return StepTotals(int(round(st.arrived - a0)), int(round(float(st.src_in.sum()) - e0)),
                          int(round(st.exited - x0)), int(round(st.gave_up - g0)))

    def run_until(self, tod_s: float) -> None:
        while self.t < tod_s - 1e-9:
            self.step()

    # -- the predictive engine's API

    def snapshot(self) -> "Model":
        """An independent copy (state, measures, staff); cheap (arrays copied)."""
        out = Model.__new__(Model)
        out.__dict__.update(self.__dict__)
        out.state = self.state.copy()
        out.staff_board = self.staff_board.copy()
        out.measures = {k: Measure(**m.__dict__) for k, m in self.measures.items()}
        out.staffing = dict(self.staffing)
        out.requested = list(self.requested)
        out.ctl = self.ctl.copy()
        out.cut_roads = set(self.cut_roads)
        return out

    def rollout(self, actions=None, minutes: float = 30.0) -> list[dict]:
        """Advance this model ``minutes`` (ordering ``actions`` first if given); one row per
        minute: time, zone counts, peak local density per zone."""
        if actions is not None:
            self.set_actions(actions)
        rows = []
        per_min = max(1, int(round(60 / self.step_s)))
        for i in range(int(round(minutes * 60 / self.step_s))):
            self.step()
            if (i + 1) % per_min == 0:
                rows.append({"t": self.t, "counts": self.zone_counts(), "peak_density": self.zone_peak_density()})
        return rows

    # ----------------------------------------------------------------------------- views

    def _zone_array(self, arr: np.ndarray) -> np.ndarray:
        return np.where(self._zmap >= 0, arr[np.maximum(self._zmap, 0)], 0.0)

    @property
    def n(self) -> np.ndarray:
        """People per site zone (site zone order)."""
        return self._zone_array(self.twin.zone_counts(self.state))

    @property
    def area(self) -> np.ndarray:
        """Each zone's walkable area now (freed road area included)."""
        extra = self.site.freed_area(self.roads_freed)
        return self.zone_area + np.array([extra.get(z, 0.0) for z in self.zones])

    @property
    def density(self) -> np.ndarray:
        """Mean density per zone (people ÷ walkable area incl. freed road area)."""
        return self.n / self.area

    def zone_counts(self) -> dict[str, float]:
        """People on each zone's own walkable ground (what its cameras see): density × the
        zone's own area; people spread onto a cut road beside it are not in the zone."""
        d = self.density
        return {z: float(d[i] * self.zone_area[i]) for i, z in enumerate(self.zones)}

    def zone_peak_density(self) -> dict[str, float]:
        """Highest local density in each zone: cells, places, queues at bottlenecks and the
        holding areas of held sources."""
        arr = self.peak_density_array()
        return {z: float(arr[i]) for i, z in enumerate(self.zones)}

    def peak_density_array(self) -> np.ndarray:
        """:meth:`zone_peak_density` as an array in site zone order."""
        pk = self.twin.zone_peak_density(self.state, self.ctl)
        net = self.net
        held = self.state.held.sum(1)
        for s in range(len(net.sources)):
            if net.src_hold[s] > 0 and held[s] > 0:
                z = net.place_zone[net.src_place[s]]
                if z >= 0:
                    pk[z] = max(pk[z], held[s] / net.src_hold[s])
        out = self._zone_array(pk)
        xq = self.state.xq
        if xq is not None:  # the pens outside limited exits (their own zone in the site file)
            for e, zi in self._pen_zone.items():
                if xq[e] > 0:
                    out[zi] = max(out[zi], xq[e] / net.exit_hold[e])
        return out

    def set_counts(self, counts: dict[str, float]) -> None:
        """Start from measured zone counts: people placed at places (at their stop there, see
        :meth:`_typical_class`) and spread over corridor cells (leaving by the nearest exit)."""
        st, net = self.state, self.net
        st.cell[:] = 0
        st.act[:] = 0
        st.rdy[:] = 0
        area_scale = self.area / self.zone_area
        for z, c in counts.items():
            if z not in net.zi:
                continue
            n = c * area_scale[self.zones.index(z)]
            k = self._typical_class(z)
            if z in net.pi:
                st.act[net.pi[z], k] += n
            else:
                cells = np.flatnonzero(net.czone == net.zi[z])
                w = net.carea[cells] / net.carea[cells].sum()
                st.cell[cells, k] += n * w

    def _typical_class(self, zone: str) -> int:
        """The class of a visitor found in ``zone``: at that stop of the first chain that has
        it (so they finish their visit there and go on), else leaving by the nearest exit."""
        net = self.net
        for cid in net.chains:
            stops = self.sc.chains[cid].stops
            if zone in stops[:-1]:
                return net.chain_first[cid] + stops.index(zone)
        return 0

    @property
    def queue(self) -> np.ndarray:
        """People held at each source (its holding area)."""
        return self.state.held.sum(1)

    def arrival_rate(self, t: float) -> np.ndarray:
        return self.net.arrival_rate(t, self.sc.demand_scale)

    def gate_flows(self, moved: np.ndarray, entered: np.ndarray) -> dict[str, tuple[int, int]]:
        """(inflow, outflow) per gate for persons through each port / in from each source."""
        net = self.net
        out: dict[str, list[float]] = {}
        for k in range(net.P):
            g = net.pgate[k]
            if g:
                io = out.setdefault(g, [0.0, 0.0])
                io[0 if net.pgdir[k] == "in" else 1] += float(moved[k])
        for s, g in enumerate(net.src_gate):
            if g:
                io = out.setdefault(g, [0.0, 0.0])
                io[0] += float(entered[s])
                for k in np.flatnonzero((net.pkind == 2) & (net.pfrom == net.src_place[s])):
                    io[1] += float(moved[k])
        return {g: (int(round(a)), int(round(b))) for g, (a, b) in out.items()}
