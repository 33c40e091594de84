"""The yardstick: policies, the common reference event, the metrics, the table, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crowdflow.records import ZoneState
from crowdflow.site import StaffingAction
from sim.evaluate import (
    BaselineParams,
    Metrics,
    NoControl,
    PlanEnginePolicy,
    ReactiveBaseline,
    ci95,
    paired,
    run_evening,
    safe_multipliers,
    safe_table,
    table,
)
from sim.scenario import hhmm_to_s

from .conftest import REPO


def states(site, ratios: dict[str, float], now: float) -> dict[str, ZoneState]:
    out = {}
    for z in site.zones:
        r = ratios.get(z.id, 0.3)
        out[z.id] = ZoneState(zone_id=z.id, status="ok", count=r * z.capacity, density=r,
                              capacity=z.capacity, capacity_ratio=r, computed_at=now, updated_at=now)
    return out


def test_baseline_acts_on_what_it_saw_a_report_delay_ago_without_forecasts(site):
    b = ReactiveBaseline(site, BaselineParams(report_delay_s=180, decide_delay_s=120))
    assert all(pl.predictive_lead_min == 0 for pl in b.engine.site.plans)  # no prediction
    assert b.roster()["post-bridge-mid"] == 16  # the fixed roster: the plans' top headcounts
    t = 1.746e9
    hot = {"bridge-e-mid": 0.9}
    acts = []
    for k in range(0, 900, 10):
        acts = b.step(t + k, states(site, hot, t + k))
        if acts:
            first = k
            break
    # the post sees the state 180 s late and decides in 120 s (the level's sustain on top)
    assert acts and first >= 180 + 120
    plans = PlanEnginePolicy(site, confirm_delay_s=60)
    for k in range(0, 900, 10):
        if plans.step(t + k, states(site, hot, t + k)):
            break
    assert k < first  # the plans, on the live state, act sooner
    assert not any(isinstance(a, StaffingAction) for a in acts)  # the roster is already there


def test_ci_and_paired_change():
    mean, hw = ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and hw == pytest.approx(4.303 * 1.0 / 3 ** 0.5, rel=1e-3)
    a = [Metrics("plans", s, road_cutoff_min=v) for s, v in enumerate([80, 90, 100])]
    b = [Metrics("baseline", s, road_cutoff_min=v) for s, v in enumerate([100, 110, 130])]
    pct, hw, n = paired(a, b, "road_cutoff_min")
    assert n == 3 and pct == pytest.approx(100 * (-70 / 3) / (340 / 3))
    out = table({"baseline": b, "plans": a})
    row = next(line for line in out.splitlines() if line.startswith("| road-cutoff minutes"))
    assert "-21 %" in row  # the district's figure alongside
    assert "×1.00" in safe_table({"plans": [1.0, 1.0]}) and "<1.0" in safe_table({"baseline": [0.9, 1.0]})


def test_safe_throughput_walks_up_the_sweep():
    """An evening safe at ×1.3 after one unsafe at ×1.0 does not make the seed safe at ×1.3,
    whatever order the evenings finished in; a demand not run ends the walk."""
    def m(seed, d, ok):
        return Metrics("mpc", seed, demand=d, safe=ok)

    rows = [("mpc", s, d, m(s, d, ok)) for s, d, ok in
            [(1, 1.3, True), (1, 1.0, False), (0, 1.3, True), (0, 1.0, True), (2, 1.0, True), (2, 1.3, False), (3, 1.0, True)]]
    got = safe_multipliers(rows, ["mpc"], [0, 1, 2, 3], (1.0, 1.3))
    assert got == {"mpc": [1.3, 0.9, 1.0, 1.0]}


@pytest.fixture(scope="module")
def short_runs(site, scenario, views):
    until = hhmm_to_s("21:00")
    out = {}
    for name, make in (("none", lambda: NoControl(site)), ("baseline", lambda: ReactiveBaseline(site)),
                       ("plans", lambda: PlanEnginePolicy(site))):
        out[name] = run_evening(site, scenario, make(), seed=1, views=views, until_s=until)
    out["again"] = run_evening(site, scenario, ReactiveBaseline(site), seed=1, views=views, until_s=until)
    return out


def test_run_evening_is_deterministic_and_measures_outcomes(short_runs):
    none, base, plans = short_runs["none"], short_runs["baseline"], short_runs["plans"]
    assert base == short_runs["again"]
    assert none.arrived == base.arrived == plans.arrived  # same seed, same demand (surge included)
    assert none.road_cutoff_min == 0 and none.dispatched_hours == 0
    # the same common reference events are answered by whoever acts, never by nobody
    assert none.events >= 1 and none.unanswered == none.events
    assert base.events >= 1 and base.response_min is not None
    assert base.road_cutoff_min > 0 and base.roster_hours > none.roster_hours  # the fixed roster costs
    assert plans.road_cutoff_min > 0 and plans.dispatched_hours > 0  # plans send reserve teams
    for m in (none, base, plans):
        assert m.p95_wait_min >= 0 and m.peak_density > 1.0 and 3 < m.visits_per_visitor < 15
    # emergency staff-hours: above the same normal duty for every policy (nobody's roster is it)
    assert none.emergency_staff_hours == pytest.approx(0.0, abs=1e-6)
    assert base.emergency_staff_hours == pytest.approx(base.staff_hours - none.roster_hours)
    assert base.emergency_staff_hours > base.dispatched_hours  # its fixed roster above normal counts
    assert plans.emergency_staff_hours == pytest.approx(plans.dispatched_hours)
    # the diagnostics say which events and where: one log entry per event, None when unanswered
    for m in (none, base, plans):
        assert len(m.event_log) == m.events
        assert sum(e[2] is None for e in m.event_log) == m.unanswered
        assert sum(m.over4_by_zone.values()) == pytest.approx(m.zone_min_over_4)
        assert set(m.over4_first) == set(m.over4_by_zone)


def test_cli_rejects_bad_arguments():
    p = subprocess.run([sys.executable, "-m", "crowdflow.cli", "evaluate", "--policies", "magic", "--seeds", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--policies: unknown ['magic']" in p.stderr
    p = subprocess.run([sys.executable, "-m", "crowdflow.cli", "evaluate", "--sweep", "1,x", "--seeds", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--sweep" in p.stderr


def test_an_areas_measures_answer_its_reference_event_whoever_orders_them(site):
    """The response rule is one for every policy: any measure on the ground (not staffing, not a
    broadcast) that the area's levels name or that a site measure naming the area carries —
    the baseline's level bundles and the measures engine's metering alike."""
    from sim.evaluate import _area_measures

    areas = _area_measures(site)
    for ms in site.measures:
        keys = {a.model_dump_json() for a in ms.actions if a.type not in ("staffing", "broadcast")}
        for pid in ms.plans:
            assert keys <= areas[pid][0], (ms.id, pid)
    level_keys = {a.model_dump_json() for lv in site.plan_by_id["xiaoshizi"].levels for a in lv.actions
                  if a.type not in ("staffing", "broadcast")}
    assert level_keys <= areas["xiaoshizi"][0]
    # the reference event is the area's first level with a measure: its LB/T 068 thresholds
    assert areas["hongyadong"][1:3] == (0.80, 2.0) and areas["xiaoshizi"][1:3] == (0.85, 2.0)


def test_an_evening_with_its_minute_series_runs(site, scenario):
    """The series behind the report's plots (`crowdflow evaluate --plots`): one per minute."""
    from sim.evaluate import NoControl, Series, run_evening
    from sim.scenario import hhmm_to_s

    series = Series()
    run_evening(site, scenario, NoControl(site), seed=0, until_s=hhmm_to_s("17:10"), series=series)
    assert len(series.t) >= 9 and len(series.on_site) == len(series.t)
    assert all(x >= 0 for x in series.on_site)
