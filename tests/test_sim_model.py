"""The twin on the real site: calibration, determinism, snapshot/rollout, scenario errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from crowdflow.site import ConfigError
from sim.model import Model
from sim.scenario import SCENARIO_DIR, parse_scenario


@pytest.fixture(scope="module")
def evening(site, scenario):
    """One evening to 23:00, with the people on site sampled each half hour."""
    m = Model(site, scenario, seed=0)
    on_site = {}
    for h in np.arange(17.5, 23.01, 0.5):
        m.run_until(h * 3600)
        on_site[float(h)] = m.people - float(m.queue.sum())
    return m, on_site


def test_calibrated_to_the_published_figures(evening):
    """≈140,000 visits a May Day day (698,000 in 5 days): the evening 17–23 h brings
    ≈45 % of them; >10,000 people on site at once at the 20–22 h night-view peak."""
    m, on_site = evening
    arrived = m.state.arrived
    assert 0.40 * 140_000 <= arrived <= 0.55 * 140_000
    assert max(on_site[h] for h in (20.0, 20.5, 21.0, 21.5)) > 10_000
    assert on_site[20.5] > 2 * on_site[17.5] and on_site[23.0] < 0.7 * max(on_site.values())


def test_visits_per_visitor_follow_the_activity_chains(evening):
    """People walk routes to their stops: a handful of zone visits each, not a random walk."""
    m, _ = evening
    st = m.state
    per_visitor = st.visits.sum() / st.src_in.sum()
    assert 4 < per_visitor < 14
    k = m.net.pidx["cangbai-plaza>hyd-upper"]
    assert st.port_flow[k] / st.src_in.sum() > 0.4  # most visitors enter the complex at 11F


def test_same_seed_same_evening_other_seed_other_evening(site, scenario):
    def run(seed):
        m = Model(site, scenario, seed=seed)
        m.run_until(18 * 3600)
        return m.n.copy(), m.state.arrived

    a, b, c = run(4), run(4), run(5)
    assert (a[0] == b[0]).all() and a[1] == b[1]
    assert not (a[0] == c[0]).all()


def test_snapshot_rollout_leaves_the_original_alone(site, scenario):
    m = Model(site, scenario, seed=1)
    m.run_until(19 * 3600)
    before = m.n.copy()
    s1, s2 = m.snapshot(), m.snapshot()
    rows = s1.rollout(minutes=30)
    assert len(rows) == 30 and rows[-1]["t"] == pytest.approx(19 * 3600 + 1800)
    assert (m.n == before).all() and m.t == 19 * 3600
    rows2 = s2.rollout(minutes=30)
    assert rows2[-1]["counts"] == rows[-1]["counts"]  # same random stream: paired rollouts
    s3 = m.snapshot()
    rows3 = s3.rollout([_exit_only_11f()], minutes=30)  # ordered now: staff walk, then set up
    assert rows3[-1]["counts"]["hyd-upper"] < rows[-1]["counts"]["hyd-upper"]


def _exit_only_11f():
    from crowdflow.site import ExitOnlyAction

    return ExitOnlyAction(type="exit_only", gate="gate-11f")


def test_broken_scenario_names_the_path(site):
    data = yaml.safe_load((SCENARIO_DIR / "mayday-evening.yaml").read_text(encoding="utf-8"))
    data["links"][0]["b"] = "nowhere"
    data["chains"]["upper-metro"]["stops"] = ["hyd-upper", "hyd-upper-2"]
    del data["places"]["riverside-e"]
    data["demand"]["metro-6"]["chains"]["teleport"] = 1
    with pytest.raises(ConfigError) as e:
        parse_scenario(data, site)
    text = str(e.value)
    assert "links[0].b: unknown place 'nowhere'" in text
    assert "chains.upper-metro.stops[1]: the last stop must be an exit, got 'hyd-upper-2'" in text
    assert "site zone 'riverside-e' is neither a place nor on a corridor" in text
    assert "demand.metro-6.chains.teleport: unknown chain 'teleport'" in text
