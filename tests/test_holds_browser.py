"""The queue panel (排队区 / Queues) in a real browser (Debian chromium) against the real
control: the staff at a pen types a count and reports it; the panel and the pen's marker show
people and density, Redis has control's HoldState; an impossible count is refused with
control's reason and changes nothing; a count that is too old, or none at all, is "unknown"
with the last count and its age, never 0; report_queue needs only a viewer (crowdflow.vocab),
with or without a post."""

from __future__ import annotations

import json
import time

from crowdflow.records import HOLD_STALE_S, HoldState, decode
from dashboard.auth import hash_password

from .dash import users_env
from .procs import services
from .test_dashboard_browser import open_as, start_dashboard

IMG = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "img"


def stored(r, keys, hid: str) -> HoldState | None:
    raw = r.hget(keys.hold_state, hid)
    return decode(HoldState, raw) if raw else None


def row(page, hid: str):
    return page.locator(f'#holds .hold-row[data-hold="{hid}"]')


def report(page, hid: str, n) -> None:
    """Type a count at a pen and click 报数 / Report; wait for the answer under the pen."""
    before = page.evaluate("(h) => (window.crowdflow.S.holdResults[h] || {}).text || ''", hid)
    row(page, hid).locator("input.hold-input").fill(str(n))
    row(page, hid).locator("button.cmd-report").click()
    page.wait_for_function("([h, b]) => { const r = window.crowdflow.S.holdResults[h]; return r && r.text !== b; }",
                           arg=[hid, before], timeout=15000)


def test_staff_report_a_queue_count_and_an_impossible_one_is_refused(browser, tmp_path, redis_url, keys, r, site):
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=True)
        page = open_as(browser, base, "viewer", layout="phone")  # an officer's phone
        # every pen is listed; control published them all at its start: unknown, never 0
        page.wait_for_selector("#holds .hold-row")
        assert page.locator("#holds .hold-row").count() == len(site.holding_areas) == 9
        assert page.inner_text("#holds h2") == "排队区"
        page.wait_for_function("Object.keys(window.crowdflow.S.holds).length === 9")
        assert page.locator('#holds .hold-row[data-status="unknown"]').count() == 9
        first = row(page, "hold-1f").inner_text()
        assert "1F入口排队区" in first and "未知" in first and "尚无报数" in first and "0人" not in first
        # on the phone: the map, the officer's post, then the queues right under it
        boxes = [page.locator(sel).bounding_box()["y"] for sel in ("#mapwrap", "#mypost", "#holds")]
        assert boxes == sorted(boxes)

        # 150 people in the 300 m² pen: 0.5 p/m², reported by this user, shown at once
        report(page, "hold-1f", 150)
        assert "已报数：150 人" in row(page, "hold-1f").locator(".hold-result.ok").inner_text()
        row(page, "hold-1f").locator(".hold-people-n", has_text="150人").wait_for()
        text = row(page, "hold-1f").inner_text()
        assert "0.5 人/m²" in text and "viewer 报数" in text and "秒前" in text
        assert row(page, "hold-1f").get_attribute("data-status") == "ok"
        assert row(page, "hold-1f").locator("input.hold-input").input_value() == ""  # ready for the next count
        st = stored(r, keys, "hold-1f")
        assert st.status == "ok" and st.people == 150 and st.density == 0.5 and st.reported_by == "viewer"
        assert "150" in page.locator(".hold-marker.hold-hold-1f").inner_text()  # on the map at its gate

        # 5000 in 300 m² (16.7 p/m²) is impossible: control's reason, nothing changes
        report(page, "hold-1f", 5000)
        refused = row(page, "hold-1f").locator(".hold-result.refused").inner_text()
        assert refused.startswith("未采纳：") and "above the physical limit of 10 p/m²" in refused
        assert stored(r, keys, "hold-1f").people == 150
        assert row(page, "hold-1f").locator("input.hold-input").input_value() == "5000"  # left to correct
        assert "150人" in row(page, "hold-1f").inner_text() and "5000" not in row(page, "hold-1f").locator(".hold-figure").inner_text()

        # dense (≥ 2 p/m²) and critical (≥ 4 p/m²) pens stand out, in the panel and on the map
        report(page, "hold-xsz-6", 700)   # 2.3 p/m² in the 300 m² concourse
        report(page, "hold-11f", 1800)    # 4.5 p/m² in 400 m²
        row(page, "hold-11f").locator(".hold-dens.dens-crit").wait_for()
        assert "dens-warn" in row(page, "hold-xsz-6").get_attribute("class")
        assert "dens-crit" in row(page, "hold-11f").get_attribute("class")
        assert "dens-crit" in page.locator(".hold-marker.hold-hold-11f").get_attribute("class")
        assert stored(r, keys, "hold-xsz-6").people == 700 and stored(r, keys, "hold-11f").people == 1800
        page.evaluate("() => { document.querySelector('#toast').classList.remove('show');"
                      " document.querySelector('main').scrollTo(0, document.querySelector('#holds').offsetTop - 120); }")
        page.screenshot(path=str(IMG / "dashboard-phone-queues.png"))

        # the English toggle: the panel's title and its words
        page.click("#lang")
        assert page.inner_text("#holds h2") == "Queues"
        assert "Report" == row(page, "hold-1f").locator("button.cmd-report").inner_text()
        assert "unknown" in row(page, "hold-bridge-n").inner_text()
        assert "1F entrance queue pen" in row(page, "hold-1f").inner_text()
        page.context.close()


def test_a_count_too_old_is_unknown_with_the_last_count_and_any_viewer_may_report(
        browser, tmp_path, redis_url, keys, r, site):
    """Control went silent with a count standing in Redis: the page shows it unknown, with the
    last count and its age. A viewer without a post may report (the vocabulary's role for
    report_queue); a missing count is caught on the page and sends nothing."""
    users = json.loads(users_env()) + [{"name": "kiosk", "role": "viewer", "post": None,
                                        "password_hash": hash_password("kiosk-pass-4")}]
    h = next(x for x in site.holding_areas if x.id == "hold-xsz-9")
    old = time.time() - HOLD_STALE_S - 120
    r.hset(keys.hold_state, h.id, HoldState(hold_id=h.id, gate_id=h.gate, zone_id=h.zone, area_m2=h.area_m2,
                                            status="ok", people=420.0, density=1.4, reported_at=old,
                                            reported_by="metro-ops", computed_at=old).encode())
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": json.dumps(users)}) as s:
        base = start_dashboard(s, control=False)  # nobody to say the count went stale but the dashboard
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(f"{base}/?layout=wall")
        page.fill("#username", "kiosk")
        page.fill("#password", "kiosk-pass-4")
        page.click("#login button[type=submit]")
        page.wait_for_selector('#holds .hold-row[data-hold="hold-xsz-9"]')
        assert page.evaluate("() => window.crowdflow.S.me.post") is None
        assert page.evaluate("() => window.crowdflow.S.site.vocab.command_role.report_queue") == "viewer"
        stale = row(page, "hold-xsz-9")
        assert stale.get_attribute("data-status") == "unknown"
        text = stale.inner_text()
        assert "未知" in text and "上次 420 人" in text and "分钟前" in text and "420人" not in text
        assert stale.locator(".hold-people-n").count() == 0
        assert page.locator(".hold-marker.hold-hold-xsz-9").inner_text().strip() == "⧗ ?"
        # a viewer, no post: the form is there for every pen
        assert page.locator("#holds button.cmd-report").count() == len(site.holding_areas)
        stale.locator("button.cmd-report").click()  # no count typed
        stale.locator(".hold-result.refused", has_text="请输入人数").wait_for()
        assert r.exists(keys.cmd) == 0  # nothing was sent
        ctx.close()
