"""Back-test of the zone forecast on a recorded evening.

tests/data/mayday_evening_seed3.csv was recorded from the site simulator with
`python scripts/record_series.py --seed 3 --every 30 --out tests/data/mayday_evening_seed3.csv`
(no control; each zone's true count on its own ground every 30 s from 17:00). Here it is
replayed through control's ZoneBook as camera observations with 10 % counting noise, and each
5- and 10-minute forecast is compared with what the recording shows 5 and 10 minutes later,
against the naive forecast "it stays as it is" (persistence)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from control.forecast import minutes_to_ratio, project
from control.zones import ZoneBook
from crowdflow.records import Observation, ZoneCount

SERIES = Path(__file__).parent / "data" / "mayday_evening_seed3.csv"
T0 = 1_746_090_000.0  # any epoch: only differences matter here
CAMERA = {"bridge-e-mid": "cam-bridge-mid", "hyd-upper": "cam-hyd-upper", "cangbai-plaza": "cam-cangbai-plaza"}


def load() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows = list(csv.DictReader(SERIES.open()))
    t = np.array([float(r["t_s"]) for r in rows])
    return t, {z: np.array([float(r[z]) for r in rows]) for z in CAMERA}


def backtest(site, zone_id: str, horizon_min: float, start_s: float, end_s: float):
    t, series = load()
    truth = series[zone_id]
    zone = site.zone_by_id[zone_id]
    book = ZoneBook(site, stale_after_s=120)
    rng = np.random.default_rng(7)
    step = int(horizon_min * 60 / (t[1] - t[0]))
    fc_err, pers_err = [], []
    for i, (ts, n) in enumerate(zip(t, truth)):
        seen = max(0.0, n * (1 + rng.normal(0, 0.10)))
        book.apply(Observation(camera_id=CAMERA[zone_id], agent_id="backtest", seq=i, captured_at=T0 + ts,
                               zones=[ZoneCount(zone_id=zone_id, count=seen, visible_area_m2=zone.walkable_area_m2)]))
        s = book.state(zone_id, T0 + ts)
        if start_s <= ts <= end_s and i + step < len(truth):
            net_pm = s.trend_pm
            fc_err.append(abs(project(s.count, net_pm, horizon_min) - truth[i + step]))
            pers_err.append(abs(s.count - truth[i + step]))
    return float(np.mean(fc_err)), float(np.mean(pers_err))


@pytest.mark.parametrize("zone_id", ["bridge-e-mid", "hyd-upper", "cangbai-plaza"])
@pytest.mark.parametrize("horizon", [5.0, 10.0])
def test_forecast_beats_persistence_on_the_evening_build_up(site, zone_id, horizon):
    # 17:15–19:45: the crowd builds up towards the night-view peak.
    fc, pers = backtest(site, zone_id, horizon, 15 * 60, 165 * 60)
    assert fc < 0.7 * pers, f"{zone_id} {horizon} min: forecast MAE {fc:.1f} vs persistence {pers:.1f}"


def test_forecast_is_no_worse_than_persistence_over_the_whole_evening(site):
    fc, pers = backtest(site, "bridge-e-mid", 10.0, 0, 6.5 * 3600)
    assert fc < 0.8 * pers  # peak and decline included


def test_minutes_to_ratio():
    assert minutes_to_ratio(400, 20, 1000, 0.8) == 20.0
    assert minutes_to_ratio(900, 20, 1000, 0.8) == 0.0
    assert minutes_to_ratio(400, -5, 1000, 0.8) is None
    assert minutes_to_ratio(0, 1, 1000, 0.8) is None  # beyond the hour of look-ahead
