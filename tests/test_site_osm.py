"""The site is drawn on OpenStreetMap: every zone names the OSM elements it lies on and lies on
them within the stated tolerance (``verify_osm_geometry``, run by ``check-config`` when the
extract is at hand). The extract is ODbL data from ``../shared/data/osm_hongyadong``
(© OpenStreetMap contributors), never copied into the repository.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from shapely.geometry import Point
from shapely.ops import unary_union

from crowdflow.site import ConfigError, parse_site
from crowdflow.site.checks import osm_reach_m, verify_osm_geometry
from crowdflow.site.osm import load_osm

from .conftest import REPO, shared_path

SITE_FILE = REPO / "configs" / "hongyadong.yaml"


@pytest.fixture(scope="module")
def osm():
    return load_osm(shared_path("data", "osm_hongyadong", "hongyadong_osm.geojson"))


@pytest.fixture()
def raw():
    return yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))


def test_every_zone_lies_on_the_osm_elements_it_names(site, osm):
    tol = site.site.osm.tolerance_m
    assert tol == 15
    assert verify_osm_geometry(site, osm) == []
    for z in site.zones:
        assert z.osm, z.id
        assert osm_reach_m(site, z.polygon, z.osm, osm) <= tol, z.id
    # The complex's floors lie inside its OSM footprint (way 939578294, centroid 29.56505 N,
    # 106.57534 E), not ~300 m east of it as the first estimates had them.
    floors = [z for z in site.zones if z.kind == "interior"]
    assert {z.id for z in floors} == {"hyd-upper", "hyd-middle", "hyd-lower"}
    for z in floors:
        assert z.osm == ["way/939578294"]
        assert osm_reach_m(site, z.polygon, z.osm, osm) < 0.5
    c = unary_union([site.zone_polygons_m[z.id] for z in floors]).centroid
    fp = site.projection.to_metric([(106.575339, 29.565051)])[0]
    assert c.distance(Point(fp)) < 10
    # Roads follow the OSM ways they name.
    assert all(r.osm for r in site.roads)


def test_cameras_and_gates_moved_with_their_zones(site):
    """Each camera sees part of every zone it lists (its ground points moved with the zone),
    and each gate lies on the edge of the zone it leads into."""
    from control.ground import Ground

    ground = Ground(site)
    for cam in site.cameras:
        for zid in cam.zones:
            assert ground.seen(zid, cam.id, None).area > 20, (cam.id, zid)
    for g in site.gates:
        line = site.projection.to_metric(g.line)
        mid = Point((line[0][0] + line[1][0]) / 2, (line[0][1] + line[1][1]) / 2)
        assert site.zone_polygons_m[g.inside_zone].distance(mid) < 1, g.id
        if g.outside_zone:  # on the edge between the two zones it joins
            assert site.zone_polygons_m[g.outside_zone].distance(mid) < 1, g.id
            assert site.zone_polygons_m[g.inside_zone].exterior.distance(mid) < 1, g.id


def test_a_zone_off_its_osm_elements_is_named_with_the_distance(raw, osm):
    i = next(i for i, z in enumerate(raw["zones"]) if z["id"] == "hyd-upper")
    # where the first estimates drew the 8F–11F floors (~300 m east of the OSM footprint)
    raw["zones"][i]["polygon"] = [[106.5788745, 29.5641014], [106.5801129, 29.5640867],
                                  [106.5801192, 29.5644926], [106.5788808, 29.5645074]]
    problems = dict(verify_osm_geometry(parse_site(raw), osm))
    msg = problems[f"zones[{i}].polygon"]
    assert "way/939578294" in msg and "tolerance 15 m" in msg
    assert 300 < int(msg.split("reaches ")[1].split(" m")[0]) < 500


def test_unknown_and_missing_osm_references(raw, osm):
    raw["zones"][0]["osm"] = ["way/1"]
    raw["zones"][1]["osm"] = []
    raw["roads"][0]["osm"] = ["way/939578294", "node/2"]
    problems = dict(verify_osm_geometry(parse_site(raw), osm))
    assert problems["zones[0].osm[0]"] == "way/1 is not in the OSM extract"
    assert "names no OSM feature" in problems["zones[1].osm"]
    assert problems["roads[0].osm[1]"] == "node/2 is not in the OSM extract"
    raw["zones"][2]["osm"] = ["street/5"]
    with pytest.raises(ConfigError, match=r"zones\[2\]\.osm\[0\]: String should match pattern"):
        parse_site(raw)


def test_check_config_checks_against_the_extract(raw, osm, tmp_path):
    extract = shared_path("data", "osm_hongyadong", "hongyadong_osm.geojson")
    out = subprocess.run([sys.executable, "-m", "crowdflow.cli", "check-config", str(SITE_FILE)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "19 zones and 6 roads lie on the OSM elements they name (within 15 m" in out.stdout
    assert "© OpenStreetMap contributors" in out.stdout
    # A zone moved 200 m off its footway fails, with the path and the distance.
    i = next(i for i, z in enumerate(raw["zones"]) if z["id"] == "riverside-w")
    raw["zones"][i]["polygon"] = [[lon + 0.002, lat] for lon, lat in raw["zones"][i]["polygon"]]
    raw["site"]["osm"]["file"] = None  # the copy is elsewhere: name the extract on the command line
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "crowdflow.cli", "check-config", str(f), "--osm", str(extract)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 1
    assert f"zones[{i}].polygon: reaches" in out.stderr and "way/1416968869" in out.stderr
    # Without an extract the check is skipped, not failed (the data is not in the repository).
    raw["site"]["osm"]["file"] = "missing.geojson"
    f.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "crowdflow.cli", "check-config", str(f)],
                         capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**__import__("os").environ, "CROWDFLOW_OSM": ""})
    assert out.returncode == 0 and "not found; zones not checked" in out.stdout


def test_the_steps_onto_the_bridge_are_bottlenecks(site):
    """The bridge sidewalks are reached by OSM steps (ways 1416968846, 23 m; 1416968839, 34 m):
    walking onto either walkway from the south head passes at most 3 m × 1.0 p/(m·s) (SFPE stairs),
    less than the walkway itself would take (3 m × 1.22); walking off is not capped there."""
    from sim.model import build_network
    from sim.scenario import load_scenario

    sc, _ = load_scenario("mayday-evening", site)
    net = build_network(site, sc)
    caps = {}
    for k in range(net.P):
        if net.pkind[k] == 0:
            cid, frm, to, *_ = net.lanes[net.port_lane[k]]
            caps[(cid, frm)] = net.pcap[k]
    assert caps[("bridge-east", "bridge-s-head")] == pytest.approx(3.0)
    assert caps[("bridge-west", "bridge-s-head")] == pytest.approx(3.0)
    assert caps[("bridge-east", "bridge-n-head")] > 1e9
    assert sc.corridors["bridge-east"].ends["a"].length_m == 23
