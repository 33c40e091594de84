"""Model-predictive choice of measures. Pure: the twin, the state and the clock are passed in.

Each decision rolls the twin forward ``horizon_min`` (30) for a few candidate measure sets and
keeps the cheapest set that holds every element (zone, holding area, bottleneck) under its
target, starting from the measures in force (switching has a cost too):

1. **Keep or release.** If the set in force holds the forecast, try releasing each releasable
   measure (past its minimum on-time, counted from its effect on the ground), dearest first: it
   goes when the forecast *without* it keeps its zones below its release ratio (lower than the
   trigger: hysteresis) and every element under target (the twin starts with the queues behind
   metered gates, so a metering's release shows its queue going onto the ground beyond); one
   per plan area per decision (``RELEASE_IN_WAVES``). Safety before service: a metering whose
   pen the forecast packs past the plans' density goes (urgent) whenever the forecast without
   it is safer, whatever service targets the crowd it lets out breaks (``SAFETY_FIRST_RELEASE``).
2. **Add, cheapest lever first.** If the forecast breaks a target, add measures greedily:
   candidates are those the level allows, whose own trigger fires on the forecast (a relieved
   zone reaches the trigger ratio within the trigger's lead), whose staff the reserves can
   supply, and which are not within their minimum off-time. Only the lowest ``stage`` with a
   candidate that helps is tried (metering before flow control before closures); among them
   the one that removes the most excess per unit of cost wins. Repeat until the forecast holds
   or nothing helps.
3. **Prune.** A measure added early that a later one made redundant is dropped again.

Every new measure takes effect after its staff's travel and set-up, every released one after
its tear-down: the rollouts schedule them so. If the decision runs past its time budget it stops
and says so (``timed_out``); the caller answers with the rule-based plans.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

import numpy as np

from crowdflow import crowd
from crowdflow.records import PEN_FULL_DENSITY, ZoneState
from crowdflow.site import Action, Measure, MeteringAction, Site, Text

from .holds import TREND_WINDOW_S
from .twin import Rollout, Twin, TwinStart, rollouts

HORIZON_MIN = 30.0
UNKNOWN_FLOOR = 0.9  # an unknown zone not seen for 5 minutes is assumed at this share of its capacity …
UNKNOWN_RECENT_S = 300.0  # … one seen within 5 minutes at its last count grown by UNKNOWN_GROWTH …
UNKNOWN_GROWTH = 1.15
# … plus this many p/m² for each minute since (at most the floor, or the grown count if higher).
# A camera that misses a window or blinks off for 45 s (sim.cameras.Faults: twice an hour each)
# is not a zone that filled up: taken at 0.9 of capacity, the bridge's south walkway read 459
# people 30 s after its camera saw 107, the forecast jammed its viewing span whatever was done,
# and the metering that kept it safe was released as useless (docs/mpc.md, "Blinking cameras").
UNKNOWN_SURGE = 0.05
DEFAULT_TARGET = 0.9  # LB/T 068 orange (≥ 90 %) for zones no measure names
HOLDING_TARGET = 1.0
TURNED_AWAY_PER_COST = 25.0  # people turned away (gave up in a holding queue) worth one cost unit (≈ an officer for the horizon)
GRACE_MIN = 5.0  # targets are judged from this minute on: no measure undoes a crowd already there sooner
# Two kinds of target. *Safety* (local density, queue waits, holding areas: what makes an evening
# unsafe on the yardstick — 4 p/m² anywhere, a p95 wait over 15 min) may be answered by any
# measure the level allows, closures included. *Service* (a zone's capacity ratio under the
# LB/T 068 threshold of its area's first level with a measure — the level a commander would
# switch at) is answered only by measures up to SERVICE_MAX_STAGE (metering, information, flow
# control): a road is closed only when the cheaper levers cannot keep the crowd safe.
SAFETY_KINDS = ("bottleneck", "holding", "queue")
SAFETY_WEIGHT = 4.0  # a unit of safety excess outweighs this many units of service excess
SERVICE_MAX_STAGE = 2
MIN_GAIN_PER_COST = 0.002  # a measure goes on only if it removes at least this much excess per cost unit …
RELEASE_GAIN_PER_COST = 0.001  # … and comes off when it removes less than this (hysteresis)
# Release in waves (as the plan engine releases levels): at most one measure of a plan area per
# decision, the dearest first; the next one is judged on the ground the first one left. Released
# together, a one-way and the metering at its walkway's entry let the metered queue onto a
# walkway turning two-way — a counterflow jam the 15-s planning twin does not show and the
# evening does (tests/test_mpc_release.py).
RELEASE_IN_WAVES = True
# A release the forecast says makes the evening *safer* (a metering whose own queue floods its
# pen) is marked urgent: the plan engine does not hold it for the measure's release quiet time,
# which is hysteresis against releasing into a rebound, not against relieving a breach
# (docs/mpc.md, "The 11F pen flood").
SAFETY_RELEASE_NOW = True
# ... and, when kept it would pack its own holding area past the plans' density (``_pen_packs``),
# it goes even though what it lets out breaks *service* targets (a zone's capacity ratio):
# safety is judged first, service only between sets equally safe.
SAFETY_FIRST_RELEASE = True
# Issue 11: no measure switched on and off more than once in 20 minutes (on the ground; the
# yardstick's flap count). An urgent release skips the quiet time that kept it, so the re-on
# after any release waits long enough instead (``off_long_enough``).
FLAP_WINDOW_S = 20 * 60
# A metering is not released while more people wait behind its gates than it lets through in
# this many minutes — unless they fill its holding area (a crush in the pen: "The 11F pen
# flood"). Released, the queue walks onto the ground beyond the gate at once, faster than the
# planning twin shows. Traced on seed 8 ×1.0 (21:33–21:39): released with 183–233 waiting, the
# east walkway jammed at 4.0–4.3 p/m² for 7 minutes, the twin showing the release as safe; seed 1
# ×1.3 (20:17): released "urgent" for a forecast 24-min wait with 341 waiting in a 300 m² pen
# (1.1 p/m²), the walkway was at 3.5–4.3 p/m² from 20:23 to 20:39 (docs/mpc.md, "Ground and lead").
# A long wait is answered by stopping entry (``stop-bridge``), not by letting the queue through.
RELEASE_QUEUE_MIN = 3.0
# A surge at a holding area (offset-free MPC's input disturbance, on the queues the staff and the
# metro operator count): the queue's measured growth (``TwinStart.trends``) beyond what the twin
# makes of the same start and measures over SURGE_PROBE_MIN minutes becomes extra arrivals
# (``TwinStart.surge``) in every rollout of the decision — when it is both above SURGE_MIN_PM
# people a minute and SURGE_SIGMAS standard errors of the measured growth (so that the counts'
# own scatter does not invent one). Traced on seed 1 ×1.0 (20:15–20:25): the exit-9 concourse
# grew ≈125 people a minute from 20:15 while every forecast drained it; the measure that answers
# it was ordered at 20:21, with the concourse at 2.9 p/m², and acted at 20:28.
SURGE_PROBE_MIN = 2.0
SURGE_MIN_PM = 20.0
SURGE_SIGMAS = 3.0


def plausible_counts(site: Site, zones: Mapping[str, ZoneState], now: float) -> tuple[dict[str, float], list[str]]:
    """People on each zone's own walkable ground for the twin's start, and the zones that
    were unknown. Unknown is never empty: an unknown zone is taken at the worst plausible
    count. Seen within ``UNKNOWN_RECENT_S``: its last count × ``UNKNOWN_GROWTH`` plus
    ``UNKNOWN_SURGE`` p/m² per minute since, up to the floor below (or the grown count, if that
    is higher). Not seen for longer, or never: at least ``UNKNOWN_FLOOR`` of its capacity, or
    its last count grown, whichever is higher."""
    out, unknown = {}, []
    for z in site.zones:
        s = zones.get(z.id)
        if s is not None and s.status == "ok" and s.density is not None:
            out[z.id] = s.density * z.walkable_area_m2
            continue
        unknown.append(z.id)
        worst = UNKNOWN_FLOOR * z.capacity
        lk = s.last_known if s is not None else None
        if lk is not None and now - lk.at <= UNKNOWN_RECENT_S:
            grown = lk.density * z.walkable_area_m2 * UNKNOWN_GROWTH
            surge = UNKNOWN_SURGE * z.walkable_area_m2 * max(0.0, now - lk.at) / 60.0
            worst = min(grown + surge, max(worst, grown))
        out[z.id] = worst
    return out, unknown


@dataclass(frozen=True)
class Candidate:
    measure: Measure
    active: bool = False
    since: float | None = None  # when it came into force (active) or was released (not active)
    delay_min: float = 0.0  # switched on now: staff travel + set-up until it acts
    allowed: bool = True  # the level allows it
    staffed: bool = True  # the reserves can supply its staff (with what is in force)
    # in force: when it took (or will take) effect on the ground — its staff in place plus its
    # set-up. Its minimum on-time counts from then, not from the order: a measure whose staff
    # walked 13 minutes was on the ground 9 minutes when its 10-minute minimum had passed, and
    # switched on again soon after, it counted three switches within 20 minutes
    in_effect_at: float | None = None

    @property
    def id(self) -> str:
        return self.measure.id


def off_long_enough(c: Candidate, now: float) -> bool:
    """Whether a released measure may be switched on again: past its minimum off-time, and late
    enough that off → on → off spans the flap window on the ground even if the next release is
    urgent (no quiet time, ``SAFETY_RELEASE_NOW``): back on the ground after its set-up, it stays
    its minimum on-time, so the order waits until ``FLAP_WINDOW_S`` − set-up − min on-time after
    the release. on → off → on spans that wait + min on + set-up + tear-down ≥ the window too."""
    if c.active or c.since is None:
        return True
    m = c.measure
    return now - c.since >= max(m.min_off_min * 60, FLAP_WINDOW_S - (m.setup_min + m.min_on_min) * 60)


def on_long_enough(c: Candidate, now: float) -> bool:
    """Whether a measure in force has been in effect on the ground for its minimum on-time."""
    t0 = max((t for t in (c.since, c.in_effect_at) if t is not None), default=None)
    return t0 is None or now - t0 >= c.measure.min_on_min * 60


@dataclass
class Peak:
    element: str
    load: float
    minute: float


@dataclass
class Decision:
    chosen: list[str]  # the measure set to have in force
    on: list[str]
    off: list[str]
    feasible: bool  # the chosen set holds every target over the horizon
    violations: list[Peak]  # elements over target with the chosen set
    reasons: dict[str, Text]  # measure id → why (with / without)
    peaks: dict[str, Peak]  # element → peak with the chosen set
    rollouts: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False
    unknown: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # "with"/"without" → element → loads
    queues: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # "with"/"without" → metered gate → people held
    # measure → (the element its reason names, its peak without the change, minute of that peak,
    # minute the element first reaches the measure's trigger without it, or None)
    focus: dict[str, tuple[str, float, float, float | None]] = field(default_factory=dict)
    urgent_off: list[str] = field(default_factory=list)  # releases that remove forecast safety excess
    surge: dict[str, float] = field(default_factory=dict)  # queue → extra arrivals a minute the forecast added (TwinStart.surge)


def _hhmm(tod_s: float) -> str:
    t = int(round(tod_s)) % 86400
    return f"{t // 3600:02d}:{t % 3600 // 60:02d}"


class Optimizer:
    def __init__(self, site: Site, twin: Twin, horizon_min: float = HORIZON_MIN, every_min: float = 1.0,
                 budget_s: float = 2.0, clock: Callable[[], float] = time.perf_counter):
        self.site = site
        self.twin = twin
        self.horizon_min = horizon_min
        self.every_min = every_min
        self.budget_s = budget_s
        self.grace_min = GRACE_MIN
        self.clock = clock
        self.elements = dict(twin.elements())
        self.targets = self._targets()
        self._now: float | None = None  # the decision's time: measures in force act from ``in_effect_at``
        self._pen_m2: dict[str, float] = {}  # gate → area of its arrivals' holding areas
        self.pen_zone: dict[str, str] = {}  # gate → the zone its arrivals' holding areas are in
        for h in site.holding_areas:
            if h.queue == "arrivals":
                self._pen_m2[h.gate] = self._pen_m2.get(h.gate, 0.0) + h.area_m2
                self.pen_zone.setdefault(h.gate, h.zone)

    def _targets(self) -> dict[str, float]:
        """Per element: its target load. Zones: the capacity ratio at the LB/T 068 threshold of
        the first level of their area that has a measure (lowest over areas), or a relieving
        measure's trigger if lower; safety elements: 1.0 (the twin normalises them)."""
        from crowdflow.site import BroadcastAction, StaffingAction

        t: dict[str, float] = {}
        for m in self.site.measures:
            for z in m.relieves:
                t[z] = min(t.get(z, 9.9), m.trigger.forecast_ratio)
        for pl in self.site.plans:
            lv = next((lv for lv in pl.levels if lv.triggers.capacity_ratio is not None and any(
                not isinstance(a, (StaffingAction, BroadcastAction)) for a in lv.actions)), None)
            if lv is None:
                continue
            for z in pl.zones:
                t[z] = min(t.get(z, 9.9), lv.triggers.capacity_ratio)
        out = {}
        self.zone_of: dict[str, str | None] = {}
        for eid, el in self.elements.items():
            if el.kind == "zone":
                out[eid] = t.get(eid, DEFAULT_TARGET)
                self.zone_of[eid] = eid
            else:
                out[eid] = HOLDING_TARGET
                self.zone_of[eid] = getattr(el, "zone", None) or (eid.split(":", 1)[1] if eid.startswith(("local:", "wait:")) else None)
        self.safety = {eid for eid, el in self.elements.items() if el.kind in SAFETY_KINDS}
        return out

    @staticmethod
    def cost(m: Measure, site: Site) -> float:
        """Scalar cost of a measure in force over the horizon: extra staff + traffic + other."""
        from crowdflow.site.measures import staff_needed

        staff = sum(n for a in m.actions for n in staff_needed(site, a).values())
        return 1.0 + staff + m.cost.traffic_per_h * 0.5 + m.cost.other

    # ------------------------------------------------------------------ rollouts

    def schedule(self, cands: Mapping[str, Candidate], chosen: Iterable[str], base: Sequence[Action],
                  now: float | None = None):
        """The action set from each minute: measures on the ground now, then each chosen one
        from when it will act. A new measure acts after ``delay_min`` (staff travel + set-up);
        one already in force but not yet on the ground (``in_effect_at`` after ``now``: its
        officers still walking or setting up) from then, not from minute 0 — the twin must not
        spread the counts over a carriageway it has not freed yet; released before it acted,
        it never acts. A released measure that acts keeps acting through its tear-down."""
        chosen = set(chosen)

        def joins(c: Candidate) -> float | None:
            """Minute the candidate starts to act under this set (None: not within it)."""
            if c.id in chosen and not c.active:
                return c.delay_min
            if not c.active:
                return None
            pending = (c.in_effect_at - now) / 60.0 if now is not None and c.in_effect_at is not None else 0.0
            if c.id in chosen:
                return max(0.0, pending)
            return 0.0 if pending <= 0 else None

        on_at = {c.id: joins(c) for c in cands.values()}
        events: dict[float, None] = {0.0: None}
        for c in cands.values():
            if on_at[c.id] is not None:
                events[on_at[c.id]] = None
            if c.active and c.id not in chosen and on_at[c.id] is not None:
                events[float(c.measure.teardown_min)] = None
        sched = []
        for t in sorted(events):
            acts = list(base)
            for c in cands.values():
                t_on = on_at[c.id]
                if t_on is None or t < t_on:
                    continue
                if c.id in chosen or t < c.measure.teardown_min:
                    acts.extend(c.measure.actions)
            sched.append((t, acts))
        return sched

    def _roll(self, start: TwinStart, cands, chosen, base) -> Rollout:
        self._n += 1
        return self.twin.rollout(start, self.schedule(cands, chosen, base, self._now), self.horizon_min,
                                 self.every_min)

    def _roll_many(self, start: TwinStart, cands, sets: Sequence[frozenset], base) -> list[Rollout]:
        """Several measure sets in one call (the twin may share their common prefix)."""
        self._n += len(sets)
        return rollouts(self.twin, start, [self.schedule(cands, s, base, self._now) for s in sets],
                        self.horizon_min, self.every_min)

    def _queue_now(self, m: Measure, start: TwinStart) -> tuple[float, bool]:
        """A metering's queue now (``start.queues``: held at its sources and waiting at its
        gates): the minutes it takes to pass at the metered rate, and whether it fills the
        holding areas of its gates (``PEN_FULL_DENSITY``: a crush risk in the pen, which only
        letting people through relieves — or will within ``RELEASE_QUEUE_MIN`` at the growth of a
        measured surge, ``TwinStart.surge``). (0, False) for a measure that meters nothing."""
        rate = queued = 0.0
        full = False
        for a in m.actions:
            if isinstance(a, MeteringAction):
                q = start.queues.get(f"port:{a.gate}", 0.0) + start.queues.get(f"hold:{a.gate}", 0.0)
                rate += a.per_min
                queued += q
                # per gate: one metering at two exits must not let the empty concourse of one
                # hide the packed concourse of the other (seed 1 ×1.1: exit 9 at 535 people
                # and a surge, exit 6 empty, judged "not full" on their summed area). A measured
                # surge fills the pen faster than the metering lets it out: full within the
                # minutes a release takes to act counts as full now.
                soon = start.surge.get(f"hold:{a.gate}", 0.0) * RELEASE_QUEUE_MIN
                pen = self._pen_m2.get(a.gate, 0.0)
                full = full or (pen > 0 and q > 0 and q + soon >= pen * PEN_FULL_DENSITY)
        if queued <= 0:
            return 0.0, False
        return (queued / rate if rate > 0 else float("inf")), full

    def _pen_packs(self, m: Measure, r: Rollout) -> bool:
        """Whether, kept, a metering packs one of its gates' holding areas to the highest density
        any plan allows (``crowd.PLAN_DENSITY``, 3.5 p/m²; danger is 4) within the horizon — not
        merely past the pen's own queueing target (``PEN_FULL_DENSITY``, 2): only then is letting
        the queue onto the exit beyond it worth the service it costs. Traced on seed 0 ×1.3
        (19:09): let go for a pen forecast at 2.7 p/m², the 453 people it held packed exit 6's
        130 m² to 4.0 p/m² for 6.6 minutes. On seed 6 ×1.1 (20:19) a line at 4 p/m² kept it
        for a forecast 3.7 and the concourse reached 4.6."""
        sl = self._judged(r)
        return any(self.pen_density(r.queues, a.gate, sl) >= crowd.PLAN_DENSITY
                   for a in m.actions if isinstance(a, MeteringAction))

    def pen_density(self, queues: Mapping[str, Sequence[float]], gate: str, sl: slice = slice(None)) -> float:
        """Peak people per m² of a gate's arrivals holding areas over queue series keyed as the
        twin's (``hold:<gate>`` held at its sources plus ``port:<gate>`` waiting at it); 0 for a
        gate without a pen or a queue."""
        pen = self._pen_m2.get(gate, 0.0)
        parts = [np.asarray(queues[k], dtype=float)[sl] for k in (f"hold:{gate}", f"port:{gate}") if k in queues]
        held = sum(parts) if parts else np.zeros(0)
        return float(np.max(held)) / pen if pen > 0 and np.size(held) else 0.0

    def _judged(self, r: Rollout) -> slice:
        return slice(int(np.searchsorted(r.minutes, self.grace_min)), None)

    def _excess_parts(self, r: Rollout) -> tuple[float, float]:
        """(service excess, safety excess): per element over target, its peak excess plus its
        mean excess over the judged minutes."""
        serv = safe = 0.0
        sl = self._judged(r)
        for eid, series in r.load.items():
            over = series[sl] - self.targets[eid]
            if over.max() > 0:
                e = float(over.max()) + float(np.clip(over, 0, None).mean())
                if eid in self.safety:
                    safe += e
                else:
                    serv += e
        return serv, safe

    def _excess(self, r: Rollout) -> float:
        serv, safe = self._excess_parts(r)
        return serv + SAFETY_WEIGHT * safe

    def _violations(self, r: Rollout) -> list[Peak]:
        out = []
        sl = self._judged(r)
        minutes = r.minutes[sl]
        for eid, series in r.load.items():
            k = int(np.argmax(series[sl]))
            if series[sl][k] >= self.targets[eid]:
                out.append(Peak(eid, float(series[sl][k]), float(minutes[k])))
        return sorted(out, key=lambda p: -p.load / self.targets[p.element])

    def _first_over(self, r: Rollout, eid: str, ratio: float) -> float | None:
        idx = np.flatnonzero(r.load[eid] >= ratio)
        return float(r.minutes[idx[0]]) if idx.size else None

    # ------------------------------------------------------------------ the decision

    def decide(self, start: TwinStart, candidates: Sequence[Candidate], now: float,
               base_actions: Sequence[Action] = (), unknown: Sequence[str] = ()) -> Decision:
        t0 = self.clock()
        deadline = t0 + self.budget_s
        self._n = 0
        self._now = now
        cands = {c.id: c for c in candidates}
        cost = {c.id: self.cost(c.measure, self.site) for c in candidates}
        current = {c.id for c in candidates if c.active}
        chosen = set(current)
        timed_out = False
        start = replace(start, surge=self._surge(start, cands, current, base_actions))
        r_cur = self._roll(start, cands, chosen, base_actions)
        r = r_cur
        runs: dict[frozenset, Rollout] = {frozenset(chosen): r}

        def over_time() -> bool:
            return self.clock() > deadline

        def roll(key: frozenset) -> Rollout:
            """The rollout of one measure set, each set rolled at most once per decision."""
            if key not in runs:
                runs[key] = self._roll(start, cands, key, base_actions)
            return runs[key]

        def prefetch(keys: Iterable[frozenset]) -> None:
            """Roll the sets of one search step not rolled yet together, within the budget."""
            todo = list(dict.fromkeys(k for k in keys if k not in runs))
            if len(todo) > 1 and not over_time():
                runs.update(zip(todo, self._roll_many(start, cands, todo, base_actions)))

        def releasable(c: Candidate) -> bool:
            return c.active and on_long_enough(c, now)

        def returnable(c: Candidate) -> bool:
            return off_long_enough(c, now)

        # 1. add, cheapest lever first, while the forecast breaks a target
        added: list[str] = []
        while self._excess(r) > 0 and not timed_out:
            viol = {p.element for p in self._violations(r)}
            pool = []
            for c in cands.values():
                if c.id in chosen or not (c.allowed and c.staffed and returnable(c)):
                    continue
                trig = c.measure.trigger
                rel = set(c.measure.relieves)
                # safety: any element of a relieved zone over its target within the horizon
                unsafe = any(e in self.safety and self.zone_of.get(e) in rel for e in viol)
                # service: a relieved zone reaches its target within the trigger's lead
                service = c.measure.stage <= SERVICE_MAX_STAGE and any(
                    z in viol and (t := self._first_over(r, z, self.targets[z])) is not None
                    and t <= trig.lead_min + c.delay_min
                    for z in rel)
                if unsafe or service:
                    pool.append(c)
            if not pool:
                break
            best = None
            for stage in sorted({c.measure.stage for c in pool}):
                prefetch(frozenset(chosen | {c.id}) for c in pool if c.measure.stage == stage)
                for c in sorted((c for c in pool if c.measure.stage == stage), key=lambda c: cost[c.id]):
                    if over_time():
                        timed_out = True
                        break
                    rc = roll(frozenset(chosen | {c.id}))
                    gain = self._excess(r) - self._excess(rc)
                    price = cost[c.id] + max(0.0, rc.turned_away - r.turned_away) / TURNED_AWAY_PER_COST
                    if gain >= MIN_GAIN_PER_COST * price and (best is None or gain / price > best[0]):
                        best = (gain / price, c.id, rc)
                if best is not None or timed_out:
                    break  # a later stage only when no earlier lever helps
            if best is None:
                break
            chosen.add(best[1])
            added.append(best[1])
            r = best[2]
        # 2. prune what a later addition made redundant (cheapest first kept longest)
        for mid in sorted(added[:-1], key=lambda m: (-cost[m], m)):
            if over_time():
                timed_out = True
                break
            rc = roll(frozenset(chosen - {mid}))
            if self._excess(rc) <= self._excess(r) + 1e-9 and rc.turned_away <= r.turned_away + TURNED_AWAY_PER_COST * cost[mid]:
                chosen.discard(mid)
                r = rc
        # 3. release (dearest first) what the forecast no longer needs: its relieved zones stay
        # below its release ratio without it (hysteresis against the trigger), or it removes
        # less excess than its cost is worth (hysteresis against the add rule) — a metering
        # whose own holding queue now breaks the wait target removes less than nothing.
        released_in: set[str] = set()
        urgent: list[str] = []
        for mid in sorted((m for m in current if m in chosen and releasable(cands[m])), key=lambda m: (-cost[m], m)):
            if over_time():
                timed_out = True
                break
            if RELEASE_IN_WAVES and released_in & set(cands[mid].measure.plans):
                continue  # one release per area per decision: the next once this one has settled
            rc = roll(frozenset(chosen - {mid}))
            rel = cands[mid].measure.release
            calm = all(float(rc.load[z].max()) < rel.forecast_ratio for z in cands[mid].measure.relieves
                       if z in rc.load)
            _, safe_with = self._excess_parts(r)
            _, safe_without = self._excess_parts(rc)
            helps = self._excess(rc) - self._excess(r)
            price = cost[mid] + max(0.0, r.turned_away - rc.turned_away) / TURNED_AWAY_PER_COST
            # safety before service: a release that makes the evening safer goes even where the
            # crowd it lets out costs service (the exit-9 concourse packed by a surge, let out onto
            # its exit and the sidewalk: docs/mpc.md, "A surge into a metered concourse")
            safer = (SAFETY_FIRST_RELEASE and safe_without < safe_with - 1e-9
                     and self._pen_packs(cands[mid].measure, r))
            if safer or (safe_without <= safe_with + 1e-9 and ((calm and helps <= 1e-9) or helps < RELEASE_GAIN_PER_COST * price)):
                wait_min, pen_full = self._queue_now(cands[mid].measure, start)
                if wait_min > RELEASE_QUEUE_MIN and not pen_full:
                    continue  # its queue first: the metering lets it drain at its rate
                chosen.discard(mid)
                r = rc
                released_in |= set(cands[mid].measure.plans)
                if SAFETY_RELEASE_NOW and safe_without < safe_with - 1e-9:
                    urgent.append(mid)
        # reasons: with / without each changed measure
        reasons: dict[str, Text] = {}
        self._focus = {}
        on = sorted(chosen - current)
        off = sorted(current - chosen)
        prefetch(frozenset(chosen - {mid}) if mid in on else frozenset(chosen | {mid}) for mid in on + off)
        for mid in on + off:
            other = frozenset(chosen - {mid}) if mid in on else frozenset(chosen | {mid})
            r_other = runs.get(other)
            if r_other is None and not over_time():
                r_other = runs[other] = self._roll(start, cands, other, base_actions)
            with_r, without_r = (r, r_other) if mid in on else (r_other, r)
            reasons[mid] = self._reason(start, cands[mid].measure, with_r, without_r, mid in on)
        peaks = {}
        for eid in r.load:
            p, t = r.peak(eid, self.grace_min)
            peaks[eid] = Peak(eid, p, t)
        curves = {"with": {e: [round(float(x), 3) for x in s] for e, s in r.load.items()},
                  "without": {e: [round(float(x), 3) for x in s] for e, s in r_cur.load.items()}}
        queues = {"with": {g: [round(float(x), 1) for x in s] for g, s in r.queues.items()},
                  "without": {g: [round(float(x), 1) for x in s] for g, s in r_cur.queues.items()}}
        timed_out = timed_out or over_time()  # an answer after the budget is not an answer
        return Decision(chosen=sorted(chosen), on=on, off=off, feasible=self._excess(r) <= 0,
                        violations=self._violations(r), reasons=reasons, peaks=peaks, rollouts=self._n,
                        elapsed_s=self.clock() - t0, timed_out=timed_out, unknown=list(unknown), curves=curves,
                        queues=queues, focus=dict(self._focus), urgent_off=urgent, surge=dict(start.surge))

    def _surge(self, start: TwinStart, cands, current: set[str], base) -> dict[str, float]:
        """Extra arrivals a minute at each holding area whose reported queue grows faster than
        the twin grows it from the same start under the measures in force (see SURGE_PROBE_MIN)."""
        if not start.trends:
            return {}
        self._n += 1
        # what acts on the ground now, nothing ordered: the reports measured the queue under it
        # (a diversion due in a minute would drain the twin's queue and pass for a surge)
        now = self._now
        acts = list(base)
        for mid in sorted(current):
            c = cands[mid]
            if c.in_effect_at is None or now is None or c.in_effect_at <= now:
                acts.extend(c.measure.actions)
        probe = self.twin.rollout(replace(start, surge={}), [(0.0, acts)], SURGE_PROBE_MIN, 1.0)
        # a measure at the gate that came into effect or was lifted while the reports were taken
        # changed the queue's course: the growth measured under both says nothing of arrivals
        moved: set[str] = set()
        for c in cands.values():
            t = c.in_effect_at if c.active else c.since
            if t is not None and now is not None and now - TREND_WINDOW_S <= t <= now:
                moved |= {f"hold:{g}" for a in c.measure.actions if (g := getattr(a, "gate", None))}
        out = {}
        for key, (slope, se) in start.trends.items():
            q = probe.queues.get(key)
            if q is None or len(q) < 2 or key in moved:
                continue
            extra = slope - float(q[-1] - q[0]) / float(probe.minutes[-1] - probe.minutes[0])
            if extra > max(SURGE_MIN_PM, SURGE_SIGMAS * se):
                out[key] = round(extra, 1)
        return out

    def _reason(self, start: TwinStart, m: Measure, with_r: Rollout | None, without_r: Rollout | None,
                switching_on: bool) -> Text:
        """"with: 沧白路人行道 peaks at 0.82 at 20:10; without: 1.14 at 20:05" for the relieved
        element the measure changes most."""
        if with_r is None or without_r is None:
            return Text(zh=f"{m.name.zh}：预测未完成（超时）", en=f"{m.name.en}: forecast not finished (time budget)")
        relieved = [z for z in m.relieves if z in with_r.load]
        # the relieved zone whose forecast the measure answers: the highest peak without it
        g = self.grace_min
        z = max(relieved, key=lambda e: (without_r.peak(e, g)[0] - with_r.peak(e, g)[0] > 0.005, without_r.peak(e, g)[0]))
        el = self.elements[z]
        pw, tw = with_r.peak(z, g)
        po, to = without_r.peak(z, g)
        at_w, at_o = _hhmm(start.tod_s + tw * 60), _hhmm(start.tod_s + to * 60)
        self._focus[m.id] = (z, po, to, self._first_over(without_r, z, m.trigger.forecast_ratio))
        verb_zh = "启用" if switching_on else "解除"
        verb_en = "switch on" if switching_on else "release"
        tail_zh = tail_en = ""
        for key, per_min in sorted(start.surge.items()):  # the counts behind a forecast the curves alone would not make
            h = self.elements.get(key)
            if h is not None and h.zone in m.relieves:
                tail_zh += f"；现场报数：{h.name.zh}每分钟比预测多增 {per_min:.0f} 人"
                tail_en += f"; counted: {h.name.en} growing {per_min:.0f} people/min beyond the forecast"
        return Text(
            zh=f"{verb_zh}{m.name.zh}——采取：{el.name.zh} 峰值 {pw:.2f}（{at_w}）；不采取：{po:.2f}（{at_o}）{tail_zh}",
            en=f"{verb_en} {m.name.en} — with: {el.name.en} peaks at {pw:.2f} at {at_w}; without: {po:.2f} at {at_o}{tail_en}")


def tod_of(now: float, tz: str) -> float:
    """Seconds after local midnight of Unix time ``now`` at the site."""
    d = dt.datetime.fromtimestamp(now, ZoneInfo(tz))
    return d.hour * 3600 + d.minute * 60 + d.second + d.microsecond / 1e6
