"""Crowd-safety science used across the system (pure functions, SI units unless stated).

Sources: Weidmann (1993) speed–density relation; Fruin (1971) walkway levels of service;
LB/T 034-2014 (capacity), LB/T 068-2017 (warning ratios). See docs/architecture.md.
"""

from __future__ import annotations

import math

V_FREE = 1.34  # m/s, free walking speed
RHO_JAM = 5.4  # persons/m², jam density (speed 0)
GAMMA = 1.913  # persons/m²

# Fruin walkway level of service by flow in persons / metre width / minute (upper bounds).
FRUIN_LOS = (("A", 23.0), ("B", 33.0), ("C", 49.0), ("D", 66.0), ("E", 82.0))


def weidmann_speed(density: float) -> float:
    """Walking speed (m/s) at ``density`` persons/m²: v = v0·(1 − exp(−γ·(1/ρ − 1/ρ_jam)))."""
    if density <= 0:
        return V_FREE
    if density >= RHO_JAM:
        return 0.0
    return V_FREE * (1.0 - math.exp(-GAMMA * (1.0 / density - 1.0 / RHO_JAM)))


def specific_flow(density: float) -> float:
    """Flow per metre of width (persons/s/m): q = ρ·v(ρ). Peaks near 1.2 at ≈1.75 p/m²."""
    return max(0.0, density) * weidmann_speed(density)


def flow_ppm(density: float) -> float:
    """Specific flow in persons per metre width per minute (Fruin's unit)."""
    return specific_flow(density) * 60.0


def fruin_los(flow_per_m_min: float) -> str:
    """Fruin walkway level of service A–F for a flow in persons/m/min."""
    for letter, upper in FRUIN_LOS:
        if flow_per_m_min < upper:
            return letter
    return "F"


def capacity(walkable_area_m2: float, area_per_visitor_m2: float) -> int:
    """LB/T 034-2014 instantaneous capacity C1 = effective area ÷ area per visitor."""
    return int(walkable_area_m2 // area_per_visitor_m2)
