"""Per-zone occupancy filter: a two-state Kalman filter over (count, rate). Pure.

Each camera's view of a zone is one measurement of the zone's count (its density over the
visible walkable area, extrapolated to the whole zone); its noise grows as the camera sees
less of the zone and as its confidence drops. Overlapping cameras therefore measure the same
quantity and are averaged by their precision, never added. Gate in/out counts enter as a
known input between measurements, so occupancy follows the flows and the direct counts keep
it from drifting. The rate state gives the trend used by the forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SIGMA_ABS = 1.0  # persons: counting noise floor
SIGMA_REL = 0.10  # relative counting noise of a full-coverage, confident camera
RATE_NOISE = 0.02  # (persons/s)² per s: how fast the underlying rate may wander
COUNT_NOISE = 0.5  # persons² per s: unexplained arrivals/departures


@dataclass
class OccupancyFilter:
    n: float  # persons
    r: float = 0.0  # persons per second (trend not explained by gate flows)
    p_nn: float = 0.0
    p_nr: float = 0.0
    p_rr: float = 0.01
    t: float = 0.0  # time of the state

    @classmethod
    def start(cls, count: float, variance: float, t: float) -> "OccupancyFilter":
        return cls(n=count, p_nn=variance, t=t)

    def predict(self, t: float, net_flow: float = 0.0) -> None:
        """Advance to ``t``; ``net_flow`` = gate inflow − outflow counted since the last step."""
        dt = t - self.t
        if dt <= 0:
            self.n = max(0.0, self.n + net_flow)
            return
        self.n = max(0.0, self.n + self.r * dt + net_flow)
        # P ← F P Fᵀ + Q with F = [[1, dt], [0, 1]]
        p_nn = self.p_nn + 2 * dt * self.p_nr + dt * dt * self.p_rr + COUNT_NOISE * dt
        p_nr = self.p_nr + dt * self.p_rr
        p_rr = self.p_rr + RATE_NOISE * dt
        self.p_nn, self.p_nr, self.p_rr = p_nn, p_nr, p_rr
        self.t = t

    def update(self, z: float, variance: float) -> None:
        s = self.p_nn + variance
        k_n = self.p_nn / s
        k_r = self.p_nr / s
        y = z - self.n
        self.n = max(0.0, self.n + k_n * y)
        self.r += k_r * y
        p_nn = (1 - k_n) * self.p_nn
        p_nr = (1 - k_n) * self.p_nr
        p_rr = self.p_rr - k_r * self.p_nr
        self.p_nn, self.p_nr, self.p_rr = p_nn, p_nr, max(p_rr, 1e-9)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.p_nn, 0.0))


def measurement_variance(count: float, coverage: float, confidence: float) -> float:
    """Noise of one camera's zone-count estimate: grows as 1/coverage and 1/confidence."""
    coverage = min(1.0, max(coverage, 1e-3))
    confidence = min(1.0, max(confidence, 0.05))
    base = SIGMA_ABS**2 + (SIGMA_REL * count) ** 2
    return base / (coverage * confidence)
