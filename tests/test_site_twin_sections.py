"""The site sections the twin needs: closure points, holding areas, the staff pool, metering."""

from __future__ import annotations

import copy

from crowdflow import vocab
from crowdflow.site import MeteringAction

from .conftest import problems_of


def road(d, rid):
    return next(r for r in d["roads"] if r["id"] == rid), next(i for i, r in enumerate(d["roads"]) if r["id"] == rid)


def test_real_site_has_staffed_cuts_holding_areas_and_a_pool(site):
    for r in site.roads:
        if r.frees:
            assert r.closure_points and r.officers > 0 and r.setup_min > 0
    assert {h.gate for h in site.holding_areas} >= {"gate-11f", "gate-1f", "gate-xsz-6", "gate-xsz-9"}
    assert site.staff.pool >= max(r.officers for r in site.roads)
    assert "metering" in vocab.ACTION_TYPES
    assert MeteringAction(type="metering", gate="gate-11f", per_min=60).per_min == 60


def test_a_cut_that_frees_area_needs_closure_points(raw):
    d = copy.deepcopy(raw)
    r, i = road(d, "road-jiabin")
    r["closure_points"] = []
    assert f"roads[{i}].closure_points: a road whose cut frees pedestrian area needs closure points" in problems_of(d)
    d = copy.deepcopy(raw)
    r, i = road(d, "road-jiabin")
    r["closure_points"][0]["post"] = "post-moon"
    assert f"roads[{i}].closure_points[0].post: unknown post 'post-moon'" in problems_of(d)


def test_holding_areas_and_gate_posts_name_known_things(raw):
    d = copy.deepcopy(raw)
    d["holding_areas"][0]["gate"] = "gate-moon"
    d["gates"][0]["post"] = "post-moon"
    probs = problems_of(d)
    assert "holding_areas[0].gate: unknown gate 'gate-moon'" in probs
    assert "gates[0].post: unknown post 'post-moon'" in probs


def test_staff_pool_must_staff_the_largest_measure(raw):
    d = copy.deepcopy(raw)
    d["staff"]["pool"] = 3
    assert any(p.startswith("staff.pool: 3 cannot staff the largest measure") for p in problems_of(d))
    d = copy.deepcopy(raw)
    d["staff"]["base"] = [116.40, 39.90]  # Beijing, not Chongqing
    assert any(p.startswith("staff.base: is ") for p in problems_of(d))


def test_metering_in_a_plan_names_a_known_gate(raw):
    d = copy.deepcopy(raw)
    d["plans"][0]["levels"][0]["actions"].append({"type": "metering", "gate": "gate-moon", "per_min": 40})
    n = len(d["plans"][0]["levels"][0]["actions"]) - 1
    assert f"plans[0].levels[0].actions[{n}].gate: unknown gate 'gate-moon'" in problems_of(d)
