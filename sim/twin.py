"""The site twin's core: a vectorised pedestrian network model (cell transmission on corridors,
places with activities, bottlenecks, routing, reactive demand). Pure numpy, no I/O, no site.

API (small and stable; the predictive-control engine rolls it forward many times a cycle)::

    net = Network(spec)                    # static: built once (sim.model.build_spec makes the
                                           # spec of the real site from the scenario file)
    twin = Twin(net, fd=FD.weidmann())     # the physics; holds no state
    st = twin.initial(seed=0, t=17*3600)   # a State: plain numpy arrays, cheap to copy
    ctl = twin.controls()                  # Controls: what is open, metered, cut (arrays)
    st2 = st.copy()                        # snapshot: ~50 µs
    trace = twin.rollout(st2, ctl, minutes=30, demand=True)  # advances st2 in place
    trace.zone_density, trace.times ...    # per-step zone/bottleneck series (see Trace)
    twin.step(st, ctl)                     # one step of ``dt`` seconds, in place

* **Corridors** (bridge walkways, long sidewalks) are chains of cells per direction, each cell
  no shorter than one free-flow step (L_c ≥ v_free·f·dt), so a person needs ≈L/v to cross an
  empty corridor and a queue spills back cell by cell. Flow between cells is Godunov's
  demand/supply rule on the fundamental diagram :class:`FD` (data; Weidmann 1993 by default):
  f = min(D(ρ_up)·W, S(ρ_down)·W). Opposing directions share the width in proportion to their
  occupancy and lose ``counterflow_factor`` only while both directions carry people (in full
  from one person each way, pro rata below, so a closed lane's draining remnant costs nothing).
* **Places** (plazas, floors of the complex, platforms, metro exits) are stores with an area.
  A person there is either doing an activity (its stop, mean ``dwell_s``), crossing (rate
  v(ρ)/L) or queued at the place's exit toward its next hop.
* **Ports** are the ways out of a place: into a corridor, through a connector to another place
  (doors, stairs, lifts, escalators, a signalised crossing: each a bottleneck with its own
  capacity in p/s, optionally a signal cycle) or out of the model (an exit). A port passes
  min(queue, capacity·dt·open, metering rate·dt, what the receiver can take).
* **People have destinations**: arrivals by source draw an activity chain (stops, then an exit).
  Each class is (chain, stage); at every place it splits over the ways out that bring it
  closer to its target by a logit on current travel times (crowding and queue waits included,
  closed ports excluded), re-evaluated every ``route_every_s`` and damped (:meth:`Twin.split`).
  A stop that cannot be reached is skipped (diverted); an exit that cannot be reached is
  replaced by the nearest open one. An area behind gated entrances (the complex) is not
  re-entered by a class whose chain already had a stop inside (``Network.no_reentry``).
* **Reactive demand** (documented curves, see docs/twin.md): people queued toward an optional
  stop whose wait W exceeds a few minutes balk at hazard h(W) = h_max / (1 + exp(−(W − W50)/s))
  per minute and skip the stop; arrivals held at a closed or metered source wait in its holding
  area and give up with a constant hazard 1/patience (exponential patience).
* **Diversion**: a source can send the arrivals its rate holds back on to another source
  (``Controls.src_divert``: a metro station where passengers may not alight rides them on to
  the next one); they travel ``src_divert_delay_s`` in ``State.transit`` and join the receiving
  source's arrivals then, in their own class.
* **Conservation** is exact bookkeeping: every flow is taken from one array and added to
  another; arrived = in model + held + in transit + exited + gave_up to float precision (tests: < 1e-6).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from crowdflow import crowd

INF = 1e18


# ----------------------------------------------------------------------------- fundamental diagram


@dataclass(frozen=True)
class FD:
    """A fundamental diagram as data: speed (m/s) sampled at densities (p/m²), linear between
    samples, 0 at and beyond ``rho_jam``. Flow q = ρ·v(ρ); the critical density is where q peaks."""

    rho: tuple[float, ...]
    v: tuple[float, ...]
    name: str = "custom"

    @classmethod
    def weidmann(cls, n: int = 541) -> "FD":
        rho = np.linspace(0.0, crowd.RHO_JAM, n)
        return cls(tuple(rho), tuple(crowd.weidmann_speed(float(r)) for r in rho), "Weidmann (1993)")

    def __post_init__(self):
        r = np.asarray(self.rho, float)
        v = np.asarray(self.v, float)
        object.__setattr__(self, "_r", r)
        object.__setattr__(self, "_v", v)
        q = r * v
        k = int(np.argmax(q))
        object.__setattr__(self, "rho_c", float(r[k]))
        object.__setattr__(self, "q_max", float(q[k]))
        object.__setattr__(self, "rho_jam", float(r[-1]))
        object.__setattr__(self, "v_free", float(v[0]))

    def speed(self, rho):
        return np.interp(rho, self._r, self._v, right=0.0)

    def flow(self, rho):
        return np.asarray(rho) * self.speed(rho)

    def demand(self, rho):
        """What one metre of width at density ρ can send (p/(m·s)): q(ρ) below ρ_c, q_max above."""
        return np.where(rho <= self.rho_c, self.flow(rho), self.q_max)

    def supply(self, rho):
        """What one metre of width at density ρ can take (p/(m·s)): q_max below ρ_c, q(ρ) above."""
        return np.where(rho <= self.rho_c, self.q_max, self.flow(np.minimum(rho, self.rho_jam)))


# ----------------------------------------------------------------------------- network spec


@dataclass
class Place:
    id: str
    area_m2: float
    length_m: float  # walking distance across
    dwell_s: float = 0.0  # mean activity time when it is a stop
    zone: str | None = None  # the site zone it is (None: not counted in any zone)


@dataclass
class Segment:
    zone: str | None
    length_m: float
    width_m: float
    speed_factor: float = 1.0  # < 1 where people stroll and stop (viewing spans)


@dataclass
class Corridor:
    id: str
    a: str  # place at the start
    b: str  # place at the end
    segments: list[Segment]
    entry_cap_pps: dict[str, float] = field(default_factory=dict)  # "a"/"b" → bottleneck at that end (p/s)
    gate: str | None = None  # site gate at the a end (a = outside)


@dataclass
class Connector:
    """A short way between two places with its own capacity (door, stairs, lift, escalator,
    crossing). ``cap_pps`` per direction; a signal lets it pass only ``green_s`` of ``cycle_s``."""

    id: str
    a: str
    b: str
    cap_pps: float
    kind: str = "door"
    width_m: float = 0.0
    cycle_s: float = 0.0
    green_s: float = 0.0
    gate: str | None = None  # site gate on it (a = outside, b = inside)
    approach_m2: float = 0.0  # ground where its queue stands (for local density)


@dataclass
class Exit:
    id: str
    place: str
    cap_pps: float
    hold_m2: float = 0.0  # a pen outside it where people queue when its rate is limited (Controls.exit_rate)


@dataclass
class Source:
    id: str
    place: str
    cap_pps: float  # what its stairs/escalators/gates can pass into the place
    times_s: list[float]
    rates_pps: list[float]
    chains: dict[str, float]  # chain id → share
    gate: str | None = None
    holding_m2: float = 0.0  # where held arrivals wait


@dataclass
class Chain:
    id: str
    stops: list[str]  # place ids, the last one an exit id
    optional: list[bool] | None = None  # per stop: may be skipped when the queue is long


@dataclass
class Params:
    dt: float = 5.0
    counterflow_factor: float = 0.85
    share_min: float = 0.15
    counterflow_people: float = 1.0  # an opposing stream counts in full from this many people on it
    max_density: float = 5.0  # a place takes no more
    patience_s: float = 1200.0
    balk_w50_s: float = 900.0  # wait at which half the maximum balking hazard applies
    balk_scale_s: float = 180.0
    balk_max_per_min: float = 0.10
    route_every_s: float = 60.0
    crowd_weight: float = 1.0  # weight on the crowding (speed) part of route costs
    # Route choice (docs/twin.md, "Route choice"): at each place a class splits over the ways
    # out that bring it strictly closer to its target, by a logit on the current travel time
    # (walking at the crowd's speed + queue waits): share ∝ exp(−(c − c_min)/route_spread_s).
    # Ways more than route_cutoff × spread slower get nothing. Each re-evaluation moves the
    # split ``route_smoothing`` of the way to the new logit (damping, as in the method of
    # successive averages); closed or unreachable ways drop to zero at once.
    route_spread_s: float = 60.0
    route_cutoff: float = 5.0
    route_smoothing: float = 0.5
    # Arrivals diverted from a source (a metro station's alighting passengers riding on to the
    # next station, Controls.src_divert) reach their new way in after a delay of at most this.
    max_transit_s: float = 3600.0


@dataclass
class Spec:
    places: list[Place]
    corridors: list[Corridor]
    connectors: list[Connector]
    exits: list[Exit]
    sources: list[Source]
    chains: list[Chain]
    params: Params = field(default_factory=Params)


# ----------------------------------------------------------------------------- compiled network


class Network:
    """The spec compiled into index arrays. Build once; share between twins and threads."""

    def __init__(self, spec: Spec, fd: FD | None = None):
        self.spec = spec
        self.fd = fd or FD.weidmann()
        p = spec.params
        dt = p.dt
        self.places = [x.id for x in spec.places]
        self.pi = {x: i for i, x in enumerate(self.places)}
        N = len(self.places)
        self.area = np.array([x.area_m2 for x in spec.places], float)
        self.plen = np.array([x.length_m for x in spec.places], float)
        self.dwell = np.array([max(x.dwell_s, dt) for x in spec.places], float)
        self.exits = [e.id for e in spec.exits]
        self.ei = {x: i for i, x in enumerate(self.exits)}
        zones: list[str] = []
        for x in spec.places:
            if x.zone and x.zone not in zones:
                zones.append(x.zone)
        for c in spec.corridors:
            for s in c.segments:
                if s.zone and s.zone not in zones:
                    zones.append(s.zone)
        self.zones = zones
        self.zi = {z: i for i, z in enumerate(zones)}
        self.place_zone = np.array([self.zi.get(x.zone, -1) if x.zone else -1 for x in spec.places])

        # corridor cells: one lane per direction
        cl, cw, cz, csf, down, rev, lane_of = [], [], [], [], [], [], []
        self.lanes = []  # (corridor id, from place, to place, first cell, last cell)
        for c in spec.corridors:
            cells = []
            for s in c.segments:
                v = self.fd.v_free * s.speed_factor
                n = max(1, int(math.floor(s.length_m / (v * dt) + 1e-9)))
                cells += [(s.length_m / n, s.width_m, self.zi.get(s.zone, -1) if s.zone else -1, s.speed_factor)] * n
            for d, (frm, to, order) in enumerate(((c.a, c.b, cells), (c.b, c.a, cells[::-1]))):
                first = len(cl)
                for k, (L, W, z, f) in enumerate(order):
                    cl.append(L); cw.append(W); cz.append(z); csf.append(f)
                    down.append(len(cl) if k < len(order) - 1 else -1)
                    lane_of.append(len(self.lanes))
                self.lanes.append((c.id, frm, to, first, len(cl) - 1))
            # reverse cell: the same piece of ground in the other lane
            n = len(cells)
            f0, f1 = self.lanes[-2][3], self.lanes[-1][3]
            rev += [f1 + n - 1 - k for k in range(n)] + [f0 + n - 1 - k for k in range(n)]
        self.clen = np.array(cl, float)
        self.cwidth = np.array(cw, float)
        self.czone = np.array(cz, int)
        self.csf = np.array(csf, float)
        self.cdown = np.array(down, int)
        self.crev = np.array(rev, int)
        self.clane = np.array(lane_of, int)
        self.carea = self.clen * self.cwidth
        C = len(cl)
        self.n_cells = C
        last = np.array([ln[4] for ln in self.lanes], int)
        self.lane_last = last
        self.lane_rev = np.arange(len(self.lanes)) ^ 1  # lanes come in pairs per corridor
        self.lane_to = np.array([self.pi[ln[2]] for ln in self.lanes], int)
        self.cell_is_last = self.cdown < 0
        self.cell_to_place = np.full(C, -1)
        self.cell_to_place[last] = self.lane_to

        # ports: ways out of a place (into a lane, through a connector, out by an exit)
        pf, pkind, phead, pcap, pcell, pname, pgate, pgdir, pcyc, pgreen, pappr, pwidth = ([] for _ in range(12))
        for li, (cid, frm, to, first, lastc) in enumerate(self.lanes):
            cor = next(c for c in spec.corridors if c.id == cid)
            end = "a" if frm == cor.a else "b"
            pf.append(self.pi[frm]); pkind.append(0); phead.append(self.pi[to]); pcell.append(first)
            pcap.append(cor.entry_cap_pps.get(end, INF)); pname.append(f"{frm}>{to}")
            pgate.append(cor.gate); pgdir.append("in" if end == "a" else "out")
            pcyc.append(0.0); pgreen.append(0.0); pappr.append(0.0); pwidth.append(cw[first])
        for cn in spec.connectors:
            for frm, to, gd in ((cn.a, cn.b, "in"), (cn.b, cn.a, "out")):
                pf.append(self.pi[frm]); pkind.append(1); phead.append(self.pi[to]); pcell.append(-1)
                pcap.append(cn.cap_pps); pname.append(f"{frm}>{to}"); pgate.append(cn.gate); pgdir.append(gd)
                pcyc.append(cn.cycle_s); pgreen.append(cn.green_s); pappr.append(cn.approach_m2); pwidth.append(cn.width_m)
        for ex in spec.exits:
            pf.append(self.pi[ex.place]); pkind.append(2); phead.append(N + self.ei[ex.id]); pcell.append(-1)
            pcap.append(ex.cap_pps); pname.append(f"{ex.place}>{ex.id}"); pgate.append(None); pgdir.append("out")
            pcyc.append(0.0); pgreen.append(0.0); pappr.append(0.0); pwidth.append(0.0)
        self.pfrom = np.array(pf, int)
        self.pkind = np.array(pkind, int)
        self.phead = np.array(phead, int)  # place index, or N + exit index
        self.pcap = np.array(pcap, float)
        self.pcell = np.array(pcell, int)
        self.pname = pname
        self.pidx = {n: k for k, n in enumerate(pname)}
        self.pgate = pgate
        self.pgdir = pgdir
        self.pcycle = np.array(pcyc, float)
        self.pgreen = np.array(pgreen, float)
        self.papproach = np.array(pappr, float)
        self.pwidth = np.array(pwidth, float)
        self.P = len(pf)
        self.port_lane = np.full(self.P, len(self.lanes))  # ports that are no lane: one past the end
        self.port_lane[: len(self.lanes)] = np.arange(len(self.lanes))

        # classes: (chain, stage); stage target is a place or an exit (N + e). Class 0 leaves by
        # the nearest open exit.
        self.chains = [c.id for c in spec.chains]
        tgt, nxt, opt, chain_of = [-1], [0], [False], [-1]  # class 0: LEAVE
        self.chain_first: dict[str, int] = {}
        for ci, ch in enumerate(spec.chains):
            self.chain_first[ch.id] = len(tgt)
            for s, stop in enumerate(ch.stops):
                t = self.pi[stop] if stop in self.pi else N + self.ei[stop]
                tgt.append(t)
                nxt.append(len(tgt) if s < len(ch.stops) - 1 else 0)
                o = ch.optional[s] if ch.optional else (s < len(ch.stops) - 1)
                opt.append(bool(o) and t < N)
                chain_of.append(ci)
        self.ctarget = np.array(tgt, int)
        self.cnext = np.array(nxt, int)
        self.coptional = np.array(opt, bool)
        self.K = len(tgt)
        self.N = N
        # at place i, class k is at its stop (activity) when target == i
        self.at_stop = self.ctarget[None, :] == np.arange(N)[:, None]
        self.targets = np.unique(np.concatenate([self.ctarget[1:], N + np.arange(len(self.exits))]))

        self.sources = [s.id for s in spec.sources]
        S = len(self.sources)
        self.src_place = np.array([self.pi[s.place] for s in spec.sources], int)
        self.src_cap = np.array([s.cap_pps for s in spec.sources], float)
        self.src_gate = [s.gate for s in spec.sources]
        self.src_hold = np.array([s.holding_m2 for s in spec.sources], float)
        self.src_curves = [(np.array(s.times_s, float), np.array(s.rates_pps, float)) for s in spec.sources]
        mix = np.zeros((S, self.K))
        for si, s in enumerate(spec.sources):
            tot = sum(s.chains.values())
            for cid, w in s.chains.items():
                mix[si, self.chain_first[cid]] += w / tot
        self.src_mix = mix
        self.exit_place = np.array([self.pi[e.place] for e in spec.exits], int)
        self.exit_hold = np.array([e.hold_m2 for e in spec.exits], float)
        # one-hot matrices: scatter-adds as matrix products (much faster than np.add.at)
        self.LT = np.zeros((N, len(self.lanes)))
        self.LT[self.lane_to, np.arange(len(self.lanes))] = 1.0
        self.NXT = np.zeros((self.K, self.K))
        self.NXT[np.arange(self.K), self.cnext] = 1.0
        self.SP = np.zeros((N, S))
        self.SP[self.src_place, np.arange(S)] = 1.0
        self.PF = np.zeros((N, self.P))  # place a port leaves
        self.PF[self.pfrom, np.arange(self.P)] = 1.0
        k1 = np.flatnonzero(self.pkind == 1)
        self.PH1 = np.zeros((N, self.P))  # place a connector leads into
        self.PH1[self.phead[k1], k1] = 1.0
        self.k0 = np.flatnonzero(self.pkind == 0)
        self.k2 = np.flatnonzero(self.pkind == 2)
        self.exit_port = np.zeros(len(self.exits), int)  # the port by which each exit is left
        self.exit_port[self.phead[self.k2] - N] = self.k2
        # class k's target column in the distance table (class 0: any exit, filled in route())
        self.ex_nodes = N + np.arange(len(self.exits))
        # no re-entry: a gated entrance that encloses an area (the complex behind its 11F and 1F
        # doors: the places reachable from the inside without passing a gate, the outside not
        # among them) is closed to the classes whose chain already had a stop inside. They
        # visited it once; they leave it behind rather than walk through it again.
        self.no_reentry = self._no_reentry(spec)
        # the distinct no-re-entry patterns (ports closed) and the classes that have each
        self.reentry_groups = [(pat, np.flatnonzero((self.no_reentry == pat[:, None]).all(0)))
                               for pat in np.unique(self.no_reentry[:, self.no_reentry.any(0)], axis=1).T]
        # ports grouped by the place they leave (for the shortest-path minimum over ways out)
        self.pf_order = np.argsort(self.pfrom, kind="stable")
        self.pf_nodes, self.pf_starts = np.unique(self.pfrom[self.pf_order], return_index=True)
        self.pf_head = self.phead[self.pf_order]

    def _no_reentry(self, spec: Spec) -> np.ndarray:
        N = self.N
        adj: list[set[int]] = [set() for _ in range(N)]
        for k in range(self.P):
            if self.pgate[k] is None and self.pkind[k] != 2:
                adj[self.pfrom[k]].add(int(self.phead[k]))
        ban = np.zeros((self.P, self.K), bool)
        for k in range(self.P):
            if self.pgate[k] is None or self.pgdir[k] != "in" or self.pkind[k] == 2:
                continue
            inside, todo = {int(self.phead[k])}, [int(self.phead[k])]
            while todo:
                for v in adj[todo.pop()]:
                    if v not in inside:
                        inside.add(v)
                        todo.append(v)
            if int(self.pfrom[k]) in inside:
                continue  # not an enclosure (a gate on one of parallel ways)
            for ch in spec.chains:
                k0 = self.chain_first[ch.id]
                for s in range(1, len(ch.stops)):
                    if any(self.pi.get(x, -1) in inside for x in ch.stops[:s]):
                        ban[k, k0 + s] = True
        return ban

    # -- helpers

    def zone_of_places(self) -> np.ndarray:
        return self.place_zone

    def arrival_rate(self, t: float, scale: float = 1.0) -> np.ndarray:
        out = np.zeros(len(self.sources))
        for s, (ts, rs) in enumerate(self.src_curves):
            if ts[0] <= t <= ts[-1]:
                out[s] = float(np.interp(t, ts, rs)) * scale
        return out


# ----------------------------------------------------------------------------- state and controls


@dataclass
class State:
    t: float
    cell: np.ndarray  # [C, K] people in corridor cells
    act: np.ndarray  # [N, K] people at a place, in their activity or crossing
    rdy: np.ndarray  # [N, K] people queued at a place's way out toward their next hop
    held: np.ndarray  # [S, K] arrivals waiting at a source (holding area)
    rng: np.random.Generator
    arrived: float = 0.0
    exited: float = 0.0
    gave_up: float = 0.0
    balked: float = 0.0
    diverted: float = 0.0
    exits: np.ndarray | None = None  # [E] persons out by each exit
    port_flow: np.ndarray | None = None  # [P] persons through each port, since start
    src_in: np.ndarray | None = None  # [S] persons in from each source, since start
    visits: np.ndarray | None = None  # [Z] zone entries (people entering a zone), since start
    split: np.ndarray | None = None  # [P, K] share of class k at the port's place taking it (routing)
    next_route: float = -INF
    wait_sum: float = 0.0  # person-seconds queued at ports and held at sources
    last_port: np.ndarray | None = None  # [P] persons through each port in the last step
    last_src: np.ndarray | None = None
    # arrivals diverted to another way in, on their way there: [slot, receiving source, class],
    # slot = (step index of arrival) mod slots; None until the first diversion
    transit: np.ndarray | None = None
    rerouted: float = 0.0  # persons diverted from their source to another (Controls.src_divert)
    transit_wait_s: float = 0.0  # person-seconds of extra travel those diversions cost
    transit_delay_s: float = 0.0  # the delay of the latest diversion (what a person now in transit loses)
    xq: np.ndarray | None = None  # [E] people queued in the pen outside an exit (Controls.exit_rate); None: never

    def copy(self) -> "State":
        """A snapshot: arrays copied, the random stream forked so both go on independently."""
        kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items() if k != "rng"}
        return State(rng=copy.deepcopy(self.rng), **kw)  # same random stream: paired rollouts

    @property
    def people(self) -> float:
        """Everyone in the model: in cells, at places, held at sources and diverted on their way
        to another way in."""
        return float(self.cell.sum() + self.act.sum() + self.rdy.sum() + self.held.sum() + self.in_transit
                     + (self.xq.sum() if self.xq is not None else 0.0))

    @property
    def in_transit(self) -> float:
        return float(self.transit.sum()) if self.transit is not None else 0.0


@dataclass
class Controls:
    """What the measures in force do to the network (arrays; see sim.model.Model for the
    mapping from the site's action records)."""

    port_open: np.ndarray  # [P] bool
    port_rate: np.ndarray  # [P] p/s metering (inf: none)
    port_cap_mult: np.ndarray  # [P] (road cut widens a crossing, …)
    signal_on: np.ndarray  # [P] bool: signal cycle applies (road open)
    lane_open: np.ndarray  # [lanes] bool (one-way closes the other lane's entry)
    cell_width_add: np.ndarray  # [C] m
    place_area_add: np.ndarray  # [N] m²
    src_rate: np.ndarray  # [S] p/s (inf: none; 0: closed)
    # [S] receiving source of a diversion (-1: none): arrivals the source's rate holds back do
    # not wait in its holding area; they go on (e.g. ride to the next metro station) and reach
    # the receiving source src_divert_delay_s later (walk back included)
    src_divert: np.ndarray | None = None
    src_divert_delay_s: np.ndarray | None = None
    # [E] p/s an exit lets out when limited (inf: no limit): its queue stands in the exit's pen
    # outside the place (Exit.hold_m2), not in the place (a metro station's inbound limit)
    exit_rate: np.ndarray | None = None
    demand_scale: float = 1.0

    def copy(self) -> "Controls":
        return Controls(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})

    def key(self) -> bytes:
        return b"".join(np.ascontiguousarray(v).tobytes() for v in self.__dict__.values() if isinstance(v, np.ndarray))


@dataclass
class Trace:
    """Per-step series of a rollout."""

    times: list[float]
    zone_count: list[np.ndarray]  # [Z] people per zone
    zone_peak_density: list[np.ndarray]  # [Z] highest local density in the zone (cells, queues)
    port_queue: list[np.ndarray]  # [P] people queued at each port
    exited: float = 0.0


# ----------------------------------------------------------------------------- the physics


class Twin:
    def __init__(self, net: Network):
        self.net = net
        self.fd = net.fd
        self.p = net.spec.params

    def controls(self) -> Controls:
        n = self.net
        return Controls(
            port_open=np.ones(n.P, bool), port_rate=np.full(n.P, np.inf), port_cap_mult=np.ones(n.P),
            signal_on=n.pcycle > 0, lane_open=np.ones(len(n.lanes), bool), cell_width_add=np.zeros(n.n_cells),
            place_area_add=np.zeros(n.N), src_rate=np.full(len(n.sources), np.inf),
            src_divert=np.full(len(n.sources), -1, int), src_divert_delay_s=np.zeros(len(n.sources)),
            exit_rate=np.full(len(n.exits), np.inf))

    def initial(self, seed: int = 0, t: float = 0.0) -> State:
        n = self.net
        return State(t=t, cell=np.zeros((n.n_cells, n.K)), act=np.zeros((n.N, n.K)), rdy=np.zeros((n.N, n.K)),
                     held=np.zeros((len(n.sources), n.K)), rng=np.random.default_rng(seed),
                     exits=np.zeros(len(n.exits)), port_flow=np.zeros(n.P), src_in=np.zeros(len(n.sources)),
                     visits=np.zeros(len(n.zones)), last_port=np.zeros(n.P), last_src=np.zeros(len(n.sources)))

    # -- measurements

    def place_density(self, st: State, ctl: Controls) -> np.ndarray:
        return (st.act.sum(1) + st.rdy.sum(1)) / (self.net.area + ctl.place_area_add)

    def cell_density(self, st: State, ctl: Controls) -> np.ndarray:
        n = self.net
        tot = st.cell.sum(1)
        return (tot + tot[n.crev]) / (n.clen * (n.cwidth + ctl.cell_width_add))

    def port_queue(self, st: State) -> np.ndarray:
        n = self.net
        if st.split is None:
            return np.zeros(n.P)
        return (st.rdy[n.pfrom] * st.split).sum(1)

    def queues(self, st: State, ctl: Controls) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Every queue with the rate it is served at (people, p/s), for Little's-law waits: the
        ports' (metering, signals' green share, a closed way serves nothing), arrivals held at
        the sources, and the pens outside limited exits — the yardstick's waits and the planning
        twin's ``wait:`` elements read the same queues."""
        n = self.net
        rate = np.minimum(n.pcap * ctl.port_cap_mult, ctl.port_rate)
        green = np.where(ctl.signal_on & (n.pcycle > 0), n.pgreen / np.maximum(n.pcycle, 1e-9), 1.0)
        ports = (self.port_queue(st), np.where(ctl.port_open, rate * green, 0.0))
        sources = (st.held.sum(1), np.minimum(n.src_cap, ctl.src_rate))
        xq = st.xq if st.xq is not None else np.zeros(len(n.exits))
        xr = n.pcap[n.exit_port] if ctl.exit_rate is None else np.minimum(n.pcap[n.exit_port], ctl.exit_rate)
        return ports, sources, (xq, xr)

    def zone_counts(self, st: State) -> np.ndarray:
        n = self.net
        z = np.zeros(len(n.zones))
        pz = n.place_zone
        m = pz >= 0
        z += np.bincount(pz[m], (st.act.sum(1) + st.rdy.sum(1))[m], minlength=len(z))
        cz = n.czone
        mc = cz >= 0
        z += np.bincount(cz[mc], st.cell.sum(1)[mc], minlength=len(z))
        return z

    def zone_peak_density(self, st: State, ctl: Controls) -> np.ndarray:
        """Highest local density per zone: each corridor cell, each place, and each bottleneck's
        queue on its approach ground."""
        n = self.net
        out = np.zeros(len(n.zones))
        pd = self.place_density(st, ctl)
        m = n.place_zone >= 0
        np.maximum.at(out, n.place_zone[m], pd[m])
        cd = self.cell_density(st, ctl)
        mc = n.czone >= 0
        np.maximum.at(out, n.czone[mc], cd[mc])
        appr = n.papproach > 0
        if appr.any():
            q = self.port_queue(st)
            qd = q[appr] / n.papproach[appr]
            zz = n.place_zone[n.pfrom[appr]]
            ok = zz >= 0
            np.maximum.at(out, zz[ok], qd[ok])
        return out

    # -- routing

    def route(self, st: State, ctl: Controls) -> None:
        """Route split per (place, class) over the ways out, by the current travel times to the
        class's target (crowding and queue waits included, closed ways excluded): see split()."""
        n, fd = self.net, self.fd
        N, E = n.N, len(n.exits)
        V = N + E
        # port costs: crossing the place + the way (lane travel time or connector) + queue wait
        pd = self.place_density(st, ctl)
        vp = np.maximum(fd.speed(np.minimum(pd, fd.rho_jam - 1e-3)), 0.05)
        cross = n.plen / vp
        cd = self.cell_density(st, ctl)
        vc = np.maximum(fd.speed(np.minimum(cd, fd.rho_jam - 1e-3)) * n.csf, 0.05)
        lane_t = np.bincount(n.clane, weights=n.clen / vc, minlength=len(n.lanes))
        q = self.port_queue(st)
        cap = np.minimum(n.pcap * ctl.port_cap_mult, ctl.port_rate)
        pen = self._pens(ctl)
        if pen.any():  # a limited exit: its pen's queue and rate are the wait
            k = n.exit_port[pen]
            q[k] += st.xq[pen] if st.xq is not None else 0.0
            cap[k] = np.minimum(cap[k], ctl.exit_rate[pen])
        green = np.where(ctl.signal_on & (n.pcycle > 0), n.pgreen / np.maximum(n.pcycle, 1e-9), 1.0)
        cap_eff = np.maximum(cap * green, 1e-6)
        cost = 0.5 * cross[n.pfrom] + q / np.minimum(cap_eff, 1e9)
        cost = cost + np.append(lane_t, 0.0)[n.port_lane]
        cost = cost + np.where(n.phead < N, 0.5 * cross[np.minimum(n.phead, N - 1)], 0.0)
        open_ = ctl.port_open & np.append(ctl.lane_open, True)[n.port_lane]
        open_ &= ~((ctl.port_rate <= 0) | (cap <= 0))
        w = np.where(open_, cost, INF)
        dist = self._dist(w)
        tcol = {int(t): j for j, t in enumerate(n.targets)}
        # the travel time to go per class: its target's column; class 0 leaves by the nearest
        # open exit, i.e. the smallest of the exit columns
        D = np.empty((V, n.K))
        D[:, 1:] = dist[:, [tcol[int(t)] for t in n.ctarget[1:]]]
        D[:, 0] = dist[:, [tcol[int(x)] for x in n.ex_nodes]].min(1) if E else INF
        W = np.broadcast_to(w[:, None], (n.P, n.K))
        if n.no_reentry.any():
            # classes that may not re-enter an area: their own travel times without its entrances
            W = np.where(n.no_reentry, INF, W)
            for pat, ks in n.reentry_groups:
                db = self._dist(np.where(pat, INF, w))
                D[:, ks] = db[:, [tcol[int(t)] for t in n.ctarget[ks]]]
        self.split(st, W, D)

    def _pens(self, ctl: Controls) -> np.ndarray:
        """[E] bool: exits limited now, with a pen outside for their queue."""
        if ctl.exit_rate is None:
            return np.zeros(len(self.net.exits), bool)
        return (ctl.exit_rate < np.inf) & (self.net.exit_hold > 0)

    def _dist(self, w: np.ndarray) -> np.ndarray:
        """Travel time from every node to every target ([V, targets]) over port costs ``w``."""
        n = self.net
        V = n.N + len(n.exits)
        T = n.targets
        dist = np.full((V, len(T)), INF)
        dist[T, np.arange(len(T))] = 0.0
        nodes, starts, head = n.pf_nodes, n.pf_starts, n.pf_head
        wo = w[n.pf_order, None]
        for _ in range(V):
            cand = wo + dist[head]
            new = dist.copy()
            new[nodes] = np.minimum(new[nodes], np.minimum.reduceat(cand, starts, axis=0))
            if np.array_equal(new, dist):
                break
            dist = new
        return dist

    def split(self, st: State, w: np.ndarray, D: np.ndarray) -> None:
        """Shares of each class over the ways out of each place (``st.split``, [P, K]) from the
        port costs ``w`` and the time-to-target table ``D`` ([V, K]): a logit over the ways
        that bring the class strictly closer to its target (no loops), damped against the
        previous split; ways closed or leading nowhere get nothing at once."""
        n, p = self.net, self.p
        w = w[:, None] if w.ndim == 1 else w  # a cost per port, or per port and class
        c = w + D[n.phead]  # [P, K] via this port
        here = D[n.pfrom]
        avail = (c < INF / 2) & (D[n.phead] < here - 1e-9) & ~n.at_stop[n.pfrom]
        cmin = np.full((n.N, n.K), INF)
        np.minimum.at(cmin, n.pfrom, np.where(avail, c, INF))
        beta = max(p.route_spread_s, 1e-9)
        rel = np.where(avail, c - cmin[n.pfrom], INF)
        wgt = np.where(rel <= p.route_cutoff * beta, np.exp(-np.clip(rel, 0.0, p.route_cutoff * beta) / beta), 0.0)
        tot = (n.PF @ wgt)[n.pfrom]
        logit = np.where(tot > 0, wgt / np.maximum(tot, 1e-300), 0.0)
        prev = st.split
        a = p.route_smoothing
        if prev is not None and a < 1.0:
            keep = np.where(logit > 0, prev, 0.0)  # the previous split on the ways still in the choice set
            ktot = (n.PF @ keep)[n.pfrom]
            keep = np.where(ktot > 0, keep / np.maximum(ktot, 1e-300), logit)
            logit = a * logit + (1.0 - a) * keep
        st.split = logit

    # -- one step

    def step(self, st: State, ctl: Controls, demand: bool = True) -> None:
        n, fd, p = self.net, self.fd, self.p
        dt = p.dt
        if st.split is None or st.t >= st.next_route:
            self.route(st, ctl)
            st.next_route = st.t + p.route_every_s
        split = st.split

        # stops that cannot be reached: skip them (divert); unreachable exits: leave by another
        stuck = ~(n.PF @ split > 0.5) & ~n.at_stop
        stuck[:, 0] = False
        if stuck.any():
            amt = np.where(stuck, st.rdy, 0.0)
            tot = amt.sum()
            if tot > 0:
                st.rdy -= amt
                is_exit = n.ctarget >= n.N
                to = np.where(is_exit, 0, n.cnext)
                moved = amt @ self._onehot(to)
                st.rdy += moved
                st.diverted += tot

        # 1. corridors: Godunov flows between cells. Opposing directions form lanes: each takes
        # a share of the width in proportion to the people walking its way on the corridor
        # (lane formation), and both lose ``counterflow_factor`` of capacity while both walk.
        tot = st.cell.sum(1)
        width = n.cwidth + ctl.cell_width_add
        lane_n = np.bincount(n.clane, weights=tot, minlength=len(n.lanes))
        lane_o = lane_n[n.lane_rev]
        # An opposing stream takes its share and costs the counterflow loss in full from one
        # person on it (``counterflow_people``), pro rata below: the remnant a closed lane
        # drains geometrically (a one-way: 1e-9 of a person after minutes) must not hold the
        # walkway at share × loss (0.72) of its width (docs/twin.md, "Counter-flow").
        full = np.where(lane_n <= 1e-9, p.share_min,
                        np.clip(lane_n / np.maximum(lane_n + lane_o, 1e-12), p.share_min, 1 - p.share_min))
        w_o = np.clip(lane_o / p.counterflow_people, 0.0, 1.0)
        lshare = 1.0 - w_o * (1.0 - full)
        both = np.minimum(w_o, np.clip(lane_n / p.counterflow_people, 0.0, 1.0))
        lloss = 1.0 - both * (1.0 - p.counterflow_factor)
        share = lshare[n.clane]
        wdir = width * share
        rho = tot / (n.clen * wdir)  # the density this direction walks at, on its own lanes
        # people a step per unit of flow: this direction's width after the counter-flow loss,
        # times the cell's speed factor — a slow cell (a viewing span) walks on the same diagram
        # at a lower speed, so it sends AND takes at that share of the flow and the queue stands
        # in front of it, not packed inside it (Daganzo's cell transmission model: a cell's
        # supply comes from its own diagram; until 2026-12-04 only its demand did: docs/twin.md)
        cap = wdir * lloss[n.clane] * n.csf * dt
        D = np.minimum(tot, fd.demand(rho) * cap)
        S = fd.supply(rho) * cap
        S = np.minimum(S, np.maximum(0.0, fd.rho_jam * n.clen * wdir - tot))
        down = n.cdown
        has_down = down >= 0
        f = np.where(has_down, np.minimum(D, S[np.maximum(down, 0)]), 0.0)
        # last cells deliver into their place (limited by its room below)
        area = n.area + ctl.place_area_add
        npl = st.act.sum(1) + st.rdy.sum(1)
        prho = npl / area
        room = np.maximum(0.0, p.max_density * area - npl)
        # what a place can take in a step: its supply across its own cross-section (area ÷
        # length): a sidewalk fed by four side ways still discharges only over its width
        room = np.minimum(room, fd.supply(prho) * (area / n.plen) * dt)
        last = n.lane_last
        into_place_w = width[last] * share[last]
        want_last = np.minimum(D[last], fd.supply(prho[n.lane_to]) * into_place_w * dt)
        f_last = want_last

        # 2. ports: queues at places → lanes / other places / exits
        pen = self._pens(ctl)
        pen_out = None
        if pen.any() or (st.xq is not None and st.xq.any()):
            # a limited exit: its queue walks into the pen outside (as far as the pen has room)
            # and leaves from there at the limited rate; nobody leaves from the place directly.
            # Released, the pen empties first, at the exit's own capacity.
            if st.xq is None:
                st.xq = np.zeros(len(n.exits))
            if pen.any():
                ks = n.exit_port[pen]
                Rk = st.rdy[n.pfrom[ks]] * split[ks]  # [pens, K]
                qk = Rk.sum(1)
                roomk = np.maximum(0.0, p.max_density * n.exit_hold[pen] - st.xq[pen])
                mv = Rk * np.where(qk > roomk, roomk / np.maximum(qk, 1e-12), 1.0)[:, None]
                np.subtract.at(st.rdy, n.pfrom[ks], mv)
                st.xq[pen] += mv.sum(1)
            xcap = n.pcap[n.exit_port] * dt
            pen_out = np.minimum(st.xq, np.where(pen, np.minimum(xcap, ctl.exit_rate * dt), xcap))
        R = st.rdy[n.pfrom] * split  # [P, K] queued at each way out, by class
        q = R.sum(1)
        cap = np.minimum(n.pcap * ctl.port_cap_mult, ctl.port_rate)
        green = np.ones(n.P)
        sig = ctl.signal_on & (n.pcycle > 0)
        if sig.any():
            phase = np.mod(st.t, np.maximum(n.pcycle, 1e-9))
            green = np.where(sig, (phase < n.pgreen).astype(float), 1.0)
        pf = np.minimum(q, cap * green * dt)
        pf = np.where(ctl.port_open, pf, 0.0)
        if pen_out is not None:  # the pens go first (below); a limited exit passes nobody else
            ke = n.exit_port
            pf[ke] = np.where(pen, 0.0, np.minimum(pf[ke], np.maximum(0.0, cap[ke] * dt - pen_out)))
        lane_ok = np.append(ctl.lane_open, True)[n.port_lane]
        pf = np.where(lane_ok, pf, 0.0)
        # lane entries: no more than the first cell can take (S is this direction's supply)
        k0 = n.pkind == 0
        pf[k0] = np.minimum(pf[k0], S[n.pcell[k0]] - 0.0)
        # connectors into a place: no more than its supply across the way's width (the place's
        # density above critical density lowers what it takes, as a corridor cell's would)
        k1 = n.pkind == 1
        weq = np.maximum(n.pwidth, n.pcap / fd.q_max) * ctl.port_cap_mult
        pf[k1] = np.minimum(pf[k1], fd.supply(prho[np.minimum(n.phead[k1], n.N - 1)]) * weq[k1] * dt)
        # total into each place (from lanes and connectors) within its room: scale pro rata
        into = np.zeros(n.N)
        into += n.LT @ f_last
        into += np.bincount(n.phead[k1], pf[k1], minlength=n.N + len(n.exits))[: n.N]
        scale = np.where(into > room, room / np.maximum(into, 1e-12), 1.0)
        f_last = f_last * scale[n.lane_to]
        pf[k1] = pf[k1] * scale[n.phead[k1]]
        room_left = np.maximum(0.0, room - into * scale)

        # apply corridor flows (composition moves pro rata)
        frac = np.where(tot > 1e-12, np.where(has_down, f, 0.0) / np.maximum(tot, 1e-12), 0.0)
        fl = st.cell * frac[:, None]
        fracl = np.where(tot[last] > 1e-12, f_last / np.maximum(tot[last], 1e-12), 0.0)
        fll = st.cell[last] * fracl[:, None]
        st.cell -= fl
        st.cell[last] -= fll
        st.cell[down[has_down]] += fl[has_down]  # each cell has one upstream cell
        # arrivals into places from lanes: start activity/crossing
        st.act += n.LT @ fll
        zl = n.place_zone[n.lane_to]
        # apply port flows: each port passes the same share of everyone queued at it
        phi = np.where(q > 1e-12, pf / np.maximum(q, 1e-12), 0.0)
        moved = R * phi[:, None]  # [P, K]
        pf = moved.sum(1)
        st.rdy -= n.PF @ moved
        st.cell[n.pcell[n.k0]] += moved[n.k0]  # each lane's first cell has one port
        st.act += n.PH1 @ moved
        out_k = moved[n.k2].sum(1)
        st.exited += float(out_k.sum())
        st.exits += np.bincount(n.phead[n.k2] - n.N, out_k, minlength=len(n.exits))
        if pen_out is not None:
            st.xq -= pen_out
            st.exited += float(pen_out.sum())
            st.exits += pen_out
            pf[n.exit_port] += pen_out
        st.last_port = pf.copy()
        st.port_flow += pf
        # zone visits: people entering a zone (a place's zone, or a lane's first cell zone)
        if len(n.zones):
            amt = pf  # persons through each port this step
            hz = np.where(n.pkind == 1, n.place_zone[np.minimum(n.phead, n.N - 1)], -1)
            hz = np.where(n.pkind == 0, n.czone[np.maximum(n.pcell, 0)], hz)
            g = hz >= 0
            st.visits += np.bincount(hz[g], amt[g], minlength=len(n.zones))
            gl = zl >= 0
            st.visits += np.bincount(zl[gl], f_last[gl], minlength=len(n.zones))
            dz_from = n.czone[np.maximum(down, 0)]
            cross_zone = has_down & (dz_from != n.czone) & (dz_from >= 0)
            st.visits += np.bincount(dz_from[cross_zone], f[cross_zone], minlength=len(n.zones))

        # 3. places: activity / crossing done → queued toward the next hop
        pd = self.place_density(st, ctl)
        v = np.maximum(fd.speed(np.minimum(pd, fd.rho_jam - 1e-3)), 0.05)
        r_cross = v / n.plen
        rate = np.where(n.at_stop, 1.0 / n.dwell[:, None], r_cross[:, None])
        prob = 1.0 - np.exp(-rate * dt)
        done = st.act * prob
        st.act -= done
        at = np.where(n.at_stop, done, 0.0)
        st.rdy += done - at
        if at.any():
            st.rdy += at @ n.NXT

        # 4. reactive demand: balk from long queues toward an optional stop
        wait = q / np.maximum(cap * np.where(sig, n.pgreen / np.maximum(n.pcycle, 1e-9), 1.0), 1e-6)
        st.wait_sum += float(q.sum()) * dt
        h = p.balk_max_per_min / (1.0 + np.exp(-(wait - p.balk_w50_s) / p.balk_scale_s))
        pb = 1.0 - np.exp(-h * dt / 60.0)
        if (pb > 1e-6).any():
            pbk = n.PF @ (split * pb[:, None])  # [N, K] balking hazard over the ways each class takes
            bk = np.where(n.coptional[None, :], st.rdy * pbk, 0.0)
            b = bk.sum()
            if b > 0:
                st.rdy -= bk
                st.rdy += bk @ n.NXT
                st.balked += b

        # 5. sources: arrivals (Poisson), held ones enter as far as the way and the room allow
        S_ = len(n.sources)
        if S_:
            step_i = int(round(st.t / dt))
            if st.transit is not None:  # diverted arrivals reaching their new way in now
                slot = step_i % st.transit.shape[0]
                due = st.transit[slot]
                if due.any():
                    st.held += due
                    st.transit[slot] = 0.0
            if demand:
                lam = n.arrival_rate(st.t, ctl.demand_scale) * dt
                arr = st.rng.poisson(lam).astype(float)
                st.held += arr[:, None] * n.src_mix
                st.arrived += float(arr.sum())
            hq = st.held.sum(1)
            st.wait_sum += float(hq.sum()) * dt
            cap_s = np.minimum(n.src_cap, ctl.src_rate) * dt
            npl = st.act.sum(1) + st.rdy.sum(1)
            rho_in = npl[n.src_place] / area[n.src_place]
            ent = np.minimum(hq, np.minimum(cap_s, fd.supply(rho_in) * (n.src_cap / fd.q_max) * dt))
            room = np.minimum(room_left, np.maximum(0.0, p.max_density * area - npl))
            need = np.zeros(n.N)
            need += n.SP @ ent
            sc = np.where(need > room, room / np.maximum(need, 1e-12), 1.0)
            ent = ent * sc[n.src_place]
            fr = np.where(hq > 1e-12, ent / np.maximum(hq, 1e-12), 0.0)
            e = st.held * fr[:, None]
            st.held -= e
            st.act += n.SP @ e
            st.src_in += ent
            st.last_src = ent
            gz = n.place_zone[n.src_place]
            g = gz >= 0
            st.visits += np.bincount(gz[g], ent[g], minlength=len(n.zones))
            # held back at a diverting source: they go on to the receiving source (exact
            # bookkeeping: nobody leaves the model, they arrive there after the delay)
            if ctl.src_divert is not None and (ctl.src_divert >= 0).any():
                self._divert(st, ctl, step_i)
            # held because of a closure or metering: give up with exponential patience
            heldback = ctl.src_rate < n.src_cap
            if heldback.any():
                pg = 1.0 - math.exp(-dt / p.patience_s)
                gu = st.held[heldback] * pg
                st.held[heldback] -= gu
                st.gave_up += float(gu.sum())
        st.t += dt

    def _divert(self, st: State, ctl: Controls, step_i: int) -> None:
        n, dt = self.net, self.p.dt
        slots = int(math.ceil(self.p.max_transit_s / dt)) + 1
        for s in np.flatnonzero(ctl.src_divert >= 0):
            amt = st.held[s]
            tot = float(amt.sum())
            if tot <= 0:
                continue
            if st.transit is None:
                st.transit = np.zeros((slots, len(n.sources), n.K))
            k = min(max(1, int(math.ceil(ctl.src_divert_delay_s[s] / dt))), slots - 1)
            st.transit[(step_i + k) % slots, ctl.src_divert[s]] += amt
            st.held[s] = 0.0
            st.rerouted += tot
            st.transit_wait_s += tot * k * dt
            st.transit_delay_s = k * dt

    def _onehot(self, to: np.ndarray) -> np.ndarray:
        m = np.zeros((len(to), self.net.K))
        m[np.arange(len(to)), to] = 1.0
        return m

    def rollout(self, st: State, ctl: Controls, minutes: float, demand: bool = True, record: bool = True) -> Trace:
        """Advance ``st`` in place ``minutes`` under ``ctl``; per-step series if ``record``."""
        tr = Trace([], [], [], [])
        steps = int(round(minutes * 60 / self.p.dt))
        ex0 = st.exited
        for _ in range(steps):
            self.step(st, ctl, demand)
            if record:
                tr.times.append(st.t)
                tr.zone_count.append(self.zone_counts(st))
                tr.zone_peak_density.append(self.zone_peak_density(st, ctl))
                tr.port_queue.append(self.port_queue(st))
        tr.exited = st.exited - ex0
        return tr
