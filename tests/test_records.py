"""Wire records: validation names the field; staleness turns values unknown, never zero."""

from __future__ import annotations

import json

import pytest

from crowdflow.records import Observation, RecordError, ZoneCount, ZoneState, as_of, decode

T0 = 1_790_000_000.0


def obs(**kw) -> dict:
    d = dict(v=1, camera_id="cam-a", agent_id="edge-1", seq=7, captured_at=T0, frames=10,
             zones=[dict(zone_id="z1", count=3.5, visible_area_m2=120.0)])
    d.update(kw)
    return d


def test_round_trip():
    o = decode(Observation, json.dumps(obs()))
    assert o.zones[0] == ZoneCount(zone_id="z1", count=3.5, visible_area_m2=120.0)
    assert decode(Observation, o.encode()) == o
    assert decode(Observation, o.encode().encode("utf-8")) == o


@pytest.mark.parametrize(
    "raw, message",
    [
        ("not json", "(record): not JSON"),
        ("[1, 2]", "(record): expected a JSON object, got list"),
        (json.dumps(obs(v=2)), "v: unsupported schema version 2"),
        (json.dumps({k: v for k, v in obs().items() if k != "camera_id"}), "camera_id: Field required"),
        (json.dumps(obs(zones=[dict(zone_id="z1", count=-1, visible_area_m2=10)])),
         "zones[0].count: Input should be greater than or equal to 0"),
        (json.dumps(obs(seq="seven")), "seq: Input should be a valid integer"),
        (json.dumps(obs(health="on fire")), "health: Input should be 'ok', 'camera_offline', 'view_moved', 'view_unverified', 'frozen' or 'degraded'"),
        (json.dumps(obs(colour="red")), "colour: Extra inputs are not permitted"),
        (json.dumps(obs(zones=[dict(zone_id="z1", count=float("nan"), visible_area_m2=10)])),
         "zones[0].count: Input should be a finite number"),
        (b"\xff\xfe", "(record): not UTF-8"),
    ],
)
def test_invalid_records_name_the_field(raw, message):
    with pytest.raises(RecordError) as ei:
        decode(Observation, raw)
    assert str(ei.value).startswith(message), str(ei.value)


def _ok_state(updated_at: float) -> ZoneState:
    return ZoneState(zone_id="z1", status="ok", count=40.0, density=0.5, capacity=100, capacity_ratio=0.4,
                     sources=["cam-a"], updated_at=updated_at, computed_at=updated_at)


def test_as_of_keeps_fresh_values():
    s = _ok_state(T0)
    assert as_of(s, T0 + 9.9, 10) is s


def test_as_of_turns_stale_values_unknown_not_zero():
    s = as_of(_ok_state(T0), T0 + 30, 10)
    assert s.status == "unknown"
    assert s.count is None and s.density is None and s.capacity_ratio is None
    assert s.last_known.count == 40.0 and s.last_known.at == T0
    assert "30 s old" in s.reason
