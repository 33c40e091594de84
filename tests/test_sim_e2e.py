"""End to end on real parts: `crowdflow sim` (virtual cameras at 120×) → Redis → the real
`crowdflow control` → live zone states for every camera-covered zone; an action control puts
in force (PlanState.active_actions in <p>:plan:state) changes the simulated crowd."""

from __future__ import annotations

import time

import pytest

from crowdflow.records import PlanState, ZoneState, decode
from crowdflow.site import TrafficCutoffAction

from .procs import services, wait_for

pytestmark = pytest.mark.e2e


def zone_states(r, keys) -> dict[str, ZoneState]:
    return {k: decode(ZoneState, v) for k, v in r.hgetall(keys.zone_state).items()}


def test_virtual_cameras_make_every_covered_zone_live(tmp_path, redis_url, keys, r, site):
    covered = {z for c in site.cameras for z in c.zones}
    with services(tmp_path, redis_url, keys.prefix) as s:
        s.start("control", "control", "--stale-after", "5")
        s.start("sim", "sim", "--speed", "120", "--start", "20:00", "--duration", "60")

        def all_live():
            st = zone_states(r, keys)
            live = {z for z, v in st.items() if v.status == "ok"}
            return st if covered <= live else None

        st = wait_for(all_live, 45, what="every covered zone live")
        for z in covered:
            assert st[z].method == "sim" and st[z].count is not None and st[z].count >= 0
            assert abs(time.time() - st[z].updated_at) < 10
        assert any(v.count > 50 for v in st.values())  # a busy evening, not an empty map

        # Control confirms a cutoff of 嘉滨路: the simulator applies it and the frontage's
        # own ground empties as people spread onto the road.
        def frontage() -> float:
            v = zone_states(r, keys)["jiabin-frontage"]
            return v.count if v.status == "ok" else None

        before = sorted(x for x in (frontage() for _ in range(6) if not time.sleep(0.5)) if x is not None)
        # (Written under its own plan id, so a control service that publishes its own plan
        # states cannot overwrite it; the simulator applies the union of every entry.)
        ps = PlanState(plan_id="e2e-cutoff", level="II", updated_at=time.time(),
                       active_actions=[TrafficCutoffAction(type="traffic_cutoff", road="road-jiabin")])
        r.hset(keys.plan_state, "e2e-cutoff", ps.encode())
        low = before[len(before) // 2] * 0.6
        wait_for(lambda: (c := frontage()) is not None and c < low, 20, what=f"frontage below {low:.0f}")
