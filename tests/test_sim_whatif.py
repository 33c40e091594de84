"""What-if forecasts: parse an action, fork the future, report the zones it changes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crowdflow.site import OneWayAction, TrafficCutoffAction
from sim.model import Model
from sim.whatif import parse_action, whatif

from .conftest import REPO



@pytest.fixture(scope="module")
def evening(site, scenario):
    m = Model(site, scenario, seed=0)
    m.run_until(20 * 3600)
    return m.zone_counts()


def test_parse_action_forms_and_errors(site):
    assert parse_action("traffic_cutoff:road-jiabin", site) == TrafficCutoffAction(type="traffic_cutoff", road="road-jiabin")
    assert parse_action("one_way:bridge-e-mid:bridge-n-head", site) == OneWayAction(
        type="one_way", zone="bridge-e-mid", toward="bridge-n-head")
    assert parse_action('{"type": "metro_limit", "gate": "gate-xsz-9", "max_per_min": 40}', site).max_per_min == 40
    with pytest.raises(ValueError, match="unknown road 'road-moon'"):
        parse_action("traffic_cutoff:road-moon", site)
    with pytest.raises(ValueError, match="write one_way:ZONE:TOWARD"):
        parse_action("one_way:bridge-e-mid", site)
    with pytest.raises(ValueError, match="max_per_min"):
        parse_action("metro_limit:gate-xsz-9:lots", site)
    with pytest.raises(ValueError, match="unknown action 'teleport'"):
        parse_action("teleport:everyone", site)


def test_cutting_jiabin_road_relieves_the_frontage(site, scenario, evening):
    w = whatif(site, scenario, evening, 20 * 3600, [], [parse_action("traffic_cutoff:road-jiabin", site)])
    by = {c.zone_id: c for c in w.curves}
    front = by["jiabin-frontage"]
    assert front.minutes[0] == 0 and front.minutes[-1] == 30 and len(front.minutes) == 31
    assert front.without[0] == pytest.approx(evening["jiabin-frontage"], abs=1)  # from the state given
    assert front.with_action[-1] < 0.7 * front.without[-1]
    assert "bridge-n-head" not in by  # far away: not reported as affected
    again = whatif(site, scenario, evening, 20 * 3600, [], [parse_action("traffic_cutoff:road-jiabin", site)])
    assert [c.with_action for c in again.curves] == [c.with_action for c in w.curves]  # deterministic


def test_action_already_in_force_changes_nothing(site, scenario, evening):
    cut = parse_action("traffic_cutoff:road-jiabin", site)
    w = whatif(site, scenario, evening, 20 * 3600, [cut], [cut], horizon_min=10)
    assert w.curves == []


def test_cli_json(site):
    p = subprocess.run([sys.executable, "-m", "crowdflow.cli", "whatif", "--action", "exit_only:gate-11f",
                        "--at", "20:00", "--horizon", "30", "--json"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    zones = {c["zone_id"]: c for c in out["curves"]}
    assert out["at"] == "20:00" and zones["hyd-upper"]["with"][-1] < zones["hyd-upper"]["without"][-1]
    # ordered now, in effect only once the gate's marshals have walked there and set it up
    up = zones["hyd-upper"]
    assert up["with"][5] == pytest.approx(up["without"][5], abs=0.5)
    bad = subprocess.run([sys.executable, "-m", "crowdflow.cli", "whatif", "--action", "exit_only:gate-nope"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown gate 'gate-nope'" in bad.stderr


def test_cli_live_starts_from_the_zone_states_in_redis(site, redis_url, keys, r):
    import os
    import time

    from crowdflow.records import ZoneState

    now = time.time()
    for z in site.zones:
        if z.id == "riverside-e":  # unknown: named as such, never taken as empty
            st = ZoneState(zone_id=z.id, status="unknown", capacity=z.capacity, computed_at=now, reason="stale")
        else:
            c = 0.9 * z.capacity if z.id == "cangbai-plaza" else 0.3 * z.capacity
            st = ZoneState(zone_id=z.id, status="ok", count=c, density=c / z.walkable_area_m2, capacity=z.capacity,
                           capacity_ratio=c / z.capacity, computed_at=now, updated_at=now)
        r.hset(keys.zone_state, z.id, st.encode())
    env = dict(os.environ, REDIS_URL=redis_url, CROWDFLOW_REDIS_PREFIX=keys.prefix)
    p = subprocess.run([sys.executable, "-m", "crowdflow.cli", "whatif", "--live", "--action", "exit_only:gate-11f",
                        "--horizon", "30", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["unknown_zones"] == ["riverside-e"]
    # unknown is never empty: it starts at the worst known load (cangbai-plaza's 0.9)
    assert out["all_zones"]["riverside-e"]["without"][0] == pytest.approx(0.9 * 1150, abs=1)
    plaza = out["all_zones"]["cangbai-plaza"]  # (affected or not: depends on the wall clock's hour)
    assert plaza["without"][0] == pytest.approx(0.9 * 1900, abs=1)  # from the live state
