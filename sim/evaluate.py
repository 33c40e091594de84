"""The yardstick: the same simulated evenings under different control policies, measured on
outcomes from the twin's truth. Pure (no I/O); ``crowdflow evaluate`` is its shell.

A policy sees what the control room sees — zone states fused by the real
:class:`control.zones.ZoneBook` from the virtual cameras (noise, lost windows, outages) — and
answers with the actions it orders. The twin (:mod:`sim.model`) puts them on the ground only
once staffed (reserve travel times) and set up. Measured, for every policy under the same rules:

* **response time** from a common reference event — the true moment a zone of a plan area
  crosses the threshold of the area's first level that has a measure (LB/T 068 triggers in the
  site file; the demand includes an injected metro surge) — to the first measure of that area
  in effect on the ground (0 when one already was); step-downs are not responses; an event
  never answered counts its whole duration (and is counted as unanswered);
* **metro passengers sent on** by a diversion (只上不下) and their extra travel; they count in
  the wait distribution as waiting their detour;
* **zone-minutes above 4 p/m²** in *local* density (corridor cells, places, bottleneck
  approaches, holding areas), and the **p95 queue wait** (person-weighted, Little's law: a
  queue's wait is its length ÷ its service rate);
* **safe throughput**: the largest demand multiplier of the sweep (×1.0 … ×1.6) at which a
  policy keeps 0 zone-minutes above 4 p/m² and p95 wait ≤ 15 min (per seed; 0.9 = fails ×1.0);
* **visits completed** (people out by an exit) and throughput 19:00–22:00;
* **road-cutoff minutes** (roads cut to traffic, set-up and tear-down included) and
  **staff-hours** (roster on duty + reserve teams sent, travel included).

Policies: :class:`NoControl`; :class:`ReactiveBaseline` — an experienced command post without
prediction: a fixed evening roster as practised, the plans' levels switched at the LB/T 068
thresholds on the fused state it sees after its reporting delay, released by the plan engine's
own rule, the same staff travel times; :class:`PlanEnginePolicy` — today's tiered, predictive
plans through the real plan engine with a commander who confirms after a delay.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np

from control.optimizer import FLAP_WINDOW_S
from crowdflow import crowd
from crowdflow.records import Command, ZoneState
from crowdflow.site import BroadcastAction, Site, StaffingAction

from .reports import QueueReporters
from .cameras import Faults, VirtualCameras, camera_views
from .model import Model, build_network
from .scenario import Scenario, hhmm_to_s, s_to_hhmm

DANGER_DENSITY = crowd.DANGER_DENSITY  # p/m², local
WAIT_LIMIT_MIN = 15.0  # p95 queue wait a safe evening keeps
PEAK_WINDOW = ("19:00", "22:00")
SWEEP = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)
SURGE = {"source": "metro-9", "at": "20:15", "minutes": 10, "extra_per_min": 120}  # injected incident

# The district's reported results for May Day 2025 (brief), as % change.
# "40 % less emergency manpower" is judged on the staff-hours above the normal duty.
DISTRICT = {"road_cutoff_min": -21.0, "response_min": -20.0, "emergency_staff_hours": -40.0, "served": 30.0}


class Policy(Protocol):
    name: str

    def roster(self) -> dict[str, int]:
        """Headcount on duty per post for the whole evening."""
        ...

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        """The actions (site action records) the policy orders from ``now``."""
        ...

    # Optional: ``report_queue(hold_id, people, at)`` takes a queue count reported at a holding
    # area (sim.reports); a policy without it does not use them.


class NoControl:
    """Reference: nobody acts (the evening as demand alone makes it)."""

    name = "none"

    def __init__(self, site: Site):
        self.site = site

    def roster(self) -> dict[str, int]:
        return {p.id: p.headcount for p in self.site.posts}

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        return []


class PlanEnginePolicy:
    """Plans through the real plan engine (``control.plans.PlanEngine``). A commander confirms
    each pending recommendation ``confirm_delay_s`` after it appears (stand-downs too)."""

    name = "plans"

    def __init__(self, site: Site, confirm_delay_s: float = 60.0, engine=None, report_delay_s: float = 0.0):
        if engine is None:
            from control.plans import PlanEngine  # the control service's plan engine

            engine = PlanEngine(site)
        self.site = site
        self.engine = engine
        self.confirm_delay_s = confirm_delay_s
        self.report_delay_s = report_delay_s
        self.pending: dict[str, tuple[object, float]] = {}
        self._seen: list[tuple[float, Mapping[str, ZoneState]]] = []
        self._n = 0

    def roster(self) -> dict[str, int]:
        return {p.id: p.headcount for p in self.site.posts}

    def report_queue(self, hold_id: str, people: float, at: float) -> None:
        """A queue count from the pen's staff or the metro operator, into the planner's book as
        the control service's ``report_queue`` command puts it: a packed pen raises its area's
        level (both engines), and the measures planner starts its queues from it."""
        error = self.engine.holds.report(hold_id, people, at, "sim-reporter", at)
        if error:
            raise ValueError(f"queue report refused: {error}")

    def _visible(self, now: float, zones):
        """The fused state as the command post sees it: ``report_delay_s`` old."""
        if self.report_delay_s <= 0:
            return zones
        self._seen.append((now, zones))
        while len(self._seen) > 1 and self._seen[1][0] <= now - self.report_delay_s:
            self._seen.pop(0)
        t, z = self._seen[0]
        return z if t <= now - self.report_delay_s else {}

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        zones = self._visible(now, zones)
        for rec in self.engine.evaluate(now, zones):
            if rec.status == "pending":
                self.pending.setdefault(rec.id, (rec, now + self.confirm_delay_s))
            else:
                self.pending.pop(rec.id, None)
        for rid, (rec, due) in sorted(self.pending.items(), key=lambda kv: kv[1][1]):
            if now < due:
                continue
            del self.pending[rid]
            self._n += 1
            cmd = Command(id=f"sim-confirm-{self._n:06d}", kind="confirm", plan_id=rec.plan_id,
                          recommendation_id=rec.id, user="sim-commander", role="commander", issued_at=now)
            self.engine.handle(now, cmd, zones)
        return list(self.engine.active_actions())


@dataclass
class BaselineParams:
    """The experienced command post without prediction (docs/evaluation.md)."""

    report_delay_s: float = 180.0  # seen by a patrol, radioed, logged: the state it acts on is 3 min old
    decide_delay_s: float = 120.0  # the duty commander decides
    roster_from: str = "18:00"  # the fixed evening roster is on duty …
    roster_to: str = "23:00"  # … for these hours (as practised: the plans' top headcounts)


class ReactiveBaseline(PlanEnginePolicy):
    """The plans' levels, switched at their LB/T 068 thresholds without forecasts, on the
    state the command post sees after its reporting delay, confirmed after its decision delay,
    released by the engine's own rule. Staff: a fixed evening roster at every post at the
    highest headcount the plans ask for there, on duty all evening; staffing orders add
    nothing (the roster is already there), other measures draw on it like the plans' do."""

    name = "baseline"

    def __init__(self, site: Site, params: BaselineParams | None = None):
        from control.plans import PlanEngine

        self.p = params or BaselineParams()
        plans = [pl.model_copy(update={"predictive_lead_min": 0.0}) for pl in site.plans]
        blind = site.model_copy(update={"plans": plans})
        for k in ("plan_by_id",):
            blind.__dict__.pop(k, None)
        super().__init__(site, confirm_delay_s=self.p.decide_delay_s, engine=PlanEngine(blind),
                         report_delay_s=self.p.report_delay_s)
        top = {p.id: p.headcount for p in site.posts}
        for pl in site.plans:
            for lv in pl.levels:
                for a in lv.actions:
                    if isinstance(a, StaffingAction):
                        top[a.post] = max(top.get(a.post, 0), a.headcount)
        self._roster = top

    def roster(self) -> dict[str, int]:
        return dict(self._roster)

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        return [a for a in super().step(now, zones) if not isinstance(a, StaffingAction)]


# ----------------------------------------------------------------------------- one evening


@dataclass
class Metrics:
    policy: str
    seed: int
    demand: float = 1.0
    response_min: float | None = None  # mean over reference events; None: none happened
    events: int = 0
    unanswered: int = 0
    zone_min_over_4: float = 0.0
    p95_wait_min: float = 0.0
    served: float = 0.0  # visits completed: people out by an exit, whole evening
    throughput_ph: float = 0.0  # out per hour, 19:00–22:00
    road_cutoff_min: float = 0.0
    staff_hours: float = 0.0
    roster_hours: float = 0.0
    dispatched_hours: float = 0.0
    # above the site's normal duty (posts' headcount all evening, the same for every policy):
    # rostered above it + dispatched (travel included) — the district's "emergency manpower"
    emergency_staff_hours: float = 0.0
    peak_density: float = 0.0  # highest local density anywhere
    arrived: float = 0.0
    gave_up: float = 0.0
    balked: float = 0.0
    visits_per_visitor: float = 0.0
    complex_share: float = 0.0  # entries into the complex (11F + 1F gates) per visitor
    safe: bool = True
    flaps: int = 0  # times a measure was switched (in effect on the ground) a third time within 20 min
    # metro passengers a diversion (只上不下) sent on to another station, and their extra travel
    # (person-hours; also in the wait distribution: each counts as waiting its detour)
    rerouted: float = 0.0
    reroute_extra_h: float = 0.0
    # where and when (diagnostics, in --jsonl): minutes > 4 p/m² per zone and the first minute it
    # happened (hh:mm); each reference event as [area, hh:mm, response min] or, never answered,
    # [area, hh:mm, None, its duration in min]
    over4_by_zone: dict = field(default_factory=dict, compare=False)
    over4_first: dict = field(default_factory=dict, compare=False)
    event_log: list = field(default_factory=list, compare=False)
    cpu_s: float = field(default=0.0, compare=False)  # CPU seconds this evening took (the run's cost, independent of other load)


@dataclass
class Series:
    """Per-minute series of one evening (for the plots)."""

    t: list[float] = field(default_factory=list)
    peak_density: list[float] = field(default_factory=list)
    staff_on_site: list[int] = field(default_factory=list)
    roads_cut: list[int] = field(default_factory=list)
    on_site: list[float] = field(default_factory=list)


def _area_measures(site: Site) -> dict[str, tuple[set[str], float | None, float | None, list[str]]]:
    """Per plan area: its measures' keys, the capacity-ratio and density thresholds of its first
    level that has a measure, and its zones.

    An area's measures are every action on the ground (not staffing, not a broadcast) that its
    levels name *or* that a site measure naming the area carries (``measures[].plans``): the
    same set for every policy — the baseline's level bundles and the measures engine's
    metering alike answer the area's reference event."""
    out = {}
    extra: dict[str, set[str]] = {}
    for ms in site.measures:
        acts = {a.model_dump_json() for a in ms.actions if not isinstance(a, (StaffingAction, BroadcastAction))}
        for pid in ms.plans:
            extra.setdefault(pid, set()).update(acts)
    for pl in site.plans:
        keys: set[str] = set(extra.get(pl.id, ()))
        thr = None
        for lv in pl.levels:
            acts = [a for a in lv.actions if not isinstance(a, (StaffingAction, BroadcastAction))]
            keys |= {a.model_dump_json() for a in acts}
            if acts and thr is None:
                thr = (lv.triggers.capacity_ratio, lv.triggers.density)
        if thr is not None:
            out[pl.id] = (keys, thr[0], thr[1], list(pl.zones))
    return out


def _log_response(log: list, area: str, minutes: float) -> None:
    """Fill the response of the area's latest open event in the evening's event log."""
    for e in reversed(log):
        if e[0] == area:
            e[2] = round(minutes, 2)
            return


def _log_unanswered(log: list, area: str, minutes: float) -> None:
    """An event never answered: its duration as a 4th field (the response stays None)."""
    for e in reversed(log):
        if e[0] == area:
            e.append(round(minutes, 2))
            return


def _surge_curve(sc: Scenario, scale: float):
    t0 = hhmm_to_s(SURGE["at"])
    return t0, t0 + SURGE["minutes"] * 60, SURGE["extra_per_min"] / 60.0 * scale


def run_evening(site: Site, sc: Scenario, policy: Policy, seed: int, demand: float = 1.0, obs_every_s: float = 20.0,
                faults: Faults | None = None, views: dict | None = None, until_s: float | None = None,
                series: Series | None = None, network=None, surge: bool = True,
                on_step: Callable[[Model], None] | None = None, queue_reports: bool = True) -> Metrics:
    """One evening under ``policy`` at ``demand`` × the scenario's arrivals. The same seed
    gives the same arrivals and the same camera faults whatever the policy does."""
    import time

    from control.zones import ZoneBook

    cpu0 = time.process_time()
    sc = sc.model_copy(update={"demand_scale": sc.demand_scale * demand})
    model = Model(site, sc, seed=seed, network=network)
    board = model.staff_board
    roster = policy.roster()
    r_from, r_to = (hhmm_to_s(x) for x in (BaselineParams.roster_from, BaselineParams.roster_to))
    normal = dict(board.duty)
    cams = VirtualCameras(site, views or camera_views(site), seed=seed + 10_000, faults=faults or Faults())
    # the pens' staff and the metro operator count the queues (sim.reports); their own stream
    reporters = QueueReporters(site, model.net, seed=seed + 20_000) if queue_reports else None
    report = getattr(policy, "report_queue", None)
    book = ZoneBook(site, stale_after_s=3 * obs_every_s)
    tz = site.site.timezone
    m = Metrics(policy=policy.name, seed=seed, demand=demand)
    peak0, peak1 = (hhmm_to_s(x) for x in PEAK_WINDOW)
    net = model.net
    dt = sc.model.step_s
    areas = _area_measures(site)
    zidx = {z: i for i, z in enumerate(model.zones)}
    cap = model.capacity
    eff_prev: set[str] = set()
    switches: dict[str, list[float]] = {}
    open_event: dict[str, float] = {}  # area → reference event time
    below_since: dict[str, float] = {}
    responses: list[float] = []
    surge_src = net.sources.index(SURGE["source"]) if (surge and SURGE["source"] in net.sources) else None
    s0, s1, s_rate = _surge_curve(sc, sc.demand_scale)
    wait_bins = np.zeros(241)  # person-seconds by queue wait, 0.25-min bins up to 60 min (last: more)
    moved = np.zeros(net.P)
    entered = np.zeros(len(net.sources))
    served_peak = 0.0
    next_obs = model.t + obs_every_s
    next_min = model.t + 60
    actions_key = ""
    gate_in = [k for k in range(net.P) if net.pgate[k] in ("gate-11f", "gate-1f") and net.pgdir[k] == "in"]
    end = sc.end_s if until_s is None else until_s
    rostered = False
    duty_hours = 0.0
    while model.t < end:
        # the roster: on duty over its hours (the evening's normal headcount outside them)
        on = r_from <= model.t < r_to
        if on != rostered:
            rostered = on
            board.extra = {k: max(0, v - normal.get(k, 0)) for k, v in roster.items()} if on else {}
        st = model.state
        if surge_src is not None and s0 <= model.t < s1:
            extra = st.rng.poisson(s_rate * dt)
            st.held[surge_src] += extra * net.src_mix[surge_src]
            st.arrived += extra
        ex0 = st.exited
        model.step()
        st = model.state
        moved += st.last_port
        entered += st.last_src
        if peak0 < model.t <= peak1:
            served_peak += st.exited - ex0
        # local density
        pkv = model.peak_density_array()
        nz = model.n
        m.peak_density = max(m.peak_density, float(pkv.max()))
        hot = pkv > DANGER_DENSITY
        if hot.any():
            m.zone_min_over_4 += float(hot.sum()) * dt / 60
            for i in np.flatnonzero(hot):
                z = model.zones[i]
                m.over4_by_zone[z] = m.over4_by_zone.get(z, 0.0) + dt / 60
                m.over4_first.setdefault(z, s_to_hhmm(model.t))
        # queue waits (Little): ports and held arrivals
        queues = model.twin.queues(st, model.ctl)  # ports, held arrivals, pens outside limited exits
        w = np.concatenate([np.where(q > 0.5, q / np.maximum(r, 1e-3) / 60.0, 0.0) for q, r in queues]
                           + [[st.transit_delay_s / 60.0]])
        qq = np.concatenate([q for q, _ in queues] + [[st.in_transit]])  # diverted passengers wait their detour
        np.add.at(wait_bins, np.minimum((w / 0.25).astype(int), 240), qq * dt)
        m.road_cutoff_min += len(model.cut_roads) * dt / 60
        # reference events: true crossing of an area's measure threshold → first measure in effect
        eff = {a.model_dump_json() for a in model.effective_actions()}
        for k in eff ^ eff_prev:  # switched on or off on the ground
            ts = switches.setdefault(k, [])
            ts.append(model.t)
            if len(ts) >= 3 and ts[-1] - ts[-3] < FLAP_WINDOW_S:
                m.flaps += 1
        eff_prev = eff
        for aid, (keys, thr_r, thr_d, zones) in areas.items():
            idx = [zidx[z] for z in zones if z in zidx]
            counts = nz[idx]
            crossed = False
            if thr_r is not None and (counts / cap[idx] >= thr_r).any():
                crossed = True
            if thr_d is not None and (pkv[idx] >= thr_d).any():
                crossed = True
            answered = bool(keys & eff)
            if aid not in open_event:
                if crossed:
                    m.event_log.append([aid, s_to_hhmm(model.t), None])
                    if answered:
                        responses.append(0.0)
                        m.event_log[-1][2] = 0.0
                        open_event[aid] = -1.0  # answered at once; wait for the episode to end
                    else:
                        open_event[aid] = model.t
                    below_since.pop(aid, None)
            else:
                t0 = open_event[aid]
                if t0 >= 0 and answered:
                    responses.append(model.t - t0)
                    _log_response(m.event_log, aid, (model.t - t0) / 60)
                    open_event[aid] = -1.0
                if crossed:
                    below_since.pop(aid, None)
                else:
                    below_since.setdefault(aid, model.t)
                    if model.t - below_since[aid] >= 600:  # the episode is over
                        if open_event[aid] >= 0:
                            responses.append(model.t - open_event[aid])
                            m.unanswered += 1
                            _log_unanswered(m.event_log, aid, (model.t - open_event[aid]) / 60)
                        del open_event[aid]
                        below_since.pop(aid, None)
        if on_step:
            on_step(model)
        if series is not None and model.t >= next_min:
            next_min += 60
            series.t.append(model.t)
            series.peak_density.append(float(pkv.max()))
            series.staff_on_site.append(board.on_site(model.t))
            series.roads_cut.append(len(model.cut_roads))
            series.on_site.append(st.people - float(st.held.sum()))
        if model.t >= next_obs:
            now = sc.epoch(model.t, tz)
            for obs in cams.observe(now, model.zone_counts(), model.gate_flows(moved, entered), window_s=obs_every_s):
                book.apply(obs)
            moved[:] = 0
            entered[:] = 0
            if reporters is not None and report is not None:
                for hid, people in reporters.due(model.t, model):
                    report(hid, people, now)
            actions = policy.step(now, book.states(now))
            book.set_actions(model.effective_actions())  # what control knows: cut roads widen zones
            key = "|".join(sorted(a.model_dump_json() for a in actions))
            if key != actions_key:
                actions_key = key
                model.set_actions(actions)
            next_obs += obs_every_s
        # staff-hours: roster on duty + dispatched (travel included); the normal duty alone
        m.roster_hours += (sum(board.duty.values()) + sum(board.extra.values())) * dt / 3600
        duty_hours += sum(normal.values()) * dt / 3600
    for aid, t0 in open_event.items():
        if t0 >= 0:
            responses.append(model.t - t0)
            m.unanswered += 1
            _log_unanswered(m.event_log, aid, (model.t - t0) / 60)
    st = model.state
    m.dispatched_hours = board.staff_seconds / 3600
    m.staff_hours = m.roster_hours + m.dispatched_hours
    m.emergency_staff_hours = m.staff_hours - duty_hours
    m.events = len(responses)
    m.response_min = statistics.fmean(responses) / 60 if responses else None
    tot = wait_bins.sum()
    if tot > 0:
        c = np.cumsum(wait_bins) / tot
        m.p95_wait_min = float(np.searchsorted(c, 0.95) * 0.25)
    m.served = st.exited
    m.throughput_ph = served_peak / ((peak1 - peak0) / 3600)
    m.arrived = st.arrived
    m.gave_up = st.gave_up
    m.rerouted = st.rerouted
    m.reroute_extra_h = st.transit_wait_s / 3600
    m.balked = st.balked
    entered_total = float(st.src_in.sum())
    m.visits_per_visitor = float(st.visits.sum()) / max(entered_total, 1.0)
    m.complex_share = float(st.port_flow[gate_in].sum()) / max(entered_total, 1.0)
    m.safe = m.zone_min_over_4 == 0 and m.p95_wait_min <= WAIT_LIMIT_MIN
    m.cpu_s = time.process_time() - cpu0
    return m


# ----------------------------------------------------------------------------- statistics

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    if df <= 0:
        return math.nan
    keys = sorted(_T975)
    for k in keys:
        if df <= k:
            return _T975[k]
    return 1.96


def ci95(vals: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t)."""
    if not vals:
        return math.nan, math.nan
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, math.nan
    return mean, t975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))


def paired(a: list[Metrics], b: list[Metrics], key: str) -> tuple[float, float, int]:
    """Mean paired difference a − b over common seeds (and its 95 % CI half-width), in % of
    b's mean."""
    bs = {m.seed: getattr(m, key) for m in b if getattr(m, key) is not None}
    diffs, base = [], []
    for m in a:
        v = getattr(m, key)
        if v is not None and m.seed in bs:
            diffs.append(v - bs[m.seed])
            base.append(bs[m.seed])
    if not diffs:
        return math.nan, math.nan, 0
    mean, hw = ci95(diffs)
    ref = statistics.fmean(base)
    if ref == 0:
        return math.nan, math.nan, len(diffs)
    return 100 * mean / ref, 100 * hw / abs(ref), len(diffs)


ROWS = [
    ("response_min", "response time from the reference event (min)", "{:.1f}"),
    ("unanswered", "reference events never answered", "{:.1f}"),
    ("road_cutoff_min", "road-cutoff minutes", "{:.0f}"),
    ("staff_hours", "staff-hours (roster + dispatched incl. travel)", "{:.0f}"),
    ("emergency_staff_hours", "emergency staff-hours (above normal duty)", "{:.0f}"),
    ("zone_min_over_4", "zone-minutes > 4 p/m² (local)", "{:.1f}"),
    ("p95_wait_min", "p95 queue wait (min)", "{:.1f}"),
    ("served", "visits completed", "{:.0f}"),
    ("throughput_ph", "out per hour 19–22", "{:.0f}"),
    ("peak_density", "peak local density (p/m²)", "{:.2f}"),
    ("flaps", "measures switched a 3rd time within 20 min", "{:.1f}"),
    ("gave_up", "arrivals who gave up", "{:.0f}"),
    ("rerouted", "metro passengers sent on to another station", "{:.0f}"),
    ("reroute_extra_h", "their extra travel (person-hours)", "{:.0f}"),
    ("visits_per_visitor", "zone visits per visitor", "{:.1f}"),
    ("complex_share", "complex entries per visitor", "{:.2f}"),
]


def table(results: dict[str, list[Metrics]], title: str = "") -> str:
    """Markdown: mean ± 95 % CI per policy; paired change vs the baseline (± 95 % CI)."""
    names = list(results)
    head = ["metric"] + [f"{n}" for n in names]
    others = [n for n in names if n not in ("baseline", "none")]
    compare = "baseline" in results
    if compare:
        head += [f"{o} vs baseline (paired)" for o in others] + ["district (May Day 2025)"]
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, fmt in ROWS:
        row = [label]
        for n in names:
            vals = [getattr(r, key) for r in results[n] if getattr(r, key) is not None]
            mean, hw = ci95(vals)
            if not vals:
                row.append("—")
            else:
                row.append(fmt.format(mean) + ("" if math.isnan(hw) else f" ± {fmt.format(hw)}")
                           + (f" ({len(vals)}/{len(results[n])})" if len(vals) < len(results[n]) else ""))
        if compare:
            for o in others:
                pct, hw, k = paired(results[o], results["baseline"], key)
                row.append("—" if math.isnan(pct) else f"{pct:+.0f} %" + ("" if math.isnan(hw) else f" ± {hw:.0f}"))
            d = DISTRICT.get(key)
            row.append("" if d is None else f"{d:+.0f} %")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def safe_table(safe: dict[str, list[float]]) -> str:
    lines = ["| policy | safe demand multiplier (mean ± 95 % CI) | per seed |", "|---|---|---|"]
    for n, vals in safe.items():
        mean, hw = ci95(vals)
        lines.append(f"| {n} | ×{mean:.2f}" + ("" if math.isnan(hw) else f" ± {hw:.2f}") + " | "
                     + " ".join("<1.0" if v < 1 else f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def as_dicts(results: dict[str, list[Metrics]]) -> dict:
    return {n: [asdict(m) for m in runs] for n, runs in results.items()}


# ----------------------------------------------------------------------------- the full evaluation

_W: dict = {}


def _init(scenario: str, faults: Faults | None, config: str | None = None) -> None:
    from crowdflow.site import load_site

    from .scenario import load_scenario

    sc, site = load_scenario(scenario, load_site(config) if config else None)
    _W.update(site=site, sc=sc, views=camera_views(site), net=build_network(site, sc), faults=faults)


def make_policy(name: str, site: Site, confirm_delay_s: float = 60.0, baseline: BaselineParams | None = None,
                sc: Scenario | None = None):
    if name == "mpc":
        return mpc_policy(site, sc, confirm_delay_s)
    if name == "none":
        return NoControl(site)
    if name == "baseline":
        return ReactiveBaseline(site, baseline)
    if name == "plans":
        return PlanEnginePolicy(site, confirm_delay_s)
    raise ValueError(f"unknown policy {name!r} (choose from none, baseline, plans, mpc)")


# The measures engine decides every 30 s, as live. A full plan (the twin's rollouts) runs when
# the last one is 5 min old or the fused state drifts from its forecast (control.measures); the
# time budget is wide here so that the yardstick judges the decisions, not the machine's load
# while it runs (the 2 s budget on one core is scripts/bench_mpc.py's to check).
MPC_EVAL_CYCLE_S = 30.0
MPC_EVAL_REPLAN_S = 300.0
MPC_EVAL_BUDGET_S = 60.0


def mpc_policy(site: Site, sc: Scenario, confirm_delay_s: float = 60.0, cycle_s: float = MPC_EVAL_CYCLE_S,
               replan_max_s: float | None = MPC_EVAL_REPLAN_S, budget_s: float = MPC_EVAL_BUDGET_S,
               carry: bool = False) -> PlanEnginePolicy:
    """The measures engine (issue 11, ``control.measures``) through the same plan engine and
    the same commander: its twin is this scenario at its *nominal* demand (the planner is not
    told the evening's multiplier; it estimates it online from its forecasts' error,
    ``control.demand``). ``carry``: the twin keeps a nowcast between decisions (off, as live:
    docs/mpc.md, "The nowcast")."""
    from control.measures import MeasurePlanner
    from control.plans import PlanEngine

    from .plantwin import ModelTwin

    planner = MeasurePlanner(site, ModelTwin(site, sc.model_copy(update={"demand_scale": 1.0}), carry=carry), cycle_s=cycle_s,
                             budget_s=budget_s, replan_max_s=replan_max_s)
    pol = PlanEnginePolicy(site, confirm_delay_s, engine=PlanEngine(site, planner=planner))
    pol.name = "mpc"
    return pol


def _job(args) -> tuple[str, int, float, Metrics, Series | None]:
    name, seed, demand, want_series, confirm, bparams = args
    w = _W
    ser = Series() if want_series else None
    pol = make_policy(name, w["site"], confirm, bparams, sc=w["sc"])
    m = run_evening(w["site"], w["sc"], pol, seed, demand=demand, views=w["views"], network=w["net"],
                    faults=w["faults"], series=ser)
    return name, seed, demand, m, ser


MUST = (1.0, 1.3)  # demands every policy and seed runs, safe or not


def _chain(args) -> list[tuple[str, int, float, Metrics, Series | None]]:
    """One policy and one seed over the sweep, in ascending demand: every demand while the
    evenings stay safe, and the ``MUST`` demands whatever happens. One worker task, so a slow
    policy's chain never holds the others back at a barrier between sweep steps."""
    name, seed, sweep, series_for, confirm, bparams = args
    out = []
    alive = True
    for d in sweep:
        if not alive and d not in MUST:
            continue
        r = _job((name, seed, d, d in series_for, confirm, bparams))
        out.append(r)
        alive = alive and r[3].safe
    return out


# relative cost of one evening per policy (the measures engine runs its twin), to start the
# longest chains first
_COST = {"mpc": 6.0, "plans": 1.2, "baseline": 1.0, "none": 0.8}


def evaluate(scenario: str, policies: list[str], seeds: list[int], sweep: tuple[float, ...] = SWEEP,
             jobs: int = 2, confirm_delay_s: float = 60.0, baseline: BaselineParams | None = None,
             faults: Faults | None = None, progress: Callable[[str], None] | None = None, config: str | None = None,
             on_result: Callable[[Metrics], None] | None = None):
    """Every policy × seed at each demand of ``sweep``, in ascending demand until the policy's
    evening is no longer safe for that seed (×1.0 and ×1.3 always run). Returns
    (results by demand → policy → [Metrics], safe multiplier by policy → per seed, series of
    seed ``seeds[0]`` at ×1.0 and ×1.3 by (policy, demand)).

    Parallel by (policy, seed): each is one task running its own sweep, dearest policies first,
    on ``jobs`` worker processes (each builds the site, the network and the camera views once)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    sweep = tuple(sorted(set(sweep)))
    series: dict[tuple[str, float], Series] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs), initializer=_init, initargs=(scenario, faults, config)) as ex:
        if set(sweep) <= set(MUST):
            # every evening runs whatever the others show: one task per evening, seed by seed
            # (each demand, dearest policy first) — what has finished is paired by seed
            futs = [ex.submit(_chain, (p, s, (d,), MUST if s == seeds[0] else (), confirm_delay_s, baseline))
                    for s in seeds for d in sweep for p in sorted(policies, key=lambda p: -_COST.get(p, 1.0))]
        else:
            tasks = sorted(((p, s) for p in policies for s in seeds), key=lambda ps: -_COST.get(ps[0], 1.0))
            futs = [ex.submit(_chain, (p, s, sweep, MUST if s == seeds[0] else (), confirm_delay_s, baseline))
                    for p, s in tasks]
        for fut in as_completed(futs):
            for name, seed, demand, m, ser in fut.result():
                if on_result:
                    on_result(m)
                if ser is not None:
                    series[(name, demand)] = ser
                if progress:
                    progress(f"×{demand:.1f} seed {seed:3d} {name:9s} safe={m.safe!s:5s} >4: {m.zone_min_over_4:5.1f} "
                             f"p95 wait {m.p95_wait_min:4.1f} min  cut {m.road_cutoff_min:4.0f} min  "
                             f"staff {m.staff_hours:5.0f} h  resp {m.response_min if m.response_min is not None else float('nan'):4.1f} min")
    # results in seed order per policy (paired statistics match by seed anyway)
    rows = results_from(futs)
    return _ordered(rows, policies, seeds), safe_multipliers(rows, policies, seeds, sweep), series


def safe_multipliers(rows, policies: list[str], seeds: list[int], sweep: tuple[float, ...]) -> dict[str, list[float]]:
    """Safe throughput per policy and seed: the largest demand of the sweep up to which every
    evening was safe, walking up from the lowest (0.9: unsafe at ×1.0). An evening safe at ×1.3
    after one unsafe at ×1.0 does not count — whatever order the evenings ran in (with
    ``sweep`` ⊆ ``MUST`` each runs as its own task)."""
    ok = {(n, s, d): m.safe for n, s, d, m in rows}
    out: dict[str, list[float]] = {}
    for p in policies:
        out[p] = []
        for seed in seeds:
            v = 0.9
            for d in sorted(sweep):
                if not ok.get((p, seed, d), False):
                    break
                v = d
            out[p].append(v)
    return out


def results_from(futs) -> list[tuple[str, int, float, Metrics]]:
    return [(n, s, d, m) for f in futs for n, s, d, m, _ in f.result()]


def _ordered(rows, policies: list[str], seeds: list[int]) -> dict[float, dict[str, list[Metrics]]]:
    out: dict[float, dict[str, list[Metrics]]] = {}
    for d in sorted({r[2] for r in rows}):
        for p in policies:
            runs = sorted((r[3] for r in rows if r[2] == d and r[0] == p), key=lambda m: seeds.index(m.seed))
            if runs:
                out.setdefault(d, {})[p] = runs
    return out
