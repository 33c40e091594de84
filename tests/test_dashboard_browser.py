"""The live map in a real browser: every zone drawn, unknown is grey, pushes recolour live."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import sync_playwright

from crowdflow.records import Observation, ZoneCount

from .browser import launch
from .conftest import free_port
from .procs import services, wait_http


@pytest.fixture
def page_on_dashboard(tmp_path, redis_url, keys):
    port = free_port()
    with services(tmp_path, redis_url, keys.prefix) as s:
        s.start("control", "control", "--stale-after", "30")
        s.start("dashboard", "dashboard", "--port", str(port))
        wait_http(f"http://127.0.0.1:{port}/healthz")
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("Object.keys(window.crowdflow.states).length === 19")
            yield page
            browser.close()


def fill_of(page, zone_id: str) -> str:
    return page.get_attribute(f"path.zone-{zone_id}", "fill")


def test_map_draws_every_zone_grey_until_data_then_live(page_on_dashboard, r, keys, site):
    page = page_on_dashboard
    assert page.locator("path.zone").count() == len(site.zones) == 19
    # No data yet: every zone grey, dashed, labelled 无数据 in Chinese.
    assert {fill_of(page, z.id) for z in site.zones} == {"#9aa0a6"}
    labels = page.locator(".zone-label").all_text_contents()
    assert len(labels) == 19 and all("无数据" in t for t in labels)
    assert any("沧白路11F入口广场" in t for t in labels)
    assert page.inner_text("#conn") == "实时"

    # A camera reports 1,600 people-equivalent density on the plaza → ≥80 % → yellow band.
    o = Observation(camera_id="cam-cangbai-plaza", agent_id="t", seq=1, captured_at=time.time(),
                    zones=[ZoneCount(zone_id="cangbai-plaza", count=800.0, visible_area_m2=950.0)])
    r.xadd(keys.obs, {"rec": o.encode()})
    page.wait_for_function(
        "document.querySelector('path.zone-cangbai-plaza').getAttribute('fill') !== '#9aa0a6'", timeout=10000)
    assert fill_of(page, "cangbai-plaza") == "#f2c418"  # 84 % of capacity: 80–90 % band
    label = page.locator(".zone-label", has_text="沧白路11F入口广场").inner_text()
    assert "1600人" in label and "84%" in label
    assert fill_of(page, "bridge-e-mid") == "#9aa0a6"  # others stay unknown

    # English toggle relabels without reload.
    page.click("#lang")
    assert page.locator(".zone-label", has_text="Cangbai Rd 11F entrance plaza").count() == 1
    assert page.inner_text("#title") == "Hongyadong crowd control"
