"""The measures engine inside the live control service, against a real Redis."""

from __future__ import annotations

import numpy as np

from control.measures import MeasurePlanner
from control.service import ControlService
from crowdflow.records import Command, InForce, PlanState, Recommendation, decode
from sim.cameras import Faults, VirtualCameras, camera_views
from sim.model import Model
from sim.plantwin import ModelTwin
from sim.scenario import hhmm_to_s

T19 = 1_746_097_200.0  # 2025-05-01 19:00 Asia/Shanghai


def test_service_recommends_metering_from_the_forecast_and_puts_it_in_force(r, keys, site, scenario):
    demand = dict(scenario.demand)
    for name in ("metro-6", "metro-9"):
        demand[name] = demand[name].model_copy(update={"per_min": {"18:00": 50, "18:55": 60, "19:05": 140, "19:40": 140}})
    sc = scenario.model_copy(update={"demand": demand})
    clock = [T19]
    svc = ControlService(site, r, keys, consumer="mpc-1", clock=lambda: clock[0],
                         planner_factory=lambda: MeasurePlanner(site, ModelTwin(site, sc), cycle_s=20.0,
                                                                         budget_s=30.0))  # over budget the rules answer: test_mpc
    svc.start()
    model = Model(site, sc, seed=4, tod_s=hhmm_to_s("18:30"))
    model.run_until(hhmm_to_s("19:00"))
    cams = VirtualCameras(site, camera_views(site), seed=1, faults=Faults(dropout=0.0, offline_per_h=0.0))
    rec = None
    for k in range(4):  # two decision cycles: the sustain rule wants two in a row
        now = T19 + k * 25.0
        clock[0] = now
        model.run_until(hhmm_to_s("19:00") + k * 25.0)
        flows = model.gate_flows(np.zeros(model.net.P), np.zeros(len(model.net.sources)))
        for o in cams.observe(now, model.zone_counts(), flows, 1.0):
            r.xadd(keys.obs, {"rec": o.encode()})
        svc.step(block_ms=50)
        recs = [decode(Recommendation, v) for v in r.hgetall(keys.recommendations).values()]
        rec = next((x for x in recs if x.status == "pending" and "meter-xsz" in x.measures_on), None)
        if rec:
            break
    assert rec is not None, f"no metering recommended on a metro surge: {[(x.measures_on, x.status) for x in recs]} {svc.engine.last_plan}"
    assert rec.engine == "mpc" and rec.measures is not None
    assert any(a.type == "metering" and a.gate == "gate-xsz-6" for a in rec.actions)
    assert all(a.type != "traffic_cutoff" for a in rec.actions)
    assert any("without:" in w.text.en for w in rec.reasons)
    assert rec.dispatch and rec.dispatch[0].kind == "deploy"
    # the commander confirms through the command stream; the plan state says what is in force
    cmd = Command(id="cmd-mpc-0001", kind="confirm", recommendation_id=rec.id, user="zhang", role="commander",
                  issued_at=clock[0])
    r.xadd(keys.cmd, {"rec": cmd.encode()})
    clock[0] += 1
    svc.step(block_ms=50)
    ps = decode(PlanState, r.hget(keys.plan_state, rec.plan_id))
    assert ps.measures and "meter-xsz" in ps.measures and ps.engine == "mpc"
    assert any(a.type == "metering" for a in ps.active_actions)
    assert ps.staff and ps.staff[0].measure_id in ps.measures
    # the one published in-force record (control/inforce.py) carries the engine's measures
    inf = decode(InForce, r.get(keys.inforce))
    metering = [m for m in inf.measures if m.action.type == "metering"]
    assert metering and all(m.plan_id == rec.plan_id and m.by == "zhang" for m in metering)
    audit = [f["rec"] for _, f in r.xrange(keys.audit)]
    assert any('"confirm"' in a and rec.id in a for a in audit)
    # a takeover restores the measures in force (and commits their staff again)
    other = ControlService(site, r, keys, consumer="mpc-2", clock=lambda: clock[0],
                           planner_factory=lambda: MeasurePlanner(site, ModelTwin(site, sc), cycle_s=20.0,
                                                                         budget_s=30.0))  # over budget the rules answer: test_mpc
    other.start()
    area = other.engine.areas[rec.plan_id]
    assert "meter-xsz" in area.measures
    assert other.engine.planner.staff.present().get("post-xsz", 0) >= 4
