"""Orders reach the people responsible and their answers come back, in two real browser
pages (Debian chromium) against the real control: a commander confirms a measure; the
officer at the post named by it sees the order on the phone layout, acknowledges it and
reports "in place" (another one "cannot", with the reason); the console shows who
acknowledged and when, and the time from confirmation to "in place", kept in the audit and
summarised per evening."""

from __future__ import annotations

import time


from crowdflow.records import AuditEntry, Order, decode

from .dash import users_env
from .procs import services
from .seed import seed_recommendation
from .test_dashboard_browser import open_as, start_dashboard

POST = "post-bridge-mid"
IMG = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "img"  # the viewer test user's post (tests/dash.py)


def orders(r, keys) -> list[Order]:
    return [decode(Order, v) for v in r.hgetall(keys.orders).values()]


def test_order_round_trip_commander_and_officer(browser, tmp_path, redis_url, keys, r, site):
    rec = seed_recommendation(r, keys, site, "bridge", "III", "bridge-e-mid")
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=True)
        officer = open_as(browser, base, "viewer", layout="phone")
        cmdr = open_as(browser, base, "commander")
        assert officer.locator("#mypost .order-card").count() == 0
        t_click = time.time()
        cmdr.locator(f'.card.rec[data-rec="{rec.id}"] button.cmd-confirm').click()

        # the phone of the post shows the order prominently, with a tone where allowed
        officer.wait_for_selector("#mypost .orders-open .order-card")
        mine = sorted((o for o in orders(r, keys) if o.post == POST), key=lambda o: o.action.type)
        staffing = next(o for o in mine if o.action.type == "staffing")
        assert staffing.action.headcount == 16 and staffing.issued_by == "commander"
        card = officer.locator(f'#mypost .order-card[data-order="{staffing.id}"]')
        assert "16" in card.inner_text()
        assert officer.evaluate("() => window.crowdflow.alerts || 0") >= 1
        box_map, box_post = officer.locator("#mapwrap").bounding_box(), officer.locator("#mypost").bounding_box()
        assert box_map["y"] < box_post["y"]  # map first, then the post's orders right under it
        officer.evaluate("() => window.scrollTo(0, 0)")
        officer.evaluate("() => document.querySelector('main').scrollTo(0, document.querySelector('#mypost').offsetTop - 260)")
        officer.mouse.move(395, 10)
        officer.screenshot(path=str(IMG / "dashboard-phone-order.png"))
        # only this post's orders are on this phone
        assert all(o.post == POST for o in orders(r, keys)
                   if officer.locator(f'#mypost .order-card[data-order="{o.id}"]').count())

        # acknowledge → the console shows who and when
        card.locator("button.ord-ack").click()
        row = cmdr.locator(f'tr.order-row[data-order="{staffing.id}"]')
        row.locator("td.ack", has_text="viewer").wait_for()
        # in place → the console shows the time from confirmation to in place
        officer.locator(f'#mypost .order-card[data-order="{staffing.id}"] button.ord-inplace').click()
        cmdr.wait_for_function(f"""() => {{ const td = document.querySelector('tr.order-row[data-order="{staffing.id}"] td.inplace');
            return td && td.textContent.trim() !== '—'; }}""")
        done = next(o for o in orders(r, keys) if o.id == staffing.id)
        assert done.status == "in_place" and done.acknowledged_by == "viewer" and done.in_place_s is not None
        assert 0 < done.in_place_s < time.time() - t_click + 5
        print(f"\norder round trip (confirm → in place, browser clicks): {done.in_place_s:.1f} s; "
              f"acknowledged after {done.acknowledged_at - done.issued_at:.1f} s")

        # "cannot", with the reason (the dialog will not send without one)
        other = [o for o in mine if o.id != staffing.id]
        if other:
            o2 = other[0]
            officer.locator(f'#mypost .order-card[data-order="{o2.id}"] button.ord-cannot').click()
            officer.wait_for_selector("#dlg[open]")
            assert officer.is_disabled("#dlg-ok")
            officer.fill("#dlg-note", "人手不足，等增援")
            officer.click("#dlg-ok")
            cmdr.locator(f'tr.order-row[data-order="{o2.id}"]', has_text="人手不足").wait_for()
            assert next(o for o in orders(r, keys) if o.id == o2.id).status == "cannot"

        # an officer cannot answer for another post
        elsewhere = next(o for o in orders(r, keys) if o.post != POST)
        status = officer.evaluate("""async (id) => (await fetch('/api/commands', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({kind: 'answer_order', order_id: id, answer: 'in_place'})})).status""", elsewhere.id)
        assert status == 409

        # kept in the audit, and summarised per evening
        audit = [decode(AuditEntry, f["rec"]) for _, f in r.xrange(keys.audit)]
        answers = [a for a in audit if a.action == "order_answer" and a.order_id == staffing.id]
        assert [a.reason for a in answers] == ["acknowledged", "in_place"] and answers[-1].in_place_s == done.in_place_s
        assert any(a.action == "order" and a.order_id == staffing.id for a in audit)
        summary = cmdr.evaluate("async () => (await (await fetch('/api/orders')).json()).summary")
        assert summary[0]["in_place"] >= 1 and summary[0]["in_place_median_s"] is not None
        cmdr.wait_for_selector("#orders .order-summary")
        officer.context.close()
        cmdr.context.close()
