"""Property-based fuzzing (hypothesis) of every record decoder, the ingest boundary and raw
stream bytes through the real control service.

Properties: ``decode`` raises nothing but RecordError on any bytes, any JSON and any mutation
of a valid record, and what it accepts encodes back to an equal record; ``ingest.check``
answers every decodable observation without raising; control, fed arbitrary stream entries
through a real Redis, never raises, and every entry ends applied, duplicate or dead-lettered
(nothing pending). Examples per property: CROWDFLOW_FUZZ_EXAMPLES (1,000 in CI; the script
scripts/fuzz_records.py runs 10,000)."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control.ingest import check
from control.service import GROUP, ControlService
from crowdflow.bus import Keys
from crowdflow.records import (
    EVENT_TYPES, Command, Observation, RecordError, ZoneCount, GateFlow, decode,
)
from crowdflow.site import load_site

from .conftest import SITE_FILE

N = int(os.environ.get("CROWDFLOW_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
SITE = load_site(SITE_FILE)
NOW = time.time()

DECODERS = [Observation, Command, *EVENT_TYPES.values()]

json_scalar = (st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                          max_leaves=12)


def _valid() -> dict:
    """One valid sample of each decoder, as plain data."""
    from crowdflow.records import (Alarm, AuditEntry, CommandResult, PlanState, Recommendation, SiteMode,
                                   ZoneState)
    from crowdflow.site import Text

    obs = Observation(camera_id="cam-cangbai-plaza", agent_id="a", seq=1, captured_at=NOW, sent_at=NOW,
                      preset=SITE.camera_by_id["cam-cangbai-plaza"].presets[0].id,
                      zones=[ZoneCount(zone_id="cangbai-plaza", count=12.0, visible_area_m2=500.0)],
                      gates=[GateFlow(gate_id="gate-11f", inflow=3, outflow=1)])
    recs = [
        obs,
        Command(id="c" * 16, kind="override", plan_id="bridge", level="III", note="n", user="u", role="commander",
                issued_at=NOW),
        ZoneState(zone_id="cangbai-plaza", status="ok", count=3.0, density=0.1, capacity=100, computed_at=NOW),
        PlanState(plan_id="bridge", level="IV", updated_at=NOW),
        Recommendation(id="r1", plan_id="bridge", level="IV", from_level=None, created_at=NOW, status="pending"),
        Alarm(id="a1", kind="frozen", severity="warning", text=Text(zh="冻结", en="frozen"), raised_at=NOW),
        SiteMode(mode="normal", since=NOW, by="system"),
        AuditEntry(id="e1", at=NOW, actor="li", role="commander", action="set_mode"),
        CommandResult(command_id="c" * 16, ok=True, at=NOW),
    ]
    return {type(r): json.loads(r.encode()) for r in recs}


VALID = _valid()


def decodes_or_refuses(cls, raw) -> None:
    try:
        rec = decode(cls, raw)
    except RecordError as e:
        assert str(e)  # a reason, naming the field
        return
    assert decode(cls, rec.encode()) == rec  # what is accepted round-trips


@FUZZ
@given(cls=st.sampled_from(DECODERS), raw=st.binary(max_size=300))
def test_any_bytes(cls, raw):
    decodes_or_refuses(cls, raw)


@FUZZ
@given(cls=st.sampled_from(DECODERS), value=json_value)
def test_any_json(cls, value):
    try:
        raw = json.dumps(value)
    except (ValueError, OverflowError):
        return
    decodes_or_refuses(cls, raw)
    decodes_or_refuses(cls, json.dumps({"v": 1, **value}) if isinstance(value, dict) else raw)


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            yield from _paths(v[0], prefix + (k, 0))


@st.composite
def mutated(draw):
    cls = draw(st.sampled_from(list(VALID)))
    d = json.loads(json.dumps(VALID[cls]))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(d)) or [("v",)]))
        node = d
        for p in path[:-1]:
            node = node[p] if isinstance(node, dict) or isinstance(p, int) and p < len(node) else node
        op = draw(st.sampled_from(["set", "drop", "add"]))
        if not isinstance(node, dict):
            continue
        if op == "set":
            node[path[-1]] = draw(json_value)
        elif op == "drop":
            node.pop(path[-1], None)
        else:
            node[draw(st.text(min_size=1, max_size=8))] = draw(json_value)
    return cls, d


@FUZZ
@given(case=mutated())
def test_mutated_valid_records(case):
    cls, d = case
    try:
        raw = json.dumps(d)
    except (ValueError, OverflowError):
        return
    decodes_or_refuses(cls, raw)


@FUZZ
@given(case=mutated(), now_offset=st.floats(-1e5, 1e5))
def test_ingest_check_answers_every_decodable_observation(case, now_offset):
    cls, d = case
    if cls is not Observation:
        return
    try:
        obs = decode(Observation, json.dumps(d))
    except (RecordError, ValueError, OverflowError):
        return
    v = check(obs, SITE, NOW + now_offset, received_at=NOW)
    assert (v.obs is None) == (v.reason is not None)
    if v.obs is not None:
        assert all(zc.count / zc.visible_area_m2 <= 10 for zc in v.obs.zones)
        assert math.isfinite(v.obs.captured_at)


entry_value = st.binary(max_size=200) | json_value.map(lambda v: json.dumps(v, default=str).encode())
# Field names too may be anything, bytes that are not UTF-8 included.
entries = st.lists(st.dictionaries(st.sampled_from(["rec", "rec", "junk", b"\xff\xfe"]), entry_value,
                                   min_size=1, max_size=2), min_size=1, max_size=10)


@pytest.fixture(scope="module")
def svc_rig(redis_url):
    from crowdflow.bus import connect

    r = connect(redis_url)
    keys = Keys(f"t-fuzz-{os.getpid()}")
    svc = ControlService(SITE, r, keys, consumer="fuzz")
    svc.start()
    yield svc, r, keys
    for k in r.scan_iter(match=keys.all_keys_pattern(), count=1000):
        r.delete(k)
    r.close()


@settings(max_examples=max(10, N // 10), deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=entries, valid_too=st.booleans())
def test_raw_stream_entries_never_stop_control(svc_rig, batch, valid_too):
    svc, r, keys = svc_rig
    for fields in batch:
        r.xadd(keys.obs, fields)
    if valid_too:
        o = Observation(camera_id="cam-cangbai-plaza", agent_id="fz", seq=int(time.time() * 1e6), captured_at=time.time(),
                        zones=[ZoneCount(zone_id="cangbai-plaza", count=5.0, visible_area_m2=500.0)])
        r.xadd(keys.obs, {"rec": o.encode()})
    before = svc.applied + svc.rejected + svc.duplicates
    n = len(batch) + valid_too
    for _ in range(3):
        svc.step(block_ms=1)
    assert svc.applied + svc.rejected + svc.duplicates - before == n
    assert r.xpending(keys.obs, GROUP)["pending"] == 0
