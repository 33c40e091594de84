"""The ingest boundary (control/ingest.py) on the probes of issue 12, and the service's dead
letters for them."""

from __future__ import annotations

import json
import time

import pytest

from control.ingest import FUTURE_TOLERANCE_S, MAX_AGE_S, check
from control.service import GROUP, ControlService
from crowdflow.records import GateFlow, Observation, RecordError, ZoneCount, ZoneState, decode

CAM, ZONE = "cam-cangbai-plaza", "cangbai-plaza"
NOW = 1_750_000_000.0


def ob(**kw) -> Observation:
    base = dict(camera_id=CAM, agent_id="t", seq=1, captured_at=NOW,
                zones=[ZoneCount(zone_id=ZONE, count=19.0, visible_area_m2=950.0)])
    base.update(kw)
    return Observation(**base)


def refused(o, now=NOW, **kw) -> str:
    v = check(o, SITE, now, **kw)
    assert v.obs is None, "accepted"
    return v.reason


@pytest.fixture(autouse=True)
def _site(site):
    global SITE
    SITE = site


def test_plain_observation_passes():
    v = check(ob(), SITE, NOW)
    assert v.obs == ob() and v.reason is None and v.skew_s is None


@pytest.mark.parametrize("zc, reason", [
    (ZoneCount(zone_id=ZONE, count=1e6, visible_area_m2=950.0), "zones[0].count: 1.05e+03 persons/m² is above"),
    (ZoneCount(zone_id=ZONE, count=5.0, visible_area_m2=1e-300), "zones[0].visible_area_m2: 1e-300 m² is below"),
    (ZoneCount(zone_id=ZONE, count=5.0, visible_area_m2=1e7), "zones[0].visible_area_m2: 1e+07 m² is more than"),
    (ZoneCount(zone_id="hyd-upper", count=5.0, visible_area_m2=100.0), "zones[0].zone_id: zone 'hyd-upper' is not"),
])
def test_implausible_zone_counts(zc, reason):
    assert refused(ob(zones=[zc])).startswith(reason)


def test_zone_reported_twice():
    zc = ZoneCount(zone_id=ZONE, count=5.0, visible_area_m2=100.0)
    assert refused(ob(zones=[zc, zc])) == f"zones[1].zone_id: zone '{ZONE}' reported twice"


def test_gate_from_a_camera_that_does_not_own_it():
    o = ob(camera_id="cam-jiabin", zones=[], gates=[GateFlow(gate_id="gate-11f", inflow=1, outflow=0)])
    assert refused(o) == "gates[0].gate_id: gate gate-11f is counted by cam-cangbai-plaza, not cam-jiabin"


def test_gate_flow_faster_than_people_walk():
    assert check(ob(gates=[GateFlow(gate_id="gate-11f", inflow=30, outflow=10)]), SITE, NOW).obs is not None
    reason = refused(ob(gates=[GateFlow(gate_id="gate-11f", inflow=1_000_000, outflow=0)]))
    assert reason.startswith("gates[0]: 1000000 crossings in 1 s exceed 42 (2 persons/m/s over 16.0 m)")
    # the same count over an hour is plausible
    assert check(ob(window_s=3600.0, gates=[GateFlow(gate_id="gate-11f", inflow=40_000, outflow=0)]),
                 SITE, NOW).obs is not None


def test_one_day_ahead_is_refused_and_old_records_too():
    assert refused(ob(captured_at=NOW + 86400)).startswith("captured_at: 86400 s ahead of the receiver's clock")
    assert check(ob(captured_at=NOW + FUTURE_TOLERANCE_S - 1), SITE, NOW).obs is not None
    assert refused(ob(captured_at=NOW - MAX_AGE_S - 1)).startswith("captured_at: 7201 s old")


@pytest.mark.parametrize("offset", [300.0, -300.0])
def test_gateway_clock_five_minutes_off_is_corrected_not_lost(offset):
    # The gateway stamps capture and send with its own clock; Redis took the entry 0.2 s later.
    o = ob(captured_at=NOW + offset - 0.5, sent_at=NOW + offset)
    v = check(o, SITE, NOW + 1.0, received_at=NOW + 0.2)
    assert v.obs is not None and v.skew_s == pytest.approx(offset - 0.2)
    assert v.obs.captured_at == pytest.approx(NOW - 0.3, abs=1e-3)


def test_spool_replay_is_not_mistaken_for_skew():
    # Captured an hour ago, spooled, sent now: the clock is right, the data is just late.
    v = check(ob(captured_at=NOW - 3600, sent_at=NOW), SITE, NOW + 0.5, received_at=NOW + 0.1)
    assert v.obs is not None and v.skew_s is None and v.obs.captured_at == NOW - 3600


def test_capture_after_send_is_refused():
    assert refused(ob(captured_at=NOW + 100, sent_at=NOW)).startswith("captured_at: 100 s after sent_at")


def test_unknown_preset_is_refused():
    assert refused(ob(preset="x" * 64)).startswith("preset: 'xxxx")


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d["zones"][0].update(count="12"), "zones[0].count: Input should be a valid number"),
    (lambda d: d.update(frames=True), "frames: Input should be a valid integer"),
    (lambda d: d.update(seq="12"), "seq: Input should be a valid integer"),
    (lambda d: d.update(preset="p" * 1_000_000), "preset: String should have at most 64 characters"),
    (lambda d: d.update(zones=[d["zones"][0]] * 10_000), "zones: List should have at most 64 items"),
    (lambda d: d["gates"].append({"gate_id": "gate-11f", "inflow": 10**400, "outflow": 0}), "gates[0].inflow"),
    (lambda d: d["gates"].append({"gate_id": "gate-11f", "inflow": 10**30, "outflow": 0}), "gates[0].inflow"),
    (lambda d: d["gates"].append({"gate_id": "gate-11f", "inflow": 1e18, "outflow": 0}), "gates[0].inflow"),
])
def test_strict_types_and_sizes_at_decode(mutate, reason):
    d = json.loads(ob().encode())
    mutate(d)
    with pytest.raises(RecordError) as ei:
        decode(Observation, json.dumps(d))
    assert str(ei.value).startswith(reason)


def test_service_dead_letters_each_probe_with_its_reason_and_applies_the_rest(r, keys, site):
    svc = ControlService(site, r, keys, consumer="c1")
    svc.start()
    now = time.time()
    probes = [
        ob(seq=1, captured_at=now + 86400),
        ob(seq=2, captured_at=now, zones=[ZoneCount(zone_id=ZONE, count=1e6, visible_area_m2=950.0)]),
        ob(seq=3, captured_at=now, zones=[ZoneCount(zone_id=ZONE, count=5.0, visible_area_m2=1e-300)]),
        ob(seq=4, camera_id="cam-jiabin", captured_at=now, zones=[],
           gates=[GateFlow(gate_id="gate-11f", inflow=5, outflow=0)]),
    ]
    for o in probes:
        r.xadd(keys.obs, {"rec": o.encode()})
    r.xadd(keys.obs, {"rec": "x" * 70_000})
    r.xadd(keys.obs, {"rec": ob(seq=5, captured_at=now).encode()})
    svc.step(block_ms=50)
    reasons = [f["reason"] for _, f in r.xrange(keys.obs_dead)]
    assert [x.split(":")[0] for x in reasons] == ["captured_at", "zones[0].count", "zones[0].visible_area_m2",
                                                  "gates[0].gate_id", "(record)"]
    assert "70,000 bytes" in reasons[-1]
    assert svc.applied == 1 and svc.rejected == 5
    assert svc.rejected_by["zones.count"] == 1 and svc.rejected_by["size"] == 1
    s = decode(ZoneState, r.hget(keys.zone_state, ZONE))
    assert s.status == "ok" and s.count == pytest.approx(38.0)  # the truthful record only
    assert r.xpending(keys.obs, GROUP)["pending"] == 0


def test_a_cameras_records_must_carry_its_edges_signature(r, keys, site, tmp_path):
    from edge.spool import Publisher, Spool

    edge_keys = {CAM: "k-cangbai-0123456789", "cam-jiabin": "k-jiabin-0123456789"}
    svc = ControlService(site, r, keys, consumer="c1", edge_keys=edge_keys)
    svc.start()
    now = time.time()
    ok = Publisher(r, keys, Spool(tmp_path / "a.sqlite"), signing_key=edge_keys[CAM])
    assert ok.publish(ob(seq=1, captured_at=now))
    # the Jiabin gateway (or anyone with its key) speaking for the Cangbai camera
    other = Publisher(r, keys, Spool(tmp_path / "b.sqlite"), signing_key=edge_keys["cam-jiabin"])
    assert other.publish(ob(seq=2, captured_at=now))
    r.xadd(keys.obs, {"rec": ob(seq=3, captured_at=now).encode()})  # unsigned
    svc.step(block_ms=50)
    assert svc.applied == 1 and svc.rejected_by["sig"] == 2
    reasons = [f["reason"] for _, f in r.xrange(keys.obs_dead)]
    assert reasons == [f"sig: not signed with camera {CAM}'s edge key"] * 2
