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
        # command stream; control puts it in force, the simulator applies it, and the frontage's
        # density falls as people spread onto the road (control counts them with the zone).
        def frontage() -> float | None:
            v = zone_states(r, keys)["jiabin-frontage"]
            return v.density if v.status == "ok" else None

        before = sorted(x for x in (frontage() for _ in range(6) if not time.sleep(0.5)) if x is not None)
        cmd = Command(id=uuid.uuid4().hex, kind="override", plan_id="hongyadong", level="II", note="e2e",
                      user="e2e", role="commander", issued_at=time.time())
        r.xadd(keys.cmd, {"rec": cmd.encode()})
        wait_for(lambda: (raw := r.hget(keys.plan_state, "hongyadong")) and decode(PlanState, raw).level == "II", 10,
                 what="level II in force")
        low = before[len(before) // 2] * 0.6
        # The twin puts a cut on the ground only once its officers have walked from the reserve
        # and set it up (≈20 simulated minutes for 嘉滨路: ≈10 s at 120×, more on a busy machine).
        wait_for(lambda: (d := frontage()) is not None and d < low, 75, what=f"frontage density below {low:.2f}")
        assert zone_states(r, keys)["jiabin-frontage"].capacity > site.zone_by_id["jiabin-frontage"].capacity
