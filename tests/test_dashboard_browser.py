"""The live map and console in a real browser (Debian chromium): logins per role, every zone
drawn, unknown is grey hatched, pushes recolour live, a commander's confirmation becomes an
active action and an audit entry, a viewer cannot command.

Zone states and commands are handled by the real `crowdflow control`."""

from __future__ import annotations

import json
import time


from crowdflow.records import Alarm, Observation, ZoneCount, ZoneState
from crowdflow.site import Text

from .conftest import free_port
from .seed import seed_recommendation
from .dash import PASSWORDS, messages, users_env
from .procs import services, wait_http

UNKNOWN_FILL = "url(#cf-hatch)"


def start_dashboard(s, control: bool) -> str:
    port = free_port()
    if control:
        s.start("control", "control", "--stale-after", "30")
    s.start("dashboard", "dashboard", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz")
    return base


def open_as(browser, base: str, role: str, layout: str = "wall", frames: list | None = None):
    """A logged-in page; ``frames`` (when given) collects the text frames its WebSocket receives."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800} if layout == "wall" else {"width": 400, "height": 860})
    page = ctx.new_page()
    if frames is not None:
        page.on("websocket", lambda ws: ws.on("framereceived", lambda f: isinstance(f, str) and frames.append(f)))
    page.goto(f"{base}/?layout={layout}")
    page.fill("#username", role)
    page.fill("#password", PASSWORDS[role])
    page.click("#login button[type=submit]")
    page.wait_for_function("Object.keys(window.crowdflow.states).length === 19")
    return page


def fill_of(page, zone_id: str) -> str:
    return page.get_attribute(f"path.zone-{zone_id}", "fill")


def test_map_draws_every_zone_grey_until_data_then_live(browser, tmp_path, redis_url, keys, r, site):
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=True)
        page = open_as(browser, base, "viewer")
        assert page.locator("path.zone").count() == len(site.zones) == 19
        # The offline basemap: river, buildings, bridge deck and roads from the site file.
        assert page.locator("path.base-water").count() == 1 and page.locator("path.base-bridge").count() == 1
        assert page.locator("path.base-building").count() == len(site.basemap.buildings)
        assert page.locator("path.road").count() == len(site.roads)
        # No data yet: every zone grey hatched, labelled 无数据 in Chinese; cameras "no data".
        page.wait_for_function("document.querySelectorAll('path.zone[data-status=unknown]').length === 19")
        assert {fill_of(page, z.id) for z in site.zones} == {UNKNOWN_FILL}
        labels = page.locator(".zone-label").all_text_contents()
        assert len(labels) == 19 and all("无数据" in t for t in labels)
        assert any("沧白路11F入口广场" in t for t in labels)
        assert page.inner_text("#conn") == "实时"
        assert page.get_attribute("path.camera-cam-cangbai-plaza", "data-health") == "unknown"

        # A camera reports 800 people on 950 m² of the plaza → 1600 over 1900 m² → 84 % → yellow.
        o = Observation(camera_id="cam-cangbai-plaza", agent_id="t", seq=1, captured_at=time.time(),
                        zones=[ZoneCount(zone_id="cangbai-plaza", count=800.0, visible_area_m2=950.0)])
        r.xadd(keys.obs, {"rec": o.encode()})
        page.wait_for_function(
            f"document.querySelector('path.zone-cangbai-plaza').getAttribute('fill') !== '{UNKNOWN_FILL}'", timeout=10000)
        assert fill_of(page, "cangbai-plaza") == "#f2c418"  # 84 % of capacity: 80–90 % band
        label = page.locator(".zone-label", has_text="沧白路11F入口广场").inner_text()
        assert "1600人" in label and "84%" in label
        assert fill_of(page, "bridge-e-mid") == UNKNOWN_FILL  # others stay unknown
        assert page.get_attribute("path.camera-cam-cangbai-plaza", "data-health") == "ok"
        # Clicking the zone opens its timeline (history + forecast) in the side panel.
        page.dispatch_event("path.zone-cangbai-plaza", "click")
        page.wait_for_selector('#timeline [data-zone="cangbai-plaza"]')
        assert "1600人 · 84%" in page.inner_text("#timeline")

        # English toggle relabels without reload.
        page.click("#lang")
        assert page.locator(".zone-label", has_text="Cangbai Rd 11F entrance plaza").count() == 1
        assert page.inner_text("#title") == "Hongyadong crowd control"
        page.context.close()


def test_a_batch_frame_updates_the_map_like_single_messages(browser, tmp_path, redis_url, keys, r, site):
    """Messages queued together reach the browser as one ``batch`` frame; the page applies each
    in order: zones recolour as a single zone message does, an alarm raised then cleared in the
    same frame is shown cleared; the cameras and panels are repainted once for the frame."""
    def zone_event(zid: str, ratio: float) -> dict:
        z, now, n = site.zone_by_id[zid], time.time(), round(ratio * site.zone_by_id[zid].capacity)
        s = ZoneState(zone_id=zid, status="ok", count=n, density=n / z.walkable_area_m2, capacity=z.capacity,
                      capacity_ratio=ratio, coverage=1.0, updated_at=now, computed_at=now)
        return {"type": "zone", "rec": s.encode()}

    alarm = Alarm(id="al-batch", kind="camera_offline", severity="warning", camera_id="cam-jiabin",
                  text=Text(zh="嘉滨路球机离线", en="Jiabin camera offline"), raised_at=time.time())
    frames: list[str] = []
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=False)
        page = open_as(browser, base, "viewer", frames=frames)
        page.wait_for_function("document.querySelectorAll('path.zone[data-status=unknown]').length === 19")
        # One zone alone: its own frame, as before.
        r.xadd(keys.events, zone_event("cangbai-plaza", 0.84))
        page.wait_for_selector("path.zone-cangbai-plaza[data-status=ok]", timeout=10000)
        single = fill_of(page, "cangbai-plaza")
        counts = "[window.crowdflow.renders || 0, window.crowdflow.cameraPaints || 0]"
        before = page.evaluate(counts)
        # Three zones and an alarm's two versions in one transaction: one XREAD, one frame.
        pipe = r.pipeline(transaction=True)
        for zid, ratio in (("bridge-e-mid", 0.84), ("xsz-exit6", 0.97), ("bridge-n-head", 0.3)):
            pipe.xadd(keys.events, zone_event(zid, ratio))
        pipe.xadd(keys.events, {"type": "alarm", "rec": alarm.encode()})
        pipe.xadd(keys.events, {"type": "alarm", "rec": alarm.model_copy(update={"cleared_at": time.time()}).encode()})
        pipe.execute()
        page.wait_for_selector("path.zone-bridge-n-head[data-status=ok]", timeout=10000)
        page.wait_for_selector('.card.alarm.cleared[data-alarm="al-batch"]')
        batch = next(f for f in frames if '"al-batch"' in f)
        assert json.loads(batch)["type"] == "batch"
        items = messages(batch)  # the alarm as read (raised, then cleared); the zones after the read
        assert [(m["type"], m["rec"]["cleared_at"] is None) for m in items[:2]] == [("alarm", True), ("alarm", False)]
        assert {m["state"]["zone_id"] for m in items[2:]} == {"bridge-e-mid", "xsz-exit6", "bridge-n-head"}
        assert fill_of(page, "bridge-e-mid") == single == "#f2c418"  # as the single message painted 84 %
        assert fill_of(page, "xsz-exit6") == "#d7191c" and fill_of(page, "bridge-n-head") == "#3aa357"
        assert page.locator(".zone-label", has_text="97%").count() == 1
        # one repaint for the whole frame (per item: 2 panel renders and 5 camera repaints)
        after = page.evaluate(counts)
        assert [a - b for a, b in zip(after, before)] == [1, 1]
        page.context.close()


def test_login_per_role_and_a_viewer_cannot_command(browser, tmp_path, redis_url, keys, r, site):
    rec = seed_recommendation(r, keys, site, "hongyadong", "IV", "cangbai-plaza", value=0.65)
    a = Alarm(id="al-cam", kind="camera_offline", severity="warning", camera_id="cam-jiabin",
              text=Text(zh="嘉滨路球机离线", en="Jiabin camera offline"), raised_at=time.time())
    r.hset(keys.alarms, a.id, a.encode())
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=False)
        # A wrong password is refused with a message, and nothing is shown.
        page = browser.new_page()
        page.goto(base + "/")
        page.fill("#username", "viewer")
        page.fill("#password", "wrong")
        page.click("#login button[type=submit]")
        page.wait_for_function("document.querySelector('#login-error').textContent.length > 0")
        assert page.inner_text("#login-error") == "用户名或密码错误" and page.is_hidden("#app")
        page.close()

        seen = {}
        for role in ("viewer", "operator", "commander"):
            page = open_as(browser, base, role)
            page.wait_for_selector(f'.card.rec[data-rec="{rec.id}"]')
            page.wait_for_selector('.card.alarm[data-alarm="al-cam"]')
            assert page.inner_text("#who").startswith(role)
            assert page.get_attribute("path.camera-cam-jiabin", "data-health") == "offline"
            seen[role] = {sel: page.locator(sel).count() for sel in
                          ("button.cmd-confirm", "button.cmd-reject", "button.cmd-ack", "button.cmd-mode", "button.cmd-override")}
            if role == "viewer":
                # A forged command from the viewer's own session is refused and never reaches control.
                status = page.evaluate("""async (id) => (await fetch('/api/commands', {method: 'POST',
                    headers: {'Content-Type': 'application/json'},
                    body: JSON.stringify({kind: 'confirm', recommendation_id: id})})).status""", rec.id)
                assert status == 403
            page.context.close()
        assert seen["viewer"] == dict.fromkeys(seen["viewer"], 0)  # no command buttons at all
        assert seen["operator"]["button.cmd-ack"] == 1 and seen["operator"]["button.cmd-confirm"] == 0
        assert seen["commander"]["button.cmd-confirm"] == 1 and seen["commander"]["button.cmd-mode"] == 1
        assert seen["commander"]["button.cmd-override"] == len(site.plans)
        assert r.exists(keys.cmd) == 0  # nothing was written for control


def test_commander_confirms_a_recommendation_it_becomes_active_and_audited(browser, tmp_path, redis_url, keys, r, site):
    rec = seed_recommendation(r, keys, site, "bridge", "III", "bridge-e-mid")
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=True)  # the real control restores the seeded decision
        staff = open_as(browser, base, "viewer", layout="phone")  # on the bridge, post-bridge-mid
        page = open_as(browser, base, "commander")
        card = page.locator(f'.card.rec[data-rec="{rec.id}"]')
        assert "承载率 0.86 ≥ 0.80" in card.inner_text()  # the reason, in Chinese
        card.locator("button.cmd-confirm").click()
        plan = page.locator('.card.plan[data-plan="bridge"]')
        plan.locator(".plan-level .lv-III").wait_for()
        assert "单向通行" in plan.locator(".active-actions").inner_text()
        assert "commander" in plan.locator(".history").inner_text()
        page.wait_for_selector(f'.card.rec.confirmed[data-rec="{rec.id}"]')
        assert page.locator("path.oneway-bridge-e-mid").count() == 1  # drawn on the map
        page.wait_for_selector('.audit-row[data-action="confirm"]')
        assert "commander" in page.locator('.audit-row[data-action="confirm"]').inner_text()
        page.fill("#audit-filter", "reject")
        page.wait_for_selector('.audit-row[data-action="confirm"]', state="detached")
        # Staff on the bridge see their post's new instruction pushed to the phone layout.
        staff.wait_for_function("document.querySelector('#mypost .instructions').textContent.includes('16')")
        assert "大桥中段岗 增派至 16 人" in staff.inner_text("#mypost")
        box_map, box_post = staff.locator("#mapwrap").bounding_box(), staff.locator("#mypost").bounding_box()
        assert box_map["y"] < box_post["y"]  # map first on the phone
        confirms = [f for _, f in r.xrange(keys.audit) if '"action":"confirm"' in f["rec"]]
        assert len(confirms) == 1
