"""Batched fusion (control.fusion.fuse_many, ZoneBook.apply_many) is the per-observation
fusion, vectorised: property tests on random zones and random batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control.fusion import Reading, fuse, fuse_many
from control.ground import Part

CAMS = ["a", "b", "c", "d", "e"]

densities = st.floats(0.0, 8.0, allow_nan=False)
variances = st.floats(1e-4, 5.0, allow_nan=False)
confidences = st.floats(0.05, 1.0, allow_nan=False)
readings_st = st.builds(Reading, densities, variances, confidences)


@st.composite
def problems(draw):
    """One zone: parts seen by random sets of cameras, fresh readings, history, cameras
    whose view could not be placed, and a prior (the filter's density) or none."""
    n_parts = draw(st.integers(1, 5))
    parts = [Part(frozenset(draw(st.sets(st.sampled_from(CAMS), max_size=3))), draw(st.floats(0.5, 500.0)))
             for _ in range(n_parts)]
    fresh = draw(st.sets(st.sampled_from(CAMS)))
    readings = {c: draw(readings_st) for c in sorted(fresh)}
    old = draw(st.sets(st.sampled_from([c for c in CAMS if c not in fresh]))) if len(fresh) < len(CAMS) else set()
    history = {c: draw(readings_st) for c in sorted(old)}
    unplaced = {c: draw(st.floats(0.0, 1.5)) for c in sorted(draw(st.sets(st.sampled_from(sorted(fresh))))
                                                            if fresh else set())}
    prior = draw(st.none() | st.tuples(densities, st.floats(0.0, 2.0)))
    pd, pv = (None, 0.0) if prior is None else prior
    return parts, readings, history, pd, pv, unplaced


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(problems(), min_size=1, max_size=8))
def test_fuse_many_is_fuse_for_every_zone(batch):
    many = fuse_many(batch)
    for i, (parts, readings, history, pd, pv, unplaced) in enumerate(batch):
        one = fuse(parts, readings, history, pd, pv, unplaced)
        assert close(many.count[i], one.count), (i, many.count[i], one.count)
        assert close(many.variance[i], one.variance)
        assert close(many.estimated_variance[i], one.estimated_variance)
        assert close(many.seen_m2[i], one.seen_m2)
        assert close(many.estimated_m2[i], one.estimated_m2)
        assert close(many.confidence[i], one.confidence)


def test_fuse_many_of_nothing():
    assert len(fuse_many([]).count) == 0


# ----------------------------------------------------------------------------- the zone book

from crowdflow.records import GateFlow, Observation, ZoneCount  # noqa: E402
from crowdflow.site import load_site  # noqa: E402

from control import zones as zones_mod  # noqa: E402
from control.zones import ZoneBook  # noqa: E402

from .conftest import SITE_FILE  # noqa: E402

SITE = load_site(SITE_FILE)  # the real site: zones seen by several cameras, gates between zones
T0 = 1_790_000_000.0


@st.composite
def observations(draw):
    """A random batch from the site's cameras: counts, healths, some out of order, gate
    crossings, now and then a preset the site does not know (the view cannot be placed)."""
    out = []
    for seq in range(draw(st.integers(1, 40))):
        cam = draw(st.sampled_from(SITE.cameras))
        health = draw(st.sampled_from(["ok"] * 6 + ["camera_offline", "degraded"]))
        zs = [ZoneCount(zone_id=z, count=draw(st.floats(0, 200)), visible_area_m2=draw(st.floats(5, 400)),
                        confidence=draw(st.floats(0.1, 1.0)))
              for z in cam.zones if draw(st.booleans()) or len(cam.zones) == 1]
        gates = [GateFlow(gate_id=g.id, inflow=draw(st.integers(0, 30)), outflow=draw(st.integers(0, 30)))
                 for g in SITE.gates if g.camera == cam.id and draw(st.booleans())]
        t = T0 + draw(st.floats(0, 40))  # a batch spans up to 40 s, out of order too (stale after 10 s)
        out.append(Observation(camera_id=cam.id, agent_id="t", seq=seq, captured_at=t, health=health, zones=zs,
                               gates=gates, preset=draw(st.sampled_from([None, None, None, "home", "elsewhere"]))))
    return out  # in any order: apply_many takes them as given, as apply() one after the other


def _filters(book: ZoneBook) -> dict:
    return {z: (f.n, f.r, f.p_nn, f.p_nr, f.p_rr, f.t) for z, f in book._filters.items()}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(observations(), min_size=1, max_size=3), st.booleans())
def test_a_batch_is_applied_as_one_by_one(batches, future):
    """Batches through ZoneBook.apply_many (zones fused together, numpy for any number of
    zones) leave the same filters, views and pending flows, and give the same zone states,
    as the same observations through apply() one at a time (scalar fusion)."""
    one, many = ZoneBook(SITE, stale_after_s=10), ZoneBook(SITE, stale_after_s=10)
    now = None
    for batch in batches:
        now = (batch[-1].captured_at - 20) if future else None  # then some views are "in the future"
        old = zones_mod.FUSE_MANY_MIN
        try:
            zones_mod.FUSE_MANY_MIN = 10**9
            touched_one = set().union(*(one.apply(o, now) for o in batch))
            zones_mod.FUSE_MANY_MIN = 1
            touched_many = many.apply_many(batch, now)
        finally:
            zones_mod.FUSE_MANY_MIN = old
        assert touched_one == touched_many
        assert one._views == many._views and one._last_ok == many._last_ok
        assert one._pending_flow == pytest.approx(many._pending_flow, rel=1e-9, abs=1e-9)
        f1, f2 = _filters(one), _filters(many)
        assert f1.keys() == f2.keys()
        for z in f1:
            assert f1[z] == pytest.approx(f2[z], rel=1e-9, abs=1e-9), z
    t = batches[-1][-1].captured_at + 1
    zones_mod.FUSE_MANY_MIN, old = 1, zones_mod.FUSE_MANY_MIN
    try:
        s_many = many.states(t)
    finally:
        zones_mod.FUSE_MANY_MIN = old
    s_one = {z.id: one.state(z.id, t) for z in SITE.zones}
    for z in s_one:
        a, b = s_one[z].model_dump(), s_many[z].model_dump()
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-6), (z, k)
            elif k != "forecast":
                assert a[k] == b[k], (z, k)
