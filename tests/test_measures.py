"""Measures as first-class site data, metering in the twin, and staff dispatch (pure)."""

from __future__ import annotations

import copy

import pytest

from control.dispatch import BASE, StaffBook
from crowdflow.site import MeteringAction

from .conftest import problems_of


def test_real_site_declares_measures_with_metering_first(site):
    stages = {m.id: m.stage for m in site.measures}
    kinds = {m.id: {a.type for a in m.actions} for m in site.measures}
    metering = [mid for mid, k in kinds.items() if "metering" in k]
    # Entrances (11F, 1F), the metro exits and the bus drop-off can be metered ...
    gates = {a.gate for m in site.measures for a in m.actions if isinstance(a, MeteringAction)}
    assert {"gate-11f", "gate-1f", "gate-xsz-6", "gate-xsz-9", "gate-bus-cangbai"} <= gates
    # ... as the first lever: every metering measure is stage 1, every road closure later.
    assert all(stages[m] == 1 for m in metering)
    cuts = [mid for mid, k in kinds.items() if "traffic_cutoff" in k]
    assert cuts and all(stages[c] > max(stages[m] for m in metering) for c in cuts)
    for m in site.measures:
        assert m.release.forecast_ratio < m.trigger.forecast_ratio  # hysteresis
        assert m.name.zh and m.name.en
    assert site.staff.pool > 0


def test_measure_release_must_be_below_its_trigger(raw):
    bad = copy.deepcopy(raw)
    bad["measures"][1]["release"] = {"forecast_ratio": 0.95, "quiet_min": 5}
    assert any(p.startswith("measures[1].release.forecast_ratio") for p in problems_of(bad))


def test_measure_needing_more_staff_than_the_pool_is_refused(raw):
    bad = copy.deepcopy(raw)
    bad["measures"][0]["actions"].append({"type": "staffing", "post": "post-riverside", "headcount": 5000})
    assert any(p.startswith("measures[0].actions") and "staff pool holds" in p for p in problems_of(bad))


def test_measure_names_unknown_things(raw):
    bad = copy.deepcopy(raw)
    bad["measures"][0]["plans"] = ["nowhere"]
    bad["measures"][0]["relieves"] = ["no-zone"]
    probs = problems_of(bad)
    assert any(p.startswith("measures[0].plans[0]") for p in probs)
    assert any(p.startswith("measures[0].relieves[0]") for p in probs)


# ----------------------------------------------------------------------------- dispatch


def test_dispatch_says_how_many_go_from_where_to_where_and_when_they_are_in_place(site):
    book = StaffBook(site)
    now = 1_746_100_800.0  # 2025-05-01 20:00 Asia/Shanghai
    moves = book.deploy("cut-cangbai", [], now)
    assert moves is not None
    need = {cp.post: 0 for cp in site.road_by_id["road-cangbai"].closure_points}
    for cp in site.road_by_id["road-cangbai"].closure_points:
        need[cp.post] += cp.officers
    assert {m.dst: m.n for m in moves} == need  # the closure points' officers, at their posts
    for m in moves:
        assert m.src == BASE and m.depart_at == now
        assert m.in_place_at == pytest.approx(now + book.travel_s(BASE, m.dst), abs=1)
        assert m.in_place_at - now >= site.staff.mobilise_min * 60
        assert "到位" in m.text.zh and "in place" in m.text.en
    assert book.available() == site.staff.pool - sum(need.values())


def test_dispatch_prepositions_by_forecast(site):
    """Needed in 40 minutes: the team leaves so as to be in place (with set-up) just in time."""
    book = StaffBook(site)
    now = 1_746_100_800.0
    moves = book.deploy("cut-bridge", [], now, needed_at=now + 40 * 60, setup_s=15 * 60)
    assert moves
    for mv in moves:
        assert mv.depart_at > now
        assert mv.in_place_at == pytest.approx(now + 40 * 60 - 15 * 60, abs=1)


def test_dispatch_never_overcommits_the_pool(site):
    book = StaffBook(site)
    need = sum(book.required(["cut-jiabin"]).values())
    book.free = {BASE: need - 1}
    assert book.shortfall([], "cut-jiabin") == 1
    assert book.deploy("cut-jiabin", [], 0.0) is None
    assert book.available() == need - 1  # nothing moved


def test_two_measures_share_a_post_and_release_keeps_what_the_other_needs(site):
    book = StaffBook(site)
    # meter-11f: the 11F gate's marshals at post-11f; cut-cangbai: 4 officers at post-11f too
    a = book.deploy("meter-11f", [], 0.0)
    b = book.deploy("cut-cangbai", ["meter-11f"], 0.0)
    at_11f = sum(m.n for m in a + b if m.dst == "post-11f")
    assert at_11f == book.required(["meter-11f", "cut-cangbai"])["post-11f"]
    back = book.release("cut-cangbai", ["meter-11f"], 7200.0)
    assert book.present().get("post-11f", 0) == book.required(["meter-11f"])["post-11f"]
    assert all(m.kind == "release" for m in back)
    book.release("meter-11f", [], 7200.0)
    assert book.present() == {} and book.available() == site.staff.pool


def test_release_waits_for_the_minimum_block(site):
    book = StaffBook(site)
    book.deploy("meter-xsz", [], 1000.0)
    back = book.release("meter-xsz", [], 1100.0)
    assert back and all(m.depart_at == 1000.0 + site.staff.min_block_min * 60 for m in back)
    assert "撤回" in back[0].text.zh
