"""The measures planner: one decision cycle for the whole site. Pure (time passed in).

Every ``cycle_s`` (30 s) it turns the fused zone states into the twin's start (unknown zones at
their worst plausible count, :func:`control.optimizer.plausible_counts`), builds the candidate
measures — allowed by their area's level bound, staffed from the reserves, outside their
minimum off-time — and asks the optimiser for the cheapest set that holds every target over
the next 30 minutes. If the optimiser cannot finish within its budget (or fails), the
*rule-based* answer stands in: keep what is in force and add, per zone whose own short-term
forecast (``ZoneState.forecast``) reaches a measure's trigger, the lowest-stage, cheapest
measure that relieves it; ``engine`` says "rules" so the map can show it.

The plan engine (``control/plans.py``) keeps the safety rules around it: sustain, hysteresis,
unknown holds, commander confirmation and the audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from crowdflow import crowd
from crowdflow.records import PEN_FULL_DENSITY, ZoneState
from crowdflow.site import Measure, Site, Text
from crowdflow.vocab import LEVELS, level_rank

from .demand import DemandEstimate
from .dispatch import StaffBook
from .holds import HoldBook, start_queues
from .optimizer import Candidate, Decision, Optimizer, Peak, off_long_enough, on_long_enough, plausible_counts, tod_of
from .twin import Twin, TwinStart, start_flows

CYCLE_S = 30.0
# A decision every cycle; the twin is rolled again (a full plan) when the plan is this old, when
# what is in force changed, or when the fused state (unknown zones at their worst plausible
# count) has drifted from the last plan's own forecast for this minute by more than DRIFT
# (capacity-ratio points, or DRIFT_REL of the forecast, whichever is larger) in a zone near its
# target. Otherwise the last plan stands: its forecast still describes the ground.
REPLAN_MAX_S = 300.0
DRIFT = 0.2
DRIFT_REL = 0.25
RELEVANT = 0.6  # a zone both observed and forecast below this share of its target does not re-plan
# Demand estimate (control/demand.py): a plan's forecast is compared with the fused counts once
# it is LEARN_LAG_MIN old; the twin runs at the estimate, and a change of more than
# DEMAND_REPLAN (relative) since the standing plan's own re-plans.
LEARN_LAG_MIN = 5.0
DEMAND_REPLAN = 0.05


def owner(m: Measure) -> str:
    return m.plans[0]


def order_delay_min(staff: StaffBook, m: Measure) -> float:
    """Minutes from ordering a measure to its acting on the ground: its staff's walk from the
    reserve's base to the farthest of its posts, then its set-up."""
    from .dispatch import BASE

    need = staff.required([m.id])
    travel = max((staff.travel_s(BASE, p) for p in need), default=0.0) / 60
    return travel + m.setup_min


@dataclass
class PlanResult:
    decision: Decision
    engine: str  # "mpc" | "rules"
    at: float
    note: Text | None = None
    why: dict[str, Text] = field(default_factory=dict)


class MeasurePlanner:
    def __init__(self, site: Site, twin: Twin | None, cycle_s: float = CYCLE_S, budget_s: float = 2.0,
                 staff: StaffBook | None = None, tod=None, replan_max_s: float | None = None,
                 holds: HoldBook | None = None):
        self.site = site
        # queue counts reported at the holding areas (report_queue): the planner's start uses the
        # fresh ones instead of its own dead reckoning (``_queues``)
        self.holds = holds or HoldBook(site)
        # time of day the twin starts from (seconds after local midnight); a drill or a demo
        # whose simulator keeps its own clock passes a fixed one
        self.tod = tod or (lambda now: tod_of(now, site.site.timezone))
        self.twin = twin
        self.cycle_s = cycle_s
        self.optimizer = Optimizer(site, twin, budget_s=budget_s) if twin is not None else None
        self.staff = staff or StaffBook(site)
        self.last: PlanResult | None = None
        # full plans at least this often (None: every cycle — the live service's default)
        self.replan_max_s = replan_max_s
        self._plan: tuple | None = None  # (planned at, set in force then, unknown then, demand multiplier, bound then)
        self.plans_run = 0  # full plans (twin rollouts) so far
        self.plans_kept = 0  # cycles answered by the standing plan
        self.owned = {p.id: [m.id for m in site.measures if owner(m) == p.id] for p in site.plans}
        # the online demand multiplier: only for a twin that can be scaled and knows its nominal
        # arrivals; it is never told the evening's multiplier
        learnable = twin is not None and hasattr(twin, "nominal_arrivals") and hasattr(twin, "demand_scale")
        self.demand: DemandEstimate | None = DemandEstimate() if learnable else None
        self._base_scale = float(twin.demand_scale) if learnable else 1.0
        self._qplan: tuple | None = None  # last full plan: (at, in force then, its queue forecasts)
        self._hist: list[tuple] = []  # full plans: (at, tod, in force then, chosen, curves, unknown, multiplier)

    def _learn(self, now: float, counts: Mapping[str, float], unknown: list[str], active: Mapping[str, float]) -> None:
        """Compare the newest plan at least ``LEARN_LAG_MIN`` old with the fused counts now
        (zones known then and now), and fold the error into the demand estimate."""
        if self.demand is None:
            return
        horizon = self.optimizer.horizon_min * 60 if self.optimizer is not None else 1800.0
        old = [i for i, h in enumerate(self._hist) if LEARN_LAG_MIN * 60 <= now - h[0] <= horizon]
        if not old:
            self._hist = [h for h in self._hist if now - h[0] <= horizon]
            return
        at, tod, act0, chosen, curves, unk0, scale = self._hist[old[-1]]
        self._hist = self._hist[old[-1] + 1:]  # used: a window is measured once
        act = frozenset(active)
        curve = curves.get("without") if act == act0 else curves.get("with") if act == chosen else None
        if not curve:
            return
        k = int(round((now - at) / 60.0))
        gone = set(unknown) | set(unk0)
        zs = [z for z in self.site.zones if z.id not in gone and z.id in curve and curve[z.id]]
        if not zs:
            return
        pred = sum(curve[z.id][min(k, len(curve[z.id]) - 1)] * z.capacity for z in zs)
        obs = sum(counts[z.id] for z in zs)
        arr = self.twin.nominal_arrivals(tod, tod + (now - at)) * self._base_scale
        self.demand.update(now, scale, pred, obs, arr, (now - at) / 60.0)

    def zones_at_risk(self, now: float) -> set[str]:
        """Zones the latest plan (at most two cycles old) forecasts past the highest density any
        plan allows (``crowd.PLAN_DENSITY``) *with* the measures it chose — a zone's local
        density (the twin's ``bottleneck`` elements) or the holding areas behind its gates: what
        the level bound allowed cannot keep them safe. The plan engine lets such an area's bound
        reach one level further (``PlanEngine.evaluate``): prediction within reach, as for a
        zone's capacity-ratio forecast, but on safety. It matters most where no camera counts: a
        concourse a surge fills behind a metering raises no level until it is packed.
        A long wait alone (a pen's own queueing target, ``PEN_FULL_DENSITY``) does not lift it:
        lifted for that, stopping alighting went in 35 min early on seed 4 ×1.3 and the
        diverted passengers packed the lower floors (docs/mpc.md, "A surge into a metered
        concourse")."""
        r = self.last
        opt = self.optimizer
        if r is None or r.engine != "mpc" or opt is None or now - r.at > 2 * self.cycle_s:
            return set()
        out = {z for p in r.decision.violations
               if (el := opt.elements.get(p.element)) is not None and el.kind == "bottleneck"
               and (z := opt.zone_of.get(p.element)) is not None}
        q = r.decision.queues.get("with", {})
        return out | {z for g, z in opt.pen_zone.items() if opt.pen_density(q, g) >= crowd.PLAN_DENSITY}

    def areas_with_measures(self) -> set[str]:
        """Every area a measure names: its level bounds measures, and what is in force there is
        the measure set (an area that owns none has nothing in force of its own — never the
        level's old cumulative bundle beside the measures)."""
        return {p for m in self.site.measures for p in m.plans}

    def in_effect_at(self, measure_id: str, since: float) -> float:
        """When a measure in force since ``since`` acts on the ground: its officers in place
        (as dispatched) and its set-up done. Published with the plan state (``PlanState.in_effect``)
        so readers (the what-if, the map) do not derive it on their own."""
        m = self.site.measure_by_id[measure_id]
        arrive = max((t.in_place_at for t in self.staff.teams.get(measure_id, ())), default=since)
        return max(since, arrive) + m.setup_min * 60

    def candidates(self, active: Mapping[str, float], released: Mapping[str, float],
                   bound: Mapping[str, str | None]) -> list[Candidate]:
        out = []
        for m in self.site.measures:
            allowed = any(level_rank(bound.get(p)) >= level_rank(m.level) for p in m.plans)
            on = m.id in active
            staffed = on or self.staff.shortfall(active, m.id) == 0
            since = active.get(m.id, released.get(m.id))
            eff = self.in_effect_at(m.id, since) if on else None
            out.append(Candidate(m, active=on, since=since, delay_min=order_delay_min(self.staff, m), allowed=allowed or on,
                                 staffed=staffed, in_effect_at=eff))
        return out

    def decide(self, now: float, zones: Mapping[str, ZoneState], active: Mapping[str, float],
               released: Mapping[str, float], bound: Mapping[str, str | None], force: bool = False) -> PlanResult:
        """The decision for ``now`` (the previous one while within the cycle)."""
        if self.last is not None and not force and now - self.last.at < self.cycle_s:
            return self.last
        self._now = now
        counts, unknown = plausible_counts(self.site, zones, now)
        self._learn(now, counts, unknown, active)
        if not force and self._plan_stands(now, counts, unknown, active, bound):
            self.plans_kept += 1
            self.last = PlanResult(self.last.decision, "mpc", now, self.last.note, self.last.why)
            return self.last
        cands = self.candidates(active, released, bound)
        result = None
        scale = self.demand.value if self.demand is not None else 1.0
        if self.demand is not None:
            self.twin.demand_scale = self._base_scale * scale
        if self.optimizer is not None:
            try:
                start = TwinStart(self.tod(now), counts, self._queues(now, active), start_flows(zones),
                                  trends=self._trends(now))
                d = self.optimizer.decide(start, cands, now, unknown=unknown)
                if not d.timed_out:
                    result = PlanResult(d, "mpc", now)
            except Exception as e:  # noqa: BLE001 — the rules must answer whatever the twin does
                note = Text(zh=f"预测失败（{type(e).__name__}），按规则预案", en=f"forecast failed ({type(e).__name__}); rule-based plans")
                result = PlanResult(self.rules(zones, cands, unknown), "rules", now, note)
            else:
                if result is None:
                    note = Text(zh=f"预测超时（>{self.optimizer.budget_s:g} 秒），按规则预案",
                                en=f"forecast over its {self.optimizer.budget_s:g} s budget; rule-based plans")
                    result = PlanResult(self.rules(zones, cands, unknown), "rules", now, note)
        else:
            result = PlanResult(self.rules(zones, cands, unknown), "rules", now,
                                Text(zh="无孪生模型，按规则预案", en="no twin; rule-based plans"))
        self.last = result
        self._plan = (now, frozenset(active), frozenset(unknown), scale, dict(bound)) if result.engine == "mpc" else None
        if result.engine == "mpc":
            self._qplan = (now, frozenset(active), result.decision.queues)
        if result.engine == "mpc" and self.demand is not None:
            self._hist.append((now, self.tod(now), frozenset(active), frozenset(result.decision.chosen),
                               result.decision.curves, frozenset(unknown), scale))
        self.plans_run += 1
        return result

    def _queues(self, now: float, active: Mapping[str, float]) -> dict[str, float]:
        """People waiting behind each metered gate now, for the twin's start: the last full
        plan's own forecast for this minute (of the set in force then if it still is, else of
        the set it chose). Cameras count a zone's walkable ground, not its holding pen, so the
        planner keeps the pen's count itself (dead reckoning, refreshed every plan) unless the
        staff or the metro operator reported one lately; started empty, the twin could never
        see a metering's release flush its queue onward."""
        return {**self._reckoned(now, active), **self._measured(now)}

    def _measured(self, now: float) -> dict[str, float]:
        """Fresh reported counts under the twin's queue keys (``control.holds.start_queues``)."""
        return start_queues(self.holds.queues(now), getattr(self.twin, "queue_keys", ()) or ())

    def _trends(self, now: float) -> dict[str, tuple[float, float]]:
        """The reported queues' growth (``HoldBook.trends``) under the twin's queue keys."""
        known = set(getattr(self.twin, "queue_keys", ()) or ())
        return {k: v for k, v in self.holds.trends(now).items() if not known or k in known}

    def _reckoned(self, now: float, active: Mapping[str, float]) -> dict[str, float]:
        """The queues by dead reckoning: the last full plan's forecast for this minute. A fresh
        count reported at a holding area (``HoldBook.queues``) replaces its estimate: a surge
        the plan did not forecast (a bunch of trains) fills a concourse the cameras cannot see."""
        if self._qplan is None:
            return {}
        at, act0, q = self._qplan
        curve = q.get("without") if frozenset(active) == act0 else q.get("with")
        if not curve:
            return {}
        k = max(0, int(round((now - at) / 60.0)))
        return {g: float(s[min(k, len(s) - 1)]) for g, s in curve.items() if s}

    def _plan_stands(self, now: float, counts: Mapping[str, float], unknown: list[str],
                     active: Mapping[str, float], bound: Mapping[str, str | None] | None = None) -> bool:
        """Whether the last full plan still describes the ground (see ``REPLAN_MAX_S``): same
        measures in force (as then, or as it chose), same unknown zones, same level bounds (a
        new bound changes the candidates), young enough, and every known zone within the drift
        of that plan's forecast for this minute."""
        if self.replan_max_s is None or self._plan is None or self.last is None or self.last.engine != "mpc":
            return False
        at, act0, unk0, scale, bound0 = self._plan
        if now - at >= self.replan_max_s:
            return False
        if bound is not None and self._bound_opens(bound0, bound):
            return False
        if self.demand is not None and abs(self.demand.value - scale) > DEMAND_REPLAN * scale:
            return False  # the demand estimate moved: the standing forecast is out of date
        d = self.last.decision
        act = frozenset(active)
        if act == act0:
            curve = d.curves.get("without", {})
        elif act == frozenset(d.chosen):
            curve = d.curves.get("with", {})
        else:
            return False
        k = int(round((now - at) / 60.0))
        targets = self.optimizer.targets if self.optimizer is not None else {}
        for z in self.site.zones:
            if z.id not in curve:  # an unknown zone counts at its worst plausible count
                continue
            series = curve[z.id]
            f = series[min(k, len(series) - 1)]
            obs = counts[z.id] / max(z.capacity, 1)
            if max(obs, f) < RELEVANT * targets.get(z.id, 1.0):
                continue
            if abs(obs - f) > max(DRIFT, DRIFT_REL * f):
                return False
        return not self._queue_drifted(now, active)

    def _bound_opens(self, before: Mapping[str, str | None], now: Mapping[str, str | None]) -> bool:
        """Whether a level bound rose in an area where the standing plan breaks a safety target:
        the measures it may now use were not tried. (Any other change of bound leaves the plan
        standing: re-planned at every level change, seed 0 ×1.3 cut roads 28 min longer and
        packed the lower floors for 3 min — the standing plans' stability is worth keeping.)"""
        if self.last is None or self.optimizer is None:
            return False
        opt = self.optimizer
        unsafe = {opt.zone_of.get(p.element) for p in self.last.decision.violations if p.element in opt.safety}
        return any(level_rank(now.get(p.id)) > level_rank(before.get(p.id)) and unsafe & set(p.zones)
                   for p in self.site.plans)

    def _queue_drifted(self, now: float, active: Mapping[str, float]) -> bool:
        """A reported queue far from the standing plan's own reckoning of it (the same drift
        rule as a zone's, on the holding area's capacity): the surge it did not see."""
        measured = self._measured(now)
        if not measured:
            return False
        reckoned = self._reckoned(now, active)
        full = {h.gate: h.area_m2 * PEN_FULL_DENSITY for h in self.holds.areas.values() if h.queue == "arrivals"}
        for key, q in measured.items():
            cap = full.get(key.split(":", 1)[1], 0.0)
            if cap <= 0:
                continue
            obs, f = q / cap, reckoned.get(key, 0.0) / cap
            if max(obs, f) >= RELEVANT and abs(obs - f) > max(DRIFT, DRIFT_REL * f):
                return True
        return False

    def rules(self, zones: Mapping[str, ZoneState], cands: list[Candidate], unknown: list[str]) -> Decision:
        """Rule-based stand-in: keep what is in force; for each zone whose own forecast reaches a
        measure's trigger (unknown zones: always), add the lowest-stage, cheapest measure."""
        chosen = {c.id for c in cands if c.active}
        reasons: dict[str, Text] = {}
        for zid in sorted(self.site.zone_by_id):
            s = zones.get(zid)
            relieving = [c for c in cands if zid in c.measure.relieves and c.allowed and c.staffed
                         and off_long_enough(c, self._now)]
            if not relieving or any(c.id in chosen for c in relieving):
                continue
            if s is None or s.status != "ok":
                peak = None
            else:
                peak = max([s.capacity_ratio or 0.0] + [f.capacity_ratio for f in s.forecast])
            hit = [c for c in relieving if peak is None or peak >= c.measure.trigger.forecast_ratio]
            if not hit:
                continue
            c = min(hit, key=lambda c: (c.measure.stage, Optimizer.cost(c.measure, self.site)))
            chosen.add(c.id)
            z = self.site.zone_by_id[zid]
            what = (Text(zh=f"{z.name.zh} 无数据（按最不利估计）", en=f"{z.name.en} unknown (worst plausible)") if peak is None
                    else Text(zh=f"{z.name.zh} 预测承载率 {peak:.2f} ≥ {c.measure.trigger.forecast_ratio:.2f}",
                              en=f"{z.name.en} forecast load {peak:.2f} ≥ {c.measure.trigger.forecast_ratio:.2f}"))
            reasons[c.id] = Text(zh=f"启用{c.measure.name.zh}（规则预案）——{what.zh}",
                                 en=f"switch on {c.measure.name.en} (rule-based) — {what.en}")
        # release: a measure past its minimum on-time whose relieved zones are all known and, now
        # and in their own forecast, below its release ratio (the plan engine still applies
        # quiet_min before it goes)
        off = []
        waved: set[str] = set()  # plan areas that released one already (in waves, dearest first)
        for c in sorted(cands, key=lambda c: -Optimizer.cost(c.measure, self.site)):
            if not c.active or c.id in reasons or waved & set(c.measure.plans):
                continue
            m = c.measure
            if not on_long_enough(c, self._now):
                continue
            states = [zones.get(z) for z in m.relieves]
            if any(s is None or s.status != "ok" for s in states):
                continue
            peak = max(max([s.capacity_ratio or 0.0] + [f.capacity_ratio for f in s.forecast]) for s in states)
            if peak < m.release.forecast_ratio:
                chosen.discard(c.id)
                off.append(c.id)
                waved |= set(m.plans)
                reasons[c.id] = Text(zh=f"解除{m.name.zh}（规则预案）——相关区域预测承载率 {peak:.2f} < {m.release.forecast_ratio:.2f}",
                                     en=f"release {m.name.en} (rule-based) — relieved zones forecast {peak:.2f} < {m.release.forecast_ratio:.2f}")
        on = sorted(chosen - {c.id for c in cands if c.active})
        return Decision(chosen=sorted(chosen), on=on, off=sorted(off), feasible=False, violations=[], reasons=reasons,
                        peaks={}, unknown=list(unknown))


def level_needed(site: Site, measure_ids) -> str | None:
    """The lowest level that allows all these measures (None for none)."""
    top = None
    for mid in measure_ids:
        lv = site.measure_by_id[mid].level
        if top is None or LEVELS.index(lv) > LEVELS.index(top):
            top = lv
    return top


__all__ = ["MeasurePlanner", "PlanResult", "level_needed", "order_delay_min", "owner", "Peak"]


class BackgroundPlanner:
    """Runs a :class:`MeasurePlanner`'s decisions on one worker thread so the control loop
    (leases, observations, commands) never waits on a rollout. ``decide`` starts a decision
    when the cycle is due and none is running, and returns the latest finished one (None
    before the first). The decision itself is pure and stays under its own time budget."""

    def __init__(self, planner: MeasurePlanner):
        from concurrent.futures import ThreadPoolExecutor

        self.inner = planner
        self.staff = planner.staff
        self.owned = planner.owned
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mpc")
        self._fut = None
        self._asked_at = float("-inf")

    def areas_with_measures(self) -> set[str]:
        return self.inner.areas_with_measures()

    @property
    def holds(self):  # the plan engine hands its queue-count book to the planner it runs
        return self.inner.holds

    @holds.setter
    def holds(self, book) -> None:
        self.inner.holds = book

    @property
    def last(self) -> PlanResult | None:
        return self.inner.last

    def decide(self, now, zones, active, released, bound, force: bool = False) -> PlanResult | None:
        if self._fut is not None and self._fut.done():
            self._fut.result()  # re-raises nothing: the planner falls back to the rules itself
            self._fut = None
        if self._fut is None and (force or now - self._asked_at >= self.inner.cycle_s):
            self._asked_at = now
            self._fut = self._pool.submit(self.inner.decide, now, dict(zones), dict(active), dict(released),
                                          dict(bound), True)
        return self.inner.last

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
