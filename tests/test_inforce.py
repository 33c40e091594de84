"""One published record of what is in force: every measure with its source, since when and
by whom; the emergency-only measures included; the simulator reads it; camera health is
structured data on zone states; a command that arrives too late is refused."""

from __future__ import annotations

import time

from control.inforce import in_force, responsible_posts
from control.service import ControlService
from control.zones import ZoneBook
from crowdflow.records import (Command, CommandResult, InForce, LevelChange, Observation, PlanState, SiteMode,
                               ZoneCount, decode)
from crowdflow.site import StaffingAction, TrafficCutoffAction
from sim.runner import active_actions

T0 = 1_790_000_000.0


def _plan(site, pid, level, via="confirm", by="张伟", at=T0):
    from control.plans import Area

    area = Area(site.plan_by_id[pid])
    return PlanState(plan_id=pid, level=level, since=at, active_actions=area.actions_at(level),
                     history=[LevelChange(level=level, at=at, by=by, via=via)], updated_at=at)


def test_sources_since_and_by(site):
    plans = {"bridge": _plan(site, "bridge", "III", "confirm", "张伟"),
             "xiaoshizi": _plan(site, "xiaoshizi", "IV", "override", "李强", T0 + 5),
             "hongyadong": PlanState(plan_id="hongyadong", level=None, updated_at=T0)}
    rec = in_force(site, plans, SiteMode(mode="normal", since=0, by="system"), T0 + 10)
    assert rec.mode == "normal"
    by_plan = {m.plan_id for m in rec.measures}
    assert by_plan == {"bridge", "xiaoshizi"}
    staff = [m for m in rec.measures if m.action.type == "staffing" and m.action.post == "post-bridge-mid"]
    assert len(staff) == 1 and staff[0].source == "plan" and staff[0].by == "张伟" and staff[0].since == T0
    assert staff[0].posts == ["post-bridge-mid"] and staff[0].level == "III"
    assert {m.source for m in rec.measures if m.plan_id == "xiaoshizi"} == {"override"}
    assert all(m.by == "李强" for m in rec.measures if m.plan_id == "xiaoshizi")


def test_emergency_measures_reach_the_record(site):
    plans = {p.id: _plan(site, p.id, "I", "emergency", "指挥长", T0) for p in site.plans}
    rec = in_force(site, plans, SiteMode(mode="emergency", since=T0, by="指挥长"), T0 + 1)
    tunnel = [m for m in rec.measures if isinstance(m.action, TrafficCutoffAction) and m.action.road == "road-qsm-tunnel"]
    assert len(tunnel) == 1 and tunnel[0].source == "emergency" and tunnel[0].by == "指挥长"
    assert tunnel[0].posts and site.post_by_id[tunnel[0].posts[0]].department == "交警"
    # merged: one entry per measure, staffing per post at its largest headcount
    keys = [m.action.model_dump_json() for m in rec.measures if m.action.type != "staffing"]
    assert len(keys) == len(set(keys))
    posts = [m.action.post for m in rec.measures if isinstance(m.action, StaffingAction)]
    assert len(posts) == len(set(posts))


def test_responsible_posts(site):
    from crowdflow.site.plans import MetroLimitAction

    assert responsible_posts(site, MetroLimitAction(type="metro_limit", gate="gate-xsz-6", max_per_min=0)) == ["post-xsz"]


def test_control_publishes_it_and_the_simulator_applies_it(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    assert decode(InForce, r.get(keys.inforce)).measures == []
    cmd = Command(id="mode-0123456789", kind="set_mode", mode="emergency", user="指挥长", role="commander",
                  note="演练", issued_at=time.time())
    r.xadd(keys.cmd, {"rec": cmd.encode()})
    svc.step(block_ms=50)
    rec = decode(InForce, r.get(keys.inforce))
    assert rec.mode == "emergency"
    roads = {m.action.road for m in rec.measures if m.action.type == "traffic_cutoff"}
    assert "road-qsm-tunnel" in roads  # an emergency-only measure, published
    sim_roads = {a.road for a in active_actions(r, keys) if a.type == "traffic_cutoff"}
    assert sim_roads == roads  # the simulator applies exactly what is published
    events = [f["type"] for _, f in r.xrange(keys.events)]
    assert "inforce" in events


def test_a_command_that_arrives_too_late_is_refused_with_the_reason(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    cmd = Command(id="late-0123456789", kind="set_mode", mode="emergency", user="指挥长", role="commander",
                  issued_at=time.time() - site.control.command_max_age_s - 60)
    r.xadd(keys.cmd, {"rec": cmd.encode()})
    svc.step(block_ms=50)
    res = decode(CommandResult, r.hget(keys.cmd_results, cmd.id))
    assert res.ok is False and "arrived" in res.error and "limit" in res.error
    assert svc.engine.mode.mode == "normal"


def test_camera_health_is_structured_on_zone_states(site):
    book = ZoneBook(site, stale_after_s=10)
    book.apply(Observation(camera_id="cam-jiabin", agent_id="t", seq=1, captured_at=T0,
                           zones=[ZoneCount(zone_id="jiabin-crossing", count=5, visible_area_m2=150)]), T0)
    book.apply(Observation(camera_id="cam-riverside", agent_id="t", seq=1, captured_at=T0,
                           health="camera_offline"), T0)
    s = book.state("jiabin-crossing", T0 + 1)
    cams = {c.camera_id: c for c in s.cameras}
    assert cams["cam-jiabin"].state == "ok" and cams["cam-jiabin"].used
    assert cams["cam-riverside"].state == "camera_offline" and not cams["cam-riverside"].used
    s = book.state("jiabin-crossing", T0 + 60)
    assert {c.camera_id: c.state for c in s.cameras} == {"cam-jiabin": "stale", "cam-riverside": "camera_offline"}
    assert [c.state for c in book.state("hyd-upper", T0).cameras] == ["no_data"]


def test_a_measure_being_set_up_says_when_it_acts(site):
    """An engine's measure in force whose officers are still on their way carries, on each of
    its actions, when it acts on the ground (PlanState.in_effect); a level's bundle is not timed."""
    m = site.measure_by_id["meter-xsz"]
    ps = PlanState(plan_id="xiaoshizi", level="IV", since=T0, updated_at=T0, active_actions=list(m.actions),
                   measures={m.id: T0}, in_effect={m.id: T0 + 420}, engine="mpc",
                   history=[LevelChange(level="IV", at=T0, by="system", via="auto")])
    rec = in_force(site, {"xiaoshizi": ps, "bridge": _plan(site, "bridge", "III")}, None, T0 + 10)
    mine = [e for e in rec.measures if e.plan_id == "xiaoshizi"]
    assert len(mine) == len(m.actions) and all(e.acts_at == T0 + 420 for e in mine)
    assert all(e.acts_at is None for e in rec.measures if e.plan_id == "bridge")
