"""Measures change the physics and cost what they cost: staff travel, set-up, tear-down,
one-way, exit-only, metering with holding areas (the real site and scenario)."""

from __future__ import annotations

import pytest

from crowdflow.site import (
    ExitOnlyAction,
    MeteringAction,
    MetroLimitAction,
    OneWayAction,
    StaffingAction,
    TrafficCutoffAction,
)
from crowdflow.site.measures import staff_needed
from sim.model import Model

CUT = TrafficCutoffAction(type="traffic_cutoff", road="road-jiabin")


def at(site, scenario, hhmm: float, seed: int = 0) -> Model:
    m = Model(site, scenario, seed=seed)
    m.run_until(hhmm * 3600)
    return m


def test_road_cut_needs_officers_and_set_up_before_it_frees_space(site, scenario):
    m = at(site, scenario, 19.5)
    road = site.road_by_id["road-jiabin"]
    travel = max(m.staff_board.travel_s[cp.post] for cp in road.closure_points)
    t0 = m.t
    m.set_actions([CUT])
    assert m.cut_roads == set() and m.roads_freed == set()  # ordered, nobody there yet
    m.run_until(t0 + travel + 30)
    assert m.cut_roads == {"road-jiabin"}  # officers there: the road is closed to traffic …
    assert m.roads_freed == set()  # … but the area is not free until set-up is done
    i = m.zones.index("jiabin-frontage")
    own = site.zone_by_id["jiabin-frontage"].walkable_area_m2  # 1,194 m² (199 m on OSM × 6 m)
    assert m.area[i] == own
    m.run_until(t0 + travel + road.setup_min * 60 + 30)
    assert m.roads_freed == {"road-jiabin"} and m.area[i] == pytest.approx(own + 0.5 * 4200)
    assert m.staff_board.dispatched >= road.officers
    # released: cut (and counted) through the tear-down, then open and the officers go back later
    t1 = m.t
    m.set_actions([])
    m.run_until(t1 + road.teardown_min * 60 - 30)
    assert m.cut_roads == {"road-jiabin"}
    m.run_until(t1 + road.teardown_min * 60 + 30)
    assert m.cut_roads == set() and m.roads_freed == set() and m.area[i] == own


def test_pre_positioned_staff_make_the_cut_faster(site, scenario):
    def effective_after(actions_first):
        m = at(site, scenario, 19.5)
        m.set_actions(actions_first)
        m.run_until(m.t + 1800)  # the reserve is there
        t0 = m.t
        m.set_actions(actions_first + [CUT])
        while not m.roads_freed:
            m.step()
        return m.t - t0

    cold = effective_after([])
    warm = effective_after([StaffingAction(type="staffing", post="post-jiabin-crossing", headcount=20),
                            StaffingAction(type="staffing", post="post-riverside", headcount=10)])
    assert warm == pytest.approx(site.road_by_id["road-jiabin"].setup_min * 60, abs=10)
    assert cold > warm + 300


def test_staff_alone_change_no_physics(site, scenario):
    a, b = at(site, scenario, 19.5, seed=3), at(site, scenario, 19.5, seed=3)
    b.set_actions([StaffingAction(type="staffing", post="post-bridge-mid", headcount=30)])
    a.run_until(a.t + 1800)
    b.run_until(b.t + 1800)
    assert a.zone_counts() == b.zone_counts()  # staff widen nothing
    assert b.staff_board.staff_seconds > 0 and a.staff_board.staff_seconds == 0


def test_a_road_with_no_pedestrian_area_costs_but_changes_nothing(site, scenario):
    a, b = at(site, scenario, 19.5, seed=2), at(site, scenario, 19.5, seed=2)
    b.set_actions([TrafficCutoffAction(type="traffic_cutoff", road="road-minzu")])
    a.run_until(a.t + 1800)
    b.run_until(b.t + 1800)
    assert a.zone_counts() == b.zone_counts()
    assert b.cut_roads == {"road-minzu"} and b.staff_board.dispatched >= 3


def test_one_way_removes_counter_flow_on_the_bridge(site, scenario):
    """Both directions on the west walkway lose capacity to counter-flow; one-way gives the
    remaining direction the full width (no loss) and stops the other."""
    def lanes(actions):
        m = at(site, scenario, 20.0, seed=1)
        m.set_actions(actions, in_effect=True)
        net = m.net
        li = [i for i, ln in enumerate(net.lanes) if ln[0] == "bridge-west"]
        c0 = m.state.port_flow.copy()
        m.run_until(m.t + 1200)
        flows = {net.lanes[i][1]: m.state.port_flow[i] - c0[i] for i in li}  # lane entry ports come first
        return flows, m

    both, _ = lanes([])
    one, m = lanes([OneWayAction(type="one_way", zone="bridge-w-mid", toward="bridge-n-head")])
    assert both["bridge-s-head"] > 0 and both["bridge-n-head"] > 0
    assert one["bridge-n-head"] == 0  # nobody enters walking south
    assert one["bridge-s-head"] > 0.9 * both["bridge-s-head"]  # the way on stays open
    # (that the remaining direction gets the full width back: test_twin_validation.py)


def test_each_half_of_the_bridge_one_way_waits_for_its_marshals(site, scenario):
    """A one-way needs ``staff.one_way_staff`` marshals at the post nearest its zone, by the
    rule the engine and its dispatch count (``staff_needed``): the west walkway's mid-span too,
    which the scenario's zone → post map lacked, so its half of the bridge one-way went in three
    minutes after the order with nobody, and all the northbound walkers were pushed onto the
    still two-way east walkway for the quarter hour its marshals walked (docs/mpc.md)."""
    bridge = next(ms for ms in site.measures if ms.id == "oneway-bridge")
    halves = [a for a in bridge.actions if isinstance(a, OneWayAction)]
    assert {a.zone for a in halves} == {"bridge-e-mid", "bridge-w-mid"}
    m = at(site, scenario, 20.0)
    t0 = m.t
    m.set_actions(halves)
    for a in halves:
        ms = m.measures[m.measure_key(a)]
        assert {ms.post: ms.need} == staff_needed(site, a) == {"post-bridge-mid": site.staff.one_way_staff}
    on = {}
    while len(on) < 2 and m.t < t0 + 3600:
        m.step()
        for a in m.effective_actions():
            on.setdefault(a.zone, m.t - t0)
    travel = m.staff_board.travel_s["post-bridge-mid"]
    assert on["bridge-w-mid"] == on["bridge-e-mid"]  # they walk together; neither goes in alone
    assert on["bridge-w-mid"] >= travel  # before: its 3-min set-up alone, with nobody there


def test_exit_only_stops_inflow_not_outflow(site, scenario):
    m = at(site, scenario, 20.0)
    m.set_actions([ExitOnlyAction(type="exit_only", gate="gate-11f")], in_effect=True)
    net = m.net
    k_in, k_out = net.pidx["cangbai-plaza>hyd-upper"], net.pidx["hyd-upper>cangbai-plaza"]
    c = m.state.port_flow.copy()
    m.run_until(m.t + 900)
    assert m.state.port_flow[k_in] - c[k_in] == 0 and m.state.port_flow[k_out] - c[k_out] > 100
    assert m.state.diverted > 0  # people headed for 11F went elsewhere


def test_metering_holds_people_in_the_holding_area_at_its_rate(site, scenario):
    m = at(site, scenario, 20.0)
    m.set_actions([MeteringAction(type="metering", gate="gate-11f", per_min=60)], in_effect=True)
    k = m.net.pidx["cangbai-plaza>hyd-upper"]
    c = m.state.port_flow[k]
    m.run_until(m.t + 600)
    assert m.state.port_flow[k] - c == pytest.approx(600, rel=0.02)  # 60/min for 10 min
    assert m.twin.port_queue(m.state)[k] > 300  # the rest wait …
    pk = m.zone_peak_density()["cangbai-plaza"]
    assert pk > m.twin.place_density(m.state, m.ctl)[m.net.pi["cangbai-plaza"]]  # … densely, in the pen


def test_metro_limit_holds_arrivals_in_the_station_and_some_give_up(site, scenario):
    m = at(site, scenario, 19.5)
    m.set_actions([MetroLimitAction(type="metro_limit", gate="gate-xsz-9", max_per_min=20)], in_effect=True)
    s = m.net.sources.index("metro-9")
    e0 = m.state.src_in[s]
    m.run_until(m.t + 1200)
    assert m.state.src_in[s] - e0 == pytest.approx(400, rel=0.03)
    assert m.queue[s] > 300 and m.state.gave_up > 0
