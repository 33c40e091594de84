"""Gate line crossings from tracks: direction, hysteresis band, segment extent (scripted tracks)."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Point

from edge.gates import GateCounter, GateLine

# A 4 m gate along the x axis, walked from (0,0) to (4,0): its left side (inside) is y > 0.
LINE = GateLine("g", np.array([0.0, 0.0]), np.array([4.0, 0.0]), band_m=0.5)


def feed(gc: GateCounter, ys, x: float = 2.0, tid: int = 7, t0: float = 0.0) -> None:
    for i, y in enumerate(ys):
        gc.update(t0 + i * 0.1, [tid], [[x, y]])


def test_walking_in_and_out_counts_direction():
    gc = GateCounter(LINE)
    feed(gc, np.linspace(-3, 3, 30))  # right side → left side: in
    assert gc.take() == (1, 0)
    feed(gc, np.linspace(3, -3, 30), t0=5)
    assert gc.take() == (0, 1)


def test_jitter_on_the_line_counts_once():
    gc = GateCounter(LINE)
    # Approach from outside, then wobble across the line within the band many times, then leave inside.
    wobble = [0.3, -0.3, 0.4, -0.2, 0.45, -0.45, 0.1, -0.1] * 5
    feed(gc, [-2.0, -1.0, -0.6, *wobble, 0.8, 1.5, 2.5])
    assert gc.take() == (1, 0)
    # Without the band the same track would flip sides many times.
    raw = GateCounter(GateLine("g", LINE.a, LINE.b, band_m=0.0))
    feed(raw, [-2.0, -1.0, -0.6, *wobble, 0.8, 1.5, 2.5])
    i, o = raw.take()
    assert i + o > 10 and i - o == 1


def test_crossing_beside_the_gate_is_not_counted_and_tracks_are_independent():
    gc = GateCounter(LINE)
    feed(gc, np.linspace(-3, 3, 30), x=9.0)  # passes 5 m beyond the end of the segment
    assert gc.take() == (0, 0)
    # Two people: one in, one out, interleaved frame by frame.
    ys = np.linspace(-3, 3, 30)
    for i, y in enumerate(ys):
        gc.update(10 + i * 0.1, [1, 2], [[1.0, y], [3.0, -y]])
    assert gc.take() == (1, 1)


def test_a_track_that_appears_inside_the_band_needs_a_clear_side_first():
    gc = GateCounter(LINE)
    feed(gc, [0.2, -0.2, 0.3, 1.0, 2.0])  # first clear side is inside: no crossing seen
    assert gc.take() == (0, 0)


def test_site_gate_direction_walking_from_outside_zone_to_inside_zone_is_in(site):
    """gate-11f: from the Cangbai Rd plaza (outside, south) into the upper floors (inside, north)."""
    gate = next(g for g in site.gates if g.id == "gate-11f")
    a, b = np.array(site.projection.to_metric(gate.line))
    gc = GateCounter(GateLine(gate.id, a, b, band_m=0.5))
    mid = (a + b) / 2
    # a point 4 m off the gate, on whichever side the plaza's polygon is (south of the line)
    n = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
    plaza = next(p for p in (mid + 4 * n, mid - 4 * n) if site.zone_polygons_m["cangbai-plaza"].contains(Point(*p)))
    assert site.zone_polygons_m["hyd-upper"].contains(Point(*(2 * mid - plaza)))  # the other side: the floors
    assert plaza[1] < mid[1]  # the plaza is on the 沧白路 (south) side
    path = [plaza + (mid - plaza) * f for f in np.linspace(0, 2, 25)]  # on through the gate and beyond
    for i, p in enumerate(path):
        gc.update(i * 0.2, [1], [p])
    assert gc.take() == (1, 0)
