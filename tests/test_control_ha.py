"""Control with a real Redis: takeover of a dead consumer's work, idempotency, restart, failover."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from control.service import GROUP, ControlService
from crowdflow.records import (
    AuditEntry, Command, CommandResult, GateFlow, Observation, PlanState, Recommendation, SiteMode, ZoneCount, ZoneState,
    decode,
)

from .procs import services, wait_for


def obs(seq: int, t: float | None = None, count: float = 19.0, gates=()) -> Observation:
    return Observation(camera_id="cam-cangbai-plaza", agent_id="t", seq=seq, captured_at=t or time.time(),
                       zones=[ZoneCount(zone_id="cangbai-plaza", count=count, visible_area_m2=950.0)],
                       gates=list(gates))


def command(kind: str, role: str = "commander", **kw) -> Command:
    return Command(id=uuid.uuid4().hex, kind=kind, user=kw.pop("user", "li"), role=role, issued_at=time.time(), **kw)


def results(r, keys) -> list[CommandResult]:
    return [decode(CommandResult, f["rec"]) for _, f in r.xrange(keys.events) if f["type"] == "command_result"]


def test_new_consumer_claims_a_dead_consumers_entries(r, keys, site):
    r.xadd(keys.obs, {"rec": obs(1, count=30.0).encode()})
    dead = ControlService(site, r, keys, consumer="control-dead")
    dead.start()
    assert len(dead.obs_reader.read(count=10, block_ms=100)) == 1  # taken, never acknowledged
    heir = ControlService(site, r, keys, consumer="control-heir")
    heir.start()  # claims everything pending in the group
    heir.step(block_ms=100)
    assert r.xpending(keys.obs, GROUP)["pending"] == 0
    assert decode(ZoneState, r.hget(keys.zone_state, "cangbai-plaza")).count == pytest.approx(60.0)


def test_duplicates_apply_once(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    now = time.time()
    o = obs(7, now, gates=[GateFlow(gate_id="gate-11f", inflow=5, outflow=1)])
    for _ in range(3):  # e.g. a publish that timed out client-side, then a spool replay
        r.xadd(keys.obs, {"rec": o.encode()})
    svc.step(block_ms=100)
    assert svc.applied == 1 and svc.duplicates == 2
    upper = decode(ZoneState, r.hget(keys.zone_state, "hyd-upper"))
    assert upper.inflow_pm == 5.0 and upper.outflow_pm == 1.0  # not 15 / 3
    # ... and across a restart of the service
    again = ControlService(site, r, keys, consumer="c2")
    again.start()
    r.xadd(keys.obs, {"rec": o.encode()})
    again.step(block_ms=100)
    assert again.applied == 0 and again.duplicates == 1


def test_duplicate_command_acts_once(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    c = command("override", plan_id="bridge", level="III", note="drill")
    r.xadd(keys.cmd, {"rec": c.encode()})
    r.xadd(keys.cmd, {"rec": c.encode()})
    svc.step(block_ms=100)
    res = results(r, keys)
    assert len(res) == 2 and all(x.ok and x.command_id == c.id for x in res)
    audit = [decode(AuditEntry, f["rec"]) for _, f in r.xrange(keys.audit)]
    assert [a.action for a in audit if a.action != "order"] == ["override"]  # orders to posts follow it once


def test_forged_viewer_command_changes_nothing(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    r.xadd(keys.cmd, {"rec": command("set_mode", role="viewer", mode="emergency").encode()})
    r.xadd(keys.cmd, {"rec": "{broken"})
    svc.step(block_ms=100)
    (res,) = results(r, keys)
    assert not res.ok and "role viewer may not set_mode" in res.error
    assert decode(SiteMode, r.get(keys.mode)).mode == "normal"  # unchanged
    assert [f["reason"] for _, f in r.xrange(keys.cmd_dead)][0].startswith("(record): not JSON")
    assert [decode(AuditEntry, f["rec"]).action for _, f in r.xrange(keys.audit)] == ["refuse"]


def test_decisions_and_audit_survive_restart(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    r.xadd(keys.cmd, {"rec": command("override", plan_id="bridge", level="III", note="concert").encode()})
    r.xadd(keys.cmd, {"rec": command("set_auto", plan_id="hongyadong", auto=True).encode()})
    svc.step(block_ms=100)
    before = [decode(AuditEntry, f["rec"]) for _, f in r.xrange(keys.audit)]
    assert [a.action for a in before if a.action != "order"] == ["override", "set_auto"]
    del svc  # the process goes away
    restarted = ControlService(site, r, keys, consumer="c2")
    restarted.start()
    bridge = decode(PlanState, r.hget(keys.plan_state, "bridge"))
    assert bridge.level == "III" and bridge.history[-1].by == "li"
    assert decode(PlanState, r.hget(keys.plan_state, "hongyadong")).auto is True
    assert restarted.engine.plan_states()["bridge"].level == "III"
    assert [decode(AuditEntry, f["rec"]) for _, f in r.xrange(keys.audit)] == before
    # The restored engine keeps working: stand the bridge down.
    r.xadd(keys.cmd, {"rec": command("override", plan_id="bridge", level=None, note="concert over").encode()})
    restarted.step(block_ms=100)
    assert decode(PlanState, r.hget(keys.plan_state, "bridge")).level is None


def test_recommendation_confirmed_through_redis(r, keys, site):
    clock = [time.time()]
    svc = ControlService(site, r, keys, consumer="c1", clock=lambda: clock[0], stale_after_s=1e6)
    svc.start()
    for i in range(14):  # a full plaza (0.9 × capacity) for 130 s of control time
        r.xadd(keys.obs, {"rec": obs(100 + i, clock[0], count=0.9 * 1900 * 950 / 1900).encode()})
        svc.step(block_ms=50)
        clock[0] += 10
    recs = [decode(Recommendation, v) for v in r.hgetall(keys.recommendations).values()]
    (rec,) = [x for x in recs if x.status == "pending"]
    assert rec.plan_id == "hongyadong" and rec.level == "II"
    # issued on control's (simulated) clock: a command older than command_max_age_s is refused
    cmd = command("confirm", plan_id="hongyadong", recommendation_id=rec.id).model_copy(update={"issued_at": clock[0]})
    r.xadd(keys.cmd, {"rec": cmd.encode()})
    svc.step(block_ms=50)
    ps = decode(PlanState, r.hget(keys.plan_state, "hongyadong"))
    assert ps.level == "II" and any(a.type == "traffic_cutoff" for a in ps.active_actions)
    assert decode(Recommendation, r.hget(keys.recommendations, rec.id)).status == "confirmed"
    alarms = [f for _, f in r.xrange(keys.events) if f["type"] == "alarm"]
    assert alarms  # the pending recommendation raised an alarm (and confirming cleared it)


def test_leader_failover_within_5_s(tmp_path, redis_url, r, keys):
    with services(tmp_path, redis_url, keys.prefix) as s:
        a = s.start("control-a", "control")
        b = s.start("control-b", "control")
        holder = wait_for(lambda: r.get(keys.leader), 20, what="a leader")
        leader, standby = (a, b) if str(a.pid) in holder else (b, a)
        assert str(leader.pid) in holder
        wait_for(lambda: r.hget(keys.zone_state, "cangbai-plaza"), 10, what="first publish")
        os.kill(leader.pid, signal.SIGKILL)  # a real crash: no lease release
        killed = time.monotonic()
        r.xadd(keys.cmd, {"rec": command("override", plan_id="bridge", level="IV", note="during failover").encode()})
        wait_for(lambda: (h := r.get(keys.leader)) and str(standby.pid) in h, 10, interval=0.05, what="takeover")
        took = time.monotonic() - killed
        r.xadd(keys.obs, {"rec": obs(int(time.time() * 1000)).encode()})
        wait_for(lambda: decode(ZoneState, r.hget(keys.zone_state, "cangbai-plaza")).status == "ok", 10,
                 what="new leader applies observations")
        wait_for(lambda: decode(PlanState, r.hget(keys.plan_state, "bridge")).level == "IV", 10, what="command applied")
        assert took < 5.0, f"takeover took {took:.1f} s"
        overrides = [f for _, f in r.xrange(keys.audit) if decode(AuditEntry, f["rec"]).action == "override"]
        assert len(overrides) == 1  # the command was neither lost nor applied twice
