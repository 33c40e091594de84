"""The pedestrian model: conservation, the fundamental diagram, determinism, the scenario file."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from crowdflow import crowd
from crowdflow.site import ConfigError
from sim.model import Q_MAX, RHO_CRITICAL, Model, receiving, sending
from sim.scenario import SCENARIO_DIR, load_scenario, parse_scenario


@pytest.fixture(scope="module")
def scenario(site):
    sc, _ = load_scenario("mayday-evening", site)
    return sc


def test_people_are_conserved_exactly_every_step(site, scenario):
    m = Model(site, scenario, seed=3, tod_s=19 * 3600)
    before = m.people
    for _ in range(400):
        held = m.people
        st = m.step()
        assert m.people - held == st.arrived - st.exited - st.gave_up  # integers: exact
        assert (m.n >= 0).all() and (m.queue >= 0).all()
        assert (m.density <= scenario.model.max_density + 1e-9).all()
    t = m.totals
    assert m.people - before == t.arrived - t.exited - t.gave_up
    assert t.arrived > 5_000 and t.exited > 1_000  # a busy evening actually moved people
    assert sum(m.exits_total.values()) == t.exited


def test_fundamental_diagram_is_weidmann_and_collapses_past_critical_density():
    rho = np.array([0.5, 1.0, RHO_CRITICAL, 2.5, 4.0, 5.3])
    recv = receiving(rho)
    send = sending(rho)
    # Below the critical density a cell takes the maximum flow and sends its own specific flow.
    assert recv[0] == recv[1] == Q_MAX
    assert send[0] == pytest.approx(crowd.specific_flow(0.5))
    # Above it, what it can take falls with density, down to almost nothing near jam.
    assert recv[3] == pytest.approx(crowd.specific_flow(2.5)) and recv[3] > recv[4] > recv[5]
    assert recv[5] < 0.1 * Q_MAX
    assert Q_MAX == pytest.approx(1.22, abs=0.02)  # Weidmann peak ≈1.2 p/s/m (brief)


def test_flow_into_a_jammed_cell_collapses(site, scenario):
    """The same push toward a cell carries far less once that cell is past critical density."""
    def moved_into(density: float) -> int:
        m = Model(site, scenario, seed=1, tod_s=3 * 3600)  # no demand at 03:00
        i, j = m.net.index["hyd-lower"], m.net.index["jiabin-frontage"]
        m.n[i] = int(3.0 * m.area[i])
        m.n[j] = int(density * m.area[j])
        k = next(k for k, e in enumerate(m.net.edges) if e.src == i and e.dst == j)
        total = 0
        for _ in range(6):
            m.step()
            total += int(m.last_moved[k])
        return total

    free, jammed = moved_into(0.3), moved_into(4.8)
    assert free > 3 * jammed > 0


def test_same_seed_same_evening_other_seed_other_evening(site, scenario):
    def run(seed):
        m = Model(site, scenario, seed=seed, tod_s=19 * 3600)
        for _ in range(200):
            m.step()
        return m.n.copy(), m.totals

    a, b, c = run(7), run(7), run(8)
    assert (a[0] == b[0]).all() and a[1] == b[1]
    assert not (a[0] == c[0]).all()


def test_night_view_peak(site, scenario):
    m = Model(site, scenario)
    at = lambda hhmm: m.arrival_rate(hhmm * 3600).sum() * 60  # noqa: E731
    assert at(20) > 1.8 * at(17.5) and at(20) > 2 * at(22.75)
    heavier = Model(site, scenario.model_copy(update={"demand_scale": 1.3}))
    assert heavier.arrival_rate(20 * 3600).sum() * 60 == pytest.approx(1.3 * at(20))


def test_broken_scenario_names_the_path(site):
    data = yaml.safe_load((SCENARIO_DIR / "mayday-evening.yaml").read_text())
    bad = copy.deepcopy(data)
    bad["links"][0]["b"] = "nowhere"
    bad["zones"]["cangbai-plaza"]["next"]["hyd-lower"] = 0.3
    del bad["zones"]["riverside-e"]
    with pytest.raises(ConfigError) as e:
        parse_scenario(bad, site, "x.yaml")
    text = str(e.value)
    assert "links[0].b: unknown zone 'nowhere'" in text
    assert "zones.cangbai-plaza.next.hyd-lower: 'hyd-lower' is neither a zone linked to cangbai-plaza" in text
    assert "site zone 'riverside-e' has no entry" in text
    bad = copy.deepcopy(data)
    bad["demand"]["metro-6"]["per_min"] = {"19:00": 10, "18:00": 5}
    with pytest.raises(ConfigError, match=r"demand.metro-6.per_min: times must increase"):
        parse_scenario(bad, site, "x.yaml")
