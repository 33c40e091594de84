"""The control service against a real Redis: consumer group, dead letters, replay, publish."""

from __future__ import annotations

import json
import time

import pytest

from control.service import GROUP, ControlService
from crowdflow.records import Observation, ZoneCount, ZoneState, decode


def publish(r, keys, **kw) -> str:
    o = Observation(camera_id=kw.get("camera", "cam-cangbai-plaza"), agent_id="t", seq=kw.get("seq", 1),
                    captured_at=kw.get("t", time.time()),
                    zones=[ZoneCount(zone_id="cangbai-plaza", count=kw.get("count", 19.0), visible_area_m2=950.0)])
    return r.xadd(keys.obs, {"rec": o.encode()})


def test_publishes_all_zones_unknown_on_start(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    states = {k: decode(ZoneState, v) for k, v in r.hgetall(keys.zone_state).items()}
    assert set(states) == {z.id for z in site.zones}
    assert all(s.status == "unknown" and s.count is None for s in states.values())


def test_applies_then_acknowledges(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    publish(r, keys, count=19.0)
    assert svc.step(block_ms=100) == 1
    s = decode(ZoneState, r.hget(keys.zone_state, "cangbai-plaza"))
    assert s.status == "ok" and s.count == pytest.approx(38.0)
    assert r.xpending(keys.obs, GROUP)["pending"] == 0
    updates = [decode(ZoneState, f["rec"]) for _, f in r.xrange(keys.events) if f["type"] == "zone"]
    assert any(u.zone_id == "cangbai-plaza" and u.status == "ok" for u in updates)
    # ... and a sample for the zone's 2-hour timeline
    (_, sample), *_ = r.xrevrange(keys.zone_history("cangbai-plaza"), count=1)
    assert decode(ZoneState, sample["rec"]).status == "ok"


def test_bad_records_go_aside_with_reason_and_reader_survives(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    r.xadd(keys.obs, {"rec": "{not json"})
    r.xadd(keys.obs, {"rec": json.dumps({"v": 1, "camera_id": "cam-cangbai-plaza"})})
    r.xadd(keys.obs, {"something": "else"})
    publish(r, keys, camera="cam-ghost")
    publish(r, keys, count=5.0)
    assert svc.step(block_ms=100) == 5
    dead = r.xrange(keys.obs_dead)
    reasons = [f["reason"] for _, f in dead]
    assert reasons[0].startswith("(record): not JSON")
    assert reasons[1].startswith("agent_id: Field required")
    assert reasons[2].startswith("(record): not JSON")  # no "rec" field at all
    assert reasons[3] == "camera_id: unknown camera 'cam-ghost'"
    assert dead[0][1]["rec"] == "{not json"  # the raw record is kept, nothing lost
    assert svc.applied == 1 and svc.rejected == 4
    assert r.xpending(keys.obs, GROUP)["pending"] == 0
    assert decode(ZoneState, r.hget(keys.zone_state, "cangbai-plaza")).status == "ok"


def test_unacknowledged_entries_are_replayed_after_a_crash(r, keys, site):
    publish(r, keys, count=30.0)
    first = ControlService(site, r, keys, consumer="c1")
    first.start()
    # Simulate a crash between reading and acknowledging: read, then drop the instance.
    taken = first.obs_reader.read(count=10, block_ms=100)
    assert len(taken) == 1 and r.xpending(keys.obs, GROUP)["pending"] == 1
    again = ControlService(site, r, keys, consumer="c1")
    again.start()
    assert again.step(block_ms=100) == 1
    assert r.xpending(keys.obs, GROUP)["pending"] == 0
    assert decode(ZoneState, r.hget(keys.zone_state, "cangbai-plaza")).count == pytest.approx(60.0)


def test_zone_turns_unknown_without_new_data(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1", stale_after_s=0.5)
    svc.start()
    publish(r, keys)
    svc.step(block_ms=100)
    assert decode(ZoneState, r.hget(keys.zone_state, "cangbai-plaza")).status == "ok"
    time.sleep(1.1)  # states are recomputed once a second
    svc.step(block_ms=100)  # nothing new arrives; the tick alone must flip it
    s = decode(ZoneState, r.hget(keys.zone_state, "cangbai-plaza"))
    assert s.status == "unknown" and s.count is None and s.last_known is not None
