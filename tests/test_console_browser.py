"""Every console button, clicked in Debian's chromium against the real `crowdflow control`,
and its effect checked: override asks for a note; automatic mode per area switches and
shows; 平急转换 asks for confirmation and says what it will do; reject, acknowledge, layout,
language and logout; commands carry a client-made id (a retry acts once) and issued_at, and
a command that reaches control too late is refused with the reason on screen."""

from __future__ import annotations

import json
import time


from crowdflow.records import Alarm, AuditEntry, PlanState, SiteMode, decode
from crowdflow.site import Text

from .dash import users_env
from .procs import services
from .seed import seed_recommendation
from .test_dashboard_browser import open_as, start_dashboard


def audit(r, keys, action: str | None = None) -> list[AuditEntry]:
    out = [decode(AuditEntry, f["rec"]) for _, f in r.xrange(keys.audit)]
    return [a for a in out if action is None or a.action == action]


def plan_state(r, keys, plan_id: str) -> PlanState:
    return decode(PlanState, r.hget(keys.plan_state, plan_id))


def test_every_console_button(browser, tmp_path, redis_url, keys, r, site):
    rec = seed_recommendation(r, keys, site, "xiaoshizi", "IV", "xsz-exit6")
    al = Alarm(id="al-cam", kind="camera_offline", severity="warning", camera_id="cam-jiabin",
               text=Text(zh="嘉滨路球机离线", en="Jiabin camera offline"), raised_at=time.time())
    r.hset(keys.alarms, al.id, al.encode())
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=True)
        page = open_as(browser, base, "commander")
        plan = page.locator('.card.plan[data-plan="bridge"]')

        # -- override: asks for a note; cancel sends nothing; OK needs a note
        plan.locator(".override-level").select_option("IV")
        plan.locator("button.cmd-override").click()
        page.wait_for_selector("#dlg[open]")
        assert "千厮门大桥" in page.inner_text("#dlg-title")
        assert "大桥南桥头岗" in page.inner_text("#dlg-body")  # says what will be in force
        assert page.is_disabled("#dlg-ok")  # no note, no override
        page.click("#dlg-cancel")
        page.wait_for_selector("#dlg[open]", state="detached")
        time.sleep(0.5)
        assert audit(r, keys, "override") == [] and plan_state(r, keys, "bridge").level is None
        plan.locator("button.cmd-override").click()
        page.fill("#dlg-note", "演练：桥面提前布岗")
        page.click("#dlg-ok")
        plan.locator(".plan-level .lv-IV").wait_for()
        assert "commander" in plan.locator(".history").inner_text()
        ov = audit(r, keys, "override")
        assert len(ov) == 1 and ov[0].reason == "演练：桥面提前布岗" and ov[0].level_to == "IV"
        page.wait_for_selector('.audit-row[data-action="override"]')

        # -- automatic mode per area: switch on, shown on the card, switch off
        auto_btn = plan.locator("button.cmd-auto")
        assert plan.locator(".plan-auto").get_attribute("data-auto") == "false"
        auto_btn.click()
        page.wait_for_selector('.card.plan[data-plan="bridge"] .plan-auto[data-auto="true"]')
        assert plan_state(r, keys, "bridge").auto is True
        assert "自动" in plan.locator(".plan-auto").inner_text()
        plan.locator("button.cmd-auto").click()
        page.wait_for_selector('.card.plan[data-plan="bridge"] .plan-auto[data-auto="false"]')
        assert plan_state(r, keys, "bridge").auto is False
        assert [a.reason for a in audit(r, keys, "set_auto")] == ["automatic", "manual"]

        # -- reject a recommendation, acknowledge an alarm
        page.locator(f'.card.rec[data-rec="{rec.id}"] button.cmd-reject').click()
        page.wait_for_selector(f'.card.rec.rejected[data-rec="{rec.id}"]')
        page.locator('.card.alarm[data-alarm="al-cam"] button.cmd-ack').click()
        page.wait_for_function("document.querySelector('.card.alarm[data-alarm=\"al-cam\"]').innerText.includes('commander')")

        # -- 平急转换: says what it will do, cancel keeps normal, OK switches
        page.click("button.cmd-mode")
        page.wait_for_selector("#dlg[open]")
        body = page.inner_text("#dlg-body")
        assert "一级" in body
        assert "千厮门隧道" in body  # the emergency-only cutoff is named before it happens
        page.click("#dlg-cancel")
        time.sleep(0.5)
        assert decode(SiteMode, r.get(keys.mode)).mode == "normal"
        page.click("button.cmd-mode")
        page.fill("#dlg-note", "江边烟花散场")
        page.click("#dlg-ok")
        page.wait_for_selector("#mode.emergency")
        assert all(plan_state(r, keys, p.id).level == "I" for p in site.plans)
        # the emergency-only cutoff reaches the published record, the map and the in-force list
        page.wait_for_selector("path.cutoff-road-qsm-tunnel")
        tunnel = page.locator('#inforce li.src-emergency', has_text="千厮门隧道")
        assert tunnel.count() == 1 and "commander" in tunnel.inner_text()
        page.click("button.cmd-mode")  # back to normal: it says where each area returns
        page.wait_for_selector("#dlg[open]")
        assert "千厮门大桥" in page.inner_text("#dlg-body") and "四级" in page.inner_text("#dlg-body")
        page.click("#dlg-ok")
        page.wait_for_selector("#mode.normal")
        assert plan_state(r, keys, "bridge").level == "IV"  # the level before the switch
        assert "江边烟花散场" in audit(r, keys, "set_mode")[0].reason

        # -- a retried request (same client-made id) acts once
        body = {"kind": "override", "plan_id": "xiaoshizi", "level": "IV", "note": "retry test",
                "id": "retry-0123456789", "issued_at": time.time()}
        statuses = page.evaluate("""async (b) => { const out = [];
            for (let i = 0; i < 2; i++) out.push((await fetch('/api/commands', {method: 'POST',
              headers: {'Content-Type': 'application/json'}, body: JSON.stringify(b)})).status);
            return out; }""", body)
        assert statuses == [200, 200]
        assert len([a for a in audit(r, keys, "override") if a.command_id == "retry-0123456789"]) == 1

        # -- a command that reaches control too late is refused, with the reason on screen
        page.evaluate("() => { const real = Date.now; Date.now = () => real() - 120000; }")  # queued 2 min
        plan.locator(".override-level").select_option("III")
        plan.locator("button.cmd-override").click()
        page.fill("#dlg-note", "late")
        page.click("#dlg-ok")
        page.wait_for_function("document.querySelector('#toast').textContent.includes('issued_at')")
        toast = page.inner_text("#toast")
        assert "未执行" in toast and "120" in toast and "30" in toast
        assert plan_state(r, keys, "bridge").level == "IV"  # not applied
        refused = audit(r, keys, "refuse")
        assert refused and "arrived" in refused[-1].reason
        page.evaluate("() => location.reload()")  # restore the real clock

        # -- layout, language, logout
        page.wait_for_function("Object.keys(window.crowdflow.states).length === 19")
        page.click("#layout")
        assert "layout-phone" in page.get_attribute("body", "class")
        page.click("#layout")
        assert "layout-wall" in page.get_attribute("body", "class")
        page.click("#lang")
        assert page.inner_text("#title") == "Hongyadong crowd control"
        page.click("#lang")
        page.click("#logout")
        page.wait_for_selector("#login:not([hidden])")
        page.context.close()


def test_page_takes_the_vocabulary_from_the_site(browser, tmp_path, redis_url, keys, r, site):
    from crowdflow import vocab

    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=False)
        page = open_as(browser, base, "commander")
        got = page.evaluate("() => window.crowdflow.S.site.vocab")
        assert got == json.loads(json.dumps(vocab.as_dict()))
        opts = page.locator('.card.plan[data-plan="bridge"] .override-level option').evaluate_all(
            "els => els.map(e => e.value)")
        assert opts == ["", *vocab.LEVELS]
        page.context.close()
    src = (site and __import__("pathlib").Path(__file__).parents[1] / "dashboard" / "static" / "app.js").read_text()
    assert '"viewer", "operator", "commander"' not in src and '"IV", "III", "II", "I"' not in src
