"""The edge settings and preset reference views in the site file are validated by path."""

from __future__ import annotations

import copy

import pytest
import yaml

from crowdflow.site import ConfigError, parse_site

from .conftest import SITE_FILE


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))


def test_edge_settings_are_checked(raw):
    site = parse_site(raw)
    assert site.edge.gate_band_m == 0.5 and site.edge.snapshots is False and site.edge.metrics_port is None
    bad = copy.deepcopy(raw)
    bad["edge"].update(view_tolerance=2, gate_band_m=-1, spool_max_records=5, metrics_port=70000, snapshot=True)
    with pytest.raises(ConfigError) as ei:
        parse_site(bad, "t.yaml")
    paths = {p for p, _ in ei.value.problems}
    assert {"edge.view_tolerance", "edge.gate_band_m", "edge.spool_max_records", "edge.metrics_port",
            "edge.snapshot"} <= paths  # a misspelt key is refused too


def test_preset_reference_image_is_optional_text(raw):
    data = copy.deepcopy(raw)
    data["cameras"][0]["presets"][0]["reference_image"] = "views/cangbai-home.jpg"
    cam = parse_site(data).cameras[0]
    assert cam.presets[0].reference_image == "views/cangbai-home.jpg"
    data["cameras"][0]["presets"][0]["reference_image"] = 5
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.presets\[0\]\.reference_image"):
        parse_site(data)
