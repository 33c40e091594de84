"""Online estimate of the evening's demand multiplier. Pure (numbers in, a number out).

The planning twin runs the scenario's *nominal* arrivals; nobody tells the planner that tonight
is ×1.3. It can see it, though: a forecast started from the fused counts at ``t0`` knows where
everyone on site goes next, so what it misses ``k`` minutes later is mostly the arrivals it
under- (or over-) estimated. With ``A`` the nominal arrivals over those ``k`` minutes and ``ŝ``
the multiplier the forecast ran at, one measurement is

    s = ŝ + (observed − forecast) / A

over the zones known both at ``t0`` and now (the people who arrived within ``k`` ≤ 10 minutes
are still on site: a visit lasts an hour or more). Each measurement is clipped to the bounds and
smoothed (exponential, time constant ``tau_min``): counts are noisy (a few % a zone) and a burst
such as a metro surge should move the plan, not flip it. It is blind while metering holds the
extra arrivals outside every counted zone (they are then not on site yet — the forecast with the
same metering agrees), and it attributes the twin's own bias to demand: both are why it is
bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOW, HIGH = 0.7, 1.8  # bounds of the estimate (the yardstick's sweep is ×1.0 … ×1.6)
TAU_MIN = 8.0  # smoothing time constant (minutes)
MIN_ARRIVALS = 100.0  # people: fewer nominal arrivals in a window carry no information


@dataclass
class DemandEstimate:
    value: float = 1.0
    low: float = LOW
    high: float = HIGH
    tau_min: float = TAU_MIN
    min_arrivals: float = MIN_ARRIVALS
    last_at: float | None = None  # time of the last measurement (s)
    n: int = 0  # measurements taken

    def measure(self, forecast_scale: float, forecast: float, observed: float, nominal_arrivals: float) -> float | None:
        """One measurement of the multiplier (bounded), or None if the window had too few arrivals."""
        if not (nominal_arrivals >= self.min_arrivals) or not math.isfinite(observed - forecast):
            return None
        return min(self.high, max(self.low, forecast_scale + (observed - forecast) / nominal_arrivals))

    def update(self, at: float, forecast_scale: float, forecast: float, observed: float,
               nominal_arrivals: float, window_min: float) -> float:
        """Fold in one window's forecast error; returns the estimate. The weight grows with the
        time since the last measurement (the first one gets the window's own length)."""
        s = self.measure(forecast_scale, forecast, observed, nominal_arrivals)
        if s is None:
            return self.value
        gap_min = window_min if self.last_at is None else max(0.0, (at - self.last_at) / 60.0)
        w = 1.0 - math.exp(-min(gap_min, window_min) / self.tau_min)
        self.value = min(self.high, max(self.low, self.value + w * (s - self.value)))
        self.last_at = at
        self.n += 1
        return self.value
