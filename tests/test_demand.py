"""The planner's online demand multiplier (control/demand.py) and the twin's start state
(sim/prior.py), on the real site file and the yardstick's evening.

The planner is never told the evening's multiplier: the closed-loop tests play a ×1.3 (and a
×1.0) evening in the yardstick's twin (5-s steps, its own seed) and let the planner see its true
zone counts every 5 minutes; the planning twin runs its own 15-s steps and seed.
"""

from __future__ import annotations

import pytest

from control.demand import HIGH, LOW, DemandEstimate
from control.measures import MeasurePlanner
from sim.model import Model
from sim.plantwin import ModelTwin
from sim.prior import StartPrior
from sim.scenario import hhmm_to_s

from .test_mpc import epoch, states


def test_one_window_reads_the_forecast_error_as_arrivals():
    d = DemandEstimate()
    # the forecast at ×1.0 missed 300 of 1,000 nominal arrivals: ×1.3
    assert d.measure(1.0, 10_000, 10_300, 1_000) == pytest.approx(1.3)
    # at ×1.2 it missed 100: the same ×1.3
    assert d.measure(1.2, 10_200, 10_300, 1_000) == pytest.approx(1.3)
    # bounded, and a quiet window (few arrivals) says nothing
    assert d.measure(1.0, 10_000, 20_000, 1_000) == HIGH
    assert d.measure(1.0, 10_000, 0, 1_000) == LOW
    assert d.measure(1.0, 10_000, 10_300, 10) is None


def test_the_estimate_is_smoothed_and_bounded():
    d = DemandEstimate()
    v = d.update(0.0, 1.0, 10_000, 10_300, 1_000, window_min=5)
    assert 1.0 < v < 1.3  # one window moves it part of the way
    for i in range(1, 8):
        v = d.update(300.0 * i, v, 10_000, 10_000 + (1.3 - v) * 1_000, 1_000, window_min=5)
    assert v == pytest.approx(1.3, abs=0.01)
    # a burst (a metro surge) moves it, bounded, never past HIGH
    for i in range(8, 20):
        v = d.update(300.0 * i, v, 10_000, 30_000, 1_000, window_min=5)
    assert v <= HIGH
    assert d.update(300.0 * 20, v, 10_000, 10_000, 10, window_min=5) == v  # nothing learnt


def _evening(site, scenario, mult: float, start: str = "18:30", minutes: int = 30):
    truth = Model(site, scenario.model_copy(update={"demand_scale": mult}), seed=3)
    truth.run_until(hhmm_to_s(start))
    twin = ModelTwin(site, scenario.model_copy(update={"demand_scale": 1.0}))
    planner = MeasurePlanner(site, twin, budget_s=120.0, tod=lambda now: now - epoch(0))
    bound = {p.id: "I" for p in site.plans}
    seen = []
    for _ in range(minutes // 5 + 1):
        now = epoch(truth.t)
        planner.decide(now, states(site, truth, now), {}, {}, bound, force=True)
        seen.append(planner.demand.value)
        truth.run_until(truth.t + 300)
    return planner, twin, seen


def test_on_a_x13_evening_the_estimate_converges_within_20_minutes(site, scenario):
    planner, twin, seen = _evening(site, scenario, 1.3)
    assert seen[0] == 1.0  # nobody told it
    # within ±10 % of ×1.3 from 20 minutes on (5-min windows, time constant 8 min)
    assert all(abs(v - 1.3) <= 0.13 for v in seen[4:]), seen
    # and the planning twin runs at it
    assert twin.demand_scale == pytest.approx(seen[-1])


def test_on_a_nominal_evening_it_stays_near_x1(site, scenario):
    _, _, seen = _evening(site, scenario, 1.0, start="19:00", minutes=20)
    assert all(abs(v - 1.0) <= 0.1 for v in seen), seen


def test_the_twin_started_from_counts_keeps_the_crowd_the_evening_keeps(site, scenario):
    """From the yardstick's 19:30 state, the planning twin started from the zone counts with the
    prior's make-up loses no more people in 5 minutes than the evening does (within 3 %);
    everyone in a corridor put on their way out (set_counts) loses ≈8 %."""
    truth = Model(site, scenario, seed=3)
    truth.run_until(hhmm_to_s("19:30"))
    c0 = truth.zone_counts()
    twin = ModelTwin(site, scenario)
    prior = StartPrior(site, scenario, twin.net)
    truth.run_until(truth.t + 300)
    after = sum(truth.zone_counts().values())
    got = {}
    for name in ("prior", "set_counts"):
        m = Model(site, scenario, seed=7, tod_s=hhmm_to_s("19:30"), network=twin.net)
        prior.place(m, c0) if name == "prior" else m.set_counts(c0)
        assert sum(m.zone_counts().values()) == pytest.approx(sum(c0.values()), rel=1e-6)
        m.run_until(m.t + 300)
        got[name] = sum(m.zone_counts().values())
    assert abs(got["prior"] - after) <= 0.03 * after, (got, after)
    assert after - got["set_counts"] > 0.05 * after, (got, after)
