"""Policy evaluation: the same simulated evening under different control policies. Pure.

A policy sees what the control room sees — zone states fused by the real
:class:`control.zones.ZoneBook` from the virtual cameras' observations (noise, lost windows,
outages included) — and answers with the actions it wants in force
(:class:`Policy`). The harness applies them to the model and measures, from the model's
truth, what the district measures:

* road-cutoff minutes (Σ over roads of minutes cut off),
* mean response time (a policy's alarm → its action in force),
* staff-hours above the normal evening's headcount,
* throughput: people who finished their visit (left by an exit) per hour, 19:00–22:00,
* peak density and zone-minutes above 4 p/m² (Σ over zones).

Two policies: :class:`ReactiveBaseline` (act at 100 % capacity after a human delay, hold
until below 70 %) and :class:`PlanEnginePolicy` (the project's tiered, predictive plans
through the real ``control.plans.PlanEngine`` with a commander who confirms after a delay).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Protocol

import numpy as np

from crowdflow.records import Command, ZoneState
from crowdflow.site import Site, StaffingAction

from .cameras import Faults, VirtualCameras, camera_views
from .model import Model
from .scenario import Scenario, hhmm_to_s

DANGER_DENSITY = 4.0  # p/m²
PEAK_WINDOW = ("19:00", "22:00")

# The district's reported results for May Day 2025 (brief), as % change.
DISTRICT = {"road_cutoff_min": -21.0, "response_min": -20.0, "staff_hours": -40.0, "throughput_ph": 30.0}


class Policy(Protocol):
    name: str
    responses_s: list[float]  # alarm → action in force, one per response

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        """The actions (site action records) the policy wants in force from ``now``."""
        ...


def _full_response(site: Site, plan) -> list:
    """Everything a plan area's levels prescribe, at the highest headcount per post."""
    out, staff = [], {}
    for lv in plan.levels:
        for a in lv.actions:
            if isinstance(a, StaffingAction):
                staff[a.post] = max(staff.get(a.post, 0), a.headcount)
            elif a not in out:
                out.append(a)
    out += [StaffingAction(type="staffing", post=p, headcount=h) for p, h in staff.items()]
    return out


@dataclass
class BaselineParams:
    """The reactive baseline (see docs/evaluation.md for why these values)."""

    trigger_ratio: float = 1.0  # act only when a zone reaches 100 % of its capacity
    delay_s: float = 300.0  # noticed, reported by radio, decided, dispatched: 5 minutes
    release_ratio: float = 0.70  # hold everything until every zone of the area is below 70 %
    min_hold_s: float = 600.0  # a cut road is not reopened within 10 minutes


class ReactiveBaseline:
    """Traditional reactive control, per plan area: when a zone of the area reaches
    ``trigger_ratio`` of capacity, after ``delay_s`` the area's whole response is put in
    force at once (road cutoffs, exit-only, metro limits, the extra staff — what the plan's
    top level holds); it is all held until every zone of the area is known and below
    ``release_ratio``, and at least ``min_hold_s``."""

    name = "baseline"

    def __init__(self, site: Site, params: BaselineParams | None = None):
        self.p = params or BaselineParams()
        self.plans = list(site.plans)
        self.response = {pl.id: _full_response(site, pl) for pl in self.plans}
        self.alarm_at: dict[str, float | None] = {pl.id: None for pl in self.plans}
        self.active: dict[str, bool] = {pl.id: False for pl in self.plans}
        self.since: dict[str, float] = {}
        self.responses_s: list[float] = []

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        for pl in self.plans:
            ratios = [zones[z].capacity_ratio for z in pl.zones if z in zones and zones[z].status == "ok"]
            ratios = [r for r in ratios if r is not None]
            if not self.active[pl.id]:
                if self.alarm_at[pl.id] is None and any(r >= self.p.trigger_ratio for r in ratios):
                    self.alarm_at[pl.id] = now
                alarm = self.alarm_at[pl.id]
                if alarm is not None and now - alarm >= self.p.delay_s:
                    self.active[pl.id] = True
                    self.since[pl.id] = now
                    self.responses_s.append(now - alarm)
            elif (now - self.since[pl.id] >= self.p.min_hold_s and len(ratios) == len(pl.zones)
                  and all(r < self.p.release_ratio for r in ratios)):
                self.active[pl.id] = False
                self.alarm_at[pl.id] = None
        out = []
        for pl in self.plans:
            if self.active[pl.id]:
                out += [a for a in self.response[pl.id] if a not in out]
        return out


class NoControl:
    """Reference: nobody acts (the evening as demand alone makes it)."""

    name = "none"

    def __init__(self, site: Site | None = None):
        self.responses_s: list[float] = []

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        return []


class PlanEnginePolicy:
    """The project's tiered, predictive plans through the real plan engine
    (``control.plans.PlanEngine``). A commander confirms each pending recommendation
    ``confirm_delay_s`` after it appears (stand-downs too); areas in auto mode apply at once.
    The response time of an escalation runs from when its condition first held (the
    recommendation's creation minus its longest ``held_s``) to the confirmation."""

    name = "plans"

    def __init__(self, site: Site, confirm_delay_s: float = 60.0, engine=None):
        if engine is None:
            from control.plans import PlanEngine  # the control service's plan engine

            engine = PlanEngine(site)
        self.engine = engine
        self.confirm_delay_s = confirm_delay_s
        self.pending: dict[str, tuple[object, float]] = {}
        self.responses_s: list[float] = []
        self._n = 0

    def _record(self, rec, now: float) -> None:
        if rec.level is None:
            return  # standing down is not a response
        held = max((r.held_s or 0.0) for r in rec.reasons) if rec.reasons else 0.0
        self.responses_s.append(max(0.0, now - (rec.created_at - held)))

    def step(self, now: float, zones: Mapping[str, ZoneState]) -> list:
        for rec in self.engine.evaluate(now, zones):
            if rec.status == "pending":
                self.pending.setdefault(rec.id, (rec, now + self.confirm_delay_s))
            else:
                self.pending.pop(rec.id, None)
                if rec.status == "auto_applied":
                    self._record(rec, now)
        for rid, (rec, due) in sorted(self.pending.items(), key=lambda kv: kv[1][1]):
            if now < due:
                continue
            del self.pending[rid]
            self._n += 1
            cmd = Command(id=f"sim-confirm-{self._n:06d}", kind="confirm", plan_id=rec.plan_id,
                          recommendation_id=rec.id, user="sim-commander", role="commander", issued_at=now)
            result, _audit = self.engine.handle(now, cmd, zones)
            if result.ok:
                self._record(rec, now)
        return list(self.engine.active_actions())


@dataclass
class Metrics:
    policy: str
    seed: int
    road_cutoff_min: float = 0.0
    response_min: float | None = None  # None: the policy never had to respond
    responses: int = 0
    staff_hours: float = 0.0
    throughput_ph: float = 0.0
    peak_density: float = 0.0
    zone_min_over_4: float = 0.0
    peak_ratio: float = 0.0  # highest true count ÷ capacity of any zone
    arrived: int = 0
    gave_up: int = 0


def run_evening(site: Site, sc: Scenario, policy: Policy, seed: int, obs_every_s: float = 10.0,
                faults: Faults | None = None, views: dict | None = None, until_s: float | None = None,
                on_step: Callable[[Model], None] | None = None) -> Metrics:
    """One evening under ``policy``. The same seed gives the same demand and the same camera
    faults whatever the policy does (separate random streams)."""
    from control.zones import ZoneBook

    model = Model(site, sc, seed=seed)
    cams = VirtualCameras(site, views or camera_views(site), seed=seed + 10_000, faults=faults or Faults())
    book = ZoneBook(site, stale_after_s=3 * obs_every_s)
    tz = site.site.timezone
    m = Metrics(policy=policy.name, seed=seed)
    peak0, peak1 = (hhmm_to_s(x) for x in PEAK_WINDOW)
    step = sc.model.step_s
    cap = model.net.capacity
    normal = model.normal_headcount
    moved = np.zeros(len(model.net.edges), dtype=np.int64)
    entered = np.zeros(len(model.net.sources), dtype=np.int64)
    served_peak = 0
    next_obs = model.t + obs_every_s
    actions_key = ""
    end = sc.end_s if until_s is None else until_s
    while model.t < end:
        before = model.totals.exited
        model.step()
        moved += model.last_moved
        entered += model.last_entered
        if peak0 < model.t <= peak1:
            served_peak += model.totals.exited - before
        dens = model.density
        m.peak_density = max(m.peak_density, float(dens.max()))
        m.zone_min_over_4 += float((dens > DANGER_DENSITY).sum()) * step / 60
        counts = model.n * (model.net.area / model.area)
        m.peak_ratio = max(m.peak_ratio, float((counts / cap).max()))
        m.road_cutoff_min += len(model.cut_roads) * step / 60
        m.staff_hours += sum(max(0, h - normal.get(p, 0)) for p, h in model.staff.items()) * step / 3600
        if on_step:
            on_step(model)
        if model.t >= next_obs:
            now = sc.epoch(model.t, tz)
            for obs in cams.observe(now, model.zone_counts(), model.gate_flows(moved, entered), window_s=obs_every_s):
                book.apply(obs)
            moved[:] = 0
            entered[:] = 0
            actions = policy.step(now, book.states(now))
            key = "|".join(sorted(a.model_dump_json() for a in actions))
            if key != actions_key:
                actions_key = key
                model.set_actions(actions)
            next_obs += obs_every_s
    m.throughput_ph = served_peak / ((peak1 - peak0) / 3600)
    m.responses = len(policy.responses_s)
    m.response_min = statistics.fmean(policy.responses_s) / 60 if policy.responses_s else None
    m.arrived = model.totals.arrived
    m.gave_up = model.totals.gave_up
    return m


# ----------------------------------------------------------------------------- the table

ROWS = [
    ("road_cutoff_min", "road-cutoff minutes", "{:.0f}"),
    ("response_min", "mean response time (min)", "{:.1f}"),
    ("staff_hours", "staff-hours above normal", "{:.0f}"),
    ("throughput_ph", "throughput (served/h, 19–22)", "{:.0f}"),
    ("peak_density", "peak density (p/m²)", "{:.2f}"),
    ("zone_min_over_4", "zone-minutes > 4 p/m²", "{:.0f}"),
    ("peak_ratio", "peak load (× capacity)", "{:.2f}"),
    ("gave_up", "arrivals turned away", "{:.0f}"),
]


def summarize(runs: list[Metrics]) -> dict[str, tuple[float | None, float | None, int]]:
    """metric → (mean, sample sd, seeds with a value)."""
    out = {}
    for key, _, _ in ROWS:
        vals = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        if not vals:
            out[key] = (None, None, 0)
        else:
            out[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
    return out


def pct_change(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / old


def table(results: dict[str, list[Metrics]]) -> str:
    """A plain-text (Markdown) table: mean ± sd per policy, % change vs the baseline."""
    names = list(results)
    sums = {n: summarize(results[n]) for n in names}
    head = ["metric"] + [f"{n} (mean ± sd)" for n in names]
    other = "plans" if "plans" in results else next((n for n in names if n not in ("baseline", "none")), None)
    compare = "baseline" in results and other is not None
    if compare:
        head += [f"change ({other} vs baseline)", "district (May Day 2025)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, fmt in ROWS:
        row = [label]
        for n in names:
            mean, sd, k = sums[n][key]
            row.append("—" if mean is None else f"{fmt.format(mean)} ± {fmt.format(sd)}"
                       + (f" ({k}/{len(results[n])} seeds)" if k < len(results[n]) else ""))
        if compare:
            ch = pct_change(sums[other][key][0], sums["baseline"][key][0])
            row.append("—" if ch is None else f"{ch:+.0f} %")
            d = DISTRICT.get(key)
            row.append("" if d is None else f"{d:+.0f} %")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def as_dicts(results: dict[str, list[Metrics]]) -> dict:
    return {n: [asdict(m) for m in runs] for n, runs in results.items()}

