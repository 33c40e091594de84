"""Seed Redis with a pending recommendation exactly as control writes one, for UI tests that
need a decision on screen without driving a crowd up for minutes first. The real control
service restores it on start (PlanEngine.restore) and handles the commander's decision."""

from __future__ import annotations

import time
import uuid

import redis

from control.plans import Area
from crowdflow.bus import EVENTS_MAXLEN, Keys
from crowdflow.records import PlanState, Reason, Recommendation, decode
from crowdflow.site import Site, Text


def seed_recommendation(r: redis.Redis, keys: Keys, site: Site, plan_id: str, level: str,
                        zone_id: str, value: float = 0.86) -> Recommendation:
    now = time.time()
    cur = r.hget(keys.plan_state, plan_id)
    ps = decode(PlanState, cur) if cur else PlanState(plan_id=plan_id, level=None, updated_at=now)
    plan = next(p for p in site.plans if p.id == plan_id)
    lv = next(x for x in plan.levels if x.level == level)
    zone = site.zone_by_id[zone_id]
    thr = lv.triggers.capacity_ratio
    rec = Recommendation(
        id=f"{plan_id}-{uuid.uuid4().hex[:10]}", plan_id=plan_id, level=level, from_level=ps.level,
        actions=Area(plan).actions_at(level), predictive=False, created_at=now, status="pending",
        reasons=[Reason(zone_id=zone_id, metric="capacity_ratio", value=value, threshold=thr, held_s=lv.sustain_s,
                        text=Text(zh=f"{zone.name.zh} 承载率 {value:.2f} ≥ {thr:.2f}，已持续 {lv.sustain_s:.0f} 秒",
                                  en=f"{zone.name.en} capacity ratio {value:.2f} ≥ {thr:.2f} for {lv.sustain_s:.0f} s"))])
    ps = ps.model_copy(update=dict(pending=rec.id, updated_at=now))
    pipe = r.pipeline()
    pipe.hset(keys.recommendations, rec.id, rec.encode())
    pipe.hset(keys.plan_state, plan_id, ps.encode())
    for kind, x in (("recommendation", rec), ("plan", ps)):
        pipe.xadd(keys.events, {"type": kind, "rec": x.encode()}, maxlen=EVENTS_MAXLEN, approximate=True)
    pipe.execute()
    return rec
