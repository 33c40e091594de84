"""Policy evaluation: the reactive baseline, the harness's metrics, the table, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crowdflow.records import ZoneState
from crowdflow.site import StaffingAction, TrafficCutoffAction
from sim.cameras import camera_views
from sim.evaluate import (
    DISTRICT,
    BaselineParams,
    Metrics,
    NoControl,
    ReactiveBaseline,
    pct_change,
    run_evening,
    table,
)
from sim.scenario import hhmm_to_s, load_scenario

from .conftest import REPO


@pytest.fixture(scope="module")
def scenario(site):
    return load_scenario("mayday-evening", site)[0]


@pytest.fixture(scope="module")
def views(site):
    return camera_views(site)


def states(site, ratios: dict[str, float | None], now: float) -> dict[str, ZoneState]:
    out = {}
    for z in site.zones:
        r = ratios.get(z.id, 0.3)
        if r is None:
            out[z.id] = ZoneState(zone_id=z.id, status="unknown", capacity=z.capacity, computed_at=now)
        else:
            out[z.id] = ZoneState(zone_id=z.id, status="ok", count=r * z.capacity, density=r,
                                  capacity=z.capacity, capacity_ratio=r, computed_at=now, updated_at=now)
    return out


def test_baseline_acts_at_capacity_after_the_human_delay_and_holds_until_70pct(site):
    b = ReactiveBaseline(site, BaselineParams(delay_s=300, min_hold_s=600))
    t = 1.746e9
    assert b.step(t, states(site, {"bridge-e-mid": 0.99}, t)) == []  # 99 %: nothing
    assert b.step(t + 10, states(site, {"bridge-e-mid": 1.0}, t + 10)) == []  # alarm, not yet acting
    assert b.step(t + 300, states(site, {"bridge-e-mid": 1.1}, t + 300)) == []
    acts = b.step(t + 310, states(site, {"bridge-e-mid": 1.1}, t + 310))
    assert b.responses_s == [300]
    # The bridge area's whole response at once: every cutoff of its levels, the top headcounts.
    assert {a.road for a in acts if isinstance(a, TrafficCutoffAction)} == {"road-qsm-bridge", "road-cangbai"}
    assert {(a.post, a.headcount) for a in acts if isinstance(a, StaffingAction)} >= {("post-bridge-mid", 16)}
    assert {a.type for a in acts} >= {"one_way", "exit_only", "metro_limit"}
    # Held while any zone of the area is ≥ 70 % or unknown, and for at least 10 minutes.
    assert b.step(t + 600, states(site, {"bridge-e-mid": 0.5}, t + 600)) == acts  # < min hold
    assert b.step(t + 1000, states(site, {"bridge-e-mid": 0.75}, t + 1000)) == acts
    assert b.step(t + 1010, states(site, {"bridge-e-mid": None}, t + 1010)) == acts
    assert b.step(t + 1020, states(site, {"bridge-e-mid": 0.69}, t + 1020)) == []
    assert len(b.responses_s) == 1


def test_baseline_areas_act_separately(site):
    b = ReactiveBaseline(site, BaselineParams(delay_s=60))
    t = 1.746e9
    b.step(t, states(site, {"hyd-lower": 1.0}, t))
    acts = b.step(t + 60, states(site, {"hyd-lower": 1.0}, t + 60))
    assert {a.road for a in acts if isinstance(a, TrafficCutoffAction)} == {
        "road-jiabin", "road-cangbai", "road-linjiang", "road-minzu"}
    assert "road-qsm-bridge" not in {getattr(a, "road", None) for a in acts}


def test_run_evening_measures_what_the_policy_did(site, scenario, views):
    until = hhmm_to_s("20:30")
    none = run_evening(site, scenario, NoControl(site), seed=1, views=views, until_s=until)
    base = run_evening(site, scenario, ReactiveBaseline(site), seed=1, views=views, until_s=until)
    again = run_evening(site, scenario, ReactiveBaseline(site), seed=1, views=views, until_s=until)
    assert base == again  # deterministic per seed
    assert none.road_cutoff_min == 0 and none.staff_hours == 0 and none.response_min is None
    assert none.peak_ratio > 1.0  # the evening does overload the site without control
    assert base.responses >= 1 and base.response_min == pytest.approx(5.0, abs=0.2)
    assert base.road_cutoff_min > 10 and base.staff_hours > 1
    assert base.peak_ratio < none.peak_ratio  # the baseline is a real policy: it helps
    assert none.arrived == base.arrived  # same seed, same demand whatever the policy


def test_table_compares_to_the_baseline_and_the_district(site):
    def m(policy, seed, cut, staff, thr, resp):
        return Metrics(policy=policy, seed=seed, road_cutoff_min=cut, staff_hours=staff, throughput_ph=thr,
                       response_min=resp, peak_density=2.0, peak_ratio=1.1)

    out = table({"baseline": [m("baseline", 0, 100, 50, 1000, 5.0), m("baseline", 1, 120, 50, 1000, 5.0)],
                 "plans": [m("plans", 0, 80, 30, 1300, 4.0), m("plans", 1, 80, 30, 1300, None)]})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()[2:]}
    assert rows["road-cutoff minutes"] == ["110 ± 14", "80 ± 0", "-27 %", "-21 %"]
    assert rows["staff-hours above normal"][2:] == ["-40 %", "-40 %"]
    assert rows["throughput (served/h, 19–22)"][2:] == ["+30 %", "+30 %"]
    assert rows["mean response time (min)"][1] == "4.0 ± 0.0 (1/2 seeds)"
    assert pct_change(1, 0) is None and set(DISTRICT) <= {k for k in Metrics.__dataclass_fields__}


def test_cli_rejects_unknown_policy():
    p = subprocess.run([sys.executable, "-m", "crowdflow.cli", "evaluate", "--policies", "magic", "--seeds", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--policies: unknown ['magic']" in p.stderr
