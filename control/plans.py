"""The tiered plan engine: zone states in, recommendations and decisions out. Pure.

Per plan area, a level (IV blue → I red) is *indicated* when any zone of the area meets any
of that level's triggers — capacity ratio, density or bottleneck flow (the maximum of the
three, as the brief puts it) — or when the zone's forecast crosses the level's capacity-ratio
trigger within ``predictive_lead_min``. Rules that keep levels from flapping:

* **sustain** — a level is recommended only after its condition has held for ``sustain_s``;
* **hysteresis** — the current level is released only when every zone is below each trigger
  minus the plan's hysteresis, for the level's ``sustain_s`` — with the load counted against
  the capacity the zones will have once the level's measures are lifted (a cut road gives its
  ground back), so lifting a measure does not at once re-create the crowd it relieved;
* **release in waves** — one level down at a time;
* **cooldown** — no stepping down within ``cooldown_s`` of the last change. Escalation is
  never delayed by the cooldown: safety first.
* **prediction within reach** — a forecast brings forward only the level one above what is
  measured (or in force), and only for zones already at ≥ 75 % of its trigger;
* **unknown holds** — a zone without fresh data never releases a level: unknown is not empty.

**Measures.** Where the site file declares ``measures`` for an area and the engine is given a
:class:`control.measures.MeasurePlanner`, the level stays what commanders and the public see
and the bound on which measures are allowed (up to one level above the level in force or
indicated: prediction within reach; two levels above for the area's cooldown when the planner's
latest forecast packs one of its zones, or a pen behind their gates, past the plans' density
with what the bound allows), but *what is in force* is the measure set the planner
chose on the twin's forecast, not the level's cumulative bundle. A measure is switched on only
when two decisions in a row want it (sustain), released only when the forecast without it stays
below its release ratio (hysteresis) for its ``quiet_min``, past its minimum on-time, and never
while a zone it relieves is unknown; the level never drops below what the measures in force
need. Each recommendation names the measures it switches on and off, the staff moves, the
forecast "with / without" as its reasons, and whether the forecast or the rule-based stand-in
chose it.

A recommendation waits for a commander (confirm / reject / override) unless its area is
automatic. 平急转换 (``set_mode``) pins every area at level I plus the site's emergency actions,
and restores the earlier levels on return. Every decision yields an :class:`AuditEntry` with
the area's zone states at that moment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from crowdflow.records import (
    PEN_FULL_DENSITY,
    AuditEntry,
    Command,
    CommandResult,
    LevelChange,
    PlanState,
    Reason,
    Recommendation,
    SiteMode,
    StaffMove,
    ZoneState,
)
from crowdflow import crowd
from crowdflow.site import Action, Plan, PlanLevel, Site, StaffingAction, Text, TrafficCutoffAction
from crowdflow.vocab import COMMAND_ROLE, LEVELS, level_rank, role_allows

from .holds import HoldBook

HISTORY = 50
PREDICT_FROM = 0.75  # a forecast counts only for a zone already at ≥ 75 % of the trigger
MEASURE_SUSTAIN_S = 30.0  # a measure is recommended once decisions have wanted it this long (two cycles)
RECENT_RECS = 200
# A zone (or a pen behind its gates) the planner's latest forecast packs past the plans' density
# with what the bound allows lets its area's bound reach one level further for the area's
# cooldown (``MeasurePlanner.zones_at_risk``): prediction within reach, on safety.
RISK_LIFTS_BOUND = True
METRIC_TEXT = {
    "capacity_ratio": ("承载率", "capacity ratio"),
    "density": ("密度(人/㎡)", "density (p/m²)"),
    "flow_ppm": ("流率(人/米/分)", "flow (p/m/min)"),
}


severity = level_rank


def merge_actions(actions: list[Action]) -> list[Action]:
    """Deduplicate; staffing for one post keeps the largest headcount."""
    out: list[Action] = []
    staffing: dict[str, StaffingAction] = {}
    seen = set()
    for a in actions:
        if isinstance(a, StaffingAction):
            prev = staffing.get(a.post)
            if prev is None or a.headcount > prev.headcount:
                staffing[a.post] = a
            continue
        key = a.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append(a)
    return list(staffing.values()) + out


@dataclass
class Area:
    plan: Plan
    level: str | None = None
    since: float | None = None
    auto: bool = False
    pending: Recommendation | None = None
    history: list[LevelChange] = field(default_factory=list)
    held_since: dict[str, float] = field(default_factory=dict)  # level → condition start
    release_since: float | None = None
    last_change: float = float("-inf")
    rejected: dict[str | None, float] = field(default_factory=dict)  # target → when
    before_emergency: str | None = None
    # measures engine (None: the level's cumulative bundle)
    measure_defs: dict | None = None  # id → Measure owned by this area
    measures: dict[str, float] = field(default_factory=dict)  # in force: id → since
    released: dict[str, float] = field(default_factory=dict)  # id → when released
    want_on: dict[str, float] = field(default_factory=dict)  # id → since decisions want it on
    want_off: dict[str, float] = field(default_factory=dict)
    engine: str | None = None
    staff_moves: list[StaffMove] = field(default_factory=list)
    risk_until: float = float("-inf")  # the level bound reaches one further until then (a zone at risk)

    @property
    def mpc(self) -> bool:
        return self.measure_defs is not None

    def level_def(self, level: str) -> PlanLevel:
        return next(lv for lv in self.plan.levels if lv.level == level)

    def actions_at(self, level: str | None) -> list[Action]:
        acts: list[Action] = []
        if self.mpc:  # the measures in force that ``level`` allows
            for mid in self.measures:
                m = self.measure_defs[mid]
                if severity(m.level) <= severity(level):
                    acts.extend(m.actions)
            return merge_actions(acts)
        for lv in self.plan.levels:
            if severity(lv.level) <= severity(level):
                acts.extend(lv.actions)
        return merge_actions(acts)

    def capacities_at(self, site: Site, level: str | None) -> dict[str, int]:
        """Each zone's capacity with the road space this area's ``level`` keeps cut off."""
        caps = site.capacities(a.road for a in self.actions_at(level) if isinstance(a, TrafficCutoffAction))
        return {zid: caps[zid] for zid in self.plan.zones}


class PlanEngine:
    def __init__(self, site: Site, planner=None, holds: HoldBook | None = None):
        self.site = site
        self.planner = planner  # control.measures.MeasurePlanner, or None: level bundles only
        # queue counts reported at the holding areas: a packed pen or concourse is density in its
        # zone's area for the level triggers; the planner starts its queues from the same book
        self.holds = holds or getattr(planner, "holds", None) or HoldBook(site)
        if planner is not None:
            planner.holds = self.holds
        self._pens: dict[str, list[tuple[str, float]]] = {}  # zone → fresh (pen name, density), per evaluation
        self.areas = {p.id: Area(p) for p in site.plans}
        if planner is not None:
            for pid in planner.areas_with_measures():
                self.areas[pid].measure_defs = {mid: site.measure_by_id[mid] for mid in planner.owned[pid]}
        self.last_plan = None  # the planner's latest result (for what-if and the benchmark)
        self.mode = SiteMode(mode="normal", since=0.0, by="system")
        self.recs: dict[str, Recommendation] = {}
        self._audit: list[AuditEntry] = []
        self._seq = 0
        self._changed_plans: set[str] = set()
        self._changed_recs: set[str] = set()
        self._mode_changed = False

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, now: float, zones: Mapping[str, ZoneState]) -> list[Recommendation]:
        """Advance every area to ``now``; returns the recommendations created or changed."""
        before = set(self._changed_recs)
        if self.mode.mode == "emergency":
            return []
        self._pens = {}
        for h in self.holds.states(now).values():
            if h.density is not None:
                self._pens.setdefault(h.zone_id, []).append((h.hold_id, h.density))
        targets = {pid: self._target(area, now, zones) for pid, area in self.areas.items()}
        result = None
        if self.planner is not None and any(a.mpc for a in self.areas.values()):
            bound = {}
            risk = self.planner.zones_at_risk(now) if RISK_LIFTS_BOUND else set()
            for pid, area in self.areas.items():
                top = max(area.level, targets[pid][0], key=severity)
                if risk & set(area.plan.zones):
                    area.risk_until = now + area.plan.cooldown_s  # lifted no shorter than a level stays
                step = 2 if now < area.risk_until else 1
                bound[pid] = LEVELS[min(severity(top) + step, len(LEVELS) - 1)]
            active = {mid: t for a in self.areas.values() for mid, t in a.measures.items()}
            released = {mid: t for a in self.areas.values() for mid, t in a.released.items()}
            result = self.last_plan = self.planner.decide(now, zones, active, released, bound)
        for pid, area in self.areas.items():
            target, reasons = targets[pid]
            if area.mpc:
                self._recommend_measures(area, now, zones, target, reasons, result)
            else:
                self._recommend(area, now, zones, target, reasons)
        # in a fixed order (a set's order follows the interpreter's string hashing): callers apply
        # them in this order, and two areas' recommendations draw on the same staff reserves
        return sorted((self.recs[i] for i in self._changed_recs - before if i in self.recs),
                      key=lambda r: (r.created_at, r.id))

    def _conditions(self, area: Area, lv: PlanLevel, zones: Mapping[str, ZoneState], now: float,
                    margin: bool = False, ceiling: str | None = None,
                    capacities: Mapping[str, int] | None = None) -> tuple[list[Reason], list[Reason]]:
        """(measured reasons, predictive reasons) for one level. With ``margin`` the thresholds
        are lowered by the hysteresis and the load is taken against ``capacities`` (the zones'
        capacity once the level's measures are lifted): used to decide whether the current
        level must still hold. ``ceiling``: the level a forecast may go one step beyond."""
        measured, predicted = [], []
        hyst = area.plan.hysteresis
        # The level's triggers, looked up once, not per zone (this runs every second over every
        # zone of the area, for each level twice: with thousands of zones it was a core's tenth).
        checks = [(metric, t, t - getattr(hyst, metric) if margin else t)
                  for metric in ("capacity_ratio", "density", "flow_ppm")
                  if (t := getattr(lv.triggers, metric)) is not None]
        t = lv.triggers.capacity_ratio
        lead = area.plan.predictive_lead_min
        may_predict = (t is not None and lead > 0 and not margin
                       and severity(lv.level) <= severity(ceiling) + 1)
        for zid in area.plan.zones:
            # a reported pen or concourse past its full density counts as density in its zone
            for hid, v in self._pens.get(zid, ()):
                for metric, t_m, limit in checks:
                    if metric == "density" and v >= max(limit, PEN_FULL_DENSITY):
                        measured.append(self._pen_reason(hid, v, t_m, area, lv, now))
            s = zones.get(zid)
            if s is None or s.status != "ok":
                continue
            for metric, t_m, limit in checks:
                v = getattr(s, metric)
                if v is None:
                    continue
                if margin and metric == "capacity_ratio" and capacities and s.count is not None:
                    v = max(v, s.count / max(capacities[zid], 1))  # would they fit without the measures?
                if v >= limit:
                    measured.append(self._reason(self.site.zone_by_id[zid], metric, v, t_m, area, lv, s, now))
            if not may_predict:
                continue
            m = s.minutes_to_level.get(lv.level)
            # A forecast brings forward the next level only, and only for a zone already near it:
            # a noisy trend on a quiet zone must not leap to level I.
            if m is not None and 0 < m <= lead and (s.capacity_ratio or 0) >= PREDICT_FROM * t:
                zone = self.site.zone_by_id[zid]
                zh, en = METRIC_TEXT["capacity_ratio"]
                predicted.append(Reason(
                    zone_id=zid, metric="capacity_ratio", value=s.capacity_ratio, threshold=t, forecast_min=m,
                    text=Text(zh=f"{zone.name.zh} {zh} {s.capacity_ratio:.2f}，预计 {m:.0f} 分钟后达 {t:.2f}",
                              en=f"{zone.name.en} {en} {s.capacity_ratio:.2f}, forecast to reach {t:.2f} in {m:.0f} min")))
        return measured, predicted

    def _reason(self, zone, metric, v, t, area: Area, lv: PlanLevel, s: ZoneState, now: float) -> Reason:
        zh, en = METRIC_TEXT[metric]
        held = now - area.held_since.get(lv.level, now)
        tail_zh, tail_en = f"，已持续 {held:.0f} 秒", f" for {held:.0f} s"
        nxt = LEVELS.index(lv.level) + 1
        if metric == "capacity_ratio" and nxt < len(LEVELS) and s.forecast:
            f = s.forecast[-1]
            if f.capacity_ratio > v:
                tail_zh += f"；预计 {f.horizon_min:.0f} 分钟后 {f.capacity_ratio:.2f}"
                tail_en += f"; forecast {f.capacity_ratio:.2f} in {f.horizon_min:.0f} min"
        return Reason(zone_id=zone.id, metric=metric, value=round(v, 4), threshold=t, held_s=round(held, 1),
                      text=Text(zh=f"{zone.name.zh} {zh} {v:.2f} ≥ {t:.2f}{tail_zh}",
                                en=f"{zone.name.en} {en} {v:.2f} ≥ {t:.2f}{tail_en}"))

    def _pen_reason(self, hold_id: str, v: float, t: float, area: Area, lv: PlanLevel, now: float) -> Reason:
        h = self.holds.areas[hold_id]
        held = now - area.held_since.get(lv.level, now)
        zh, en = METRIC_TEXT["density"]
        return Reason(zone_id=h.zone, metric="density", value=round(v, 4), threshold=t, held_s=round(held, 1),
                      text=Text(zh=f"{h.name.zh}（现场报数）{zh} {v:.2f} ≥ {t:.2f}，已持续 {held:.0f} 秒",
                                en=f"{h.name.en} (reported count) {en} {v:.2f} ≥ {t:.2f} for {held:.0f} s"))

    def _target(self, area: Area, now: float, zones: Mapping[str, ZoneState]):
        """The level the triggers indicate now (sustain, hysteresis, cooldown applied) and the
        reasons per level."""
        # 1. Which levels hold, and for how long.
        reasons: dict[str, tuple[list[Reason], list[Reason]]] = {}
        measured_top = area.level
        for lv in area.plan.levels:
            if self._conditions(area, lv, zones, now, ceiling="I")[0]:
                measured_top = max(measured_top, lv.level, key=severity)
        for lv in area.plan.levels:
            meas, pred = self._conditions(area, lv, zones, now, ceiling=measured_top)
            if meas or pred:
                area.held_since.setdefault(lv.level, now)
                meas, pred = self._conditions(area, lv, zones, now, ceiling=measured_top)  # held time filled in
                reasons[lv.level] = (meas, pred)
            else:
                area.held_since.pop(lv.level, None)
        sustained = [lv.level for lv in area.plan.levels
                     if lv.level in reasons and now - area.held_since[lv.level] >= lv.sustain_s]
        target = area.level
        up = max(sustained, key=severity, default=None)
        if up is not None and severity(up) > severity(area.level):
            target = up
        elif area.level is not None:
            target = self._release_target(area, now, zones, reasons)
        return target, reasons

    def _recommend(self, area: Area, now: float, zones, target, reasons) -> None:
        # 2. Recommend, expire or supersede.
        p = area.pending
        if target == area.level:
            area.rejected = {k: v for k, v in area.rejected.items() if now - v < area.plan.cooldown_s}
            known = all((zones.get(z) is not None and zones[z].status == "ok") for z in area.plan.zones)
            if p is not None and known:  # missing data is not evidence that the need has passed
                self._close(area, p, "expired", now, "system", None, "conditions no longer hold")
            return
        if p is not None and p.level == target:
            return
        rej = area.rejected.get(target)
        if rej is not None and now - rej < area.plan.cooldown_s:
            return  # the commander said no to this; ask again after the cooldown
        meas, pred = reasons.get(target, ([], [])) if target is not None else ([], [])
        if target is None or severity(target) < severity(area.level):
            why = [Reason(zone_id=None, metric="capacity_ratio", value=0.0, threshold=0.0, held_s=None,
                          text=Text(zh=f"{area.plan.name.zh} 各区域已低于 {area.level} 级阈值（含回差）",
                                    en=f"every zone of {area.plan.name.en} below level {area.level} triggers (with hysteresis)"))]
        else:
            why = sorted(meas, key=lambda r: -(r.value / r.threshold))[:5] + pred[:3]
        if p is not None:
            self._close(area, p, "superseded", now, "system", None, "a newer recommendation replaces it")
        self._seq += 1
        rec = Recommendation(
            id=f"{area.plan.id}-{int(now * 1000)}-{self._seq}", plan_id=area.plan.id, level=target,
            from_level=area.level, actions=area.actions_at(target), reasons=why,
            predictive=bool(pred) and not meas, created_at=now, status="pending")
        self._store(rec)
        area.pending = rec
        self._changed_plans.add(area.plan.id)
        self._log(now, "system", "system", "recommend", area, zones, area.level, target, rec=rec,
                  reason="; ".join(r.text.zh for r in why))
        if area.auto:
            self._apply(area, rec, now, "system", "auto", zones, status="auto_applied", action="auto_apply")

    def _recommend_measures(self, area: Area, now: float, zones, target, reasons, result) -> None:
        """Measures engine: the planner's choice for this area, through the safety rules."""
        from .measures import level_needed, owner  # noqa: PLC0415 (no cycle at import)

        cur = set(area.measures)
        d = result.decision if result is not None else None
        if d is not None:
            mine_on = {m for m in d.on if owner(self.site.measure_by_id[m]) == area.plan.id}
            mine_off = {m for m in d.off if owner(self.site.measure_by_id[m]) == area.plan.id}
            p = area.pending
            if p is not None and p.measures is not None:  # a change awaiting its commander stays asked
                mine_on |= set(p.measures_on) - set(area.measures)
                mine_off |= set(p.measures_off) & set(area.measures)
            area.want_on = {m: area.want_on.get(m, now) for m in mine_on}
            area.want_off = {m: area.want_off.get(m, now) for m in mine_off}
        desired = set(cur)
        for mid, t0 in area.want_on.items():
            if now - t0 >= MEASURE_SUSTAIN_S or (result is not None and result.engine == "rules"):
                desired.add(mid)
        urgent = set(d.urgent_off) if d is not None else set()  # safer without: no quiet time
        for mid, t0 in area.want_off.items():
            m = area.measure_defs[mid]
            known = all(zones.get(z) is not None and zones[z].status == "ok" for z in m.relieves)
            if known and (mid in urgent or now - t0 >= m.release.quiet_min * 60):  # unknown never releases
                desired.discard(mid)
        need = level_needed(self.site, desired)
        level = max(target, need, key=severity) if (target or need) else None
        if level is not None and severity(level) < severity(area.level) and severity(area.level) - severity(level) > 1:
            level = LEVELS[severity(area.level) - 1]  # release in waves, one level at a time
        p = area.pending
        if level == area.level and desired == cur:
            area.rejected = {k: v for k, v in area.rejected.items() if now - v < area.plan.cooldown_s}
            known = all((zones.get(z) is not None and zones[z].status == "ok") for z in area.plan.zones)
            if p is not None and known:
                self._close(area, p, "expired", now, "system", None, "conditions no longer hold")
            return
        if p is not None and p.level == level and set(p.measures or ()) == desired:
            return
        key = f"{level}|{','.join(sorted(desired))}"
        rej = area.rejected.get(key)
        if rej is not None and now - rej < area.plan.cooldown_s:
            return
        on, off = sorted(desired - cur), sorted(cur - desired)
        why: list[Reason] = []
        for mid in on + off:
            text = d.reasons.get(mid) if d is not None else None
            if text is None:
                continue
            foc = d.focus.get(mid)
            m = area.measure_defs[mid]
            zid = foc[0] if foc and foc[0] in self.site.zone_by_id else None
            why.append(Reason(zone_id=zid, metric="capacity_ratio", value=round(foc[1], 4) if foc else 0.0,
                              threshold=(m.trigger if mid in on else m.release).forecast_ratio,
                              forecast_min=foc[2] if foc else None, text=text))
        if level != area.level:
            meas, pred = reasons.get(level, ([], [])) if level is not None else ([], [])
            if level is None or severity(level) < severity(area.level):
                why.append(Reason(zone_id=None, metric="capacity_ratio", value=0.0, threshold=0.0, held_s=None,
                                  text=Text(zh=f"{area.plan.name.zh} 各区域已低于 {area.level} 级阈值（含回差）",
                                            en=f"every zone of {area.plan.name.en} below level {area.level} triggers (with hysteresis)")))
            else:
                why += sorted(meas, key=lambda r: -(r.value / r.threshold))[:5] + pred[:3]
        if result is not None and result.note is not None:
            why.append(Reason(zone_id=None, metric="capacity_ratio", value=0.0, threshold=0.0, text=result.note))
        if p is not None:
            self._close(area, p, "superseded", now, "system", None, "a newer recommendation replaces it")
        self._seq += 1
        acts = []
        for mid in sorted(desired):
            acts.extend(area.measure_defs[mid].actions)
        preview = self._dispatch(area, on, off, now, d, dry=True)
        rec = Recommendation(
            id=f"{area.plan.id}-{int(now * 1000)}-{self._seq}", plan_id=area.plan.id, level=level,
            from_level=area.level, actions=merge_actions(acts), reasons=why,
            predictive=not any(r.held_s for r in why), created_at=now, status="pending",
            measures=sorted(desired), measures_on=on, measures_off=off, dispatch=preview or [],
            engine=result.engine if result is not None else None)
        self._store(rec)
        area.pending = rec
        self._changed_plans.add(area.plan.id)
        self._log(now, "system", "system", "recommend", area, zones, area.level, level, rec=rec,
                  reason="; ".join(r.text.zh for r in why))
        if area.auto:
            self._apply(area, rec, now, "system", "auto", zones, status="auto_applied", action="auto_apply")

    def _dispatch(self, area: Area, on, off, now: float, d=None, dry: bool = False) -> list[StaffMove] | None:
        """Staff moves for switching ``on`` on and ``off`` off (on a copy when ``dry``).
        None when the reserves cannot supply a measure switched on."""
        if self.planner is None:
            return []
        book = copy.deepcopy(self.planner.staff) if dry else self.planner.staff
        active = {mid for a in self.areas.values() for mid in a.measures}
        moves = []
        for mid in on:
            m = self.site.measure_by_id[mid]
            foc = d.focus.get(mid) if d is not None else None
            needed_at = now + foc[3] * 60 if foc and foc[3] is not None else None
            got = book.deploy(mid, active, now, needed_at=needed_at, setup_s=m.setup_min * 60)
            if got is None:
                return None
            active.add(mid)
            moves += got
        for mid in off:
            active.discard(mid)
            moves += book.release(mid, active, now)
        return [StaffMove(n=mv.n, from_id=mv.src, to_id=mv.dst, depart_at=mv.depart_at, in_place_at=mv.in_place_at,
                          measure_id=mv.measure_id, kind=mv.kind, text=mv.text) for mv in moves]

    def _release_target(self, area: Area, now: float, zones, reasons) -> str | None:
        """The level to step down to — one level at a time, released in waves — or the
        current level if it must be kept. The current level holds while any zone is unknown,
        while any trigger is still within the hysteresis, and while the people now there would
        not fit once the level's measures are lifted (a cut road's ground given back)."""
        cur = area.level
        if any((zones.get(z) is None or zones[z].status != "ok") for z in area.plan.zones):
            area.release_since = None
            return cur  # unknown zones never release a level
        idx = LEVELS.index(cur)
        lower = LEVELS[idx - 1] if idx > 0 else None
        caps = area.capacities_at(self.site, lower)
        meas, _ = self._conditions(area, area.level_def(cur), zones, now, margin=True, capacities=caps)
        if meas:
            area.release_since = None
            return cur
        area.release_since = area.release_since or now
        if now - area.release_since < area.level_def(cur).sustain_s or now - area.last_change < area.plan.cooldown_s:
            return cur
        return lower

    # ------------------------------------------------------------------ decisions

    def handle(self, now: float, cmd: Command, zones: Mapping[str, ZoneState]) -> tuple[CommandResult, list[AuditEntry]]:
        mark = len(self._audit)
        error = self._handle(now, cmd, zones)
        if error:
            area = self.areas.get(cmd.plan_id) if cmd.plan_id else None
            lvl = area.level if area else None
            self._log(now, cmd.user, cmd.role, "refuse", area, zones, lvl, lvl, cmd=cmd, reason=f"{cmd.kind}: {error}")
        result = CommandResult(command_id=cmd.id, ok=error is None, error=error, at=now)
        entries = self._audit[mark:]
        del self._audit[mark:]  # handed to the caller, not repeated by take_audit()
        return result, entries

    def _handle(self, now: float, cmd: Command, zones) -> str | None:
        if not role_allows(cmd.role, COMMAND_ROLE[cmd.kind]):
            return f"role {cmd.role} may not {cmd.kind}; a {COMMAND_ROLE[cmd.kind]} must"
        if cmd.kind == "set_mode":
            return self._set_mode(now, cmd, zones)
        if cmd.kind == "ack_alarm":
            return "alarms are acknowledged by the alarm book, not the plan engine"
        plan_id = cmd.plan_id
        if plan_id is None and cmd.kind in ("confirm", "reject"):
            rec = self.recs.get(cmd.recommendation_id or "")
            if rec is None:
                return f"recommendation_id: no recommendation {cmd.recommendation_id!r}"
            plan_id = rec.plan_id
        area = self.areas.get(plan_id or "")
        if area is None:
            return f"plan_id: unknown plan {plan_id!r}"
        if cmd.kind == "set_auto":
            if cmd.auto is None:
                return "auto: required for set_auto"
            area.auto = cmd.auto
            self._changed_plans.add(area.plan.id)
            self._log(now, cmd.user, cmd.role, "set_auto", area, zones, area.level, area.level, cmd=cmd,
                      reason=cmd.note or ("automatic" if cmd.auto else "manual"))
            if cmd.auto and area.pending is not None:
                self._apply(area, area.pending, now, "system", "auto", zones, status="auto_applied", action="auto_apply")
            return None
        if self.mode.mode == "emergency":
            return "the site is in emergency mode; switch back to normal first"
        if cmd.kind == "override":
            if not cmd.note:
                return "note: an override must say why"
            if cmd.level == area.level:
                return f"plan {area.plan.id} is already at {cmd.level or 'normal'}"
            if area.pending is not None:
                self._close(area, area.pending, "overridden", now, cmd.user, cmd, cmd.note)
            prev = area.level
            self._set_level(area, cmd.level, now, cmd.user, "override")
            self._log(now, cmd.user, cmd.role, "override", area, zones, prev, cmd.level, cmd=cmd, reason=cmd.note)
            return None
        rec = self.recs.get(cmd.recommendation_id or "")
        if rec is None or rec.plan_id != area.plan.id:
            return f"recommendation_id: no recommendation {cmd.recommendation_id!r} for plan {area.plan.id}"
        if rec.status != "pending":
            return f"recommendation {rec.id} is already {rec.status}"
        if cmd.kind == "confirm":
            if rec.measures is not None and self._dispatch(area, rec.measures_on, rec.measures_off, now, dry=True) is None:
                return "the staff this recommendation needs are no longer available; wait for a new recommendation"
            self._apply(area, rec, now, cmd.user, "confirm", zones, status="confirmed", action="confirm", cmd=cmd)
            return None
        if cmd.kind == "reject":
            area.rejected[rec.level if rec.measures is None else f"{rec.level}|{','.join(rec.measures)}"] = now
            self._close(area, rec, "rejected", now, cmd.user, cmd, cmd.note)
            self._log(now, cmd.user, cmd.role, "reject", area, zones, area.level, rec.level, rec=rec, cmd=cmd,
                      reason=cmd.note)
            return None
        return f"kind: {cmd.kind} is not a plan command"

    def _set_mode(self, now: float, cmd: Command, zones) -> str | None:
        if cmd.mode is None:
            return "mode: required for set_mode"
        if cmd.mode == self.mode.mode:
            return f"the site is already in {cmd.mode} mode"
        for area in self.areas.values():
            if area.pending is not None:
                self._close(area, area.pending, "superseded", now, cmd.user, cmd, f"mode → {cmd.mode}")
            if cmd.mode == "emergency":
                area.before_emergency = area.level
                self._set_level(area, "I", now, cmd.user, "emergency")
            else:
                self._set_level(area, area.before_emergency, now, cmd.user, "release")
                area.before_emergency = None
        self.mode = SiteMode(mode=cmd.mode, since=now, by=cmd.user, reason=cmd.note)
        self._mode_changed = True
        self._log(now, cmd.user, cmd.role, "set_mode", None, zones, None, None, cmd=cmd,
                  reason=f"{cmd.mode}: {cmd.note}" if cmd.note else cmd.mode)
        return None

    # ------------------------------------------------------------------ state changes

    def _apply(self, area: Area, rec: Recommendation, now: float, by: str, via: str, zones, status: str,
               action: str, cmd: Command | None = None) -> None:
        prev = area.level
        self._close(area, rec, status, now, by, cmd, cmd.note if cmd else None)
        if area.mpc and rec.measures is not None:
            d = self.last_plan.decision if self.last_plan is not None else None
            moves = self._dispatch(area, rec.measures_on, rec.measures_off, now, d) or []
            area.measures = {m: area.measures.get(m, now) for m in rec.measures}
            for m in rec.measures_off:
                area.released[m] = now
            for m in rec.measures_on:
                area.released.pop(m, None)
            area.want_on = {m: t for m, t in area.want_on.items() if m not in area.measures}
            area.want_off = {m: t for m, t in area.want_off.items() if m in area.measures}
            area.engine = rec.engine
            area.staff_moves = moves
        self._set_level(area, rec.level, now, by, via)
        self._log(now, by, cmd.role if cmd else "system", action, area, zones, prev, rec.level, rec=rec, cmd=cmd,
                  reason=(cmd.note if cmd and cmd.note else "; ".join(r.text.zh for r in rec.reasons)))

    def _set_level(self, area: Area, level: str | None, now: float, by: str, via: str) -> None:
        area.level = level
        area.since = now
        area.last_change = now
        area.release_since = None
        area.history = (area.history + [LevelChange(level=level, at=now, by=by, via=via)])[-HISTORY:]
        self._changed_plans.add(area.plan.id)

    def _close(self, area: Area, rec: Recommendation, status: str, now: float, by: str, cmd: Command | None,
               note: str | None) -> None:
        closed = rec.model_copy(update=dict(status=status, decided_by=by, decided_at=now, note=note))
        self._store(closed)
        if area.pending is not None and area.pending.id == rec.id:
            area.pending = None
        self._changed_plans.add(area.plan.id)
        if status in ("superseded", "expired"):
            self._log(now, by, cmd.role if cmd else "system", "supersede" if status == "superseded" else "expire",
                      area, {}, area.level, rec.level, rec=closed, cmd=cmd, reason=note)

    def _store(self, rec: Recommendation) -> None:
        self.recs[rec.id] = rec
        self._changed_recs.add(rec.id)
        if len(self.recs) > RECENT_RECS:
            for rid in [r.id for r in sorted(self.recs.values(), key=lambda r: r.created_at)
                        if r.status != "pending"][: len(self.recs) - RECENT_RECS]:
                del self.recs[rid]

    def _log(self, now, actor, role, action, area: Area | None, zones, level_from, level_to,
             rec: Recommendation | None = None, cmd: Command | None = None, reason: str | None = None) -> None:
        self._seq += 1
        zone_ids = area.plan.zones if area else list(zones)
        snap = [zones[z] for z in zone_ids if z in zones]
        self._audit.append(AuditEntry(
            id=f"a-{int(now * 1000)}-{self._seq}", at=now, actor=actor, role=role, action=action,
            plan_id=area.plan.id if area else None, level_from=level_from, level_to=level_to,
            recommendation_id=rec.id if rec else (cmd.recommendation_id if cmd else None),
            command_id=cmd.id if cmd else None, reason=reason, zone_states=snap))

    def set_auto(self, plan_id: str, auto: bool) -> None:
        self.areas[plan_id].auto = auto
        self._changed_plans.add(plan_id)

    # ------------------------------------------------------------------ views

    def take_audit(self) -> list[AuditEntry]:
        out, self._audit = self._audit, []
        return out

    def take_changes(self) -> tuple[list[PlanState], list[Recommendation], SiteMode | None]:
        """What changed since the last call (for publishing)."""
        plans = [self.plan_state(pid, 0.0) for pid in sorted(self._changed_plans)]
        recs = [self.recs[i] for i in sorted(self._changed_recs) if i in self.recs]
        mode = self.mode if self._mode_changed else None
        self._changed_plans, self._changed_recs, self._mode_changed = set(), set(), False
        return plans, recs, mode

    def plan_state(self, plan_id: str, now: float) -> PlanState:
        a = self.areas[plan_id]
        return PlanState(plan_id=plan_id, level=a.level, since=a.since, auto=a.auto,
                         active_actions=a.actions_at(a.level), pending=a.pending.id if a.pending else None,
                         history=a.history, updated_at=a.since or now,
                         measures=dict(a.measures) if a.mpc else None, engine=a.engine if a.mpc else None,
                         in_effect={m: round(self.planner.in_effect_at(m, t), 1) for m, t in a.measures.items()}
                         if a.mpc and self.planner is not None else None,
                         staff=list(a.staff_moves))

    def plan_states(self) -> dict[str, PlanState]:
        return {pid: self.plan_state(pid, 0.0) for pid in self.areas}

    def active_actions(self) -> list[Action]:
        acts: list[Action] = []
        for a in self.areas.values():
            acts.extend(a.actions_at(a.level))
        if self.mode.mode == "emergency":
            acts.extend(self.site.emergency.actions)
        return merge_actions(acts)

    # ------------------------------------------------------------------ persistence

    def restore(self, plans: Mapping[str, PlanState], recs: Mapping[str, Recommendation], mode: SiteMode | None) -> None:
        """Take back the state published before a restart or by a previous leader."""
        for pid, ps in plans.items():
            a = self.areas.get(pid)
            if a is None:
                continue
            a.level, a.since, a.auto, a.history = ps.level, ps.since, ps.auto, list(ps.history)
            if a.mpc and ps.measures:
                a.measures = {m: t for m, t in ps.measures.items() if m in a.measure_defs}
                a.engine, a.staff_moves = ps.engine, list(ps.staff)
                for m, t in a.measures.items():  # the officers are at their posts: commit them again
                    self.planner.staff.deploy(m, [x for x in a.measures if x != m], t)
            a.last_change = ps.since if ps.since is not None else float("-inf")
            a.pending = recs.get(ps.pending) if ps.pending else None
            if a.pending is not None and a.pending.status != "pending":
                a.pending = None
            if mode is not None and mode.mode == "emergency":
                before = [h.level for h in a.history if h.via != "emergency"]
                a.before_emergency = before[-1] if before else None
        self.recs.update(recs)
        if mode is not None:
            self.mode = mode
