"""The occupancy filter: smooths jumping counts, follows real changes, keeps flows honest."""

from __future__ import annotations

import numpy as np
import pytest

from control.fusion import OccupancyFilter, measurement_variance


def test_smooths_noise_without_bias():
    rng = np.random.default_rng(3)
    raw = 100 + rng.normal(0, 10, 300)
    f = OccupancyFilter.start(raw[0], measurement_variance(raw[0], 1, 1), 0.0)
    out = []
    for i, z in enumerate(raw[1:], start=1):
        f.predict(float(i))
        f.update(float(z), measurement_variance(float(z), 1, 1))
        out.append(f.n)
    out = np.array(out[50:])
    assert out.std() < raw.std() / 2  # less flicker
    assert abs(out.mean() - 100) < 3  # no bias


def test_follows_a_real_step_within_seconds():
    f = OccupancyFilter.start(100, measurement_variance(100, 1, 1), 0.0)
    for i in range(1, 31):
        f.predict(float(i))
        f.update(100.0, measurement_variance(100, 1, 1))
    for i in range(31, 46):
        f.predict(float(i))
        f.update(200.0, measurement_variance(200, 1, 1))
    assert f.n > 180
    assert f.r > 0  # and it sees the rise as a trend


def test_gate_flows_move_occupancy_and_counts_correct_drift():
    f = OccupancyFilter.start(100, 4.0, 0.0)
    for i in range(1, 11):
        f.predict(float(i), net_flow=10)  # 10 people/s through the gate, no camera update
    assert f.n == pytest.approx(200, abs=1)
    f.update(150.0, measurement_variance(150, 1, 1))  # the camera disagrees: flows drifted
    assert 150 <= f.n < 200


def test_small_views_weigh_less():
    full, sliver = measurement_variance(100, 1.0, 1.0), measurement_variance(100, 0.1, 1.0)
    assert sliver == pytest.approx(10 * full)
    f = OccupancyFilter.start(100, full, 0.0)
    f.update(300.0, sliver)  # a camera seeing 10 % of the zone claims 300
    assert f.n < 130
