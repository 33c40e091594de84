"""STAND-IN FOR CONTROL'S COMMAND HANDLING — used only by tests, only until the control
issue (the plan engine in ``control/``) lands. When merging, replace every use of
:class:`ControlStandIn` with the real ``crowdflow control`` service (``services().start(
"control", "control")``) and :func:`seed_recommendation` with control's own recommendation
(or keep the seed: it writes exactly what control writes).

It plays control's documented role for commands and nothing else (docs/architecture.md,
"Decisions (control ↔ dashboard)" and "Redis keys and streams"): it reads ``<p>:cmd`` through
the shared :class:`crowdflow.bus.GroupReader` (group ``control``), validates each entry with
:func:`crowdflow.records.decode` (bad ones go to ``<p>:cmd:dead``), checks the role again, and
writes PlanState / Recommendation / Alarm / SiteMode to their hashes, AuditEntry to
``<p>:audit``, and each change plus the CommandResult to ``<p>:events``. It is not a plan
engine: it raises no recommendations itself.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis

from crowdflow.bus import EVENTS_MAXLEN, GroupReader, Keys
from crowdflow.records import (
    Alarm,
    AuditEntry,
    Command,
    CommandResult,
    LevelChange,
    PlanState,
    Reason,
    Recommendation,
    RecordError,
    SiteMode,
    ZoneState,
    decode,
)
from crowdflow.site import LEVELS, Site, Text

COMMANDER_ONLY = {"confirm", "reject", "override", "set_auto", "set_mode"}


def actions_for(site: Site, plan_id: str, level: str | None) -> list:
    """Cumulative actions of a plan up to ``level`` (IV … level)."""
    if level is None:
        return []
    plan = next(p for p in site.plans if p.id == plan_id)
    out = []
    for lv in plan.levels:
        out.extend(lv.actions)
        if lv.level == level:
            break
    return out


def _event(pipe, keys: Keys, kind: str, rec) -> None:
    pipe.xadd(keys.events, {"type": kind, "rec": rec.encode()}, maxlen=EVENTS_MAXLEN, approximate=True)


def seed_recommendation(r: redis.Redis, keys: Keys, site: Site, plan_id: str, level: str,
                        zone_id: str, value: float = 0.86) -> Recommendation:
    """Write a pending Recommendation (+ the plan's PlanState pointing at it) as control would."""
    now = time.time()
    cur = r.hget(keys.plan_state, plan_id)
    ps = decode(PlanState, cur) if cur else PlanState(plan_id=plan_id, level=None, updated_at=now)
    plan = next(p for p in site.plans if p.id == plan_id)
    lv = next(x for x in plan.levels if x.level == level)
    zone = site.zone_by_id[zone_id]
    thr = lv.triggers.capacity_ratio
    rec = Recommendation(
        id=f"rec-{uuid.uuid4().hex[:10]}", plan_id=plan_id, level=level, from_level=ps.level,
        actions=lv.actions, predictive=False, created_at=now, status="pending",
        reasons=[Reason(zone_id=zone_id, metric="capacity_ratio", value=value, threshold=thr, held_s=lv.sustain_s,
                        text=Text(zh=f"{zone.name.zh} 承载率 {value:.2f} ≥ {thr:.2f} 已持续 {lv.sustain_s:.0f} 秒",
                                  en=f"{zone.name.en}: load {value:.2f} ≥ {thr:.2f} for {lv.sustain_s:.0f} s"))])
    ps = ps.model_copy(update=dict(pending=rec.id, updated_at=now))
    pipe = r.pipeline()
    pipe.hset(keys.recommendations, rec.id, rec.encode())
    pipe.hset(keys.plan_state, plan_id, ps.encode())
    _event(pipe, keys, "recommendation", rec)
    _event(pipe, keys, "plan", ps)
    pipe.execute()
    return rec


class ControlStandIn:
    """Answers ``<p>:cmd`` as control does (see the module docstring). Run with ``start()``,
    stop with ``stop()``; ``handled`` counts commands answered."""

    def __init__(self, site: Site, r: redis.Redis, keys: Keys):
        self.site, self.r, self.keys = site, r, keys
        self.reader = GroupReader(r, keys.cmd, "control", "standin", keys.cmd_dead)
        self.handled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "ControlStandIn":
        self.reader.ensure_group()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            entries = self.reader.read(count=50, block_ms=200)
            for entry_id, fields in entries:
                try:
                    cmd = decode(Command, fields.get("rec", ""))
                except RecordError as e:
                    self.reader.dead_letter(entry_id, fields, str(e))
                    continue
                self.handle(cmd)
                self.handled += 1
            self.reader.ack([i for i, _ in entries])

    # -- one command → changes + audit + result, written in one pipeline

    def handle(self, cmd: Command) -> CommandResult:
        now = time.time()
        pipe = self.r.pipeline()
        try:
            if cmd.kind in COMMANDER_ONLY and cmd.role != "commander":
                raise ValueError(f"{cmd.kind} needs role commander; {cmd.user} is {cmd.role}")
            if cmd.kind == "ack_alarm" and cmd.role not in ("operator", "commander"):
                raise ValueError(f"ack_alarm needs role operator; {cmd.user} is {cmd.role}")
            getattr(self, f"_{cmd.kind}")(cmd, now, pipe)
            res = CommandResult(command_id=cmd.id, ok=True, at=now)
        except ValueError as e:
            pipe = self.r.pipeline()  # nothing of a refused command is written
            res = CommandResult(command_id=cmd.id, ok=False, error=str(e), at=now)
        _event(pipe, self.keys, "command_result", res)
        pipe.execute()
        return res

    def _plan(self, plan_id: str | None, now: float) -> PlanState:
        if plan_id not in {p.id for p in self.site.plans}:
            raise ValueError(f"unknown plan {plan_id!r}")
        raw = self.r.hget(self.keys.plan_state, plan_id)
        return decode(PlanState, raw) if raw else PlanState(plan_id=plan_id, level=None, updated_at=now)

    def _zone_states(self, plan_id: str) -> list[ZoneState]:
        plan = next(p for p in self.site.plans if p.id == plan_id)
        raws = self.r.hmget(self.keys.zone_state, plan.zones)
        return [decode(ZoneState, x) for x in raws if x]

    def _audit(self, pipe, cmd: Command, now: float, action: str, plan_id=None, level_from=None, level_to=None,
               rec_id=None, reason=None) -> None:
        a = AuditEntry(id=f"aud-{uuid.uuid4().hex[:12]}", at=now, actor=cmd.user, role=cmd.role, action=action,
                       plan_id=plan_id, level_from=level_from, level_to=level_to, recommendation_id=rec_id,
                       command_id=cmd.id, reason=reason or cmd.note,
                       zone_states=self._zone_states(plan_id) if plan_id else [])
        pipe.xadd(self.keys.audit, {"rec": a.encode()})
        _event(pipe, self.keys, "audit", a)

    def _set_level(self, pipe, ps: PlanState, level, cmd: Command, now: float, via: str, pending=None) -> PlanState:
        hist = (list(ps.history) + [LevelChange(level=level, at=now, by=cmd.user, via=via)])[-50:]
        new = ps.model_copy(update=dict(level=level, since=now, pending=pending, history=hist, updated_at=now,
                                        active_actions=actions_for(self.site, ps.plan_id, level)))
        pipe.hset(self.keys.plan_state, new.plan_id, new.encode())
        _event(pipe, self.keys, "plan", new)
        return new

    def _decide(self, cmd: Command, now: float, pipe, status: str) -> Recommendation:
        raw = self.r.hget(self.keys.recommendations, cmd.recommendation_id or "")
        if raw is None:
            raise ValueError(f"no recommendation {cmd.recommendation_id!r}")
        rec = decode(Recommendation, raw)
        if rec.status != "pending":
            raise ValueError(f"recommendation {rec.id} is already {rec.status}")
        rec = rec.model_copy(update=dict(status=status, decided_by=cmd.user, decided_at=now, note=cmd.note))
        pipe.hset(self.keys.recommendations, rec.id, rec.encode())
        _event(pipe, self.keys, "recommendation", rec)
        return rec

    def _confirm(self, cmd: Command, now: float, pipe) -> None:
        rec = self._decide(cmd, now, pipe, "confirmed")
        ps = self._plan(rec.plan_id, now)
        self._set_level(pipe, ps, rec.level, cmd, now, "confirm")
        reasons = "; ".join(x.text.zh for x in rec.reasons)
        self._audit(pipe, cmd, now, "confirm", rec.plan_id, ps.level, rec.level, rec.id,
                    reason=f"{reasons}{' / ' + cmd.note if cmd.note else ''}")

    def _reject(self, cmd: Command, now: float, pipe) -> None:
        rec = self._decide(cmd, now, pipe, "rejected")
        ps = self._plan(rec.plan_id, now)
        new = ps.model_copy(update=dict(pending=None, updated_at=now))
        pipe.hset(self.keys.plan_state, new.plan_id, new.encode())
        _event(pipe, self.keys, "plan", new)
        self._audit(pipe, cmd, now, "reject", rec.plan_id, ps.level, ps.level, rec.id)

    def _override(self, cmd: Command, now: float, pipe) -> None:
        ps = self._plan(cmd.plan_id, now)
        if cmd.level is not None and cmd.level not in LEVELS:
            raise ValueError(f"unknown level {cmd.level!r}")
        self._set_level(pipe, ps, cmd.level, cmd, now, "override")
        self._audit(pipe, cmd, now, "override", ps.plan_id, ps.level, cmd.level)

    def _set_auto(self, cmd: Command, now: float, pipe) -> None:
        ps = self._plan(cmd.plan_id, now).model_copy(update=dict(auto=bool(cmd.auto), updated_at=now))
        pipe.hset(self.keys.plan_state, ps.plan_id, ps.encode())
        _event(pipe, self.keys, "plan", ps)
        self._audit(pipe, cmd, now, "set_auto", ps.plan_id, ps.level, ps.level)

    def _set_mode(self, cmd: Command, now: float, pipe) -> None:
        m = SiteMode(mode=cmd.mode, since=now, by=cmd.user, reason=cmd.note)
        pipe.set(self.keys.mode, m.encode())
        _event(pipe, self.keys, "mode", m)
        self._audit(pipe, cmd, now, "set_mode", reason=f"{cmd.mode}{': ' + cmd.note if cmd.note else ''}")

    def _ack_alarm(self, cmd: Command, now: float, pipe) -> None:
        raw = self.r.hget(self.keys.alarms, cmd.alarm_id or "")
        if raw is None:
            raise ValueError(f"no alarm {cmd.alarm_id!r}")
        a = decode(Alarm, raw).model_copy(update=dict(acked_by=cmd.user, acked_at=now))
        pipe.hset(self.keys.alarms, a.id, a.encode())
        _event(pipe, self.keys, "alarm", a)
        self._audit(pipe, cmd, now, "ack_alarm", a.plan_id, reason=a.text.zh)
