"""The site's action records change the simulated site (sim.model.Model.set_actions)."""

from __future__ import annotations

import pytest

from crowdflow.site import (
    BroadcastAction,
    ExitOnlyAction,
    MetroLimitAction,
    OneWayAction,
    StaffingAction,
    Text,
    TrafficCutoffAction,
)
from sim.model import Model
from sim.scenario import load_scenario


@pytest.fixture(scope="module")
def scenario(site):
    return load_scenario("mayday-evening", site)[0]


def edge(m: Model, a: str, b: str) -> int:
    return next(k for k, e in enumerate(m.net.edges) if e.name == f"{a}>{b}")


def run(m: Model, steps: int, watch: list[int]) -> list[int]:
    moved = [0] * len(watch)
    for _ in range(steps):
        m.step()
        for i, k in enumerate(watch):
            moved[i] += int(m.last_moved[k])
    return moved


def test_traffic_cutoff_frees_road_space_and_widens_links(site, scenario):
    m = Model(site, scenario, seed=1, tod_s=20 * 3600)
    i = m.net.index["jiabin-frontage"]
    m.n[i] = 1200
    before = m.zone_counts()["jiabin-frontage"]
    assert before == 1200
    width = m.width[edge(m, "jiabin-frontage", "jiabin-crossing")]
    m.set_actions([TrafficCutoffAction(type="traffic_cutoff", road="road-jiabin")])
    assert m.area[i] == pytest.approx(800 + 0.5 * 4200)
    # Same people, more ground: the zone's own ground (what its camera sees) holds fewer.
    assert m.zone_counts()["jiabin-frontage"] < 0.3 * before
    assert m.width[edge(m, "jiabin-frontage", "jiabin-crossing")] == width + 12
    assert m.cut_roads == {"road-jiabin"}
    # Released while 1200 people stand on 800 m² of frontage: the road cannot reopen yet.
    m.set_actions([])
    assert m.cut_roads == {"road-jiabin"} and m.clearing == {"road-jiabin"}
    m.n[i] = 700  # they fit the sidewalk again (≤ reopen_density): the road reopens
    m.step()
    assert m.cut_roads == set() and m.area[i] == 800
    assert m.zone_counts()["jiabin-frontage"] == pytest.approx(m.n[i])


def test_one_way_stops_counterflow(site, scenario):
    def flows(actions):
        m = Model(site, scenario, seed=2, tod_s=20 * 3600)
        for z in ("bridge-e-south", "bridge-e-mid", "bridge-e-north"):
            m.n[m.net.index[z]] = 900
        m.set_actions(actions)
        return run(m, 60, [edge(m, "bridge-e-mid", "bridge-e-south"), edge(m, "bridge-e-north", "bridge-e-mid"),
                           edge(m, "bridge-e-mid", "bridge-e-north")])

    back, against, ahead = flows([])
    assert back > 0 and against > 0
    back1, against1, ahead1 = flows([OneWayAction(type="one_way", zone="bridge-e-mid", toward="bridge-n-head")
                                     .model_copy(update={"toward": "bridge-e-north"})])
    assert back1 == 0 and against1 == 0
    assert ahead1 > ahead  # everyone leaving goes one way, at the link's full width


def test_one_way_toward_a_zone_further_on_still_closes_the_way_back(site, scenario):
    # The plans write one_way bridge-e-mid toward bridge-n-head (the walkway's far end).
    m = Model(site, scenario, seed=2, tod_s=20 * 3600)
    m.set_actions([OneWayAction(type="one_way", zone="bridge-e-mid", toward="bridge-n-head")])
    assert not m.open[edge(m, "bridge-e-mid", "bridge-e-south")]
    assert m.open[edge(m, "bridge-e-mid", "bridge-e-north")]
    assert not m.open[edge(m, "bridge-e-north", "bridge-e-mid")]


def test_exit_only_gate_stops_inflow_not_outflow(site, scenario):
    m = Model(site, scenario, seed=3, tod_s=20 * 3600)
    for z in ("cangbai-plaza", "hyd-upper"):
        m.n[m.net.index[z]] = 1500
    m.set_actions([ExitOnlyAction(type="exit_only", gate="gate-11f")])
    inward, outward = run(m, 60, [edge(m, "cangbai-plaza", "hyd-upper"), edge(m, "hyd-upper", "cangbai-plaza")])
    assert inward == 0 and outward > 100


def test_exit_only_metro_gate_holds_arrivals_and_some_give_up(site, scenario):
    m = Model(site, scenario, seed=4, tod_s=20 * 3600)
    m.set_actions([ExitOnlyAction(type="exit_only", gate="gate-xsz-6")])
    s = m.net.sources.index("metro-6")
    entered = 0
    for _ in range(120):
        m.step()
        entered += int(m.last_entered[s])
    assert entered == 0 and m.queue[s] > 500 and m.totals.gave_up > 0


def test_metro_limit_meters_arrivals(site, scenario):
    m = Model(site, scenario, seed=5, tod_s=20 * 3600)
    m.set_actions([MetroLimitAction(type="metro_limit", gate="gate-xsz-9", max_per_min=30)])
    s = m.net.sources.index("metro-9")
    entered = 0
    for _ in range(120):  # 10 minutes
        m.step()
        entered += int(m.last_entered[s])
    assert 270 <= entered <= 330  # 30/min, whole persons rounded without bias
    free = Model(site, scenario, seed=5, tod_s=20 * 3600)
    for _ in range(120):
        free.step()
    assert free.totals.entered > m.totals.entered + 200


def test_staffing_clears_the_post_zone_faster(site, scenario):
    def left_after(actions):
        m = Model(site, scenario, seed=6, tod_s=3 * 3600)  # no arrivals at 03:00
        m.n[m.net.index["bridge-e-mid"]] = 2400
        m.set_actions(actions)
        for _ in range(120):
            m.step()
        return int(m.n[m.net.index["bridge-e-mid"]])

    normal = left_after([])
    staffed = left_after([StaffingAction(type="staffing", post="post-bridge-mid", headcount=16)])
    assert staffed < 0.96 * normal, (staffed, normal)
    # The site's normal headcount is no extra effect; a broadcast changes nothing modelled.
    assert left_after([StaffingAction(type="staffing", post="post-bridge-mid", headcount=8),
                       BroadcastAction(type="broadcast", text=Text(zh="请", en="please"))]) == normal
