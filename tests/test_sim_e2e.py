"""End to end on real parts: `crowdflow sim` (virtual cameras at 120×) → Redis → the real
`crowdflow control` → live zone states for every camera-covered zone; a commander's command
puts actions in force (PlanState.active_actions) and they change the simulated crowd."""

from __future__ import annotations

import time
import uuid

import pytest

from crowdflow.records import Command, PlanState, ZoneState, decode

from .procs import services, wait_for

pytestmark = pytest.mark.e2e


def zone_states(r, keys) -> dict[str, ZoneState]:
    return {k: decode(ZoneState, v) for k, v in r.hgetall(keys.zone_state).items()}


def test_virtual_cameras_make_every_covered_zone_live(tmp_path, redis_url, keys, r, site):
    covered = {z for c in site.cameras for z in c.zones}
    with services(tmp_path, redis_url, keys.prefix) as s:
        s.start("control", "control", "--stale-after", "5")
        s.start("sim", "sim", "--speed", "120", "--start", "20:00", "--duration", "150")

        def all_live():
            st = zone_states(r, keys)
            live = {z for z, v in st.items() if v.status == "ok"}
            return st if covered <= live else None

        st = wait_for(all_live, 45, what="every covered zone live")
        for z in covered:
            assert st[z].method == "sim" and st[z].count is not None and st[z].count >= 0
            assert abs(time.time() - st[z].updated_at) < 10
        assert any(v.count > 50 for v in st.values())  # a busy evening, not an empty map

        # A commander orders level II for the complex (嘉滨路 and 沧白路 cut off) through the real
        # command stream; control puts it in force and publishes the one in-force record, and the
        # simulator reads that record and applies the cut to the twin. What the cut then does on
        # the ground (officers walk from the reserve, set-up, the road's area freed, people
        # spreading) is the twin's physics, checked in tests/test_sim_actions.py and
        # tests/test_twin_validation.py; here the whole chain through Redis is what is tested.
        cmd = Command(id=uuid.uuid4().hex, kind="override", plan_id="hongyadong", level="II", note="e2e",
                      user="e2e", role="commander", issued_at=time.time())
        r.xadd(keys.cmd, {"rec": cmd.encode()})
        wait_for(lambda: (raw := r.hget(keys.plan_state, "hongyadong")) and decode(PlanState, raw).level == "II", 10,
                 what="level II in force")
        wait_for(lambda: "traffic_cutoff:road-jiabin" in s.logs(), 20, what="the simulator applying the 嘉滨路 cutoff")
        assert zone_states(r, keys)["jiabin-frontage"].capacity > site.zone_by_id["jiabin-frontage"].capacity
