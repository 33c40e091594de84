"""The map, read at a glance, in Debian's chromium against the real control: the OSM basemap
from the file the site names, with its attribution; the first view fits the zones; labels
never overlap (wall and phone); clicking a zone opens its panel; superseded and expired
recommendations fold away. Writes the README's screenshots of both layouts to docs/img/."""

from __future__ import annotations

import time
from pathlib import Path


from control.ground import Ground
from crowdflow.records import Observation, ZoneCount

from .conftest import shared_path
from .dash import users_env
from .procs import services
from .seed import seed_recommendation
from .test_dashboard_browser import open_as, start_dashboard

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
# An evening near the peak: people per m² of walkable ground, by zone.
DENSITY = {"bridge-e-mid": 0.95, "bridge-w-mid": 0.7, "bridge-s-head": 0.85, "bridge-e-south": 0.9,
           "cangbai-plaza": 0.6, "cangbai-walk": 0.5, "xsz-exit9": 0.4, "xsz-exit6": 0.5,
           "jiabin-frontage": 0.75, "jiabin-crossing": 0.9, "riverside-w": 0.45, "riverside-e": 0.4,
           "hyd-upper": 0.55, "hyd-middle": 0.4, "hyd-lower": 0.5}


def feed(r, keys, site, seq: int) -> None:
    """One observation per camera: the density above on the ground each one sees."""
    ground = Ground(site)
    now = time.time()
    for cam in site.cameras:
        zcs = []
        for zid in cam.zones:
            if zid not in DENSITY:
                continue
            zone = site.zone_by_id[zid]
            seen = ground.seen(zid, cam.id, None)
            if seen is None or seen.area < 1:
                continue
            vis = seen.area * zone.walkable_area_m2 / site.zone_polygons_m[zid].area / zone.floors
            zcs.append(ZoneCount(zone_id=zid, count=round(DENSITY[zid] / zone.area_per_visitor_m2 * vis, 1),
                                 visible_area_m2=round(vis, 2)))
        r.xadd(keys.obs, {"rec": Observation(camera_id=cam.id, agent_id="t", seq=seq, captured_at=now,
                                             preset=cam.presets[0].id, zones=zcs).encode()})


def visible_label_overlaps(page) -> list:
    return page.evaluate("""() => {
      const rs = [...document.querySelectorAll('.zone-label')].filter(e => getComputedStyle(e).display !== 'none')
        .map(e => e.getBoundingClientRect()).filter(r => r.width > 0);
      const out = [];
      for (let i = 0; i < rs.length; i++) for (let j = i + 1; j < rs.length; j++) {
        const a = rs[i], b = rs[j];
        if (a.left < b.right - 0.5 && a.right > b.left + 0.5 && a.top < b.bottom - 0.5 && a.bottom > b.top + 0.5) out.push([i, j]);
      }
      return out; }""")


def test_map_basemap_labels_panel_and_screenshots(browser, tmp_path, redis_url, keys, r, site):
    shared_path("data", "osm_hongyadong", "hongyadong_osm.geojson")
    old = seed_recommendation(r, keys, site, "hongyadong", "IV", "hyd-upper", value=0.72)
    r.hset(keys.recommendations, old.id, old.model_copy(update=dict(status="superseded", decided_by="system",
                                                                    decided_at=time.time())).encode())
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=True)
        rec = seed_recommendation(r, keys, site, "bridge", "III", "bridge-e-mid")
        feed(r, keys, site, 1)
        page = open_as(browser, base, "commander")
        # -- the OSM basemap, offline, with the attribution ODbL asks for
        page.wait_for_function("window.crowdflow.basemap && window.crowdflow.basemap.features > 100")
        assert page.locator("path.osm-street").count() > 50 and page.locator("path.osm-building").count() > 50
        assert page.locator("path.osm-steps").count() > 0 and page.locator(".osm-metro_entrance").count() > 0
        assert "© OpenStreetMap contributors" in page.inner_text(".leaflet-control-attribution")
        # -- the first view fits every zone
        assert page.evaluate("() => window.crowdflow.map.getBounds().contains(window.crowdflow.S.zoneBounds)")
        page.wait_for_function("document.querySelectorAll('path.zone[data-status=ok]').length >= 15", timeout=15000)
        feed(r, keys, site, 2)
        time.sleep(1.0)
        # -- a zone mostly estimated (its cameras see 15 % of it) is drawn and labelled as such
        assert page.get_attribute("path.zone-bridge-e-mid", "data-estimated") == "yes"
        assert page.get_attribute("path.zone-xsz-exit6", "data-estimated") == "no"  # fully seen
        # -- labels never overlap, at the first view and zoomed in
        assert visible_label_overlaps(page) == []
        shown = page.locator(".zone-label:not(.collide)").count()
        assert shown >= 4  # the busy ones are readable
        page.evaluate("() => window.crowdflow.map.setZoom(window.crowdflow.map.getZoom() + 1)")
        time.sleep(0.6)
        assert visible_label_overlaps(page) == []
        page.evaluate("() => window.crowdflow.map.setZoom(window.crowdflow.map.getZoom() - 1)")
        time.sleep(0.6)
        # -- superseded recommendations fold away; the pending one stays on top
        page.wait_for_selector(f'.card.rec.pending[data-rec="{rec.id}"]')
        assert page.locator(f'#recs details.folded .card.rec[data-rec="{old.id}"]').count() == 1
        assert not page.locator(f'.card.rec[data-rec="{old.id}"]').is_visible()
        page.click("#recs details.folded summary")
        assert page.locator(f'.card.rec[data-rec="{old.id}"]').is_visible()
        page.click("#recs details.folded summary")
        # -- clicking a zone opens its panel: count, density, LOS, trend, chart, cameras, measures
        feed(r, keys, site, 4)
        page.wait_for_selector("path.zone-bridge-e-mid[data-status=ok]")
        page.dispatch_event("path.zone-bridge-e-mid", "click")
        page.wait_for_selector('#timeline [data-zone="bridge-e-mid"]')
        page.wait_for_selector("#timeline table.zone-facts")
        facts = page.inner_text("#timeline")
        for word in ("人", "密度", "承载率", "服务水平", "趋势", "摄像机", "现行措施"):
            assert word in facts, word
        assert page.locator('#timeline li.cam[data-camera="cam-bridge-mid"]').count() == 1
        assert page.locator("#timeline svg polyline.forecast").count() == 1
        IMG.mkdir(parents=True, exist_ok=True)
        page.mouse.move(5, 790)
        page.screenshot(path=str(IMG / "dashboard-wall.png"))

        # -- the phone layout: map first, labels still apart, the post's panel under it
        feed(r, keys, site, 5)
        phone = open_as(browser, base, "viewer", layout="phone")
        phone.wait_for_function("window.crowdflow.basemap && window.crowdflow.basemap.features > 100")
        phone.wait_for_function("document.querySelectorAll('path.zone[data-status=ok]').length >= 15", timeout=15000)
        time.sleep(0.8)
        assert visible_label_overlaps(phone) == []
        assert "© OpenStreetMap contributors" in phone.inner_text(".leaflet-control-attribution")
        phone.mouse.move(395, 855)
        phone.screenshot(path=str(IMG / "dashboard-phone.png"), full_page=False)
        phone.context.close()
        page.context.close()
