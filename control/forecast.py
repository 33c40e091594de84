"""Short-term zone forecasts from the occupancy trend and the gate-flow balance. Pure."""

from __future__ import annotations

from crowdflow.records import Forecast, built

HORIZONS_MIN = (5.0, 10.0, 15.0)
MAX_LOOKAHEAD_MIN = 60.0


def project(count: float, net_pm: float, minutes: float) -> float:
    """Occupancy after ``minutes`` at a net change of ``net_pm`` persons/minute (never < 0)."""
    return max(0.0, count + net_pm * minutes)


def forecasts(count: float, net_pm: float, capacity: int, horizons=HORIZONS_MIN) -> list[Forecast]:
    out = []
    for h in horizons:
        n = project(count, net_pm, h)
        out.append(built(Forecast, horizon_min=h, count=round(n, 1),
                                            capacity_ratio=round(n / capacity, 4) if capacity else 0.0))
    return out


def minutes_to_ratio(count: float, net_pm: float, capacity: int, ratio: float) -> float | None:
    """Minutes until the occupancy reaches ``ratio`` × capacity; 0 if already there; None if
    it is not reached within the look-ahead at the current rate."""
    target = ratio * capacity
    if count >= target:
        return 0.0
    if net_pm <= 0:
        return None
    m = (target - count) / net_pm
    return round(m, 2) if m <= MAX_LOOKAHEAD_MIN else None
