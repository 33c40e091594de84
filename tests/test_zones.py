"""Control's zone core: pooled density, overlap without double counting, the unknown rule."""

from __future__ import annotations

import pytest

from control.zones import ZoneBook, site_problem
from crowdflow.records import Observation, ZoneCount
from crowdflow.site import parse_site

T0 = 1_790_000_000.0


def ob(camera: str, t: float, health: str = "ok", seq: int = 1, **zones) -> Observation:
    zs = [ZoneCount(zone_id=z.replace("_", "-"), count=c, visible_area_m2=a) for z, (c, a) in zones.items()]
    return Observation(camera_id=camera, agent_id="t", seq=seq, captured_at=t, health=health, zones=zs)


@pytest.fixture
def book(site):
    return ZoneBook(site, stale_after_s=10)


def test_starts_unknown_never_zero(book):
    s = book.state("cangbai-plaza", T0)
    assert s.status == "unknown" and s.count is None and s.reason == "no observation yet"


def test_density_extrapolates_over_walkable_area(book, site):
    book.apply(ob("cam-cangbai-plaza", T0, cangbai_plaza=(19.0, 950.0)))
    s = book.state("cangbai-plaza", T0 + 1)
    zone = site.zone_by_id["cangbai-plaza"]
    assert s.status == "ok"
    assert s.density == pytest.approx(0.02)
    assert s.count == pytest.approx(0.02 * zone.walkable_area_m2)
    assert s.capacity_ratio == pytest.approx(s.count / zone.capacity, rel=1e-3)
    # coverage is the ground the preset sees (footprint ∩ zone), the rest is estimated
    # (the home preset looks along the plaza: it sees 770 m² of its 2,112 m² strip by the 沧白路 sidewalk)
    assert s.coverage == pytest.approx(770 / site.zone_polygons_m["cangbai-plaza"].area, abs=0.01)
    assert s.estimated_share == pytest.approx(1 - s.coverage, abs=0.002)
    assert s.sources == ["cam-cangbai-plaza"] and s.updated_at == T0


def test_overlapping_cameras_average_not_add(book):
    # Both cameras see the whole crossing (190 m²) and the same 19 people.
    book.apply(ob("cam-jiabin", T0, jiabin_crossing=(19.0, 190.0)))
    book.apply(ob("cam-riverside", T0, jiabin_crossing=(19.0, 190.0)))
    s = book.state("jiabin-crossing", T0 + 1)
    assert s.count == pytest.approx(19.0)
    assert s.sources == ["cam-jiabin", "cam-riverside"]


def test_unknown_after_timeout(book):
    book.apply(ob("cam-cangbai-plaza", T0, cangbai_plaza=(10.0, 950.0)))
    assert book.state("cangbai-plaza", T0 + 10).status == "ok"
    s = book.state("cangbai-plaza", T0 + 10.5)
    assert s.status == "unknown" and s.count is None
    assert s.reason.startswith("stale: newest observation 10 s old")
    assert s.last_known.count == pytest.approx(10 / 950 * 1900) and s.last_known.at == T0


def test_offline_camera_makes_zone_unknown_with_reason(book):
    book.apply(ob("cam-cangbai-plaza", T0, cangbai_plaza=(10.0, 950.0)))
    book.apply(ob("cam-cangbai-plaza", T0 + 1, health="camera_offline"))
    s = book.state("cangbai-plaza", T0 + 2)
    assert s.status == "unknown" and s.reason == "cam-cangbai-plaza camera_offline"


def test_late_observation_does_not_overwrite_newer(book):
    book.apply(ob("cam-cangbai-plaza", T0 + 5, cangbai_plaza=(10.0, 1000.0)))
    book.apply(ob("cam-cangbai-plaza", T0 + 1, cangbai_plaza=(500.0, 1000.0)))  # a spool replay
    assert book.state("cangbai-plaza", T0 + 6).density == pytest.approx(0.01)


def test_zone_without_camera(site):
    data = site.model_dump(mode="json")
    data["cameras"] = [c for c in data["cameras"] if c["id"] != "cam-hyd-middle"]
    book = ZoneBook(parse_site(data), stale_after_s=10)
    assert book.state("hyd-middle", T0).reason == "no camera covers this zone"
    assert book.state("hyd-upper", T0).reason == "no observation yet"


def test_site_problem_names_the_field(site):
    assert site_problem(ob("cam-nope", T0), site) == "camera_id: unknown camera 'cam-nope'"
    bad = ob("cam-cangbai-plaza", T0, bridge_e_mid=(1.0, 10.0))
    assert site_problem(bad, site) == (
        "zones[0].zone_id: zone 'bridge-e-mid' is not configured for camera cam-cangbai-plaza")
    assert site_problem(ob("cam-cangbai-plaza", T0, cangbai_plaza=(1.0, 10.0)), site) is None
