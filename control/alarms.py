"""Alarms: raised and cleared from zone states, camera health and pending decisions. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from crowdflow.records import Alarm, Command, Recommendation, ZoneState
from crowdflow.site import Site, Text
from crowdflow.vocab import COMMAND_ROLE, role_allows

KEEP_CLEARED = 200


class AlarmBook:
    def __init__(self, site: Site, grace_s: float = 15.0):
        self.site = site
        self.grace_s = grace_s  # a zone unknown since start-up gets this long before it alarms
        self.alarms: dict[str, Alarm] = {}
        self._changed: set[str] = set()
        self._started: float | None = None
        self._covered = {z for c in site.cameras for z in c.zones}

    def _raise(self, alarm_id: str, now: float, **kw) -> None:
        cur = self.alarms.get(alarm_id)
        if cur is not None and cur.cleared_at is None:
            return
        self.alarms[alarm_id] = Alarm(id=alarm_id, raised_at=now, **kw)
        self._changed.add(alarm_id)

    def _clear(self, alarm_id: str, now: float) -> None:
        cur = self.alarms.get(alarm_id)
        if cur is not None and cur.cleared_at is None:
            self.alarms[alarm_id] = cur.model_copy(update={"cleared_at": now})
            self._changed.add(alarm_id)

    def update_zones(self, now: float, zones: Mapping[str, ZoneState]) -> None:
        if self._started is None:
            self._started = now
        for zid, s in zones.items():
            aid = f"zone_unknown:{zid}"
            if s.status == "ok" or zid not in self._covered:
                self._clear(aid, now)
            elif s.last_known is not None or now - self._started >= self.grace_s:
                z = self.site.zone_by_id[zid]
                self._raise(aid, now, kind="zone_unknown", severity="warning", zone_id=zid,
                            text=Text(zh=f"{z.name.zh} 无数据：{s.reason}", en=f"{z.name.en}: no data ({s.reason})"))

    def update_camera(self, now: float, camera_id: str, health: str) -> None:
        cam = self.site.camera_by_id[camera_id]
        for kind in ("camera_offline", "view_moved"):
            aid = f"{kind}:{camera_id}"
            if health == kind:
                what = ("离线", "offline") if kind == "camera_offline" else ("视角偏移", "view moved from its preset")
                self._raise(aid, now, kind=kind, severity="warning", camera_id=camera_id,
                            text=Text(zh=f"{cam.name.zh} {what[0]}", en=f"{cam.name.en} {what[1]}"))
            else:
                self._clear(aid, now)

    def update_recommendation(self, now: float, rec: Recommendation) -> None:
        aid = f"recommendation:{rec.id}"
        if rec.status == "pending":
            plan = next(p for p in self.site.plans if p.id == rec.plan_id)
            lvl = rec.level or "正常"
            self._raise(aid, now, kind="recommendation", severity="critical" if rec.level == "I" else "warning",
                        plan_id=rec.plan_id,
                        text=Text(zh=f"{plan.name.zh} 建议启动{lvl}级响应，待指挥员确认" if rec.level else f"{plan.name.zh} 建议解除响应，待确认",
                                  en=f"{plan.name.en}: level {rec.level or 'normal'} recommended, awaiting a commander"))
        else:
            self._clear(aid, now)

    def ack(self, now: float, cmd: Command) -> str | None:
        if not role_allows(cmd.role, COMMAND_ROLE["ack_alarm"]):
            return f"role {cmd.role} may not acknowledge alarms"
        cur = self.alarms.get(cmd.alarm_id or "")
        if cur is None:
            return f"alarm_id: no alarm {cmd.alarm_id!r}"
        if cur.acked_by:
            return f"alarm {cur.id} was already acknowledged by {cur.acked_by}"
        self.alarms[cur.id] = cur.model_copy(update={"acked_by": cmd.user, "acked_at": now})
        self._changed.add(cur.id)
        return None

    def take_changes(self) -> list[Alarm]:
        out = [self.alarms[a] for a in sorted(self._changed) if a in self.alarms]
        self._changed = set()
        cleared = sorted((a for a in self.alarms.values() if a.cleared_at is not None), key=lambda a: a.cleared_at)
        for a in cleared[: max(0, len(cleared) - KEEP_CLEARED)]:
            del self.alarms[a.id]
        return out

    def restore(self, alarms: Mapping[str, Alarm]) -> None:
        self.alarms.update(alarms)
