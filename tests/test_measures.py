"""Measures as first-class site data, metering in the twin, and staff dispatch (pure)."""

from __future__ import annotations

import copy

import pytest

from control.dispatch import StaffBook
from crowdflow.site import MeteringAction, StaffingAction
from sim.model import Model
from sim.scenario import hhmm_to_s

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
    assert sum(r.headcount for r in site.staff.reserves) > 0


def test_metering_needs_a_holding_area(raw):
    bad = copy.deepcopy(raw)
    act = bad["measures"][0]["actions"][0]
    assert act["type"] == "metering"
    act.pop("holding_area_m2", None)
    act.pop("holding_zone", None)
    assert any("measures[0].actions[0]" in p and "holding" in p for p in problems_of(bad))


def test_measure_release_must_be_below_its_trigger(raw):
    bad = copy.deepcopy(raw)
    bad["measures"][1]["release"] = {"forecast_ratio": 0.95, "quiet_min": 5}
    assert any(p.startswith("measures[1].release.forecast_ratio") for p in problems_of(bad))


def test_measure_needing_more_staff_than_the_pool_is_refused(raw):
    bad = copy.deepcopy(raw)
    bad["measures"][0]["actions"].append({"type": "staffing", "post": "post-riverside", "headcount": 5000})
    assert any(p.startswith("measures[0].actions") and "reserves hold" in p for p in problems_of(bad))


def test_measure_names_unknown_things(raw):
    bad = copy.deepcopy(raw)
    bad["measures"][0]["plans"] = ["nowhere"]
    bad["measures"][0]["relieves"] = ["no-zone"]
    probs = problems_of(bad)
    assert any(p.startswith("measures[0].plans[0]") for p in probs)
    assert any(p.startswith("measures[0].relieves[0]") for p in probs)


def test_metering_holds_arrivals_behind_a_metro_exit(site, scenario):
    """A metered source lets at most the rate through; the rest wait in its holding queue."""
    runs = {}
    for rate in (None, 30):
        m = Model(site, scenario, seed=3, tod_s=hhmm_to_s("19:30"))
        if rate is not None:
            m.set_actions([MeteringAction(type="metering", gate="gate-xsz-6", max_per_min=rate, holding_area_m2=300)])
        s = m.net.source_gate.index("gate-xsz-6")
        entered = 0
        for _ in range(120):  # 10 minutes
            m.step()
            entered += int(m.last_entered[s])
        runs[rate] = (entered, int(m.queue[s]))
    assert runs[None][0] > 600  # ≈75/min arrive at exit 6 at 19:30
    assert runs[30][0] <= 30 * 10 + 5
    assert runs[30][1] > 200  # held in the station, not lost


def test_metering_a_link_gate_caps_the_inward_flow(site, scenario):
    m = Model(site, scenario, seed=1, tod_s=hhmm_to_s("20:00"))
    m.set_counts({"cangbai-plaza": 1500})
    m.set_actions([MeteringAction(type="metering", gate="gate-11f", max_per_min=60, holding_zone="cangbai-plaza")])
    k = next(i for i, e in enumerate(m.net.edges) if e.gate == "gate-11f" and e.gate_dir == "in")
    inward = 0
    for _ in range(60):  # 5 minutes
        m.step()
        inward += int(m.last_moved[k])
    # the rate, plus at most the post's orderly-flow gain (≤ 25 %) and rounding
    assert 100 < inward <= 60 * 5 * 1.25 + 10


# ----------------------------------------------------------------------------- dispatch


def test_dispatch_sends_the_nearest_reserve_and_says_when_they_are_in_place(site):
    book = StaffBook(site)
    now = 1_746_100_800.0  # 2025-05-01 20:00 Asia/Shanghai
    moves = book.deploy("meter-xsz", [], now)
    assert moves is not None
    extra = sum(a.headcount for a in site.measure_by_id["meter-xsz"].actions if isinstance(a, StaffingAction)) \
        - site.post_by_id["post-xsz"].headcount
    assert sum(m.n for m in moves) == extra
    first = moves[0]
    nearest = min(site.staff.reserves, key=lambda r: book.travel_s(r.id, "post-xsz"))
    assert first.src == nearest.id and first.dst == "post-xsz"
    assert first.depart_at == now and first.in_place_at == pytest.approx(now + book.travel_s(nearest.id, "post-xsz"))
    assert "到位" in first.text.zh and "in place" in first.text.en and "20:0" in first.text.en
    assert book.available() == sum(r.headcount for r in site.staff.reserves) - extra


def test_dispatch_prepositions_by_forecast(site):
    """Needed in 12 minutes: the team leaves so as to be in place (with set-up) just in time."""
    book = StaffBook(site)
    now = 1_746_100_800.0
    moves = book.deploy("cut-bridge", [], now, needed_at=now + 12 * 60, setup_s=8 * 60)
    assert moves
    for mv in moves:
        assert mv.depart_at >= now
        assert mv.in_place_at <= now + 12 * 60 - 8 * 60 + 1 or mv.depart_at == now


def test_dispatch_never_overcommits_the_pool(site):
    book = StaffBook(site)
    book.free = {r.id: 0 for r in site.staff.reserves}
    book.free[site.staff.reserves[0].id] = 3
    assert book.shortfall([], "meter-xsz") == 1  # needs 4 beyond the post's 6
    assert book.deploy("meter-xsz", [], 0.0) is None
    assert book.available() == 3  # nothing moved


def test_two_measures_at_one_post_need_the_larger_headcount_and_release_keeps_the_other(site):
    book = StaffBook(site)
    # meter-xsz: post-xsz 10; cut-cangbai: post-xsz 14 (normal 6)
    m1 = book.deploy("meter-xsz", [], 0.0)
    m2 = book.deploy("cut-cangbai", ["meter-xsz"], 0.0)
    assert sum(m.n for m in m1) == 4 and sum(m.n for m in m2 if m.dst == "post-xsz") == 4
    back = book.release("cut-cangbai", ["meter-xsz"], 3600.0)
    assert sum(m.n for m in back if m.src == "post-xsz") == 4  # the 4 extra go back, meter-xsz keeps its 4
    assert book.present()["post-xsz"] == 4
    back = book.release("meter-xsz", [], 3600.0)
    assert sum(m.n for m in back) == 4 and book.present() == {}
    assert book.available() == sum(r.headcount for r in site.staff.reserves)


def test_release_waits_for_the_minimum_block(site):
    book = StaffBook(site)
    book.deploy("meter-xsz", [], 1000.0)
    back = book.release("meter-xsz", [], 1100.0)
    assert back and all(m.depart_at == 1000.0 + site.staff.min_block_min * 60 for m in back)
    assert "撤回" in back[0].text.zh
