"""The site file: the real one validates; broken ones fail naming the exact path."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from crowdflow.site import ConfigError, load_site

from .conftest import REPO, SITE_FILE, problems_of



def test_real_site_is_complete(site):
    assert len(site.zones) >= 15
    assert len(site.cameras) >= 8
    assert site.gates and site.roads and site.posts and site.plans
    for plan in site.plans:
        assert [lv.level for lv in plan.levels] == ["IV", "III", "II", "I"]
    # Every zone named in Chinese, every camera calibrated with ≥4 points.
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in z.name.zh) for z in site.zones)
    assert all(len(p.points) >= 4 for c in site.cameras for p in c.presets)


def test_capacity_is_walkable_area_over_area_per_visitor(site):
    z = site.zone_by_id["xsz-exit6"]
    assert z.walkable_area_m2 == 130 and z.area_per_visitor_m2 == 1.5
    assert z.capacity == 86  # floor(130 / 1.5), LB/T 034-2014 C1
    assert site.zone_by_id["bridge-e-mid"].capacity == 1220


def test_zone_polygons_are_in_metric_crs(site):
    # The east walkway's mid-span strip: 3.6 m wide along OSM way 1416554081 (876.8 m by
    # haversine, 874.6 m in UTM 48N) less the 180 m south and north strips.
    poly = site.zone_polygons_m["bridge-e-mid"]
    assert poly.area == pytest.approx(3.6 * (874.6 - 2 * 180), rel=0.01)


def test_two_point_ring(raw):
    d = copy.deepcopy(raw)
    d["zones"][3]["polygon"] = d["zones"][3]["polygon"][:2]
    assert "zones[3].polygon: ring has 2 points; a polygon needs at least 3" in problems_of(d)


def test_unknown_references_name_their_path(raw):
    d = copy.deepcopy(raw)
    d["cameras"][0]["zones"].append("nowhere")
    d["plans"][0]["levels"][2]["actions"][0] = {"type": "traffic_cutoff", "road": "road-moon"}
    d["gates"][1]["inside_zone"] = "hyd-basement"
    probs = problems_of(d)
    n = len(raw["cameras"][0]["zones"])
    assert f"cameras[0].zones[{n}]: unknown zone 'nowhere'" in probs
    assert "plans[0].levels[2].actions[0].road: unknown road 'road-moon'" in probs
    assert "gates[1].inside_zone: unknown zone 'hyd-basement'" in probs


def test_missing_and_wrong_fields(raw):
    d = copy.deepcopy(raw)
    del d["zones"][0]["walkable_area_m2"]
    d["zones"][1]["area_per_visitor_m2"] = -1
    d["cameras"][2]["presets"][0]["points"] = d["cameras"][2]["presets"][0]["points"][:3]
    d["plans"][1]["levels"][0]["actions"][0] = {"type": "teleport"}
    probs = "\n".join(problems_of(d))
    assert "zones[0].walkable_area_m2: Field required" in probs
    assert "zones[1].area_per_visitor_m2: Input should be greater than or equal to 0.3" in probs
    assert "cameras[2].presets[0].points: List should have at least 4 items" in probs
    assert "plans[1].levels[0].actions[0]: Input tag 'teleport' found using 'type' does not match" in probs


def test_swapped_lonlat_and_oversized_area(raw):
    d = copy.deepcopy(raw)
    lon, lat = d["zones"][5]["polygon"][0]
    d["zones"][5]["polygon"][0] = [lat, lon]
    assert f"zones[5].polygon[0]: [{lat}, {lon}] is not a WGS84 [lon, lat] pair" in problems_of(d)
    # Field errors come first; cross-field checks run once every field parses.
    d = copy.deepcopy(raw)
    d["zones"][6]["walkable_area_m2"] = 99999
    probs = problems_of(d)
    assert any(p.startswith("zones[6].walkable_area_m2: 99999 m² exceeds the polygon's") for p in probs)


def test_levels_and_thresholds_must_escalate(raw):
    d = copy.deepcopy(raw)
    lv = d["plans"][0]["levels"]
    lv[1]["triggers"]["capacity_ratio"] = 0.5  # below level IV's 0.7
    probs = problems_of(d)
    assert "plans[0].levels[1].triggers.capacity_ratio: 0.5 must exceed the milder level's 0.7" in probs
    d = copy.deepcopy(raw)
    d["plans"][0]["levels"] = list(reversed(d["plans"][0]["levels"]))
    assert any(p.startswith("plans[0].levels: levels must be distinct and ordered IV → I") for p in problems_of(d))


def test_duplicate_ids_and_calibration_outside_image(raw):
    d = copy.deepcopy(raw)
    d["zones"][4]["id"] = d["zones"][2]["id"]
    d["cameras"][0]["presets"][0]["points"][1]["pixel"] = [9999, 10]
    probs = problems_of(d)
    assert f"zones[4].id: duplicate id '{raw['zones'][2]['id']}' (also zones[2])" in probs
    assert any(p.startswith("cameras[0].presets[0].points[1].pixel: [9999, 10] lies outside") for p in probs)


def test_yaml_syntax_error_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("site:\n  id: x\n  name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load_site(f)
    (where, msg), = ei.value.problems
    assert where.startswith("line ") and "YAML syntax" in msg


def test_check_config_cli(tmp_path, raw):
    ok = subprocess.run([sys.executable, "-m", "crowdflow.cli", "check-config", str(SITE_FILE)],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "zones    19" in ok.stdout and "plan bridge" in ok.stdout
    d = copy.deepcopy(raw)
    d["zones"][3]["polygon"] = d["zones"][3]["polygon"][:2]
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(d, allow_unicode=True), encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "crowdflow.cli", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1
    assert "zones[3].polygon: ring has 2 points" in res.stderr
