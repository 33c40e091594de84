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

A recommendation waits for a commander (confirm / reject / override) unless its area is
automatic. 平急转换 (``set_mode``) pins every area at level I plus the site's emergency actions,
and restores the earlier levels on return. Every decision yields an :class:`AuditEntry` with
the area's zone states at that moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crowdflow.records import (
    AuditEntry,
    Command,
    CommandResult,
    LevelChange,
    PlanState,
    Reason,
    Recommendation,
    SiteMode,
    ZoneState,
)
from crowdflow import crowd
from crowdflow.site import Action, Plan, PlanLevel, Site, StaffingAction, Text, TrafficCutoffAction
from crowdflow.vocab import COMMAND_ROLE, LEVELS, level_rank, role_allows

HISTORY = 50
PREDICT_FROM = 0.75  # a forecast counts only for a zone already at ≥ 75 % of the trigger
RECENT_RECS = 200
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

    def level_def(self, level: str) -> PlanLevel:
        return next(lv for lv in self.plan.levels if lv.level == level)

    def actions_at(self, level: str | None) -> list[Action]:
        acts: list[Action] = []
        for lv in self.plan.levels:
            if severity(lv.level) <= severity(level):
                acts.extend(lv.actions)
        return merge_actions(acts)

    def capacities_at(self, site: Site, level: str | None) -> dict[str, int]:
        """Each zone's capacity with the road space this area's ``level`` keeps cut off."""
        caps = site.capacities(a.road for a in self.actions_at(level) if isinstance(a, TrafficCutoffAction))
        return {zid: caps[zid] for zid in self.plan.zones}


class PlanEngine:
    def __init__(self, site: Site):
        self.site = site
        self.areas = {p.id: Area(p) for p in site.plans}
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
        for area in self.areas.values():
            self._evaluate_area(area, now, zones)
        return [self.recs[i] for i in self._changed_recs - before if i in self.recs]

    def _conditions(self, area: Area, lv: PlanLevel, zones: Mapping[str, ZoneState], now: float,
                    margin: bool = False, ceiling: str | None = None,
                    capacities: Mapping[str, int] | None = None) -> tuple[list[Reason], list[Reason]]:
        """(measured reasons, predictive reasons) for one level. With ``margin`` the thresholds
        are lowered by the hysteresis and the load is taken against ``capacities`` (the zones'
        capacity once the level's measures are lifted): used to decide whether the current
        level must still hold. ``ceiling``: the level a forecast may go one step beyond."""
        measured, predicted = [], []
        hyst = area.plan.hysteresis
        for zid in area.plan.zones:
            s = zones.get(zid)
            if s is None or s.status != "ok":
                continue
            zone = self.site.zone_by_id[zid]
            for metric in ("capacity_ratio", "density", "flow_ppm"):
                t = getattr(lv.triggers, metric)
                v = getattr(s, metric)
                if t is None or v is None:
                    continue
                limit = t - getattr(hyst, metric) if margin else t
                if margin and metric == "capacity_ratio" and capacities and s.count is not None:
                    v = max(v, s.count / max(capacities[zid], 1))  # would they fit without the measures?
                if v >= limit:
                    measured.append(self._reason(zone, metric, v, t, area, lv, s, now))
            t = lv.triggers.capacity_ratio
            lead = area.plan.predictive_lead_min
            m = s.minutes_to_level.get(lv.level)
            # A forecast brings forward the next level only, and only for a zone already near it:
            # a noisy trend on a quiet zone must not leap to level I.
            if (t is not None and lead > 0 and m is not None and 0 < m <= lead and not margin
                    and severity(lv.level) <= severity(ceiling) + 1 and (s.capacity_ratio or 0) >= PREDICT_FROM * t):
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

    def _evaluate_area(self, area: Area, now: float, zones: Mapping[str, ZoneState]) -> None:
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
            self._apply(area, rec, now, cmd.user, "confirm", zones, status="confirmed", action="confirm", cmd=cmd)
            return None
        if cmd.kind == "reject":
            area.rejected[rec.level] = now
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
                         history=a.history, updated_at=a.since or now)

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
