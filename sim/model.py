"""The pedestrian model: a macroscopic cell-transmission network of the site. Pure, no I/O.

* **Cells** are the site's zones, each with its walkable area (plus the road area a traffic
  cutoff hands it). People are whole persons (integers), so conservation is exact:
  arrivals − departures = Δ(people in cells + people held at sources), step by step.
* **Links** join cells with a clear width. In one step the flow from cell *i* to cell *j* is
  the least of what wants to go (people ready to move on ÷ the ways open, by the scenario's
  weights), what *i* can send through the width (Weidmann's specific flow ρ·v(ρ) below the
  critical density, the maximum flow above it) and what *j* can take (the maximum flow while
  *j* is below critical density, then its specific flow, which collapses toward the jam
  density, and never beyond ``max_density``). Counter-flow on one link shares its width and loses
  ``counterflow_factor``.
* **Readiness to move**: a person spends the cell's dwell time plus its length ÷ Weidmann
  speed, so crowded cells also empty more slowly.
* **Demand**: arrivals are Poisson draws from each source's curve; a source held back (metro
  limit, exit-only) keeps people waiting, who give up after ``patience_min`` on average.
* **Actions** (the site's action records) change the network; see :meth:`Model.set_actions`.

Randomness (arrivals, rounding of flows to persons) comes from one seeded generator, so a
seed gives the same evening every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crowdflow import crowd
from crowdflow.site import (
    ExitOnlyAction,
    MeteringAction,
    MetroLimitAction,
    OneWayAction,
    Site,
    StaffingAction,
    TrafficCutoffAction,
)

from .scenario import Scenario

RHO_CRITICAL = 1.75  # p/m², where Weidmann's specific flow peaks (brief)
Q_MAX = max(crowd.specific_flow(r / 100.0) for r in range(1, 540))  # p/s/m, ≈1.22
MIN_SPEED = 0.05  # m/s: walking time is bounded even in a jam


def speeds(rho: np.ndarray) -> np.ndarray:
    return np.array([crowd.weidmann_speed(float(r)) for r in rho])


def sending(rho: np.ndarray) -> np.ndarray:
    """What a cell at density ρ can push through one metre of width (p/s/m): its specific
    flow below critical density, the maximum flow above it (the queue discharges at
    capacity when there is room downstream)."""
    return np.array([crowd.specific_flow(float(r)) if r <= RHO_CRITICAL else Q_MAX for r in rho])


def receiving(rho: np.ndarray) -> np.ndarray:
    """What a cell at density ρ can take through one metre of width (p/s/m): the maximum
    flow below critical density, the (falling) specific flow above it."""
    return np.array([Q_MAX if r <= RHO_CRITICAL else crowd.specific_flow(float(r)) for r in rho])


@dataclass
class Edge:
    src: int  # cell index
    dst: int  # cell index, or -1 for an exit
    width_m: float
    name: str  # "a>b"
    gate: str | None = None
    gate_dir: str | None = None  # "in" / "out" across the gate
    reverse: int = -1  # index of the opposite edge, -1 for exits


@dataclass
class StepTotals:
    arrived: int = 0
    entered: int = 0  # from source queues into cells
    exited: int = 0  # left through an exit (served)
    gave_up: int = 0  # waited at a held source and left


@dataclass
class Network:
    """The static part, built once from the site and the scenario."""

    zones: list[str]
    area: np.ndarray
    length: np.ndarray
    dwell_s: np.ndarray
    capacity: np.ndarray
    edges: list[Edge]
    weights: np.ndarray  # per edge
    sources: list[str]
    source_cell: np.ndarray
    source_gate: list[str | None]
    source_curves: list[tuple[list[float], list[float]]]
    source_width: np.ndarray
    exit_of_edge: list[str | None]
    index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, site: Site, sc: Scenario) -> "Network":
        zones = [z.id for z in site.zones]
        index = {z: i for i, z in enumerate(zones)}
        area = np.array([z.walkable_area_m2 for z in site.zones], dtype=float)
        polys = site.zone_polygons_m
        length = np.array(
            [sc.zones[z].length_m or math.sqrt(polys[z].area) for z in zones], dtype=float
        )
        dwell = np.array([sc.zones[z].dwell_min * 60.0 for z in zones])
        capacity = np.array([z.capacity for z in site.zones], dtype=float)
        gates = {g.id: g for g in site.gates}
        edges: list[Edge] = []
        exit_of_edge: list[str | None] = []
        for ln in sc.links:
            i, j = index[ln.a], index[ln.b]
            g = gates.get(ln.gate) if ln.gate else None
            for s, d, na, nb in ((i, j, ln.a, ln.b), (j, i, ln.b, ln.a)):
                gd = None
                if g is not None:
                    gd = "in" if (na == g.outside_zone and nb == g.inside_zone) else "out"
                edges.append(Edge(s, d, ln.width_m, f"{na}>{nb}", ln.gate, gd))
                exit_of_edge.append(None)
            edges[-1].reverse, edges[-2].reverse = len(edges) - 2, len(edges) - 1
        for name, ex in sc.exits.items():
            for zid in ex.zones:
                edges.append(Edge(index[zid], -1, ex.width_m, f"{zid}>{name}"))
                exit_of_edge.append(name)
        weights = np.zeros(len(edges))
        for k, e in enumerate(edges):
            src = zones[e.src]
            way = exit_of_edge[k] or zones[e.dst]
            weights[k] = sc.zones[src].next.get(way, 0.0)
        sources = list(sc.demand)
        src_specs = [sc.demand[s] for s in sources]
        return cls(
            zones=zones, area=area, length=length, dwell_s=dwell, capacity=capacity, edges=edges,
            weights=weights, sources=sources,
            source_cell=np.array([index[s.zone] for s in src_specs], dtype=int),
            source_gate=[s.gate for s in src_specs],
            source_curves=[(ts, [r * sc.demand_scale for r in rs]) for ts, rs in (s.curve() for s in src_specs)],
            source_width=np.array([s.width_m for s in src_specs]), exit_of_edge=exit_of_edge, index=index,
        )


class Model:
    """The simulated site at one moment. ``step()`` advances it by ``scenario.model.step_s``."""

    def __init__(self, site: Site, scenario: Scenario, seed: int = 0, tod_s: float | None = None,
                 network: Network | None = None):
        self.site = site
        self.sc = scenario
        self.p = scenario.model
        self.net = network or Network.build(site, scenario)
        # Separate streams: demand is the same evening whatever the actions do to the flows.
        self.rng = np.random.default_rng([seed, 0])
        self.rng_demand = np.random.default_rng([seed, 1])
        self.t = scenario.start_s if tod_s is None else tod_s
        n_cells, n_edges = len(self.net.zones), len(self.net.edges)
        self.n = np.zeros(n_cells, dtype=np.int64)
        self.queue = np.zeros(len(self.net.sources), dtype=np.int64)
        self.totals = StepTotals()
        self.edge_flow_total = np.zeros(n_edges, dtype=np.int64)  # persons moved per edge, ever
        self.exits_total: dict[str, int] = {}
        self.normal_headcount = {p.id: p.headcount for p in site.posts}
        self.clearing: set[str] = set()  # released cutoffs whose road is still full of people
        self.set_actions([])

    # ----------------------------------------------------------------------------- actions

    def set_actions(self, actions) -> None:
        """Make ``actions`` the ones in force (see :meth:`_apply`). A released road cutoff
        stays in force while the road is still full of people: it reopens to traffic only
        once everyone on it fits the zones' own ground at ``reopen_density``."""
        wanted = {a.road for a in actions if isinstance(a, TrafficCutoffAction)}
        for road in getattr(self, "cut_roads", set()) - wanted:
            if not self._road_clear(road):
                self.clearing.add(road)
        self.clearing -= wanted
        self.requested = list(actions)
        self._apply()

    def _road_clear(self, road: str) -> bool:
        rd = next(r for r in self.site.roads if r.id == road)
        pa = rd.pedestrian_area_m2
        for zid, share in rd.frees.items():
            i = self.net.index[zid]
            if self.n[i] > self.p.reopen_density * (self.area[i] - share * pa):
                return False
        return True

    def _apply(self) -> None:
        """Make ``actions`` (the site's action records, e.g. PlanState.active_actions) the
        ones in force, replacing any before:

        * ``traffic_cutoff``: the road's pedestrian area joins the zones beside it, links
          along it widen (site ``roads[].frees``, scenario ``roads``);
        * ``one_way`` (zone → toward): people in the zone leave only toward ``toward``, and
          nobody enters it from there; the link carries one direction at full width;
        * ``exit_only`` (gate): nobody crosses the gate inward; a source behind the gate
          (metro exit) holds its arrivals;
        * ``metro_limit`` (gate, max/min): arrivals through the gate are metered;
        * ``metering`` (gate, max/min): arrivals through a source's gate are metered (they wait
          in the holding area behind it: the source queue); on a link's gate the inward
          width is narrowed to pass at most the rate (the held wait in the outside zone);
        * ``staffing`` (post, headcount): each officer above the normal headcount shortens
          stops and adds orderly flow out of the post's zone (bounded);
        * ``broadcast``: no modelled effect.
        """
        net, sc = self.net, self.sc
        self.actions = self.requested + [TrafficCutoffAction(type="traffic_cutoff", road=r) for r in sorted(self.clearing)]
        extra_area = np.zeros(len(net.zones))
        widen = np.zeros(len(net.edges))
        open_ = np.ones(len(net.edges), dtype=bool)
        one_way = np.zeros(len(net.edges), dtype=bool)
        limit = np.full(len(net.sources), np.inf)  # persons/s
        meter_w = np.full(len(net.edges), np.inf)  # metered links: width passing the rate at most
        staff: dict[str, int] = dict(self.normal_headcount)
        roads = {r.id: r for r in self.site.roads}
        by_name = {e.name: k for k, e in enumerate(net.edges)}
        self.cut_roads: set[str] = set()
        for a in self.actions:
            if isinstance(a, TrafficCutoffAction):
                if a.road in self.cut_roads:
                    continue
                self.cut_roads.add(a.road)
                rs = sc.roads.get(a.road)
                if rs is None:
                    continue
                for key, w in rs.widen_m.items():
                    a_, _, b_ = key.partition(">")
                    for name in (f"{a_}>{b_}", f"{b_}>{a_}"):
                        widen[by_name[name]] += w
            elif isinstance(a, OneWayAction):
                z = net.index[a.zone]
                ahead = self._ahead(z, net.index[a.toward])
                for k, e in enumerate(net.edges):
                    if e.src == z and e.dst >= 0:
                        if e.dst in ahead:
                            one_way[k] = True
                        else:
                            open_[k] = False  # leave only toward `toward`
                    if e.dst == z and e.src in ahead:
                        open_[k] = False  # nobody walks in against the flow
            elif isinstance(a, ExitOnlyAction):
                for k, e in enumerate(net.edges):
                    if e.gate == a.gate and e.gate_dir == "in":
                        open_[k] = False
                for s, g in enumerate(net.source_gate):
                    if g == a.gate:
                        limit[s] = 0.0
            elif isinstance(a, MetroLimitAction):
                for s, g in enumerate(net.source_gate):
                    if g == a.gate:
                        limit[s] = min(limit[s], a.max_per_min / 60.0)
            elif isinstance(a, MeteringAction):
                for s, g in enumerate(net.source_gate):
                    if g == a.gate:
                        limit[s] = min(limit[s], a.max_per_min / 60.0)
                for k, e in enumerate(net.edges):
                    if e.gate == a.gate and e.gate_dir == "in":
                        meter_w[k] = min(meter_w[k], a.max_per_min / 60.0 / Q_MAX)
            elif isinstance(a, StaffingAction):
                staff[a.post] = max(staff.get(a.post, 0), a.headcount)
        dwell_mult = np.ones(len(net.zones))
        flow_mult = np.ones(len(net.zones))
        for post, zid in sc.posts.items():
            more = max(0, staff.get(post, 0) - self.normal_headcount.get(post, 0))
            i = net.index[zid]
            dwell_mult[i] *= 1.0 - min(self.p.staff_dwell_cut * more, self.p.staff_dwell_cut_max)
            flow_mult[i] *= 1.0 + min(self.p.staff_flow_gain * more, self.p.staff_flow_gain_max)
        for zid, m2 in self.site.freed_area(self.cut_roads).items():
            extra_area[net.index[zid]] += m2
        self.extra_area = extra_area
        self.width = np.minimum(np.array([e.width_m for e in net.edges]) + widen, meter_w)
        self.open = open_
        self.one_way = one_way
        self.limit = limit
        self.staff = staff
        self.dwell_mult = dwell_mult
        self.flow_mult = flow_mult

    def _ahead(self, z: int, toward: int) -> set[int]:
        """The neighbours of cell ``z`` on a shortest walk to cell ``toward``."""
        nb: dict[int, set[int]] = {}
        for e in self.net.edges:
            if e.dst >= 0:
                nb.setdefault(e.src, set()).add(e.dst)
        hops = {toward: 0}
        frontier = [toward]
        while frontier:
            nxt = []
            for c in frontier:
                for d in nb.get(c, ()):
                    if d not in hops:
                        hops[d] = hops[c] + 1
                        nxt.append(d)
            frontier = nxt
        if z == toward or z not in hops:
            return set()
        return {d for d in nb.get(z, ()) if hops.get(d, 1 << 30) < hops[z]}

    # ----------------------------------------------------------------------------- state

    @property
    def area(self) -> np.ndarray:
        return self.net.area + self.extra_area

    @property
    def density(self) -> np.ndarray:
        """Persons per m² of each cell's walkable ground (road area included when cut off)."""
        return self.n / self.area

    def zone_counts(self) -> dict[str, float]:
        """People on each zone's own walkable ground (what its cameras see): the cell's
        density × the zone's area; people on a cut-off road beside it are not in the zone."""
        d = self.density
        return {z: float(d[i] * self.net.area[i]) for i, z in enumerate(self.net.zones)}

    def set_counts(self, counts: dict[str, float]) -> None:
        """Start from measured zone counts (people on each zone's own ground)."""
        for z, c in counts.items():
            i = self.net.index[z]
            self.n[i] = int(round(c * self.area[i] / self.net.area[i]))

    @property
    def people(self) -> int:
        """Everyone the model holds: in cells and waiting at sources."""
        return int(self.n.sum() + self.queue.sum())

    def arrival_rate(self, t: float) -> np.ndarray:
        """Persons per second per source at time of day ``t``."""
        out = np.zeros(len(self.net.sources))
        for s, (ts, rates) in enumerate(self.net.source_curves):
            if ts[0] <= t <= ts[-1]:
                out[s] = float(np.interp(t, ts, rates))
        return out

    def _round(self, x: np.ndarray) -> np.ndarray:
        """Unbiased stochastic rounding to whole persons."""
        x = np.maximum(x, 0.0)
        fl = np.floor(x)
        return (fl + (self.rng.random(x.shape) < (x - fl))).astype(np.int64)

    # ----------------------------------------------------------------------------- dynamics

    def step(self) -> StepTotals:
        """Advance one step. Returns what crossed the model's boundary in it."""
        net, p = self.net, self.p
        if self.clearing:
            done = {r for r in self.clearing if self._road_clear(r)}
            if done:
                self.clearing -= done
                self._apply()
        dt = p.step_s
        area = self.area
        rho = self.n / area
        v = np.maximum(speeds(rho), MIN_SPEED)
        ready = self.n / (net.dwell_s * self.dwell_mult + net.length / v)  # persons/s
        src = np.array([e.src for e in net.edges])
        dst = np.array([e.dst for e in net.edges])
        w = net.weights * self.open
        wsum = np.bincount(src, weights=w, minlength=len(net.zones))
        share = np.divide(w, wsum[src], out=np.zeros_like(w), where=wsum[src] > 0)
        want = ready[src] * share * dt
        # Counter-flow: two directions on one link share its width and lose some capacity.
        width = self.width * self.flow_mult[src]
        rev = np.array([e.reverse for e in net.edges])
        has_rev = rev >= 0
        other = np.where(has_rev, want[np.maximum(rev, 0)], 0.0)
        both = has_rev & (want > 0) & (other > 0) & ~self.one_way
        frac = np.divide(want, want + other, out=np.ones_like(want), where=both)
        width = np.where(both, width * frac * p.counterflow_factor, width)
        send = width * sending(rho)[src] * dt
        rho_dst = np.where(dst >= 0, rho[np.maximum(dst, 0)], 0.0)
        recv = width * receiving(rho_dst) * dt
        flow = np.minimum(want, np.minimum(send, recv))
        # Never more into a cell than its free space up to max_density.
        space = np.maximum(0.0, p.max_density * area - self.n)
        into = np.bincount(np.maximum(dst, 0), weights=np.where(dst >= 0, flow, 0.0), minlength=len(net.zones))
        scale = np.divide(space, into, out=np.ones_like(space), where=into > space)
        flow = np.where(dst >= 0, flow * np.minimum(1.0, scale[np.maximum(dst, 0)]), flow)
        moved = self._round(flow)
        # Whole persons: never more out of a cell than are in it, never past max_density.
        for i in range(len(net.zones)):
            out_i = moved[src == i]
            excess = int(out_i.sum() - self.n[i])
            if excess > 0:
                self._trim(moved, np.flatnonzero(src == i), excess)
        n_after_out = self.n - np.bincount(src, weights=moved, minlength=len(net.zones)).astype(np.int64)
        cap = np.floor(p.max_density * area).astype(np.int64)
        for j in range(len(net.zones)):
            into_j = int(moved[dst == j].sum())
            excess = int(self.n[j] + into_j - cap[j])  # space is judged before this step's outflow
            if excess > 0:
                self._trim(moved, np.flatnonzero(dst == j), min(excess, into_j))
        out_by = np.bincount(src, weights=moved, minlength=len(net.zones)).astype(np.int64)
        in_by = np.bincount(np.maximum(dst, 0), weights=np.where(dst >= 0, moved, 0),
                            minlength=len(net.zones)).astype(np.int64)
        exited = int(moved[dst < 0].sum())
        self.n = self.n - out_by + in_by
        del n_after_out
        self.edge_flow_total += moved
        for k in np.flatnonzero((dst < 0) & (moved > 0)):
            name = net.exit_of_edge[k]
            self.exits_total[name] = self.exits_total.get(name, 0) + int(moved[k])

        # Sources: Poisson arrivals join the queue; the queue enters as far as the gate, its
        # limit and the cell allow; some of those kept waiting give up.
        arrived = self.rng_demand.poisson(self.arrival_rate(self.t) * dt).astype(np.int64)
        self.queue += arrived
        cells = net.source_cell
        rho = self.n / area
        entry = np.minimum(net.source_width * receiving(rho[cells]) * dt, self.limit * dt)
        enter = np.minimum(self.queue, self._round(entry))
        for j in np.unique(cells):
            idx = np.flatnonzero(cells == j)
            free = int(max(0, np.floor(p.max_density * area[j]) - self.n[j]))
            excess = int(enter[idx].sum()) - free
            if excess > 0:
                self._trim(enter, idx, excess)
        self.queue -= enter
        np.add.at(self.n, cells, enter)
        held = self.limit < np.inf
        gave_up = np.zeros_like(self.queue)
        if held.any():
            prob = 1.0 - math.exp(-dt / (p.patience_min * 60.0))
            gave_up[held] = self.rng.binomial(self.queue[held], prob)
        self.queue -= gave_up
        self.t += dt
        st = StepTotals(int(arrived.sum()), int(enter.sum()), exited, int(gave_up.sum()))
        self.last_moved = moved
        self.last_entered = enter
        tot = self.totals
        tot.arrived += st.arrived
        tot.entered += st.entered
        tot.exited += st.exited
        tot.gave_up += st.gave_up
        return st

    @staticmethod
    def _trim(arr: np.ndarray, idx: np.ndarray, excess: int) -> None:
        """Take ``excess`` persons off ``arr[idx]``, largest first (deterministic)."""
        for k in sorted(idx, key=lambda k: (-arr[k], k)):
            if excess <= 0:
                break
            take = min(int(arr[k]), excess)
            arr[k] -= take
            excess -= take

    def run_until(self, tod_s: float) -> None:
        while self.t < tod_s - 1e-9:
            self.step()

    # ----------------------------------------------------------------------------- gate flows

    def gate_flows(self, moved: np.ndarray, entered: np.ndarray) -> dict[str, tuple[int, int]]:
        """(inflow, outflow) per gate for the persons moved per edge / entered per source."""
        out: dict[str, list[int]] = {}
        for k, e in enumerate(self.net.edges):
            if e.gate:
                io = out.setdefault(e.gate, [0, 0])
                io[0 if e.gate_dir == "in" else 1] += int(moved[k])
        for s, g in enumerate(self.net.source_gate):
            if g:
                io = out.setdefault(g, [0, 0])
                io[0] += int(entered[s])
        for k, e in enumerate(self.net.edges):  # people leaving into the metro through its gate
            name = self.net.exit_of_edge[k]
            if name is not None:
                for s, g in enumerate(self.net.source_gate):
                    if g and self.net.source_cell[s] == e.src:
                        out.setdefault(g, [0, 0])[1] += int(moved[k])
        return {g: (a, b) for g, (a, b) in out.items()}
