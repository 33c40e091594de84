"""The OSM basemap: built from an OSM extract by scripts/build_basemap.py (a tiny extract
written here), loaded by the dashboard from the path the site file names, bad files refused
with the reason, and no OSM data in the repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.basemap import BasemapError, basemap_path, load_basemap

REPO = Path(__file__).resolve().parents[1]

OSM = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6">
 <node id="1" lat="29.5640" lon="106.5780"/>
 <node id="2" lat="29.5641" lon="106.5790"/>
 <node id="3" lat="29.5645" lon="106.5790"/>
 <node id="4" lat="29.5645" lon="106.5780"/>
 <node id="5" lat="29.5636" lon="106.5786"><tag k="railway" v="subway_entrance"/><tag k="ref" v="9"/></node>
 <way id="10"><nd ref="1"/><nd ref="2"/><tag k="highway" v="steps"/></way>
 <way id="11"><nd ref="1"/><nd ref="2"/><nd ref="3"/><nd ref="4"/><nd ref="1"/><tag k="building" v="yes"/></way>
 <way id="12"><nd ref="4"/><nd ref="3"/><tag k="highway" v="secondary"/><tag k="name" v="沧白路"/></way>
</osm>"""


def test_script_builds_a_basemap_the_dashboard_loads(tmp_path, site):
    src = tmp_path / "site.osm"
    src.write_text(OSM, encoding="utf-8")
    out = tmp_path / "basemap.geojson"
    res = subprocess.run([sys.executable, "scripts/build_basemap.py", str(src), "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    gj = json.loads(out.read_text(encoding="utf-8"))
    layers = sorted(f["properties"]["_layer"] for f in gj["features"])
    assert layers == ["building", "footway", "metro_entrance", "street"]
    assert gj["attribution"] == "© OpenStreetMap contributors"
    bm = load_basemap(site, out)
    assert len(bm["features"]) == 4 and bm["attribution"].startswith("© OpenStreetMap contributors")
    assert {f["properties"].get("highway") for f in bm["features"]} >= {"steps", "secondary"}


def test_path_is_taken_from_the_site_file_folder(site, monkeypatch, tmp_path):
    monkeypatch.delenv("CROWDFLOW_BASEMAP", raising=False)
    p = basemap_path(site, REPO / "configs")
    assert p == REPO / "configs" / site.dashboard.basemap_file
    monkeypatch.setenv("CROWDFLOW_BASEMAP", str(tmp_path / "x.geojson"))
    assert basemap_path(site, REPO / "configs") == tmp_path / "x.geojson"


def test_bad_files_are_refused_with_the_reason(site, tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(BasemapError, match="not JSON"):
        load_basemap(site, bad)
    with pytest.raises(BasemapError, match="cannot read"):
        load_basemap(site, tmp_path / "missing.geojson")
    bad.write_text('{"type": "Feature"}', encoding="utf-8")
    with pytest.raises(BasemapError, match="FeatureCollection"):
        load_basemap(site, bad)


def test_no_osm_data_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if f.endswith((".geojson", ".osm", ".pbf", ".o5m"))]
    for f in tracked:  # nor an OSM extract saved under another name
        if f.endswith(".json"):
            assert '"@id": "way/' not in (REPO / f).read_text(encoding="utf-8", errors="ignore"), f
