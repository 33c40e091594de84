"""The crowd-science formulas against the figures in the brief."""

from __future__ import annotations

import pytest

from crowdflow.crowd import flow_ppm, fruin_los, specific_flow, weidmann_speed


def test_weidmann_free_and_jam():
    assert weidmann_speed(0.0) == 1.34
    assert weidmann_speed(5.4) == 0.0
    assert weidmann_speed(1.0) == pytest.approx(1.34 * (1 - 2.718281828 ** (-1.913 * (1 - 1 / 5.4))), rel=1e-6)


def test_specific_flow_peaks_near_1_2_at_1_75():
    grid = [i / 100 for i in range(1, 540)]
    peak = max(grid, key=specific_flow)
    assert peak == pytest.approx(1.75, abs=0.1)
    assert specific_flow(peak) == pytest.approx(1.22, abs=0.03)
    assert specific_flow(4.0) < specific_flow(peak)  # flow collapses past critical density


@pytest.mark.parametrize("q, los", [(10, "A"), (23, "B"), (40, "C"), (49, "D"), (70, "E"), (82, "F"), (100, "F")])
def test_fruin_levels(q, los):
    assert fruin_los(q) == los


def test_flow_ppm_is_per_minute():
    assert flow_ppm(1.0) == pytest.approx(specific_flow(1.0) * 60)
