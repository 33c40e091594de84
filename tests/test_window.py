"""Edge observation windows: one record per interval, averaged, with increasing seq."""

from __future__ import annotations

import pytest

from edge.window import ObservationWindow

T0 = 1_790_000_000.0


def test_window_averages_frames_and_advances_seq():
    w = ObservationWindow("cam-a", "edge-1", {"z1": 100.0, "z2": 50.0}, interval_s=1.0, seq_start=500)
    for i, n in enumerate([2, 4, 6]):
        w.add(T0 + i * 0.3, {"z1": n, "z2": 1})
    assert not w.due(T0 + 0.9) and w.due(T0 + 1.0)
    o = w.flush(T0 + 1.0)
    assert o.seq == 500 and o.frames == 3 and o.window_s == pytest.approx(1.0)
    assert {z.zone_id: z.count for z in o.zones} == {"z1": 4.0, "z2": 1.0}
    assert {z.zone_id: z.visible_area_m2 for z in o.zones} == {"z1": 100.0, "z2": 50.0}
    w.add(T0 + 1.2, {"z1": 1})
    o2 = w.flush(T0 + 2.0)
    assert o2.seq == 501 and o2.captured_at == T0 + 2.0 and o2.window_s == pytest.approx(1.0)


def test_unhealthy_window_carries_no_counts():
    w = ObservationWindow("cam-a", "edge-1", {"z1": 100.0}, interval_s=1.0, seq_start=1)
    o = w.flush(T0, health="camera_offline")
    assert o.health == "camera_offline" and o.zones == [] and o.frames == 0
