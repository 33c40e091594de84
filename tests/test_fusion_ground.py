"""Fusion on the ground: footprints split a zone; overlaps average with variances that do
not depend on the reading; unseen parts are estimated with a wider noise, never zeroed.

The site here is a small synthetic one (one 40 × 20 m zone, cameras looking straight down
on chosen halves) so that the truth is known exactly; the calibration runs through the same
homography and footprint code as the real site file.
"""

from __future__ import annotations

import pytest

from control.fusion import Reading, fuse, reading_variance
from control.ground import Part
from control.zones import ZoneBook
from crowdflow import crowd
from crowdflow.records import GateFlow, Observation, ZoneCount
from crowdflow.site import parse_site

T0 = 1_790_000_000.0
LON0, LAT0 = 106.5780, 29.5640
DLON, DLAT = 40 / 96_900, 20 / 110_850  # ≈ 40 m × 20 m


def _cam(cid: str, x0: float, x1: float) -> dict:
    """A camera looking straight down on the zone's strip x0..x1 (shares of its length)."""
    lo, hi = LON0 + x0 * DLON, LON0 + x1 * DLON
    pts = [((0, 0), (lo, LAT0 + DLAT)), ((100, 0), (hi, LAT0 + DLAT)), ((100, 100), (hi, LAT0)),
           ((0, 100), (lo, LAT0)), ((50, 50), ((lo + hi) / 2, LAT0 + DLAT / 2))]
    return {"id": cid, "name": {"zh": cid, "en": cid}, "position": [(lo + hi) / 2, LAT0 + DLAT / 2],
            "height_m": 10, "zones": ["z"],
            "presets": [{"id": "home", "image_size": [100, 100],
                         "points": [{"pixel": list(p), "lonlat": list(g)} for p, g in pts]}]}


def small_site(cams: list[dict], gates: list[dict] | None = None, zones: list[dict] | None = None):
    ring = [[LON0, LAT0], [LON0 + DLON, LAT0], [LON0 + DLON, LAT0 + DLAT], [LON0, LAT0 + DLAT]]
    return parse_site({
        "version": 1,
        "site": {"id": "t", "name": {"zh": "t", "en": "t"}, "center": [LON0, LAT0]},
        "zones": [{"id": "z", "name": {"zh": "z", "en": "z"}, "kind": "plaza", "polygon": ring,
                   "walkable_area_m2": 800, "area_per_visitor_m2": 1.0}] + (zones or []),
        "cameras": cams, "gates": gates or [],
    })


def ob(cam: str, t: float, count: float | None, area: float = 400.0, health: str = "ok", seq: int = 1, **kw):
    zones = [ZoneCount(zone_id="z", count=count, visible_area_m2=area)] if count is not None else []
    return Observation(camera_id=cam, agent_id="t", seq=seq, captured_at=t, health=health, preset="home",
                       zones=zones, **kw)


def feed(book, t0: float, seconds: int, area: float = 400.0, **cams):
    for i in range(seconds):
        for cid, c in cams.items():
            book.apply(ob(cid, t0 + i, c, area=area, seq=i), t0 + i)


def test_parts_follow_the_footprints():
    book = ZoneBook(small_site([_cam("a", 0, 0.5), _cam("b", 0.5, 1)]), stale_after_s=10)
    parts, unplaced = book.ground.parts("z", (("a", "home"), ("b", "home")))
    assert not unplaced
    areas = {tuple(sorted(p.cameras)): p.area_m2 for p in parts}
    assert areas[("a",)] == pytest.approx(400, rel=0.02) and areas[("b",)] == pytest.approx(400, rel=0.02)
    assert sum(areas.values()) == pytest.approx(800)


def test_half_and_half_fuses_to_the_sum():
    """Two cameras that each see half: 400 people in one half, 0 in the other → ≈400."""
    book = ZoneBook(small_site([_cam("a", 0, 0.5), _cam("b", 0.5, 1)]), stale_after_s=10)
    feed(book, T0, 20, a=400.0, b=0.0)
    s = book.state("z", T0 + 20)
    assert s.count == pytest.approx(400, rel=0.03)
    assert s.coverage == pytest.approx(1.0, abs=0.02) and s.estimated_share == pytest.approx(0, abs=0.02)


def test_same_ground_averages_to_the_middle():
    """Two cameras on the same ground reading 360 and 440 → ≈400 (not pulled to the low one)."""
    book = ZoneBook(small_site([_cam("a", 0, 1), _cam("b", 0, 1)]), stale_after_s=10)
    feed(book, T0, 20, area=800.0, a=360.0, b=440.0)
    s = book.state("z", T0 + 20)
    assert s.count == pytest.approx(400, abs=4)


def test_variance_does_not_depend_on_the_reading():
    assert reading_variance(400, 1.0, 1.0) == reading_variance(400, 1.0, 1.0)
    parts = [Part(frozenset({"a", "b"}), 800.0)]
    v = reading_variance(800, 1.0, 1.0)
    lo = fuse(parts, {"a": Reading(0.0, v), "b": Reading(1.0, v)}, {})
    assert lo.count == pytest.approx(400)  # the zero does not win
    assert lo.variance == fuse(parts, {"a": Reading(1.0, v), "b": Reading(0.0, v)}, {}).variance
    # a less confident camera weighs less, whatever it reads
    f = fuse(parts, {"a": Reading(0.5, v), "b": Reading(2.0, reading_variance(800, 1.0, 0.2))}, {})
    assert f.count < (0.5 + 2.0) / 2 * 800


def test_offline_camera_widens_the_uncertainty_instead_of_zeroing_its_part():
    book = ZoneBook(small_site([_cam("a", 0, 0.5), _cam("b", 0.5, 1)]), stale_after_s=10)
    feed(book, T0, 20, a=400.0, b=0.0)
    before = book.state("z", T0 + 20)
    # b goes offline; a keeps reporting for a minute
    for i in range(20, 80):
        book.apply(ob("a", T0 + i, 400.0, seq=i), T0 + i)
        if i % 5 == 0:
            book.apply(ob("b", T0 + i, None, health="camera_offline", seq=i), T0 + i)
    after = book.state("z", T0 + 80)
    assert after.status == "ok"
    assert after.count == pytest.approx(400, rel=0.05)  # b's half kept at its last density (0)
    assert after.count_std > before.count_std * 1.5
    assert after.estimated_share == pytest.approx(0.5, abs=0.02)
    assert after.confidence < before.confidence
    # now a goes offline: its 400 are kept, not dropped to b's 0 or to nothing
    for i in range(80, 90):
        book.apply(ob("b", T0 + i, 0.0, seq=i), T0 + i)
        book.apply(ob("a", T0 + i, None, health="camera_offline", seq=i), T0 + i)
    s = book.state("z", T0 + 90)
    assert s.count == pytest.approx(400, rel=0.1)


def test_unseen_part_is_estimated_with_lower_confidence():
    book = ZoneBook(small_site([_cam("a", 0, 0.25)]), stale_after_s=10)
    for i in range(10):  # 100 people on the 200 m² in view
        book.apply(ob("a", T0 + i, 100.0, area=200.0, seq=i), T0 + i)
    s = book.state("z", T0 + 10)
    assert s.coverage == pytest.approx(0.25, abs=0.02) and s.estimated_share == pytest.approx(0.75, abs=0.02)
    assert s.confidence < 0.5  # most of the zone is estimated
    assert s.count_std > 20


def test_future_dated_view_does_not_freeze_the_zone_for_other_cameras():
    book = ZoneBook(small_site([_cam("a", 0, 1), _cam("b", 0, 1)]), stale_after_s=10)
    feed(book, T0, 5, area=800.0, a=100.0, b=100.0)
    book.apply(ob("a", T0 + 3600, 100.0, seq=99), T0 + 5)  # a's clock is an hour ahead
    for i in range(6, 30):
        book.apply(ob("b", T0 + i, 300.0, area=800.0, seq=i), T0 + i)
    s = book.state("z", T0 + 30)
    assert s.sources == ["b"]  # a's future view is not taken as fresh
    assert s.count > 200  # b's rise got through (a frozen zone would stay at 100)


def test_out_of_order_view_still_counts():
    book = ZoneBook(small_site([_cam("a", 0, 1), _cam("b", 0, 1)]), stale_after_s=10)
    feed(book, T0, 5, area=800.0, a=100.0, b=100.0)
    book.apply(ob("a", T0 + 8, 100.0, area=800.0, seq=50), T0 + 8)
    without = book.state("z", T0 + 8).count
    book.apply(ob("b", T0 + 7, 300.0, area=800.0, seq=50), T0 + 8)  # arrives late, still newer for b
    s = book.state("z", T0 + 8)
    assert s.count > without + 5


# --------------------------------------------------------------------------- level of service


LOS_TABLE = [  # density p/m², LOS by space, LOS by Weidmann flow, combined
    (0.2, "A", "A", "A"), (0.5, "C", "C", "C"), (1.0, "D", "D", "D"), (1.5, "E", "E", "E"),
    (2.0, "E", "E", "E"), (3.0, "F", "D", "F"), (4.0, "F", "C", "F"), (5.0, "F", "A", "F"),
]


@pytest.mark.parametrize("density,by_area,by_flow,combined", LOS_TABLE)
def test_los_is_the_worse_of_space_and_flow(density, by_area, by_flow, combined):
    assert crowd.fruin_los_area(density) == by_area
    assert crowd.fruin_los(crowd.flow_ppm(density)) == by_flow
    assert crowd.level_of_service(density, crowd.flow_ppm(density)) == combined


def test_densest_crowd_reads_F_on_the_map():
    book = ZoneBook(small_site([_cam("a", 0, 1)]), stale_after_s=10)
    feed(book, T0, 5, area=800.0, a=4000.0)  # 5 p/m²
    s = book.state("z", T0 + 5)
    assert s.density == pytest.approx(5.0, rel=0.05) and s.los == "F" and s.flow_measured is False


def test_flow_is_measured_at_gates_where_they_report():
    lonm = LON0 + DLON
    gate = {"id": "g", "name": {"zh": "g", "en": "g"}, "line": [[lonm, LAT0], [lonm, LAT0 + 4 / 110_850]],
            "outside_zone": None, "inside_zone": "z", "camera": "a"}
    book = ZoneBook(small_site([_cam("a", 0, 1)], gates=[gate]), stale_after_s=10)
    for i in range(60):  # 5 crossings/s through a 4 m gate = 75 p/m/min
        book.apply(ob("a", T0 + i, 400.0, area=800.0, seq=i, gates=[GateFlow(gate_id="g", inflow=3, outflow=2)]), T0 + i)
    s = book.state("z", T0 + 60)
    assert s.flow_measured is True
    assert s.flow_ppm == pytest.approx(75, rel=0.05)
    assert s.flow_ppm > crowd.peak_flow_ppm()  # measured flow can exceed the diagram's peak
    assert s.los == "E"  # 0.5 p/m² is C by space; 75 p/m/min is E by flow


def test_check_config_warns_about_triggers_that_cannot_fire(site, tmp_path):
    import subprocess
    import sys

    import yaml

    from crowdflow.site import semantic_warnings

    assert semantic_warnings(site) == []  # every plan has a gate that measures flow
    data = site.model_dump(mode="json")
    bridge_zones = set(site.plan_by_id["bridge"].zones)
    for g in data["gates"]:  # the bridge's gates no longer count for its zones
        for side in ("inside_zone", "outside_zone"):
            if g[side] in bridge_zones:
                g[side] = None
        if g["inside_zone"] is None and g["outside_zone"] is None:
            g["inside_zone"] = "xsz-exit6"
    warns = dict(semantic_warnings(parse_site(data)))
    bridge = [p.id for p in site.plans].index("bridge")
    lv2 = [lv.level for lv in site.plan_by_id["bridge"].levels].index("II")
    msg = warns[f"plans[{bridge}].levels[{lv2}].triggers.flow_ppm"]
    assert "can never fire" in msg and "73.5" in msg
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "crowdflow.cli", "check-config", str(f)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert f"warning: plans[{bridge}].levels[{lv2}].triggers.flow_ppm" in out.stdout


def test_figures_of_issue_13():
    """The figures quoted in docs/architecture.md (run with -s to see them)."""
    book = ZoneBook(small_site([_cam("a", 0, 0.5), _cam("b", 0.5, 1)]), stale_after_s=10)
    feed(book, T0, 20, a=400.0, b=0.0)
    hh = book.state("z", T0 + 20)
    same = ZoneBook(small_site([_cam("a", 0, 1), _cam("b", 0, 1)]), stale_after_s=10)
    feed(same, T0, 20, area=800.0, a=360.0, b=440.0)
    sg = same.state("z", T0 + 20)
    widths = []
    for i in range(20, 80):
        book.apply(ob("a", T0 + i, 400.0, seq=i), T0 + i)
        if i % 5 == 0:
            book.apply(ob("b", T0 + i, None, health="camera_offline", seq=i), T0 + i)
        if i in (20, 30, 79):
            widths.append(book.state("z", T0 + i + 1))
    print(f"\nhalf/half 400|0 → {hh.count:.0f} ± {hh.count_std:.0f}; same ground 360/440 → {sg.count:.0f} ± {sg.count_std:.0f}; "
          "b offline 1/11/60 s → " + ", ".join(f"{s.count:.0f} ± {s.count_std:.0f}" for s in widths))
    assert widths[0].count_std < widths[1].count_std < widths[2].count_std
