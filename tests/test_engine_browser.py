"""The map and the plan panel say when the rule-based stand-in answered (issue 11 point 3: "if
it cannot finish, the rule-based plans answer and the map says so"), in zh and en, and stop
saying so once the forecast answers again. Debian's chromium against the real dashboard."""

from __future__ import annotations

import time

from crowdflow.records import PlanState

from .dash import users_env
from .procs import services
from .test_dashboard_browser import open_as, start_dashboard


def test_map_and_plan_panel_show_when_the_rules_answered(browser, tmp_path, redis_url, keys, r, site):
    now = time.time()
    pipe = r.pipeline()
    pipe.hset(keys.plan_state, "bridge", PlanState(plan_id="bridge", level="IV", updated_at=now, measures={},
                                                   engine="rules").encode())
    pipe.hset(keys.plan_state, "hongyadong", PlanState(plan_id="hongyadong", level="IV", updated_at=now,
                                                       measures={"meter-xsz": now - 60}, engine="mpc").encode())
    pipe.execute()
    with services(tmp_path, redis_url, keys.prefix, extra_env={"CROWDFLOW_USERS": users_env()}) as s:
        base = start_dashboard(s, control=False)
        page = open_as(browser, base, "commander")
        # on the map: a banner naming the area the rules answered for (zh by default)
        page.wait_for_selector("#engine-banner:not([hidden])")
        banner = page.inner_text("#engine-banner")
        assert "规则预案" in banner and "千厮门大桥" in banner and "洪崖洞" not in banner
        assert page.get_attribute("#engine-banner", "data-plans") == "bridge"
        # on the plan panel: per area, who chose its measures
        assert page.get_attribute('.plan[data-plan="bridge"] .plan-engine', "data-engine") == "rules"
        assert "规则预案" in page.inner_text('.plan[data-plan="bridge"] .plan-engine')
        assert page.get_attribute('.plan[data-plan="hongyadong"] .plan-engine', "data-engine") == "mpc"
        assert "模型预测" in page.inner_text('.plan[data-plan="hongyadong"] .plan-engine')
        # English
        page.click("#lang")
        page.wait_for_function("document.querySelector('#engine-banner').textContent.includes('rule-based plans are answering')")
        assert "Qiansimen Bridge" in page.inner_text("#engine-banner")
        assert "Rule-based" in page.inner_text('.plan[data-plan="bridge"] .plan-engine')
        assert "model forecast" in page.inner_text('.plan[data-plan="hongyadong"] .plan-engine')
        # the forecast answers again (a plan-state event, as the control service publishes it):
        # the banner goes
        ps = PlanState(plan_id="bridge", level="IV", updated_at=time.time(), measures={}, engine="mpc")
        r.hset(keys.plan_state, "bridge", ps.encode())
        r.xadd(keys.events, {"type": "plan", "rec": ps.encode()})
        page.wait_for_selector("#engine-banner", state="hidden")
        assert page.get_attribute('.plan[data-plan="bridge"] .plan-engine', "data-engine") == "mpc"
