"""Crowd-safety science used across the system (pure functions, SI units unless stated).

Sources: Weidmann (1993) speed–density relation; Fruin (1971) walkway levels of service;
LB/T 034-2014 (capacity), LB/T 068-2017 (warning ratios). See docs/architecture.md.
"""

from __future__ import annotations

import math

V_FREE = 1.34  # m/s, free walking speed
RHO_JAM = 5.4  # persons/m², jam density (speed 0)
GAMMA = 1.913  # persons/m²
# Local density at which a standing or moving crowd becomes dangerous (crush risk; Still,
# Fruin LoS F): the yardstick counts the minutes above it.
DANGER_DENSITY = 4.0  # persons/m²
# The highest local density a plan may forecast anywhere — a cell, a queue, a pen (half a person
# per m² short of danger: the twin's forecasts are not that exact).
PLAN_DENSITY = 3.5  # persons/m²

# Fruin walkway level of service by flow in persons / metre width / minute (upper bounds).
FRUIN_LOS = (("A", 23.0), ("B", 33.0), ("C", 49.0), ("D", 66.0), ("E", 82.0))
# … and by space: area per person in m² (lower bounds; 35/25/15/10/5 ft²).
FRUIN_LOS_AREA = (("A", 3.3), ("B", 2.3), ("C", 1.4), ("D", 0.9), ("E", 0.5))
LOS_ORDER = "ABCDEF"


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


def fruin_los_area(density: float) -> str:
    """Fruin walkway level of service A–F for a density in persons/m² (space per person)."""
    if density <= 0:
        return "A"
    space = 1.0 / density
    for letter, lower in FRUIN_LOS_AREA:
        if space >= lower:
            return letter
    return "F"


def level_of_service(density: float, flow_per_m_min: float | None) -> str:
    """The worse of Fruin's space table and his flow table. A crowd near standstill has a
    small flow but almost no space each, so it reads F, never A."""
    by_area = fruin_los_area(density)
    if flow_per_m_min is None:
        return by_area
    by_flow = fruin_los(flow_per_m_min)
    return max(by_area, by_flow, key=LOS_ORDER.index)


def peak_flow_ppm() -> float:
    """The highest flow (persons/m/min) the fundamental diagram reaches at any density."""
    return max(flow_ppm(i / 1000) for i in range(1, int(RHO_JAM * 1000)))


def capacity(walkable_area_m2: float, area_per_visitor_m2: float) -> int:
    """LB/T 034-2014 instantaneous capacity C1 = effective area ÷ area per visitor."""
    return int(walkable_area_m2 // area_per_visitor_m2)
