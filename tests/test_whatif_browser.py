"""The what-if panel in a real browser: pick measures (or the recommended set), see the next
30 minutes with and without them from the live state; the panel says when the rules decide."""

from __future__ import annotations

import time


from crowdflow import crowd
from crowdflow.records import InForce, MeasureInForce, PlanState, Reason, Recommendation, ZoneState
from crowdflow.site import Text

from .dash import users_env
from .procs import services
from .test_dashboard_browser import open_as, start_dashboard


def seed(r, keys, site):
    """Live zone states of a busy evening (the sidewalk near its target), a pending
    measures recommendation and an area whose last decision came from the rules."""
    now = time.time()
    ratios = {"cangbai-walk": 0.86, "xsz-exit6": 0.6, "xsz-exit9": 0.6, "cangbai-plaza": 0.45}
    pipe = r.pipeline()
    for z in site.zones:
        n = ratios.get(z.id, 0.35) * z.capacity
        d = n / z.walkable_area_m2
        s = ZoneState(zone_id=z.id, status="ok", count=n, density=d, capacity=z.capacity, capacity_ratio=n / z.capacity,
                      flow_ppm=crowd.flow_ppm(d), updated_at=now + 120, computed_at=now)
        pipe.hset(keys.zone_state, z.id, s.encode())
    rec = Recommendation(id="hongyadong-wi-1", plan_id="hongyadong", level="IV", from_level=None,
                         actions=list(site.measure_by_id["meter-xsz"].actions), created_at=now, status="pending",
                         measures=["meter-xsz"], measures_on=["meter-xsz"], engine="mpc",
                         reasons=[Reason(zone_id="cangbai-walk", metric="capacity_ratio", value=1.1, threshold=0.9,
                                         text=Text(zh="启用小什字站出站限流", en="switch on metering"))])
    pipe.hset(keys.recommendations, rec.id, rec.encode())
    ps = PlanState(plan_id="bridge", level="IV", updated_at=now, measures={}, engine="rules")
    pipe.hset(keys.plan_state, "bridge", ps.encode())
    # in force a minute ago, its officers still on their way: it acts in 10 minutes
    inbound = site.measure_by_id["inbound-xsz"]
    ps = PlanState(plan_id="xiaoshizi", level="III", updated_at=now - 60, measures={inbound.id: now - 60},
                   in_effect={inbound.id: now + 600}, engine="mpc")
    pipe.hset(keys.plan_state, "xiaoshizi", ps.encode())
    staff = site.plan_by_id["xiaoshizi"].levels[0].actions[0]  # a level bundle's staffing: not timed
    inf = InForce(mode="normal", updated_at=now, measures=[
        MeasureInForce(action=a, source="plan", plan_id="xiaoshizi", level="III", since=now - 60, by="system",
                       acts_at=now + 600) for a in inbound.actions if a.type != "broadcast"] + [
        MeasureInForce(action=staff, source="plan", plan_id="xiaoshizi", level="III", since=now - 60, by="system")])
    pipe.set(keys.inforce, inf.encode())
    pipe.execute()


def peaks(page, element):
    card = page.locator(f'#whatif .wi-curve[data-element="{element}"]')
    card.wait_for()
    return float(card.locator(".wi-pw").inner_text()), float(card.locator(".wi-po").inner_text())


def test_whatif_panel_shows_with_and_without_from_the_live_state(browser, tmp_path, redis_url, keys, r, site):
    seed(r, keys, site)
    env = {"CROWDFLOW_USERS": users_env(), "CROWDFLOW_TWIN": "mayday-evening", "CROWDFLOW_TWIN_TOD": "19:15"}
    with services(tmp_path, redis_url, keys.prefix, extra_env=env) as s:
        base = start_dashboard(s, control=False)
        page = open_as(browser, base, "commander")
        page.locator('#whatif input[data-measure="meter-xsz"]').wait_for()
        # the rules decided the bridge's last measures: the panel says so
        page.wait_for_selector("#whatif .wi-engine-rules")
        assert "规则预案" in page.inner_text("#whatif .wi-engine")
        # nothing picked: asked to pick first
        page.click("#wi-run")
        page.wait_for_function("document.querySelector('#wi-out').textContent.includes('先勾选措施')")
        # meter the metro exits: the sidewalk's forecast comes down
        page.check('#whatif input[data-measure="meter-xsz"]')
        page.click("#wi-run")
        w, wo = peaks(page, "cangbai-walk")
        assert w < wo, (w, wo)
        assert page.locator('#whatif .wi-curve[data-element="cangbai-walk"] svg polyline').count() == 2
        # and it says when the metering acts: its marshals walk from the reserve and set up first
        acts = page.inner_text('#whatif .wi-acts span[data-measure="meter-xsz"]')
        hh, mm = acts.rsplit(" ", 1)[1].split(":")
        assert "19:20" <= f"{hh}:{mm}" <= "19:45", acts
        # the inbound limit in force is not on the ground yet: it acts 10 minutes on (19:25)
        acts = page.inner_text('#whatif .wi-acts span[data-measure="inbound-xsz"]')
        assert acts.endswith(("19:24", "19:25")), acts  # seconds pass between the seed and the run
        # and the in-force list says it is being set up, and until when; the staffing is not timed
        pending = page.locator("#inforce li.setting-up")
        assert pending.count() == 2 and all("布设中" in t and "到位生效" in t for t in pending.all_inner_texts())
        assert page.locator('#inforce li[data-type="staffing"]').count() == 1
        assert page.locator('#inforce li.setting-up[data-type="staffing"]').count() == 0
        # the recommended set (the pending recommendation's measures), nothing ticked
        page.uncheck('#whatif input[data-measure="meter-xsz"]')
        page.evaluate("document.querySelector('#wi-out').textContent = ''")
        page.click("#wi-rec")
        w2, wo2 = peaks(page, "cangbai-walk")
        assert w2 < wo2
        # English on the toggle
        page.click("#lang")
        page.wait_for_function("document.querySelector('#whatif h2').textContent.startsWith('What-if')")
        assert "with" in page.inner_text("#whatif .wi-legend")
