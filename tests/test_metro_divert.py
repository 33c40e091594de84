"""Site measures for issue 11's last gaps, on the real site and scenario files: the metro
operator's 只上不下 (passengers ride on to a neighbouring station and walk back) and metering
at the bridge's north head.

The twin must divert, not delete: every passenger sent on is still in the model (in transit)
and reaches the site later through the walk-in entry the measure names.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from control.measures import MeasurePlanner
from crowdflow.site import MeteringAction, MetroLimitAction
from sim.model import Model
from sim.plantwin import ModelTwin
from sim.scenario import hhmm_to_s, parse_scenario

from .conftest import problems_of
from .test_mpc import run_loop


def _balance(st) -> float:
    """Arrived − (in the model incl. in transit + out + gave up): 0 when nobody was deleted."""
    return st.arrived - (st.people + st.exited + st.gave_up)


def test_board_only_diverts_exit_arrivals_to_the_walk_in_entry_later_and_deletes_nobody(site, scenario):
    m = Model(site, scenario, seed=3)
    m.run_until(hhmm_to_s("19:45"))
    net, st = m.net, m.state
    s9, s6 = net.sources.index("metro-9"), net.sources.index("metro-6")
    jiabin, jfb = net.sources.index("walk-jiabin"), net.sources.index("walk-jiefangbei")
    measure = site.measure_by_id["board-only-xsz"]
    div9 = next(a for a in measure.actions if getattr(a, "gate", None) == "gate-xsz-9").divert
    m.set_actions(measure.actions, in_effect=True)
    in9, in_j, arr0 = st.src_in[s9], st.src_in[jiabin], st.arrived
    first = min(a.divert.extra_min for a in measure.actions if isinstance(a, MetroLimitAction))
    # until the first detour is over nobody has come back, and nothing leaves the metro exits
    m.run_until(m.t + first * 60 - 30)
    assert st.src_in[s9] - in9 < 1.0
    assert st.rerouted > 500 and st.in_transit == pytest.approx(st.rerouted, rel=1e-9)
    assert abs(_balance(st)) < 1e-6
    m.run_until(m.t + 60)
    assert st.in_transit < st.rerouted  # the first ones are back, on foot
    # exit 9's passengers come back at the 1F frontage after their own detour: its walk-in
    # entry then passes its own walkers plus them
    m.run_until(m.t + (div9.extra_min - first) * 60 - 60)
    own = (st.src_in[jiabin] - in_j) / (div9.extra_min - 0.5)  # per minute, before they come
    j1 = st.src_in[jiabin]
    m.run_until(m.t + 600)
    assert (st.src_in[jiabin] - j1) / 10 > own + 30
    assert abs(_balance(st)) < 1e-6
    # released: the metro exits pass again, everybody in transit still arrives
    m.set_actions([])
    m.run_until(m.t + 20 * 60)
    assert st.in_transit == 0 and st.src_in[s9] - in9 > 300
    assert abs(_balance(st)) < 1e-6
    assert st.arrived > arr0
    # each passenger sent on costs the detour: 12 min (exit 6, via 较场口) or 14 (exit 9, via 朝天门)
    assert 12.0 <= st.transit_wait_s / st.rerouted / 60 <= 14.0
    assert st.src_in[jfb] > 0


def test_diverted_passengers_keep_their_visit_and_the_state_copy_keeps_them(site, scenario):
    m = Model(site, scenario, seed=1)
    m.run_until(hhmm_to_s("20:00"))
    m.set_actions(site.measure_by_id["board-only-xsz"].actions, in_effect=True)
    m.run_until(m.t + 300)
    st = m.state
    k_mix = m.net.src_mix[m.net.sources.index("metro-9")] + m.net.src_mix[m.net.sources.index("metro-6")]
    carried = st.transit.sum((0, 1))
    # in transit by the classes the metro arrivals had (their chains), nobody turned into another
    assert set(np.flatnonzero(carried > 1e-9)) <= set(np.flatnonzero(k_mix > 0))
    snap = m.snapshot()
    assert snap.state.in_transit == pytest.approx(st.in_transit)
    before = st.in_transit
    snap.run_until(snap.t + 1200)
    assert snap.state.rerouted > st.rerouted and st.in_transit == before  # the copy moved alone
    assert abs(_balance(snap.state)) < 1e-6


def test_the_surge_at_exit_9_goes_on_instead_of_packing_the_concourse(site, scenario):
    """The yardstick's injected surge (+120 p/min × 1.3 at exit 9, 20:15–20:25): metered, it
    packs the 300 m² concourse past 4 p/m²; under 只上不下 nobody waits there."""
    sc = scenario.model_copy(update={"demand_scale": 1.3})

    def run(actions):
        m = Model(site, sc, seed=0)
        m.run_until(hhmm_to_s("20:05"))
        m.set_actions(actions, in_effect=True)
        s9 = m.net.sources.index("metro-9")
        worst = 0.0
        while m.t < hhmm_to_s("20:35"):
            if hhmm_to_s("20:15") <= m.t < hhmm_to_s("20:25"):
                extra = m.state.rng.poisson(156 / 60 * m.step_s)
                m.state.held[s9] += extra * m.net.src_mix[s9]
                m.state.arrived += extra
            m.step()
            worst = max(worst, m.zone_peak_density()["xsz-exit9"])
        return worst, m

    metered, _ = run(site.measure_by_id["meter-xsz"].actions)
    diverted, m = run(site.measure_by_id["board-only-xsz"].actions)
    assert metered > 4.0
    assert diverted < 2.0 and m.state.rerouted > 1500


def test_north_head_metering_holds_jiangbei_walkers_outside_the_bridge(site, scenario):
    m = Model(site, scenario.model_copy(update={"demand_scale": 1.3}), seed=2)
    m.run_until(hhmm_to_s("19:30"))
    m.set_actions(site.measure_by_id["meter-bridge-n"].actions, in_effect=True)
    s = m.net.sources.index("walk-jiangbei")
    e0 = m.state.src_in[s]
    m.run_until(m.t + 1200)
    assert m.state.src_in[s] - e0 == pytest.approx(25 * 20, rel=0.03)
    assert m.queue[s] > 100
    hold = next(h for h in site.holding_areas if h.gate == "gate-bridge-n")
    assert m.zone_peak_density()["bridge-n-head"] >= m.queue[s] / hold.area_m2 - 1e-9


# ----------------------------------------------------------------------------- validation


def test_the_new_measures_validate_and_are_in_the_baseline_bundles_too(site):
    board = site.measure_by_id["board-only-xsz"]
    assert board.plans == ["xiaoshizi"] and board.stage >= 3 and board.cost.other > 0
    assert board.setup_min >= max(a.divert.setup_min for a in board.actions if isinstance(a, MetroLimitAction))
    assert {a.divert.zone for a in board.actions if isinstance(a, MetroLimitAction)} == {"cangbai-walk", "jiabin-frontage"}
    assert site.measure_by_id["meter-bridge-n"].stage == 1
    # fairness: the reactive baseline's level bundles carry the same levers
    lv1 = next(lv for p in site.plans if p.id == "xiaoshizi" for lv in p.levels if lv.level == "I")
    assert [a for a in lv1.actions if isinstance(a, MetroLimitAction)] == [a for a in board.actions if isinstance(a, MetroLimitAction)]
    lv2 = next(lv for p in site.plans if p.id == "bridge" for lv in p.levels if lv.level == "II")
    assert any(isinstance(a, MeteringAction) and a.gate == "gate-bridge-n" for a in lv2.actions)


def test_a_diversion_to_an_unknown_zone_or_to_its_own_exit_names_the_path(raw):
    i = next(i for i, m in enumerate(raw["measures"]) if m["id"] == "board-only-xsz")
    bad = copy.deepcopy(raw)
    bad["measures"][i]["actions"][0]["divert"]["zone"] = "nowhere"
    bad["measures"][i]["actions"][1]["divert"]["zone"] = "xsz-exit9"
    probs = problems_of(bad)
    assert any(p.startswith(f"measures[{i}].actions[0].divert.zone") and "unknown zone" in p for p in probs)
    assert any(p.startswith(f"measures[{i}].actions[1].divert.zone") and "diverts from" in p for p in probs)
    bad = copy.deepcopy(raw)
    bad["measures"][i]["setup_min"] = 1
    assert any(p.startswith(f"measures[{i}].setup_min") and "start-up" in p for p in problems_of(bad))
    bad = copy.deepcopy(raw)
    bad["measures"][i]["actions"][0]["divert"]["extra_min"] = 0
    assert any(p.startswith(f"measures[{i}].actions[0].divert.extra_min") for p in problems_of(bad))


def test_a_scenario_without_a_walk_in_entry_where_passengers_are_sent_is_refused(site, scenario):
    from crowdflow.site import ConfigError

    data = scenario.model_dump(mode="json")
    data["demand"]["walk-jiabin"]["gate"] = "gate-1f"  # no walkers on foot at the frontage any more
    data["demand"]["walk-jiabin"]["zone"] = "jiabin-frontage"
    with pytest.raises(ConfigError) as e:
        parse_scenario(data, site)
    assert "divert.zone" in str(e.value) and "jiabin-frontage" in str(e.value)


# ----------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def exit9_surge(scenario):
    """Exit 9 at four times its May Day rate 19:00–19:40 (a concert lets out upstream)."""
    demand = dict(scenario.demand)
    d = demand["metro-9"]
    demand["metro-9"] = d.model_copy(update={"per_min": {"18:00": 40, "18:55": 40, "19:00": 260, "19:40": 260,
                                                         "19:45": 40, "21:00": 40}})
    return scenario.model_copy(update={"demand": demand})


def test_engine_answers_a_surge_at_exit_9_with_the_station_measure_and_says_why(site, exit9_surge):
    planner = MeasurePlanner(site, ModelTwin(site, exit9_surge), cycle_s=60.0, budget_s=5.0)
    engine, recs, _ = run_loop(site, exit9_surge, "18:50", "19:40", planner)
    on = [r for r in recs if r.status == "auto_applied" and "board-only-xsz" in r.measures_on]
    assert on, f"the engine never sent exit 9's passengers on: {[(r.measures_on, r.measures_off) for r in recs if r.status == 'auto_applied']}"
    why = [x for x in on[0].reasons if "只上不下" in x.text.zh]
    assert why and all(x.text.en and "Xiaoshizi boarding only" in x.text.en for x in why)
    assert any("采取" in x.text.zh and "with:" in x.text.en for x in why)


# ----------------------------------------------------------------------------- inbound limit


def test_inbound_limit_queues_the_homeward_crowd_in_the_pen_outside_not_in_the_exit(site, scenario):
    from crowdflow.site import MetroInboundAction

    m = Model(site, scenario, seed=4)
    m.run_until(hhmm_to_s("21:30"))
    net, st = m.net, m.state
    e9 = net.exits.index("metro-9")
    x0, n0 = st.exits[e9], m.zone_counts()["xsz-exit9"]
    m.set_actions([MetroInboundAction(type="metro_inbound", gate="gate-xsz-9", per_min=20)], in_effect=True)
    m.run_until(m.t + 900)
    assert st.exits[e9] - x0 == pytest.approx(20 * 15, rel=0.05)  # let in at the limited rate
    pen = next(h for h in site.holding_areas if h.gate == "gate-xsz-9" and h.queue == "departures")
    assert st.xq[e9] > 10  # the rest wait outside (others turn to exit 6: the pen is a queue wait on their route) …
    assert m.zone_counts()["xsz-exit9"] < n0 + 20  # … not on the exit's stairs
    assert m.zone_peak_density()[pen.zone] >= st.xq[e9] / pen.area_m2 - 1e-9  # at the pen's own density
    assert abs(_balance(st)) < 1e-6
    # the queue counts as a wait in the planning twin's elements (its wait target)
    m.set_actions([])
    m.run_until(m.t + 1200)
    assert st.xq[e9] == 0 and abs(_balance(st)) < 1e-6  # released: the pen empties into the station


def test_an_inbound_limit_needs_a_pen_and_a_gate_has_one_pen_per_queue(raw):
    i = next(i for i, m in enumerate(raw["measures"]) if m["id"] == "inbound-xsz")
    bad = copy.deepcopy(raw)
    bad["holding_areas"] = [h for h in bad["holding_areas"] if h.get("queue") != "departures"]
    assert any(p.startswith(f"measures[{i}].actions[0].gate") and "departures" in p for p in problems_of(bad))
    bad = copy.deepcopy(raw)
    j = next(j for j, h in enumerate(bad["holding_areas"]) if h["id"] == "hold-xsz-9-out")
    bad["holding_areas"].append(dict(bad["holding_areas"][j], id="hold-xsz-9-out2"))
    assert any(p.startswith(f"holding_areas[{len(bad['holding_areas']) - 1}].gate") and "already" in p
               for p in problems_of(bad))
